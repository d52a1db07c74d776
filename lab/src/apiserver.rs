//! The apiserver stand-in: HTTPS (h2 and http/1.1 by ALPN) on 6443, optional cleartext
//! h2c, health endpoints, the [`crate::k8s`] API surface, and kube-apiserver's shutdown
//! sequence with knobs for its failure modes (no shutdown delay, a hard close, SIGTERM
//! ignored until SIGKILL).
//!
//! Graceful sequence on SIGTERM, as kube-apiserver does it with
//! `--shutdown-delay-duration`: `sigterm` and `readyz_red` at once; keep accepting for the
//! shutdown delay; `listener_closed`, then every open connection is asked to shut down
//! gracefully (`goaway_sent`: hyper sends HTTP/2 GOAWAY, HTTP/1 closes after the current
//! response); in-flight requests and watches get up to the request timeout (`drained`),
//! `requests_cut` aborts what remains; `exit`. The names are the lifecycle records in
//! `truth.json`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::clock::now_ns;
use crate::k8s::{self, Reply, Store};
use crate::record::{RecordError, Recorder};
use crate::tls::{self, TlsError};

/// How the stand-in reacts to SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownMode {
    /// kube-apiserver's sequence: readyz red, delay, stop listening, GOAWAY, drain, exit.
    Graceful,
    /// Graceful, but stop listening at once (shutdown-delay-duration 0).
    NoDelay,
    /// After the delay, close the listener and every connection at once, like Go's
    /// `http.Server.Close()` instead of `Shutdown()`.
    HardClose,
    /// Record SIGTERM and carry on serving, so the grace period ends in SIGKILL.
    IgnoreTerm,
}

/// Stand-in configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Instance name (the master it runs on), written into every record.
    pub name: String,
    /// HTTPS address (6443).
    pub listen: SocketAddr,
    /// Optional cleartext address serving HTTP/1.1 and h2c (prior knowledge).
    pub h2c_listen: Option<SocketAddr>,
    /// Where the CA and serving certificate live (generated if missing).
    pub tls_dir: PathBuf,
    /// Subject alternative names for a generated serving certificate.
    pub sans: Vec<String>,
    /// shutdown-delay-duration.
    pub shutdown_delay: Duration,
    /// How long in-flight requests may run after the listener closed.
    pub request_timeout: Duration,
    /// Time from listening to ready (post-start hooks).
    pub startup_delay: Duration,
    /// Reaction to SIGTERM.
    pub mode: ShutdownMode,
    /// Lifecycle record file (JSON lines, appended).
    pub truth: PathBuf,
    /// Bearer token required on API calls (health endpoints are open, as with
    /// kube-apiserver's anonymous health access).
    pub token: Option<String>,
    /// The other masters, whose apiserver pods this one serves too.
    pub peers: Vec<String>,
    /// The `kubernetes` Service's endpoints this one publishes (EndpointSlices in
    /// `default`), as kube-apiserver publishes its advertise address; empty: `listen`.
    pub endpoints: Vec<SocketAddr>,
}

/// The stand-in failed to start.
#[derive(Debug, thiserror::Error)]
pub enum ApiserverError {
    /// Certificates could not be prepared.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The lifecycle record could not be opened.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Binding a listener or installing a signal handler failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One lifecycle record (also written by the scenario runner for what it does to a
/// process: `sigterm_sent`, `sigkill_sent`, `exited`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Wall-clock nanoseconds since the epoch.
    pub t_ns: u64,
    /// Instance (master) name.
    pub instance: String,
    /// Process id of that instance.
    pub pid: u32,
    /// What happened.
    pub event: String,
    /// Event-specific details.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

struct State {
    store: Store,
    ready: AtomicBool,
    shutting_down: AtomicBool,
    inflight: AtomicUsize,
    /// The raw sockets of open connections (by connection number), so a
    /// hard close can let each read what already reached it first.
    sockets: Mutex<HashMap<u64, RawFd>>,
    next_conn: AtomicU64,
    rec: Recorder,
    name: String,
    token: Option<String>,
}

impl State {
    /// Open connections whose socket still holds bytes the server has not
    /// read (`SIOCINQ`).
    fn unread_connections(&self) -> usize {
        let Ok(sockets) = self.sockets.lock() else {
            return 0;
        };
        sockets
            .values()
            .filter(|fd| {
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD (SIOCINQ) writes one int; a closed or
                // reused fd fails or reports that socket, never more.
                unsafe { libc::ioctl(**fd, libc::FIONREAD, &mut n) == 0 && n > 0 }
            })
            .count()
    }

