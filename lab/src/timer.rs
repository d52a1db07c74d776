//! A timer server (a TCP server writing the time on a fixed period, TCP keepalive
//! deliberately off: the long-lived, mostly idle connection an idle timeout cuts) and a long-lived client for it, with or without keepalive.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::clock::{now_ns, rfc3339_ms};
use crate::loadgen::{Outcome, classify_io};
use crate::record::{RecordError, Recorder};

/// One observation of a timer connection, by either side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimerRecord {
    /// Wall clock ns.
    pub t_ns: u64,
    /// Who saw it: the server, or the client's name.
    pub who: String,
    /// The connection, as `client_ip:port`.
    pub conn: String,
    /// `connected`, `sent`, `received`, `closed` or `alive_at_end`.
    pub event: String,
    /// How the connection ended, for `closed`.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// Error text.
    #[serde(default)]
    pub error: Option<String>,
}

/// Timer server or client failed to start.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    /// Output file.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Socket setup.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn rec(
    r: &Recorder,
    who: &str,
    conn: &str,
    event: &str,
    outcome: Option<Outcome>,
    error: Option<String>,
) {
    r.write(&TimerRecord {
        t_ns: now_ns(),
        who: who.to_string(),
        conn: conn.to_string(),
        event: event.to_string(),
        outcome,
        error,
    });
}

/// Serves each `(addr, period)` until `duration` has passed.
pub async fn serve(
    ports: Vec<(SocketAddr, Duration)>,
    duration: Duration,
    out: PathBuf,
) -> Result<(), TimerError> {
    let r = Arc::new(Recorder::open(&out)?);
    let mut tasks = tokio::task::JoinSet::new();
    for (addr, period) in ports {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| TimerError::Io {
                what: format!("bind {addr}"),
                source,
            })?;
        let r = Arc::clone(&r);
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                match l.accept().await {
                    Ok((s, peer)) => {
                        conns.spawn(serve_conn(s, peer, period, Arc::clone(&r)));
                    }
                    Err(e) => tracing::warn!("accept: {e}"),
                }
            }
        });
    }
    println!("LISTENING");
    tokio::time::sleep(duration).await;
    tasks.abort_all();
    Ok(())
}

async fn serve_conn(s: TcpStream, peer: SocketAddr, period: Duration, r: Arc<Recorder>) {
    let conn = peer.to_string();
    // The server intentionally leaves TCP keepalive off: only the client's can keep
    // the flow alive in a middlebox.
    let _ = socket2::SockRef::from(&s).set_keepalive(false);
    rec(&r, "server", &conn, "connected", None, None);
    let (mut rd, mut wr) = s.into_split();
    let secs = period.as_secs_f64();
    let hello = format!(
        "Hello! Current time is {}. I'm going to send message every {secs} seconds. No KeepAlive in this TCP connection.\n",
        rfc3339_ms(now_ns())
    );
    if let Err(e) = wr.write_all(hello.as_bytes()).await {
        rec(
            &r,
            "server",
            &conn,
            "closed",
            Some(classify_io(&e)),
            Some(e.to_string()),
        );
        return;
    }
    let mut next = Instant::now() + period;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                next += period;
                let line = format!("Current time is {}\n", rfc3339_ms(now_ns()));
                match wr.write_all(line.as_bytes()).await {
                    Ok(()) => rec(&r, "server", &conn, "sent", None, None),
                    Err(e) => {
                        rec(&r, "server", &conn, "closed", Some(classify_io(&e)), Some(e.to_string()));
                        return;
                    }
                }
            }
            // Reading too is what reveals an RST promptly (a capture shows it at once).
            n = rd.read(&mut buf) => match n {
                Ok(0) => { rec(&r, "server", &conn, "closed", Some(Outcome::Eof), None); return; }
                Ok(_) => {}
                Err(e) => {
                    rec(&r, "server", &conn, "closed", Some(classify_io(&e)), Some(e.to_string()));
                    return;
                }
            }
        }
    }
}

/// Connects to a timer server and reads until the connection ends or `duration` passes.
/// With `keepalive`, TCP keepalive probes start after that idle time (and repeat at the
/// same interval), as the AKS guidance recommends for clients behind an idle timeout.
pub async fn client(
    name: String,
    target: SocketAddr,
    keepalive: Option<Duration>,
    duration: Duration,
    out: PathBuf,
) -> Result<(), TimerError> {
    let r = Recorder::open(&out)?;
    let s = TcpStream::connect(target)
        .await
        .map_err(|source| TimerError::Io {
            what: format!("connect {target}"),
            source,
        })?;
    let conn = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
    if let Some(idle) = keepalive {
        let ka = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(idle)
            .with_retries(3);
        socket2::SockRef::from(&s)
            .set_tcp_keepalive(&ka)
            .map_err(|source| TimerError::Io {
                what: "set keepalive".into(),
                source,
            })?;
    }
    rec(&r, &name, &conn, "connected", None, None);
    let mut s = s;
    let mut buf = [0u8; 1024];
    let end = Instant::now() + duration;
    loop {
        tokio::select! {
            n = s.read(&mut buf) => match n {
                Ok(0) => { rec(&r, &name, &conn, "closed", Some(Outcome::Eof), None); return Ok(()); }
                Ok(_) => rec(&r, &name, &conn, "received", None, None),
                Err(e) => {
                    rec(&r, &name, &conn, "closed", Some(classify_io(&e)), Some(e.to_string()));
                    return Ok(());
                }
            },
            _ = tokio::time::sleep_until(end) => {
                rec(&r, &name, &conn, "alive_at_end", None, None);
                return Ok(());
            }
        }
    }
}
