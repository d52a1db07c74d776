//! Endpoint mode: the apiserver watched as (address, port) pairs, for a node
//! that talks to it as a client (a worker of a managed cluster): there every
//! port-443 connection to a registry or cloud API would otherwise count as
//! apiserver traffic. The endpoints come from `--apiserver-endpoint
//! HOST:PORT` and, with `auto`, from the `kubernetes` Service a pod is given
//! (`KUBERNETES_SERVICE_HOST`/`_PORT`), the server of the kubeconfig in use,
//! and the ready endpoints of the `kubernetes` Service's EndpointSlices
//! (`default`, `kubernetes.io/service-name=kubernetes`): a pod's socket holds
//! the Service's ClusterIP, but after kube-proxy's DNAT the packets on the
//! wire carry an endpoint's address and port (the master's 6443, a managed
//! cluster's public address on 443), so both must be watched. Names are
//! resolved and the slices listed at start (written before any program
//! runs) and again every [`RESOLVE_EVERY`]; the kernel's `ENDPOINTS` map
//! follows (added and removed), and its programs keep an event only when
//! one end is in it.
//!
//! Blind spots: traffic to an address a name resolved to between two
//! resolutions, or an endpoint added to the slice between two lists, is not
//! seen until the next one; a client that resolves the name itself to an
//! address this resolver never gets (split-horizon DNS, its own /etc/hosts)
//! is not watched; the watched ports are fixed at start, so a slice
//! endpoint on a port first seen later is not watched (counted as
//! `unwatched_port`) until a restart; a slice port without a number ("all
//! ports") or of another protocol is not watched; an endpoint that is not
//! ready (`ready: false`: terminating, failing) is dropped at the next list
//! although connections to it may still be open and draining.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client, api::ListParams};
use probe_common::{AF_INET, AF_INET6, EndpointKey};
use tokio::sync::watch;

use crate::{export::metrics::Metrics, sources::kubewatch};

/// How often names are resolved and the slices listed again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Where the `kubernetes` Service's EndpointSlices are, and their label.
pub const SLICE_NAMESPACE: &str = "default";
pub const SLICE_SELECTOR: &str = "kubernetes.io/service-name=kubernetes";
/// At most this many slice endpoints (address, port) are watched: each
/// IPv4 one takes two of the kernel map's 256 keys (its IPv4-mapped form
/// too), and the names need room. A kubernetes Service has one per master.
pub const MAX_SLICE_ENDPOINTS: usize = 64;
/// At most this many slices are read per list (kube-apiserver writes one
/// per address family).
pub const MAX_SLICES: u32 = 16;
/// A list of the slices gives up after this long (start-up waits for it).
pub const SLICE_TIMEOUT: Duration = Duration::from_secs(10);

/// One endpoint as given: a name or address, a port, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub host: String,
    pub port: u16,
    /// Where it came from, for `--check` and logs.
    pub origin: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("--apiserver-endpoint {0:?}: expected HOST:PORT, [IPv6]:PORT or auto")]
    Form(String),
    #[error("--apiserver-endpoint {0:?}: port {1:?} is not a number from 1 to 65535")]
    Port(String, String),
}

/// Parses `HOST:PORT` or `[IPv6]:PORT` (a bare IPv6 address has no port).
pub fn parse(text: &str, origin: &str) -> Result<Spec, SpecError> {
    let t = text.trim();
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| SpecError::Form(text.into()))?;
        (h, p)
    } else {
        let (h, p) = t
            .rsplit_once(':')
            .ok_or_else(|| SpecError::Form(text.into()))?;
        if h.contains(':') {
            // An IPv6 address without brackets: which colon starts the port?
            return Err(SpecError::Form(text.into()));
        }
        (h, p)
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(SpecError::Form(text.into()));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| SpecError::Port(text.into(), port.into()))?;
    Ok(Spec {
        host: host.to_string(),
        port,
        origin: origin.to_string(),
    })
}

