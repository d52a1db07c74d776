//! The benchmarks' bounded load: a server and a generator for connection
//! churn, 1-byte request/response and bulk streams (`cargo xtask bench`),
//! at full speed or at a fixed offered rate (`--rate`), and many held,
//! mostly idle connections (`hold`, for `bench scale`). The generator is the
//! ground truth: it counts every connection it opened and every request it
//! completed, and stops at a count or a time limit, whichever comes first.
//!
//! Wire protocol: the client's first byte says what it wants. `c`: the
//! server closes at once (churn: one connection = connect, 1 byte, close).
//! `r`: one byte back for every byte (request/response). `b`: the server
//! reads until EOF (bulk).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What a generator run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A new connection per request, closed at once.
    Churn,
    /// 1-byte requests and responses on kept connections.
    Rr,
    /// Bulk streams to the server.
    Bulk,
    /// A new connection per request: connect, a 1-byte request and its
    /// 1-byte response, close (the client closes first).
    ConnRr,
    /// Open `--count` connections (one 1-byte exchange each), hold them
    /// mostly idle for `--hold-seconds` (a 1-byte exchange every
    /// `--ping-seconds`), then reset `--reset-fraction` of them at once
    /// (SO_LINGER 0) and close the rest.
    Hold,
}

/// Generator settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The server.
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Parallel connections (churn: parallel connect loops).
    #[arg(long, default_value_t = 4)]
    pub concurrency: u32,
    /// Stop after this many connections (churn) or requests (rr).
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Stop after this many seconds at most (hold: the opening phase).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Offered load: units (connections or requests) per second over all
    /// workers, each unit started at its scheduled time; without it, as fast
    /// as the workers go.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Hold: how long the connections stay open once all are open.
    #[arg(long, default_value_t = 0.0)]
    pub hold_seconds: f64,
    /// Hold: seconds between a connection's 1-byte exchanges (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub ping_seconds: f64,
    /// Hold: the fraction of connections reset at once at the end.
    #[arg(long, default_value_t = 0.0)]
    pub reset_fraction: f64,
}

/// A unit started later than this after its scheduled time counts as late.
const LATE: Duration = Duration::from_millis(5);

/// A generator run's result (one JSON line on stdout).
#[derive(Debug, Serialize)]
pub struct LoadResult {
    pub mode: Mode,
    /// Connections opened successfully.
    pub connections: u64,
    /// Connects that failed.
    pub connect_errors: u64,
    /// Requests completed (churn: = connections; rr: round trips).
    pub requests: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
    /// Connections per second (churn) or requests per second (rr).
    pub rate: f64,
    /// Bulk throughput, bits per second.
    pub bits_per_s: f64,
    /// Latency of one request (churn: connect to close), microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    /// `--rate` (0 without it): the offered units per second.
    pub offered_rate: f64,
    /// Units started more than 5 ms after their scheduled time.
    pub late: u64,
    /// Hold: connections open at once at the end of the opening phase.
    pub held: u64,
    /// Hold: connections reset (SO_LINGER 0) in the final burst.
    pub reset: u64,
    /// Hold: 1-byte exchanges on held connections that failed.
    pub hold_errors: u64,
}

/// Serves every mode on `listen` until killed.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    raise_nofile();
    let l = TcpListener::bind(listen).await?;
    println!("LISTENING {}", l.local_addr()?);
    loop {
        let (mut s, _) = match l.accept().await {
            Ok(x) => x,
            // Out of fds or a connection reset before accept: keep serving.
            Err(_) => continue,
        };
        tokio::spawn(async move {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).await.is_err() {
                return;
            }
            match b[0] {
                b'r' => {
                    let _ = s.set_nodelay(true);
                    let _ = s.write_all(&b).await;
                    while s.read_exact(&mut b).await.is_ok() {
                        if s.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                }
                b'b' => {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
                _ => {}
            }
        });
    }
}

