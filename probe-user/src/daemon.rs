//! `drainwatch run`: load and attach the kernel programs, start every
//! source and the pipeline, serve metrics, until SIGINT or SIGTERM; then
//! stop the tasks, detach everything and exit 0. [`run`] is the table of
//! contents; each step lives in its own module.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{signal::unix::SignalKind, sync::watch, task::JoinSet};

use crate::{
    decode::{event::DecodeContext, observe},
    export::{self, metrics::Metrics},
    kernel::{
        self,
        load::{self as loader, LoadOptions, Loaded},
    },
    pipeline::{Correlation, Output, Pipeline},
    sources,
};

type Tasks = JoinSet<anyhow::Result<()>>;

pub struct RunOptions {
    pub load: LoadOptions,
    pub output: Output,
    pub metrics_addr: SocketAddr,
    /// Enable and export per-program kernel run-time statistics.
    pub bpf_stats: bool,
    /// How observations are correlated into verdicts.
    pub correlate: drainwatch_ops::pcap::CorrelateFlags,
    /// The observed host's addresses (of the --netns namespace).
    pub local_addrs: Vec<std::net::IpAddr>,
    /// Where to record the engine's input (JSON lines), for `analyze`.
    pub record: Option<std::path::PathBuf>,
    /// HTTP checks of the apiserver: the local /readyz poller and the prober.
    pub http: HttpChecks,
    /// Verdicts as Kubernetes Events, unless off.
    pub kube_events: Option<export::kube_events::Options>,
    /// The credentials and node name for watching this node's pods, which
    /// name the owners of its connections (`pipeline/owners.rs`); without
    /// them owners are named by cgroup (pod uid, container) and process.
    pub node_pods: Option<(sources::kubewatch::Credentials, String)>,
}

/// What the HTTP side watches.
pub struct HttpChecks {
    pub tls: crate::sources::http::Tls,
    pub apiserver: Option<hyper::Uri>,
    pub readyz_interval: Duration,
    pub probes: Vec<(hyper::Uri, drainwatch_correlate::ProbeMode)>,
    pub probe_interval: Duration,
    /// The apiserver pods to watch through the Kubernetes API.
    pub pods: Option<crate::sources::kubewatch::PodWatch>,
    /// Sources asked for but unusable from the start (source, why): their
    /// health reads 0 while the rest runs.
    pub off: Vec<(&'static str, String)>,
}

/// Offset from the kernel's boot-time clock to Unix time, in ns.
pub(crate) fn boot_to_unix_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid pointer to a timespec.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_BOOTTIME)
}

pub(crate) fn random_key() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: buf is valid for 8 bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != 8 {
        return std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    }
    u64::from_ne_bytes(buf)
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let loaded = loader::load(&opts.load)?;
    // Loading parsed the kernel's BTF (about 19 MiB of heap, freed now);
    // glibc keeps freed heap mapped unless asked, and it would stay in RSS.
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
    let metrics = Arc::new(Metrics::new(&opts.load.ports).context("creating metrics")?);
    export_start_state(&opts, &loaded, &metrics);
    let Loaded {
        mut ebpf,
        hooks,
        reset_reasons,
        tc,
    } = loaded;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Tasks::new();

    // Before any map is taken out of the object.
    let occupancy = sources::occupancy::tracked(&ebpf);
    sources::kernel_log::spawn(&mut ebpf, &mut tasks, stop_rx.clone())?;
    let lost = loader::take_lost(&mut ebpf)?;
    tasks.spawn(sources::loss::task(lost, metrics.clone(), stop_rx.clone()));
    spawn_wire_and_occupancy(&opts, &mut ebpf, occupancy, &metrics, &mut tasks, &stop_rx)?;
    spawn_endpoints(&opts, &mut ebpf, &metrics, &mut tasks, &stop_rx)?;
    let _stats_fd = if opts.bpf_stats {
        sources::program_stats::enable().inspect(|_| {
            let programs = sources::program_stats::programs(&ebpf);
            tasks.spawn(sources::program_stats::task(
                programs,
                metrics.clone(),
                stop_rx.clone(),
            ));
        })
    } else {
        None
    };
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = export::http::bind(opts.metrics_addr).await?;
    let api = Arc::new(export::api::Api::new(export::api::EVENT_BUFFER));
    tasks.spawn(export::http::task(
        listener,
        metrics.clone(),
        api.clone(),
        ready.clone(),
        stop_rx.clone(),
    ));
    let obs_rx = spawn_http_sources(&opts, &metrics, &mut tasks, &stop_rx);
    let node_pods = spawn_node_pods(&opts, &metrics, &mut tasks, &stop_rx);
    let mut pipeline = pipeline(&opts, reset_reasons, &metrics, api, node_pods)?;
    if let Some(o) = opts.kube_events.clone() {
        let (tx, rx) = export::kube_events::channel(metrics.clone());
        pipeline.corr.kube_events = Some(tx);
        tasks.spawn(export::kube_events::task(
            o,
            rx,
            metrics.clone(),
            stop_rx.clone(),
        ));
    }
    let events = loader::take_events(&mut ebpf)?;
    let ebpf = spawn_go_uprobes(
        &opts,
        &hooks,
        ebpf,
        &mut pipeline,
        &metrics,
        &mut tasks,
        &stop_rx,
    );
    tasks.spawn(sources::ringbuf::task(
        events,
        pipeline,
        obs_rx,
        stop_rx.clone(),
    ));

    // Handlers go in before "ready", so a stop request right after it is never fatal.
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let attached: Vec<String> = hooks
        .iter()
        .filter(|h| h.attached())
        .map(|h| h.name())
        .collect();
    tracing::info!(
        "drainwatch ready: watching ports {:?}, metrics on http://{}/metrics, hooks: {}",
        opts.load.ports,
        opts.metrics_addr,
        attached.join(", ")
    );

    let result = tokio::select! {
        _ = int.recv() => { tracing::info!("SIGINT: stopping"); Ok(()) }
        _ = term.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
        Some(res) = tasks.join_next() => match res {
            // A task ending on its own is a failure: report it, then stop.
            Ok(Ok(())) => Err(anyhow::anyhow!("a reader task stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a reader task panicked: {e}")),
        },
    };
    let _ = stop_tx.send(true);
    while let Some(res) = tasks.join_next().await {
        if let Ok(Err(e)) = res {
            tracing::warn!("task ended with error: {e:#}");
        }
    }
    // Dropping the object detaches every program and frees the maps.
    drop(ebpf);
    drop(tc);
    tracing::info!("detached all programs");
    result
}