/// The kernel map's key for `a`.
pub fn key(a: SocketAddr) -> EndpointKey {
    let mut addr = [0u8; 16];
    let family = match a.ip() {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            AF_INET
        }
        IpAddr::V6(v6) => {
            addr = v6.octets();
            AF_INET6
        }
    };
    EndpointKey::new(family, &addr, a.port())
}

/// Every key the kernel map holds for `a`: itself and, for IPv4, its
/// IPv4-mapped IPv6 form (see [`EndpointKey::forms`]).
pub fn keys(a: SocketAddr) -> impl Iterator<Item = EndpointKey> {
    key(a).forms().into_iter().flatten()
}

/// What resolving the specs gave: every address with the specs it came
/// from, the specs that did not resolve (with why), and what the
/// `kubernetes` EndpointSlice gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addrs: BTreeMap<SocketAddr, Vec<String>>,
    pub failed: Vec<(String, String)>,
    pub slice: SliceStatus,
}

/// The `kubernetes` EndpointSlice's part of endpoint mode.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum SliceStatus {
    /// Not asked for (no `auto`).
    #[default]
    NotAsked,
    /// Asked for but not read: why (no credentials, `--no-kube`).
    Off(String),
    /// The last list failed (why); the endpoints read before (`kept`) stay
    /// watched.
    Failed { why: String, kept: SliceEndpoints },
    /// The last list.
    Read(SliceEndpoints),
}

/// The ready endpoints of the `kubernetes` Service's EndpointSlices, as
/// far as they are watched.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SliceEndpoints {
    /// Endpoint -> the slice it is in (`EndpointSlice default/NAME`).
    pub addrs: BTreeMap<SocketAddr, String>,
    /// Ready endpoints beyond [`MAX_SLICE_ENDPOINTS`], not watched.
    pub cut: usize,
    /// Ready endpoints on a port not watched since start, not watched.
    pub unwatched_port: usize,
    /// Slices beyond [`MAX_SLICES`], not read (their endpoints not counted).
    pub slices_cut: usize,
}

/// The watched endpoints of `slices`: every ready (or not known to be
/// unready, as the API says to read a missing condition) address of each
/// endpoint with each numbered TCP port of its slice, at most `max`, on
/// `ports` when given (any port at start, when the ports are still to be
/// chosen).
pub fn slice_endpoints(
    slices: &[EndpointSlice],
    ports: Option<&BTreeSet<u16>>,
    max: usize,
) -> SliceEndpoints {
    let mut out = SliceEndpoints::default();
    let mut sorted: Vec<&EndpointSlice> = slices.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for s in sorted {
        let origin = format!(
            "EndpointSlice {}/{}",
            s.metadata.namespace.as_deref().unwrap_or(SLICE_NAMESPACE),
            s.metadata.name.as_deref().unwrap_or("?")
        );
        let slice_ports: Vec<u16> = s
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().is_none_or(|x| x == "TCP"))
            .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
            .filter(|n| *n != 0)
            .collect();
        let ready = s
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
        for e in ready {
            // FQDN slices and malformed addresses carry nothing to match.
            for ip in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                for port in &slice_ports {
                    let a = SocketAddr::new(ip, *port);
                    if out.addrs.contains_key(&a) {
                        continue;
                    }
                    if ports.is_some_and(|p| !p.contains(port)) {
                        out.unwatched_port += 1;
                    } else if out.addrs.len() >= max {
                        out.cut += 1;
                    } else {
                        out.addrs.insert(a, origin.clone());
                    }
                }
            }
        }
    }
    out
}

impl Resolved {
    /// Every watched address with where it came from.
    pub fn watched(&self) -> BTreeMap<SocketAddr, Vec<String>> {
        let mut all = self.addrs.clone();
        if let SliceStatus::Read(s) | SliceStatus::Failed { kept: s, .. } = &self.slice {
            for (a, from) in &s.addrs {
                all.entry(*a).or_default().push(from.clone());
            }
        }
        all
    }

    /// The kernel map's keys for every watched address.
    pub fn keys(&self) -> BTreeSet<EndpointKey> {
        self.watched().keys().flat_map(|a| keys(*a)).collect()
    }

