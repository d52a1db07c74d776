//! The apiserver pods' phase and readiness from the Kubernetes API (kube-rs):
//! an "is the kube-apiserver pod Running" gauge, and an input to the
//! correlation. kube-rs's `runtime::watcher` lists, then watches from the
//! list's resourceVersion with bookmarks, re-lists after a 410 Gone, and backs
//! off on errors; a re-list also forgets pods deleted while the watch was
//! down. Credentials never reach logs, events or metrics: only the
//! kubeconfig's path is named.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use drainwatch_correlate::{Obs, Observation, Source};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::{mpsc, watch};

use crate::{
    export::metrics::Metrics,
    sources::{http::boot_ns, kubeconfig::kubeconfig_error},
};

/// Where the pod watcher's credentials come from, in the order kubectl and
/// client-go's `Config::infer` try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `--kubeconfig FILE`.
    File(PathBuf),
    /// `$KUBECONFIG`: one or more files, merged (the first to set a value wins).
    Env(Vec<PathBuf>),
    /// `~/.kube/config`.
    Home(PathBuf),
    /// The pod's service account.
    InCluster,
}

impl Credentials {
    /// Chooses as `Config::infer` does: the flag, then `$KUBECONFIG`, then
    /// `~/.kube/config` if it exists, then the service account when running
    /// in a pod; `None` when there is none of these. Pure: the environment
    /// and the file check are arguments.
    pub fn choose(
        flag: Option<PathBuf>,
        kubeconfig_env: Option<std::ffi::OsString>,
        home: Option<PathBuf>,
        in_pod: bool,
        exists: impl Fn(&std::path::Path) -> bool,
    ) -> Option<Credentials> {
        if let Some(f) = flag {
            return Some(Credentials::File(f));
        }
        if let Some(v) = kubeconfig_env {
            let paths: Vec<PathBuf> = std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            if !paths.is_empty() {
                return Some(Credentials::Env(paths));
            }
        }
        if let Some(h) = home.map(|h| h.join(".kube").join("config"))
            && exists(&h)
        {
            return Some(Credentials::Home(h));
        }
        in_pod.then_some(Credentials::InCluster)
    }

    /// How the log names it.
    pub fn describe(&self) -> String {
        let list = |p: &[PathBuf]| {
            p.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        };
        match self {
            Credentials::File(p) => format!("--kubeconfig {}", p.display()),
            Credentials::Env(p) => format!("$KUBECONFIG {}", list(p)),
            Credentials::Home(p) => format!("kubeconfig {}", p.display()),
            Credentials::InCluster => "the pod's service account".to_string(),
        }
    }
}

/// Which pods to watch, and with which credentials.
#[derive(Debug, Clone)]
pub struct PodWatch {
    pub credentials: Credentials,
    pub namespace: String,
    pub selector: String,
    /// Only pods on this node (`spec.nodeName`), when known.
    pub node: Option<String>,
    /// The pods seen, for the Kubernetes Events about them.
    pub known: KnownPods,
}

/// The apiserver pods the watcher currently sees, as the references an
/// event's `regarding` takes (shared with `export::kube_events`).
#[derive(Debug, Clone, Default)]
pub struct KnownPods(Arc<std::sync::Mutex<std::collections::BTreeMap<String, ObjectReference>>>);

impl KnownPods {
    /// The pods seen, by name.
    pub fn list(&self) -> Vec<ObjectReference> {
        self.0
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn set(&self, p: &Pod) {
        let r = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: p.metadata.name.clone(),
            namespace: p.metadata.namespace.clone(),
            uid: p.metadata.uid.clone(),
            ..Default::default()
        };
        if let (Ok(mut m), Some(name)) = (self.0.lock(), r.name.clone()) {
            m.insert(name, r);
        }
    }

    fn remove(&self, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(name);
        }
    }
}

/// A client with the watcher's credentials (the events writer uses it too).
pub(crate) async fn client(w: &PodWatch) -> anyhow::Result<Client> {
    client_for(&w.credentials, None).await
}

