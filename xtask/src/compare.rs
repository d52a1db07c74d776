//! `cargo xtask bench compare`: drainwatch against what people use instead,
//! on the same bounded load, in one run, interleaved and repeated.
//!
//! Configurations: C0 no observer; C1 drainwatch (tracepoints + TC, and
//! tracepoints only); C2 tcpdump writing a pcap of port 6443; C3 bpftrace on
//! `sock:inet_sock_set_state` (printing every event, and counting only);
//! C4 bcc's tcpstates and tcplife (Debian's bpfcc-tools). Workloads from
//! `drainwatch-lab bench-load` (the ground truth): connection churn, 1-byte
//! request/response and bulk, between two namespaces over a veth
//! (198.18.251.0/30) and churn over the client namespace's loopback.
//!
//! Per workload and configuration: the generator's rate, throughput and p99
//! relative to C0; CPU per connection or request (the observer process's
//! user+system time plus the kernel time of its BPF programs, from
//! `kernel.bpf_stats_enabled` and each program fd's fdinfo); the events it
//! delivered against the generator's count (drainwatch: received + counted
//! lost); the observer's RSS after the run and at its peak, and BPF map memory. Median and spread
//! (max - min) over the rounds. Markdown and JSON go to target/bench/.
//! Every load is bounded (count and seconds) and everything created is
//! removed at the end.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::bench::{NsPair, kill, median, sh, spread};

pub(crate) const C: &str = "dwcmp-c";
const S: &str = "dwcmp-s";
const C_IP: &str = "198.18.251.1";
pub(crate) const S_IP: &str = "198.18.251.2";
pub(crate) const PORT: &str = "6443";

