//! `cargo xtask bench wire`: what the TC classifier costs, measured, not
//! asserted. Two namespaces joined by a veth (198.18.250.0/30), iperf3 bulk
//! streams to a watched (6443) and an unwatched (5201) port, rounds
//! interleaved between "no observer" and "drainwatch with the classifier on
//! the client's veth". Per-packet cost comes from the kernel's own program
//! statistics (`--bpf-stats`, i.e. BPF_ENABLE_STATS), watched and unwatched
//! phases separately, and per packet on crafted packets with
//! BPF_PROG_TEST_RUN (`drainwatch bench-classifier`). Every run is bounded (iperf3 -t) and everything it
//! creates is removed at the end.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

const C: &str = "dwbench-c";
const S: &str = "dwbench-s";
const C_IP: &str = "198.18.250.1";
const S_IP: &str = "198.18.250.2";
const C_DEV: &str = "dwbc0";
const S_DEV: &str = "dwbs0";

/// Runs a command, its stdout or an error with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full)
}

/// Two namespaces joined by a veth (`/30` addresses, lo up), and the
/// servers started in them; servers, leftover processes and namespaces are
/// removed on drop. Shared by `bench wire`, `compare` and `stress`.
pub struct NsPair {
    pub ns: [&'static str; 2],
    pub servers: Vec<Child>,
}

impl NsPair {
    /// `(namespace, device, address)` for each end.
    pub fn new(ends: [(&'static str, &str, &str); 2]) -> anyhow::Result<NsPair> {
        let ns = [ends[0].0, ends[1].0];
        remove_namespaces(&ns);
        let pair = NsPair {
            ns,
            servers: Vec::new(),
        };
        for n in ns {
            sh(&["ip", "netns", "add", n])?;
        }
        sh(&[
            "ip", "link", "add", ends[0].1, "netns", ns[0], "type", "veth", "peer", "name",
            ends[1].1, "netns", ns[1],
        ])?;
        for (n, dev, ip) in ends {
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
            sh(&["ip", "-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for NsPair {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        remove_namespaces(&self.ns);
    }
}

/// Kills what is left in the namespaces (by pid) and deletes them.
fn remove_namespaces(ns: &[&str]) {
    for n in ns {
        if let Ok(pids) = sh(&["ip", "netns", "pids", n]) {
            for p in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: killing processes left in our own bench namespaces.
                unsafe { kill(p, 9) };
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", n])
            .stderr(Stdio::null())
            .status();
    }
}

/// The wire bench's namespaces with iperf3 servers on 6443 and 5201.
fn topology() -> anyhow::Result<NsPair> {
    let mut t = NsPair::new([(C, C_DEV, C_IP), (S, S_DEV, S_IP)])?;
    for port in ["6443", "5201"] {
        t.servers.push(
            Command::new("ip")
                .args(["netns", "exec", S, "iperf3", "-s", "-B", S_IP, "-p", port])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("iperf3 (apt-get install iperf3)")?,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(t)
}

/// One bounded bulk stream; returns Gbit/s.
fn iperf(port: &str, secs: u32) -> anyhow::Result<f64> {
    let out = in_ns(
        C,
        &[
            "iperf3",
            "-c",
            S_IP,
            "-p",
            port,
            "-t",
            &secs.to_string(),
            "-J",
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3: no sum_received")
}

struct Observer {
    child: Child,
    metrics: String,
}

impl Observer {
    fn start(bin: &Path) -> anyhow::Result<Observer> {
        let addr = "127.0.0.1:9979";
        let child = Command::new("ip")
            .args(["netns", "exec", C])
            .arg(bin)
            .args([
                "run", "--iface", C_DEV, "--port", "6443", "--output", "none",
            ])
            .args(["--no-kprobes", "--bpf-stats", "--metrics-addr", addr])
            .env("DRAINWATCH_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting drainwatch")?;
        let o = Observer {
            child,
            metrics: format!("http://{addr}/metrics"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while o.scrape().is_err() {
            if Instant::now() > deadline {
                bail!("drainwatch did not start serving metrics");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(o)
    }

    fn scrape(&self) -> anyhow::Result<String> {
        in_ns(C, &["curl", "-sf", &self.metrics])
    }

    /// (run ns, runs) summed over both classifier programs.
    fn tc_stats(&self) -> anyhow::Result<(f64, f64)> {
        // Stats are polled every 500 ms by the daemon.
        std::thread::sleep(Duration::from_millis(700));
        let text = self.scrape()?;
        let mut ns = 0.0;
        let mut runs = 0.0;
        for prog in ["tc_ingress", "tc_egress"] {
            ns += metric(
                &text,
                &format!("drainwatch_program_run_seconds_total{{program=\"{prog}\"}}"),
            ) * 1e9;
            runs += metric(
                &text,
                &format!("drainwatch_program_runs_total{{program=\"{prog}\"}}"),
            );
        }
        Ok((ns, runs))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    pub fn kill(pid: i32, sig: i32) -> i32;
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn spread(v: &[f64]) -> f64 {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    if v.is_empty() { 0.0 } else { hi - lo }
}

pub fn wire(bin: &Path, rounds: u32, secs: u32) -> anyhow::Result<()> {
    let _topo = topology()?;
    let (mut base, mut unw, mut wat, mut ns_unw, mut ns_wat) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        eprintln!("bench wire: round {}/{rounds}", r + 1);
        base.push(iperf("5201", secs)?);
        let o = Observer::start(bin)?;
        let (t0, n0) = o.tc_stats()?;
        unw.push(iperf("5201", secs)?);
        let (t1, n1) = o.tc_stats()?;
        wat.push(iperf("6443", secs)?);
        let (t2, n2) = o.tc_stats()?;
        if n1 > n0 {
            ns_unw.push((t1 - t0) / (n1 - n0));
        }
        if n2 > n1 {
            ns_wat.push((t2 - t1) / (n2 - n1));
        }
    }
    let b = median(&mut base.clone());
    let rows = [
        ("C0 no observer, port 5201", base.clone(), None),
        (
            "C1 drainwatch, unwatched port 5201",
            unw.clone(),
            Some(ns_unw.clone()),
        ),
        (
            "C1 drainwatch, watched port 6443",
            wat.clone(),
            Some(ns_wat.clone()),
        ),
    ];
    println!();
    println!("veth bulk stream, iperf3 -t {secs}, {rounds} interleaved rounds, median (spread)");
    println!("| configuration | Gbit/s | vs C0 | classifier ns/skb |");
    println!("|---|---|---|---|");
    for (name, mut v, ns) in rows {
        let m = median(&mut v);
        let cost = match ns {
            Some(mut ns) if !ns.is_empty() => {
                format!("{:.0} ({:.0})", median(&mut ns), spread(&ns))
            }
            _ => "-".into(),
        };
        println!(
            "| {name} | {m:.2} ({:.2}) | {:+.1} % | {cost} |",
            spread(&v),
            (m / b - 1.0) * 100.0
        );
    }
    println!();
    println!("ns/skb: kernel run time per classifier run (BPF_ENABLE_STATS); veth hands TC");
    println!("GSO super-packets, so one run covers up to 64 KiB of a bulk stream.");
    println!();
    // The same program on single crafted packets: no traffic noise.
    let status = Command::new(bin)
        .arg("bench-classifier")
        .env("DRAINWATCH_LOG", "warn")
        .status()
        .context("drainwatch bench-classifier")?;
    if !status.success() {
        bail!("drainwatch bench-classifier failed: {status}");
    }
    Ok(())
}