/// Runs the generator; bounded by `count` and `seconds`.
pub async fn run(a: LoadArgs) -> anyhow::Result<LoadResult> {
    check_args(&a)?;
    if a.mode == Mode::Hold {
        raise_nofile();
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.seconds);
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        started,
        deadline,
        opened: tokio::sync::Barrier::new(a.concurrency as usize),
        burst: tokio::sync::Barrier::new(a.concurrency as usize),
        held: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let (shared, a) = (shared.clone(), a.clone());
        tasks.push(tokio::spawn(async move { worker(a, shared).await }));
    }
    let mut lat: Vec<u32> = Vec::new();
    let (mut conns, mut errs, mut reqs, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let (mut late, mut reset, mut hold_errors) = (0u64, 0u64, 0u64);
    for t in tasks {
        let w = t.await?;
        conns += w.connections;
        errs += w.connect_errors;
        reqs += w.requests;
        bytes += w.bytes;
        late += w.late;
        reset += w.reset;
        hold_errors += w.hold_errors;
        lat.extend(w.latencies_us);
    }
    // A fixed-rate run's window is the scheduled one: a generator that
    // could not keep up shows as fewer units in it, not as a longer run.
    let elapsed_s = if a.rate.is_some() && a.mode != Mode::Hold {
        a.seconds
    } else {
        started.elapsed().as_secs_f64()
    };
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        f64::from(lat[i.min(lat.len() - 1)])
    };
    Ok(LoadResult {
        mode: a.mode,
        connections: conns,
        connect_errors: errs,
        requests: reqs,
        bytes,
        elapsed_s,
        rate: reqs as f64 / elapsed_s,
        bits_per_s: bytes as f64 * 8.0 / elapsed_s,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        offered_rate: a.rate.unwrap_or(0.0),
        late,
        held: shared.held.load(Ordering::Relaxed),
        reset,
        hold_errors,
    })
}

/// Bounds every run: a bad value is refused with its flag's name.
fn check_args(a: &LoadArgs) -> anyhow::Result<()> {
    let within = |v: f64, hi: f64| v.is_finite() && (0.0..=hi).contains(&v);
    if a.concurrency == 0 || a.concurrency > 4096 {
        anyhow::bail!("--concurrency {}: must be in 1..=4096", a.concurrency);
    }
    if !within(a.seconds, 600.0) || a.seconds == 0.0 {
        anyhow::bail!("--seconds {}: must be in (0, 600]", a.seconds);
    }
    if let Some(r) = a.rate
        && (!within(r, 10_000_000.0) || r == 0.0)
    {
        anyhow::bail!("--rate {r}: must be in (0, 1e7]");
    }
    if !within(a.hold_seconds, 3600.0) {
        anyhow::bail!("--hold-seconds {}: must be in [0, 3600]", a.hold_seconds);
    }
    if !within(a.ping_seconds, 3600.0) {
        anyhow::bail!("--ping-seconds {}: must be in [0, 3600]", a.ping_seconds);
    }
    if !within(a.reset_fraction, 1.0) {
        anyhow::bail!("--reset-fraction {}: must be in [0, 1]", a.reset_fraction);
    }
    Ok(())
}