/// A client with `credentials`, in kubeconfig `context` (the current one
/// when None), as kubectl makes one.
pub async fn client_for(
    credentials: &Credentials,
    context: Option<&str>,
) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    let what = credentials.describe();
    let files: &[PathBuf] = match credentials {
        Credentials::File(p) | Credentials::Home(p) => std::slice::from_ref(p),
        Credentials::Env(p) => p,
        Credentials::InCluster => &[],
    };
    let config = if files.is_empty() {
        Config::incluster().context("in-cluster Kubernetes configuration")?
    } else {
        // Every file read bounded (the kubeconfig and what it points to),
        // then merged as kubectl merges $KUBECONFIG.
        let mut kc = Kubeconfig::default();
        for f in files {
            kc = kc
                .merge(crate::sources::kubeconfig::load(f)?)
                .map_err(|e| kubeconfig_error(&what, &e))?;
        }
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..KubeConfigOptions::default()
        };
        Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| kubeconfig_error(&what, &e))?
    };
    // kube-rs without its proxy features refuses a proxy too; the URL is
    // not named, as it may carry a password.
    if config.proxy_url.is_some() {
        anyhow::bail!("{what}: proxy-url is set; drainwatch connects to the apiserver directly");
    }
    build_client(config).map_err(|e| kubeconfig_error("Kubernetes client", &e))
}

/// What `--kube-keepalive` sets: the idle time before TCP keepalive probes
/// on drainwatch's own connections to the apiserver, in whole seconds (the
/// kernel's unit), 0 = off. Process-wide, set once at start before any
/// client is built, and read where each connection is made: a client is
/// built by several sources (pod and node-pod watchers, the EndpointSlice
/// lister, the Events writer, the prober), which it would otherwise be
/// threaded through.
static KEEPALIVE_SECS: AtomicU32 = AtomicU32::new(DEFAULT_KEEPALIVE_SECS);

/// client-go's dialer keeps connections alive after 30 s idle, probing
/// every 30 s (`net.Dialer{KeepAlive: 30 * time.Second}`).
pub const DEFAULT_KEEPALIVE_SECS: u32 = 30;

/// Unanswered probes before the kernel drops the connection: Linux's
/// `tcp_keepalive_probes` default, and Go's when it sets keepalive, set
/// here so that a node's sysctl does not change it.
const KEEPALIVE_PROBES: u32 = 9;

/// Sets the keepalive of every later connection (`None` = off).
pub fn set_keepalive(idle: Option<Duration>) {
    let secs = idle.map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
    KEEPALIVE_SECS.store(secs, Ordering::Relaxed);
}

/// The keepalive idle time of new connections, also the probe interval
/// (as Go's dialer sets both); `None` when off.
pub fn keepalive() -> Option<Duration> {
    match KEEPALIVE_SECS.load(Ordering::Relaxed) {
        0 => None,
        s => Some(Duration::from_secs(u64::from(s))),
    }
}

/// Turns on TCP keepalive ([`keepalive`]) on a socket drainwatch connected
/// itself (the prober's).
pub(crate) fn keep_alive(sock: &tokio::net::TcpStream) -> std::io::Result<()> {
    let Some(idle) = keepalive() else {
        return Ok(());
    };
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle)
        .with_retries(KEEPALIVE_PROBES);
    socket2::SockRef::from(sock).set_tcp_keepalive(&ka)
}

