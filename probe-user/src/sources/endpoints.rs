//! Endpoint mode: the apiserver watched as (address, port) pairs, for a node
//! that talks to it as a client (a worker of a managed cluster): there every
//! port-443 connection to a registry or cloud API would otherwise count as
//! apiserver traffic. The endpoints come from `--apiserver-endpoint
//! HOST:PORT` and, with `auto`, from the `kubernetes` Service a pod is given
//! (`KUBERNETES_SERVICE_HOST`/`_PORT`) and the server of the kubeconfig in
//! use. Names are resolved at start and again every
//! [`RESOLVE_EVERY`]; the kernel's `ENDPOINTS` map follows (added and
//! removed), and its programs keep an event only when one end is in it.
//!
//! Blind spots: traffic to an address a name resolved to between two
//! resolutions is not seen until the next one; a client that resolves the
//! name itself to an address this resolver never gets (split-horizon DNS,
//! its own /etc/hosts) is not watched; a Service's ClusterIP is what the
//! client's socket holds, but on the wire (after kube-proxy's DNAT) the
//! packets carry the endpoint's address: the wire observer sees them only
//! when that address is watched too (the EndpointSlice, not read yet).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData};
use probe_common::{AF_INET, AF_INET6, EndpointKey};
use tokio::sync::watch;

/// How often names are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);

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
/// from, and the specs that did not resolve (with why).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addrs: BTreeMap<SocketAddr, Vec<String>>,
    pub failed: Vec<(String, String)>,
}

impl Resolved {
    /// One line per watched address, for `--check` and the start log.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .addrs
            .iter()
            .map(|(a, from)| format!("{a} (from {})", from.join("; ")))
            .collect();
        out.extend(self.failed.iter().map(|(s, why)| {
            format!(
                "{s}: not resolved ({why}); retried every {}s",
                RESOLVE_EVERY.as_secs()
            )
        }));
        out
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
/// use (`kubeconfig_server`, `HOST:PORT`).
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

/// Keeps the kernel's `ENDPOINTS` map equal to what the specs resolve to,
/// resolving again every [`RESOLVE_EVERY`] until `stop`.
pub async fn task(
    mut map: BpfHashMap<MapData, EndpointKey, u8>,
    specs: Vec<Spec>,
    mut current: BTreeSet<EndpointKey>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = tokio::time::sleep(RESOLVE_EVERY) => {}
        }
        let s = specs.clone();
        let Ok(r) = tokio::task::spawn_blocking(move || resolve(&s)).await else {
            continue;
        };
        for (spec, why) in &r.failed {
            tracing::warn!("endpoint {spec} not resolved: {why}; its old addresses stay watched");
        }
        // A name that did not resolve this time keeps what it had: a DNS
        // hiccup must not turn the observer blind.
        if !r.failed.is_empty() {
            continue;
        }
        let want: BTreeSet<EndpointKey> = r.addrs.keys().flat_map(|a| keys(*a)).collect();
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
            tracing::info!("endpoints now: {}", r.lines().join(", "));
        }
        current = want;
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
