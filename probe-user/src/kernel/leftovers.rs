//! What the wire observer adds to interfaces outside its own lifetime, and
//! removing it again even when the instance that added it was killed.
//!
//! TCX links (Linux 6.6+) die with the process that holds them, but a
//! netlink TC filter and a clsact qdisc stay until someone deletes them: a
//! `kill -9` (OOM killer, kubelet after the grace period) would leave a
//! classifier running with nobody reading its maps. So every instance keeps
//! a ledger file in the state directory (one per process, written before
//! anything is added), removes what it lists on a clean exit, and at start
//! removes what dead instances in the same network namespace listed.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    TcAttachType,
    links::Link as _,
    tc::{SchedClassifierLink, TcHandle},
};
use serde::{Deserialize, Serialize};

/// The state directory's default; the DaemonSet mounts it from the host so
/// that a restarted container sees what the killed one left.
pub const DEFAULT_STATE_DIR: &str = "/run/drainwatch";

/// One netlink TC filter this instance attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcFilter {
    pub iface: String,
    pub ifindex: u32,
    /// `ingress` or `egress`.
    pub direction: String,
    pub priority: u16,
    /// The filter handle as `major << 16 | minor`.
    pub handle: u32,
}

/// The ledger's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    pid: u32,
    /// Field 22 of /proc/PID/stat: tells a live instance from a reused pid.
    start_ticks: u64,
    /// The network namespace the interfaces belong to.
    netns: u64,
    filters: Vec<TcFilter>,
    /// Interfaces on which this instance created the clsact qdisc.
    qdiscs: Vec<String>,
}

/// This instance's ledger: what it added, kept on disk as it goes.
pub struct Ledger {
    /// `None`: not kept on disk (no state directory); cleanup on exit still works.
    path: Option<PathBuf>,
    state: State,
    /// The netlink filters themselves: dropping one detaches it.
    links: Vec<SchedClassifierLink>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("state directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

fn netns_of(pid: &str) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

/// The start time of `pid` in clock ticks since boot, if it is running.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Field 22 of a /proc/PID/stat line; the command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Ledger {
    /// A ledger in `dir` (created if missing), or in memory only.
    pub fn new(dir: Option<&Path>) -> Result<Ledger, LedgerError> {
        let pid = std::process::id();
        let state = State {
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            netns: netns_of("self").unwrap_or(0),
            ..State::default()
        };
        let path = match dir {
            Some(d) => {
                fs::create_dir_all(d).map_err(|source| LedgerError::Dir {
                    dir: d.to_path_buf(),
                    source,
                })?;
                Some(d.join(format!("tc-{pid}.json")))
            }
            None => None,
        };
        Ok(Ledger {
            path,
            state,
            links: Vec::new(),
        })
    }

    fn save(&self) -> Result<(), LedgerError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec(&self.state).map_err(io::Error::other);
        text.and_then(|t| fs::write(&tmp, t))
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(|source| LedgerError::Write {
                path: path.clone(),
                source,
            })
    }

    /// Notes a clsact qdisc about to be created on `iface` (noted first, so a
    /// kill between the two still leaves it listed).
    pub fn adding_qdisc(&mut self, iface: &str) -> Result<(), LedgerError> {
        self.state.qdiscs.push(iface.to_string());
        self.save()
    }

    /// The qdisc could not be created after all (it existed already).
    pub fn qdisc_not_added(&mut self, iface: &str) -> Result<(), LedgerError> {
        self.state.qdiscs.retain(|q| q != iface);
        self.save()
    }

    /// Notes an attached netlink filter and keeps its link.
    pub fn added_filter(
        &mut self,
        f: TcFilter,
        link: Option<SchedClassifierLink>,
    ) -> Result<(), LedgerError> {
        self.state.filters.push(f);
        self.links.extend(link);
        self.save()
    }

    /// The qdiscs this instance created.
    pub fn qdiscs(&self) -> &[String] {
        &self.state.qdiscs
    }
}

impl Drop for Ledger {
    /// Detaches the netlink filters, removes the qdiscs this instance
    /// created, then the ledger file.
    fn drop(&mut self) {
        self.links.clear();
        for dev in &self.state.qdiscs {
            match del_qdisc(dev) {
                Ok(()) => tracing::info!("removed the clsact qdisc drainwatch added on {dev}"),
                Err(e) => tracing::warn!(
                    "could not remove the clsact qdisc drainwatch added on {dev} ({e}); remove it with `tc qdisc del dev {dev} clsact`"
                ),
            }
        }
        if let Some(p) = &self.path {
            let _ = fs::remove_file(p);
        }
    }
}