/// Endpoint mode: the task that keeps the kernel's `ENDPOINTS` in step
/// with the names as they resolve.
fn spawn_endpoints(
    opts: &RunOptions,
    ebpf: &mut aya::Ebpf,
    metrics: &Arc<Metrics>,
    tasks: &mut Tasks,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Some(e) = &opts.load.endpoints else {
        return Ok(());
    };
    tracing::info!(
        "endpoint mode: watching only {}",
        e.resolved.lines().join(", ")
    );
    let map = loader::take_endpoints(ebpf)?;
    let watching = sources::endpoints::Watching {
        specs: e.specs.clone(),
        slice: e.slice.clone(),
        ports: opts.load.ports.iter().copied().collect(),
    };
    tasks.spawn(sources::endpoints::task(
        map,
        watching,
        e.resolved.clone(),
        metrics.clone(),
        stop_rx.clone(),
    ));
    Ok(())
}

/// Last: the Go uprobes' task takes the object (it attaches per binary
/// from there; dropping it when that task ends detaches everything).
/// Without the Go uprobes, the object comes back, to be dropped at the end.
fn spawn_go_uprobes(
    opts: &RunOptions,
    hooks: &[kernel::programs::Hook],
    ebpf: aya::Ebpf,
    pipeline: &mut Pipeline,
    metrics: &Arc<Metrics>,
    tasks: &mut Tasks,
    stop_rx: &watch::Receiver<bool>,
) -> Option<aya::Ebpf> {
    let Some(program) = hooks.iter().find(|h| h.per_binary()).map(|h| h.program) else {
        return Some(ebpf);
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    pipeline.go_hints = Some(tx);
    let mut names = opts.load.watch_comms.clone();
    names.extend(opts.load.go_clients.iter().cloned());
    tasks.spawn(sources::goh2::task(
        ebpf,
        sources::goh2::Options {
            names,
            ports: opts.load.ports.clone(),
            netns: opts.load.netns,
            cookies: program == kernel::programs::Program::GoHttp2Cookie,
        },
        rx,
        metrics.clone(),
        stop_rx.clone(),
    ));
    None
}

/// What is known before the first event: build, ring buffer size, hooks,
/// listeners already open, and which sources are up.
fn export_start_state(opts: &RunOptions, loaded: &Loaded, metrics: &Metrics) {
    metrics
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), &kernel_release()])
        .set(1);
    metrics
        .ringbuf_bytes
        .set(i64::from(opts.load.ringbuf_bytes));
    metrics
        .socket_table_size
        .set(i64::from(opts.load.socket_table));
    for h in &loaded.hooks {
        metrics
            .hook_attached
            .with_label_values(&[&h.name()])
            .set(i64::from(h.attached()));
    }
    for (port, n) in scan_listeners(&opts.load.ports) {
        metrics.set_listeners(port, n);
    }
    metrics.source_up.with_label_values(&["kernel"]).set(1);
    if let Some(w) = &opts.load.wire {
        // Hooks attach where the watched traffic crosses (the --netns
        // namespace's own interfaces when it names one), so any attached
        // classifier sees it.
        let tc = loaded
            .hooks
            .iter()
            .any(|h| h.program.is_tc() && h.attached());
        metrics
            .source_up
            .with_label_values(&["wire"])
            .set(i64::from(tc));
        if tc {
            tracing::info!("wire observer: TC classifier on {}", w.place());
        } else {
            tracing::warn!(
                "wire observer: no TC classifier attached on {}; wire events are off",
                w.place()
            );
        }
    }
    if opts.load.go_uprobes {
        let go = loaded.hooks.iter().any(kernel::programs::Hook::per_binary);
        metrics
            .source_up
            .with_label_values(&["go_http2"])
            .set(i64::from(go));
        if !go {
            tracing::warn!("Go HTTP/2 uprobes unavailable: GOAWAYs inside TLS are not seen");
        }
    }
    for (source, why) in &opts.http.off {
        metrics.source_up.with_label_values(&[source]).set(0);
        tracing::warn!("{source} source off: {why}");
    }
}

