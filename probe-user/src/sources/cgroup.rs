//! Who a process is, from its cgroup: the kernel gives the cgroup v2 id
//! (`bpf_get_current_cgroup_id`, or the socket's `sk_cgrp_data`); this
//! module finds that cgroup's path ([`CgroupPaths`]), reads the pod uid and
//! container id from the path ([`layout`], pure and fuzzed), and names the
//! pod from the pods of this node ([`crate::sources::nodepods`]):
//! [`Attributor::who`].
//!
//! On cgroup v2 the id is the inode number of the cgroup's directory (the
//! kernfs node id), unique for the boot: an id is never reused, so a cached
//! path never turns wrong, it only goes away with its cgroup.
//!
//! Blind spots (counted in [`CgroupStats`] where they can be):
//! - a cgroup removed before the lookup (a short-lived container, a process
//!   that exited with its pod) has no path any more: `gone`;
//! - cgroups created since the last walk are found only by the next walk,
//!   at most one per `min_rescan`, or at once through the process's own
//!   `/proc/PID/cgroup` when the pid is known and still running;
//! - the walk stops at `max_depth` (`depth_limited`) and `max_entries`
//!   (`truncated`): what it did not reach is not named;
//! - cgroup v1: the kernel's id is the v2 one, which on a hybrid host with
//!   a cgroupfs-driven kubelet says nothing about the pod; the v1 path is
//!   then read from `/proc/PID/cgroup` (`net_cls`, `pids`, `memory`,
//!   `name=systemd`), so it needs the pid, and the process alive. That
//!   path is where the pid is at lookup, not at the event: a lookup only
//!   trusts it while the pid's v2 cgroup still has the event's id, which
//!   catches a process that moved or a reused pid in another v2 cgroup, not
//!   one in the same (on such hosts many processes share one v2 cgroup);
//! - in a container the daemon must see the host's cgroup tree and pids
//!   (the host's `/sys/fs/cgroup` mounted, `hostPID`): in a private cgroup
//!   namespace it sees its own subtree only, and other processes' paths
//!   start with `/..`.

pub mod layout;

use std::{
    collections::HashMap,
    fs,
    io::{self, Read as _},
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use layout::{Owner, ProcCgroupError, Qos, Runtime};

use crate::sources::nodepods::NodePods;

/// Errors of the resolver, each naming its input.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system in {mounts}")]
    NoCgroup2 { mounts: PathBuf },
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{0}")]
    ProcCgroup(#[from] ProcCgroupError),
    #[error("{path}: larger than {max} bytes")]
    TooLarge { path: PathBuf, max: usize },
}

/// Bounds of the id -> path cache.
#[derive(Debug, Clone)]
pub struct CgroupConfig {
    /// The cgroup2 mount; `None`: the first one in `/proc/mounts`
    /// (`/sys/fs/cgroup` on pure v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones).
    pub root: Option<PathBuf>,
    /// Directories below the root walked into (kind's pods sit at depth 9).
    pub max_depth: usize,
    /// Cgroups kept; also the most one walk reads.
    pub max_entries: usize,
    /// A miss walks the tree again at most this often.
    pub min_rescan: Duration,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig {
            root: None,
            max_depth: 16,
            max_entries: 32_768,
            min_rescan: Duration::from_secs(5),
        }
    }
}

/// What the resolver did and could not do, for export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Walks of the tree.
    pub walks: u64,
    /// Walks that stopped at `max_entries`.
    pub truncated: u64,
    /// Directories not walked into for `max_depth`.
    pub depth_limited: u64,
    /// Ids not found after everything was tried.
    pub gone: u64,
    /// Lookups that found the id in the cache.
    pub hits: u64,
    /// Lookups answered from `/proc/PID/cgroup`.
    pub from_pid: u64,
    /// `/proc/PID/cgroup` files that were unreadable or malformed.
    pub proc_errors: u64,
}

/// The largest `/proc/PID/cgroup` read (a v1 host lists about 13 lines).
const MAX_PROC_CGROUP: usize = 64 * 1024;