/// A client as `Client::try_from(config)` builds it (kube-rs's TLS, its
/// connect/read/write timeouts, retry, auth, extra headers and base URI
/// layers, in its order), but whose connections have TCP keepalive:
/// kube-rs's own connector has none, and an LB that resets connections
/// idle for its timeout (Azure's: 4 minutes, both ends) then cuts a quiet
/// watch, which hangs or re-lists. Left out of kube-rs's stack: its debug
/// tracing spans, and the exec plugin's certificate expiry
/// (`Client::valid_until`, which nothing here reads); proxies, which
/// [`client_for`] refuses.
fn build_client(config: Config) -> Result<Client, kube::Error> {
    use hyper_util::{
        client::legacy::{Client as HyperClient, connect::HttpConnector},
        rt::TokioExecutor,
    };
    use kube::client::{Body, ClientBuilder, ConfigExt as _, retry::RetryPolicy};
    use tower::{BoxError, ServiceBuilder, retry::RetryLayer};

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    if let Some(idle) = keepalive() {
        http.set_keepalive(Some(idle));
        http.set_keepalive_interval(Some(idle));
        http.set_keepalive_retries(Some(KEEPALIVE_PROBES));
    }
    let https = config.rustls_https_connector_with_connector(http)?;
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let client: HyperClient<_, Body> = HyperClient::builder(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(client);
    Ok(ClientBuilder::new(service, config.default_namespace).build())
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Watches the pods until stopped; never returns an error (the source's
/// health is exported instead, and kernel observation goes on).
pub async fn watch_pods(
    w: PodWatch,
    metrics: Arc<Metrics>,
    obs: mpsc::Sender<Observation>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut last: HashMap<String, (bool, bool)> = HashMap::new();
    let mut warned = false;
    // A client that cannot be built (a kubeconfig that is wrong or missing)
    // is retried: the file may be fixed or mounted later.
    let api: Api<Pod> = loop {
        let built = tokio::select! {
            c = client(&w) => c,
            _ = stop.changed() => return Ok(()),
        };
        match built {
            Ok(c) => break Api::namespaced(c, &w.namespace),
            Err(e) => source_down(&format!("{e:#}"), &w, &metrics, &mut warned),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return Ok(()),
        }
    };
    let mut config = watcher::Config::default().labels(&w.selector).timeout(290);
    if let Some(node) = &w.node {
        config = config.fields(&format!("spec.nodeName={node}"));
    }
    let mut stream = watcher(api, config).default_backoff().boxed();
    // Pods seen since the last (re-)list started: at its end, the others were
    // deleted while the watch was down.
    let mut listed: Option<HashSet<String>> = None;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = stop.changed() => return Ok(()),
        };
        let Some(ev) = ev else { return Ok(()) };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                source_down(&e, &w, &metrics, &mut warned);
                continue;
            }
        };
        metrics.source_up.with_label_values(&["kube"]).set(1);
        warned = false;
        match ev {
            watcher::Event::Init => listed = Some(HashSet::new()),
            watcher::Event::InitApply(p) => {
                if let Some(l) = listed.as_mut() {
                    l.insert(p.metadata.name.clone().unwrap_or_default());
                }
                w.known.set(&p);
                observe(&p, &metrics, &obs, &mut last).await;
            }
            watcher::Event::InitDone => {
                let keep = listed.take().unwrap_or_default();
                let gone: Vec<String> = last
                    .keys()
                    .filter(|n| !keep.contains(*n))
                    .cloned()
                    .collect();
                for name in gone {
                    w.known.remove(&name);
                    forget(&name, &metrics, &mut last);
                }
            }
            watcher::Event::Apply(p) => {
                w.known.set(&p);
                observe(&p, &metrics, &obs, &mut last).await
            }
            watcher::Event::Delete(p) => {
                let name = p.metadata.name.unwrap_or_default();
                w.known.remove(&name);
                forget(&name, &metrics, &mut last)
            }
        }
    }
}

/// The source is down: exported, and said once until it is up again.
fn source_down(e: &dyn std::fmt::Display, w: &PodWatch, metrics: &Metrics, warned: &mut bool) {
    metrics.source_up.with_label_values(&["kube"]).set(0);
    if !*warned {
        tracing::warn!("pod watcher ({}): {e}; retrying", w.namespace);
        *warned = true;
    }
}

fn forget(name: &str, metrics: &Metrics, last: &mut HashMap<String, (bool, bool)>) {
    metrics.pod_running.with_label_values(&[name]).set(0);
    metrics.pod_ready.with_label_values(&[name]).set(0);
    last.remove(name);
}

