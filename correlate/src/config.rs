//! What the engine knows about the node and the apiserver besides the
//! observations: addresses for path classification and configured timings.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::model::Path;

/// A load balancer's health check, as configured: the interval, timeout and
/// unhealthy threshold every cloud LB documents (AWS NLB target group, GCP
/// health check, Azure health probe).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Seconds between checks.
    pub interval_s: f64,
    /// Seconds before one check counts as failed.
    pub timeout_s: f64,
    /// Consecutive failures before the backend is taken out.
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    /// Worst-case seconds from /readyz turning red to the LB taking the
    /// backend out: the last good check just before /readyz turned red, then
    /// `threshold` failing checks one interval apart, the last one failing
    /// only at its timeout, which cannot outlast the interval since checks
    /// are independent (an NLB check at 10 s / 10 s / 2: 2 x 10 s + 10 s =
    /// 30 s; the lab's formula).
    pub fn worst_case_s(&self) -> f64 {
        f64::from(self.unhealthy_threshold) * self.interval_s + self.timeout_s.min(self.interval_s)
    }
}

/// Engine configuration. Everything is optional: with less, fewer causes
/// can be told apart and the output says what it could not measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Instance for node-local observations that name none (the daemon's
    /// own apiserver).
    pub default_instance: Option<String>,
    /// This node's own addresses (not including VIPs it holds).
    pub local_addrs: Vec<IpAddr>,
    /// Load-balancer VIPs clients dial.
    pub vips: Vec<IpAddr>,
    /// VIPs this node itself holds (GCP puts the ILB address on each
    /// master's `lo`): this node's own traffic to them hairpins locally.
    pub local_vips: Vec<IpAddr>,
    /// Source addresses of proxying LBs (HAProxy, ELB, ...): a connection
    /// from one of these came through the LB.
    pub lb_addrs: Vec<IpAddr>,
    /// Where LB health checks come from when not from `lb_addrs` (GCP:
    /// `35.191.0.0/16`, `130.211.0.0/22`): their connections are not
    /// client traffic.
    pub health_check_sources: Vec<Cidr>,
    /// kube-apiserver's `--shutdown-delay-duration` in seconds (from /readyz
    /// turning red to the listener closing), used when the listener close
    /// is not observed.
    pub shutdown_delay_s: Option<f64>,
    /// The apiserver's request timeout (`--request-timeout`: how long
    /// in-flight requests may run on after the listener closed), seconds.
    pub request_timeout_s: Option<f64>,
    /// `terminationGracePeriodSeconds`.
    pub grace_period_s: Option<f64>,
    /// The LB's health check, when known.
    pub health_check: Option<HealthCheck>,
    /// How close in time two things must be to be "the same moment"
    /// (a cut at the listener close, a reset at SIGKILL), seconds.
    pub tolerance_s: f64,
    /// kube-apiserver turns /readyz red on SIGTERM: when no /readyz poller
    /// reports for an instance, /readyz is taken to have turned red at
    /// SIGTERM.
    pub readyz_red_on_sigterm: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_instance: None,
            local_addrs: Vec::new(),
            vips: Vec::new(),
            local_vips: Vec::new(),
            lb_addrs: Vec::new(),
            health_check_sources: Vec::new(),
            shutdown_delay_s: None,
            request_timeout_s: None,
            grace_period_s: None,
            health_check: None,
            tolerance_s: 1.0,
            readyz_red_on_sigterm: true,
        }
    }
}

/// An address prefix, written `198.18.1.0/24` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            let keep = u32::from(prefix).min(width);
            if keep == 0 { 0 } else { bits >> (width - keep) }
        }
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u128::from(u32::from(n)), 32, self.prefix)
                    == masked(u128::from(u32::from(a)), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), 128, self.prefix) == masked(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Cidr, ConfigError> {
        let bad = || ConfigError::Cidr(s.clone());
        let (a, p) = s.split_once('/').unwrap_or((s.as_str(), ""));
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?
        };
        Ok(Cidr { addr, prefix })
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        format!("{}/{}", c.addr, c.prefix)
    }
}