/// The wire poller (which walks the flow table itself, to remove closed
/// flows, and exports its occupancy) and the occupancy of the other maps.
fn spawn_wire_and_occupancy(
    opts: &RunOptions,
    ebpf: &mut aya::Ebpf,
    mut occupancy: Vec<sources::occupancy::Tracked>,
    metrics: &Arc<Metrics>,
    tasks: &mut Tasks,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if let Some(w) = &opts.load.wire {
        let stats = loader::take_wire_stats(ebpf)?;
        let flows = loader::take_flows(ebpf)?;
        metrics.flow_table_size.set(i64::from(w.flow_table));
        let walker = occupancy
            .iter()
            .position(|t| t.label() == "flows")
            .map(|i| occupancy.remove(i));
        tasks.spawn(sources::wire_stats::task(
            stats,
            flows,
            walker,
            metrics.clone(),
            stop.clone(),
        ));
    }
    tasks.spawn(sources::occupancy::task(
        occupancy,
        metrics.clone(),
        stop.clone(),
    ));
    Ok(())
}

/// The HTTP side: the /readyz poller, the probers, the pod watch. Their
/// observations join the kernel's in the pipeline.
fn spawn_http_sources(
    opts: &RunOptions,
    metrics: &Arc<Metrics>,
    tasks: &mut Tasks,
    stop: &watch::Receiver<bool>,
) -> tokio::sync::mpsc::Receiver<drainwatch_correlate::Observation> {
    let (obs_tx, obs_rx) = tokio::sync::mpsc::channel(4096);
    if let Some(base) = opts.http.apiserver.clone() {
        tasks.spawn(sources::http::poll_health(
            base,
            opts.http.tls.clone(),
            opts.http.readyz_interval,
            metrics.clone(),
            obs_tx.clone(),
            stop.clone(),
        ));
    }
    for (target, mode) in opts.http.probes.clone() {
        tasks.spawn(sources::http::probe(
            target,
            mode,
            opts.http.tls.clone(),
            opts.http.probe_interval,
            metrics.clone(),
            obs_tx.clone(),
            stop.clone(),
        ));
    }
    if let Some(w) = opts.http.pods.clone() {
        tasks.spawn(sources::kubewatch::watch_pods(
            w,
            metrics.clone(),
            obs_tx,
            stop.clone(),
        ));
    }
    obs_rx
}

/// The pods of this node, watched when there are credentials, for naming
/// the owners of its connections.
fn spawn_node_pods(
    opts: &RunOptions,
    metrics: &Arc<Metrics>,
    tasks: &mut Tasks,
    stop: &watch::Receiver<bool>,
) -> sources::nodepods::NodePods {
    // A node runs at most a few hundred pods; deleted ones stay 5 minutes,
    // for the resets that follow a pod's end.
    let pods = sources::nodepods::NodePods::new(2048, Duration::from_secs(300));
    let Some((credentials, node)) = opts.node_pods.clone() else {
        return pods;
    };
    tasks.spawn(sources::nodepods::watch_node_pods(
        credentials,
        node,
        pods.clone(),
        stop.clone(),
    ));
    // What the watcher holds, exported once a second.
    let (p, m, mut stop) = (pods.clone(), metrics.clone(), stop.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return Ok(()),
            }
            m.node_pods.set(p.len() as i64);
            m.source_up
                .with_label_values(&["node_pods"])
                .set(i64::from(p.up()));
        }
    });
    pods
}

