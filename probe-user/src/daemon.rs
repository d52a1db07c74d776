//! `drainwatch run`: load, attach, read the ring buffer, decode, print and
//! export, until SIGINT or SIGTERM; then detach everything and exit 0.

use std::{io::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use probe_common::{LOST_KIND_BASE, LOST_LAYOUT, LOST_RINGBUF_FULL};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::watch};

use drainwatch_correlate::{
    Obs, ResetOrigin,
    idle::{IdleResets, IdleSample},
};

use crate::{
    event::{DecodeContext, decode, parse_raw},
    loader::{self, HookState, LoadOptions},
    metrics::{self, Metrics},
    observe,
};

/// How events are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
    /// Nothing; metrics only.
    None,
}

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
}

/// What the HTTP side watches.
pub struct HttpChecks {
    pub tls: crate::httpcheck::Tls,
    pub apiserver: Option<hyper::Uri>,
    pub readyz_interval: Duration,
    pub probes: Vec<(hyper::Uri, drainwatch_correlate::ProbeMode)>,
    pub probe_interval: Duration,
    /// The apiserver pods to watch through the Kubernetes API.
    pub pods: Option<crate::kubewatch::PodWatch>,
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

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let loaded = loader::load(&opts.load)?;
    // Loading parsed the kernel's BTF (about 19 MiB of heap, freed now);
    // glibc keeps freed heap mapped unless asked, and it would stay in RSS.
    // SAFETY: no preconditions.
    unsafe { libc::malloc_trim(0) };
    let mut ebpf = loaded.ebpf;
    // Before any map is taken out of the object.
    let mut occupancy = crate::occupancy::tracked(&ebpf);
    let tc = loaded.tc;
    let watched = opts.load.ports.clone();