/// Cgroup v2 id -> path (relative to the cgroup2 root, starting with `/`).
#[derive(Debug)]
pub struct CgroupPaths {
    cfg: CgroupConfig,
    root: PathBuf,
    /// The proc file system (`/proc`; a test may point elsewhere).
    proc: PathBuf,
    by_id: HashMap<u64, String>,
    last_walk: Option<Instant>,
    stats: CgroupStats,
}

impl CgroupPaths {
    /// A resolver over the cgroup2 root of `cfg` (found in `/proc/mounts`
    /// when not given); nothing is read until the first lookup.
    pub fn new(cfg: CgroupConfig) -> Result<CgroupPaths, CgroupError> {
        let root = match &cfg.root {
            Some(r) => r.clone(),
            None => cgroup2_root(Path::new("/proc/mounts"))?,
        };
        Ok(CgroupPaths {
            cfg,
            root,
            proc: PathBuf::from("/proc"),
            by_id: HashMap::new(),
            last_walk: None,
            stats: CgroupStats::default(),
        })
    }

    /// The cgroup2 mount in use.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What it did so far.
    pub fn stats(&self) -> CgroupStats {
        self.stats
    }

    /// Cgroups cached now.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The path of cgroup `id`: from the cache; else from `pid`'s
    /// `/proc/PID/cgroup` when its directory still has this id; else from a
    /// new walk if the last is `min_rescan` old. Blocking (file system
    /// reads): call it off the async runtime's workers.
    pub fn path_of(&mut self, id: u64, pid: Option<u32>, now: Instant) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            self.stats.hits += 1;
            return Some(p.clone());
        }
        if let Some(pid) = pid
            && let Some(p) = self.unified_of_pid(pid)
            && self.id_of(&p) == Some(id)
        {
            self.stats.from_pid += 1;
            self.insert(id, p.clone());
            return Some(p);
        }
        if self
            .last_walk
            .is_none_or(|t| now.duration_since(t) >= self.cfg.min_rescan)
        {
            self.walk(now);
            if let Some(p) = self.by_id.get(&id) {
                return Some(p.clone());
            }
        }
        self.stats.gone += 1;
        None
    }

    /// The cgroup id of `path` (relative to the root), as the kernel gives it.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        fs::metadata(self.abs(path)).ok().map(|m| m.ino())
    }

    /// `pid`'s `/proc/PID/cgroup`, parsed; errors are counted.
    pub fn proc_cgroups(&mut self, pid: u32) -> Option<layout::ProcCgroups> {
        match read_proc_cgroup(&self.proc, pid) {
            Ok(c) => Some(c),
            Err(e) => {
                self.stats.proc_errors += 1;
                tracing::debug!("{e}");
                None
            }
        }
    }

    fn unified_of_pid(&mut self, pid: u32) -> Option<String> {
        self.proc_cgroups(pid)?.unified
    }

    fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn insert(&mut self, id: u64, path: String) {
        if self.by_id.len() < self.cfg.max_entries {
            self.by_id.insert(id, path);
        }
    }

    /// Reads the tree afresh (so removed cgroups leave the cache), bounded
    /// by `max_depth` and `max_entries`. A directory that vanishes during
    /// the walk is skipped: it is gone.
    fn walk(&mut self, now: Instant) {
        self.last_walk = Some(now);
        self.stats.walks += 1;
        let mut found: HashMap<u64, String> = HashMap::new();
        let Ok(root) = fs::metadata(&self.root) else {
            self.by_id = found;
            return;
        };
        // Each directory's id comes from its parent's listing (readdir's
        // d_ino is the kernfs id), not a stat per cgroup: half the calls.
        let mut stack: Vec<(String, usize, u64)> = vec![("/".to_string(), 0, root.ino())];
        let mut truncated = false;
        while let Some((rel, depth, ino)) = stack.pop() {
            if found.len() >= self.cfg.max_entries {
                truncated = true;
                break;
            }
            let Ok(entries) = fs::read_dir(self.abs(&rel)) else {
                // Removed since its parent was listed: gone.
                continue;
            };
            found.insert(ino, rel.clone());
            let mut children = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .peekable();
            if children.peek().is_none() {
                continue;
            }
            if depth >= self.cfg.max_depth {
                self.stats.depth_limited += 1;
                continue;
            }
            for e in children {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    // cgroup names are what kubelet and the runtimes write:
                    // ASCII. Anything else names no pod.
                    continue;
                };
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((child, depth + 1, e.ino()));
            }
        }
        if truncated {
            self.stats.truncated += 1;
        }
        self.by_id = found;
    }
}