    fn record(&self, event: &str, detail: Value) {
        self.rec.write(&Lifecycle {
            t_ns: now_ns(),
            instance: self.name.clone(),
            pid: std::process::id(),
            event: event.to_string(),
            detail,
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Serving,
    Draining,
}

type Body = BoxBody<Bytes, Infallible>;

/// Counts a request as in flight for as long as it (or its streaming body) lives.
struct Inflight(Arc<State>);

impl Inflight {
    fn new(s: &Arc<State>) -> Self {
        s.inflight.fetch_add(1, Ordering::SeqCst);
        Inflight(Arc::clone(s))
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body fed by a channel (watch streams).
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    _inflight: Inflight,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Runs the stand-in until its shutdown sequence completes.
pub async fn serve(cfg: Config) -> Result<(), ApiserverError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| ApiserverError::Io { what, source }
    };
    let files = tls::ensure(&cfg.tls_dir, &cfg.sans)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&files)?));
    let state = Arc::new(State {
        store: Store::new(),
        ready: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
        sockets: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(0),
        rec: Recorder::open(&cfg.truth)?,
        name: cfg.name.clone(),
        token: cfg.token.clone(),
    });
    let published = if cfg.endpoints.is_empty() {
        vec![cfg.listen]
    } else {
        cfg.endpoints.clone()
    };
    state
        .store
        .populate(&cfg.name, cfg.shutdown_delay.as_secs_f64(), &published);
    for p in &cfg.peers {
        state.store.add_peer_pod(p);
    }
    // Installed before listening so an early SIGTERM is never the default (fatal) action.
    let mut sigterm = signal(SignalKind::terminate()).map_err(io("SIGTERM handler"))?;
    state.record(
        "start",
        json!({"mode": cfg.mode, "shutdown_delay_s": cfg.shutdown_delay.as_secs_f64(),
        "request_timeout_s": cfg.request_timeout.as_secs_f64()}),
    );

    let tls_listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(io(&format!("bind {}", cfg.listen)))?;
    let plain_listener = match cfg.h2c_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(io(&format!("bind {a}")))?,
        ),
        None => None,
    };
    state.record("listening", json!({"addr": cfg.listen.to_string()}));
    println!("LISTENING {}", cfg.listen);

    let ready_at = Instant::now() + cfg.startup_delay;
    let mut became_ready = false;
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let mut conns: JoinSet<()> = JoinSet::new();
    let mut stop_at: Option<Instant> = None;

    loop {
        let plain_accept = async {
            match &plain_listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = tls_listener.accept() => match r {
                Ok((s, peer)) => {
                    conns.spawn(conn_task(s, peer, Some(acceptor.clone()), Arc::clone(&state), phase_rx.clone()));
                }
                Err(e) => tracing::warn!("accept: {e}"),
            },
            r = plain_accept => match r {
                Ok((s, peer)) => {
                    conns.spawn(conn_task(s, peer, None, Arc::clone(&state), phase_rx.clone()));
                }
                Err(e) => tracing::warn!("accept: {e}"),
            },
            _ = tokio::time::sleep_until(ready_at), if !became_ready => {
                became_ready = true;
                if !state.shutting_down.load(Ordering::SeqCst) {
                    state.ready.store(true, Ordering::SeqCst);
                    state.record("ready", Value::Null);
                    println!("READY");
                }
            },
            _ = sigterm.recv() => {
                if cfg.mode == ShutdownMode::IgnoreTerm {
                    state.record("sigterm_ignored", Value::Null);
                    continue;
                }
                if stop_at.is_some() {
                    continue;
                }
                state.record("sigterm", Value::Null);
                state.shutting_down.store(true, Ordering::SeqCst);
                state.ready.store(false, Ordering::SeqCst);
                became_ready = true;
                state.record("readyz_red", Value::Null);
                state.store.set_pod_ready(&cfg.name, false);
                let delay = if cfg.mode == ShutdownMode::NoDelay { Duration::ZERO } else { cfg.shutdown_delay };
                stop_at = Some(Instant::now() + delay);
            },
            _ = async { match stop_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {},
        }
    }

    drop(tls_listener);
    drop(plain_listener);
    let open = conns.len();
    state.record(
        "listener_closed",
        json!({"open_connections": open, "inflight": state.inflight.load(Ordering::SeqCst)}),
    );

    if cfg.mode == ShutdownMode::HardClose {
        // A request counts as in flight once it reached the server, not
        // once hyper dispatched it: let every connection read what is
        // already in its socket (hyper reads eagerly and dispatches a
        // request as soon as its head is parsed) before counting and
        // cutting. Bounded: an HTTP/1 connection busy with one request does
        // not read a pipelined next one; such connections are reported.
        let settle = Instant::now() + Duration::from_millis(200);
        while state.unread_connections() > 0 && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let unread = state.unread_connections();
        let inflight = state.inflight.load(Ordering::SeqCst);
        conns.abort_all();
        state.record(
            "connections_closed",
            json!({"connections": open, "inflight_cut": inflight, "unread_connections": unread}),
        );
    } else {
        // The channel stays open until here, so every connection task sees the change.
        let _ = phase_tx.send(Phase::Draining);
        state.record("goaway_sent", json!({"connections": open}));
        let deadline = Instant::now() + cfg.request_timeout;
        loop {
            tokio::select! {
                r = conns.join_next() => if r.is_none() {
                    state.record("drained", Value::Null);
                    break;
                },
                _ = tokio::time::sleep_until(deadline) => {
                    state.record("requests_cut", json!({"connections": conns.len(),
                        "inflight": state.inflight.load(Ordering::SeqCst)}));
                    conns.abort_all();
                    break;
                }
            }
        }
    }
    while conns.join_next().await.is_some() {}
    state.record("exit", Value::Null);
    Ok(())
}

