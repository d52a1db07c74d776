//! The apiserver seen from HTTP: the `/readyz` and `/healthz` poller (on the
//! local instance, directly) and the active prober (through the LB URL, as
//! a client pod would, but classifying every failure). Both feed the
//! correlation engine with boot-clock timestamps, the kernel's clock; the
//! daemon adds the wall time a kernel event at that instant gets.

use std::{sync::Arc, time::Duration};

use drainwatch_correlate::{Obs, Observation, ProbeMode, ProbeOutcome, Source};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Uri, body::Bytes};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{net::TcpStream, sync::mpsc, sync::watch};

use crate::export::metrics::Metrics;

/// How TLS servers are checked.
#[derive(Clone)]
pub enum Tls {
    /// Verify against these CA certificates (e.g. the kubeconfig's CA).
    Verify(Arc<rustls::ClientConfig>),
    /// `--insecure-skip-tls-verify`: encrypt, do not verify.
    Insecure(Arc<rustls::ClientConfig>),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {0}: {1}")]
    Read(String, String),
    #[error("CA file {0} holds no certificate")]
    Empty(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Trusts every certificate in the PEM texts (name, text): a CA file
    /// and a kubeconfig's CA, say.
    pub fn from_ca_pems(pems: &[(String, Vec<u8>)]) -> Result<Tls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut shown = Vec::new();
        for (name, pem) in pems {
            shown.push(name.clone());
            let before = roots.len();
            for c in CertificateDer::pem_slice_iter(pem) {
                let c = c.map_err(|e| TlsError::Read(name.clone(), e.to_string()))?;
                roots
                    .add(c)
                    .map_err(|e| TlsError::Read(name.clone(), e.to_string()))?;
            }
            if roots.len() == before {
                return Err(TlsError::Empty(name.clone()));
            }
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Read(shown.join(", "), e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls::Verify(Arc::new(with_alpn(cfg))))
    }

    pub fn insecure() -> Tls {
        #[derive(Debug)]
        struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);
        impl rustls::client::danger::ServerCertVerifier for AcceptAny {
            fn verify_server_cert(
                &self,
                _: &CertificateDer<'_>,
                _: &[CertificateDer<'_>],
                _: &ServerName<'_>,
                _: &[u8],
                _: rustls::pki_types::UnixTime,
            ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            fn verify_tls12_signature(
                &self,
                m: &[u8],
                c: &CertificateDer<'_>,
                d: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
            {
                rustls::crypto::verify_tls12_signature(
                    m,
                    c,
                    d,
                    &self.0.signature_verification_algorithms,
                )
            }
            fn verify_tls13_signature(
                &self,
                m: &[u8],
                c: &CertificateDer<'_>,
                d: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
            {
                rustls::crypto::verify_tls13_signature(
                    m,
                    c,
                    d,
                    &self.0.signature_verification_algorithms,
                )
            }
            fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
                self.0.signature_verification_algorithms.supported_schemes()
            }
        }
        let p = provider();
        let cfg = rustls::ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAny(p)))
                    .with_no_client_auth()
            });
        match cfg {
            Ok(c) => Tls::Insecure(Arc::new(with_alpn(c))),
            // The ring provider always supports the default versions.
            Err(_) => Tls::Insecure(Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )),
        }
    }

    fn config(&self) -> Arc<rustls::ClientConfig> {
        match self {
            Tls::Verify(c) | Tls::Insecure(c) => c.clone(),
        }
    }
}

/// Offers HTTP/2 first, as client-go does: a GOAWAY is only visible on it.
fn with_alpn(mut cfg: rustls::ClientConfig) -> rustls::ClientConfig {
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg
}

/// Boot-clock nanoseconds: the clock the kernel programs stamp events with.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A connection to send requests on: HTTP/2 when the server chose it by
/// ALPN, else HTTP/1.1.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// One HTTP/1.1 connection (TLS when the URL is https).
async fn connect(uri: &Uri, tls: &Tls, timeout: Duration) -> Result<Sender, ProbeOutcome> {
    let host = uri
        .host()
        .ok_or(ProbeOutcome::Eof)?
        .trim_matches(['[', ']'])
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = match tokio::time::timeout(timeout, dial(&host, port)).await {
        Err(_) => return Err(ProbeOutcome::Timeout),
        Ok(Err(e)) => return Err(classify_io(&e)),
        Ok(Ok(s)) => s,
    };
    if https {
        let name = ServerName::try_from(host.clone()).map_err(|_| ProbeOutcome::Tls)?;
        let tls = tokio_rustls::TlsConnector::from(tls.config());
        let stream = match tokio::time::timeout(timeout, tls.connect(name, tcp)).await {
            Err(_) => return Err(ProbeOutcome::Timeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(ProbeOutcome::Tls);
            }
            Ok(Err(e)) => return Err(classify_io(&e)),
            Ok(Ok(s)) => s,
        };
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            handshake_h2(TokioIo::new(stream)).await
        } else {
            handshake(TokioIo::new(stream)).await
        }
    } else {
        handshake(TokioIo::new(tcp)).await
    }
}