/// The owners of this node's connections: cgroup paths (the cgroup2 mount
/// from /proc/mounts) and this node's pods; the connections already open
/// to a watched port are taken from the process table (the programs are
/// attached by now, so one opened during the scan has its connect attempt).
fn owners(opts: &RunOptions, pods: sources::nodepods::NodePods) -> crate::pipeline::owners::Owners {
    use sources::cgroup::{Attributor, CgroupConfig, CgroupPaths, cgroup2_in};
    // `ip netns exec` (and some container setups) mount a fresh /sys,
    // leaving the cgroup mounts behind: then the cgroup2 mount is reached
    // through the root of a process that still sees it, pid 1 (the host's
    // with hostPID) or the parent that started the daemon.
    let host_view = || {
        // SAFETY: no preconditions.
        let parent = unsafe { libc::getppid() };
        [1, parent].into_iter().find_map(|pid| {
            let mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).ok()?;
            let at = cgroup2_in(&mounts)?;
            let root =
                std::path::Path::new(&format!("/proc/{pid}/root")).join(at.strip_prefix("/").ok()?);
            std::fs::metadata(&root).ok()?;
            CgroupPaths::new(CgroupConfig {
                root: Some(root),
                ..CgroupConfig::default()
            })
            .ok()
        })
    };
    let paths = match CgroupPaths::new(CgroupConfig::default()) {
        Ok(p) => Ok(p),
        Err(e) => host_view().ok_or(e),
    };
    let attributor = match paths {
        Ok(paths) => {
            tracing::info!(
                "connection owners: named by pod from the cgroups under {}",
                paths.root().display()
            );
            Some(Attributor { paths, pods })
        }
        Err(e) => {
            tracing::info!("connection owners: by process only ({e})");
            None
        }
    };
    let mut owners =
        crate::pipeline::owners::Owners::new(opts.load.socket_table as usize, attributor);
    let started = std::time::Instant::now();
    let open = kernel::procscan::open_connections(
        &opts.load.ports,
        opts.load.netns,
        opts.load.socket_table as usize,
    );
    let n = owners.seed(open);
    tracing::info!(
        "connection owners: {n} connections open before the start, found in {:?}",
        started.elapsed()
    );
    owners
}

/// The per-event pipeline: decoding context, correlation engine, sink.
fn pipeline(
    opts: &RunOptions,
    reset_reasons: Vec<(u64, String)>,
    metrics: &Arc<Metrics>,
    api: Arc<export::api::Api>,
    node_pods: sources::nodepods::NodePods,
) -> anyhow::Result<Pipeline> {
    let cx = DecodeContext {
        boot_to_unix_ns: boot_to_unix_ns(),
        sock_key: random_key(),
        reset_reasons,
        hz: kernel::clock::kernel_hz(Duration::from_millis(120)),
        default_keepalive_secs: kernel::clock::default_keepalive_secs(),
    };
    if cx.hz.is_none() {
        tracing::info!("kernel HZ unknown: the socket view of received RSTs is off");
    }
    let mut config = opts.correlate.config(&opts.local_addrs);
    // In endpoint mode (a worker) this node's events are about the
    // apiserver it dials, not an apiserver of its own: they are named by
    // the first endpoint (`--instance` overrides).
    let endpoint = opts
        .load
        .endpoints
        .as_ref()
        .and_then(|e| e.specs.first())
        .map(|s| sources::endpoints::join(&s.host, &s.port.to_string()));
    config.default_instance = config.default_instance.or(endpoint);
    let endpoint_instance = opts
        .load
        .endpoints
        .as_ref()
        .and(config.default_instance.clone());
    config.default_instance = config.default_instance.or_else(observe::hostname);
    Ok(Pipeline {
        cx,
        metrics: metrics.clone(),
        watched: opts.load.ports.clone(),
        output: opts.output,
        idle: Default::default(),
        corr: Correlation::new(config, opts.record.clone(), api)?,
        go_hints: None,
        goaway: Default::default(),
        owners: owners(opts, node_pods),
        endpoint_instance,
    })
}

/// Counts listening sockets per watched port from /proc/net/tcp{,6}: the
/// daemon may start after the listeners opened.
pub fn scan_listeners(ports: &[u16]) -> Vec<(u16, i64)> {
    let mut counts: Vec<(u16, i64)> = ports.iter().map(|&p| (p, 0)).collect();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1);
            let state = cols.nth(1);
            if state != Some("0A") {
                continue;
            }
            let Some(port) = local
                .and_then(|l| l.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            if let Some(c) = counts.iter_mut().find(|(p, _)| *p == port) {
                c.1 += 1;
            }
        }
    }
    counts
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