/// The first cgroup2 mount listed in `mounts` (a `/proc/mounts`).
pub fn cgroup2_root(mounts: &Path) -> Result<PathBuf, CgroupError> {
    let text = read_bounded(mounts, 1024 * 1024)?;
    cgroup2_in(&text).ok_or_else(|| CgroupError::NoCgroup2 {
        mounts: mounts.to_path_buf(),
    })
}

/// Pure: the mount point of the first `cgroup2` line of a mounts table
/// (octal escapes, `\040` for a space, decoded).
pub fn cgroup2_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_ascii_whitespace();
        let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(at)))
    })
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(d) = b.get(i + 1..i + 4)
            && d.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_bounded(path: &Path, max: usize) -> Result<String, CgroupError> {
    let read = |e| CgroupError::Read {
        path: path.to_path_buf(),
        source: e,
    };
    let mut buf = Vec::new();
    fs::File::open(path)
        .map_err(read)?
        .take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(read)?;
    if buf.len() > max {
        return Err(CgroupError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn read_proc_cgroup(proc: &Path, pid: u32) -> Result<layout::ProcCgroups, CgroupError> {
    let path = proc.join(pid.to_string()).join("cgroup");
    let text = read_bounded(&path, MAX_PROC_CGROUP)?;
    Ok(layout::parse_proc_cgroup(
        &path.display().to_string(),
        &text,
    )?)
}

/// A container, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub id: String,
    /// From the cgroup's name, else from the pod's `containerStatuses`.
    pub runtime: Runtime,
    /// The container's name in its pod, from the pod's `containerStatuses`.
    pub name: Option<String>,
    /// CRI-O's monitor process (`conmon`) of this container.
    pub monitor: bool,
}

/// A pod, as far as it is known: the uid from the cgroup always, the rest
/// when the pod watcher knows the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The uid in the cgroup's name (a static pod's config hash).
    pub uid: String,
    pub qos: Option<Qos>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub node: Option<String>,
}

/// Who a kernel event's process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub pid: u32,
    pub cgroup_id: u64,
    /// The cgroup that named the owner (a v1 path when found through one),
    /// else the v2 path when found.
    pub cgroup_path: Option<String>,
    pub container: Option<ContainerRef>,
    pub pod: Option<PodRef>,
}

/// Cgroup paths plus the pods of this node.
#[derive(Debug)]
pub struct Attributor {
    pub paths: CgroupPaths,
    pub pods: NodePods,
}

impl Attributor {
    /// Names `pid` (running in cgroup `cgroup_id`): its cgroup's owner, else
    /// (cgroup v1) the owner its `/proc/PID/cgroup` names. A process in no
    /// pod and no container is named by nothing but its pid. Blocking, as
    /// [`CgroupPaths::path_of`].
    pub fn who(&mut self, pid: u32, cgroup_id: u64, now: Instant) -> Who {
        let v2 = self
            .paths
            .path_of(cgroup_id, (pid != 0).then_some(pid), now);
        let mut found = v2
            .as_deref()
            .and_then(|p| layout::parse_path(p).map(|o| (p.to_string(), o)));
        if found.is_none()
            && pid != 0
            && let Some(c) = self.paths.proc_cgroups(pid)
        {
            // Only when the process is still where the event saw it: a
            // unified path with another id means it moved (or the pid was reused).
            let same = c
                .unified
                .as_deref()
                .is_none_or(|u| self.paths.id_of(u) == Some(cgroup_id));
            if same {
                found = c.owner().map(|(p, o)| (p.to_string(), o));
            }
        }
        let Some((path, owner)) = found else {
            return Who {
                pid,
                cgroup_id,
                cgroup_path: v2,
                container: None,
                pod: None,
            };
        };
        self.name(pid, cgroup_id, path, owner)
    }