/// The bench's namespaces: bench servers on the veth and on the client's
/// loopback, the apiserver stand-in's h2c port; removed on drop.
pub(crate) fn topology(lab: &Path) -> anyhow::Result<NsPair> {
    let mut t = NsPair::new([(C, "dwcc0", C_IP), (S, "dwcs0", S_IP)])?;
    for ns in [C, S] {
        // Churn needs ports: the whole range, and TIME_WAIT reuse.
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ])?;
    }
    for (ns, addr) in [
        (S, format!("{S_IP}:{PORT}")),
        (C, format!("127.0.0.1:{PORT}")),
    ] {
        t.servers.push(
            Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(lab)
                .args(["bench-server", "--listen", &addr])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("drainwatch-lab bench-server")?,
        );
    }
    // HTTP/2 cleartext requests: the lab's apiserver stand-in (hyper), on
    // 443 (also watched), for h2load.
    let pki = std::env::temp_dir().join("dwcmp-pki");
    t.servers.push(
        Command::new("ip")
            .args(["netns", "exec", S])
            .arg(lab)
            .args([
                "apiserver",
                "--name",
                "bench",
                "--listen",
                &format!("{S_IP}:8443"),
                "--h2c-listen",
                &format!("{S_IP}:443"),
                "--startup-delay",
                "0s",
                "--tls-dir",
            ])
            .arg(&pki)
            .arg("--truth")
            .arg(pki.join("lifecycle.jsonl"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("drainwatch-lab apiserver")?,
    );
    std::thread::sleep(Duration::from_millis(1500));
    Ok(t)
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Cfg {
    None,
    DrainwatchFull,
    DrainwatchTp,
    /// The same two with `--baseline BIN` (an earlier build), interleaved
    /// with the current one in the same rounds: a regression check that
    /// run-to-run noise (±15-25 % here) cannot hide.
    BaselineFull,
    BaselineTp,
    Tcpdump,
    BpftracePrint,
    BpftraceCount,
    Tcpstates,
    Tcplife,
}

impl Cfg {
    const ALL: [Cfg; 10] = [
        Cfg::None,
        Cfg::DrainwatchFull,
        Cfg::DrainwatchTp,
        Cfg::BaselineFull,
        Cfg::BaselineTp,
        Cfg::Tcpdump,
        Cfg::BpftracePrint,
        Cfg::BpftraceCount,
        Cfg::Tcpstates,
        Cfg::Tcplife,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Cfg::None => "C0 none",
            Cfg::DrainwatchFull => "C1 drainwatch (tp + TC)",
            Cfg::DrainwatchTp => "C1 drainwatch (tp only)",
            Cfg::BaselineFull => "C1b baseline build (tp + TC)",
            Cfg::BaselineTp => "C1b baseline build (tp only)",
            Cfg::Tcpdump => "C2 tcpdump -w",
            Cfg::BpftracePrint => "C3 bpftrace (print)",
            Cfg::BpftraceCount => "C3 bpftrace (count)",
            Cfg::Tcpstates => "C4 tcpstates-bpfcc",
            Cfg::Tcplife => "C4 tcplife-bpfcc",
        }
    }
}

impl Cfg {
    fn is_drainwatch(self) -> bool {
        matches!(
            self,
            Cfg::DrainwatchFull | Cfg::DrainwatchTp | Cfg::BaselineFull | Cfg::BaselineTp
        )
    }
}

const BT_PRINT: &str = "tracepoint:sock:inet_sock_set_state /args->protocol == 6 && (args->sport == 6443 || args->dport == 6443)/ { printf(\"%d %d %d %d\\n\", pid, args->oldstate, args->newstate, args->sport); }";
const BT_COUNT: &str = "tracepoint:sock:inet_sock_set_state /args->protocol == 6 && (args->sport == 6443 || args->dport == 6443)/ { @n[args->newstate] = count(); }";

/// A running observer: its process, and how to read what it delivered.
pub(crate) struct Observer {
    cfg: Cfg,
    child: Option<Child>,
    metrics: Option<String>,
    out: PathBuf,
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Observer {
    pub(crate) fn start(cfg: Cfg, dw: &Path, dir: &Path) -> anyhow::Result<Observer> {
        let out = dir.join(format!(
            "obs-{}.out",
            cfg.name().split(' ').next().unwrap_or("x")
        ));
        let f = std::fs::File::create(&out).context("observer output")?;
        let ferr = f.try_clone()?;
        let mut metrics = None;
        // drainwatch (its TC classifier) and tcpdump attach to the client
        // namespace's interfaces; bpftrace and bcc need the host's tracefs
        // (`ip netns exec` remounts /sys) and see every namespace anyway.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", C]);
        let host = |prog: &str| Command::new(prog);
        match cfg {
            Cfg::None => {
                return Ok(Observer {
                    cfg,
                    child: None,
                    metrics,
                    out,
                });
            }
            Cfg::DrainwatchFull | Cfg::DrainwatchTp | Cfg::BaselineFull | Cfg::BaselineTp => {
                let addr = "127.0.0.1:19977";
                metrics = Some(format!("http://{addr}/metrics"));
                cmd.arg(dw).args([
                    "run",
                    "--netns",
                    "self",
                    "--output",
                    "none",
                    "--no-kube",
                    "--metrics-addr",
                    addr,
                    // Per-program figures; the kernel's statistics are on
                    // for the whole bench anyway.
                    "--bpf-stats",
                ]);
                if matches!(cfg, Cfg::DrainwatchTp | Cfg::BaselineTp) {
                    cmd.arg("--no-wire");
                }
            }
            Cfg::Tcpdump => {
                cmd.args(["tcpdump", "-i", "any", "-s", "128", "-w"])
                    .arg(dir.join("bench.pcap"))
                    .args(["tcp", "port", PORT]);
            }
            Cfg::BpftracePrint => {
                cmd = host("bpftrace");
                cmd.args(["-e", BT_PRINT]);
            }
            Cfg::BpftraceCount => {
                cmd = host("bpftrace");
                cmd.args(["-e", BT_COUNT]);
            }
            Cfg::Tcpstates => {
                cmd = host("tcpstates-bpfcc");
                cmd.args(["-L", PORT]);
            }
            Cfg::Tcplife => {
                cmd = host("tcplife-bpfcc");
                cmd.args(["-L", PORT]);
            }
        }
        let child = cmd
            .stdout(f)
            .stderr(ferr)
            .spawn()
            .with_context(|| format!("starting {}", cfg.name()))?;
        let o = Observer {
            cfg,
            child: Some(child),
            metrics,
            out,
        };
        o.wait_ready()?;
        Ok(o)
    }

    /// Until the observer has attached (its programs are loaded).
    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            let ready = match self.cfg {
                Cfg::DrainwatchFull | Cfg::DrainwatchTp | Cfg::BaselineFull | Cfg::BaselineTp => {
                    text.contains("drainwatch ready")
                }
                Cfg::Tcpdump => text.contains("listening on"),
                Cfg::BpftracePrint | Cfg::BpftraceCount => text.contains("Attaching"),
                Cfg::Tcpstates => text.contains("SKADDR") || text.contains("C-PID"),
                Cfg::Tcplife => text.contains("PID") && text.contains("COMM"),
                Cfg::None => true,
            };
            if ready {
                // bpftrace prints "Attaching" just before attaching.
                std::thread::sleep(Duration::from_millis(500));
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not start in 60 s: {text}", self.cfg.name());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        // `ip netns exec` execs the tool: same pid.
        self.child.as_ref().map(Child::id)
    }

    /// CPU seconds (user + system), BPF program ns, peak and current RSS
    /// KiB, BPF map KiB.
    pub(crate) fn usage(&self) -> Usage {
        let Some(pid) = self.pid() else {
            return Usage::default();
        };
        let mut u = Usage::default();
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the ")" of comm: utime is 14th, stime 15th overall.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let tick = 100.0; // USER_HZ
                let ut = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                let st = f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                u.cpu_s = (ut + st) / tick;
            }
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let kib = |key: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                    .unwrap_or(0.0)
            };
            u.rss_kib = kib("VmHWM:");
            u.rss_now_kib = kib("VmRSS:");
        }
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
            for e in dir.flatten() {
                let Ok(info) = std::fs::read_to_string(e.path()) else {
                    continue;
                };
                let field = |k: &str| {
                    info.lines()
                        .find(|l| l.starts_with(k))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                };
                if info.contains("prog_type:") {
                    u.bpf_ns += field("run_time_ns:").unwrap_or(0.0);
                } else if info.contains("map_type:") {
                    u.map_kib += field("memlock:").unwrap_or(0.0) / 1024.0;
                }
            }
        }
        u
    }

    /// The daemon's metrics now (drainwatch only).
    pub(crate) fn scrape(&self) -> anyhow::Result<String> {
        let url = self
            .metrics
            .as_deref()
            .context("not a drainwatch observer")?;
        sh(&["ip", "netns", "exec", C, "curl", "-sf", url])
    }

    /// Events delivered so far, and events counted as lost (drainwatch).
    pub(crate) fn delivered(&self) -> (f64, f64) {
        match self.cfg {
            c if c.is_drainwatch() => {
                let Some(url) = &self.metrics else {
                    return (0.0, 0.0);
                };
                let text = sh(&["ip", "netns", "exec", C, "curl", "-sf", url]).unwrap_or_default();
                (
                    metric_sum(&text, "drainwatch_events_total{"),
                    metric_sum(&text, "drainwatch_events_lost_total{"),
                )
            }
            Cfg::BpftracePrint | Cfg::Tcpstates | Cfg::Tcplife => {
                let text = std::fs::read_to_string(&self.out).unwrap_or_default();
                let lost: f64 = text
                    .lines()
                    .filter_map(|l| {
                        l.strip_prefix("Lost ")
                            .or_else(|| l.strip_prefix("Possibly lost "))
                            .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
                    })
                    .sum();
                (text.lines().count() as f64, lost)
            }
            _ => (0.0, 0.0),
        }
    }

    pub(crate) fn stop(mut self) -> String {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child (SIGINT: tools print their totals).
            unsafe { kill(c.id() as i32, 2) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Default, Clone, Copy)]
