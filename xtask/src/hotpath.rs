//! `cargo xtask bench hotpath`: the per-unit costs of drainwatch's hot path
//! under one fixed load, this build against an earlier one (`--baseline`)
//! in interleaved rounds: kernel ns per run of `inet_sock_set_state` and of
//! the TC classifier on real veth packets (the kernel's program statistics),
//! and the daemon's CPU per event it delivered, also less what it uses
//! idle over as long (measured just before the load): its timers, scans
//! and scrapes are not a cost per event.
//!
//! Why its own bench: the same binary measured 20-30 % apart in runs twenty
//! minutes apart on this shared machine, so a change is judged only against
//! its predecessor in the same rounds, the order rotated every round.
//! The load: `drainwatch-lab bench-load --mode conn-rr` at a fixed rate
//! (each connection a 1-byte request and response) from the client
//! namespace to the server over the veth; drainwatch runs in the client
//! namespace with its classifier on the veth, so each connection is about
//! ten tracepoint runs (both ends' transitions), about ten classifier runs
//! and three events (the client's connect attempt, established, closed).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::median,
    compare::{BpfStats, Cfg, Observer, PORT, S_IP, bench_load, topology},
    scale::{metric, metric_sum},
};

/// What the bench runs.
pub struct Opts {
    pub rounds: u32,
    pub secs: f64,
    /// New connections per second.
    pub rate: f64,
    pub baseline: Option<PathBuf>,
}

/// The programs whose ns per run is reported.
const PROGRAMS: [&str; 3] = ["inet_sock_set_state", "tc_ingress", "tc_egress"];

/// One round of one build: ns per run per program, µs of daemon CPU per
/// event, events delivered and lost, connections done.
#[derive(Default, Clone)]
struct Sample {
    ns_per_run: [Option<f64>; 3],
    us_per_event: Option<f64>,
    /// The same less the daemon's CPU while idle over as long (its timers,
    /// scans and scrapes): what each event costs.
    marginal_us_per_event: Option<f64>,
    events: f64,
    lost: f64,
    connections: f64,
    errors: f64,
}

/// The daemon's CPU seconds per second with no load, over `secs`.
fn idle_rate(obs: &Observer, secs: f64) -> f64 {
    let u0 = obs.usage();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    (obs.usage().cpu_s - u0.cpu_s) / t0.elapsed().as_secs_f64()
}

fn measure(lab: &Path, obs: &Observer, o: &Opts, idle: f64) -> anyhow::Result<Sample> {
    let m0 = obs.scrape()?;
    let u0 = obs.usage();
    let t0 = Instant::now();
    let count = (o.rate * o.secs * 2.0).ceil() as u64;
    let target = format!("{S_IP}:{PORT}");
    let r = bench_load(lab, &target, "conn-rr", Some(o.rate), 128, o.secs, count)?;
    // The tail: the daemon drains what the load produced, and its program
    // statistics (exported every 500 ms) catch up.
    std::thread::sleep(Duration::from_millis(1500));
    let m1 = obs.scrape()?;
    let u1 = obs.usage();
    let window = t0.elapsed().as_secs_f64();
    let mut s = Sample {
        connections: r["requests"].as_f64().unwrap_or(0.0),
        errors: r["connect_errors"].as_f64().unwrap_or(0.0),
        ..Default::default()
    };
    for (i, p) in PROGRAMS.iter().enumerate() {
        let d = |k: &str| {
            let key = format!("{k}{{program=\"{p}\"}}");
            metric(&m1, &key) - metric(&m0, &key)
        };
        let runs = d("drainwatch_program_runs_total");
        if runs > 0.0 {
            s.ns_per_run[i] = Some(d("drainwatch_program_run_seconds_total") * 1e9 / runs);
        }
    }
    let d = |prefix: &str| metric_sum(&m1, prefix) - metric_sum(&m0, prefix);
    s.events = d("drainwatch_events_total{");
    s.lost = d("drainwatch_events_lost_total{");
    if s.events > 0.0 {
        let cpu = u1.cpu_s - u0.cpu_s;
        s.us_per_event = Some(cpu * 1e6 / s.events);
        s.marginal_us_per_event = Some((cpu - idle * window).max(0.0) * 1e6 / s.events);
    }
    Ok(s)
}

/// Median and range of the values present, e.g. `656 (556-720)`.
fn cell(v: impl Iterator<Item = Option<f64>>, digits: usize) -> String {
    let mut v: Vec<f64> = v.flatten().collect();
    if v.is_empty() {
        return "-".into();
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let m = median(&mut v);
    format!("{m:.digits$} ({lo:.digits$}-{hi:.digits$})")
}

pub fn run(dw: &Path, lab: &Path, o: &Opts, out_dir: &Path) -> anyhow::Result<()> {
    let mut builds = vec![("this build", dw.to_path_buf(), Cfg::DrainwatchFull)];
    if let Some(b) = &o.baseline {
        builds.push(("baseline", b.clone(), Cfg::BaselineFull));
    }
    std::fs::create_dir_all(out_dir)?;
    let _stats = BpfStats::enable()?;
    let topo = topology(lab)?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); builds.len()];
    for round in 0..o.rounds as usize {
        for k in 0..builds.len() {
            let bi = (k + round) % builds.len();
            let (name, bin, cfg) = &builds[bi];
            eprintln!("hot path, round {}/{}: {name}", round + 1, o.rounds);
            let obs = Observer::start(*cfg, bin, out_dir)?;
            // Start-up work (the daemon's first scans) is not the load's.
            std::thread::sleep(Duration::from_secs(2));
            let idle = idle_rate(&obs, 4.0);
            let s = measure(lab, &obs, o, idle)?;
            let _ = obs.stop();
            if s.connections < o.rate * o.secs * 0.9 || s.errors > 0.0 {
                eprintln!(
                    "  the load fell short: {} connections, {} connect errors",
                    s.connections, s.errors
                );
            }
            samples[bi].push(s);
        }
    }
    drop(topo);
    let mut md = format!(
        "{} connections/s (conn-rr over the veth) for {} s, {} rounds; median (range)\n\n\
         | build | inet_sock_set_state ns/run | tc_ingress ns/run | tc_egress ns/run | daemon µs/event | less its idle CPU | events/connection | lost |\n\
         |---|---|---|---|---|---|---|---|\n",
        o.rate, o.secs, o.rounds
    );
    for ((name, _, _), v) in builds.iter().zip(&samples) {
        let per_conn = cell(
            v.iter()
                .map(|s| (s.connections > 0.0).then(|| s.events / s.connections)),
            2,
        );
        let lost: f64 = v.iter().map(|s| s.lost).sum();
        md.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {per_conn} | {lost} |\n",
            cell(v.iter().map(|s| s.ns_per_run[0]), 0),
            cell(v.iter().map(|s| s.ns_per_run[1]), 0),
            cell(v.iter().map(|s| s.ns_per_run[2]), 0),
            cell(v.iter().map(|s| s.us_per_event), 2),
            cell(v.iter().map(|s| s.marginal_us_per_event), 2),
        ));
    }
    print!("{md}");
    let path = out_dir.join("hotpath.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    if samples.iter().flatten().all(|s| s.events == 0.0) {
        bail!("no build delivered an event: the load did not reach the watched port");
    }
    Ok(())
}