async fn observe(
    p: &Pod,
    metrics: &Metrics,
    obs: &mpsc::Sender<Observation>,
    last: &mut HashMap<String, (bool, bool)>,
) {
    let name = p.metadata.name.clone().unwrap_or_default();
    let now = (running(p), ready(p));
    metrics
        .pod_running
        .with_label_values(&[&name])
        .set(i64::from(now.0));
    metrics
        .pod_ready
        .with_label_values(&[&name])
        .set(i64::from(now.1));
    if last.insert(name.clone(), now).map(|prev| prev.0) != Some(now.0) {
        let _ = obs
            .send(Observation {
                id: 0,
                t_ns: boot_ns(),
                wall: None,
                instance: None,
                source: Source::Kube,
                kind: Obs::PodPhase { running: now.0 },
                who: None,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keepalive the kernel holds for this process's socket whose local
    /// address is `local`: (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL,
    /// TCP_KEEPCNT), read back with getsockopt.
    fn kernel_keepalive(local: std::net::SocketAddr) -> (bool, Duration, Duration, u32) {
        use std::os::fd::BorrowedFd;
        for e in std::fs::read_dir("/proc/self/fd").expect("fds") {
            let Some(fd) = e
                .expect("fd")
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: only read while the test's sockets are open; a
            // descriptor that is not a socket fails getsockname.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let s = socket2::SockRef::from(&fd);
            if s.local_addr().ok().and_then(|a| a.as_socket()) == Some(local) {
                return (
                    s.keepalive().expect("SO_KEEPALIVE"),
                    s.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
                    s.tcp_keepalive_interval().expect("TCP_KEEPINTVL"),
                    s.tcp_keepalive_retries().expect("TCP_KEEPCNT"),
                );
            }
        }
        panic!("no socket of this process at {local}")
    }

    /// A kube client's connection, as the kernel sees it: client-go's
    /// keepalive (30 s idle, 30 s between probes, 9 probes).
    #[tokio::test]
    async fn kube_client_connections_have_keepalive() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let server = listener.local_addr().expect("addr");
        let dir = std::env::temp_dir().join(format!("dw-kube-keepalive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let kc = dir.join("kubeconfig");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{server}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
            ),
        )
        .expect("kubeconfig");
        let client = client_for(&Credentials::File(kc), None)
            .await
            .expect("client");
        // The request never gets an answer: only its connection matters.
        let api: Api<Pod> = Api::namespaced(client, "default");
        let request = tokio::spawn(async move { api.list(&Default::default()).await });
        let (_conn, peer) = listener.accept().await.expect("accept");
        assert_eq!(
            kernel_keepalive(peer),
            (true, Duration::from_secs(30), Duration::from_secs(30), 9)
        );
        request.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn credentials_in_the_order_kubectl_tries_them() {
        let home = Some(PathBuf::from("/root"));
        let yes = |_: &std::path::Path| true;
        let no = |_: &std::path::Path| false;
        let flag = Some(PathBuf::from("/etc/kubernetes/admin.conf"));
        assert_eq!(
            Credentials::choose(flag.clone(), Some("/a".into()), home.clone(), true, yes),
            Some(Credentials::File("/etc/kubernetes/admin.conf".into()))
        );
        assert_eq!(
            Credentials::choose(None, Some("/a::/b".into()), home.clone(), true, yes),
            Some(Credentials::Env(vec!["/a".into(), "/b".into()]))
        );
        // An empty $KUBECONFIG is as if unset.
        assert_eq!(
            Credentials::choose(None, Some("".into()), home.clone(), true, yes),
            Some(Credentials::Home("/root/.kube/config".into()))
        );
        assert_eq!(
            Credentials::choose(None, None, home.clone(), true, no),
            Some(Credentials::InCluster)
        );
        assert_eq!(Credentials::choose(None, None, home, false, no), None);
        assert_eq!(
            Credentials::choose(None, None, None, false, yes),
            None,
            "no home: no ~/.kube/config"
        );
    }
}
