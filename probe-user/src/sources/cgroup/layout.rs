//! Pure: which pod and container a cgroup path belongs to, read from the
//! names kubelet and the container runtimes give cgroups, and which paths a
//! process's `/proc/PID/cgroup` lists. No I/O, so the fuzz target `cgroup`
//! (fuzz/) runs this very file.
//!
//! The layouts (kubelet's `pkg/kubelet/cm` names the pod level, the runtime
//! the container level):
//!
//! | driver | pod level | container level |
//! |---|---|---|
//! | systemd | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, '-' as '_'>.slice` (besteffort alike; guaranteed: `kubepods.slice/kubepods-pod<uid>.slice`) | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `crio-conmon-<id>.scope`, `docker-<id>.scope` |
//! | cgroupfs | `kubepods/burstable/pod<uid>` (guaranteed: `kubepods/pod<uid>`) | `<id>` (containerd, Docker), `crio-<id>`, `crio-conmon-<id>` |
//!
//! Prefixes before `kubepods` are skipped, so nested nodes read the same:
//! kind (`/system.slice/docker-<node>.scope/kubelet.slice/kubelet-kubepods.slice/...`,
//! the kubelet's `--cgroup-root`), k3s in Docker (`/docker/<node>/kubepods/...`),
//! and a reader in a cgroup namespace that sees other cgroups as `/../..`.
//!
//! Blind spots: a kubelet with `--cgroups-per-qos=false` or a custom
//! `--cgroup-root` that does not contain `kubepods` names no pod here; a
//! container id that is not 64 hex digits (every CRI runtime's, and
//! Docker's, are) is not taken for one; on the cgroupfs driver the bare id
//! does not say which runtime made it ([`Runtime::Unknown`]: the pod's
//! `containerStatuses` do); a process in a container's own sub-cgroup
//! (CRI-O's `crio-<id>.scope/container`, systemd in a container) is named
//! by that container.

use std::fmt;

/// The runtime that named the container's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// containerd's CRI plugin (`cri-containerd-`).
    Containerd,
    /// CRI-O (`crio-`).
    CriO,
    /// Docker (`docker-`, `/docker/<id>`; dockershim and cri-dockerd too).
    Docker,
    /// A bare id (the cgroupfs driver of containerd or Docker).
    Unknown,
}

impl Runtime {
    /// The scheme the runtime uses in a pod's `containerStatuses[].containerID`.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
            Runtime::Unknown => "unknown",
        }
    }

    /// The runtime of a `containerID` scheme (`containerd://<id>`).
    pub fn from_scheme(s: &str) -> Runtime {
        match s {
            "containerd" => Runtime::Containerd,
            "cri-o" => Runtime::CriO,
            "docker" => Runtime::Docker,
            _ => Runtime::Unknown,
        }
    }
}

/// A pod's QoS class, from the level its cgroup sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a cgroup path names: a pod, a container, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The pod uid as kubelet names the pod's cgroup: the API object's
    /// `metadata.uid`, or for a static pod the 32-hex-digit hash its mirror
    /// pod carries as the `kubernetes.io/config.mirror` annotation.
    pub pod_uid: Option<String>,
    pub qos: Option<Qos>,
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    /// CRI-O's `crio-conmon-<id>`: the runtime's monitor of the container,
    /// not the container's own processes.
    pub monitor: bool,
}

