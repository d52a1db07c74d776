//! `cargo xtask soak --minutes N`: drainwatch under mixed load for a long
//! time, with the lab's apiserver stand-in rolled over and over, sampled for
//! growth.
//!
//! Two namespaces over a veth (198.18.254.0/30, no routes out). In the
//! server one ("the master"): the apiserver stand-in (TLS on 6443, h2c on
//! 443), the benchmarks' server on 7443, and `drainwatch run --netns self`
//! watching all three ports, polling the stand-in's /readyz and probing it.
//! In the client one: the lab's load generator in new-connection and
//! reused-connection mode (HTTP/2 over TLS, every request recorded), curl
//! (HTTP/2 over TLS, and h2c), bursts of connection churn, 1-byte
//! request/response and bulk (`drainwatch-lab bench-load`), and bursts of
//! connections closed with `SO_LINGER 0` (RSTs). Every `--restart-every`
//! the stand-in gets SIGTERM (modes cycle: graceful, hard close, no delay),
//! stays down `--down` (refused connects) and is started again: each cycle
//! is a rollout for the correlation engine.
//!
//! Every `--sample-every`: the daemon's RSS and open fds (from /proc), its
//! BPF map occupancy (`drainwatch_map_entries` / `_capacity`), the
//! correlation engine's sizes, events delivered and lost. The verdict
//! ([`judge`]) compares the last quarter of the run after a warm-up with
//! its first quarter. Markdown and JSON go to target/soak/.
//!
//! Every load is bounded in count and time and ends by itself; Ctrl-C (or
//! SIGTERM) stops the run early, and every process and namespace is removed
//! by its id on the way out.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::bench::{NsPair, kill, sh};

const C: &str = "dwsoak-c";
const S: &str = "dwsoak-s";
const C_IP: &str = "198.18.254.1";
const S_IP: &str = "198.18.254.2";
/// The daemon's metrics, on the server namespace's loopback.
const METRICS: &str = "127.0.0.1:19981";
/// The benchmarks' server: churn, request/response, bulk, RSTs.
const BENCH_PORT: u16 = 7443;

/// The stand-in's timings (seconds): short, so that a cycle (drain, down,
/// start) fits many times in a run.
const SHUTDOWN_DELAY_S: u64 = 3;
const REQUEST_TIMEOUT_S: u64 = 5;

/// Growth allowed between the first and the last quarter after warm-up.
/// RSS: the allocator keeps freed memory in per-thread arenas and returns
/// it in steps (tokio's two workers, hyper's buffers of the metrics and
/// HTTP-check connections): a few MiB of jitter with no trend.
const RSS_SLACK_KIB: u64 = 8 * 1024;
/// What one observation held by the correlation engine costs in RSS
/// (the `Observation` in a BTreeMap node, and the per-second recomputation
/// over all of them), measured on this machine: about 1.1 KiB, from the RSS
/// step of each churn burst. RSS may follow the engine's own table (bounded
/// by time: ten minutes of observations) up to this much per extra
/// observation held.
const OBS_BYTES: u64 = 1280;
/// fds: maps, programs, links, the ring buffers and epoll are fixed; what
/// varies is sockets in flight (the /readyz poller, the prober's new and
/// reused connections, the metrics scrape).
const FD_SLACK: u64 = 4;
/// The engine keeps ten minutes of observations (the daemon's `KEEP_NS`),
/// plus a rollout in progress: past this, the number it holds under steady
/// load must stop growing.
const ENGINE_WINDOW_S: f64 = 660.0;
/// How long after the window the trend is measured, at least.
const ENGINE_TREND_S: f64 = 180.0;

/// The soak's settings.
#[derive(Debug, Clone)]
pub struct Opts {
    pub minutes: f64,
    pub restart_every: Duration,
    pub down: Duration,
    pub sample_every: Duration,
    /// Connections per churn burst (one burst every 30 s).
    pub churn: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: i32) {
    STOP.store(true, Ordering::Relaxed);
}

unsafe extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const Linger, len: u32) -> i32;
}

#[repr(C)]
struct Linger {
    onoff: i32,
    linger: i32,
}

/// One sample of the daemon.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub t_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
    /// map -> (entries, capacity); entries -1 when not exported.
    pub maps: BTreeMap<String, (i64, i64)>,
    pub observations: u64,
    pub rollouts: u64,
    pub verdicts: u64,
    pub events: u64,
    pub lost: u64,
    pub sigterms: u64,
    /// Stand-in restarts begun so far.
    pub restarts: u64,
}

impl Sample {
    fn to_json(&self) -> Value {
        let maps: serde_json::Map<String, Value> = self
            .maps
            .iter()
            .map(|(k, (e, c))| (k.clone(), json!({"entries": e, "capacity": c})))
            .collect();
        json!({
            "t_s": self.t_s,
            "rss_kib": self.rss_kib,
            "fds": self.fds,
            "maps": maps,
            "engine": {
                "observations": self.observations,
                "rollouts": self.rollouts,
                "verdicts": self.verdicts,
            },
            "events": self.events,
            "lost": self.lost,
            "sigterms_seen": self.sigterms,
            "restarts": self.restarts,
        })
    }
}

