//! A bounded load generator that records every request's outcome, the way OpenShift's
//! disruption samplers do: new-connection mode (one TCP+TLS
//! connection per request, sees `connection refused`) and reused-connection mode (one
//! long-lived connection, sees GOAWAY and resets; retries once like client-go does for
//! requests the server provably did not process).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::clock::now_ns;
use crate::record::{RecordError, Recorder};
use crate::tls::{self, TlsError};

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx response with its whole body.
    Ok,
    /// A complete response with a non-2xx status.
    HttpError,
    /// The TCP connect was refused (RST to our SYN).
    Refused,
    /// The connection was reset.
    Reset,
    /// The peer closed the connection before a complete response.
    Eof,
    /// Connect, handshake or response did not finish in time.
    Timeout,
    /// The server sent HTTP/2 GOAWAY (or refused the stream) before processing it.
    Goaway,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// Anything else.
    Other,
}

impl Outcome {
    /// Whether a client would report this request as failed.
    pub fn is_error(self) -> bool {
        self != Outcome::Ok
    }
}

/// Connection handling of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConnMode {
    /// One connection per request.
    New,
    /// One long-lived connection, replaced when it closes.
    Reuse,
}

/// HTTP version offered by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    /// HTTP/1.1.
    H1,
    /// HTTP/2.
    H2,
}

/// Load generator settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadConfig {
    /// Client name written into every record.
    #[arg(long)]
    pub name: String,
    /// Target `ip:port` (the VIP or a server).
    #[arg(long)]
    pub target: SocketAddr,
    /// CA certificate to verify the server with.
    #[arg(long)]
    pub ca: PathBuf,
    /// Connection handling.
    #[arg(long, value_enum, default_value = "new")]
    pub mode: ConnMode,
    /// HTTP version.
    #[arg(long, value_enum, default_value = "h2")]
    pub proto: Proto,
    /// Request path (a GET).
    #[arg(
        long,
        default_value = "/api/v1/namespaces/openshift-kube-apiserver/configmaps/config"
    )]
    pub path: String,
    /// Pause between the starts of consecutive requests of one worker.
    #[arg(long, value_parser = crate::clock::parse_duration, default_value = "100ms")]
    pub interval: Duration,
    /// Total run time (the generator stops by itself).
    #[arg(long, value_parser = crate::clock::parse_duration)]
    pub duration: Duration,
    /// Upper bound on requests, whatever the duration.
    #[arg(long, default_value_t = 20_000)]
    pub max_requests: u64,
    /// Per-request timeout (connect + TLS + response).
    #[arg(long, value_parser = crate::clock::parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Parallel workers.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// Bearer token.
    #[arg(long)]
    pub token: Option<String>,
    /// Output file (JSON lines of [`RequestRecord`]).
    #[arg(long)]
    pub out: PathBuf,
}

/// One request as the client saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Client name.
    pub client: String,
    /// Request sequence number within the client.
    pub seq: u64,
    /// Start (wall clock ns).
    pub start_ns: u64,
    /// End (wall clock ns).
    pub end_ns: u64,
    /// Final outcome.
    pub outcome: Outcome,
    /// HTTP status if a response arrived.
    #[serde(default)]
    pub status: Option<u16>,
    /// Connection id within the client (several requests share one in reuse mode).
    pub conn: u64,
    /// Local address of the connection that carried the final attempt.
    #[serde(default)]
    pub local: Option<String>,
    /// Error text, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// Outcome of a first attempt that was retried on a new connection.
    #[serde(default)]
    pub retried_after: Option<Outcome>,
}