    /// One line per watched address, for `--check` and the start log.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .watched()
            .iter()
            .map(|(a, from)| format!("{a} (from {})", from.join("; ")))
            .collect();
        out.extend(self.failed.iter().map(|(s, why)| {
            format!(
                "{s}: not resolved ({why}); retried every {}s",
                RESOLVE_EVERY.as_secs()
            )
        }));
        let slice = format!("the kubernetes EndpointSlice ({SLICE_NAMESPACE}, {SLICE_SELECTOR})");
        match &self.slice {
            SliceStatus::NotAsked => {}
            SliceStatus::Off(why) => out.push(format!("{slice}: not read ({why})")),
            SliceStatus::Failed { why, .. } => out.push(format!(
                "{slice}: not read ({why}); retried every {}s",
                RESOLVE_EVERY.as_secs()
            )),
            SliceStatus::Read(s) => {
                if s.addrs.is_empty() {
                    out.push(format!("{slice}: no ready endpoint"));
                }
                if s.cut > 0 {
                    out.push(format!(
                        "{slice}: {} ready endpoints not watched (at most {MAX_SLICE_ENDPOINTS})",
                        s.cut
                    ));
                }
                if s.unwatched_port > 0 {
                    out.push(format!(
                        "{slice}: {} ready endpoints on ports not watched since start (restart to watch them)",
                        s.unwatched_port
                    ));
                }
                if s.slices_cut > 0 {
                    out.push(format!(
                        "{slice}: {} slices not read (at most {MAX_SLICES})",
                        s.slices_cut
                    ));
                }
            }
        }
        out
    }

    /// The slice's ports, to watch them from the start.
    pub fn slice_ports(&self) -> Vec<u16> {
        match &self.slice {
            SliceStatus::Read(s) => s.addrs.keys().map(SocketAddr::port).collect(),
            _ => Vec::new(),
        }
    }
}

/// Reading the `kubernetes` EndpointSlice, with the pod watcher's credentials.
#[derive(Debug, Clone)]
pub struct SliceWatch {
    pub credentials: kubewatch::Credentials,
}

/// Lists the slices once with `client`, bounded by [`SLICE_TIMEOUT`] and
/// [`MAX_SLICES`].
pub async fn list_slices(
    client: &Client,
    ports: Option<&BTreeSet<u16>>,
) -> Result<SliceEndpoints, String> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), SLICE_NAMESPACE);
    let lp = ListParams::default()
        .labels(SLICE_SELECTOR)
        .limit(MAX_SLICES);
    let list = tokio::time::timeout(SLICE_TIMEOUT, api.list(&lp))
        .await
        .map_err(|_| format!("no answer within {}s", SLICE_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    let mut s = slice_endpoints(&list.items, ports, MAX_SLICE_ENDPOINTS);
    if list
        .metadata
        .continue_
        .as_deref()
        .is_some_and(|c| !c.is_empty())
    {
        s.slices_cut = list
            .metadata
            .remaining_item_count
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1);
    }
    Ok(s)
}

impl SliceWatch {
    /// One list at start-up, before the kernel programs load (on a runtime
    /// of its own: the daemon's does not run yet); never fails the start.
    pub fn read_once(&self) -> SliceStatus {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return SliceStatus::Failed {
                    why: format!("runtime: {e}"),
                    kept: SliceEndpoints::default(),
                };
            }
        };
        rt.block_on(async {
            let read = match kubewatch::client_for(&self.credentials, None).await {
                Ok(c) => list_slices(&c, None).await,
                Err(e) => Err(format!("{e:#}")),
            };
            match read {
                Ok(s) => SliceStatus::Read(s),
                Err(e) => SliceStatus::Failed {
                    why: format!("{}: {e}", self.credentials.describe()),
                    kept: SliceEndpoints::default(),
                },
            }
        })
    }
}

