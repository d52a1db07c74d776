//! Who was hurt, end to end on the host's own cgroups: real cgroup v2
//! directories in every layout kubelet and the runtimes make (in a subtree
//! of the cgroup2 mount this test owns and removes), a real process moved
//! into each, its cgroup id as the kernel exports it (`name_to_handle_at`,
//! the id `bpf_get_current_cgroup_id` returns), and the pods served by the
//! lab's apiserver stand-in and watched with `spec.nodeName`: the
//! attribution names each process's pod (namespace, name, uid, node) and
//! container (id, name, runtime); a process in no pod is named by nothing.

mod common;

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{KillOnDrop, root_or_skip, serial, wait_for};
use drainwatch::sources::{
    cgroup::{
        Attributor, CgroupConfig, CgroupPaths, ContainerRef, PodRef, Who, cgroup2_root,
        layout::{Qos, Runtime},
    },
    kubewatch::Credentials,
    nodepods::{NodePods, watch_node_pods},
};
use serde_json::{Value, json};

const NODE: &str = "node-a";

/// The cgroups and processes a test made, removed and killed on drop, failed
/// tests included: processes first (a cgroup with a process cannot be removed).
struct Made {
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Made {
    fn dir(&mut self, root: &Path, rel: &str) -> PathBuf {
        let mut at = root.to_path_buf();
        for part in rel.split('/') {
            at.push(part);
            if !at.exists() {
                fs::create_dir(&at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
                self.dirs.push(at.clone());
            }
        }
        at
    }

    /// A `sleep` moved into cgroup `dir` (and, on a v1 hierarchy, `v1`).
    fn process_in(&mut self, dir: &Path, v1: Option<&Path>) -> u32 {
        let child = Command::new("sleep")
            .arg("300")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("sleep");
        let pid = child.id();
        self.children.push(child);
        for d in std::iter::once(dir).chain(v1) {
            fs::write(d.join("cgroup.procs"), pid.to_string())
                .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", d.display()));
        }
        pid
    }

    fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut c = self.children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in self.dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// The kernel's id of cgroup directory `dir`: `name_to_handle_at` on the
/// cgroup2 file system returns it as the 8-byte handle (how libbpf's tests
/// get the id `bpf_get_current_cgroup_id` returns).
fn kernel_cgroup_id(dir: &Path) -> u64 {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    let mut h = Handle {
        bytes: 8,
        kind: 0,
        id: 0,
    };
    let mut mount_id = 0i32;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid path, a handle buffer of the size given, an int.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            &mut h as *mut Handle,
            &mut mount_id as *mut i32,
            0,
        )
    };
    assert_eq!(r, 0, "name_to_handle_at {}", dir.display());
    assert_eq!(h.bytes, 8, "a cgroup handle is its 64-bit id");
    h.id
}

/// The cgroup2 directory `pid` is in, read from its `/proc/PID/cgroup`.
fn cgroup_dir_of(cg2: &Path, pid: u32) -> PathBuf {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("proc cgroup");
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line");
    cg2.join(path.trim_start_matches('/'))
}

fn container_id(n: u64) -> String {
    format!("{:064x}", 0xc0ff_ee00_u64 + n)
}

/// A pod as the kubelet would report it: on `node`, one running container.
fn pod(ns: &str, name: &str, node: &str, container: &str, id: &str, scheme: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": node, "containers": [{"name": container, "image": "busybox"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": container, "containerID": format!("{scheme}://{id}"), "image": "busybox",
            "imageID": "", "ready": true, "restartCount": 0}]}
    })
}

/// Creates `pods` through the stand-in's API; returns the uids it gave them.
async fn register(kubeconfig: &Path, pods: &[Value]) -> Vec<String> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(config).expect("client");
    let mut uids = Vec::new();
    for p in pods {
        let ns = p["metadata"]["namespace"].as_str().expect("namespace");
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(client.clone(), ns);
        let pod = serde_json::from_value(p.clone()).expect("pod");
        let made = api
            .create(&Default::default(), &pod)
            .await
            .expect("create pod");
        uids.push(made.metadata.uid.expect("uid"));
    }
    uids
}

