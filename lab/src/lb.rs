//! The load balancers: HAProxy as a health-checking TCP LB (aws-nlb, gcp-ilb's remote
//! path), HAProxy with `option nolinger` as an LB that resets idle flows on both sides,
//! and a conntrack router that resets flows idle past its timeout (azure-slb).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::procs::{self, Proc, ProcError};
use crate::record::Recorder;
use crate::topo::{Lab, TopoError};

/// Health check timing, in the terms cloud load balancers document (AWS NLB target
/// groups, GCP and Azure health probes): interval, timeout, unhealthy and healthy
/// thresholds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Time between checks.
    pub interval: Duration,
    /// Per-check timeout.
    pub timeout: Duration,
    /// Consecutive failures to take a server out (unhealthy threshold).
    pub fall: u32,
    /// Consecutive successes to put it back.
    pub rise: u32,
}

impl HealthCheck {
    /// The worst case from readyz turning red to out of service:
    /// `fall` checks, each lasting up to an interval (the first may start just before
    /// readyz turned red).
    pub fn worst_case_detection(&self) -> Duration {
        self.interval * self.fall + self.timeout.min(self.interval)
    }
}

/// A health-checking TCP load balancer in front of apiservers.
#[derive(Debug, Clone)]
pub struct TcpLb {
    /// Where it listens (the VIP).
    pub bind: SocketAddr,
    /// Backends by name.
    pub servers: Vec<(String, SocketAddr)>,
    /// Health check on `GET /readyz` over HTTPS.
    pub check: HealthCheck,
}

/// HAProxy configuration for a [`TcpLb`]: TCP mode like a network LB, HTTPS `/readyz`
/// checks without verification like cloud LBs, and no connection retries so a refused
/// backend connect reaches the client as NLB's would.
pub fn haproxy_tcp_lb(lb: &TcpLb) -> String {
    let c = &lb.check;
    let mut s = String::new();
    let _ = write!(
        s,
        "global\n  maxconn 4096\n\
defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10m\n  timeout server 10m\n  retries 0\n\
frontend api\n  bind {bind}\n  default_backend masters\n\
backend masters\n  balance roundrobin\n  option httpchk\n\
  http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host kubernetes\n\
  http-check expect status 200\n  timeout check {timeout}ms\n\
  default-server check check-ssl verify none inter {inter}ms fall {fall} rise {rise}\n",
        bind = lb.bind,
        timeout = c.timeout.as_millis().max(1),
        inter = c.interval.as_millis().max(1),
        fall = c.fall,
        rise = c.rise,
    );
    for (name, addr) in &lb.servers {
        let _ = writeln!(s, "  server {name} {addr}");
    }
    s
}

/// HAProxy as an idle-resetting LB: after `idle` without data on either side it closes
/// both connections with RST (`option nolinger`), like Azure SLB's idle timeout with TCP
/// reset enabled. `ports` maps frontend to backend.
pub fn haproxy_idle_reset(idle: Duration, ports: &[(SocketAddr, SocketAddr)]) -> String {
    let ms = idle.as_millis().max(1);
    // The client-side timer fires first (HAProxy then resets both sides); were the
    // server's to fire first, the client would get a FIN instead.
    let ms2 = ms + 200;
    let mut s = format!(
        "global\n  maxconn 4096\n\
defaults\n  mode tcp\n  option nolinger\n  timeout connect 2s\n  timeout client {ms}ms\n  timeout server {ms2}ms\n"
    );
    for (i, (front, back)) in ports.iter().enumerate() {
        let _ = write!(s, "listen idle{i}\n  bind {front}\n  server s {back}\n");
    }
    s
}

/// A server state change seen by the LB.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LbEvent {
    /// When HAProxy reported it (ns).
    pub t_ns: u64,
    /// Which LB.
    pub lb: String,
    /// Backend server name.
    pub server: String,
    /// `UP` or `DOWN`.
    pub state: String,
    /// HAProxy's message.
    pub line: String,
}

/// Parses HAProxy's `Server masters/m1 is DOWN, reason: ...` messages.
pub fn parse_state_line(line: &str) -> Option<(String, String)> {
    let rest = &line[line.find("Server ")? + 7..];
    let (name, rest) = rest.split_once(' ')?;
    let server = name.rsplit('/').next()?.to_string();
    let state = rest.strip_prefix("is ")?.split([',', ' ', '.']).next()?;
    matches!(state, "UP" | "DOWN").then(|| (server, state.to_string()))
}

/// A running HAProxy whose server state changes are being recorded.
#[derive(Debug)]
pub struct Haproxy {
    /// Its pid.
    pub pid: u32,
    watcher: tokio::task::JoinHandle<()>,
}

