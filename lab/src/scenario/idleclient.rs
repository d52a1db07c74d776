//! `azure-idle-reset-client`: Azure Standard LB's TCP reset on idle seen from a worker
//! node. The router between the node and the apiserver is the idle-reset box
//! ([`crate::idlereset`]): a flow idle for 4 min (4 s at the default scale) gets an RST at
//! both ends, any packet (keepalive probes included) refreshing the timer. On the node,
//! "pods" are cgroup v2 directories in the containerd/systemd layout, each registered in
//! the apiserver stand-in with the node's name, and each client process is moved into its
//! container's cgroup before it can connect:
//!
//! - `default/py-watcher`: python3-kubernetes watching a configmap, no TCP keepalive (the
//!   client's default): its watch is reset ("Connection reset by peer");
//! - `default/go-watcher`: the same watcher with client-go's TCP keepalive (30 s, 1 s at
//!   this scale, the kernel's unit being the second): it survives and sees the update;
//! - `curl --no-keepalive --http0.9` to the timer server's 600 s port, outside any pod: reset.
//!
//! The updater runs on the apiserver's host (its short connections never cross the box),
//! so the node's only long-lived flows are the three above.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::apiserver::ShutdownMode;
use crate::clock::now_ns;
use crate::procs::{self, Proc};
use crate::record;
use crate::scenario::{
    PY_CLIENT, PYTHON, Run, RunOpts, Scenario, ScenarioError, ShellClient, TOKEN, Timing, Truth,
    io_err, write_kubeconfig,
};
use crate::topo::TopoError;

/// The worker node's name (the pods' `spec.nodeName`).
pub const NODE: &str = "worker-1";

/// client-go's TCP keepalive (its dialer's 30 s), real seconds.
const GO_KEEPALIVE_S: f64 = 30.0;

/// The timer server's slow period (real seconds): far longer than the idle timeout.
const SLOW_PERIOD_S: f64 = 600.0;

/// How long the clients run (real seconds): one idle update period and some.
const TOTAL_S: f64 = 840.0;

/// One pod on the node: its API object's names and its container's cgroup.
#[derive(Debug, Clone)]
struct Pod {
    name: &'static str,
    container: &'static str,
    uid: String,
    id: String,
    /// The container's cgroup as `/proc/PID/cgroup` shows it (from the cgroup2 root).
    cgroup: String,
    /// Its directory.
    dir: PathBuf,
    keepalive: Option<Duration>,
}

/// The cgroup2 mount point, from `/proc/mounts` (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_root(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fs) = (f.next()?, f.next()?, f.next()?);
        (fs == "cgroup2").then(|| PathBuf::from(at))
    })
}

/// The cgroup subtree this run owns: every directory made, and on drop (any exit
/// path) the processes still in them killed and the directories removed, deepest first.
struct Cgroups {
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    /// Makes `root/rel`, each missing level recorded for removal.
    fn make(&mut self, root: &Path, rel: &str) -> Result<PathBuf, ScenarioError> {
        let mut at = root.to_path_buf();
        for part in rel.split('/') {
            at.push(part);
            if !at.exists() {
                std::fs::create_dir(&at).map_err(io_err(&at))?;
                self.dirs.push(at.clone());
            }
        }
        Ok(at)
    }

    /// Kills what is left in the directories and removes them; returns what failed.
    fn remove(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        while let Some(d) = self.dirs.pop() {
            let procs = d.join("cgroup.procs");
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let pids = std::fs::read_to_string(&procs).unwrap_or_default();
                if pids.trim().is_empty() {
                    break;
                }
                for p in pids.lines().filter_map(|p| p.trim().parse::<u32>().ok()) {
                    crate::cmd::kill(p, libc::SIGKILL);
                }
                if std::time::Instant::now() > deadline {
                    break;
                }
                // The kernel takes a killed task out of its cgroup as it exits.
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Err(e) = std::fs::remove_dir(&d) {
                failed.push(format!("{}: {e}", d.display()));
            }
        }
        failed
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for f in self.remove() {
            tracing::warn!("cgroup left behind: {f}");
        }
    }
}