/// The load generator could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The output could not be opened.
    #[error(transparent)]
    Record(#[from] RecordError),
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

struct Conn {
    id: u64,
    local: String,
    sender: Sender,
}

impl Conn {
    fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

struct Ctx {
    cfg: LoadConfig,
    tls: TlsConnector,
    server_name: ServerName<'static>,
    seq: AtomicU64,
    conn_ids: AtomicU64,
    rec: Recorder,
}

type Failure = (Outcome, String);

/// Runs the generator to completion (duration or max requests, whichever first).
pub async fn run(cfg: LoadConfig) -> Result<(), LoadError> {
    let alpn: &[&[u8]] = match cfg.proto {
        Proto::H1 => &[b"http/1.1"],
        Proto::H2 => &[b"h2"],
    };
    let tls = TlsConnector::from(Arc::new(tls::client_config(&cfg.ca, alpn)?));
    let server_name = ServerName::IpAddress(cfg.target.ip().into());
    let ctx = Arc::new(Ctx {
        rec: Recorder::open(&cfg.out)?,
        cfg,
        tls,
        server_name,
        seq: AtomicU64::new(0),
        conn_ids: AtomicU64::new(0),
    });
    // SIGTERM ends the run early but cleanly: no new requests, the current ones finish
    // and are recorded.
    let stop = Arc::new(tokio::sync::Notify::new());
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            term.recv().await;
            stop.notify_waiters();
        });
    }
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..ctx.cfg.concurrency.max(1) {
        workers.spawn(worker(Arc::clone(&ctx), Arc::clone(&stop)));
    }
    while workers.join_next().await.is_some() {}
    Ok(())
}

async fn worker(ctx: Arc<Ctx>, stop: Arc<tokio::sync::Notify>) {
    let end = Instant::now() + ctx.cfg.duration;
    let mut conn: Option<Conn> = None;
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let seq = ctx.seq.fetch_add(1, Ordering::SeqCst);
        if seq >= ctx.cfg.max_requests {
            break;
        }
        let rec = one_request(&ctx, seq, &mut conn).await;
        ctx.rec.write(&rec);
        if ctx.cfg.mode == ConnMode::New {
            conn = None;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(started + ctx.cfg.interval) => {}
            _ = &mut stopped => break,
        }
    }
}

