//! The I/O edge of `drainwatch cluster`: the DaemonSet's pods from the
//! Kubernetes API, and each pod's HTTP API read through the API's
//! port-forward to the pod (the WebSocket `kubectl port-forward` uses), so
//! nothing but the user's kubeconfig is needed to reach a node.
//!
//! The kubelet's port-forward dials the port on loopback inside the pod's
//! network namespace; a hostNetwork drainwatch pod shares the node's, so its
//! metrics listener must accept connections on the node's loopback.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};

use super::merge::{NodeAnswer, NodeData};

/// The port the deploy manifests give the metrics listener (and its API).
pub const DEFAULT_PORT: u16 = 9977;

/// An API answer larger than this is refused: 256 rollouts and 1024
/// verdicts (the daemon's bounds) fit with room to spare.
const MAX_BODY: usize = 32 << 20;

/// One drainwatch pod to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Pod name.
    pub pod: String,
    /// Its node, or `-` when not scheduled.
    pub node: String,
    /// The port its API listens on.
    pub port: u16,
    /// Why it is not read (not running), if so.
    pub skip: Option<String>,
}

/// The port a pod's API listens on: `port` when given, else its container
/// port named `metrics` (the deploy manifests'), else [`DEFAULT_PORT`].
pub fn api_port(pod: &Pod, port: Option<u16>) -> u16 {
    if let Some(p) = port {
        return p;
    }
    let named = pod.spec.as_ref().and_then(|s| {
        s.containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some("metrics"))
            .and_then(|p| u16::try_from(p.container_port).ok())
    });
    named.unwrap_or(DEFAULT_PORT)
}

/// The pods matching `selector` in `namespace`, by name.
pub async fn discover(
    pods: &Api<Pod>,
    selector: &str,
    port: Option<u16>,
) -> anyhow::Result<Vec<Target>> {
    use anyhow::Context as _;
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing pods with labels {selector:?}"))?;
    let mut out: Vec<Target> = list
        .items
        .iter()
        .map(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.clone());
            Target {
                pod: p.metadata.name.clone().unwrap_or_default(),
                node: p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_else(|| "-".into()),
                port: api_port(p, port),
                skip: match phase.as_deref() {
                    Some("Running") => None,
                    other => Some(format!("pod is {}", other.unwrap_or("in no phase"))),
                },
            }
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    Ok(out)
}

/// Reads every target's API at once, each within `timeout`.
pub async fn read_all(pods: &Api<Pod>, targets: &[Target], timeout: Duration) -> Vec<NodeAnswer> {
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        let (pods, t) = (pods.clone(), t.clone());
        set.spawn(async move {
            let result = match &t.skip {
                Some(why) => Err(why.clone()),
                None => match tokio::time::timeout(timeout, read(&pods, &t)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                },
            };
            (
                i,
                NodeAnswer {
                    pod: t.pod,
                    node: t.node,
                    result,
                },
            )
        });
    }
    let mut answers: Vec<(usize, NodeAnswer)> = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(a) => answers.push(a),
            Err(e) => tracing::warn!("a pod's reader task failed: {e}"),
        }
    }
    answers.sort_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, a)| a).collect()
}

/// One pod's timelines and verdicts through one port-forward connection.
async fn read(pods: &Api<Pod>, t: &Target) -> Result<NodeData, String> {
    let mut pf = pods
        .portforward(&t.pod, &[t.port])
        .await
        .map_err(|e| format!("port-forward to {}:{}: {e}", t.pod, t.port))?;
    let errors = pf.take_error(t.port);
    let Some(stream) = pf.take_stream(t.port) else {
        pf.abort();
        return Err(format!("port-forward to {}:{}: no stream", t.pod, t.port));
    };
    let result = get_both(stream).await;
    let result = match (result, errors) {
        // The far end's own reason (the kubelet could not connect) says
        // more than the HTTP error it caused.
        (Err(e), Some(errors)) => {
            match tokio::time::timeout(Duration::from_secs(1), errors).await {
                Ok(Some(why)) => Err(format!("port-forward to {}:{}: {why}", t.pod, t.port)),
                _ => Err(e),
            }
        }
        (r, _) => r,
    };
    pf.abort();
    result
}

/// One daemon's timelines and verdicts from its API at `url`
/// (`http://HOST:PORT`, the metrics listener), directly over TCP:
/// `drainwatch report http://127.0.0.1:9977`.
pub async fn read_url(url: &hyper::Uri, timeout: Duration) -> Result<NodeData, String> {
    if url.scheme_str() != Some("http") {
        return Err(format!(
            "{url}: only http:// (the daemon's API is served on its metrics listener, plain HTTP)"
        ));
    }
    let host = url
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    let port = url.port_u16().unwrap_or(DEFAULT_PORT);
    let work = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        get_both(stream).await.map_err(|e| format!("{url}: {e}"))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("{url}: no answer within {timeout:?}")))
}

async fn get_both<S>(stream: S) -> Result<NodeData, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP over the port-forward: {e}"))?;
    let driver = tokio::spawn(conn);
    let timelines: serde_json::Value = get(&mut sender, "/api/v1/timelines").await?;
    let verdicts: serde_json::Value = get(&mut sender, "/api/v1/verdicts").await?;
    drop(sender);
    driver.abort();
    let data = NodeData {
        timelines: serde_json::from_value(timelines["timelines"].clone())
            .map_err(|e| format!("/api/v1/timelines: not drainwatch timelines: {e}"))?,
        verdicts: serde_json::from_value(verdicts["verdicts"].clone())
            .map_err(|e| format!("/api/v1/verdicts: not drainwatch verdicts: {e}"))?,
    };
    Ok(data)
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Result<serde_json::Value, String> {
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::new())
        .map_err(|e| format!("{path}: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("GET {path}: reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "GET {path}: {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("GET {path}: not JSON: {e}"))
}

/// The pods' API, with `client`, in `namespace`.
pub fn pods(client: Client, namespace: &str) -> Api<Pod> {
    Api::namespaced(client, namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_from_flag_then_named_container_port_then_default() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "dw"},
            "spec": {"containers": [{"name": "drainwatch",
                "ports": [{"name": "other", "containerPort": 1}, {"name": "metrics", "containerPort": 9100}]}]}
        }))
        .expect("pod");
        assert_eq!(api_port(&pod, Some(7)), 7);
        assert_eq!(api_port(&pod, None), 9100);
        assert_eq!(api_port(&Pod::default(), None), DEFAULT_PORT);
    }
}