    let metrics = Arc::new(Metrics::new(&watched).context("creating metrics")?);
    metrics
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), &kernel_release()])
        .set(1);
    metrics
        .ringbuf_bytes
        .set(i64::from(opts.load.ringbuf_bytes));
    for h in &loaded.hooks {
        let up = i64::from(h.state == HookState::Attached);
        metrics
            .hook_attached
            .with_label_values(&[&h.name()])
            .set(up);
    }
    for (port, n) in scan_listeners(&watched) {
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
    for (source, why) in &opts.http.off {
        metrics.source_up.with_label_values(&[source]).set(0);
        tracing::warn!("{source} source off: {why}");
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    // Kernel-side diagnostics (aya-log) go to tracing via the log bridge.
    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => {
            let mut stop = stop_rx.clone();
            // SAFETY: the logger owns its ring-buffer fd for as long as the AsyncFd lives.
            let mut afd =
                unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                    .map_err(|e| anyhow::anyhow!("watching the kernel log ring buffer: {e}"))?;
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        r = afd.readable_mut() => match r {
                            Ok(mut g) => { g.get_inner_mut().flush(); g.clear_ready(); }
                            Err(e) => { tracing::warn!("kernel log reader failed: {e}"); break; }
                        },
                        _ = stop.changed() => break,
                    }
                }
                Ok::<(), anyhow::Error>(())
            });
        }
        Err(e) => tracing::debug!("no kernel-side logging: {e}"),
    }

    let events = loader::take_events(&mut ebpf)?;
    let lost = loader::take_lost(&mut ebpf)?;

    // Kernel-side loss: polled, and exported as counters.
    {
        let stages = [
            (
                LOST_RINGBUF_FULL,
                metrics.lost_counter("kernel_ringbuf_full"),
            ),
            (LOST_LAYOUT, metrics.lost_counter("kernel_layout")),
        ];
        let by_kind: Vec<(u32, prometheus::IntCounter)> = (1..probe_common::event::kind::MAX)
            .filter_map(|k| {
                crate::event::EventKind::from_raw(k).map(|kind| {
                    (
                        LOST_KIND_BASE + u32::from(k),
                        metrics
                            .events_lost_by_kind
                            .with_label_values(&[kind.as_str()]),
                    )
                })
            })
            .collect();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let mut seen = [0u64; 2];
            let mut seen_kind = vec![0u64; by_kind.len()];
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                let done = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stop.changed() => true,
                };
                for (i, (slot, counter)) in stages.iter().enumerate() {
                    let total = loader::percpu_total(&lost, *slot);
                    if total > seen[i] {
                        counter.inc_by(total - seen[i]);
                        tracing::warn!(
                            "{} events dropped in the kernel ({})",
                            total - seen[i],
                            if *slot == LOST_RINGBUF_FULL {
                                "ring buffer full"
                            } else {
                                "record layout mismatch"
                            }
                        );
                        seen[i] = total;
                    }
                }
                for (i, (slot, counter)) in by_kind.iter().enumerate() {
                    let total = loader::percpu_total(&lost, *slot);
                    if total > seen_kind[i] {
                        counter.inc_by(total - seen_kind[i]);
                        seen_kind[i] = total;
                    }
                }
                if done {
                    break;
                }
            }
            Ok(())
        });
    }

    if opts.load.wire.is_some() {
        let stats = loader::take_wire_stats(&mut ebpf)?;
        let flows = loader::take_flows(&mut ebpf)?;
        if let Some(w) = &opts.load.wire {
            metrics.flow_table_size.set(i64::from(w.flow_table));
        }
        // The wire task walks the flow table itself (to remove closed
        // flows) and exports its occupancy: not walked a second time.
        let walker = occupancy
            .iter()
            .position(|t| t.label() == "flows")
            .map(|i| occupancy.remove(i));
        tasks.spawn(wire_stats_task(
            stats,
            flows,
            walker,
            metrics.clone(),
            stop_rx.clone(),
        ));
    }

    tasks.spawn(crate::occupancy::task(
        occupancy,
        metrics.clone(),
        stop_rx.clone(),
    ));

    // Per-program run time: the kernel counts it only while stats are on,
    // which lasts as long as this fd is open.
    let _stats_fd = if opts.bpf_stats {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!("--bpf-stats: cannot enable kernel BPF statistics: {e}");
                None
            }
        }
    } else {
        None
    };
    if _stats_fd.is_some() {
        let programs: Vec<(u32, String)> = ebpf
            .programs()
            .filter_map(|(name, p)| p.info().ok().map(|i| (i.id(), name.to_string())))
            .collect();
        tasks.spawn(program_stats_task(
            programs,
            metrics.clone(),
            stop_rx.clone(),
        ));
    }

    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = metrics::bind(opts.metrics_addr).await?;
    tasks.spawn(metrics_task(
        listener,
        metrics.clone(),
        ready.clone(),
        stop_rx.clone(),
    ));

    let cx = DecodeContext {
        boot_to_unix_ns: boot_to_unix_ns(),
        sock_key: random_key(),
        reset_reasons: loaded.reset_reasons.clone(),
        hz: crate::clock::kernel_hz(Duration::from_millis(120)),
        default_keepalive_secs: crate::clock::default_keepalive_secs(),
    };
    if cx.hz.is_none() {
        tracing::info!("kernel HZ unknown: the socket view of received RSTs is off");
    }
    // Observations from the HTTP side join the kernel's in the reader task.
    let (obs_tx, obs_rx) = tokio::sync::mpsc::channel(4096);
    if let Some(base) = opts.http.apiserver.clone() {
        tasks.spawn(crate::httpcheck::poll_health(
            base,
            opts.http.tls.clone(),
            opts.http.readyz_interval,
            metrics.clone(),
            obs_tx.clone(),
            stop_rx.clone(),
        ));
    }
    for (target, mode) in opts.http.probes.clone() {
        tasks.spawn(crate::httpcheck::probe(
            target,
            mode,
            opts.http.tls.clone(),
            opts.http.probe_interval,
            metrics.clone(),
            obs_tx.clone(),
            stop_rx.clone(),
        ));
    }
    if let Some(w) = opts.http.pods.clone() {
        tasks.spawn(crate::kubewatch::watch_pods(
            w,
            metrics.clone(),
            obs_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(obs_tx);
    let config = {
        let mut config = opts.correlate.config(&opts.local_addrs);
        config.default_instance = config.default_instance.or_else(observe::hostname);
        config
    };
    let corr = Correlation {
        engine: drainwatch_correlate::Engine::new(config.clone())
            .map_err(|e| anyhow::anyhow!("correlation settings: {e}"))?,
        recorder: opts
            .record
            .clone()
            .map(|p| observe::Recorder::create(p, &config))
            .transpose()?,
        own: Default::default(),
        next_id: 0,
        reported: Default::default(),
        exported: Default::default(),
    };
    tasks.spawn(reader_task(
        events,
        cx,
        metrics.clone(),
        watched.clone(),
        opts.output,
        corr,
        obs_rx,
        stop_rx.clone(),
    ));

    // Handlers go in before "ready", so a stop request right after it is never fatal.
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let attached: Vec<String> = loaded
        .hooks
        .iter()
        .filter(|h| h.attached())
        .map(|h| h.name())
        .collect();
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        "drainwatch ready: watching ports {:?}, metrics on http://{}/metrics, hooks: {}",
        watched,
        opts.metrics_addr,
        attached.join(", ")
    );

    let mut result = Ok(());
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        Some(res) = tasks.join_next() => {
            // A task ending on its own is a failure: report it, then stop.
            result = match res {
                Ok(Ok(())) => Err(anyhow::anyhow!("a reader task stopped unexpectedly")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("a reader task panicked: {e}")),
            };
        }
    }
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

/// Exports the kernel's run time and run count for each of our programs.
async fn program_stats_task(
    programs: Vec<(u32, String)>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut seen: std::collections::HashMap<u32, (u64, u64)> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        for info in aya::programs::loaded_programs().filter_map(Result::ok) {
            let Some((_, name)) = programs.iter().find(|(id, _)| *id == info.id()) else {
                continue;
            };
            let ns = info.run_time().as_nanos() as u64;
            let cnt = info.run_count();
            let prev = seen.entry(info.id()).or_insert((0, 0));
            metrics
                .program_run_seconds
                .with_label_values(&[name])
                .inc_by(ns.saturating_sub(prev.0) as f64 / 1e9);
            metrics
                .program_runs
                .with_label_values(&[name])
                .inc_by(cnt.saturating_sub(prev.1));
            *prev = (ns, cnt);
        }
    }
}