/// The pod and container a cgroup path (absolute, or relative to a cgroup
/// root) belongs to; `None` when it names neither (a system service, a
/// user session, the root).
pub fn parse_path(path: &str) -> Option<Owner> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();
    // The innermost pod: a kind node's pods sit inside the node's container.
    let pod = (0..parts.len())
        .rev()
        .find_map(|i| pod_level(&parts[..=i]).map(|(uid, qos)| (i, uid, qos)));
    if let Some((i, uid, qos)) = pod {
        let mut owner = Owner {
            pod_uid: Some(uid),
            qos: Some(qos),
            container_id: None,
            runtime: None,
            monitor: false,
        };
        if let Some((id, runtime, monitor)) = parts.get(i + 1).and_then(|c| container_level(c)) {
            owner.container_id = Some(id.to_string());
            owner.runtime = Some(runtime);
            owner.monitor = monitor;
        }
        return Some(owner);
    }
    // No pod: a container of its own (Docker, or a kind or k3d node's).
    (0..parts.len()).rev().find_map(|i| {
        let (id, runtime, monitor) = container_level(parts[i])?;
        // A bare id names a container only under Docker's cgroupfs parent.
        if runtime == Runtime::Unknown && (i == 0 || parts[i - 1] != "docker") {
            return None;
        }
        let runtime = if runtime == Runtime::Unknown {
            Runtime::Docker
        } else {
            runtime
        };
        Some(Owner {
            pod_uid: None,
            qos: None,
            container_id: Some(id.to_string()),
            runtime: Some(runtime),
            monitor,
        })
    })
}

/// The pod uid and QoS class when the last of `parts` is a pod's cgroup.
fn pod_level(parts: &[&str]) -> Option<(String, Qos)> {
    let (&last, before) = parts.split_last()?;
    if let Some(name) = last.strip_suffix(".slice") {
        // systemd: one name carries the whole chain, '-' separating levels
        // (so the uid's own '-' are written '_').
        let pieces: Vec<&str> = name.split('-').collect();
        let (&pod, chain) = pieces.split_last()?;
        let uid = pod.strip_prefix("pod")?.replace('_', "-");
        if !valid_uid(&uid) {
            return None;
        }
        let qos = match chain {
            [.., "kubepods"] => Qos::Guaranteed,
            [.., "kubepods", "burstable"] => Qos::Burstable,
            [.., "kubepods", "besteffort"] => Qos::BestEffort,
            _ => return None,
        };
        return Some((uid, qos));
    }
    let uid = last.strip_prefix("pod")?;
    if !valid_uid(uid) {
        return None;
    }
    let qos = match before {
        [.., "kubepods"] => Qos::Guaranteed,
        [.., "kubepods", "burstable"] => Qos::Burstable,
        [.., "kubepods", "besteffort"] => Qos::BestEffort,
        _ => return None,
    };
    Some((uid.to_string(), qos))
}

/// A container's cgroup name: its id, the runtime that named it, and
/// whether it is CRI-O's monitor.
fn container_level(c: &str) -> Option<(&str, Runtime, bool)> {
    let c = c.strip_suffix(".scope").unwrap_or(c);
    let (id, runtime, monitor) = if let Some(id) = c.strip_prefix("cri-containerd-") {
        (id, Runtime::Containerd, false)
    } else if let Some(id) = c.strip_prefix("crio-conmon-") {
        (id, Runtime::CriO, true)
    } else if let Some(id) = c.strip_prefix("crio-") {
        (id, Runtime::CriO, false)
    } else if let Some(id) = c.strip_prefix("docker-") {
        (id, Runtime::Docker, false)
    } else {
        (c, Runtime::Unknown, false)
    };
    valid_container_id(id).then_some((id, runtime, monitor))
}

/// A pod uid kubelet puts in cgroup names: a UUID (8-4-4-4-12 hex digits),
/// or a static pod's 32-hex-digit hash.
pub fn valid_uid(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        }),
        _ => false,
    }
}

/// A CRI or Docker container id: 64 hex digits.
pub fn valid_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// The paths one `/proc/PID/cgroup` lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroups {
    /// The cgroup v2 path (the `0::` line).
    pub unified: Option<String>,
    /// cgroup v1: (controllers or `name=` of the hierarchy, path).
    pub v1: Vec<(String, String)>,
}

/// v1 hierarchies whose paths kubelet and the runtimes set for every
/// container, in the order they are asked.
pub const V1_CONTROLLERS: [&str; 4] = ["net_cls", "pids", "memory", "name=systemd"];

/// A `/proc/PID/cgroup` that is not the kernel's format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroupError {
    /// The file, as the caller names it.
    pub input: String,
    /// 1-based line number.
    pub line: usize,
    pub what: &'static str,
}