pub(crate) struct Usage {
    pub(crate) cpu_s: f64,
    pub(crate) bpf_ns: f64,
    rss_kib: f64,
    rss_now_kib: f64,
    map_kib: f64,
}

#[derive(Clone, Copy)]
struct Work {
    name: &'static str,
    /// `churn`, `rr`, `bulk` (drainwatch-lab bench-load) or `h2c` (h2load).
    mode: &'static str,
    target: &'static str,
    concurrency: u32,
}

const WORKS: [Work; 5] = [
    Work {
        name: "churn veth",
        mode: "churn",
        target: "198.18.251.2:6443",
        concurrency: 8,
    },
    Work {
        name: "churn loopback",
        mode: "churn",
        target: "127.0.0.1:6443",
        concurrency: 8,
    },
    Work {
        name: "1-byte rr veth",
        mode: "rr",
        target: "198.18.251.2:6443",
        concurrency: 4,
    },
    Work {
        name: "bulk veth",
        mode: "bulk",
        target: "198.18.251.2:6443",
        concurrency: 2,
    },
    Work {
        name: "h2c requests veth",
        mode: "h2c",
        target: "http://198.18.251.2:443/readyz",
        concurrency: 4,
    },
];

/// h2load's summary as the generator's result: requests per second; its
/// mean request time stands in for the latency (it prints no percentile).
fn h2load(w: Work, secs: f64) -> anyhow::Result<Value> {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        C,
        "h2load",
        "-c",
        &w.concurrency.to_string(),
        "-m",
        "8",
        "-D",
        &format!("{}", secs.ceil().max(1.0)),
        w.target,
    ])?;
    let num = |line: &str, after: &str| -> Option<f64> {
        line.split(after)
            .nth(1)?
            .split_whitespace()
            .next()?
            .trim_end_matches(',')
            .parse()
            .ok()
    };
    let rate = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| num(l, "s, "))
        .with_context(|| format!("h2load printed no rate: {out}"))?;
    let done = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| num(l, "started, "))
        .unwrap_or(0.0);
    let mean_us = out
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))
        .and_then(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            // time for request: MIN MAX MEAN SD +/-SD
            let t = v.get(5)?;
            let (n, unit) = t.split_at(t.find(|c: char| c.is_alphabetic())?);
            let n: f64 = n.parse().ok()?;
            Some(match unit {
                "us" => n,
                "ms" => n * 1e3,
                "s" => n * 1e6,
                _ => return None,
            })
        })
        .unwrap_or(0.0);
    Ok(json!({
        "rate": rate, "requests": done, "connections": w.concurrency,
        "bits_per_s": 0.0, "p99_us": mean_us,
    }))
}