/// Resolves every spec with the system resolver (blocking: run it on a
/// blocking thread or at start-up).
pub fn resolve(specs: &[Spec]) -> Resolved {
    let mut r = Resolved::default();
    for s in specs {
        let shown = format!("{} ({})", join(&s.host, &s.port.to_string()), s.origin);
        match (s.host.as_str(), s.port).to_socket_addrs() {
            Ok(addrs) => {
                let mut any = false;
                for a in addrs {
                    any = true;
                    r.addrs.entry(a).or_default().push(shown.clone());
                }
                if !any {
                    r.failed.push((shown, "no address".into()));
                }
            }
            Err(e) => r.failed.push((shown, e.to_string())),
        }
    }
    r
}

/// The endpoint specs from `--apiserver-endpoint` values: `auto` stands for
/// the `kubernetes` Service of a pod (`service`, from
/// `KUBERNETES_SERVICE_HOST`/`_PORT`) and the server of the kubeconfig in
/// use (`kubeconfig_server`, `HOST:PORT`); its EndpointSlice is the
/// caller's ([`SliceWatch`]).
pub fn specs(
    values: &[String],
    service: Option<(String, String)>,
    kubeconfig_server: Option<(String, String)>,
) -> Result<Vec<Spec>, anyhow::Error> {
    let mut out = Vec::new();
    for v in values {
        if v.trim() != "auto" {
            out.push(parse(v, "--apiserver-endpoint")?);
            continue;
        }
        let before = out.len();
        if let Some((host, port)) = &service {
            out.push(parse(
                &join(host, port),
                "the kubernetes Service (KUBERNETES_SERVICE_HOST)",
            )?);
        }
        if let Some((server, shown)) = &kubeconfig_server {
            out.push(parse(server, &format!("the server of {shown}"))?);
        }
        if out.len() == before {
            anyhow::bail!(
                "--apiserver-endpoint auto: not in a pod (no KUBERNETES_SERVICE_HOST) and no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config); name the endpoint as HOST:PORT"
            );
        }
    }
    out.dedup_by(|a, b| a.host == b.host && a.port == b.port);
    Ok(out)
}

/// `host` and `port` as one `HOST:PORT`, bracketing an IPv6 address.
pub fn join(host: &str, port: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// What the task keeps in step.
pub struct Watching {
    pub specs: Vec<Spec>,
    pub slice: Option<SliceWatch>,
    /// The ports watched since start (a slice endpoint on another is not).
    pub ports: BTreeSet<u16>,
}

/// Keeps the kernel's `ENDPOINTS` map equal to what the specs resolve to
/// and the slices list, again every [`RESOLVE_EVERY`] until `stop`, starting
/// from `now` (what the loader wrote). A failed resolution or list keeps
/// what it gave before: a DNS or API hiccup must not turn the observer
/// blind. The metrics are set before it returns, so they are there when
/// the daemon says it is ready.
pub fn task(
    mut map: BpfHashMap<MapData, EndpointKey, u8>,
    w: Watching,
    mut now: Resolved,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
    let mut current = now.keys();
    // Logged once per failing streak (the start-up failure was logged by the caller).
    let mut slice_failing = matches!(now.slice, SliceStatus::Failed { .. });
    match &now.slice {
        SliceStatus::Failed { .. } => metrics
            .endpointslice_reads
            .with_label_values(&["failed"])
            .inc(),
        SliceStatus::Read(_) => metrics.endpointslice_reads.with_label_values(&["ok"]).inc(),
        _ => {}
    }
    export(&metrics, &now);
    let mut client: Option<Client> = None;
    async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                _ = tokio::time::sleep(RESOLVE_EVERY) => {}
            }
            let s = w.specs.clone();
            if let Ok(r) = tokio::task::spawn_blocking(move || resolve(&s)).await {
                for (spec, why) in &r.failed {
                    tracing::warn!(
                        "endpoint {spec} not resolved: {why}; its old addresses stay watched"
                    );
                }
                if r.failed.is_empty() {
                    now.addrs = r.addrs;
                    now.failed.clear();
                }
            }
            if let Some(sw) = &w.slice {
                let read = match &client {
                    Some(c) => list_slices(c, Some(&w.ports)).await,
                    None => match kubewatch::client_for(&sw.credentials, None).await {
                        Ok(c) => {
                            let r = list_slices(&c, Some(&w.ports)).await;
                            client = Some(c);
                            r
                        }
                        Err(e) => Err(format!("{e:#}")),
                    },
                }
                .map_err(|e| format!("{}: {e}", sw.credentials.describe()));
                match read {
                    Ok(s) => {
                        metrics.endpointslice_reads.with_label_values(&["ok"]).inc();
                        if slice_failing {
                            tracing::info!("the kubernetes EndpointSlice is read again");
                        }
                        slice_failing = false;
                        now.slice = SliceStatus::Read(s);
                    }
                    Err(e) => {
                        metrics
                            .endpointslice_reads
                            .with_label_values(&["failed"])
                            .inc();
                        if !slice_failing {
                            tracing::warn!(
                                "the kubernetes EndpointSlice not read ({e}); the endpoints read before stay watched, retried every {}s",
                                RESOLVE_EVERY.as_secs()
                            );
                        }
                        slice_failing = true;
                        let kept = match std::mem::take(&mut now.slice) {
                            SliceStatus::Read(k) | SliceStatus::Failed { kept: k, .. } => k,
                            _ => SliceEndpoints::default(),
                        };
                        now.slice = SliceStatus::Failed { why: e, kept };
                    }
                }
            }
            let want = now.keys();
            for k in current.difference(&want) {
                if let Err(e) = map.remove(k) {
                    tracing::warn!("removing a stale endpoint from the kernel map: {e}");
                }
            }
            for k in want.difference(&current) {
                if let Err(e) = map.insert(*k, 1, 0) {
                    tracing::warn!("adding an endpoint to the kernel map: {e}");
                }
            }
            if want != current {
                tracing::info!("endpoints now: {}", now.lines().join(", "));
            }
            current = want;
            export(&metrics, &now);
        }
    }
}