async fn one_request(ctx: &Ctx, seq: u64, conn: &mut Option<Conn>) -> RequestRecord {
    let start_ns = now_ns();
    let deadline = Instant::now() + ctx.cfg.timeout;
    let mut retried_after = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let reused = conn.as_ref().is_some_and(|c| !c.is_closed());
        if !reused {
            *conn = None;
            match tokio::time::timeout_at(deadline, connect(ctx)).await {
                Ok(Ok(c)) => *conn = Some(c),
                Ok(Err((outcome, error))) => {
                    return record(
                        ctx,
                        seq,
                        start_ns,
                        outcome,
                        None,
                        0,
                        None,
                        Some(error),
                        retried_after,
                    );
                }
                Err(_) => {
                    return record(
                        ctx,
                        seq,
                        start_ns,
                        Outcome::Timeout,
                        None,
                        0,
                        None,
                        Some("connect timed out".into()),
                        retried_after,
                    );
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let (id, local) = (c.id, c.local.clone());
        let res = tokio::time::timeout_at(deadline, send(ctx, c)).await;
        let (outcome, status, error) = match res {
            Ok(Ok(status)) if (200..300).contains(&status) => (Outcome::Ok, Some(status), None),
            Ok(Ok(status)) => (
                Outcome::HttpError,
                Some(status),
                Some(format!("HTTP {status}")),
            ),
            Ok(Err((o, e))) => (o, None, Some(e)),
            Err(_) => (Outcome::Timeout, None, Some("response timed out".into())),
        };
        // Retry as Go's transport (under client-go) does: HTTP/2 only for streams the
        // server refused by GOAWAY; HTTP/1 also a GET lost on a kept-alive connection the
        // server closed before any response. A cut HTTP/2 stream is not retried.
        let retriable = outcome == Outcome::Goaway
            || (reused
                && ctx.cfg.proto == Proto::H1
                && outcome == Outcome::Eof
                && status.is_none());
        if retriable && attempt == 1 {
            retried_after = Some(outcome);
            *conn = None;
            continue;
        }
        if outcome.is_error() {
            *conn = None;
        }
        return record(
            ctx,
            seq,
            start_ns,
            outcome,
            status,
            id,
            Some(local),
            error,
            retried_after,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Ctx,
    seq: u64,
    start_ns: u64,
    outcome: Outcome,
    status: Option<u16>,
    conn: u64,
    local: Option<String>,
    error: Option<String>,
    retried_after: Option<Outcome>,
) -> RequestRecord {
    RequestRecord {
        client: ctx.cfg.name.clone(),
        seq,
        start_ns,
        end_ns: now_ns(),
        outcome,
        status,
        conn,
        local,
        error,
        retried_after,
    }
}

async fn connect(ctx: &Ctx) -> Result<Conn, Failure> {
    let tcp = TcpStream::connect(ctx.cfg.target)
        .await
        .map_err(|e| (classify_io(&e), format!("dial tcp {}: {e}", ctx.cfg.target)))?;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let stream = ctx
        .tls
        .connect(ctx.server_name.clone(), tcp)
        .await
        .map_err(|e| {
            let o = match classify_io(&e) {
                Outcome::Other => Outcome::Tls,
                o => o,
            };
            (o, format!("tls handshake: {e}"))
        })?;
    let io = TokioIo::new(stream);
    let id = ctx.conn_ids.fetch_add(1, Ordering::SeqCst) + 1;
    let sender = match ctx.cfg.proto {
        Proto::H1 => {
            let (s, c) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| (classify_hyper(&e), e.to_string()))?;
            tokio::spawn(c);
            Sender::H1(s)
        }
        Proto::H2 => {
            let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| (classify_hyper(&e), e.to_string()))?;
            tokio::spawn(c);
            Sender::H2(s)
        }
    };
    Ok(Conn { id, local, sender })
}

async fn send(ctx: &Ctx, c: &mut Conn) -> Result<u16, Failure> {
    let mut b = Request::get(ctx.cfg.path.as_str());
    if ctx.cfg.proto == Proto::H1 {
        b = b.header(hyper::header::HOST, ctx.cfg.target.to_string());
    } else {
        b = b.uri(format!("https://{}{}", ctx.cfg.target, ctx.cfg.path));
    }
    if let Some(t) = &ctx.cfg.token {
        b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = b
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| (Outcome::Other, e.to_string()))?;
    let h2 = ctx.cfg.proto == Proto::H2;
    // An HTTP/2 request refused by a closing connection (canceled, or the dispatch
    // channel already closed) was never sent: the connection had received GOAWAY. Go's
    // HTTP/2 transport retries these on a new connection.
    let unsent = |e: hyper::Error| {
        let o = if h2 && (e.is_canceled() || e.is_closed()) {
            Outcome::Goaway
        } else {
            classify_hyper(&e)
        };
        (o, e.to_string())
    };
    let resp = match &mut c.sender {
        Sender::H1(s) => {
            s.ready().await.map_err(unsent)?;
            s.send_request(req).await
        }
        Sender::H2(s) => {
            s.ready().await.map_err(unsent)?;
            s.send_request(req).await
        }
    }
    .map_err(unsent)?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| (classify_hyper(&e), e.to_string()))?;
    Ok(status)
}

/// Maps an I/O error to an outcome.
pub fn classify_io(e: &std::io::Error) -> Outcome {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => Outcome::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Outcome::Reset,
        K::UnexpectedEof => Outcome::Eof,
        K::TimedOut => Outcome::Timeout,
        K::InvalidData => Outcome::Tls,
        _ => Outcome::Other,
    }
}

/// Maps a hyper error to an outcome by walking its source chain.
pub fn classify_hyper(e: &hyper::Error) -> Outcome {
    if e.is_timeout() {
        return Outcome::Timeout;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            if h2e.is_go_away() || h2e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Outcome::Goaway;
            }
            if let Some(io) = h2e.get_io() {
                return classify_io(io);
            }
            if h2e.is_reset() {
                return Outcome::Reset;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return classify_io(io);
        }
        src = s.source();
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return Outcome::Eof;
    }
    Outcome::Other
}