/// The outcome of [`judge`].
#[derive(Debug, Default)]
pub struct Verdict {
    /// Why the run failed; empty when it passed.
    pub failures: Vec<String>,
    /// What was compared, for the report.
    pub notes: Vec<String>,
}

/// Checks the samples of a run of `total_s` seconds: after a warm-up (the
/// first 20 %), the last quarter's maximum RSS may exceed the first
/// quarter's by [`RSS_SLACK_KIB`] plus [`OBS_BYTES`] per observation the
/// engine holds more; its maximum fd count by [`FD_SLACK`]; every map stays
/// within its capacity and its occupancy is exported.
pub fn judge(samples: &[Sample], total_s: f64) -> Verdict {
    let mut v = Verdict::default();
    let warm = total_s * 0.2;
    let quarter = (total_s - warm) / 4.0;
    let first: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s >= warm && s.t_s < warm + quarter)
        .collect();
    let last: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_s >= total_s - quarter)
        .collect();
    if first.is_empty() || last.is_empty() {
        v.failures.push(format!(
            "too few samples to compare ({} in the first quarter after warm-up, {} in the last)",
            first.len(),
            last.len()
        ));
        return v;
    }
    let max = |set: &[&Sample], f: fn(&Sample) -> u64| set.iter().map(|s| f(s)).max().unwrap_or(0);
    let (rss1, rss4) = (max(&first, |s| s.rss_kib), max(&last, |s| s.rss_kib));
    let (obs1, obs4) = (
        max(&first, |s| s.observations),
        max(&last, |s| s.observations),
    );
    let engine_kib = obs4.saturating_sub(obs1) * OBS_BYTES / 1024;
    let rss_bound = rss1 + RSS_SLACK_KIB + engine_kib;
    v.notes.push(format!(
        "RSS: last-quarter max {:.1} MiB, first-quarter max {:.1} MiB, bound {:.1} MiB (+{} MiB slack, +{:.1} MiB for {} more engine observations)",
        mib(rss4),
        mib(rss1),
        mib(rss_bound),
        RSS_SLACK_KIB / 1024,
        mib(engine_kib),
        obs4.saturating_sub(obs1)
    ));
    if rss4 > rss_bound {
        v.failures.push(format!(
            "RSS grew: last-quarter max {:.1} MiB > bound {:.1} MiB",
            mib(rss4),
            mib(rss_bound)
        ));
    }
    // The allowance above trusts the engine's table to be bounded: check
    // that it stops growing once its window has passed. Under steady load
    // the count held then saws around a level (one churn burst enters, one
    // ages out), so its trend must be far below the filling rate before.
    let before: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t_s >= warm && s.t_s <= ENGINE_WINDOW_S - 60.0)
        .map(|s| (s.t_s, s.observations as f64))
        .collect();
    let after: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t_s >= ENGINE_WINDOW_S)
        .map(|s| (s.t_s, s.observations as f64))
        .collect();
    let span = |v: &[(f64, f64)]| v.last().map_or(0.0, |l| l.0) - v.first().map_or(0.0, |f| f.0);
    match (slope(&before), slope(&after)) {
        (Some(fill), Some(trend)) if span(&after) >= ENGINE_TREND_S => {
            v.notes.push(format!(
                "engine: filled at {fill:.1} observations/s before its ten-minute window, {trend:.1}/s after (bound {:.1}/s)",
                fill.max(0.0) * 0.25 + 1.0
            ));
            if trend > fill.max(0.0) * 0.25 + 1.0 {
                v.failures.push(format!(
                    "the engine's observations kept growing after its ten-minute window ({trend:.1}/s, {fill:.1}/s before): it does not compact"
                ));
            }
        }
        _ => v.notes.push(format!(
            "engine: the run is too short to see its ten-minute window close ({:.0} min needed); its bound is not checked",
            ((ENGINE_WINDOW_S + ENGINE_TREND_S) / 60.0).ceil()
        )),
    }
    let (fd1, fd4) = (max(&first, |s| s.fds), max(&last, |s| s.fds));
    v.notes.push(format!(
        "engine: at most {obs4} observations held in the last quarter (about {:.0} MiB at {OBS_BYTES} B each)",
        mib(obs4 * OBS_BYTES / 1024)
    ));
    v.notes.push(format!(
        "fds: last-quarter max {fd4}, first-quarter max {fd1}, bound {}",
        fd1 + FD_SLACK
    ));
    if fd4 > fd1 + FD_SLACK {
        v.failures.push(format!(
            "fds grew: last-quarter max {fd4} > first-quarter max {fd1} + {FD_SLACK}"
        ));
    }
    let mut maps: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for s in samples {
        for (name, &(e, c)) in &s.maps {
            let m = maps.entry(name).or_insert((-1, c));
            m.0 = m.0.max(e);
            if e > c {
                v.failures.push(format!(
                    "map {name}: {e} entries > capacity {c} at {:.0} s",
                    s.t_s
                ));
            }
        }
    }
    if maps.is_empty() {
        v.failures
            .push("the daemon exported no map occupancy (drainwatch_map_entries)".into());
    }
    for (name, (e, c)) in maps {
        if e < 0 {
            v.failures
                .push(format!("map {name}: entries never exported"));
        } else {
            // Full is allowed (LRU maps evict), but worth a look.
            let full = if c > 0 && e * 10 >= c * 9 {
                " (90 % full or more: an LRU map evicts from here)"
            } else {
                ""
            };
            v.notes
                .push(format!("map {name}: at most {e} of {c} entries{full}"));
        }
    }
    v
}