/// Starts HAProxy in `ns` with `config` (written to `cfg_path`) and records every server
/// state change to `rec` as an [`LbEvent`].
pub async fn start_haproxy(
    name: &str,
    ns: &str,
    config: &str,
    cfg_path: &Path,
    rec: Arc<Recorder>,
) -> Result<Haproxy, ProcError> {
    std::fs::write(cfg_path, config).map_err(|source| ProcError::Spawn {
        cmd: format!("write {}", cfg_path.display()),
        source,
    })?;
    let args = vec![
        "-db".to_string(),
        "-f".to_string(),
        cfg_path.display().to_string(),
    ];
    let mut p: Proc = procs::spawn(name, ns, Path::new("haproxy"), &args)?;
    // HAProxy prints nothing when it starts cleanly; a config error shows up at once.
    if let Some(status) = p.wait_exit(Duration::from_millis(300)).await {
        let mut last = String::new();
        while let Ok(l) = p.lines.try_recv() {
            last.push_str(&l.text);
            last.push(' ');
        }
        return Err(ProcError::NoMarker {
            cmd: p.cmd.clone(),
            marker: format!("running (exited {status})"),
            secs: 0.3,
            last,
        });
    }
    let pid = p.pid;
    let lb = name.to_string();
    let watcher = tokio::spawn(async move {
        while let Some(l) = p.lines.recv().await {
            if let Some((server, state)) = parse_state_line(&l.text) {
                rec.write(&LbEvent {
                    t_ns: l.t_ns,
                    lb: lb.clone(),
                    server,
                    state,
                    line: l.text.clone(),
                });
            }
        }
        // Keep the child (kill_on_drop) alive as long as its output is read.
        let _ = p.child.wait().await;
    });
    Ok(Haproxy { pid, watcher })
}

impl Haproxy {
    /// Stops HAProxy.
    pub async fn stop(self) {
        crate::cmd::kill(self.pid, libc::SIGTERM);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.watcher).await;
        crate::cmd::kill(self.pid, libc::SIGKILL);
    }
}

/// Makes `router` a stateful middlebox that resets flows idle longer than `idle`
/// (TOOLCHAIN.md's recipe): conntrack forgets established flows after the timeout,
/// loose pickup is off, and the forward chain answers the now-invalid next packet with
/// an RST to its sender.
pub fn conntrack_idle_reset(lab: &Lab, router: &str, idle: Duration) -> Result<(), TopoError> {
    lab.sysctl(router, "net.ipv4.ip_forward", "1")?;
    // The ct rule loads conntrack for this namespace; the sysctls exist only after that.
    lab.nft(
        router,
        "table inet dwlab {\n  chain forward_idle {\n    type filter hook forward priority 0; policy accept;\n    meta l4proto tcp ct state invalid reject with tcp reset\n  }\n}\n",
    )?;
    let secs = idle.as_secs_f64().round().max(1.0);
    lab.sysctl(
        router,
        "net.netfilter.nf_conntrack_tcp_timeout_established",
        &format!("{secs}"),
    )?;
    lab.sysctl(router, "net.netfilter.nf_conntrack_tcp_loose", "0")?;
    Ok(())
}

/// The LAN subnet used by the LB scenarios.
pub const LAN: [u8; 3] = [198, 18, 1];
/// The apiserver VIP (the internal LB address clients use, `api-int` on OpenShift).
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_haproxy_state_changes() {
        let l = "[WARNING]  (77) : Server masters/m1 is DOWN, reason: Layer7 wrong status, code: 500, info: \"Internal Server Error\", check duration: 2ms. 2 active and 0 backup servers left.";
        assert_eq!(parse_state_line(l), Some(("m1".into(), "DOWN".into())));
        let l = "Server masters/m2 is UP, reason: Layer7 check passed, code: 200";
        assert_eq!(parse_state_line(l), Some(("m2".into(), "UP".into())));
        assert_eq!(parse_state_line("Proxy api started."), None);
    }

    #[test]
    fn aws_nlb_worst_case() {
        // AWS NLB's HTTPS check at interval 10 s, timeout 10 s, unhealthy threshold 2 -> 30 s.
        let hc = HealthCheck {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            fall: 2,
            rise: 2,
        };
        assert_eq!(hc.worst_case_detection(), Duration::from_secs(30));
    }

    #[test]
    fn config_has_checks() {
        let cfg = haproxy_tcp_lb(&TcpLb {
            bind: "198.18.0.100:6443".parse().expect("addr"),
            servers: vec![("m1".into(), "198.18.1.11:6443".parse().expect("addr"))],
            check: HealthCheck {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                fall: 2,
                rise: 2,
            },
        });
        assert!(cfg.contains("uri /readyz"));
        assert!(cfg.contains("inter 1000ms fall 2 rise 2"));
        assert!(cfg.contains("server m1 198.18.1.11:6443"));
    }
}