/// Many held connections need many descriptors: the soft limit goes up
/// to the hard one (root may raise both). A failure leaves the limits as
/// they were; the connects that then fail are counted as errors.
pub fn raise_nofile() {
    const WANT: libc::rlim_t = 1 << 20;
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return;
        }
        let both = libc::rlimit {
            rlim_cur: WANT.max(r.rlim_cur),
            rlim_max: WANT.max(r.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &both) != 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// The state the workers share.
struct Shared {
    issued: AtomicU64,
    stop: AtomicBool,
    started: Instant,
    deadline: Instant,
    /// Hold: every worker has opened its connections.
    opened: tokio::sync::Barrier,
    /// Hold: every worker is ready to reset its share at once.
    burst: tokio::sync::Barrier,
    held: AtomicU64,
}

/// When unit `n` is due at `rate` units per second from `start`.
pub fn due(start: Instant, n: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(n as f64 / rate)
}

#[derive(Default)]
struct Worker {
    connections: u64,
    connect_errors: u64,
    requests: u64,
    bytes: u64,
    late: u64,
    reset: u64,
    hold_errors: u64,
    latencies_us: Vec<u32>,
}

impl Worker {
    /// Takes one unit of work (a connection or a request) if the budget
    /// allows; at a fixed rate, waits for the unit's scheduled time first
    /// (and counts it late when it is taken after that).
    async fn take(&mut self, a: &LoadArgs, sh: &Shared) -> bool {
        if sh.stop.load(Ordering::Relaxed) || Instant::now() >= sh.deadline {
            return false;
        }
        let n = sh.issued.fetch_add(1, Ordering::Relaxed);
        if n >= a.count {
            sh.stop.store(true, Ordering::Relaxed);
            return false;
        }
        if let Some(rate) = a.rate {
            let at = due(sh.started, n, rate);
            if at >= sh.deadline {
                return false;
            }
            let now = Instant::now();
            if now > at + LATE {
                self.late += 1;
            } else {
                tokio::time::sleep_until(at.into()).await;
            }
        }
        true
    }
}

/// One 1-byte exchange on an `r` connection.
async fn exchange(s: &mut TcpStream) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    s.write_all(b"x").await?;
    s.read_exact(&mut b).await?;
    Ok(())
}

async fn worker(a: LoadArgs, sh: Arc<Shared>) -> Worker {
    let mut w = Worker::default();
    // Keep at most this many latency samples per worker (bounded memory).
    const SAMPLES: usize = 200_000;
    let us = |t: Instant| t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    let deadline = sh.deadline;
    match a.mode {
        Mode::Churn => {
            while w.take(&a, &sh).await {
                let t = Instant::now();
                match TcpStream::connect(a.target).await {
                    Ok(mut s) => {
                        w.connections += 1;
                        let mut b = [0u8; 1];
                        if s.write_all(b"c").await.is_ok() {
                            // The server closes: EOF.
                            let _ = s.read(&mut b).await;
                            w.requests += 1;
                            if w.latencies_us.len() < SAMPLES {
                                w.latencies_us.push(us(t));
                            }
                        }
                    }
                    Err(_) => w.connect_errors += 1,
                }
            }
        }
        Mode::Rr => {
            let Ok(mut s) = TcpStream::connect(a.target).await else {
                w.connect_errors += 1;
                return w;
            };
            w.connections += 1;
            let _ = s.set_nodelay(true);
            let mut b = [0u8; 1];
            if s.write_all(b"r").await.is_err() || s.read_exact(&mut b).await.is_err() {
                return w;
            }
            while w.take(&a, &sh).await {
                let t = Instant::now();
                if exchange(&mut s).await.is_err() {
                    break;
                }
                w.requests += 1;
                if w.latencies_us.len() < SAMPLES {
                    w.latencies_us.push(us(t));
                }
            }
        }
        Mode::Bulk => {
            let Ok(mut s) = TcpStream::connect(a.target).await else {
                w.connect_errors += 1;
                return w;
            };
            w.connections += 1;
            let buf = vec![0x42u8; 1 << 16];
            if s.write_all(b"b").await.is_err() {
                return w;
            }
            while Instant::now() < deadline && !sh.stop.load(Ordering::Relaxed) {
                match s.write_all(&buf).await {
                    Ok(()) => w.bytes += buf.len() as u64,
                    Err(_) => break,
                }
            }
            let _ = s.shutdown().await;
        }
        Mode::ConnRr => {
            while w.take(&a, &sh).await {
                let t = Instant::now();
                match TcpStream::connect(a.target).await {
                    Ok(mut s) => {
                        w.connections += 1;
                        let _ = s.set_nodelay(true);
                        let mut b = [0u8; 1];
                        if s.write_all(b"r").await.is_ok() && s.read_exact(&mut b).await.is_ok() {
                            w.requests += 1;
                            if w.latencies_us.len() < SAMPLES {
                                w.latencies_us.push(us(t));
                            }
                        }
                    }
                    Err(_) => w.connect_errors += 1,
                }
            }
        }
        Mode::Hold => hold(&a, &sh, &mut w).await,
    }
    w
}