fn load(lab: &Path, w: Work, secs: f64, count: u64) -> anyhow::Result<Value> {
    if w.mode == "h2c" {
        return h2load(w, secs);
    }
    bench_load(lab, w.target, w.mode, None, w.concurrency, secs, count)
}

/// Runs `drainwatch-lab bench-load` in the client namespace (at `rate`
/// units per second, or as fast as it can) and returns its JSON result.
pub(crate) fn bench_load(
    lab: &Path,
    target: &str,
    mode: &str,
    rate: Option<f64>,
    concurrency: u32,
    secs: f64,
    count: u64,
) -> anyhow::Result<Value> {
    let lab = lab.to_str().context("utf8 path")?;
    let (concurrency, secs, count) = (concurrency.to_string(), secs.to_string(), count.to_string());
    let mut args = vec![
        "ip",
        "netns",
        "exec",
        C,
        lab,
        "bench-load",
        "--target",
        target,
        "--mode",
        mode,
    ];
    args.extend([
        "--concurrency",
        &concurrency,
        "--seconds",
        &secs,
        "--count",
        &count,
    ]);
    let rate = rate.map(|r| r.to_string());
    if let Some(r) = &rate {
        args.extend(["--rate", r]);
    }
    let out = sh(&args)?;
    serde_json::from_str(out.trim()).with_context(|| format!("bench-load printed {out:?}"))
}

/// `kernel.bpf_stats_enabled` on while the bench runs, set back to what it
/// was on drop.
pub(crate) struct BpfStats(String);

impl BpfStats {
    pub(crate) fn enable() -> anyhow::Result<BpfStats> {
        let before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .unwrap_or_else(|_| "0".into());
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats(before))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", self.0.trim());
    }
}

