//! `cargo xtask bench scale`: drainwatch on a master-sized load of long-lived,
//! mostly idle watch-like connections.
//!
//! A server namespace (the watched port 6443, drainwatch running there with
//! `--netns self`, its classifier on every veth) and `--clients` client
//! namespaces, each with its own veth and source address
//! (198.18.252.0/24, one /30 each) and its own server process on that
//! veth's address, so no source address needs more than its ~64k ephemeral
//! ports and no process more descriptors than its hard limit. Each client namespace runs one
//! `drainwatch-lab bench-load --mode hold` with its share of the `--connections`,
//! opened at a fixed total `--open-rate`; every held connection makes a
//! 1-byte exchange every `--ping-seconds`. While they are held, new
//! connections churn at `--churn-rate` from the first client; at the end a
//! rollout-like burst resets `--reset-fraction` of them at once (SO_LINGER
//! 0) and the rest close.
//!
//! Measured from the daemon: BPF map memory (memlock of each map fd in
//! /proc/PID/fdinfo), RSS, CPU (process user + system, and its programs'
//! kernel time with `kernel.bpf_stats_enabled`), the flow table's entries
//! against the connections held and its eviction counter, the socket
//! table's entries and the sockets it refused (full; it evicts nothing),
//! events lost (must be 0), and the time
//! of each 5 s flow-table walk (the daemon's debug line "flow table
//! walked"). The generators' counts are the ground truth. Everything is
//! bounded (connections, rates, seconds) and removed at the end.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    bench::{kill, median, sh},
    compare::{BpfStats, machine},
};

const S: &str = "dwscale-s";
const PORT: u16 = 6443;
const METRICS: &str = "127.0.0.1:19978";

/// What the scale bench runs.
pub struct Opts {
    pub connections: u64,
    pub clients: u32,
    pub open_rate: f64,
    pub hold_seconds: f64,
    pub ping_seconds: f64,
    pub churn_rate: f64,
    pub reset_fraction: f64,
    /// `--flow-table` for the daemon (None: its default).
    pub flow_table: Option<u32>,
    /// `--ringbuf-bytes` for the daemon (None: its default).
    pub ringbuf_bytes: Option<u32>,
}

fn client_ns(i: u32) -> String {
    format!("dwscale-c{i}")
}

/// (client address, server address) of client namespace `i`'s /30.
fn addrs(i: u32) -> (String, String) {
    (
        format!("198.18.252.{}", 4 * i + 1),
        format!("198.18.252.{}", 4 * i + 2),
    )
}

/// The namespaces; processes left in them are killed and they are deleted
/// on drop.
struct Topo {
    ns: Vec<String>,
    servers: Vec<Child>,
}