impl fmt::Display for ProcCgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}: {}", self.input, self.line, self.what)
    }
}

impl std::error::Error for ProcCgroupError {}

/// Parses `/proc/PID/cgroup` (`hierarchy-ID:controller-list:path` per
/// line); `input` names the file in errors.
pub fn parse_proc_cgroup(input: &str, text: &str) -> Result<ProcCgroups, ProcCgroupError> {
    let mut out = ProcCgroups::default();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let err = |what| ProcCgroupError {
            input: input.to_string(),
            line: n + 1,
            what,
        };
        // The path may itself hold ':' (a cgroup name can): split twice only.
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            return Err(err("not hierarchy-ID:controllers:path"));
        };
        let id: u32 = id
            .parse()
            .map_err(|_| err("hierarchy ID is not a number"))?;
        if !path.starts_with('/') {
            return Err(err("path is not absolute"));
        }
        if id == 0 && controllers.is_empty() {
            out.unified = Some(path.to_string());
        } else {
            out.v1.push((controllers.to_string(), path.to_string()));
        }
    }
    Ok(out)
}

impl ProcCgroups {
    /// The first path that names a pod or container: the unified one, then
    /// the v1 hierarchies of [`V1_CONTROLLERS`] in that order (on a hybrid
    /// host a kubelet with the cgroupfs driver places containers only in
    /// the v1 hierarchies, leaving the unified path at the runtime's service).
    pub fn owner(&self) -> Option<(&str, Owner)> {
        let v1 = V1_CONTROLLERS.iter().filter_map(|want| {
            self.v1
                .iter()
                .find(|(c, _)| c.split(',').any(|c| c == *want))
                .map(|(_, p)| p.as_str())
        });
        self.unified
            .as_deref()
            .into_iter()
            .chain(v1)
            .find_map(|p| parse_path(p).map(|o| (p, o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5f3c1a2b-7d4e-4f60-9a8b-1c2d3e4f5a6b";
    const ID: &str = "8e1f3b0c9d2a4e5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b";

    fn owner(uid: Option<&str>, qos: Option<Qos>, id: Option<&str>, rt: Option<Runtime>) -> Owner {
        Owner {
            pod_uid: uid.map(str::to_string),
            qos,
            container_id: id.map(str::to_string),
            runtime: rt,
            monitor: false,
        }
    }

    #[test]
    fn systemd_driver_layouts() {
        let u = UID.replace('-', "_");
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
                ),
                Qos::Burstable,
                Runtime::Containerd,
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
                ),
                Qos::BestEffort,
                Runtime::CriO,
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{ID}.scope"),
                Qos::Guaranteed,
                Runtime::Docker,
            ),
            // kind: the node is a Docker container, kubelet's root kubelet.slice.
            (
                format!(
                    "/system.slice/docker-{}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope",
                    "a".repeat(64)
                ),
                Qos::BestEffort,
                Runtime::Containerd,
            ),
            // CRI-O's own sub-cgroup of the container.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope/container"
                ),
                Qos::Burstable,
                Runtime::CriO,
            ),
        ];
        for (path, qos, rt) in cases {
            assert_eq!(
                parse_path(&path),
                Some(owner(Some(UID), Some(qos), Some(ID), Some(rt))),
                "{path}"
            );
        }
    }

    #[test]
    fn cgroupfs_driver_layouts() {
        let cases = [
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                Qos::Burstable,
                Runtime::Unknown,
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                Qos::BestEffort,
                Runtime::Unknown,
            ),
            (
                format!("/kubepods/pod{UID}/crio-{ID}"),
                Qos::Guaranteed,
                Runtime::CriO,
            ),
            // k3s in Docker (k3d), and a reader in another cgroup namespace.
            (
                format!(
                    "/docker/{}/kubepods/burstable/pod{UID}/{ID}",
                    "b".repeat(64)
                ),
                Qos::Burstable,
                Runtime::Unknown,
            ),
            (
                format!("/../../kubepods/burstable/pod{UID}/{ID}"),
                Qos::Burstable,
                Runtime::Unknown,
            ),
        ];
        for (path, qos, rt) in cases {
            assert_eq!(
                parse_path(&path),
                Some(owner(Some(UID), Some(qos), Some(ID), Some(rt))),
                "{path}"
            );
        }
    }

    #[test]
    fn conmon_static_pods_and_pod_level() {
        let u = UID.replace('-', "_");
        let conmon = parse_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{ID}.scope"
        ))
        .expect("conmon");
        assert!(conmon.monitor);
        assert_eq!(conmon.container_id.as_deref(), Some(ID));
        // A static pod's cgroup carries the config hash, not a UUID.
        let hash = "7f9c2ba4e88f827d616045507605853e";
        assert_eq!(
            parse_path(&format!(
                "/kubepods.slice/kubepods-pod{hash}.slice/cri-containerd-{ID}.scope"
            )),
            Some(owner(
                Some(hash),
                Some(Qos::Guaranteed),
                Some(ID),
                Some(Runtime::Containerd)
            ))
        );
        // The pod's own level: a pod, no container.
        assert_eq!(
            parse_path(&format!("/kubepods/burstable/pod{UID}")),
            Some(owner(Some(UID), Some(Qos::Burstable), None, None))
        );
    }

    #[test]
    fn containers_outside_pods_and_nothing() {
        assert_eq!(
            parse_path(&format!("/system.slice/docker-{ID}.scope")),
            Some(owner(None, None, Some(ID), Some(Runtime::Docker)))
        );
        assert_eq!(
            parse_path(&format!("/docker/{ID}")),
            Some(owner(None, None, Some(ID), Some(Runtime::Docker)))
        );
        for p in [
            "/",
            "",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            // Not under kubepods, or not a uid.
            &format!("/pod{UID}/{ID}"),
            &format!("/kubepods/burstable/pod{}/{ID}", &UID[1..]),
            &format!("/kubepods.slice/other-pod{}.slice", UID.replace('-', "_")),
            // A bare id outside Docker's parent, and a short id.
            &format!("/machine/{ID}"),
            &format!("/docker/{}", &ID[..12]),
        ] {
            assert_eq!(parse_path(p), None, "{p}");
        }
    }

    #[test]
    fn proc_cgroup_v2_first_then_v1_controllers() {
        let hybrid = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n4:memory:/kubepods/burstable/pod{UID}/{ID}\n1:name=systemd:/system.slice/containerd.service\n0::/system.slice/containerd.service\n"
        );
        let p = parse_proc_cgroup("/proc/7/cgroup", &hybrid).expect("parse");
        assert_eq!(
            p.unified.as_deref(),
            Some("/system.slice/containerd.service")
        );
        let (path, o) = p.owner().expect("owner from v1");
        assert_eq!(path, format!("/kubepods/burstable/pod{UID}/{ID}"));
        assert_eq!(o.pod_uid.as_deref(), Some(UID));
        let v2 = format!("0::/kubepods/pod{UID}/{ID}\n");
        let p = parse_proc_cgroup("/proc/8/cgroup", &v2).expect("parse");
        assert_eq!(p.owner().map(|(_, o)| o.qos), Some(Some(Qos::Guaranteed)));
        // A cgroup name may hold ':'.
        let p = parse_proc_cgroup("/proc/9/cgroup", "0::/a:b\n").expect("parse");
        assert_eq!(p.unified.as_deref(), Some("/a:b"));
        assert_eq!(p.owner(), None);
    }

    #[test]
    fn bad_proc_cgroup_names_the_file_and_line() {
        for (text, what) in [
            ("0::/\nx", "line 2: not hierarchy-ID:controllers:path"),
            ("a:pids:/", "line 1: hierarchy ID is not a number"),
            ("3:pids:relative", "line 1: path is not absolute"),
        ] {
            let e = parse_proc_cgroup("/proc/42/cgroup", text).expect_err(text);
            assert_eq!(e.to_string(), format!("/proc/42/cgroup {what}"));
        }
    }
}