/// A held connection's connect or exchange that takes longer than this
/// failed: one lost SYN or segment must not stop the whole phase.
const HOLD_TIMEOUT: Duration = Duration::from_secs(10);

/// The hold mode's worker: open its share, hold, ping, then the burst.
async fn hold(a: &LoadArgs, sh: &Shared, w: &mut Worker) {
    let mut conns = Vec::new();
    while w.take(a, sh).await {
        match tokio::time::timeout(HOLD_TIMEOUT, TcpStream::connect(a.target)).await {
            Ok(Ok(mut s)) => {
                w.connections += 1;
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 1];
                let first = async {
                    s.write_all(b"r").await?;
                    s.read_exact(&mut b).await
                };
                if matches!(tokio::time::timeout(HOLD_TIMEOUT, first).await, Ok(Ok(_))) {
                    w.requests += 1;
                    conns.push(s);
                } else {
                    w.hold_errors += 1;
                }
            }
            _ => w.connect_errors += 1,
        }
    }
    sh.held.fetch_add(conns.len() as u64, Ordering::Relaxed);
    if sh.opened.wait().await.is_leader() {
        // The bench samples the observer while the connections are held.
        eprintln!("HELD {}", sh.held.load(Ordering::Relaxed));
    }
    let until = Instant::now() + Duration::from_secs_f64(a.hold_seconds);
    if a.ping_seconds > 0.0 && !conns.is_empty() {
        // Spread the exchanges evenly over each ping period.
        let gap = Duration::from_secs_f64(a.ping_seconds / conns.len() as f64);
        let mut next = Instant::now();
        'ping: loop {
            for s in &mut conns {
                next += gap;
                if next >= until {
                    break 'ping;
                }
                tokio::time::sleep_until(next.into()).await;
                match tokio::time::timeout(HOLD_TIMEOUT, exchange(s)).await {
                    Ok(Ok(())) => w.requests += 1,
                    _ => w.hold_errors += 1,
                }
            }
        }
    }
    tokio::time::sleep_until(until.into()).await;
    let resets = (conns.len() as f64 * a.reset_fraction).round() as usize;
    let rest = conns.split_off(resets.min(conns.len()));
    sh.burst.wait().await;
    for s in conns {
        if s.set_zero_linger().is_ok() {
            w.reset += 1;
        }
        drop(s);
    }
    drop(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_due_evenly_at_the_rate() {
        let t = Instant::now();
        assert_eq!(due(t, 0, 2000.0), t);
        assert_eq!(due(t, 2000, 2000.0), t + Duration::from_secs(1));
        assert_eq!(due(t, 1, 10_000.0), t + Duration::from_micros(100));
    }

    #[test]
    fn bad_arguments_name_the_flag() {
        let good = LoadArgs {
            target: "127.0.0.1:1".parse().expect("addr"),
            mode: Mode::Hold,
            concurrency: 4,
            count: 10,
            seconds: 5.0,
            rate: Some(100.0),
            hold_seconds: 1.0,
            ping_seconds: 0.0,
            reset_fraction: 0.5,
        };
        assert!(check_args(&good).is_ok());
        let e = check_args(&LoadArgs {
            rate: Some(0.0),
            ..good.clone()
        })
        .expect_err("rate 0");
        assert!(e.to_string().contains("--rate"), "{e}");
        let e = check_args(&LoadArgs {
            reset_fraction: 1.5,
            ..good.clone()
        })
        .expect_err("fraction");
        assert!(e.to_string().contains("--reset-fraction"), "{e}");
        let e = check_args(&LoadArgs {
            seconds: f64::NAN,
            ..good
        })
        .expect_err("nan");
        assert!(e.to_string().contains("--seconds"), "{e}");
    }
}
