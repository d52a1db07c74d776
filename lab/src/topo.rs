//! Lab topology: hosts as network namespaces, LANs as bridges, and their teardown.
//!
//! Every namespace is named `dwlab-<id>-<host>` where `<id>` is unique per [`Lab`], so
//! parallel tests never collide and [`clean`] can find whatever a crashed run left. All
//! interfaces are created directly inside lab namespaces (never in the root namespace),
//! so deleting the namespaces removes every veth, bridge, route and nft table with them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cmd::{self, CmdError};

/// Prefix of every namespace the lab creates.
pub const PREFIX: &str = "dwlab-";

/// A topology operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TopoError {
    /// A system command failed.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// A host name was used before being added.
    #[error("unknown lab host {0:?}")]
    UnknownHost(String),
    /// Host names become interface and namespace names, which are short.
    #[error("invalid host name {0:?}: use 1-8 characters [a-z0-9]")]
    BadName(String),
}

/// A running lab: its namespaces and the processes started in them. Dropping it kills
/// the processes (by pid) and deletes the namespaces.
#[derive(Debug)]
pub struct Lab {
    id: String,
    hosts: BTreeMap<String, Host>,
    links: u32,
    pids: Vec<u32>,
}

/// One lab host (or bridge) namespace.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace name.
    pub ns: String,
    /// Addresses assigned to it, first is the primary.
    pub addrs: Vec<Ipv4Addr>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Starts an empty lab with a fresh unique id.
    pub fn new() -> Self {
        // pid + a per-process counter + clock bits: unique across parallel tests and runs.
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mix = (crate::clock::now_ns() / 1000) as u32 ^ std::process::id().rotate_left(12);
        let id = format!(
            "{:05x}",
            (mix.wrapping_add(seq.wrapping_mul(7919))) & 0xfffff
        );
        Lab {
            id,
            hosts: BTreeMap::new(),
            links: 0,
            pids: Vec::new(),
        }
    }

    /// This lab's unique id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace-name prefix of this lab, `dwlab-<id>-`.
    pub fn prefix(&self) -> String {
        format!("{PREFIX}{}-", self.id)
    }

    /// Namespace name of `host`.
    pub fn ns(&self, host: &str) -> Result<&str, TopoError> {
        self.hosts
            .get(host)
            .map(|h| h.ns.as_str())
            .ok_or_else(|| TopoError::UnknownHost(host.to_string()))
    }

    /// Primary address of `host`.
    pub fn addr(&self, host: &str) -> Result<Ipv4Addr, TopoError> {
        self.hosts
            .get(host)
            .and_then(|h| h.addrs.first().copied())
            .ok_or_else(|| TopoError::UnknownHost(host.to_string()))
    }

    /// Creates host `name` with loopback up and forwarding off.
    pub fn add_host(&mut self, name: &str) -> Result<(), TopoError> {
        if name.is_empty()
            || name.len() > 8
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(TopoError::BadName(name.to_string()));
        }
        let ns = format!("{}{name}", self.prefix());
        cmd::run("ip", &["netns", "add", &ns])?;
        // Recorded before configuring so a failure below still gets cleaned up on drop.
        self.hosts.insert(
            name.to_string(),
            Host {
                ns: ns.clone(),
                addrs: Vec::new(),
            },
        );
        cmd::run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Creates a LAN: a namespace holding bridge `br0`, to which hosts attach.
    pub fn add_lan(&mut self, name: &str) -> Result<(), TopoError> {
        self.add_host(name)?;
        let ns = self.ns(name)?.to_string();
        cmd::run("ip", &["-n", &ns, "link", "add", "br0", "type", "bridge"])?;
        cmd::run("ip", &["-n", &ns, "link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Attaches `host` to `lan` with address `addr/prefix` on a new interface `ifname`.
    pub fn attach(
        &mut self,
        host: &str,
        lan: &str,
        ifname: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), TopoError> {
        let host_ns = self.ns(host)?.to_string();
        let lan_ns = self.ns(lan)?.to_string();
        self.links += 1;
        let port = format!("p{}", self.links);
        cmd::run(
            "ip",
            &[
                "-n", &lan_ns, "link", "add", &port, "type", "veth", "peer", "name", ifname,
                "netns", &host_ns,
            ],
        )?;
        cmd::run(
            "ip",
            &["-n", &lan_ns, "link", "set", &port, "master", "br0"],
        )?;
        cmd::run("ip", &["-n", &lan_ns, "link", "set", &port, "up"])?;
        self.configure(host, ifname, addr, prefix)
    }

    /// Joins two hosts with a direct veth pair (`ifa` in `a`, `ifb` in `b`).
    pub fn link(
        &mut self,
        (a, ifa, addr_a): (&str, &str, Ipv4Addr),
        (b, ifb, addr_b): (&str, &str, Ipv4Addr),
        prefix: u8,
    ) -> Result<(), TopoError> {
        let ns_a = self.ns(a)?.to_string();
        let ns_b = self.ns(b)?.to_string();
        cmd::run(
            "ip",
            &[
                "-n", &ns_a, "link", "add", ifa, "type", "veth", "peer", "name", ifb, "netns",
                &ns_b,
            ],
        )?;
        self.configure(a, ifa, addr_a, prefix)?;
        self.configure(b, ifb, addr_b, prefix)
    }

    fn configure(
        &mut self,
        host: &str,
        ifname: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), TopoError> {
        let ns = self.ns(host)?.to_string();
        let cidr = format!("{addr}/{prefix}");
        cmd::run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", ifname])?;
        cmd::run("ip", &["-n", &ns, "link", "set", ifname, "up"])?;
        if let Some(h) = self.hosts.get_mut(host) {
            h.addrs.push(addr);
        }
        Ok(())
    }

    /// Adds `addr/32` to `host`'s loopback: a VIP that this host treats as its own.
    pub fn add_local_vip(&mut self, host: &str, addr: Ipv4Addr) -> Result<(), TopoError> {
        let ns = self.ns(host)?.to_string();
        cmd::run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{addr}/32"), "dev", "lo"],
        )?;
        // Never answer ARP for the VIP on the LAN: only the LB should attract it.
        self.sysctl(host, "net.ipv4.conf.all.arp_ignore", "1")?;
        Ok(())
    }

    /// Routes `dst` (CIDR) via `gw` in `host`. Only lab addresses are ever routed: there
    /// is no default route, so nothing can leave the lab.
    pub fn route(&self, host: &str, dst: &str, gw: Ipv4Addr) -> Result<(), TopoError> {
        let ns = self.ns(host)?;
        cmd::run(
            "ip",
            &["-n", ns, "route", "add", dst, "via", &gw.to_string()],
        )?;
        Ok(())
    }

    /// Sets a sysctl inside `host`'s namespace.
    pub fn sysctl(&self, host: &str, key: &str, value: &str) -> Result<(), TopoError> {
        let ns = self.ns(host)?;
        cmd::run_in(ns, "sysctl", &["-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// Loads an nft ruleset into `host`'s namespace.
    pub fn nft(&self, host: &str, script: &str) -> Result<(), TopoError> {
        cmd::nft_in(self.ns(host)?, script)?;
        Ok(())
    }

    /// Records a process started in the lab so teardown kills it.
    pub fn track_pid(&mut self, pid: u32) {
        self.pids.push(pid);
    }

    /// The hosts by name.
    pub fn hosts(&self) -> impl Iterator<Item = (&String, &Host)> {
        self.hosts.iter()
    }

    /// Namespaces of this lab.
    pub fn namespaces(&self) -> Vec<String> {
        self.hosts.values().map(|h| h.ns.clone()).collect()
    }

    /// Kills this lab's processes and deletes its namespaces; idempotent.
    pub fn teardown(&mut self) -> Vec<CmdError> {
        for pid in self.pids.drain(..) {
            cmd::kill(pid, libc::SIGKILL);
        }
        let mut errors = Vec::new();
        for host in std::mem::take(&mut self.hosts).into_values() {
            kill_ns_pids(&host.ns);
            if let Err(e) = cmd::run("ip", &["netns", "delete", &host.ns]) {
                errors.push(e);
            }
        }
        errors
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for e in self.teardown() {
            tracing::warn!("lab teardown: {e}");
        }
    }
}

/// Kills every process living in namespace `ns` (tcpdump, HAProxy, clients started by a
/// crashed run). Each is killed by its own pid.
fn kill_ns_pids(ns: &str) {
    if let Ok(out) = cmd::run("ip", &["netns", "pids", ns]) {
        for pid in out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            cmd::kill(pid, libc::SIGKILL);
        }
    }
}

/// Lab namespaces present on this machine (any run), optionally only one lab's.
pub fn lab_namespaces(prefix: &str) -> Result<Vec<String>, CmdError> {
    let out = cmd::run("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

/// Removes everything any lab run left behind: processes in `dwlab-` namespaces, then the
/// namespaces (which takes their interfaces and nft tables along). Returns what it removed.
pub fn clean() -> Result<Vec<String>, CmdError> {
    clean_prefix(PREFIX)
}

/// [`clean`] restricted to namespaces starting with `prefix` (one lab's `dwlab-<id>-`).
pub fn clean_prefix(prefix: &str) -> Result<Vec<String>, CmdError> {
    let names = lab_namespaces(prefix)?;
    for ns in &names {
        kill_ns_pids(ns);
    }
    for ns in &names {
        cmd::run("ip", &["netns", "delete", ns])?;
    }
    Ok(names)
}