async fn conn_task(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    mut phase: watch::Receiver<Phase>,
) {
    let _ = stream.set_nodelay(true);
    let accepted = Instant::now();
    let _registered = Registered::new(&state, stream.as_raw_fd());
    let svc_state = Arc::clone(&state);
    // Counted in flight when hyper calls the service (the request head has
    // been parsed), not when the handler first runs: HTTP/2 handlers are
    // spawned tasks that may not have run yet when the server is cut.
    let svc = hyper::service::service_fn(move |req| {
        let inflight = Inflight::new(&svc_state);
        handle(req, Arc::clone(&svc_state), inflight)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let result = match tls {
        Some(acceptor) => {
            let hs = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
            let Ok(Ok(tls_stream)) = hs else {
                // Health checkers and port scanners hang up mid-handshake; not an event.
                return;
            };
            // With upgrades: the port-forward WebSocket (HTTP/1.1 only, as
            // with kube-apiserver).
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), svc);
            drive(conn, &mut phase, accepted).await
        }
        None => {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            drive(conn, &mut phase, accepted).await
        }
    };
    if let Err(e) = result {
        state.record("conn_error", json!({"peer": peer.to_string(), "error": e}));
    }
}

/// A connection's socket listed in [`State::sockets`] while it is open.
struct Registered(Arc<State>, u64);

impl Registered {
    fn new(state: &Arc<State>, fd: RawFd) -> Self {
        let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = state.sockets.lock() {
            s.insert(id, fd);
        }
        Registered(Arc::clone(state), id)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.sockets.lock() {
            s.remove(&self.1);
        }
    }
}

/// A connection's error with its causes, or None when it only failed to shut down a
/// socket the peer had already reset (HAProxy ends every health check that way).
fn conn_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_shutdown)
    {
        return None;
    }
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Some(msg)
}

/// A connection accepted this recently when draining starts gets its first
/// request served before it is asked to shut down, as Go's `Shutdown` leaves
/// a `StateNew` connection alone until it has been idle for 5 s (scaled down
/// with the lab's time). Without it, a client that connected just before the
/// listener closed is cut, which kube-apiserver does not do.
const NEW_CONN_GRACE: Duration = Duration::from_millis(500);