/// Removes the pod cgroup subtrees (`/dwlab-*` under the cgroup2 mount) that a killed
/// run left behind, killing what still runs in them; returns the subtrees removed. Like
/// `topo::clean`, it takes every lab run's, a running one's too.
pub fn clean_cgroups() -> Result<Vec<PathBuf>, ScenarioError> {
    let mounts =
        std::fs::read_to_string("/proc/mounts").map_err(io_err(Path::new("/proc/mounts")))?;
    let Some(cg2) = cgroup2_root(&mounts) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for e in std::fs::read_dir(&cg2).map_err(io_err(&cg2))?.flatten() {
        let top = e.path();
        let ours = e.file_name().to_string_lossy().starts_with("dwlab-");
        if !ours || !top.is_dir() {
            continue;
        }
        // Parents before children, so removing from the end goes deepest first; the
        // layout is 5 levels deep, the walk bounded at 8.
        let mut dirs = vec![top.clone()];
        let mut level = vec![top.clone()];
        for _ in 0..8 {
            let next: Vec<PathBuf> = level
                .iter()
                .filter_map(|d| std::fs::read_dir(d).ok())
                .flat_map(|r| r.flatten().map(|e| e.path()).filter(|p| p.is_dir()))
                .collect();
            if next.is_empty() {
                break;
            }
            dirs.extend(next.iter().cloned());
            level = next;
        }
        let failed = Cgroups { dirs }.remove();
        if !failed.is_empty() {
            return Err(ScenarioError::Stuck(format!(
                "cgroups not removed: {}",
                failed.join("; ")
            )));
        }
        removed.push(top);
    }
    Ok(removed)
}

/// A 64-hex container id, unique per run and pod.
fn container_id(salt: u64) -> String {
    let mut x = now_ns() ^ salt.rotate_left(32) ^ u64::from(std::process::id());
    let mut out = String::new();
    for _ in 0..4 {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.push_str(&format!("{:016x}", z ^ (z >> 31)));
    }
    out
}

/// The pod object the kubelet would report: on the node, host network, one running
/// container with its containerd id.
fn pod_object(name: &str, container: &str, id: &str, node_ip: Ipv4Addr) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"nodeName": NODE, "hostNetwork": true,
                 "containers": [{"name": container, "image": "drainwatch-lab/kube-client"}]},
        "status": {"phase": "Running", "qosClass": "BestEffort",
                   "hostIP": node_ip.to_string(), "podIP": node_ip.to_string(),
                   "containerStatuses": [{"name": container, "containerID": format!("containerd://{id}"),
                       "image": "drainwatch-lab/kube-client", "imageID": "", "ready": true,
                       "restartCount": 0, "state": {"running": {}}}]}
    })
}

/// The state letter of `pid` (`/proc/PID/stat`'s third field), if it exists.
fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].trim_start().chars().next()
}

/// The local address of `pid`'s established TCP connection to `remote`, from its
/// socket fds and its network namespace's `/proc/PID/net/tcp`.
fn established_to(pid: u32, remote: SocketAddrV4) -> Option<SocketAddrV4> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let addr = |s: &str| -> Option<SocketAddrV4> {
        let (ip, port) = s.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        Some(SocketAddrV4::new(
            Ipv4Addr::from(ip.to_ne_bytes()),
            u16::from_str_radix(port, 16).ok()?,
        ))
    };
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (local, rem, st, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
        (*st == "01" && addr(rem)? == remote && inodes.iter().any(|i| i == inode))
            .then(|| addr(local))
            .flatten()
    })
}