/// Connects from a port bound before the SYN, so the kernel's connect
/// attempt already carries the whole 4-tuple and the daemon can tell this
/// connection (and the server side of it, when the apiserver is local) from
/// its clients' (see `observe::OwnConnections`).
async fn dial(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let (sock, any) = if addr.is_ipv4() {
            (
                tokio::net::TcpSocket::new_v4()?,
                std::net::SocketAddr::from(([0u8; 4], 0)),
            )
        } else {
            (
                tokio::net::TcpSocket::new_v6()?,
                std::net::SocketAddr::from(([0u16; 8], 0)),
            )
        };
        sock.bind(any)?;
        match sock.connect(addr).await {
            Ok(s) => {
                // The reused connection idles between probes: kept alive
                // as the kube clients' are (an LB's idle timeout).
                crate::sources::kubewatch::keep_alive(&s)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no address"))
    }))
}

async fn handshake<T>(io: T) -> Result<Sender, ProbeOutcome>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| ProbeOutcome::Eof)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Sender::H1(sender))
}

async fn handshake_h2<T>(io: T) -> Result<Sender, ProbeOutcome>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .map_err(|e| classify_hyper(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Sender::H2(sender))
}

fn classify_io(e: &std::io::Error) -> ProbeOutcome {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => ProbeOutcome::Refused,
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
            ProbeOutcome::Reset
        }
        std::io::ErrorKind::TimedOut => ProbeOutcome::Timeout,
        _ => ProbeOutcome::Eof,
    }
}

/// A hyper error's class. HTTP/2: a stream the server refused by GOAWAY
/// (beyond its last stream id, or REFUSED_STREAM) is `goaway`, what
/// client-go retries; a stream reset otherwise is `reset`.
fn classify_hyper(e: &hyper::Error) -> ProbeOutcome {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            if h2e.is_go_away() || h2e.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return ProbeOutcome::Goaway;
            }
            if let Some(io) = h2e.get_io() {
                return classify_io(io);
            }
            if h2e.is_reset() {
                return ProbeOutcome::Reset;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return classify_io(io);
        }
        src = s.source();
    }
    ProbeOutcome::Eof
}

/// One GET on `sender`; the status code or how it failed.
async fn get(sender: &mut Sender, uri: &Uri, timeout: Duration) -> ProbeOutcome {
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    // HTTP/1.1 sends the path and a Host header; HTTP/2 the whole URI
    // (:scheme and :authority come from it).
    let req = match sender {
        Sender::H1(_) => Request::get(path).header(hyper::header::HOST, host),
        Sender::H2(_) => Request::get(uri.clone()),
    }
    .header(hyper::header::USER_AGENT, "drainwatch-prober")
    .body(Empty::<Bytes>::new());
    let Ok(req) = req else {
        return ProbeOutcome::Eof;
    };
    let sent = async {
        match sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    };
    match tokio::time::timeout(timeout, sent).await {
        Err(_) => ProbeOutcome::Timeout,
        Ok(Err(e)) => classify_hyper(&e),
        Ok(Ok(resp)) => {
            let code = resp.status().as_u16();
            // Drain the body so the connection can be reused.
            let _ = tokio::time::timeout(timeout, resp.into_body().collect()).await;
            ProbeOutcome::Ok(code)
        }
    }
}

/// A one-shot GET on a fresh connection.
pub async fn get_once(uri: &Uri, tls: &Tls, timeout: Duration) -> ProbeOutcome {
    match connect(uri, tls, timeout).await {
        Ok(mut s) => get(&mut s, uri, timeout).await,
        Err(o) => o,
    }
}

/// The label for an outcome: the HTTP status, or the failure class.
pub fn outcome_label(o: &ProbeOutcome) -> String {
    match o {
        ProbeOutcome::Ok(code) => code.to_string(),
        ProbeOutcome::Refused => "refused".into(),
        ProbeOutcome::Reset => "reset".into(),
        ProbeOutcome::Timeout => "timeout".into(),
        ProbeOutcome::Goaway => "goaway".into(),
        ProbeOutcome::Tls => "tls".into(),
        ProbeOutcome::Eof => "eof".into(),
    }
}