/// Polls the classifier's counters and the flow table's occupancy, and
/// removes flows that are closed and over ([`probe_common::Flow::is_done`]).
async fn wire_stats_task(
    stats: aya::maps::PerCpuArray<MapData, u64>,
    mut flows: aya::maps::HashMap<MapData, probe_common::FlowKey, probe_common::Flow>,
    walker: Option<crate::occupancy::Tracked>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use probe_common::wire_stat as ws;
    let uninspected = [
        (ws::H2_TLS, "tls"),
        (ws::H2_MID_STREAM, "mid_stream"),
        (ws::H2_SPLIT_HEADER, "split_header"),
        (ws::H2_SPLIT_GOAWAY, "split_goaway"),
        (ws::H2_FRAME_LIMIT, "frame_limit"),
        (ws::H2_SEQ_GAP, "seq_gap"),
        (ws::NOT_H2, "not_http2"),
        (ws::H2C_UPGRADE_LOST, "h2c_upgrade_lost"),
    ];
    for (_, reason) in uninspected {
        metrics
            .wire_uninspected
            .with_label_values(&[reason])
            .inc_by(0);
    }
    let mut seen = [0u64; probe_common::WIRE_STAT_SLOTS as usize];
    let mut evicted_seen = 0u64;
    let mut swept = 0u64;
    let mut walk_failed = false;
    if let Some(w) = &walker {
        metrics
            .map_capacity
            .with_label_values(&[w.label()])
            .set(i64::from(w.capacity()));
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        let mut delta = |slot: u32| {
            let total = loader::percpu_total(&stats, slot);
            let d = total.saturating_sub(seen[slot as usize]);
            seen[slot as usize] = total.max(seen[slot as usize]);
            d
        };
        for (slot, reason) in uninspected {
            let d = delta(slot);
            if d > 0 {
                metrics
                    .wire_uninspected
                    .with_label_values(&[reason])
                    .inc_by(d);
            }
        }
        metrics.wire_packets.inc_by(delta(ws::PACKETS));
        metrics.wire_malformed.inc_by(delta(ws::MALFORMED));
        let _ = delta(ws::FLOWS_INSERTED);
        let _ = delta(ws::FLOWS_REMOVED);
        // Walk the table every 5 s (one syscall per 256 entries, or per
        // entry where batch lookups are missing).
        round += 1;
        if round % 5 == 1 {
            let now = crate::httpcheck::boot_ns();
            let mut done = Vec::new();
            let walked = match &walker {
                Some(w) if !walk_failed => crate::occupancy::walk(w, |k, v| {
                    if let (Some(key), Some(flow)) = (
                        pod_from_bytes::<probe_common::FlowKey>(k),
                        pod_from_bytes::<probe_common::Flow>(v),
                    ) && flow.is_done(now)
                    {
                        done.push(key);
                    }
                })
                .map_err(|e| {
                    walk_failed = true;
                    tracing::warn!("flow table: batch walk failed ({e}); walking it key by key");
                })
                .ok(),
                _ => None,
            };
            let entries = match walked {
                Some(n) => n,
                None => {
                    let mut n = 0u64;
                    for (key, flow) in flows.iter().filter_map(Result::ok) {
                        n += 1;
                        if flow.is_done(now) {
                            done.push(key);
                        }
                    }
                    n
                }
            };
            // A flow that saw a packet since the walk is kept (a new SYN
            // replaces a closed flow in the kernel anyway).
            let mut removed_now = 0u64;
            for key in &done {
                if flows.get(key, 0).is_ok_and(|f| f.is_done(now)) && flows.remove(key).is_ok() {
                    removed_now += 1;
                }
            }
            swept += removed_now;
            metrics.flows_closed_removed.inc_by(removed_now);
            let entries = entries.saturating_sub(removed_now);
            metrics.flow_entries.set(entries as i64);
            if let Some(w) = &walker {
                metrics
                    .map_entries
                    .with_label_values(&[w.label()])
                    .set(entries as i64);
            }
            // LRU evictions are silent in the kernel: whatever was inserted
            // and neither removed (by the program or here) nor present was
            // evicted.
            let inserted = seen[ws::FLOWS_INSERTED as usize];
            let removed = seen[ws::FLOWS_REMOVED as usize] + swept;
            let evicted = inserted.saturating_sub(removed).saturating_sub(entries);
            if evicted > evicted_seen {
                metrics.flow_evictions.inc_by(evicted - evicted_seen);
                evicted_seen = evicted;
            }
        }
    }
}