fn del_qdisc(dev: &str) -> Result<(), String> {
    let out = std::process::Command::new("tc")
        .args(["qdisc", "del", "dev", dev, "clsact"])
        .output()
        .map_err(|e| format!("running tc: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Whether any TC filter remains on `dev`'s clsact hooks (netlink filters
/// of other tools keep the qdisc in use).
fn has_filters(dev: &str) -> bool {
    ["ingress", "egress"].iter().any(|dir| {
        std::process::Command::new("tc")
            .args(["filter", "show", "dev", dev, dir])
            .output()
            .map(|o| !o.stdout.iter().all(u8::is_ascii_whitespace))
            .unwrap_or(true)
    })
}

fn ifindex(name: &str) -> Option<u32> {
    fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What [`clean_dead`] did, for the log and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub filters: usize,
    pub qdiscs: usize,
    pub ledgers: usize,
}

/// Removes what dead instances in this network namespace left, per the
/// ledgers in `dir`. Never fails: what cannot be removed is logged with the
/// command that would remove it.
pub fn clean_dead(dir: &Path) -> Cleaned {
    let mut done = Cleaned::default();
    let Ok(entries) = fs::read_dir(dir) else {
        return done;
    };
    let own_pid = std::process::id();
    let own_netns = netns_of("self").unwrap_or(0);
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("tc-") && name.ends_with(".json")) {
            continue;
        }
        let state: State = match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "ignoring {}: not a drainwatch ledger ({e}); remove it by hand",
                    path.display()
                );
                continue;
            }
        };
        // In a container every incarnation may be pid 1: the start time
        // tells this process from the one that wrote the ledger.
        let alive = state.pid != own_pid && start_ticks(state.pid) == Some(state.start_ticks);
        if alive || state.netns != own_netns {
            continue;
        }
        for f in &state.filters {
            if ifindex(&f.iface) != Some(f.ifindex) {
                continue; // the interface is gone, and its filters with it
            }
            let attach = if f.direction == "egress" {
                TcAttachType::Egress
            } else {
                TcAttachType::Ingress
            };
            let link = SchedClassifierLink::attached(
                &f.iface,
                attach,
                f.priority,
                TcHandle::from(f.handle),
                None,
            );
            match link.map_err(aya::programs::ProgramError::from) {
                Ok(l) => match l.detach() {
                    Ok(()) => {
                        done.filters += 1;
                        tracing::info!(
                            "removed the tc {} filter on {} (pref {}) left by drainwatch pid {}, which did not exit cleanly",
                            f.direction,
                            f.iface,
                            f.priority,
                            state.pid
                        );
                    }
                    Err(e) => tracing::debug!(
                        "tc {} filter on {} left by pid {}: {e} (already gone)",
                        f.direction,
                        f.iface,
                        state.pid
                    ),
                },
                Err(e) => tracing::debug!("{}: {e}", f.iface),
            }
        }
        for dev in &state.qdiscs {
            if ifindex(dev).is_none() {
                continue;
            }
            if has_filters(dev) {
                tracing::info!(
                    "keeping the clsact qdisc on {dev} left by drainwatch pid {}: other filters use it",
                    state.pid
                );
                continue;
            }
            match del_qdisc(dev) {
                Ok(()) => {
                    done.qdiscs += 1;
                    tracing::info!(
                        "removed the clsact qdisc on {dev} left by drainwatch pid {}",
                        state.pid
                    );
                }
                Err(e) => tracing::debug!("clsact on {dev}: {e} (already gone)"),
            }
        }
        if fs::remove_file(&path).is_ok() {
            done.ledgers += 1;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_spaces_in_the_name() {
        let stat =
            "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987654));
        assert_eq!(parse_start_ticks("garbage"), None);
        let own = start_ticks(std::process::id());
        assert!(own.is_some_and(|t| t > 0), "{own:?}");
    }

    #[test]
    fn a_ledger_is_on_disk_while_alive_and_gone_after_drop() {
        let dir = std::env::temp_dir().join(format!("dw-ledger-{}", std::process::id()));
        let mut l = Ledger::new(Some(&dir)).expect("ledger");
        let f = TcFilter {
            iface: "nonexistent0".into(),
            ifindex: 4_000_000,
            direction: "ingress".into(),
            priority: 49152,
            handle: 1,
        };
        l.added_filter(f.clone(), None).expect("save");
        let path = dir.join(format!("tc-{}.json", std::process::id()));
        let st: State = serde_json::from_slice(&fs::read(&path).expect("read")).expect("parse");
        assert_eq!(st.filters, vec![f]);
        assert_eq!(st.pid, std::process::id());
        drop(l);
        assert!(!path.exists());
        // A live instance's ledger (here: our parent's) is left alone.
        let parent = std::os::unix::process::parent_id();
        let live = State {
            pid: parent,
            start_ticks: start_ticks(parent).expect("parent's start"),
            ..st.clone()
        };
        let live_path = dir.join(format!("tc-{parent}.json"));
        fs::write(&live_path, serde_json::to_vec(&live).expect("json")).expect("w");
        assert_eq!(clean_dead(&dir), Cleaned::default());
        assert!(live_path.exists());
        fs::remove_file(&live_path).expect("rm");
        // A dead one's is removed (its interface no longer exists).
        let dead = State {
            pid: u32::MAX,
            start_ticks: 1,
            netns: netns_of("self").expect("netns"),
            filters: st.filters,
            qdiscs: vec!["nonexistent0".into()],
        };
        fs::write(
            dir.join("tc-99.json"),
            serde_json::to_vec(&dead).expect("json"),
        )
        .expect("w");
        fs::write(dir.join("tc-98.json"), b"{not json").expect("w");
        let c = clean_dead(&dir);
        assert_eq!(c.ledgers, 1, "{c:?}");
        assert!(!dir.join("tc-99.json").exists());
        assert!(
            dir.join("tc-98.json").exists(),
            "a bad ledger is named, not deleted"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