pub(crate) fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn compare(
    dw: &Path,
    baseline: Option<&Path>,
    lab: &Path,
    rounds: u32,
    secs: f64,
    out_dir: &Path,
) -> anyhow::Result<()> {
    for t in [
        "tcpdump",
        "bpftrace",
        "tcpstates-bpfcc",
        "tcplife-bpfcc",
        "curl",
    ] {
        if !have(t) {
            bail!(
                "{t} is missing (cargo xtask bench installs bpftrace, bpfcc-tools, tcpdump, curl)"
            );
        }
    }
    std::fs::create_dir_all(out_dir)?;
    let _stats = BpfStats::enable()?;
    let topo = topology(lab)?;
    let count = 400_000u64;
    // samples[(work, cfg)] = per-round measurements
    let mut samples: BTreeMap<(usize, usize), Vec<Value>> = BTreeMap::new();
    // Configurations that cannot run on this machine, and why.
    let mut unavailable: BTreeMap<usize, String> = BTreeMap::new();
    for round in 0..rounds {
        for (ci, cfg) in Cfg::ALL.iter().enumerate() {
            if unavailable.contains_key(&ci) {
                continue;
            }
            let bin = match (cfg, baseline) {
                (Cfg::BaselineFull | Cfg::BaselineTp, Some(b)) => b,
                (Cfg::BaselineFull | Cfg::BaselineTp, None) => continue,
                _ => dw,
            };
            eprintln!("round {}/{rounds}: {}", round + 1, cfg.name());
            let obs = match Observer::start(*cfg, bin, out_dir) {
                Ok(o) => o,
                Err(e) => {
                    let why = format!("{e:#}");
                    let first = why
                        .lines()
                        .find(|l| l.contains("kernel headers") || l.contains("ERROR"))
                        .unwrap_or_else(|| why.lines().next().unwrap_or_default())
                        .to_string();
                    eprintln!("{}: unavailable here: {first}", cfg.name());
                    unavailable.insert(ci, first);
                    continue;
                }
            };
            for (wi, w) in WORKS.iter().enumerate() {
                let u0 = obs.usage();
                let (d0, l0) = obs.delivered();
                let r = load(lab, *w, secs, count)?;
                // Let the consumer drain what the load produced.
                std::thread::sleep(Duration::from_millis(700));
                let u1 = obs.usage();
                let (d1, l1) = obs.delivered();
                let units = match w.mode {
                    "churn" => r["connections"].as_f64().unwrap_or(0.0),
                    "rr" | "h2c" => r["requests"].as_f64().unwrap_or(0.0),
                    _ => r["bytes"].as_f64().unwrap_or(0.0) / 65536.0,
                };
                samples.entry((wi, ci)).or_default().push(json!({
                    "rate": r["rate"],
                    "bits_per_s": r["bits_per_s"],
                    "p99_us": r["p99_us"],
                    "connections": r["connections"],
                    "units": units,
                    "cpu_s": u1.cpu_s - u0.cpu_s,
                    "bpf_s": (u1.bpf_ns - u0.bpf_ns) / 1e9,
                    "rss_kib": u1.rss_kib,
                    "rss_now_kib": u1.rss_now_kib,
                    "map_kib": u1.map_kib,
                    "delivered": d1 - d0,
                    "lost": l1 - l0,
                }));
            }
            let _ = obs.stop();
        }
    }
    drop(topo);
    report(&samples, &unavailable, rounds, secs, out_dir)
}

