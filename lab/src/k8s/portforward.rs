//! The pods/portforward subresource over WebSocket, as kube-apiserver serves it
//! (proxied to the kubelet, whose `portforward/websocket.go` speaks it): the
//! client offers subprotocols, the server picks `v4.channel.k8s.io` (binary
//! frames whose first byte is the channel; port-forward has no v5), and per
//! requested port opens a data channel (2i) and an error channel (2i+1), each
//! first carrying the port as two little-endian bytes. The kubelet then dials
//! the port on loopback inside the pod's network namespace; the stand-in does
//! the same in the namespace the lab registered for the pod (its annotation
//! [`NETNS_ANNOTATION`], a name under /run/netns), or its own without one. A
//! failed dial is reported on the error channel in the kubelet's words.
//!
//! One port per connection (what kube-rs and `kubectl port-forward` open for
//! one local port); a request for more is refused with a 400 Status.

use std::os::fd::AsRawFd;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, protocol::Role};

/// The subprotocol served.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// The pod annotation naming the network namespace the pod's port is in.
pub const NETNS_ANNOTATION: &str = "lab.drainwatch.io/netns";

/// Where one port-forward connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Pod name and uid, for the error message.
    pub pod: String,
    /// The pod's uid.
    pub uid: String,
    /// The network namespace to dial in (None: the stand-in's own).
    pub netns: Option<String>,
    /// The port, on loopback there.
    pub port: u16,
}

/// What one connection carried, for the lifecycle record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carried {
    /// Bytes from the client to the pod.
    pub to_pod: u64,
    /// Bytes from the pod to the client.
    pub from_pod: u64,
}

/// Checks a port-forward request for `pod` (the stored object): the ports
/// asked, the subprotocol offered. Err is (HTTP status, message) for a Status.
pub fn plan(pod: &Value, query_ports: Option<&str>, offered: &str) -> Result<Plan, (u16, String)> {
    let ports: Vec<&str> = query_ports
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let port = match ports.as_slice() {
        [] => return Err((400, "at least one port must be specified".into())),
        [one] => one
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| (400, format!("invalid port {one:?}: must be 1..65535")))?,
        _ => {
            return Err((
                400,
                "the lab's port-forward serves one port per connection".into(),
            ));
        }
    };
    if !offered.split(',').any(|p| p.trim() == PROTOCOL) {
        return Err((
            400,
            format!(
                "no supported WebSocket subprotocol offered ({offered:?}); this server speaks {PROTOCOL}"
            ),
        ));
    }
    let md = &pod["metadata"];
    let netns = md["annotations"][NETNS_ANNOTATION]
        .as_str()
        .map(str::to_string);
    if let Some(n) = &netns
        && (n.is_empty() || n.contains('/') || n.starts_with('.'))
    {
        return Err((
            500,
            format!("annotation {NETNS_ANNOTATION}={n:?} is not a network namespace name"),
        ));
    }
    Ok(Plan {
        pod: md["name"].as_str().unwrap_or_default().to_string(),
        uid: md["uid"].as_str().unwrap_or_default().to_string(),
        netns,
        port,
    })
}

/// Dials 127.0.0.1:port inside `netns` (a socket keeps the namespace it was
/// made in), from a thread of its own: `setns` changes only the calling
/// thread, which is then dropped rather than handed back to a pool.
async fn dial(plan: &Plan) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (netns, port) = (plan.netns.clone(), plan.port);
    std::thread::spawn(move || {
        let r = (|| {
            if let Some(ns) = netns {
                let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
                // SAFETY: setns on this thread with a namespace fd we own.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })();
        let _ = tx.send(r);
    });
    let std_stream = rx
        .await
        .map_err(|_| std::io::Error::other("the dialing thread died"))??;
    TcpStream::from_std(std_stream)
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut b = Vec::with_capacity(data.len() + 1);
    b.push(channel);
    b.extend_from_slice(data);
    Message::binary(b)
}

/// Serves one upgraded connection until either side closes it.
pub async fn bridge<S>(io: S, plan: Plan) -> Result<Carried, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut stream) = ws.split();
    let port = plan.port.to_le_bytes();
    for ch in [0, 1] {
        sink.send(frame(ch, &port))
            .await
            .map_err(|e| format!("sending the port: {e}"))?;
    }
    let tcp = match dial(&plan).await {
        Ok(s) => s,
        Err(e) => {
            let why = format!(
                "error forwarding port {} to pod {}, uid {}: {e}",
                plan.port, plan.pod, plan.uid
            );
            let _ = sink.send(frame(1, why.as_bytes())).await;
            let _ = sink.send(Message::Close(None)).await;
            return Err(why);
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let mut carried = Carried::default();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    carried.from_pod += n as u64;
                    if sink.send(frame(0, &buf[..n])).await.is_err() {
                        break;
                    }
                }
            },
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&0) => {
                    carried.to_pod += (b.len() - 1) as u64;
                    if wr.write_all(&b[1..]).await.is_err() {
                        break;
                    }
                }
                // Pings are answered by the WebSocket layer; anything else
                // on a data channel we did not open is ignored, as the
                // kubelet does.
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = wr.shutdown().await;
    let _ = sink.send(Message::Close(None)).await;
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plans_from_the_pod_and_the_request() {
        let pod = json!({"metadata": {"name": "dw-a", "uid": "u1",
            "annotations": {NETNS_ANNOTATION: "node-a"}}});
        let offered = "v5.channel.k8s.io, v4.channel.k8s.io";
        assert_eq!(
            plan(&pod, Some("9977"), offered),
            Ok(Plan {
                pod: "dw-a".into(),
                uid: "u1".into(),
                netns: Some("node-a".into()),
                port: 9977
            })
        );
        assert_eq!(plan(&pod, None, offered).map_err(|e| e.0), Err(400));
        assert_eq!(plan(&pod, Some("1,2"), offered).map_err(|e| e.0), Err(400));
        assert_eq!(plan(&pod, Some("0"), offered).map_err(|e| e.0), Err(400));
        assert_eq!(
            plan(&pod, Some("80"), "v5.channel.k8s.io").map_err(|e| e.0),
            Err(400)
        );
        let bad = json!({"metadata": {"name": "x", "annotations": {NETNS_ANNOTATION: "../x"}}});
        assert_eq!(plan(&bad, Some("80"), offered).map_err(|e| e.0), Err(500));
        let plain = json!({"metadata": {"name": "x"}});
        assert_eq!(plan(&plain, Some("80"), offered).map(|p| p.netns), Ok(None));
    }
}