/// A plain-data value from a map's bytes (`None` when the size is wrong).
fn pod_from_bytes<T: aya::Pod>(b: &[u8]) -> Option<T> {
    (b.len() == std::mem::size_of::<T>())
        // SAFETY: T is plain data (aya::Pod: any bit pattern is valid) and
        // b holds exactly size_of::<T>() bytes; read_unaligned needs no
        // alignment.
        .then(|| unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}

async fn metrics_task(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tokio::select! {
        _ = metrics::serve(listener, metrics, ready) => {}
        _ = stop.changed() => {}
    }
    Ok(())
}

/// How long the engine keeps raw observations (a rollout in progress is
/// always kept whole), ns.
const KEEP_NS: u64 = 600_000_000_000;

/// When a connection close outside any rollout is forgotten, ns: late
/// enough that the rollout it could belong to has shown itself (its
/// signal and listener close come through the same ring buffer; the
/// /readyz poller reports within its interval).
const PRUNE_AFTER_NS: u64 = 5_000_000_000;

/// How often the reader drains the ring buffer without being woken: the
/// most a lone event waits before it is printed and correlated.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// What the reader feeds besides stdout and metrics: the correlation
/// engine, the recording, and which verdicts were already reported.
struct Correlation {
    engine: drainwatch_correlate::Engine,
    recorder: Option<observe::Recorder>,
    /// drainwatch's own connections (poller, prober), kept out.
    own: observe::OwnConnections,
    next_id: u64,
    /// Verdicts printed so far, by identity, with what was printed: a verdict
    /// that grows (more failed connections, a longer window) is printed again
    /// as an update.
    reported: std::collections::HashMap<String, String>,
    /// Totals already exported (counters never go down even if a late
    /// observation reclassifies a verdict).
    exported: std::collections::HashMap<String, (u64, f64)>,
}

impl Correlation {
    fn push(&mut self, ev: &crate::event::Event, metrics: &Metrics, watched: &[u16]) {
        if observe::stray_client_reset(ev, watched) {
            return;
        }
        if self.own.is_own(ev) {
            metrics
                .correlation_ignored
                .with_label_values(&["own_connection"])
                .inc();
            return;
        }
        if let Some(o) = observe::observation(ev, 0) {
            self.push_observation(o);
        }
    }

    /// Numbers, records and feeds one observation.
    fn push_observation(&mut self, mut o: drainwatch_correlate::Observation) {
        o.id = self.next_id;
        self.next_id += 1;
        if let Some(r) = &mut self.recorder
            && let Err(e) = r.write(&o)
        {
            tracing::warn!(
                "--record {}: write failed ({e}); recording stopped",
                r.path.display()
            );
            self.recorder = None;
        }
        self.engine.push(o);
    }

    /// Prints verdicts not reported yet (or changed since) and exports the
    /// engine's totals; with `last`, also the whole final report (JSON) or a
    /// count (text), as the daemon exits.
    fn report(
        &mut self,
        metrics: &Metrics,
        output: Output,
        out: &mut impl std::io::Write,
        last: bool,
    ) {
        if let Some(r) = &mut self.recorder {
            let _ = r.flush();
        }
        let report = self.engine.report().clone();
        let mut listed = std::collections::HashSet::with_capacity(report.verdicts.len());
        for v in &report.verdicts {
            // Identity: cause (with its path), instance, rollout and the first
            // evidence, which later evidence does not change.
            let key = format!(
                "{}/{:?}/{:?}/{:?}/{:?}",
                v.cause.label(),
                serde_json::to_string(&v.cause).unwrap_or_default(),
                v.instance,
                v.cycle,
                v.evidence.first()
            );
            let seen = serde_json::to_string(v).unwrap_or_default();
            listed.insert(key.clone());
            let update = match self.reported.get(&key) {
                Some(prev) if *prev == seen => continue,
                Some(_) => true,
                None => false,
            };
            self.reported.insert(key, seen);
            tracing::warn!("{}{}", if update { "(update) " } else { "" }, v.line());
            let line = match output {
                Output::Text if update => Some(format!("VERDICT (update) {}", v.line())),
                Output::Text => Some(format!("VERDICT {}", v.line())),
                Output::Json if update => {
                    serde_json::to_string(&serde_json::json!({ "verdict": v, "update": true })).ok()
                }
                Output::Json => serde_json::to_string(&serde_json::json!({ "verdict": v })).ok(),
                Output::None => None,
            };
            if let Some(line) = line {
                let _ = writeln!(out, "{line}");
            }
        }
        // Verdicts the engine no longer lists (beyond its archive's limit)
        // cannot change again: forget them too.
        self.reported.retain(|k, _| listed.contains(k));
        if last {
            let line = match output {
                Output::Json => {
                    serde_json::to_string(&serde_json::json!({ "report": report })).ok()
                }
                Output::Text => Some(format!(
                    "SUMMARY {} verdict(s), {} rollout(s), from {} observation(s)",
                    report.verdicts.len(),
                    report.timelines.len(),
                    report.stats.observations
                )),
                Output::None => None,
            };
            if let Some(line) = line {
                let _ = writeln!(out, "{line}");
            }
        }
        for (cause, t) in &report.summary.by_cause {
            let prev = self.exported.entry(cause.clone()).or_insert((0, 0.0));
            if t.disruptions > prev.0 {
                metrics
                    .disruptions
                    .with_label_values(&[cause])
                    .inc_by(t.disruptions - prev.0);
                prev.0 = t.disruptions;
            }
            if t.seconds > prev.1 {
                metrics
                    .disruption_seconds
                    .with_label_values(&[cause])
                    .inc_by(t.seconds - prev.1);
                prev.1 = t.seconds;
            }
        }
        for (instance, t) in &report.summary.lb_detection_seconds {
            metrics
                .lb_detection_seconds
                .with_label_values(&[instance])
                .set(*t);
        }
        for p in &report.summary.phases {
            metrics
                .phase_timestamp
                .with_label_values(&[&p.instance, &p.phase])
                .set(p.t_ns as f64 / 1e9);
        }
        // Keep memory and the per-second recomputation bounded: closes
        // outside any rollout are forgotten after 5 s, and what is
        // older than ten minutes is archived (its verdicts and totals kept),
        // never splitting a rollout still in progress.
        let now = crate::httpcheck::boot_ns();
        self.engine.prune_closes(now.saturating_sub(PRUNE_AFTER_NS));
        self.engine.compact(now.saturating_sub(KEEP_NS));
        metrics.set_engine_sizes(
            self.engine.len(),
            report.timelines.len(),
            report.verdicts.len(),
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn reader_task(
    events: RingBuf<MapData>,
    cx: DecodeContext,
    metrics: Arc<Metrics>,
    watched: Vec<u16>,
    output: Output,
    mut corr: Correlation,
    mut obs_rx: tokio::sync::mpsc::Receiver<drainwatch_correlate::Observation>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut idle = IdleResets::default();
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd lives.
    let mut afd = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {e}"))?;
    let stdout = std::io::stdout();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The programs wake the reader only once a batch is pending (a wakeup
    // per event costs more than the event); this bounds a lone event's wait.
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let done = tokio::select! {
            r = afd.readable_mut() => {
                let mut guard = r.context("waiting on the event ring buffer")?;
                let rb = guard.get_inner_mut();
                let mut out = stdout.lock();
                while let Some(item) = rb.next() {
                    handle_record(&item, &cx, &metrics, &watched, output, &mut idle, &mut corr, &mut out);
                }
                let _ = out.flush();
                guard.clear_ready();
                false
            }
            _ = drain.tick() => {
                let rb = afd.get_mut();
                let mut out = stdout.lock();
                while let Some(item) = rb.next() {
                    handle_record(&item, &cx, &metrics, &watched, output, &mut idle, &mut corr, &mut out);
                }
                let _ = out.flush();
                false
            }
            Some(mut o) = obs_rx.recv() => {
                observe::stamp_wall(&mut o, cx.boot_to_unix_ns);
                corr.push_observation(o);
                false
            }
            _ = tick.tick() => {
                let mut out = stdout.lock();
                corr.report(&metrics, output, &mut out, false);
                let _ = out.flush();
                false
            }
            _ = stop.changed() => true,
        };
        if done {
            // Deliver what is already in the buffer before exiting.
            let rb = afd.get_mut();
            let mut out = stdout.lock();
            while let Some(item) = rb.next() {
                handle_record(
                    &item, &cx, &metrics, &watched, output, &mut idle, &mut corr, &mut out,
                );
            }
            corr.report(&metrics, output, &mut out, true);
            let _ = out.flush();
            return Ok(());
        }
    }
}

/// Decodes one ring-buffer record, counts it, prints it, and reports an
/// idle-reset cluster when this record completes one.
#[allow(clippy::too_many_arguments)]
fn handle_record(
    buf: &[u8],
    cx: &DecodeContext,
    metrics: &Metrics,
    watched: &[u16],
    output: Output,
    idle: &mut IdleResets,
    corr: &mut Correlation,
    out: &mut impl std::io::Write,
) {
    let ev = match parse_raw(buf).and_then(|raw| decode(&raw, cx)) {
        Ok(ev) => ev,
        Err(e) => {
            metrics.lost_counter("decode").inc();
            tracing::warn!("undecodable event ({e}); counted as lost");
            return;
        }
    };
    metrics.observe(&ev, watched);
    corr.push(&ev, metrics, watched);
    let line = match output {
        Output::Text => Some(ev.human()),
        Output::Json => serde_json::to_string(&ev).ok(),
        Output::None => None,
    };
    if let Some(line) = line
        && writeln!(out, "{line}").is_err()
    {
        tracing::debug!("stdout closed; event not printed");
    }
    // The live finding comes from the engine's own rule (correlate's
    // `idle::infer`), fed through the same event -> observation mapping.
    let Some(Obs::WireReset {
        origin,
        silence_s,
        answered_packet,
        keepalive,
        ..
    }) = crate::observe::observation(&ev, 0).map(|o| o.kind)
    else {
        return;
    };
    let sample = IdleSample {
        silence_s,
        answered: answered_packet == Some(true),
        keepalive,
    };
    let Some(c) = idle.observe(
        ev.ts_boot_ns,
        sample,
        origin == ResetOrigin::Middlebox,
        corr.engine.config().tolerance_s,
    ) else {
        return;
    };
    tracing::warn!("{c}");
    metrics
        .inferred_idle_timeout
        .with_label_values(&[c.origin])
        .set(c.inference.timeout_s);
    let line = match output {
        Output::Text => Some(format!("FINDING idle-reset cluster: {c}")),
        Output::Json => serde_json::to_string(&serde_json::json!({
            "finding": "idle_reset_cluster",
            "summary": c.to_string(),
            "cluster": c,
        }))
        .ok(),
        Output::None => None,
    };
    if let Some(line) = line {
        let _ = writeln!(out, "{line}");
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