/// Serves one connection; when draining starts, asks it to shut down gracefully
/// (GOAWAY for HTTP/2, close-after-response for HTTP/1).
async fn drive<C>(
    conn: C,
    phase: &mut watch::Receiver<Phase>,
    accepted: Instant,
) -> Result<(), String>
where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + GracefulConn,
{
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    let graceful_at = tokio::time::sleep(Duration::ZERO);
    let mut graceful_at = std::pin::pin!(graceful_at);
    let mut pending_graceful = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => return match r {
                Ok(()) => Ok(()),
                Err(e) => conn_failure(e.as_ref()).map_or(Ok(()), Err),
            },
            c = phase.changed(), if !draining => {
                draining = true;
                if c.is_ok() && *phase.borrow() == Phase::Draining {
                    graceful_at
                        .as_mut()
                        .reset(accepted + NEW_CONN_GRACE);
                    pending_graceful = true;
                }
            }
            _ = graceful_at.as_mut(), if pending_graceful => {
                pending_graceful = false;
                conn.as_mut().start_graceful();
            }
        }
    }
}

/// The graceful-shutdown entry of hyper-util's auto connections, over both IO types.
trait GracefulConn {
    fn start_graceful(self: Pin<&mut Self>);
}

impl<I, S> GracefulConn
    for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn start_graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_resp(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `/readyz`, `/livez`, `/healthz` in kube-apiserver's format.
fn health(path: &str, verbose: bool, state: &State) -> Response<Body> {
    let ready = state.ready.load(Ordering::SeqCst);
    let down = state.shutting_down.load(Ordering::SeqCst);
    let mut checks = vec![("ping", None), ("log", None), ("etcd", None)];
    let name = path.trim_start_matches('/');
    if name == "readyz" {
        checks.push(("shutdown", down.then_some("reason withheld")));
        checks.push((
            "poststarthook/drainwatch-lab-startup",
            (!ready && !down).then_some("not finished"),
        ));
    }
    let failed = checks.iter().any(|(_, f)| f.is_some());
    if !failed && !verbose {
        return text(StatusCode::OK, "ok".into());
    }
    let mut body = String::new();
    for (c, f) in &checks {
        match f {
            None => body.push_str(&format!("[+]{c} ok\n")),
            Some(why) => body.push_str(&format!("[-]{c} failed: {why}\n")),
        }
    }
    if failed {
        body.push_str(&format!("{name} check failed\n"));
        text(StatusCode::INTERNAL_SERVER_ERROR, body)
    } else {
        body.push_str(&format!("{name} check passed\n"));
        text(StatusCode::OK, body)
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    inflight: Inflight,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let q = k8s::parse_query(&query);
    match path.as_str() {
        "/readyz" | "/livez" | "/healthz" => {
            return Ok(health(&path, q.contains_key("verbose"), &state));
        }
        "/lab/slow" => {
            // A request that takes a while: the in-flight work a graceful shutdown drains and
            // a hard close, the request timeout or a SIGKILL cuts.
            let ms: u64 = q.get("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
            // `&record` asks for a lifecycle record once the request is being served, so a
            // test can act (SIGTERM) knowing it is in flight instead of guessing with a sleep.
            if q.contains_key("record") {
                state.record("slow_started", json!({"ms": ms}));
            }
            tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
            return Ok(text(StatusCode::OK, format!("slept {ms}ms\n")));
        }
        _ => {}
    }
    if let Some(token) = &state.token {
        let ok = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.strip_prefix("Bearer ") == Some(token.as_str()));
        if !ok {
            return Ok(json_resp(
                401,
                &k8s::status(401, "Unauthorized", "Unauthorized"),
            ));
        }
    }
    if let Some((ns, name)) = portforward_path(&path) {
        return Ok(port_forward(req, &state, ns, name, q.get("ports")));
    }
    let method = req.method().to_string();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    // JSON patches are JSON too (the kind of patch is the API layer's to judge).
    let json_patch = method == "PATCH" && content_type.contains("patch+json");
    let proto_body =
        !content_type.is_empty() && !content_type.starts_with("application/json") && !json_patch;
    if proto_body {
        // Only JSON bodies are understood; 415 is what kube-apiserver answers for a media
        // type it does not serve.
        return Ok(json_resp(
            415,
            &k8s::status(
                415,
                "UnsupportedMediaType",
                "only application/json request bodies are supported",
            ),
        ));
    }
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) => {
            return Ok(json_resp(
                400,
                &k8s::status(400, "BadRequest", &e.to_string()),
            ));
        }
    };
    let api_req = k8s::Request {
        method,
        path,
        query,
        accept,
        content_type,
        body,
    };
    match state.store.handle(&api_req) {
        Reply::Json(code, v) => Ok(json_resp(code, &v)),
        Reply::Watch(w) => Ok(watch_response(w, inflight, &state)),
    }
}

