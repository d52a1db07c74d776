//! The benchmarks' bounded load: a server and a generator for connection
//! churn, 1-byte request/response and bulk streams (`cargo xtask bench`).
//! The generator is the ground truth: it counts every connection it opened
//! and every request it completed, and stops at a count or a time limit,
//! whichever comes first.
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
    /// Stop after this many seconds at most.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
}

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
}

/// Serves every mode on `listen` until killed.
pub async fn serve(listen: SocketAddr) -> std::io::Result<()> {
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
    if a.concurrency == 0 || !a.seconds.is_finite() || a.seconds <= 0.0 || a.seconds > 600.0 {
        anyhow::bail!("--concurrency must be > 0 and --seconds in (0, 600]");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let started = Instant::now();
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let (issued, stop, a) = (issued.clone(), stop.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            worker(a, deadline, issued, stop).await
        }));
    }
    let mut lat: Vec<u32> = Vec::new();
    let (mut conns, mut errs, mut reqs, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for t in tasks {
        let w = t.await?;
        conns += w.connections;
        errs += w.connect_errors;
        reqs += w.requests;
        bytes += w.bytes;
        lat.extend(w.latencies_us);
    }
    let elapsed_s = started.elapsed().as_secs_f64();
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
    })
}

#[derive(Default)]
struct Worker {
    connections: u64,
    connect_errors: u64,
    requests: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
}

/// Takes one unit of work (a connection or a request) if the budget allows.
fn take(issued: &AtomicU64, count: u64, stop: &AtomicBool, deadline: Instant) -> bool {
    if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
        return false;
    }
    if issued.fetch_add(1, Ordering::Relaxed) >= count {
        stop.store(true, Ordering::Relaxed);
        return false;
    }
    true
}

async fn worker(
    a: LoadArgs,
    deadline: Instant,
    issued: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Worker {
    let mut w = Worker::default();
    // Keep at most this many latency samples per worker (bounded memory).
    const SAMPLES: usize = 200_000;
    let us = |t: Instant| t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    match a.mode {
        Mode::Churn => {
            while take(&issued, a.count, &stop, deadline) {
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
            while take(&issued, a.count, &stop, deadline) {
                let t = Instant::now();
                if s.write_all(b"x").await.is_err() || s.read_exact(&mut b).await.is_err() {
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
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                match s.write_all(&buf).await {
                    Ok(()) => w.bytes += buf.len() as u64,
                    Err(_) => break,
                }
            }
            let _ = s.shutdown().await;
        }
    }
    w
}