fn report(
    samples: &BTreeMap<(usize, usize), Vec<Value>>,
    unavailable: &BTreeMap<usize, String>,
    rounds: u32,
    secs: f64,
    out_dir: &Path,
) -> anyhow::Result<()> {
    let get = |v: &[Value], k: &str| -> Vec<f64> {
        v.iter().map(|s| s[k].as_f64().unwrap_or(0.0)).collect()
    };
    let mut md = String::new();
    let mut rows = Vec::new();
    let machine = machine();
    md.push_str(&format!(
        "Machine: {machine}. {rounds} interleaved rounds of {secs} s per workload and configuration; median (spread = max - min).\n\n"
    ));
    for (wi, w) in WORKS.iter().enumerate() {
        let base = samples.get(&(wi, 0)).cloned().unwrap_or_default();
        let base_rate = median(&mut get(
            &base,
            if w.mode == "bulk" {
                "bits_per_s"
            } else {
                "rate"
            },
        ));
        let base_p99 = median(&mut get(&base, "p99_us"));
        md.push_str(&format!("### {}\n\n", w.name));
        md.push_str("| configuration | rate | vs C0 | p99 vs C0 | CPU per unit (user+sys, µs) | BPF per unit (µs) | events per unit | lost | RSS MiB (after the run / peak) | BPF maps MiB |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for (ci, cfg) in Cfg::ALL.iter().enumerate() {
            let Some(v) = samples.get(&(wi, ci)) else {
                continue;
            };
            let mut rate = get(
                v,
                if w.mode == "bulk" {
                    "bits_per_s"
                } else {
                    "rate"
                },
            );
            let mut p99 = get(v, "p99_us");
            let units: Vec<f64> = get(v, "units");
            let per = |k: &str| -> Vec<f64> {
                get(v, k)
                    .iter()
                    .zip(&units)
                    .map(|(x, u)| if *u > 0.0 { x * 1e6 / u } else { 0.0 })
                    .collect()
            };
            let mut cpu = per("cpu_s");
            let mut bpf = per("bpf_s");
            let mut ev: Vec<f64> = get(v, "delivered")
                .iter()
                .zip(&units)
                .map(|(x, u)| if *u > 0.0 { x / u } else { 0.0 })
                .collect();
            let lost: f64 = get(v, "lost").iter().sum();
            let rss = get(v, "rss_kib").iter().copied().fold(0.0, f64::max) / 1024.0;
            let rss_now = get(v, "rss_now_kib").iter().copied().fold(0.0, f64::max) / 1024.0;
            let maps = get(v, "map_kib").iter().copied().fold(0.0, f64::max) / 1024.0;
            let (r_sp, c_sp) = (spread(&rate), spread(&cpu));
            let r = median(&mut rate);
            let p = median(&mut p99);
            let c = median(&mut cpu);
            let b = median(&mut bpf);
            let e = median(&mut ev);
            let rate_s = if w.mode == "bulk" {
                format!("{:.2} Gbit/s (±{:.2})", r / 1e9, r_sp / 2e9)
            } else {
                format!("{r:.0}/s (±{:.0})", r_sp / 2.0)
            };
            md.push_str(&format!(
                "| {} | {} | {:.3} | {} | {:.2} (±{:.2}) | {:.2} | {} | {} | {:.1} / {:.1} | {:.1} |\n",
                cfg.name(),
                rate_s,
                r / base_rate,
                if w.mode == "bulk" {
                    "-".to_string()
                } else {
                    format!("{:.2}", p / base_p99)
                },
                c,
                c_sp / 2.0,
                b,
                if e > 0.0 {
                    format!("{e:.2}")
                } else {
                    "-".into()
                },
                lost,
                rss_now,
                rss,
                maps,
            ));
            rows.push(json!({
                "workload": w.name, "configuration": cfg.name(),
                "rate_median": r, "rate_spread": r_sp, "rate_vs_c0": r / base_rate,
                "p99_us_median": p, "p99_vs_c0": p / base_p99,
                "cpu_us_per_unit": c, "cpu_spread": c_sp, "bpf_us_per_unit": b,
                "events_per_unit": e, "lost_total": lost, "rss_mib": rss, "rss_now_mib": rss_now,
                "bpf_maps_mib": maps,
                "samples": v,
            }));
        }
        md.push('\n');
    }
    for (ci, why) in unavailable {
        md.push_str(&format!(
            "{}: not run on this machine: {why}\n\n",
            Cfg::ALL[*ci].name()
        ));
    }
    md.push_str("h2c: h2load (4 connections, 8 streams each) against the lab's apiserver stand-in; its \"p99\" is h2load's mean request time (it prints no percentile).\n\n");
    md.push_str("Units: a connection (churn), a request (rr, h2c), 64 KiB sent (bulk). CPU per unit counts the observer process only; BPF per unit is the kernel time of its programs (`kernel.bpf_stats_enabled`). Events per unit: what the observer delivered (drainwatch: events decoded; others: output lines).\n");
    let mdp = out_dir.join("compare.md");
    let jp = out_dir.join("compare.json");
    std::fs::write(&mdp, &md)?;
    std::fs::write(
        &jp,
        serde_json::to_string_pretty(&json!({
            "machine": machine, "rounds": rounds, "seconds": secs, "rows": rows,
            "unavailable": unavailable.iter().map(|(c, w)| json!({"configuration": Cfg::ALL[*c].name(), "why": w})).collect::<Vec<_>>(),
        }))?,
    )?;
    println!("{md}");
    println!("written: {} and {}", mdp.display(), jp.display());
    Ok(())
}

pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = sh(&["uname", "-r"]).unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}", kernel.trim())
}

/// One stress case's outcome.
struct StressCase {
    name: &'static str,
    connections: f64,
    rate: f64,
    received: f64,
    lost: f64,
    extra: f64,
    recovered: bool,
    /// connect() calls the generator made, and connect_attempt events
    /// received and counted lost.
    attempts: f64,
    attempts_received: f64,
    attempts_lost: f64,
}

/// `cargo xtask bench stress`: loss must be counted exactly and the daemon
/// must recover. Churn over the client namespace's loopback, each
/// connection giving exactly five events (attempt, established, accepted,
/// two closes): a burst of `burst` connections with the default ring; the
/// daemon stopped (SIGSTOP) for 5 s under load; the daemon and the load
/// pinned to the same CPU. For each: received + counted lost against 5 per
/// connection (other kinds, e.g. an RST answering a reused port, listed
/// apart), and whether it still serves metrics and sees new events after.
pub fn stress(dw: &Path, lab: &Path, burst: u64, out_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let _topo = topology(lab)?;
    let mut cases = Vec::new();
    for (name, stop, pin) in [
        ("burst", false, false),
        ("SIGSTOP 5 s under load", true, false),
        ("consumer pinned to the producing CPU", false, true),
    ] {
        eprintln!("stress: {name}");
        let obs = Observer::start(Cfg::DrainwatchTp, dw, out_dir)?;
        let pid = obs.pid().context("daemon pid")?;
        let mut gen_cmd = vec!["ip".to_string(), "netns".into(), "exec".into(), C.into()];
        if pin {
            sh(&["taskset", "-a", "-p", "-c", "0", &pid.to_string()])?;
            gen_cmd.extend(["taskset".into(), "-c".into(), "0".into()]);
        }
        gen_cmd.extend([
            lab.display().to_string(),
            "bench-load".into(),
            "--target".into(),
            format!("127.0.0.1:{PORT}"),
            "--mode".into(),
            "churn".into(),
            "--concurrency".into(),
            "16".into(),
            "--count".into(),
            burst.to_string(),
            "--seconds".into(),
            "120".into(),
        ]);
        let kinds = ["connect_attempt", "established", "accepted", "closed"];
        let counts = |o: &Observer| -> (f64, f64, f64) {
            let Some(url) = &o.metrics else {
                return (0.0, 0.0, 0.0);
            };
            let text = sh(&["ip", "netns", "exec", C, "curl", "-sf", url]).unwrap_or_default();
            let all = metric_sum(&text, "drainwatch_events_total{");
            let ours: f64 = kinds
                .iter()
                .map(|k| metric_sum(&text, &format!("drainwatch_events_total{{kind=\"{k}\"}}")))
                .sum();
            (
                ours,
                all - ours,
                metric_sum(&text, "drainwatch_events_lost_total{"),
            )
        };
        let attempts_seen = |o: &Observer| -> (f64, f64) {
            let Some(url) = &o.metrics else {
                return (0.0, 0.0);
            };
            let text = sh(&["ip", "netns", "exec", C, "curl", "-sf", url]).unwrap_or_default();
            (
                metric_sum(&text, "drainwatch_events_total{kind=\"connect_attempt\"}"),
                metric_sum(
                    &text,
                    "drainwatch_events_lost_by_kind_total{kind=\"connect_attempt\"}",
                ),
            )
        };
        let (a0, al0) = attempts_seen(&obs);
        let (r0, x0, l0) = counts(&obs);
        let args: Vec<&str> = gen_cmd.iter().map(String::as_str).collect();
        let mut child = Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::piped())
            .spawn()
            .context("bench-load")?;
        if stop {
            std::thread::sleep(Duration::from_secs(2));
            // SAFETY: stopping and continuing the daemon we started.
            unsafe { kill(pid as i32, 19) };
            std::thread::sleep(Duration::from_secs(5));
            unsafe { kill(pid as i32, 18) };
        }
        let mut out = String::new();
        use std::io::Read as _;
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let _ = child.wait();
        let r: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
        std::thread::sleep(Duration::from_secs(2));
        let (r1, x1, l1) = counts(&obs);
        let (a1, al1) = attempts_seen(&obs);
        // Recovered: one more connection is seen.
        let _ = sh(&[
            "ip",
            "netns",
            "exec",
            C,
            lab.to_str().unwrap_or_default(),
            "bench-load",
            "--target",
            &format!("127.0.0.1:{PORT}"),
            "--mode",
            "churn",
            "--concurrency",
            "1",
            "--count",
            "1",
            "--seconds",
            "5",
        ]);
        std::thread::sleep(Duration::from_millis(500));
        let (r2, _, _) = counts(&obs);
        cases.push(StressCase {
            name,
            connections: r["connections"].as_f64().unwrap_or(0.0),
            rate: r["rate"].as_f64().unwrap_or(0.0),
            received: r1 - r0,
            lost: l1 - l0,
            extra: x1 - x0,
            recovered: r2 > r1,
            attempts: r["connections"].as_f64().unwrap_or(0.0)
                + r["connect_errors"].as_f64().unwrap_or(0.0),
            attempts_received: a1 - a0,
            attempts_lost: al1 - al0,
        });
        let _ = obs.stop();
    }
    let mut md = format!(
        "Machine: {}. Churn over loopback, 16 parallel connect loops; 5 events per normal connection.\n\n| case | connect() calls | connect_attempt received | connect_attempt lost | received + lost - calls | conn/s | 5 x connections | received (5 kinds) | counted lost (all kinds) | received + lost - 5 x conns | other kinds received | recovered |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        machine()
    );
    let mut rows = Vec::new();
    for c in &cases {
        let expected = c.connections * 5.0;
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:+.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:+.0} | {:.0} | {} |\n",
            c.name,
            c.attempts,
            c.attempts_received,
            c.attempts_lost,
            c.attempts_received + c.attempts_lost - c.attempts,
            c.rate,
            expected,
            c.received,
            c.lost,
            c.received + c.lost - expected,
            c.extra,
            if c.recovered { "yes" } else { "NO" }
        ));
        rows.push(json!({"case": c.name, "connect_calls": c.attempts, "connect_attempt_events": c.attempts_received, "connect_attempt_lost": c.attempts_lost, "connections": c.connections, "rate": c.rate,
            "expected": expected, "received": c.received, "lost": c.lost, "other_kinds": c.extra,
            "recovered": c.recovered}));
    }
    md.push_str("\nLoss is counted per kind: connect_attempt events received + counted lost must equal the generator's connect() calls exactly (the bench fails otherwise). Connections that did not close normally (an RST after the accept queue overflowed, say) give other kinds instead of some of the five, so \"5 x connections\" is only approximate.\n");
    std::fs::write(out_dir.join("stress.md"), &md)?;
    std::fs::write(
        out_dir.join("stress.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    println!("{md}");
    if cases.iter().any(|c| !c.recovered) {
        bail!("the daemon did not recover in every case");
    }
    if let Some(c) = cases
        .iter()
        .find(|c| c.attempts_received + c.attempts_lost != c.attempts)
    {
        bail!(
            "{}: connect_attempt received {} + lost {} != {} connect() calls: loss not counted exactly",
            c.name,
            c.attempts_received,
            c.attempts_lost,
            c.attempts
        );
    }
    Ok(())
}