/// A configuration that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// A duration is negative, NaN or infinite.
    #[error("{name} must be a finite, non-negative number of seconds, got {value}")]
    Duration {
        /// The field.
        name: &'static str,
        /// What it was.
        value: f64,
    },
    /// Not an address prefix.
    #[error("{0:?} is not an address or address/prefix")]
    Cidr(String),
    /// A health check with a zero threshold never takes a backend out.
    #[error("health_check.unhealthy_threshold must be at least 1")]
    Threshold,
}

fn check(name: &'static str, v: Option<f64>) -> Result<(), ConfigError> {
    match v {
        Some(value) if !value.is_finite() || value < 0.0 => {
            Err(ConfigError::Duration { name, value })
        }
        _ => Ok(()),
    }
}

impl Config {
    /// Rejects durations that are negative or not numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check("shutdown_delay_s", self.shutdown_delay_s)?;
        check("request_timeout_s", self.request_timeout_s)?;
        check("grace_period_s", self.grace_period_s)?;
        check("tolerance_s", Some(self.tolerance_s))?;
        if let Some(hc) = &self.health_check {
            check("health_check.interval_s", Some(hc.interval_s))?;
            check("health_check.timeout_s", Some(hc.timeout_s))?;
            if hc.unhealthy_threshold == 0 {
                return Err(ConfigError::Threshold);
            }
        }
        Ok(())
    }

    /// The connection's client is an LB health checker (by
    /// `health_check_sources`; checks from `lb_addrs` are told apart by
    /// their rhythm, see `src/engine/causes/lb_detection.rs`).
    pub fn is_health_check_source(&self, client: &SocketAddr) -> bool {
        self.health_check_sources
            .iter()
            .any(|c| c.contains(client.ip()))
    }

    /// Whether a connection to `ip` ends at this node's apiserver: one of
    /// its addresses, a VIP it holds, loopback, or anything when no
    /// addresses are configured (the engine cannot tell, so it assumes so).
    pub fn is_local_server(&self, ip: IpAddr) -> bool {
        (self.local_addrs.is_empty() && self.local_vips.is_empty())
            || self.local_addrs.contains(&ip)
            || self.local_vips.contains(&ip)
            || ip.is_loopback()
    }

    pub(crate) fn tolerance_ns(&self) -> u64 {
        secs_to_ns(self.tolerance_s)
    }

    /// How a connection from `client` to `server` was routed: a VIP this
    /// node holds, dialled from this node (or from the VIP itself, which
    /// Linux picks as source when the VIP sits on `lo`), is the local
    /// hairpin; any other VIP destination, or a proxying LB's source
    /// address, is via the LB; this node's own address is direct.
    ///
    /// Blind spot: LBs that preserve the client address and dial the node
    /// address directly (AWS NLB instance targets) look direct unless the
    /// adapter sets the path.
    pub fn classify(&self, client: &SocketAddr, server: &SocketAddr) -> Path {
        let (c, s) = (client.ip(), server.ip());
        let client_local =
            self.local_addrs.contains(&c) || self.local_vips.contains(&c) || c.is_loopback();
        if self.local_vips.contains(&s) && client_local {
            Path::LocalHairpin
        } else if self.vips.contains(&s)
            || self.local_vips.contains(&s)
            || self.lb_addrs.contains(&c)
        {
            Path::ViaLb
        } else if self.local_addrs.contains(&s) {
            Path::Direct
        } else {
            Path::Unknown
        }
    }

    /// Path of a prober request: by its connection when known, else a
    /// request to a VIP this node holds hairpins (the prober runs here).
    pub fn classify_probe(&self, client: Option<&SocketAddr>, server: Option<&SocketAddr>) -> Path {
        match (client, server) {
            (Some(c), Some(s)) => self.classify(c, s),
            (None, Some(s)) if self.local_vips.contains(&s.ip()) => Path::LocalHairpin,
            (None, Some(s)) if self.vips.contains(&s.ip()) => Path::ViaLb,
            (None, Some(s)) if self.local_addrs.contains(&s.ip()) => Path::Direct,
            _ => Path::Unknown,
        }
    }
}

pub(crate) fn secs_to_ns(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1e9).round() as u64
    } else {
        0
    }
}