/// One process to name: where it runs and who it is.
struct Case {
    what: &'static str,
    /// Its cgroup2 directory, relative to the test's subtree.
    v2: String,
    /// Its v1 `pids` directory, relative to the test's subtree there.
    v1: Option<String>,
    /// The path that names its owner, relative to the test's subtree.
    named_by: Option<String>,
    container: Option<ContainerRef>,
    pod: Option<PodRef>,
}

#[test]
fn processes_in_pod_cgroups_are_named_by_pod_and_container() {
    let _g = serial();
    if !root_or_skip("processes_in_pod_cgroups_are_named_by_pod_and_container") {
        return;
    }
    let cg2 = cgroup2_root(Path::new("/proc/mounts")).expect("cgroup2 mount");
    // The v1 case needs a v1 pids hierarchy (hybrid hosts, as this one);
    // a pure v2 host has none, and no process there can be in one.
    let v1_root = PathBuf::from("/sys/fs/cgroup/pids");
    let have_v1 = fs::read_to_string("/proc/mounts")
        .expect("mounts")
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/cgroup/pids") && l.contains(" cgroup "));
    eprintln!("cgroup2 at {}; v1 pids hierarchy: {have_v1}", cg2.display());

    // The API: the stand-in on loopback, with pods of this node and another.
    let dir = std::env::temp_dir().join(format!("dwt-attrib-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("dir");
    let listen = format!("127.0.0.1:{}", common::free_port());
    let _api = KillOnDrop(common::start_standin_here(
        &dir,
        &[
            "--name",
            "api",
            "--listen",
            &listen,
            "--san",
            "127.0.0.1",
            "--startup-delay",
            "100ms",
            "--token",
            "admin",
        ],
    ));
    let kc = dir.join("kubeconfig");
    fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{listen}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: admin\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: admin\ncurrent-context: lab\n",
            dir.join("pki/ca.crt").display()
        ),
    )
    .expect("kubeconfig");
    let ids: Vec<String> = (0..12).map(container_id).collect();
    let static_hash = "7f9c2ba4e88f827d616045507605853e";
    let mut specs = vec![
        pod("team-a", "web-0", NODE, "web", &ids[1], "containerd"),
        pod("team-b", "db-0", NODE, "db", &ids[2], "cri-o"),
        pod("team-b", "batch-0", NODE, "batch", &ids[3], "cri-o"),
        pod("team-a", "worker-0", NODE, "worker", &ids[4], "containerd"),
        pod("team-c", "kind-0", NODE, "app", &ids[5], "containerd"),
        pod("team-a", "legacy-0", NODE, "legacy", &ids[6], "docker"),
        pod(
            "kube-system",
            "kube-apiserver-node-a",
            NODE,
            "kube-apiserver",
            &ids[7],
            "containerd",
        ),
        pod(
            "team-a",
            "elsewhere-0",
            "node-b",
            "app",
            &ids[8],
            "containerd",
        ),
        pod("team-d", "v1-0", NODE, "old", &ids[9], "containerd"),
    ];
    specs[6]["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": static_hash});
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let uids = rt.block_on(register(&kc, &specs));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let pods = NodePods::new(256, Duration::from_secs(60));
    let watcher = rt.spawn(watch_node_pods(
        Credentials::File(kc.clone()),
        NODE.to_string(),
        pods.clone(),
        stop_rx,
    ));
    // Every pod of this node, and none of node-b's.
    let mut ours: Vec<&str> = uids.iter().map(String::as_str).collect();
    ours[6] = static_hash;
    ours.remove(7);
    wait_for(Duration::from_secs(10), "the pods of node-a", || {
        if ours.iter().all(|u| pods.get(u).is_some()) {
            Ok(())
        } else {
            Err(format!("{} pods kept", pods.len()))
        }
    });
    assert_eq!(pods.len(), 8, "node-b's pod is not kept");

    // The cgroups, each layout with a process in it.
    let sub = format!("dwtest-{}", std::process::id());
    let mut made = Made {
        dirs: Vec::new(),
        children: Vec::new(),
    };
    made.dir(&cg2, &sub);
    let us = |u: &str| u.replace('-', "_");
    let node_ctr = "d".repeat(64);
    let pod_ref = |uid: &str, ns: &str, name: &str, qos: Qos| PodRef {
        uid: uid.to_string(),
        qos: Some(qos),
        namespace: Some(ns.to_string()),
        name: Some(name.to_string()),
        node: Some(NODE.to_string()),
    };
    let ctr = |i: usize, name: Option<&str>, runtime: Runtime, monitor: bool| ContainerRef {
        id: ids[i].clone(),
        runtime,
        name: name.map(str::to_string),
        monitor,
    };
    let mut cases = vec![
        Case {
            what: "containerd, systemd driver, burstable",
            v2: format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
                us(&uids[0]),
                ids[1]
            ),
            v1: None,
            named_by: None,
            container: Some(ctr(1, Some("web"), Runtime::Containerd, false)),
            pod: Some(pod_ref(&uids[0], "team-a", "web-0", Qos::Burstable)),
        },
        Case {
            what: "CRI-O, systemd driver, guaranteed",
            v2: format!(
                "kubepods.slice/kubepods-pod{}.slice/crio-{}.scope",
                us(&uids[1]),
                ids[2]
            ),
            v1: None,
            named_by: None,
            container: Some(ctr(2, Some("db"), Runtime::CriO, false)),
            pod: Some(pod_ref(&uids[1], "team-b", "db-0", Qos::Guaranteed)),
        },
        Case {
            what: "CRI-O's conmon, besteffort",
            v2: format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-conmon-{}.scope",
                us(&uids[2]),
                ids[3]
            ),
            v1: None,
            named_by: None,
            container: Some(ctr(3, Some("batch"), Runtime::CriO, true)),
            pod: Some(pod_ref(&uids[2], "team-b", "batch-0", Qos::BestEffort)),
        },
        Case {
            what: "containerd, cgroupfs driver (runtime from the pod's status)",
            v2: format!("kubepods/burstable/pod{}/{}", uids[3], ids[4]),
            v1: None,
            named_by: None,
            container: Some(ctr(4, Some("worker"), Runtime::Containerd, false)),
            pod: Some(pod_ref(&uids[3], "team-a", "worker-0", Qos::Burstable)),
        },
        Case {
            what: "kind: a node in a Docker container",
            v2: format!(
                "system.slice/docker-{node_ctr}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
                us(&uids[4]),
                ids[5]
            ),
            v1: None,
            named_by: None,
            container: Some(ctr(5, Some("app"), Runtime::Containerd, false)),
            pod: Some(pod_ref(&uids[4], "team-c", "kind-0", Qos::BestEffort)),
        },
        Case {
            what: "Docker, systemd driver",
            v2: format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/docker-{}.scope",
                us(&uids[5]),
                ids[6]
            ),
            v1: None,
            named_by: None,
            container: Some(ctr(6, Some("legacy"), Runtime::Docker, false)),
            pod: Some(pod_ref(&uids[5], "team-a", "legacy-0", Qos::Burstable)),
        },
        Case {
            what: "a static pod, by its mirror's annotation",
            v2: format!("kubepods/pod{static_hash}/{}", ids[7]),
            v1: None,
            named_by: None,
            container: Some(ctr(7, Some("kube-apiserver"), Runtime::Containerd, false)),
            pod: Some(pod_ref(
                static_hash,
                "kube-system",
                "kube-apiserver-node-a",
                Qos::Guaranteed,
            )),
        },
        Case {
            what: "another node's pod: the uid only",
            v2: format!("kubepods/besteffort/pod{}/{}", uids[7], ids[8]),
            v1: None,
            named_by: None,
            container: Some(ctr(8, None, Runtime::Unknown, false)),
            pod: Some(PodRef {
                uid: uids[7].clone(),
                qos: Some(Qos::BestEffort),
                namespace: None,
                name: None,
                node: None,
            }),
        },
        Case {
            what: "Docker outside Kubernetes",
            v2: format!("system.slice/docker-{}.scope", ids[10]),
            v1: None,
            named_by: None,
            container: Some(ctr(10, None, Runtime::Docker, false)),
            pod: None,
        },
        Case {
            what: "a process in no pod",
            v2: "user.slice/session-1.scope".to_string(),
            v1: None,
            named_by: None,
            container: None,
            pod: None,
        },
    ];
    if have_v1 {
        cases.push(Case {
            what: "cgroup v1 (pids), the unified path naming nothing",
            v2: "system.slice/containerd.service".to_string(),
            v1: Some(format!("kubepods/burstable/pod{}/{}", uids[8], ids[9])),
            named_by: Some(format!(
                "/{sub}/kubepods/burstable/pod{}/{}",
                uids[8], ids[9]
            )),
            container: Some(ctr(9, Some("old"), Runtime::Containerd, false)),
            pod: Some(pod_ref(&uids[8], "team-d", "v1-0", Qos::Burstable)),
        });
    }
    let mut procs = Vec::new();
    for c in &cases {
        let d2 = made.dir(&cg2, &format!("{sub}/{}", c.v2));
        let d1 =
            c.v1.as_ref()
                .map(|p| made.dir(&v1_root, &format!("{sub}/{p}")));
        let pid = made.process_in(&d2, d1.as_deref());
        let at = cgroup_dir_of(&cg2, pid);
        assert_eq!(at, d2, "{}: /proc/{pid}/cgroup", c.what);
        let id = kernel_cgroup_id(&at);
        assert_eq!(
            id,
            fs::metadata(&at).expect("stat").ino(),
            "the cgroup id is the directory's inode number"
        );
        procs.push((pid, id));
    }

    let config = CgroupConfig::default();
    let mut by_pid = Attributor {
        paths: CgroupPaths::new(config.clone()).expect("resolver"),
        pods: pods.clone(),
    };
    let now = Instant::now();
    let expect = |c: &Case, pid: u32, id: u64| Who {
        pid,
        cgroup_id: id,
        cgroup_path: Some(
            c.named_by
                .clone()
                .unwrap_or_else(|| format!("/{sub}/{}", c.v2)),
        ),
        container: c.container.clone(),
        pod: c.pod.clone(),
    };
    for (c, &(pid, id)) in cases.iter().zip(&procs) {
        assert_eq!(by_pid.who(pid, id, now), expect(c, pid, id), "{}", c.what);
    }
    let s = by_pid.paths.stats();
    assert_eq!(
        (s.from_pid, s.walks, s.gone),
        (cases.len() as u64, 0, 0),
        "every path from the process's own /proc/PID/cgroup, no walk"
    );

    // Without the pid (a socket's cgroup): one walk of the tree names all.
    // A busy node's worth of pod cgroups beside them (250 pods of 3
    // containers; kubelet's default is at most 110 pods) for the walk's cost.
    const BULK_PODS: usize = 250;
    for p in 0..BULK_PODS {
        let pod = format!(
            "{sub}/bulk/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{:08x}_0000_4000_8000_{p:012x}.slice",
            p
        );
        for c in 0..3 {
            made.dir(
                &cg2,
                &format!(
                    "{pod}/cri-containerd-{}.scope",
                    container_id((p * 3 + c) as u64 + 100)
                ),
            );
        }
    }
    let mut by_walk = CgroupPaths::new(config).expect("resolver");
    let mut ids_in_order = cases.iter().zip(&procs);
    let started = Instant::now();
    let (first, &(_, first_id)) = ids_in_order.next().expect("a case");
    assert_eq!(
        by_walk.path_of(first_id, None, now),
        Some(format!("/{sub}/{}", first.v2)),
        "{}",
        first.what
    );
    let walk = started.elapsed();
    for (c, &(_, id)) in ids_in_order {
        assert_eq!(
            by_walk.path_of(id, None, now),
            Some(format!("/{sub}/{}", c.v2)),
            "{}",
            c.what
        );
    }
    let lookups = started.elapsed() - walk;
    eprintln!(
        "one walk of {} ({} cgroups): {walk:?}; {} cached lookups after it: {lookups:?}",
        cg2.display(),
        by_walk.len(),
        cases.len() - 1,
    );
    assert!(by_walk.len() > BULK_PODS * 4, "{} cgroups", by_walk.len());
    let s = by_walk.stats();
    assert_eq!(
        (s.walks, s.hits, s.truncated),
        (1, cases.len() as u64 - 1, 0)
    );

    // A cgroup removed before the lookup: nothing to name, counted.
    let short = made.dir(
        &cg2,
        &format!("{sub}/kubepods/burstable/pod{}/{}", uids[3], ids[11]),
    );
    let pid = made.process_in(&short, None);
    let id = kernel_cgroup_id(&short);
    made.kill(pid);
    fs::remove_dir(&short).expect("rmdir");
    let later = now + config_rescan();
    let who = by_pid.who(pid, id, later);
    assert_eq!(
        who,
        Who {
            pid,
            cgroup_id: id,
            cgroup_path: None,
            container: None,
            pod: None
        }
    );
    assert_eq!(by_pid.paths.stats().gone, 1);

    let _ = stop_tx.send(true);
    rt.block_on(watcher)
        .expect("watcher task")
        .expect("watcher");
    drop(made);
    assert!(!cg2.join(&sub).exists(), "test cgroups removed");
    let _ = fs::remove_dir_all(&dir);
}