/// Polls `check` every 20 ms until it gives a value; Stuck after `within`.
async fn wait_until<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, ScenarioError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ScenarioError::Stuck(format!(
                "{what} within {:.0}s",
                within.as_secs_f64()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Run {
    /// POSTs `pod` to the stand-in from the router's namespace (the kubelet's part; its
    /// connection stays off the node) and returns the uid the API gave it.
    fn register_pod(&self, from_ns: &str, api: &str, pod: &Value) -> Result<String, ScenarioError> {
        let ca = self.out.join("pki/ca.crt");
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let body = pod.to_string();
        let auth = format!("Authorization: Bearer {TOKEN}");
        let url = format!("https://{api}/api/v1/namespaces/{ns}/pods");
        let out = crate::cmd::run_in(
            from_ns,
            "curl",
            &[
                "-sS",
                "--fail-with-body",
                "--max-time",
                "10",
                "--cacert",
                &ca.display().to_string(),
                "-H",
                &auth,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
                &url,
            ],
        )
        .map_err(TopoError::from)?;
        let made: Value = serde_json::from_str(&out)?;
        made["metadata"]["uid"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ScenarioError::Stuck(format!("POST {url}: no uid in {out}")))
    }

    /// Starts `prog args` on the node inside `pod`'s container cgroup: the process
    /// stops itself first thing (a shell's `kill -STOP $$`, before the exec), is moved
    /// into the cgroup while stopped, and only then continues, so it makes no
    /// connection from outside the pod.
    async fn spawn_in_pod(
        &mut self,
        node_ns: &str,
        pod: &Pod,
        prog: &Path,
        args: &[String],
    ) -> Result<Proc, ScenarioError> {
        let mut a: Vec<String> = vec![
            "-c".into(),
            "kill -STOP $$; exec \"$@\"".into(),
            "sh".into(),
            prog.display().to_string(),
        ];
        a.extend_from_slice(args);
        let p = procs::spawn(pod.name, node_ns, Path::new("sh"), &a)?;
        self.lab.track_pid(p.pid);
        let pid = p.pid;
        wait_until(
            &format!("{}: pid {pid} did not stop itself", pod.name),
            Duration::from_secs(10),
            || (proc_state(pid)? == 'T').then_some(()),
        )
        .await?;
        let procs_file = pod.dir.join("cgroup.procs");
        std::fs::write(&procs_file, pid.to_string()).map_err(io_err(&procs_file))?;
        let now_in = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !now_in
            .lines()
            .any(|l| l.strip_prefix("0::") == Some(pod.cgroup.as_str()))
        {
            return Err(ScenarioError::Stuck(format!(
                "{}: pid {pid} not in {} after the move: {now_in}",
                pod.name, pod.cgroup
            )));
        }
        crate::cmd::kill(pid, libc::SIGCONT);
        self.note(
            pod.name,
            pid,
            "started_in_pod",
            json!({"cgroup": pod.cgroup, "uid": pod.uid, "container_id": pod.id}),
        );
        Ok(p)
    }
}

/// What one watcher ended with, from its own records and the box's: `reset` when its
/// watch failed within a second after the box reset its flow (python3-kubernetes over
/// TLS reads the RST as an end of stream: "Connection broken: InvalidChunkLength(got
/// length b'', 0 bytes read)"), `error` for any other failure, `survived` when it saw the
/// update made after the idle timeout, `stale` when it saw neither.
fn watcher_result(recs: &[Value], who: &str, box_reset_ns: Option<u64>) -> Value {
    let mine: Vec<&Value> = recs.iter().filter(|r| r["who"] == who).collect();
    let err = mine.iter().find(|r| r["event"] == "watch_error");
    let last_event_ns = mine
        .iter()
        .filter(|r| r["event"] == "event")
        .filter_map(|r| r["t_ns"].as_u64())
        .max();
    let saw_update = mine
        .iter()
        .any(|r| r["event"] == "event" && r["detail"]["n"] == "1");
    match err {
        Some(e) => {
            let text = e["detail"]["error"].as_str().unwrap_or_default();
            let at = e["t_ns"].as_u64().unwrap_or_default();
            let by_box = box_reset_ns.is_some_and(|b| at >= b && at - b < 1_000_000_000);
            json!({"outcome": if by_box { "reset" } else { "error" }, "error": text, "t_ns": at,
                   "box_reset_ns": box_reset_ns, "last_event_ns": last_event_ns,
                   "saw_update_after_idle": saw_update})
        }
        None => json!({"outcome": if saw_update { "survived" } else { "stale" },
                       "box_reset_ns": box_reset_ns, "last_event_ns": last_event_ns,
                       "saw_update_after_idle": saw_update}),
    }
}

/// The scenario's hosts: their addresses and network namespaces.
struct Net {
    client: Ipv4Addr,
    slb_c: Ipv4Addr,
    slb_s: Ipv4Addr,
    server: Ipv4Addr,
    client_ns: String,
    slb_ns: String,
    server_ns: String,
}

/// The scenario's durations at this run's scale.
struct Spans {
    idle: Duration,
    total: Duration,
    slow: Duration,
    keepalive: Duration,
}

impl Spans {
    fn new(run: &Run, t: &Timing) -> Self {
        Spans {
            idle: run.s(t.idle_timeout),
            total: run.s(TOTAL_S),
            slow: run.s(SLOW_PERIOD_S),
            // TCP_KEEPIDLE and TCP_KEEPINTVL are whole seconds: 1 s is the shortest.
            keepalive: run.s(GO_KEEPALIVE_S).max(Duration::from_secs(1)),
        }
    }
}

/// The node's pods and the cgroup subtree this run made for them.
struct NodePods {
    /// The cgroup2 mount point.
    cg2: PathBuf,
    /// `dwlab-<lab id>`, directly under `cg2`.
    subtree: String,
    pods: Vec<Pod>,
    cgroups: Cgroups,
}

/// The clients started on the node and the updater: each one's process, and each
/// watcher's local address of its watch connection.
#[derive(Default)]
struct Clients {
    running: Vec<(String, Proc)>,
    locals: Vec<(String, SocketAddrV4)>,
}

impl Clients {
    fn pid_of(&self, name: &str) -> Option<u32> {
        self.running
            .iter()
            .find(|(m, _)| m == name)
            .map(|(_, p)| p.pid)
    }

    fn local_of(&self, name: &str) -> Option<String> {
        self.locals
            .iter()
            .find(|(m, _)| m == name)
            .map(|(_, a)| a.to_string())
    }
}

/// The lab's python kube client script, written into the run's directory, and the
/// arguments every run of it shares.
struct PyClient {
    script: PathBuf,
    kubeconfig: PathBuf,
    out_dir: PathBuf,
    total: Duration,
}

impl PyClient {
    fn write(run: &Run, kubeconfig: &Path, total: Duration) -> Result<Self, ScenarioError> {
        let script = run.out.join("kube_client.py");
        std::fs::write(&script, PY_CLIENT).map_err(io_err(&script))?;
        Ok(PyClient {
            script,
            kubeconfig: kubeconfig.to_path_buf(),
            out_dir: run.out.clone(),
            total,
        })
    }

    /// The script's arguments for one client `name` in `role`, then `extra`.
    fn args(&self, role: &str, name: &str, extra: &[String]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            self.script.display().to_string(),
            "--role".into(),
            role.into(),
            "--name".into(),
            name.into(),
            "--kubeconfig".into(),
            self.kubeconfig.display().to_string(),
            "--out".into(),
            self.out_dir
                .join(format!("watch-{name}.jsonl"))
                .display()
                .to_string(),
            "--duration".into(),
            format!("{:.3}", self.total.as_secs_f64()),
        ];
        v.extend_from_slice(extra);
        v
    }
}

/// Client -- slb (the idle-reset box) -- server (stand-in :6443, timer :8600).
pub(super) async fn azure_idle_reset_client(
    opts: &RunOpts,
    scale: f64,
) -> Result<Truth, ScenarioError> {
    let mut t = Timing::openshift();
    opts.overrides.apply(&mut t);
    let mut run = Run::new(opts, scale, t)?;
    let net = idle_reset_topology(&mut run)?;
    let spans = Spans::new(&run, &t);

    // The box first: it must see every flow from its first packet on.
    let box_out = start_idle_reset_box(&mut run, &net.slb_ns, &spans).await?;

    // The apiserver (behind the box) and the pods the node runs, registered as the
    // kubelet would; the observer gets their ids before any client starts.
    let (api, kubeconfig) = start_node_apiserver(&mut run, net.server).await?;
    let mut node = register_node_pods(&run, &net, &api, spans.keepalive)?;
    set_topology_params(&mut run, &net, &spans, &api, &kubeconfig, &node);
    run.offer_observer().await?;
    if opts.capture {
        run.capture("slb", "any", "slb.pcap").await?;
    }

    let mut ts = start_timer_server(&mut run, &net.server_ns, &spans).await?;
    let py = PyClient::write(&run, &kubeconfig, spans.total)?;
    let api_addr = SocketAddrV4::new(net.server, 6443);
    let mut clients = start_pod_watchers(&mut run, &node.pods, &net, &py, api_addr).await?;
    start_non_pod_clients(&mut run, &mut clients, &net, &py, &spans)?;
    wait_for_clients(&mut clients.running, spans.total).await;
    ts.stop(Duration::from_secs(2)).await;

    write_client_results(&run, &node.pods, &clients, &box_out, api_addr)?;
    let left = node.cgroups.remove();
    if !left.is_empty() {
        return Err(ScenarioError::Stuck(format!(
            "cgroups not removed: {}",
            left.join("; ")
        )));
    }
    run.finish(Scenario::AzureIdleResetClient).await
}

/// The three hosts, two links through the router `slb`, which forwards.
fn idle_reset_topology(run: &mut Run) -> Result<Net, ScenarioError> {
    let client = Ipv4Addr::new(198, 18, 2, 10);
    let slb_c = Ipv4Addr::new(198, 18, 2, 1);
    let slb_s = Ipv4Addr::new(198, 18, 3, 1);
    let server = Ipv4Addr::new(198, 18, 3, 10);
    for h in ["client", "slb", "server"] {
        run.lab.add_host(h)?;
    }
    run.lab
        .link(("client", "eth0", client), ("slb", "eth0", slb_c), 24)?;
    run.lab
        .link(("slb", "eth1", slb_s), ("server", "eth0", server), 24)?;
    run.lab.route("client", "198.18.3.0/24", slb_c)?;
    run.lab.route("server", "198.18.2.0/24", slb_s)?;
    run.lab.sysctl("slb", "net.ipv4.ip_forward", "1")?;
    Ok(Net {
        client,
        slb_c,
        slb_s,
        server,
        client_ns: run.lab.ns("client")?.to_string(),
        slb_ns: run.lab.ns("slb")?.to_string(),
        server_ns: run.lab.ns("server")?.to_string(),
    })
}

/// Starts the idle-reset box in the router's namespace; returns its record file.
async fn start_idle_reset_box(
    run: &mut Run,
    slb_ns: &str,
    spans: &Spans,
) -> Result<PathBuf, ScenarioError> {
    let box_out = run.out.join("idle-reset.jsonl");
    // Bounded by the observer's waits, the scenario and some; stopped with the other
    // clients.
    let box_args: Vec<String> = vec![
        "idle-reset-box".into(),
        "--iface".into(),
        "eth0".into(),
        "--iface".into(),
        "eth1".into(),
        "--idle".into(),
        format!("{:.3}s", spans.idle.as_secs_f64()),
        "--max-flows".into(),
        "4096".into(),
        "--duration".into(),
        format!(
            "{:.3}s",
            (spans.total + Duration::from_secs(240)).as_secs_f64()
        ),
        "--out".into(),
        box_out.display().to_string(),
    ];
    let mut b = procs::spawn("idle-reset-box", slb_ns, &run.bin, &box_args)?;
    run.lab.track_pid(b.pid);
    b.wait_for("READY", Duration::from_secs(10)).await?;
    run.note(
        "slb",
        b.pid,
        "idle_reset_box_ready",
        json!({"idle_s": spans.idle.as_secs_f64()}),
    );
    run.clients.push(b);
    Ok(box_out)
}

/// Starts the apiserver stand-in on `server` and writes the clients' kubeconfig;
/// returns the API's address and the kubeconfig's path.
async fn start_node_apiserver(
    run: &mut Run,
    server: Ipv4Addr,
) -> Result<(String, PathBuf), ScenarioError> {
    run.master_addrs.insert("server".into(), server);
    run.start_apiserver("server", ShutdownMode::Graceful)
        .await?;
    let api = format!("{server}:6443");
    let kubeconfig = run.out.join("kubeconfig");
    write_kubeconfig(
        &kubeconfig,
        &format!("https://{api}"),
        &run.out.join("pki/ca.crt"),
    )
    .map_err(io_err(&kubeconfig))?;
    Ok((api, kubeconfig))
}

/// Registers the node's two pods with the API and makes each one's container cgroup
/// (the containerd/systemd layout) under this run's subtree.
fn register_node_pods(
    run: &Run,
    net: &Net,
    api: &str,
    keepalive: Duration,
) -> Result<NodePods, ScenarioError> {
    let mounts =
        std::fs::read_to_string("/proc/mounts").map_err(io_err(Path::new("/proc/mounts")))?;
    let cg2 = cgroup2_root(&mounts)
        .ok_or_else(|| ScenarioError::Stuck("no cgroup2 mount in /proc/mounts".into()))?;
    let subtree = format!("dwlab-{}", run.lab.id());
    let mut cgroups = Cgroups { dirs: Vec::new() };
    cgroups.make(&cg2, &subtree)?;
    let mut pods = Vec::new();
    for (i, (name, container, ka)) in [
        ("py-watcher", "watcher", None),
        ("go-watcher", "watcher", Some(keepalive)),
    ]
    .into_iter()
    .enumerate()
    {
        let id = container_id(i as u64);
        let pod = pod_object(name, container, &id, net.client);
        let uid = run.register_pod(&net.slb_ns, api, &pod)?;
        let rel = format!(
            "{subtree}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
            uid.replace('-', "_")
        );
        let dir = cgroups.make(&cg2, &rel)?;
        pods.push(Pod {
            name,
            container,
            uid,
            id,
            cgroup: format!("/{rel}"),
            dir,
            keepalive: ka,
        });
    }
    Ok(NodePods {
        cg2,
        subtree,
        pods,
        cgroups,
    })
}

/// The scenario's parameters in topology.json: the node, its pods and what each
/// client is expected to see.
fn set_topology_params(
    run: &mut Run,
    net: &Net,
    spans: &Spans,
    api: &str,
    kubeconfig: &Path,
    node: &NodePods,
) {
    let pod_json: Vec<Value> = node
        .pods
        .iter()
        .map(|p| {
            json!({"namespace": "default", "name": p.name, "uid": p.uid, "container": p.container,
                   "container_id": p.id, "runtime": "containerd", "qos": "BestEffort",
                   "cgroup_path": p.cgroup, "cgroup_dir": p.dir,
                   "keepalive_s": p.keepalive.map(|k| k.as_secs_f64()),
                   "client": "python3-kubernetes watch of configmap default/lab-watch",
                   "expect_reset": p.keepalive.is_none()})
        })
        .collect();
    let (client, slb_c, slb_s, server) = (net.client, net.slb_c, net.slb_s, net.server);
    run.params["node"] = json!(NODE);
    run.params["client_host"] = json!("client");
    run.params["client_netns"] = json!(net.client_ns);
    run.params["apiserver"] = json!(api);
    run.params["kubeconfig"] = json!(kubeconfig);
    run.params["cgroup2_root"] = json!(node.cg2);
    run.params["cgroup_subtree"] = json!(format!("/{}", node.subtree));
    run.params["idle_timeout_s"] = json!(spans.idle.as_secs_f64());
    run.params["keepalive_s"] = json!(spans.keepalive.as_secs_f64());
    run.params["timer_period_s"] = json!(spans.slow.as_secs_f64());
    run.params["pods"] = json!(pod_json);
    run.params["expect_reset"] = json!(["default/py-watcher"]);
    run.params["expect_survive"] = json!(["default/go-watcher"]);
    run.params["non_pod_clients"] = json!([{"name": "curl-idle", "target": format!("{server}:8600"),
        "cmd": "curl --no-keepalive --http0.9", "expect_reset": true}]);
    run.params["addrs"] = json!({"client": client, "slb_client_side": slb_c, "slb_server_side": slb_s, "server": server});
}

/// Starts the timer server on the apiserver's host, its :8600 port sending one line
/// per slow period.
async fn start_timer_server(
    run: &mut Run,
    server_ns: &str,
    spans: &Spans,
) -> Result<Proc, ScenarioError> {
    let timer_args: Vec<String> = vec![
        "timer-server".into(),
        "--port".into(),
        format!("0.0.0.0:8600={:.3}s", spans.slow.as_secs_f64()),
        "--duration".into(),
        format!(
            "{:.3}s",
            (spans.total + Duration::from_secs(10)).as_secs_f64()
        ),
        "--out".into(),
        run.out.join("timer-server.jsonl").display().to_string(),
    ];
    let mut ts = procs::spawn("timer-server", server_ns, &run.bin, &timer_args)?;
    run.lab.track_pid(ts.pid);
    ts.wait_for("LISTENING", Duration::from_secs(10)).await?;
    Ok(ts)
}

/// Starts each pod's watcher in its container cgroup and waits for its watch
/// connection to the API.
async fn start_pod_watchers(
    run: &mut Run,
    pods: &[Pod],
    net: &Net,
    py: &PyClient,
    api_addr: SocketAddrV4,
) -> Result<Clients, ScenarioError> {
    let mut clients = Clients::default();
    for pod in pods {
        let extra = match pod.keepalive {
            Some(k) => vec!["--keepalive".to_string(), format!("{:.3}", k.as_secs_f64())],
            None => Vec::new(),
        };
        let args = py.args("watcher", pod.name, &extra);
        let p = run
            .spawn_in_pod(&net.client_ns, pod, Path::new(PYTHON), &args)
            .await?;
        let pid = p.pid;
        clients.running.push((pod.name.to_string(), p));
        // The watch's connection, for the ground truth (which flow is whose).
        let local = wait_until(
            &format!("{} opened no connection to {api_addr}", pod.name),
            Duration::from_secs(30),
            || established_to(pid, api_addr),
        )
        .await?;
        clients.locals.push((pod.name.to_string(), local));
    }
    Ok(clients)
}

/// Starts the updater and the client outside any pod.
fn start_non_pod_clients(
    run: &mut Run,
    clients: &mut Clients,
    net: &Net,
    py: &PyClient,
    spans: &Spans,
) -> Result<(), ScenarioError> {
    // The updater on the apiserver's own host: creates the configmap now (every watch
    // gets it, then idles), replaces it after one slow period, longer than the timeout.
    let updater = py.args(
        "updater",
        "updater",
        &[
            "--period".into(),
            format!("{:.3}", spans.slow.as_secs_f64()),
        ],
    );
    let p = procs::spawn("updater", &net.server_ns, Path::new(PYTHON), &updater)?;
    run.lab.track_pid(p.pid);
    clients.running.push(("updater".into(), p));
    // A process outside any pod, without keepalive: the timer server's hello, then idle.
    let request = format!(
        "d=$(curl -sS -o /dev/null --no-keepalive --http0.9 --max-time {max:.0} http://{server}:8600/ 2>&1)",
        max = spans.total.as_secs_f64().ceil(),
        server = net.server,
    );
    let p = run.spawn_shell("client", "curl-idle", ShellClient::CurlRaw, 1, &request)?;
    clients.running.push(("curl-idle".into(), p));
    Ok(())
}

/// Waits for every client to end by itself within the run's length (and some), and
/// stops those that did not.
async fn wait_for_clients(running: &mut [(String, Proc)], total: Duration) {
    let deadline = tokio::time::Instant::now() + total + Duration::from_secs(3);
    for (_, p) in running {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if p.wait_exit(left).await.is_none() {
            p.stop(Duration::from_secs(2)).await;
        }
    }
}

/// Writes each client's own result (`result-<client>.jsonl`), beside the other
/// records for truth.json.
fn write_client_results(
    run: &Run,
    pods: &[Pod],
    clients: &Clients,
    box_out: &Path,
    api_addr: SocketAddrV4,
) -> Result<(), ScenarioError> {
    let mut watch_recs: Vec<Value> = Vec::new();
    for pod in pods {
        watch_recs.extend(record::read_lines::<Value>(
            &run.out.join(format!("watch-{}.jsonl", pod.name)),
        )?);
    }
    let resets: Vec<crate::idlereset::ResetRecord> = record::read_lines(box_out)?;
    let mut results = watcher_results(pods, clients, &watch_recs, &resets, api_addr);
    results.push(curl_idle_result(run, clients, &resets, *api_addr.ip()));
    for r in &results {
        let name = r["client"].as_str().unwrap_or("client");
        let path = run.out.join(format!("result-{name}.jsonl"));
        std::fs::write(&path, format!("{r}\n")).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Each pod watcher's result, its flow matched to the box's reset by its local address.
fn watcher_results(
    pods: &[Pod],
    clients: &Clients,
    watch_recs: &[Value],
    resets: &[crate::idlereset::ResetRecord],
    api_addr: SocketAddrV4,
) -> Vec<Value> {
    let reset_of = |local: &Option<String>| {
        resets
            .iter()
            .find(|r| local.is_some() && (r.a == *local || r.b == *local))
            .map(|r| r.t_ns)
    };
    let mut results: Vec<Value> = Vec::new();
    for pod in pods {
        let local = clients.local_of(pod.name);
        let mut r = watcher_result(watch_recs, pod.name, reset_of(&local));
        r["client"] = json!(pod.name);
        r["pod"] = json!(format!("default/{}", pod.name));
        r["pid"] = json!(clients.pid_of(pod.name));
        r["keepalive_s"] = json!(pod.keepalive.map(|k| k.as_secs_f64()));
        r["local"] = json!(local);
        r["remote"] = json!(api_addr.to_string());
        results.push(r);
    }
    results
}

/// The non-pod curl's result, from its shell line (`shell-rawcurl-curl-idle.txt`) and
/// the box's reset of its flow to the timer server.
fn curl_idle_result(
    run: &Run,
    clients: &Clients,
    resets: &[crate::idlereset::ResetRecord],
    server: Ipv4Addr,
) -> Value {
    let shell = run.out.join("shell-rawcurl-curl-idle.txt");
    let line = std::fs::read_to_string(&shell).unwrap_or_default();
    let mut f = line.lines().next().unwrap_or_default().splitn(5, ' ');
    let (start_ns, end_ns, exit, detail) = (
        f.nth(1).and_then(|s| s.parse::<u64>().ok()),
        f.next().and_then(|s| s.parse::<u64>().ok()),
        f.next().and_then(|s| s.parse::<i32>().ok()),
        f.next().unwrap_or_default().trim().to_string(),
    );
    let curl_remote = format!("{server}:8600");
    let curl_reset = resets
        .iter()
        .find(|r| {
            r.a.as_deref() == Some(curl_remote.as_str())
                || r.b.as_deref() == Some(curl_remote.as_str())
        })
        .map(|r| r.t_ns);
    json!({"client": "curl-idle", "pod": null, "pid": clients.pid_of("curl-idle"),
    "box_reset_ns": curl_reset,
    "outcome": match exit { Some(56) if detail.contains("reset by peer") => "reset",
                            Some(0) => "closed", None => "no_result", _ => "error" },
    "error": detail, "exit": exit, "start_ns": start_ns, "t_ns": end_ns,
    "remote": curl_remote, "keepalive_s": null})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_hybrid_and_unified_hosts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(cgroup2_root(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn container_ids_are_64_hex_and_distinct() {
        let (a, b) = (container_id(0), container_id(1));
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn watcher_results_from_records() {
        let recs = vec![
            json!({"who": "w", "event": "event", "t_ns": 5, "detail": {"n": "0"}}),
            json!({"who": "w", "event": "watch_error", "t_ns": 9,
                   "detail": {"error": "(\"Connection broken: ConnectionResetError(104, 'Connection reset by peer')\", ...)"}}),
            json!({"who": "k", "event": "event", "t_ns": 5, "detail": {"n": "0"}}),
            json!({"who": "k", "event": "event", "t_ns": 20, "detail": {"n": "1"}}),
        ];
        let w = watcher_result(&recs, "w", Some(8));
        assert_eq!(
            (w["outcome"].as_str(), w["last_event_ns"].as_u64()),
            (Some("reset"), Some(5))
        );
        // Failed, but not after a reset of its flow by the box.
        assert_eq!(watcher_result(&recs, "w", None)["outcome"], "error");
        assert_eq!(watcher_result(&recs, "w", Some(10))["outcome"], "error");
        let k = watcher_result(&recs, "k", None);
        assert_eq!(k["outcome"], "survived");
        assert_eq!(watcher_result(&recs[..1], "w", None)["outcome"], "stale");
    }
}