impl Drop for Topo {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for n in &self.ns {
            if let Ok(pids) = sh(&["ip", "netns", "pids", n]) {
                for p in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: killing processes left in our own namespaces.
                    unsafe { kill(p, 9) };
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Sets sysctls inside a namespace; returns what could not be set (the
/// conntrack limit is read-only outside the initial namespace on some
/// kernels, and absent without the module).
fn sysctls(ns: &str, kv: &[&str]) -> Vec<String> {
    kv.iter()
        .filter_map(|s| {
            sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", s])
                .err()
                .map(|e| format!("{ns}: {s}: {}", e.to_string().trim()))
        })
        .collect()
}

fn topology(lab: &Path, clients: u32) -> anyhow::Result<(Topo, Vec<String>)> {
    let mut t = Topo {
        ns: Vec::new(),
        servers: Vec::new(),
    };
    let all: Vec<String> = std::iter::once(S.to_string())
        .chain((0..clients).map(client_ns))
        .collect();
    for n in &all {
        let _ = Command::new("ip")
            .args(["netns", "del", n])
            .stderr(Stdio::null())
            .status();
    }
    let mut notes = Vec::new();
    for n in &all {
        sh(&["ip", "netns", "add", n])?;
        t.ns.push(n.clone());
        sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        // Conntrack is not loaded in these namespaces (no rules): the
        // limit is raised anyway in case a rule elsewhere loads it.
        notes.extend(sysctls(n, &["net.netfilter.nf_conntrack_max=1048576"]));
    }
    notes.extend(sysctls(
        S,
        &[
            "net.core.somaxconn=65535",
            "net.ipv4.tcp_max_syn_backlog=65535",
        ],
    ));
    for i in 0..clients {
        let c = client_ns(i);
        let (cip, sip) = addrs(i);
        let (cdev, sdev) = (format!("dwsc{i}"), format!("dwss{i}"));
        sh(&[
            "ip", "link", "add", &cdev, "netns", &c, "type", "veth", "peer", "name", &sdev,
            "netns", S,
        ])?;
        for (n, dev, ip) in [(&c, &cdev, &cip), (&S.to_string(), &sdev, &sip)] {
            sh(&[
                "ip",
                "-n",
                n,
                "addr",
                "add",
                &format!("{ip}/30"),
                "dev",
                dev,
            ])?;
            sh(&["ip", "-n", n, "link", "set", dev, "up"])?;
        }
        notes.extend(sysctls(
            &c,
            &[
                "net.ipv4.ip_local_port_range=1024 65535",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        ));
    }
    // One server process per client namespace, on that veth's address: a
    // process's descriptors are bounded by its hard limit, which only
    // CAP_SYS_RESOURCE raises.
    for i in 0..clients {
        let (_, sip) = addrs(i);
        t.servers.push(
            Command::new("ip")
                .args(["netns", "exec", S])
                .arg(lab)
                .args(["bench-server", "--listen", &format!("{sip}:{PORT}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("drainwatch-lab bench-server")?,
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok((t, notes))
}

/// The hard limit on open files of processes started from here (they
/// inherit it; raising it needs CAP_SYS_RESOURCE).
fn nofile_hard_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_nofile_hard(&limits)
}

/// The "Max open files" hard limit from /proc/PID/limits.
pub fn parse_nofile_hard(limits: &str) -> Option<u64> {
    let l = limits.lines().find(|l| l.starts_with("Max open files"))?;
    l.split_whitespace().nth(4)?.parse().ok()
}

/// The daemon under test, its output in a file.
struct Daemon {
    child: Child,
    out: std::path::PathBuf,
}

impl Daemon {
    fn start(dw: &Path, o: &Opts, dir: &Path) -> anyhow::Result<Daemon> {
        let out = dir.join("scale-daemon.log");
        let f = std::fs::File::create(&out).context("daemon log")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", S])
            .arg(dw)
            .args([
                "run",
                "--netns",
                "self",
                "--output",
                "none",
                "--no-kube",
                "--metrics-addr",
                METRICS,
            ])
            .env(
                "DRAINWATCH_LOG",
                "info,drainwatch::sources::wire_stats=debug",
            );
        if let Some(n) = o.flow_table {
            cmd.args(["--flow-table", &n.to_string()]);
        }
        if let Some(n) = o.ringbuf_bytes {
            cmd.args(["--ringbuf-bytes", &n.to_string()]);
        }
        let child = cmd
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("starting drainwatch")?;
        let mut d = Daemon { child, out };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.log().contains("drainwatch ready") {
            if Instant::now() > deadline {
                bail!("drainwatch did not start in 60 s: {}", d.log());
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                bail!("drainwatch exited ({st}): {}", d.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(d)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        sh(&[
            "ip",
            "netns",
            "exec",
            S,
            "curl",
            "-sf",
            &format!("http://{METRICS}/metrics"),
        ])
        .unwrap_or_default()
    }

    /// A snapshot of the daemon: process CPU, RSS, maps, programs, metrics.
    fn sample(&self, label: &str, t0: Instant) -> Value {
        let pid = self.child.id();
        let mut s = proc_usage(pid);
        let m = self.metrics();
        let v = |name: &str| metric(&m, name);
        s["label"] = json!(label);
        s["t_s"] = json!(t0.elapsed().as_secs_f64());
        s["flow_entries"] = json!(v("drainwatch_flow_table_entries"));
        s["flow_evictions"] = json!(v("drainwatch_flow_evictions_total"));
        s["flow_table_size"] = json!(v("drainwatch_flow_table_size"));
        s["socks_entries"] = json!(v("drainwatch_map_entries{map=\"socks\"}"));
        s["socks_capacity"] = json!(v("drainwatch_socket_table_size"));
        s["socks_full"] = json!(v("drainwatch_socket_table_full_total"));
        s["flows_map_entries"] = json!(v("drainwatch_map_entries{map=\"flows\"}"));
        s["events"] = json!(metric_sum(&m, "drainwatch_events_total{"));
        s["lost"] = json!(metric_sum(&m, "drainwatch_events_lost_total{"));
        s["wire_resets"] = json!(metric_sum(&m, "drainwatch_wire_resets_total{"));
        s["events_by_kind"] = json!(
            m.lines()
                .filter(|l| {
                    l.starts_with("drainwatch_events_total{")
                        || l.starts_with("drainwatch_events_lost_by_kind_total{")
                })
                .map(str::to_string)
                .collect::<Vec<_>>()
        );
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { kill(self.child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one exact series (0 when absent).
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The sum of every series starting with `prefix`.
pub(crate) fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One BPF map as its fdinfo shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MapInfo {
    pub map_type: u32,
    pub key_size: u64,
    pub value_size: u64,
    pub max_entries: u64,
    pub memlock: u64,
}

/// A map fd's fdinfo text (None for any other fd).
pub fn parse_map_fdinfo(text: &str) -> Option<MapInfo> {
    let field = |k: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
    };
    Some(MapInfo {
        map_type: u32::try_from(field("map_type:")?).ok()?,
        key_size: field("key_size:")?,
        value_size: field("value_size:")?,
        max_entries: field("max_entries:")?,
        memlock: field("memlock:")?,
    })
}

/// A program fd's run statistics (None for any other fd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgStats {
    /// `enum bpf_prog_type`: 3 sched_cls (TC), 5 tracepoint, ...
    pub prog_type: u32,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// A program fd's fdinfo text (None for any other fd).
pub fn parse_prog_fdinfo(text: &str) -> Option<ProgStats> {
    let field = |k: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
    };
    Some(ProgStats {
        prog_type: u32::try_from(field("prog_type:")?).ok()?,
        run_time_ns: field("run_time_ns:").unwrap_or(0),
        run_cnt: field("run_cnt:").unwrap_or(0),
    })
}

/// Run time and runs of a process's programs, by program type (3: TC,
/// 5: tracepoint).
pub fn prog_stats_by_type(pid: u32) -> std::collections::BTreeMap<u32, (u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in dir.flatten() {
            if let Some(p) = std::fs::read_to_string(e.path())
                .ok()
                .as_deref()
                .and_then(parse_prog_fdinfo)
            {
                let t: &mut (u64, u64) = out.entry(p.prog_type).or_default();
                t.0 += p.run_time_ns;
                t.1 += p.run_cnt;
            }
        }
    }
    out
}

/// Process CPU seconds, RSS, every map (deduplicated by map id) and the
/// programs' kernel time.
fn proc_usage(pid: u32) -> Value {
    let mut cpu_s = 0.0;
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        && let Some((_, rest)) = stat.rsplit_once(')')
    {
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        cpu_s = (n(11) + n(12)) / 100.0;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0)
    };
    let mut maps = std::collections::BTreeMap::new();
    let (mut bpf_ns, mut bpf_runs) = (0u64, 0u64);
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for e in dir.flatten() {
            let Ok(info) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if let Some(p) = parse_prog_fdinfo(&info) {
                bpf_ns += p.run_time_ns;
                bpf_runs += p.run_cnt;
            } else if let Some(m) = parse_map_fdinfo(&info) {
                let id = info
                    .lines()
                    .find_map(|l| l.strip_prefix("map_id:"))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default();
                maps.insert(id, m);
            }
        }
    }
    let memlock: u64 = maps.values().map(|m| m.memlock).sum();
    json!({
        "cpu_s": cpu_s,
        "rss_mib": kib("VmRSS:") / 1024.0,
        "rss_peak_mib": kib("VmHWM:") / 1024.0,
        "maps_mib": memlock as f64 / 1048576.0,
        "bpf_s": bpf_ns as f64 / 1e9,
        "bpf_runs": bpf_runs,
        "maps": maps.values().map(|m| json!({
            "type": m.map_type, "key": m.key_size, "value": m.value_size,
            "max_entries": m.max_entries, "memlock": m.memlock,
        })).collect::<Vec<_>>(),
    })
}

/// The walk times (µs) and entries from the daemon's "flow table walked"
/// lines.
pub fn parse_walks(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter(|l| l.contains("flow table walked"))
        .map(strip_ansi)
        .filter_map(|l| {
            let kv = |k: &str| -> Option<u64> {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.parse().ok())
            };
            Some((kv("entries=")?, kv("micros=")?))
        })
        .collect()
}

/// A log line without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut it = l.chars();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            for d in it.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A generator in a client namespace: its JSON result at the end, and
/// "HELD n" on stderr once all its connections are open.
struct Gen {
    child: Child,
}

fn spawn_gen(
    lab: &Path,
    ns: &str,
    args: &[String],
    held: Option<mpsc::Sender<u64>>,
    log: &Path,
) -> anyhow::Result<Gen> {
    let mut log = std::fs::File::create(log).context("generator log")?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(lab)
        .arg("bench-load")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("bench-load")?;
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let (Some(tx), Some(n)) = (
                    &held,
                    line.strip_prefix("HELD ")
                        .and_then(|n| n.trim().parse().ok()),
                ) {
                    let _ = tx.send(n);
                }
            }
        });
    }
    Ok(Gen { child })
}

impl Gen {
    fn result(mut self) -> anyhow::Result<Value> {
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        let st = self.child.wait()?;
        if !st.success() {
            bail!("bench-load failed ({st}): {out}");
        }
        serde_json::from_str(out.trim()).with_context(|| format!("bench-load printed {out:?}"))
    }
}

/// Runs the scale bench; writes scale.md and scale.json.
pub fn run(dw: &Path, lab: &Path, o: &Opts, out_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let per_client = o.connections.div_ceil(u64::from(o.clients));
    // Each client namespace's generator and its server hold its share of
    // the connections (plus the churn's, for the first): both within a
    // process's descriptor limit and the source address's ports.
    let fds = nofile_hard_limit().unwrap_or(u64::MAX);
    let most = fds.saturating_sub(1000).min(60_000);
    if per_client > most {
        bail!(
            "{} connections over {} client namespaces is {per_client} per source address and per process; at most {most} fit (ephemeral ports, and this host's hard limit of {fds} open files per process): add --clients",
            o.connections,
            o.clients
        );
    }
    let _stats = BpfStats::enable()?;
    let (topo, notes) = topology(lab, o.clients)?;
    let daemon = Daemon::start(dw, o, out_dir)?;
    std::thread::sleep(Duration::from_secs(6));
    let t0 = Instant::now();
    let mut samples = vec![daemon.sample("idle, before", t0)];
    let open_secs = o.connections as f64 / o.open_rate + 30.0;
    let (tx, rx) = mpsc::channel();
    let mut gens = Vec::new();
    for i in 0..o.clients {
        let (_, sip) = addrs(i);
        let args: Vec<String> = [
            "--target",
            &format!("{sip}:{PORT}"),
            "--mode",
            "hold",
            "--concurrency",
            "64",
            "--count",
            &per_client.to_string(),
            "--rate",
            &format!("{}", o.open_rate / f64::from(o.clients)),
            "--seconds",
            &format!("{open_secs}"),
            "--hold-seconds",
            &format!("{}", o.hold_seconds),
            "--ping-seconds",
            &format!("{}", o.ping_seconds),
            "--reset-fraction",
            &format!("{}", o.reset_fraction),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        gens.push(spawn_gen(
            lab,
            &client_ns(i),
            &args,
            Some(tx.clone()),
            &out_dir.join(format!("scale-gen{i}.log")),
        )?);
    }
    drop(tx);
    // Every generator says HELD once its share is open.
    let mut held = 0u64;
    let deadline = Instant::now() + Duration::from_secs_f64(open_secs + 30.0);
    for _ in 0..o.clients {
        let left = deadline.saturating_duration_since(Instant::now());
        held += rx
            .recv_timeout(left)
            .context("a generator did not finish opening its connections")?;
    }
    let open_s = t0.elapsed().as_secs_f64();
    eprintln!("scale: {held} connections held after {open_s:.1} s");
    samples.push(daemon.sample("all open", t0));
    // Churn in the middle of the hold, at a fixed rate, with its own count.
    let churn_secs = (o.hold_seconds - 10.0).max(1.0);
    let churn = if o.churn_rate > 0.0 {
        let (_, sip) = addrs(0);
        let args: Vec<String> = [
            "--target",
            &format!("{sip}:{PORT}"),
            "--mode",
            "conn-rr",
            "--concurrency",
            "32",
            "--rate",
            &format!("{}", o.churn_rate),
            "--count",
            &((o.churn_rate * churn_secs * 2.0).ceil() as u64).to_string(),
            "--seconds",
            &format!("{churn_secs}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Some(spawn_gen(
            lab,
            &client_ns(0),
            &args,
            None,
            &out_dir.join("scale-churn.log"),
        )?)
    } else {
        None
    };
    // Samples while held: after each of the daemon's 5 s walks, and after
    // the occupancy walk (15 s) has counted the socket map.
    let hold_end = Instant::now() + Duration::from_secs_f64(o.hold_seconds);
    let mut k = 0;
    while Instant::now() + Duration::from_secs(6) < hold_end {
        std::thread::sleep(Duration::from_secs(5));
        k += 1;
        samples.push(daemon.sample(&format!("held +{}s", k * 5), t0));
    }
    let churn_r = churn.map(Gen::result).transpose()?;
    let mut results = Vec::new();
    for g in gens {
        results.push(g.result()?);
    }
    let burst_done = t0.elapsed().as_secs_f64();
    // The reset burst's events drained, and one more walk.
    std::thread::sleep(Duration::from_secs(7));
    samples.push(daemon.sample("after the burst and the closes", t0));
    let log = daemon.log();
    drop(daemon);
    let conntrack = sh(&[
        "ip",
        "netns",
        "exec",
        S,
        "sh",
        "-c",
        "cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo absent",
    ])
    .unwrap_or_default();
    drop(topo);
    report(&Report {
        o,
        held,
        open_s,
        burst_done,
        samples: &samples,
        results: &results,
        churn: churn_r.as_ref(),
        walks: &parse_walks(&log),
        notes: &notes,
        conntrack: conntrack.trim(),
        out_dir,
    })
}

struct Report<'a> {
    o: &'a Opts,
    held: u64,
    open_s: f64,
    burst_done: f64,
    samples: &'a [Value],
    results: &'a [Value],
    churn: Option<&'a Value>,
    walks: &'a [(u64, u64)],
    notes: &'a [String],
    conntrack: &'a str,
    out_dir: &'a Path,
}

/// Bytes per entry of a preallocated map.
pub fn per_entry(memlock: u64, max_entries: u64) -> f64 {
    if max_entries == 0 {
        0.0
    } else {
        memlock as f64 / max_entries as f64
    }
}

fn report(r: &Report) -> anyhow::Result<()> {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let sum = |k: &str| -> f64 { r.results.iter().map(|v| f(v, k)).sum() };
    let first = &r.samples[0];
    let last = &r.samples[r.samples.len() - 1];
    let held_samples: Vec<&Value> = r
        .samples
        .iter()
        .filter(|s| s["label"].as_str().is_some_and(|l| l.starts_with("held")))
        .collect();
    let peak = |k: &str| r.samples.iter().map(|s| f(s, k)).fold(0.0, f64::max);
    let min_held = |k: &str| {
        held_samples
            .iter()
            .map(|s| f(s, k))
            .fold(f64::MAX, f64::min)
    };
    // The socket table evicts nothing, so its last count while held is the
    // measure; its 15 s count lags, so the minimum would show the opening.
    let last_held = |k: &str| held_samples.last().map(|s| f(s, k)).unwrap_or(0.0);
    let cap = f(last, "flow_table_size");
    // Walk times once everything was open (the table at its fullest).
    let mut big: Vec<f64> = r
        .walks
        .iter()
        .filter(|(e, _)| *e as f64 >= 0.9 * (r.held as f64).min(cap))
        .map(|(_, us)| *us as f64 / 1000.0)
        .collect();
    let walk_max = big.iter().copied().fold(0.0, f64::max);
    let walk_med = median(&mut big);
    let (mut cpu_hold, mut bpf_hold) = (0.0, 0.0);
    if let (Some(a), Some(b)) = (held_samples.first(), held_samples.last()) {
        let dt = f(b, "t_s") - f(a, "t_s");
        if dt > 0.0 {
            cpu_hold = (f(b, "cpu_s") - f(a, "cpu_s")) / dt * 100.0;
            bpf_hold = (f(b, "bpf_s") - f(a, "bpf_s")) / dt * 100.0;
        }
    }
    let lost = f(last, "lost") - f(first, "lost");
    let evictions = f(last, "flow_evictions");
    let maps = last["maps"].as_array().cloned().unwrap_or_default();
    let mut map_rows = String::new();
    for m in maps.iter().filter(|m| f(m, "memlock") >= 1_048_576.0) {
        map_rows.push_str(&format!(
            "| type {} key {} B value {} B | {} | {:.1} | {:.0} |\n",
            m["type"],
            m["key"],
            m["value"],
            m["max_entries"],
            f(m, "memlock") / 1048576.0,
            per_entry(
                m["memlock"].as_u64().unwrap_or(0),
                m["max_entries"].as_u64().unwrap_or(0)
            ),
        ));
    }
    let rss_held = held_samples
        .iter()
        .map(|s| f(s, "rss_mib"))
        .fold(0.0, f64::max);
    let rss_per_conn_b = if r.held > 0 {
        (rss_held - f(first, "rss_mib")) * 1048576.0 / r.held as f64
    } else {
        0.0
    };
    let mut md = format!(
        "Machine: {}. drainwatch in the server namespace (`--netns self`, classifier on {} veths{}); {} client namespaces.\n\n",
        machine(),
        r.o.clients,
        r.o.flow_table
            .map(|n| format!(", --flow-table {n}"))
            .unwrap_or_else(|| ", default flow table".into())
            + &r.o
                .ringbuf_bytes
                .map(|n| format!(", --ringbuf-bytes {n}"))
                .unwrap_or_else(|| ", default ring buffer".into()),
        r.o.clients
    );
    md.push_str(&format!(
        "| figure | value |\n|---|---|\n\
         | connections asked / opened / held at once | {} / {:.0} / {} (connect errors {:.0}, exchange errors {:.0}) |\n\
         | opening at {:.0}/s took | {:.1} s |\n\
         | held for | {:.0} s, a 1-byte exchange per connection every {:.0} s ({:.0} exchanges) |\n\
         | churn while held | {} |\n\
         | reset burst (SO_LINGER 0, at once) | {:.0} connections; the rest closed with FIN |\n\
         | flow table: capacity / entries while held (min) | {cap:.0} / {:.0} |\n\
         | flow-table evictions (daemon counter, whole run) | {evictions:.0} |\n\
         | open flows missing from the flow table while held (held - entries, >= 0) | {:.0} |\n\
         | socket table (SOCKS): capacity / entries at the last count while held | {:.0} / {:.0} |\n\
         | held connections missing from the socket table then (>= 0) / sockets it refused (daemon counter) | {:.0} / {:.0} |\n\
         | events received / lost (whole run) | {:.0} / {lost:.0} |\n\
         | flow-table walk (5 s) at >= 90 % of the table: median / max | {walk_med:.1} ms / {walk_max:.1} ms ({} walks) |\n\
         | daemon CPU while held (process / its BPF programs) | {cpu_hold:.2} % / {bpf_hold:.2} % of one CPU |\n\
         | daemon CPU, whole run (process / BPF) | {:.2} s / {:.2} s |\n\
         | RSS: idle before / peak / while held | {:.1} / {:.1} / {rss_held:.1} MiB |\n\
         | RSS added per held connection | {rss_per_conn_b:.0} B |\n\
         | BPF maps (memlock, all maps) | {:.1} MiB |\n\
         | conntrack entries in the server namespace after | {} |\n\n",
        r.o.connections,
        sum("connections"),
        r.held,
        sum("connect_errors"),
        sum("hold_errors"),
        r.o.open_rate,
        r.open_s,
        r.o.hold_seconds,
        r.o.ping_seconds,
        sum("requests") - sum("connections"),
        match r.churn {
            Some(c) => format!(
                "{:.0} new connections at {:.0}/s offered ({:.0}/s achieved, {:.0} connect errors)",
                f(c, "connections"),
                r.o.churn_rate,
                f(c, "rate"),
                f(c, "connect_errors")
            ),
            None => "none".into(),
        },
        sum("reset"),
        min_held("flow_entries"),
        (r.held as f64 - min_held("flow_entries")).max(0.0),
        f(last, "socks_capacity"),
        last_held("socks_entries"),
        (r.held as f64 - last_held("socks_entries")).max(0.0),
        f(last, "socks_full"),
        f(last, "events") - f(first, "events"),
        r.walks.len(),
        f(last, "cpu_s") - f(first, "cpu_s"),
        f(last, "bpf_s") - f(first, "bpf_s"),
        f(first, "rss_mib"),
        peak("rss_peak_mib"),
        f(last, "maps_mib"),
        r.conntrack,
    ));
    md.push_str("Maps of 1 MiB or more (preallocated: their memory does not grow with traffic):\n\n| map | max_entries | MiB | bytes per entry |\n|---|---|---|---|\n");
    md.push_str(&map_rows);
    md.push_str(&format!(
        "\nThe flow table's entries are counted by its 5 s walk; the socket table's by the 15 s occupancy walk. The socket table evicts nothing: when full it refuses new sockets, counted by the daemon. Burst at {:.0} s after the start of opening.\n",
        r.burst_done
    ));
    for n in r.notes {
        md.push_str(&format!("\nnot set: {n}"));
    }
    md.push('\n');
    let mdp = r.out_dir.join("scale.md");
    let jp = r.out_dir.join("scale.json");
    std::fs::write(&mdp, &md)?;
    std::fs::write(
        &jp,
        serde_json::to_string_pretty(&json!({
            "machine": machine(), "connections": r.o.connections, "clients": r.o.clients,
            "open_rate": r.o.open_rate, "hold_seconds": r.o.hold_seconds,
            "flow_table": r.o.flow_table, "held": r.held, "open_s": r.open_s,
            "samples": r.samples, "generators": r.results, "churn": r.churn,
            "walks": r.walks.iter().map(|(e, us)| json!({"entries": e, "micros": us})).collect::<Vec<_>>(),
            "notes": r.notes,
        }))?,
    )?;
    println!("{md}");
    println!("written: {} and {}", mdp.display(), jp.display());
    if lost > 0.0 {
        bail!("{lost} events lost");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_fdinfo_fields() {
        let t = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nmap_type:\t9\nkey_size:\t40\nvalue_size:\t96\nmax_entries:\t65536\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t9441280\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(
            parse_map_fdinfo(t),
            Some(MapInfo {
                map_type: 9,
                key_size: 40,
                value_size: 96,
                max_entries: 65536,
                memlock: 9_441_280,
            })
        );
        assert_eq!(parse_map_fdinfo("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn prog_fdinfo_fields() {
        let t = "pos:\t0\nprog_type:\t5\nprog_jited:\t1\nrun_time_ns:\t123456\nrun_cnt:\t789\n";
        assert_eq!(
            parse_prog_fdinfo(t),
            Some(ProgStats {
                prog_type: 5,
                run_time_ns: 123_456,
                run_cnt: 789
            })
        );
        assert_eq!(parse_prog_fdinfo("map_type:\t9\n"), None);
    }

    #[test]
    fn walk_lines_give_entries_and_micros() {
        let log = "2026-12-07T14:00:00Z DEBUG drainwatch::sources::wire_stats: flow table walked entries=100000 removed=3 evicted=0 micros=41234\nother line\n2026-12-07T14:00:05Z DEBUG drainwatch::sources::wire_stats: flow table walked entries=12 removed=0 evicted=0 micros=90\n";
        assert_eq!(parse_walks(log), vec![(100_000, 41_234), (12, 90)]);
        let coloured = "\u{1b}[2mdrainwatch::sources::wire_stats\u{1b}[0m: flow table walked \u{1b}[3mentries\u{1b}[0m\u{1b}[2m=\u{1b}[0m20000 \u{1b}[3mmicros\u{1b}[0m\u{1b}[2m=\u{1b}[0m19198";
        assert_eq!(parse_walks(coloured), vec![(20_000, 19_198)]);
    }

    #[test]
    fn series_match_exactly() {
        let m = "drainwatch_map_entries{map=\"socks\"} 65536\ndrainwatch_map_entries{map=\"socks_x\"} 1\ndrainwatch_flow_table_entries 7\n";
        assert_eq!(metric(m, "drainwatch_map_entries{map=\"socks\"}"), 65536.0);
        assert_eq!(metric(m, "drainwatch_flow_table_entries"), 7.0);
        assert_eq!(metric(m, "drainwatch_flow_table"), 0.0);
    }

    #[test]
    fn open_files_hard_limit() {
        let l = "Limit                     Soft Limit           Hard Limit           Units     \nMax cpu time              unlimited            unlimited            seconds   \nMax open files            20000                20000                files     \n";
        assert_eq!(parse_nofile_hard(l), Some(20000));
        assert_eq!(
            parse_nofile_hard("Max open files unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn bytes_per_entry() {
        assert_eq!(per_entry(9_441_280, 65536), 144.0625);
        assert_eq!(per_entry(1, 0), 0.0);
    }
}