    fn name(&self, pid: u32, cgroup_id: u64, path: String, owner: Owner) -> Who {
        let info = owner.pod_uid.as_deref().and_then(|u| self.pods.get(u));
        let container = owner.container_id.map(|id| {
            let status = info
                .as_ref()
                .and_then(|i| i.containers.iter().find(|c| c.id == id));
            let runtime = match (owner.runtime, status) {
                (Some(r), _) if r != Runtime::Unknown => r,
                (_, Some(s)) => s.runtime,
                (r, None) => r.unwrap_or(Runtime::Unknown),
            };
            ContainerRef {
                name: status.map(|s| s.name.clone()),
                id,
                runtime,
                monitor: owner.monitor,
            }
        });
        let pod = owner.pod_uid.map(|uid| PodRef {
            uid,
            qos: owner.qos,
            namespace: info.as_ref().map(|i| i.namespace.clone()),
            name: info.as_ref().map(|i| i.name.clone()),
            node: info.as_ref().map(|i| i.node.clone()),
        });
        Who {
            pid,
            cgroup_id,
            cgroup_path: Some(path),
            container,
            pod,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup2_mount_from_the_mounts_table() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_in("cgroup2 /host\\040root/cg cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/host root/cg"))
        );
        assert_eq!(cgroup2_in("proc /proc proc rw 0 0\n"), None);
        let missing = Path::new("/nonexistent/mounts");
        let e = cgroup2_root(missing).expect_err("no file");
        assert!(e.to_string().starts_with("/nonexistent/mounts: "), "{e}");
    }

    /// A private tree of plain directories stands in for the cgroup file
    /// system: the walk reads names and inode numbers only.
    fn tree(name: &str, dirs: &[&str]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("dw-cgwalk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in dirs {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        root
    }

    fn paths(root: &Path, max_depth: usize, max_entries: usize) -> CgroupPaths {
        CgroupPaths::new(CgroupConfig {
            root: Some(root.to_path_buf()),
            max_depth,
            max_entries,
            min_rescan: Duration::from_secs(5),
        })
        .expect("resolver")
    }

    #[test]
    fn walk_finds_paths_and_rescans_at_most_once_per_interval() {
        let root = tree("rescan", &["a/b/c", "d"]);
        let mut p = paths(&root, 16, 100);
        let t0 = Instant::now();
        let id = fs::metadata(root.join("a/b/c")).expect("stat").ino();
        assert_eq!(p.path_of(id, None, t0).as_deref(), Some("/a/b/c"));
        assert_eq!(p.len(), 5, "root, a, a/b, a/b/c, d");
        assert_eq!(p.path_of(id, None, t0).as_deref(), Some("/a/b/c"));
        fs::create_dir(root.join("e")).expect("mkdir");
        let e = fs::metadata(root.join("e")).expect("stat").ino();
        // Too soon after the last walk: a miss, no walk.
        assert_eq!(p.path_of(e, None, t0 + Duration::from_secs(1)), None);
        assert_eq!(p.stats().walks, 1);
        assert_eq!(
            p.path_of(e, None, t0 + Duration::from_secs(5)).as_deref(),
            Some("/e")
        );
        // Removed: still named (an id is never reused, so the path was
        // right) until a miss walks the tree again.
        let d = fs::metadata(root.join("d")).expect("stat").ino();
        fs::remove_dir(root.join("d")).expect("rmdir");
        assert_eq!(
            p.path_of(d, None, t0 + Duration::from_secs(10)).as_deref(),
            Some("/d")
        );
        assert_eq!(
            p.path_of(u64::MAX, None, t0 + Duration::from_secs(10)),
            None
        );
        assert_eq!(p.path_of(d, None, t0 + Duration::from_secs(11)), None);
        let s = p.stats();
        assert_eq!((s.walks, s.hits, s.gone), (3, 2, 3));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn walk_bounds_are_counted() {
        let root = tree("bounds", &["a/b/c/d", "x/y"]);
        let deep = fs::metadata(root.join("a/b/c/d")).expect("stat").ino();
        let mut p = paths(&root, 2, 100);
        let t0 = Instant::now();
        assert_eq!(p.path_of(deep, None, t0), None);
        assert_eq!(p.stats().depth_limited, 1, "a/b has a child below depth 2");
        let mut p = paths(&root, 16, 3);
        assert_eq!(p.path_of(deep, None, t0), None);
        assert_eq!((p.len(), p.stats().truncated), (3, 1));
        let _ = fs::remove_dir_all(&root);
    }
}