/// The watched endpoints by source, and what the last slice list left out.
fn export(m: &Metrics, r: &Resolved) {
    let empty = SliceEndpoints::default();
    let slice = match &r.slice {
        SliceStatus::Read(s) | SliceStatus::Failed { kept: s, .. } => s,
        _ => &empty,
    };
    m.apiserver_endpoints
        .with_label_values(&["name"])
        .set(r.addrs.len() as i64);
    m.apiserver_endpoints
        .with_label_values(&["endpointslice"])
        .set(slice.addrs.len() as i64);
    for (reason, n) in [
        ("cap", slice.cut),
        ("unwatched_port", slice.unwatched_port),
        ("slice_limit", slice.slices_cut),
    ] {
        m.apiserver_endpoints_skipped
            .with_label_values(&[reason])
            .set(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_both_families() {
        let s = parse("api.example.com:443", "f").expect("name");
        assert_eq!((s.host.as_str(), s.port), ("api.example.com", 443));
        let s = parse("[fd00::1]:6443", "f").expect("v6");
        assert_eq!((s.host.as_str(), s.port), ("fd00::1", 6443));
        assert_eq!(
            parse("fd00::1:443", "f"),
            Err(SpecError::Form("fd00::1:443".into()))
        );
        assert_eq!(
            parse("api:0", "f"),
            Err(SpecError::Port("api:0".into(), "0".into()))
        );
        assert_eq!(parse("api", "f"), Err(SpecError::Form("api".into())));
        assert!(parse(":443", "f").is_err());
    }

    #[test]
    fn auto_takes_the_service_and_the_kubeconfig() {
        let s = specs(
            &["auto".into(), "10.0.0.1:443".into()],
            Some(("fd00::a".into(), "443".into())),
            Some((
                "lb.example:6443".into(),
                "/etc/kubernetes/kubelet.conf".into(),
            )),
        )
        .expect("specs");
        let got: Vec<(&str, u16)> = s.iter().map(|s| (s.host.as_str(), s.port)).collect();
        assert_eq!(
            got,
            vec![("fd00::a", 443), ("lb.example", 6443), ("10.0.0.1", 443)]
        );
        assert!(specs(&["auto".into()], None, None).is_err());
    }

    fn slice(name: &str, value: serde_json::Value) -> EndpointSlice {
        let mut v = value;
        v["metadata"] = serde_json::json!({"name": name, "namespace": "default"});
        serde_json::from_value(v).expect("EndpointSlice")
    }

    #[test]
    fn slices_give_their_ready_endpoints_on_their_tcp_ports_bounded() {
        let slices = [
            slice(
                "kubernetes-1",
                serde_json::json!({"addressType": "IPv6",
                    "endpoints": [{"addresses": ["fd00::2"]}],
                    "ports": [{"port": 6443}]}),
            ),
            slice(
                "kubernetes",
                serde_json::json!({"addressType": "IPv4",
                    "endpoints": [
                        {"addresses": ["198.18.0.2"], "conditions": {"ready": true}},
                        {"addresses": ["198.18.0.3"], "conditions": {"ready": false, "terminating": true}},
                        {"addresses": ["198.18.0.4"], "conditions": {}},
                        {"addresses": ["not-an-ip"]}],
                    "ports": [{"name": "https", "port": 6443, "protocol": "TCP"},
                        {"port": 53, "protocol": "UDP"}, {"name": "all"}]}),
            ),
        ];
        let s = slice_endpoints(&slices, None, 64);
        let got: Vec<(String, &str)> = s
            .addrs
            .iter()
            .map(|(a, o)| (a.to_string(), o.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "198.18.0.2:6443".to_string(),
                    "EndpointSlice default/kubernetes"
                ),
                (
                    "198.18.0.4:6443".to_string(),
                    "EndpointSlice default/kubernetes"
                ),
                (
                    "[fd00::2]:6443".to_string(),
                    "EndpointSlice default/kubernetes-1"
                ),
            ]
        );
        assert_eq!((s.cut, s.unwatched_port), (0, 0));
        let capped = slice_endpoints(&slices, None, 2);
        assert_eq!((capped.addrs.len(), capped.cut), (2, 1));
        let ports: BTreeSet<u16> = [443].into();
        let other = slice_endpoints(&slices, Some(&ports), 64);
        assert_eq!((other.addrs.len(), other.unwatched_port), (0, 3));
    }

    #[test]
    fn lines_say_where_each_address_came_from() {
        let mut r = resolve(&[parse("198.18.0.2:6443", "a").expect("spec")]);
        let s = slice_endpoints(
            &[slice(
                "kubernetes",
                serde_json::json!({"addressType": "IPv4",
                    "endpoints": [{"addresses": ["198.18.0.2"]}, {"addresses": ["198.18.0.5"]}],
                    "ports": [{"port": 6443}]}),
            )],
            None,
            1,
        );
        r.slice = SliceStatus::Read(s.clone());
        assert_eq!(
            r.lines(),
            vec![
                "198.18.0.2:6443 (from 198.18.0.2:6443 (a); EndpointSlice default/kubernetes)",
                "the kubernetes EndpointSlice (default, kubernetes.io/service-name=kubernetes): 1 ready endpoints not watched (at most 64)",
            ]
        );
        assert_eq!(r.keys().len(), 2, "IPv4 and its IPv4-mapped form");
        assert_eq!(r.slice_ports(), [6443]);
        r.slice = SliceStatus::Failed {
            why: "refused".into(),
            kept: s,
        };
        assert_eq!(r.keys().len(), 2, "kept while the list fails");
        assert!(
            r.lines()[1].ends_with("not read (refused); retried every 30s"),
            "{:?}",
            r.lines()
        );
    }

    #[test]
    fn resolves_addresses_of_both_families() {
        let r = resolve(&[
            parse("198.18.0.1:443", "a").expect("v4"),
            parse("[fd00::1]:443", "b").expect("v6"),
            parse("198.18.0.1:443", "c").expect("again"),
        ]);
        let addrs: Vec<String> = r.addrs.keys().map(ToString::to_string).collect();
        assert_eq!(addrs, vec!["198.18.0.1:443", "[fd00::1]:443"]);
        assert!(r.failed.is_empty());
        assert_eq!(
            r.lines()[0],
            "198.18.0.1:443 (from 198.18.0.1:443 (a); 198.18.0.1:443 (c))"
        );
    }
}