fn config_rescan() -> Duration {
    CgroupConfig::default().min_rescan
}

/// End to end through the kernel: client processes in a client namespace
/// connect to a watched endpoint, two from a pod's container cgroup
/// (containerd, systemd driver; one of them before drainwatch started) and
/// one from outside any pod; the server resets all three (SO_LINGER 0).
/// drainwatch, in the client namespace in endpoint mode with this node's
/// pods from the stand-in, names the pod (namespace, name, uid, container)
/// on every event of the pod's connections, the wire's RSTs included, and
/// only the program on the third's; the connect attempt carries the cgroup
/// id the kernel gives the directory; the counters count by namespace.
#[test]
fn a_reset_connection_names_the_pod_that_opened_it() {
    use std::io::{BufRead as _, BufReader, Write as _};
    let _g = serial();
    if !root_or_skip("a_reset_connection_names_the_pod_that_opened_it") {
        return;
    }
    let cg2 = cgroup2_root(Path::new("/proc/mounts")).expect("cgroup2 mount");
    let pair = common::Pair::new();
    let dir = std::env::temp_dir().join(format!("dwt-owner-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("dir");
    let _api = common::graceful_standin(&pair, &dir, "1s", "60s");
    let kc = common::standin_kubeconfig(&pair, &dir, "admin");
    let id = container_id(42);
    // Registered from the client namespace, where the stand-in is reachable.
    let spec = pod("team-a", "watcher-0", NODE, "watcher", &id, "containerd");
    let kc2 = kc.clone();
    let uid = pair.in_client(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(register(&kc2, &[spec]))
    })[0]
        .clone();

    // The application: a listener in the server namespace that resets each
    // connection when told.
    let port = 7443u16;
    let endpoint = format!("{}:{port}", pair.server_v4);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
    let server_ns = pair.server.clone();
    let listen_at = endpoint.clone();
    let server = std::thread::spawn(move || {
        common::Pair::run_in(&server_ns, move || {
            let l = std::net::TcpListener::bind(&listen_at).expect("bind");
            up_tx.send(()).expect("up");
            let mut held = Vec::new();
            for _ in 0..3 {
                held.push(l.accept().expect("accept").0);
            }
            go_rx.recv().expect("go");
            for s in held {
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .expect("SO_LINGER 0");
            }
        })
    });
    up_rx.recv().expect("listener up");

    // The pod's container cgroup, and clients stopped at `read` until
    // moved: every connection is made from where the test put them.
    let sub = format!("dwtest-owner-{}", std::process::id());
    let mut made = Made {
        dirs: Vec::new(),
        children: Vec::new(),
    };
    made.dir(&cg2, &sub);
    let ctr_dir = made.dir(
        &cg2,
        &format!(
            "{sub}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        ),
    );
    let script = format!(
        "read go; exec 3<>/dev/tcp/{}/{port}; echo connected; read done",
        pair.server_v4
    );
    let client = |made: &mut Made, cgroup: Option<&Path>| -> u32 {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &pair.client, "bash", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("bash");
        let pid = child.id();
        if let Some(dir) = cgroup {
            fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("move into the pod");
        }
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("go");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "connected");
        made.children.push(child);
        pid
    };
    // Connected before drainwatch starts: no connect attempt to learn from.
    let early = client(&mut made, Some(&ctr_dir));

    let d = common::Daemon::start_in(
        Some(&pair.client),
        &[
            "--netns",
            "self",
            "--apiserver-endpoint",
            &endpoint,
            "--kubeconfig",
            kc.to_str().expect("utf8"),
            "--node-name",
            NODE,
            "--no-kube-events",
        ],
    );
    assert!(
        d.stderr()
            .contains("connection owners: 1 connections open before the start"),
        "the early connection found at start: {}",
        d.stderr()
    );
    wait_for(
        Duration::from_secs(20),
        "the pod watcher lists the pod",
        || match d.metric("drainwatch_node_pods") {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("drainwatch_node_pods {n}")),
        },
    );
    let in_pod = client(&mut made, Some(&ctr_dir));
    let on_host = client(&mut made, None);
    go_tx.send(()).expect("reset");
    server.join().expect("server");
    let server_ip = pair.server_v4.as_str();
    let evs = d.wait_for(&[server_ip], "three resets seen", |evs| {
        common::of_kind(evs, "reset_received").len() == 3
            && common::of_kind(evs, "closed").len() == 3
            && common::of_kind(evs, "wire_reset").len() == 3
    });
    let metrics = d.metrics();
    let stderr = d.stderr();
    assert!(d.stop().success(), "drainwatch exit; stderr:\n{stderr}");

    let attempts = common::of_kind(&evs, "connect_attempt");
    assert_eq!(attempts.len(), 2, "{evs:#?}");
    let pod_attempt = attempts
        .iter()
        .find(|e| e["pid"].as_u64() == Some(u64::from(in_pod)))
        .unwrap_or_else(|| panic!("no attempt by pid {in_pod}: {evs:#?}"));
    assert_eq!(
        pod_attempt["cgroup_id"].as_u64(),
        Some(kernel_cgroup_id(&ctr_dir)),
        "the kernel's cgroup id of the container's directory: {pod_attempt:#}"
    );
    // Every event of the connections, wire RSTs included, names its owner.
    let mut by_pid: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for e in evs.iter().filter(|e| e["kind"] != "keepalive") {
        let o = &e["owner"];
        assert!(o.is_object(), "event without an owner: {e:#}");
        let pid = o["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {e:#}"));
        if pid == u64::from(on_host) {
            assert!(o.get("pod_uid").is_none(), "{e:#}");
            assert!(o.get("pod").is_none(), "{e:#}");
        } else {
            assert!([early, in_pod].map(u64::from).contains(&pid), "{e:#}");
            assert_eq!(o["namespace"], "team-a", "{e:#}");
            assert_eq!(o["pod"], "watcher-0", "{e:#}");
            assert_eq!(o["pod_uid"].as_str(), Some(uid.as_str()), "{e:#}");
            assert_eq!(o["container"], "watcher", "{e:#}");
            assert_eq!(o["container_id"].as_str(), Some(id.as_str()), "{e:#}");
            assert_eq!(o["node"], NODE, "{e:#}");
        }
        assert_eq!(o["comm"], "bash", "{e:#}");
        by_pid
            .entry(pid)
            .or_default()
            .push(e["kind"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(by_pid.len(), 3, "{by_pid:?}");
    for (pid, kinds) in &by_pid {
        let seen_from_start: &[&str] = if *pid == u64::from(early) {
            &[]
        } else {
            &["connect_attempt", "established"]
        };
        for k in ["reset_received", "wire_reset", "closed"]
            .iter()
            .chain(seen_from_start)
        {
            assert_eq!(
                kinds.iter().filter(|x| x == k).count(),
                1,
                "pid {pid}: {k} once in {kinds:?}"
            );
        }
    }
    let m = |s: &str| common::parse_metric(&metrics, s);
    assert_eq!(m("drainwatch_connection_owners_total{result=\"pod\"}"), 1.0);
    assert_eq!(
        m("drainwatch_connection_owners_total{result=\"process\"}"),
        1.0
    );
    assert_eq!(
        m(
            "drainwatch_client_connection_events_total{event=\"reset_received\",namespace=\"team-a\"}"
        ),
        2.0
    );
    assert_eq!(
        m("drainwatch_client_connection_events_total{event=\"reset_received\",namespace=\"host\"}"),
        1.0
    );
    drop(made);
    assert!(!cg2.join(&sub).exists(), "test cgroups removed");
    let _ = fs::remove_dir_all(&dir);
}