/// Least-squares slope of `(t, y)`; none for fewer than three points.
fn slope(v: &[(f64, f64)]) -> Option<f64> {
    if v.len() < 3 {
        return None;
    }
    let n = v.len() as f64;
    let (mt, my) = (
        v.iter().map(|p| p.0).sum::<f64>() / n,
        v.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let var: f64 = v.iter().map(|p| (p.0 - mt).powi(2)).sum();
    (var > 0.0).then(|| v.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum::<f64>() / var)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Every process the soak started; stopped (SIGTERM, then SIGKILL after
/// 10 s) by pid on drop, before the namespaces go.
#[derive(Default)]
struct Procs {
    daemon: Option<Child>,
    standin: Option<Child>,
    /// Long-running, but bounded, load generators.
    long: Vec<Child>,
    /// Short jobs: (kind, process).
    jobs: Vec<(&'static str, Child)>,
}

impl Procs {
    fn all(&mut self) -> Vec<&mut Child> {
        let mut v: Vec<&mut Child> = self.long.iter_mut().collect();
        v.extend(self.jobs.iter_mut().map(|(_, c)| c));
        v.extend(self.standin.as_mut());
        // The daemon last: it sees the others end.
        v.extend(self.daemon.as_mut());
        v
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        stop_all(self.all());
    }
}

/// SIGTERM to each, then SIGKILL to whatever is left after 10 s.
fn stop_all(mut children: Vec<&mut Child>) {
    for c in &mut children {
        if let Ok(None) = c.try_wait() {
            // SAFETY: signalling our own child by its pid.
            unsafe { kill(c.id() as i32, 15) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in children {
        while Instant::now() < deadline {
            if !matches!(c.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `ip netns exec NS PROG ARGS`, in its own process group (Ctrl-C reaches
/// only the soak, which stops everything in order).
fn in_ns(ns: &str, prog: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(prog).process_group(0);
    c
}

fn append(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The stand-in's shutdown modes, cycled through restarts.
const MODES: [&str; 3] = ["graceful", "hard-close", "no-delay"];

fn start_standin(lab: &Path, dir: &Path, mode: &str) -> anyhow::Result<Child> {
    let out = append(&dir.join("standin.out"))?;
    let err = append(&dir.join("standin.err"))?;
    let listen = format!("{S_IP}:6443");
    let h2c = format!("{S_IP}:443");
    let mut cmd = in_ns(S, lab);
    cmd.args(["apiserver", "--name", "m1", "--listen", &listen])
        .args(["--h2c-listen", &h2c, "--tls-dir"])
        .arg(dir.join("pki"))
        .args(["--san", S_IP])
        .args(["--shutdown-delay", &format!("{SHUTDOWN_DELAY_S}s")])
        .args(["--request-timeout", &format!("{REQUEST_TIMEOUT_S}s")])
        .args(["--startup-delay", "1s", "--mode", mode, "--truth"])
        .arg(dir.join("lifecycle.jsonl"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    cmd.spawn().context("starting the apiserver stand-in")
}

/// How many times the stand-in said READY so far.
fn readies(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("standin.out"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.trim() == "READY")
        .count()
}

fn start_daemon(dw: &Path, dir: &Path) -> anyhow::Result<Child> {
    let err = append(&dir.join("drainwatch.log"))?;
    let ca = dir.join("pki").join("ca.crt");
    let url = format!("https://{S_IP}:6443");
    let mut cmd = in_ns(S, dw);
    cmd.args(["run", "--netns", "self", "--output", "none", "--no-kube"])
        .args(["--metrics-addr", METRICS])
        .args(["--port", "6443", "--port", "443", "--port"])
        .arg(BENCH_PORT.to_string())
        .args([
            "--instance",
            "m1",
            "--apiserver-url",
            &url,
            "--apiserver-ca",
        ])
        .arg(&ca)
        .args(["--readyz-interval", "1s", "--probe-url"])
        .arg(format!("{url}/readyz"))
        .args(["--probe-interval", "1s"])
        .args(["--shutdown-delay", &format!("{SHUTDOWN_DELAY_S}s")])
        .args(["--request-timeout", &format!("{REQUEST_TIMEOUT_S}s")])
        .env("DRAINWATCH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let child = cmd.spawn().context("starting drainwatch")?;
    Ok(child)
}

fn scrape() -> anyhow::Result<String> {
    sh(&[
        "ip",
        "netns",
        "exec",
        S,
        "curl",
        "-sf",
        "--max-time",
        "5",
        &format!("http://{METRICS}/metrics"),
    ])
}

/// `(labels, value)` of every series of `name` (exactly that name).
fn series<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
                let (labels, v) = r.split_once('}')?;
                (labels, v)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

fn total(text: &str, name: &str) -> u64 {
    series(text, name).iter().map(|(_, v)| *v).sum::<f64>() as u64
}

/// Reads /proc and the daemon's metrics.
fn sample(pid: u32, t_s: f64, restarts: u64) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (did drainwatch exit?)"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count() as u64;
    let text = scrape().context("scraping drainwatch's metrics")?;
    let mut maps: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (labels, v) in series(&text, "drainwatch_map_capacity") {
        if let Some(m) = label(labels, "map") {
            maps.entry(m.to_string()).or_insert((-1, 0)).1 = v as i64;
        }
    }
    for (labels, v) in series(&text, "drainwatch_map_entries") {
        if let Some(m) = label(labels, "map") {
            maps.entry(m.to_string()).or_insert((-1, 0)).0 = v as i64;
        }
    }
    let sigterms = series(&text, "drainwatch_process_signals_total")
        .iter()
        .filter(|(l, _)| label(l, "signal") == Some("SIGTERM"))
        .map(|(_, v)| *v as u64)
        .sum();
    Ok(Sample {
        t_s,
        rss_kib,
        fds,
        maps,
        observations: total(&text, "drainwatch_correlation_observations"),
        rollouts: total(&text, "drainwatch_correlation_rollouts"),
        verdicts: total(&text, "drainwatch_correlation_verdicts"),
        events: total(&text, "drainwatch_events_total"),
        lost: total(&text, "drainwatch_events_lost_total"),
        sigterms,
        restarts,
    })
}

/// `n` connections to the bench server, one request each, closed with
/// `SO_LINGER 0` (an RST while ESTABLISHED), from a thread that entered the
/// client namespace. Returns the RSTs sent.
fn rst_burst(n: u32) -> JoinHandle<anyhow::Result<u32>> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/run/netns/{C}"))
            .with_context(|| format!("opening /run/netns/{C}"))?;
        use std::os::fd::AsRawFd as _;
        // SAFETY: moves only this thread into the namespace (CLONE_NEWNET).
        if unsafe { setns(ns.as_raw_fd(), 0x4000_0000) } != 0 {
            bail!("setns {C}: {}", std::io::Error::last_os_error());
        }
        let target: SocketAddr = format!("{S_IP}:{BENCH_PORT}").parse()?;
        let mut sent = 0;
        for _ in 0..n {
            let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
                continue;
            };
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            let mut b = [0u8; 1];
            if s.write_all(b"r").is_err() || s.read_exact(&mut b).is_err() {
                continue;
            }
            let l = Linger {
                onoff: 1,
                linger: 0,
            };
            use std::os::fd::AsRawFd as _;
            // SAFETY: a valid socket and a struct linger of the right size.
            let r = unsafe {
                setsockopt(
                    s.as_raw_fd(),
                    1,  // SOL_SOCKET
                    13, // SO_LINGER
                    &l,
                    std::mem::size_of::<Linger>() as u32,
                )
            };
            if r == 0 {
                sent += 1;
            }
            drop(s);
        }
        Ok(sent)
    })
}

unsafe extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}

/// Where the stand-in is in its cycle.
enum Standin {
    Starting { deadline: Instant },
    Up { until: Instant },
    Stopping { deadline: Instant },
    Down { until: Instant },
}

/// Short periodic jobs: (kind, period, first run after).
const JOBS: [(&str, u64, u64); 5] = [
    ("curl-h2-tls", 5, 2),
    ("curl-h2c", 5, 3),
    ("churn", 30, 5),
    ("rr", 60, 20),
    ("bulk", 60, 40),
];

pub fn soak(dw: &Path, lab: &Path, opts: &Opts, out_dir: &Path) -> anyhow::Result<()> {
    let total = Duration::from_secs_f64(opts.minutes * 60.0);
    // Every run sees rollouts and enough samples to compare quarters.
    let restart_every = opts.restart_every.min(total / 3);
    let sample_every = opts
        .sample_every
        .min(total / 12)
        .max(Duration::from_secs(1));
    if restart_every < opts.restart_every || sample_every < opts.sample_every {
        eprintln!(
            "soak: a {:.1}-minute run: stand-in restarted every {} s, samples every {} s",
            opts.minutes,
            restart_every.as_secs(),
            sample_every.as_secs()
        );
    }
    let _ = std::fs::remove_dir_all(out_dir);
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    STOP.store(false, Ordering::Relaxed);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        signal(2, on_signal);
        signal(15, on_signal);
    }

    let ns = NsPair::new([(C, "dwsc0", C_IP), (S, "dwss0", S_IP)])?;
    for n in ns.ns {
        // Churn needs ports: the whole range, and TIME_WAIT reuse.
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65535",
            "net.ipv4.tcp_tw_reuse=1",
        ])?;
    }
    let mut procs = Procs::default();
    let result = drive(
        dw,
        lab,
        opts,
        out_dir,
        total,
        restart_every,
        sample_every,
        &mut procs,
    );
    drop(procs);
    drop(ns);
    result
}

#[allow(clippy::too_many_arguments)]
fn drive(
    dw: &Path,
    lab: &Path,
    opts: &Opts,
    dir: &Path,
    total: Duration,
    restart_every: Duration,
    sample_every: Duration,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    let bench_out = dir.join("bench-load.jsonl");
    // The bench server lives as long as the run (killed with the others).
    procs.long.push(
        in_ns(S, lab)
            .args(["bench-server", "--listen", &format!("{S_IP}:{BENCH_PORT}")])
            .stdout(Stdio::null())
            .stderr(append(&dir.join("bench-server.err"))?)
            .spawn()
            .context("starting the bench server")?,
    );
    // The stand-in first: it writes the CA the daemon's checks trust.
    let mut starts = 1;
    procs.standin = Some(start_standin(lab, dir, MODES[0])?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while readies(dir) < 1 {
        if Instant::now() > deadline || STOP.load(Ordering::Relaxed) {
            bail!(
                "the stand-in did not become ready in 30 s; see {}",
                dir.join("standin.err").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    procs.daemon = Some(start_daemon(dw, dir)?);
    let pid = procs.daemon.as_ref().map(Child::id).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while scrape().is_err() {
        if let Some(d) = procs.daemon.as_mut()
            && let Ok(Some(st)) = d.try_wait()
        {
            bail!(
                "drainwatch exited ({st}) before serving metrics; see {}",
                dir.join("drainwatch.log").display()
            );
        }
        if Instant::now() > deadline || STOP.load(Ordering::Relaxed) {
            bail!("drainwatch did not serve metrics in 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "soak: drainwatch (pid {pid}) up; {:.1} min of mixed load, stand-in restarted every {} s",
        total.as_secs_f64() / 60.0,
        restart_every.as_secs()
    );

    let start = Instant::now();
    let end = start + total;
    let secs = total.as_secs();
    let ca = dir.join("pki").join("ca.crt");
    // The recorded clients: new connection per request (refusals while the
    // stand-in is down) and long-lived reused connections (GOAWAY, resets).
    for (name, mode, interval, conc) in [
        ("soak-new", "new", "200ms", "2"),
        ("soak-reuse", "reuse", "500ms", "2"),
    ] {
        procs.long.push(
            in_ns(C, lab)
                .args([
                    "loadgen",
                    "--name",
                    name,
                    "--target",
                    &format!("{S_IP}:6443"),
                ])
                .arg("--ca")
                .arg(&ca)
                .args(["--mode", mode, "--proto", "h2", "--path", "/readyz"])
                .args(["--interval", interval, "--concurrency", conc])
                .args(["--duration", &format!("{secs}s")])
                .args(["--max-requests", &(secs * 20 + 100).to_string()])
                .args(["--timeout", "3s", "--out"])
                .arg(dir.join(format!("{name}.jsonl")))
                .stdout(Stdio::null())
                .stderr(append(&dir.join(format!("{name}.err")))?)
                .spawn()
                .with_context(|| format!("starting loadgen {name}"))?,
        );
    }

    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = start;
    let mut state = Standin::Up {
        until: start + restart_every,
    };
    let mut restarts = 0u64;
    let mut killed = 0u64;
    let mut next_job: Vec<Instant> = JOBS
        .iter()
        .map(|(_, _, first)| start + Duration::from_secs(*first))
        .collect();
    let mut tally: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut rst: Option<JoinHandle<anyhow::Result<u32>>> = None;
    let mut next_rst = start + Duration::from_secs(7);
    let mut rsts = 0u64;
    let mut problem: Option<String> = None;
    let mut interrupted = false;
    let md_path = dir.join("soak.md");

    loop {
        let now = Instant::now();
        if STOP.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        if let Some(d) = procs.daemon.as_mut()
            && let Ok(Some(st)) = d.try_wait()
        {
            problem = Some(format!("drainwatch exited during the run: {st}"));
            break;
        }
        if now >= next_sample || now >= end {
            let t = now.duration_since(start).as_secs_f64();
            match sample(pid, t, restarts) {
                Ok(s) => {
                    eprintln!("{}", row(&s));
                    samples.push(s);
                }
                Err(e) => {
                    problem = Some(format!("sampling failed: {e:#}"));
                    break;
                }
            }
            next_sample += sample_every;
        }
        if now >= end {
            break;
        }
        state = match state {
            Standin::Up { until } if now >= until => {
                if let Some(s) = &procs.standin {
                    // SAFETY: signalling our own child by its pid.
                    unsafe { kill(s.id() as i32, 15) };
                }
                restarts += 1;
                Standin::Stopping {
                    deadline: now + Duration::from_secs(SHUTDOWN_DELAY_S + REQUEST_TIMEOUT_S + 10),
                }
            }
            Standin::Stopping { deadline } => {
                let exited = procs
                    .standin
                    .as_mut()
                    .is_none_or(|s| !matches!(s.try_wait(), Ok(None)));
                if exited || now >= deadline {
                    if !exited && let Some(s) = procs.standin.as_mut() {
                        let _ = s.kill();
                        killed += 1;
                    }
                    if let Some(mut s) = procs.standin.take() {
                        let _ = s.wait();
                    }
                    Standin::Down {
                        until: now + opts.down,
                    }
                } else {
                    Standin::Stopping { deadline }
                }
            }
            Standin::Down { until } if now >= until => {
                let mode = MODES[starts % MODES.len()];
                starts += 1;
                procs.standin = Some(start_standin(lab, dir, mode)?);
                Standin::Starting {
                    deadline: now + Duration::from_secs(30),
                }
            }
            Standin::Starting { deadline } => {
                if readies(dir) >= starts {
                    Standin::Up {
                        until: now + restart_every,
                    }
                } else if now >= deadline {
                    problem = Some("the stand-in did not become ready in 30 s".into());
                    break;
                } else {
                    Standin::Starting { deadline }
                }
            }
            s => s,
        };
        // Reap finished jobs, then start the ones that are due (one of a
        // kind at a time).
        procs.jobs.retain_mut(|(kind, c)| match c.try_wait() {
            Ok(None) => true,
            Ok(Some(st)) => {
                let e = tally.entry(kind).or_default();
                if st.success() {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
                false
            }
            Err(_) => false,
        });
        for (i, (kind, period, _)) in JOBS.iter().enumerate() {
            if now < next_job[i] || procs.jobs.iter().any(|(k, _)| k == kind) {
                continue;
            }
            next_job[i] = now + Duration::from_secs(*period);
            let child = job(kind, lab, &ca, &bench_out, opts.churn)?;
            procs.jobs.push((kind, child));
        }
        if rst.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(Ok(Ok(n))) = rst.take().map(JoinHandle::join)
        {
            rsts += u64::from(n);
        }
        if rst.is_none() && now >= next_rst {
            rst = Some(rst_burst(20));
            next_rst = now + Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(h) = rst.take()
        && let Ok(Ok(n)) = h.join()
    {
        rsts += u64::from(n);
    }
    // Stop the load first, then the daemon (SIGTERM: it detaches).
    let mut others: Vec<&mut Child> = procs.long.iter_mut().collect();
    others.extend(procs.jobs.iter_mut().map(|(_, c)| c));
    others.extend(procs.standin.as_mut());
    stop_all(others);
    let daemon_exit = procs.daemon.as_mut().map(|d| {
        // SAFETY: signalling our own child by its pid.
        unsafe { kill(d.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match d.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => break None,
            }
        }
    });
    procs.daemon = None;

    let elapsed = start.elapsed().as_secs_f64();
    let clients = client_outcomes(dir);
    let bench = bench_totals(&dir.join("bench-load.jsonl"));
    let mut verdict = judge(&samples, elapsed.min(total.as_secs_f64()));
    if let Some(p) = &problem {
        verdict.failures.push(p.clone());
    }
    if interrupted {
        verdict
            .failures
            .push("interrupted (Ctrl-C or SIGTERM)".into());
    }
    match daemon_exit {
        Some(Some(st)) if st.success() => {}
        Some(Some(st)) => verdict
            .failures
            .push(format!("drainwatch exited {st} on SIGTERM")),
        Some(None) => verdict
            .failures
            .push("drainwatch did not exit within 20 s of SIGTERM".into()),
        None => {}
    }
    let report = Report {
        opts,
        restart_every,
        sample_every,
        elapsed,
        samples: &samples,
        restarts,
        killed,
        rsts,
        tally: &tally,
        clients: &clients,
        bench: &bench,
        verdict: &verdict,
    };
    let md = report.markdown();
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    let js = dir.join("soak.json");
    std::fs::write(&js, serde_json::to_vec_pretty(&report.json())?)
        .with_context(|| format!("writing {}", js.display()))?;
    println!("{md}");
    println!("markdown and JSON in {}", dir.display());
    if !verdict.failures.is_empty() {
        bail!("soak FAILED: {}", verdict.failures.join("; "));
    }
    Ok(())
}

/// One short, bounded job of `kind`.
fn job(kind: &str, lab: &Path, ca: &Path, bench_out: &Path, churn: u64) -> anyhow::Result<Child> {
    let curl = Path::new("curl");
    let mut cmd = match kind {
        "curl-h2-tls" => {
            let mut c = in_ns(C, curl);
            c.args(["-s", "-o", "/dev/null", "--http2", "--max-time", "3"])
                .arg("--cacert")
                .arg(ca)
                .arg(format!("https://{S_IP}:6443/readyz"));
            c
        }
        "curl-h2c" => {
            let mut c = in_ns(C, curl);
            c.args(["-s", "-o", "/dev/null", "--http2-prior-knowledge"])
                .args(["--max-time", "3"])
                .arg(format!("http://{S_IP}:443/readyz"));
            c
        }
        "churn" | "rr" | "bulk" => {
            let (conc, count) = match kind {
                "churn" => ("2", churn.to_string()),
                "rr" => ("2", "50000".to_string()),
                _ => ("1", "1".to_string()),
            };
            let mut c = in_ns(C, lab);
            c.args(["bench-load", "--target", &format!("{S_IP}:{BENCH_PORT}")])
                .args(["--mode", kind, "--concurrency", conc, "--count", &count])
                .args(["--seconds", "2"]);
            c
        }
        _ => bail!("unknown job {kind}"),
    };
    let out = if kind.starts_with("curl") {
        Stdio::null()
    } else {
        Stdio::from(append(bench_out)?)
    };
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting job {kind}"))
}

/// Per recorded client: requests by outcome.
fn client_outcomes(dir: &Path) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for name in ["soak-new", "soak-reuse"] {
        let text = std::fs::read_to_string(dir.join(format!("{name}.jsonl"))).unwrap_or_default();
        let m: &mut BTreeMap<String, u64> = out.entry(name.to_string()).or_default();
        for l in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(l) {
                let o = v["outcome"].as_str().unwrap_or("unparsable").to_string();
                *m.entry(o).or_default() += 1;
            }
        }
    }
    out
}

/// bench-load totals per mode: (runs, connections, requests).
fn bench_totals(path: &Path) -> BTreeMap<String, (u64, u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for l in text.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(l) {
            let e = out
                .entry(v["mode"].as_str().unwrap_or("?").to_string())
                .or_default();
            e.0 += 1;
            e.1 += v["connections"].as_u64().unwrap_or(0);
            e.2 += v["requests"].as_u64().unwrap_or(0);
        }
    }
    out
}

fn row(s: &Sample) -> String {
    let maps: Vec<String> = s
        .maps
        .values()
        .map(|(e, c)| {
            if *e < 0 {
                format!("-/{c}")
            } else {
                format!("{e}/{c}")
            }
        })
        .collect();
    format!(
        "| {:.0} | {:.1} | {} | {} | {} / {} / {} | {} | {} | {} / {} |",
        s.t_s,
        mib(s.rss_kib),
        s.fds,
        maps.join(" | "),
        s.observations,
        s.rollouts,
        s.verdicts,
        s.events,
        s.lost,
        s.restarts,
        s.sigterms
    )
}

struct Report<'a> {
    opts: &'a Opts,
    restart_every: Duration,
    sample_every: Duration,
    elapsed: f64,
    samples: &'a [Sample],
    restarts: u64,
    killed: u64,
    rsts: u64,
    tally: &'a BTreeMap<&'a str, (u64, u64)>,
    clients: &'a BTreeMap<String, BTreeMap<String, u64>>,
    bench: &'a BTreeMap<String, (u64, u64, u64)>,
    verdict: &'a Verdict,
}

impl Report<'_> {
    fn markdown(&self) -> String {
        let mut s = String::new();
        let pass = self.verdict.failures.is_empty();
        s += &format!(
            "## drainwatch soak: {:.1} min, {}\n\n",
            self.elapsed / 60.0,
            if pass { "PASS" } else { "FAIL" }
        );
        s += &format!(
            "Stand-in restarted {} times (every {} s, down {} s; modes {}){}; RSTs sent with SO_LINGER 0: {}.\n\n",
            self.restarts,
            self.restart_every.as_secs(),
            self.opts.down.as_secs(),
            MODES.join(", "),
            if self.killed > 0 {
                format!(", {} needed SIGKILL", self.killed)
            } else {
                String::new()
            },
            self.rsts
        );
        let map_names: Vec<&String> = self
            .samples
            .first()
            .map(|f| f.maps.keys().collect())
            .unwrap_or_default();
        s += "| t s | RSS MiB | fds |";
        for m in &map_names {
            s += &format!(" {m} |");
        }
        s += " engine obs / rollouts / verdicts | events | lost | restarts / SIGTERMs seen |\n|---|---|---|";
        for _ in &map_names {
            s += "---|";
        }
        s += "---|---|---|---|\n";
        for x in self.samples {
            s += &row(x);
            s += "\n";
        }
        s += "\nMaps: entries / capacity (counted by the daemon every 15 s).\n\n";
        s += "Load:\n\n";
        for (c, outcomes) in self.clients {
            let o: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s += &format!("- {c}: {}\n", o.join(", "));
        }
        for (mode, (runs, conns, reqs)) in self.bench {
            s += &format!(
                "- bench-load {mode}: {runs} runs, {conns} connections, {reqs} requests\n"
            );
        }
        for (kind, (ok, failed)) in self.tally {
            s += &format!("- {kind}: {ok} ok, {failed} failed\n");
        }
        s += "\nVerdict (after a warm-up of 20 %, last quarter vs first quarter):\n\n";
        for n in &self.verdict.notes {
            s += &format!("- {n}\n");
        }
        for f in &self.verdict.failures {
            s += &format!("- FAIL: {f}\n");
        }
        s
    }

    fn json(&self) -> Value {
        json!({
            "minutes": self.opts.minutes,
            "elapsed_s": self.elapsed,
            "restart_every_s": self.restart_every.as_secs(),
            "down_s": self.opts.down.as_secs(),
            "sample_every_s": self.sample_every.as_secs(),
            "churn_per_burst": self.opts.churn,
            "restarts": self.restarts,
            "standin_sigkilled": self.killed,
            "rsts_sent": self.rsts,
            "samples": self.samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
            "clients": self.clients,
            "bench_load": self.bench.iter().map(|(k, (r, c, q))| (k.clone(), json!({"runs": r, "connections": c, "requests": q}))).collect::<serde_json::Map<_, _>>(),
            "jobs": self.tally.iter().map(|(k, (ok, f))| (k.to_string(), json!({"ok": ok, "failed": f}))).collect::<serde_json::Map<_, _>>(),
            "bounds": {
                "warmup_fraction": 0.2,
                "rss_slack_kib": RSS_SLACK_KIB,
                "engine_observation_bytes": OBS_BYTES,
                "fd_slack": FD_SLACK,
            },
            "pass": self.verdict.failures.is_empty(),
            "failures": self.verdict.failures,
            "notes": self.verdict.notes,
        })
    }
}

/// Default output directory under the target dir.
pub fn out_dir(target: &Path) -> PathBuf {
    target.join("soak")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, rss_mib: u64, fds: u64, obs: u64) -> Sample {
        let mut maps = BTreeMap::new();
        maps.insert("socks".into(), (100, 65536));
        Sample {
            t_s: t,
            rss_kib: rss_mib * 1024,
            fds,
            maps,
            observations: obs,
            ..Default::default()
        }
    }

    fn run(f: impl Fn(f64) -> Sample) -> Vec<Sample> {
        (0..=60).map(|i| f(f64::from(i) * 10.0)).collect()
    }

    #[test]
    fn flat_run_passes() {
        let v = judge(&run(|t| s(t, 40, 30, 1000)), 600.0);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
    }

    #[test]
    fn jitter_within_slack_passes() {
        let v = judge(
            &run(|t| s(t, 40 + (t as u64 / 10) % 5, 30 + (t as u64 / 10) % 3, 0)),
            600.0,
        );
        assert!(v.failures.is_empty(), "{:?}", v.failures);
    }

    #[test]
    fn steady_rss_growth_fails() {
        let v = judge(&run(|t| s(t, 40 + t as u64 / 20, 30, 0)), 600.0);
        assert!(
            v.failures.iter().any(|f| f.contains("RSS grew")),
            "{:?}",
            v.failures
        );
    }

    #[test]
    fn growth_following_the_engine_table_passes() {
        // 12 MiB more, beyond the slack, but 14 400 more observations held
        // (17.6 MiB at 1280 B each); the same growth alone fails.
        let v = judge(&run(|t| s(t, 40 + t as u64 / 30, 30, t as u64 * 40)), 600.0);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        let v = judge(&run(|t| s(t, 40 + t as u64 / 30, 30, 9600)), 600.0);
        assert!(!v.failures.is_empty());
    }

    #[test]
    fn engine_that_never_compacts_fails() {
        // 30 minutes, 100 observations/s: bounded, the count stops at the
        // ten-minute window (with a sawtooth); leaking, it keeps climbing.
        let long = |f: fn(f64) -> u64| -> Vec<Sample> {
            (0..=180)
                .map(|i| {
                    let t = f64::from(i) * 10.0;
                    s(t, 60, 30, f(t))
                })
                .collect()
        };
        let bounded = judge(
            &long(|t| (t.min(600.0) * 100.0) as u64 + (t as u64 % 30) * 60),
            1800.0,
        );
        assert!(bounded.failures.is_empty(), "{:?}", bounded.failures);
        let leaking = judge(&long(|t| (t * 100.0) as u64), 1800.0);
        assert!(
            leaking
                .failures
                .iter()
                .any(|f| f.contains("does not compact")),
            "{:?}",
            leaking.failures
        );
        // Too short to tell: a note, not a failure.
        let short = judge(&run(|t| s(t, 40, 30, t as u64 * 100)), 600.0);
        assert!(short.notes.iter().any(|n| n.contains("too short")));
    }

    #[test]
    fn fd_leak_fails() {
        let v = judge(&run(|t| s(t, 40, 30 + t as u64 / 30, 0)), 600.0);
        assert!(
            v.failures.iter().any(|f| f.contains("fds grew")),
            "{:?}",
            v.failures
        );
    }

    #[test]
    fn over_capacity_and_missing_maps_fail() {
        let mut v = run(|t| s(t, 40, 30, 0));
        v[30].maps.insert("socks".into(), (70000, 65536));
        v[31].maps.insert("flows".into(), (-1, 65536));
        let j = judge(&v, 600.0);
        assert!(j.failures.iter().any(|f| f.contains("> capacity")));
        assert!(
            j.failures
                .iter()
                .any(|f| f.contains("flows: entries never"))
        );
        let none: Vec<Sample> = run(|t| Sample {
            t_s: t,
            ..Default::default()
        });
        assert!(!judge(&none, 600.0).failures.is_empty());
    }

    #[test]
    fn too_few_samples_fail() {
        assert!(!judge(&[s(0.0, 40, 30, 0)], 600.0).failures.is_empty());
    }

    #[test]
    fn metric_series_parse() {
        let text = "# HELP x\ndrainwatch_map_entries{map=\"socks\"} 12\ndrainwatch_map_entries_x 3\ndrainwatch_correlation_rollouts 4\n";
        let e = series(text, "drainwatch_map_entries");
        assert_eq!(e, vec![("map=\"socks\"", 12.0)]);
        assert_eq!(label(e[0].0, "map"), Some("socks"));
        assert_eq!(total(text, "drainwatch_correlation_rollouts"), 4);
    }
}