/// `(namespace, pod)` of `/api/v1/namespaces/NS/pods/NAME/portforward`.
fn portforward_path(path: &str) -> Option<(&str, &str)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, "portforward"] => Some((ns, name)),
        _ => None,
    }
}

/// The port-forward subresource: a WebSocket upgrade, then
/// [`k8s::portforward::bridge`] to the pod's port; each connection leaves a
/// `port_forward` lifecycle record (pod, port, bytes each way, or the error).
fn port_forward(
    mut req: Request<Incoming>,
    state: &Arc<State>,
    ns: &str,
    name: &str,
    ports: Option<&String>,
) -> Response<Body> {
    let header = |h: hyper::header::HeaderName| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let upgrade = header(hyper::header::UPGRADE);
    let key = header(hyper::header::SEC_WEBSOCKET_KEY);
    if !upgrade.eq_ignore_ascii_case("websocket") || key.is_empty() {
        return json_resp(
            400,
            &k8s::status(
                400,
                "BadRequest",
                "port-forward needs a WebSocket upgrade (the lab serves no SPDY)",
            ),
        );
    }
    let Some(pod) = state.store.object(k8s::Kind::Pod, ns, name) else {
        return json_resp(
            404,
            &k8s::status(404, "NotFound", &format!("pods \"{name}\" not found")),
        );
    };
    let offered = header(hyper::header::SEC_WEBSOCKET_PROTOCOL);
    let plan = match k8s::portforward::plan(&pod, ports.map(String::as_str), &offered) {
        Ok(p) => p,
        Err((code, msg)) => {
            let reason = if code == 400 {
                "BadRequest"
            } else {
                "InternalError"
            };
            return json_resp(code, &k8s::status(code, reason, &msg));
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let st = Arc::clone(state);
    tokio::spawn(async move {
        let detail = |extra: Value| {
            let mut d = json!({"pod": plan.pod, "port": plan.port, "netns": plan.netns});
            if let (Some(d), Value::Object(e)) = (d.as_object_mut(), extra) {
                d.extend(e);
            }
            d
        };
        let rec = match on_upgrade.await {
            Ok(up) => match k8s::portforward::bridge(TokioIo::new(up), plan.clone()).await {
                Ok(c) => detail(json!({"to_pod": c.to_pod, "from_pod": c.from_pod})),
                Err(e) => detail(json!({"error": e})),
            },
            Err(e) => detail(json!({"error": format!("upgrade: {e}")})),
        };
        st.record("port_forward", rec);
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        hyper::header::SEC_WEBSOCKET_PROTOCOL,
        hyper::header::HeaderValue::from_static(k8s::portforward::PROTOCOL),
    );
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
        h.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

fn watch_response(mut w: k8s::Watch, inflight: Inflight, state: &Arc<State>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    // Bounded: a client-chosen timeout, else the lab's cap of ten minutes.
    let limit = Duration::from_secs(w.timeout_secs.unwrap_or(600).min(600));
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let id = crate::clock::now_ns();
        state.record("watch_started", json!({"watch": id}));
        let deadline = Instant::now() + limit;
        let mut sent = 0u64;
        let mut reason = "timeout";
        let initial = std::mem::take(&mut w.initial);
        for ev in &initial {
            if tx.send(Bytes::from(w.line(ev))).await.is_err() {
                reason = "client gone";
            }
            sent += 1;
        }
        if reason != "client gone" {
            loop {
                tokio::select! {
                    r = w.feed.recv() => match r {
                        Ok(ev) if w.wants(&ev) => {
                            if tx.send(Bytes::from(w.line(&ev))).await.is_err() {
                                reason = "client gone";
                                break;
                            }
                            sent += 1;
                        }
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            reason = "lagged";
                            break;
                        }
                        Err(_) => { reason = "closed"; break; }
                    },
                    _ = tx.closed() => { reason = "client gone"; break; }
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        state.record(
            "watch_ended",
            json!({"watch": id, "reason": reason, "events_sent": sent}),
        );
    });
    let mut r = Response::new(
        ChannelBody {
            rx,
            _inflight: inflight,
        }
        .boxed(),
    );
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