/// Polls `/readyz` and `/healthz` on the local instance and reports changes.
pub async fn poll_health(
    base: Uri,
    tls: Tls,
    interval: Duration,
    metrics: Arc<Metrics>,
    obs: mpsc::Sender<Observation>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut last: [Option<bool>; 2] = [None, None];
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let instance = base.authority().map(|a| a.to_string()).unwrap_or_default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        for (i, path) in ["/readyz", "/healthz"].iter().enumerate() {
            let uri: Uri = match format!("{base}{}", path.trim_start_matches('/')).parse() {
                Ok(u) => u,
                Err(_) => continue,
            };
            let outcome = get_once(&uri, &tls, interval.max(Duration::from_secs(1))).await;
            let ok = matches!(outcome, ProbeOutcome::Ok(200));
            // The source works when the apiserver answers at all; a refused
            // or timed-out poll is "apiserver down", also worth alerting on.
            metrics
                .source_up
                .with_label_values(&["readyz"])
                .set(i64::from(matches!(outcome, ProbeOutcome::Ok(_))));
            metrics
                .apiserver_health
                .with_label_values(&[&instance, path.trim_start_matches('/')])
                .set(i64::from(ok));
            if last[i] != Some(ok) {
                last[i] = Some(ok);
                let kind = if i == 0 {
                    Obs::ReadyzChanged { ready: ok }
                } else {
                    Obs::HealthzChanged { healthy: ok }
                };
                tracing::info!(
                    "{path} on {instance}: {}",
                    if ok { "ok" } else { "failing" }
                );
                let _ = obs
                    .send(Observation {
                        id: 0,
                        t_ns: boot_ns(),
                        wall: None,
                        instance: None,
                        source: Source::Poller,
                        kind,
                        who: None,
                    })
                    .await;
            }
        }
    }
}

/// Sends GETs to `target` at `interval`, on a new connection each time or
/// on one reused connection, counting and reporting every outcome.
pub async fn probe(
    target: Uri,
    mode: ProbeMode,
    tls: Tls,
    interval: Duration,
    metrics: Arc<Metrics>,
    obs: mpsc::Sender<Observation>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let label = target
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // The engine's name for the target keeps the path: a health
    // endpoint's 5xx is the instance saying "not ready", not a failure.
    let named = format!("{label}{}", target.path());
    let mode_label = match mode {
        ProbeMode::NewConn => "new_connection",
        ProbeMode::Reused => "reused_connection",
    };
    let timeout = Duration::from_secs(5).max(interval);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<Sender> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        let outcome = match mode {
            ProbeMode::NewConn => get_once(&target, &tls, timeout).await,
            ProbeMode::Reused => {
                let sender = match conn.take() {
                    Some(s) if !s.is_closed() => Ok(s),
                    _ => {
                        let c = connect(&target, &tls, timeout).await;
                        if let Ok(s) = &c {
                            tracing::info!(
                                "prober: new reused connection to {label} speaks {}",
                                match s {
                                    Sender::H1(_) => "HTTP/1.1",
                                    Sender::H2(_) => "HTTP/2",
                                }
                            );
                        }
                        c
                    }
                };
                match sender {
                    Ok(mut s) => {
                        let o = get(&mut s, &target, timeout).await;
                        if matches!(o, ProbeOutcome::Ok(_)) {
                            conn = Some(s);
                        }
                        o
                    }
                    Err(o) => o,
                }
            }
        };
        metrics
            .probe_requests
            .with_label_values(&[&label, mode_label, "GET", &outcome_label(&outcome)])
            .inc();
        metrics
            .source_up
            .with_label_values(&["probe"])
            .set(i64::from(matches!(outcome, ProbeOutcome::Ok(_))));
        let _ = obs
            .send(Observation {
                id: 0,
                t_ns: boot_ns(),
                wall: None,
                instance: None,
                source: Source::Prober,
                kind: Obs::ProbeResult {
                    target: named.clone(),
                    mode,
                    method: "GET".into(),
                    client: None,
                    server: None,
                    outcome,
                },
                who: None,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prober's connections (the reused one idles between probes)
    /// have the kube clients' keepalive, read back from the kernel.
    #[tokio::test]
    async fn prober_connections_have_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let s = dial("127.0.0.1", port).await.expect("dial");
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            (
                sock.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
                sock.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
                sock.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
            ),
            (Duration::from_secs(30), Duration::from_secs(30), 9)
        );
    }

    #[test]
    fn labels_and_io_classes() {
        assert_eq!(outcome_label(&ProbeOutcome::Ok(503)), "503");
        assert_eq!(outcome_label(&ProbeOutcome::Refused), "refused");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_io(&refused), ProbeOutcome::Refused);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify_io(&reset), ProbeOutcome::Reset);
        let e = Tls::from_ca_pems(&[("ca.crt".into(), b"not a certificate".to_vec())])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("ca.crt"), "{e}");
    }
}
