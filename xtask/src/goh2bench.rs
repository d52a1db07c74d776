//! `cargo xtask bench goh2`: what the Go HTTP/2 uprobes cost a TLS HTTP/2
//! server. A Go server (x/net, the test program built stripped with Go
//! 1.24) on loopback, two loads, interleaved rounds without and with
//! drainwatch attached to it:
//! - `h2load` requests on kept connections (`/ok`): no GOAWAY, so the hooks
//!   never run; the aim is no measurable loss of request rate;
//! - Go clients whose every request is answered with `Connection: close`
//!   (`/close`): one GOAWAY sent and one received per request, the worst
//!   case; the cost per hook run from the kernel's program statistics.
//!
//! Markdown in target/bench/goh2.md.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::bench::{kill, median, spread};

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(go: &Path, port: u16) -> anyhow::Result<Server> {
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(go)
            .args(["server", "-impl", "xnet", "-addr", &addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", go.display()))?;
        let out = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("listening") {
            bail!("the Go server said {line:?}");
        }
        Ok(Server { child, addr })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Daemon {
    child: Child,
    metrics: String,
}

impl Daemon {
    fn start(bin: &Path, port: u16, metrics_port: u16) -> anyhow::Result<Daemon> {
        let metrics = format!("127.0.0.1:{metrics_port}");
        let child = Command::new(bin)
            .args([
                "run",
                "--no-wire",
                "--no-kube",
                "--output",
                "none",
                "--bpf-stats",
            ])
            .arg(format!("--port={port}"))
            .args(["--go-client", "h2probe", "--metrics-addr", &metrics])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting drainwatch")?;
        Ok(Daemon { child, metrics })
    }

    fn scrape(&self) -> String {
        Command::new("curl")
            .args(["-sf", &format!("http://{}/metrics", self.metrics)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the daemon has hooked the server's binary.
    fn wait_hooked(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if metric(&self.scrape(), "drainwatch_go_binaries_hooked") >= 1.0 {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("drainwatch did not hook the Go server within 30 s")
    }

    /// (kernel ns, runs) of the Go uprobe program so far.
    fn hook_time(&self) -> (f64, f64) {
        let text = self.scrape();
        let mut ns = 0.0;
        let mut runs = 0.0;
        for prog in ["go_h2_cookie", "go_h2"] {
            ns += metric(
                &text,
                &format!("drainwatch_program_run_seconds_total{{program=\"{prog}\"}}"),
            ) * 1e9;
            runs += metric(
                &text,
                &format!("drainwatch_program_runs_total{{program=\"{prog}\"}}"),
            );
        }
        (ns, runs)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { kill(self.child.id() as i32, 15) };
        let _ = self.child.wait();
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Requests per second of h2load on 4 kept connections, 10 streams each.
fn h2load(addr: &str, secs: u32) -> anyhow::Result<f64> {
    let out = Command::new("h2load")
        .args(["-c", "4", "-m", "10", "-D", &secs.to_string()])
        .arg(format!("https://{addr}/ok"))
        .output()
        .context("running h2load (Debian's nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_h2load(&text).with_context(|| format!("h2load said: {text}"))
}

/// `finished in 5.00s, 41234.60 req/s, ...` -> 41234.6; and no failures.
fn parse_h2load(text: &str) -> anyhow::Result<f64> {
    let rate = text
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("finished in ")?;
            let (_, after) = rest.split_once(", ")?;
            after.split_once(" req/s")?.0.trim().parse::<f64>().ok()
        })
        .context("no request rate")?;
    let failed = text
        .lines()
        .find_map(|l| {
            let l = l.strip_prefix("requests: ")?;
            let i = l.find(" failed")?;
            l[..i].rsplit(' ').next()?.parse::<u64>().ok()
        })
        .context("no failure count")?;
    if failed != 0 {
        bail!("{failed} requests failed");
    }
    Ok(rate)
}

/// Requests per second of 4 Go clients whose every request ends in a GOAWAY.
fn goaway_loop(go: &Path, addr: &str, secs: u32) -> anyhow::Result<f64> {
    let out = Command::new(go)
        .args(["loop", "-impl", "xnet", "-addr", addr, "-path", "/close"])
        .args(["-workers", "4", "-for", &format!("{secs}s")])
        .output()
        .context("running the Go loop client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (done, failed) = text
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next(), w.next()) {
                (Some("requests"), Some(n), Some("failed"), Some(f)) => {
                    Some((n.parse::<f64>().ok()?, f.parse::<u64>().ok()?))
                }
                _ => None,
            }
        })
        .with_context(|| format!("the Go client said: {text}"))?;
    if failed != 0 {
        bail!("{failed} of the Go client's requests failed");
    }
    Ok(done / f64::from(secs))
}

pub fn goh2(bin: &Path, go: &Path, out_dir: &Path, rounds: u32, secs: u32) -> anyhow::Result<()> {
    let mut rate = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    let mut per_run = Vec::new();
    let mut runs_per_request = Vec::new();
    for round in 0..rounds {
        for (cfg, with) in [false, true].into_iter().enumerate() {
            let port = free_port()?;
            let daemon = if with {
                Some(Daemon::start(bin, port, free_port()?)?)
            } else {
                None
            };
            // The daemon before the server: it hooks the server's binary as
            // its listener opens (and its clients' as they connect).
            if let Some(d) = &daemon {
                let start = Instant::now();
                while d.scrape().is_empty() && start.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let server = Server::start(go, port)?;
            if let Some(d) = &daemon {
                d.wait_hooked()?;
            }
            rate[0][cfg].push(h2load(&server.addr, secs)?);
            let before = daemon.as_ref().map(Daemon::hook_time);
            let r = goaway_loop(go, &server.addr, secs)?;
            rate[1][cfg].push(r);
            if let (Some(d), Some((ns0, n0))) = (&daemon, before) {
                // The statistics are polled every 500 ms.
                std::thread::sleep(Duration::from_millis(1200));
                let (ns1, n1) = d.hook_time();
                if n1 > n0 {
                    per_run.push((ns1 - ns0) / (n1 - n0));
                    runs_per_request.push((n1 - n0) / (r * f64::from(secs)));
                }
            }
            eprintln!(
                "xtask: bench goh2 round {}/{rounds} {}: h2load {:.0} req/s, GOAWAY per request {r:.0} req/s",
                round + 1,
                if with { "drainwatch" } else { "no observer" },
                rate[0][cfg].last().copied().unwrap_or(0.0)
            );
            drop(server);
            drop(daemon);
        }
    }
    let mut md = String::new();
    writeln!(
        md,
        "# Go HTTP/2 uprobes: TLS HTTP/2 server request rate\n\n{rounds} interleaved rounds of {secs} s, median (spread = max - min).\n"
    )?;
    writeln!(
        md,
        "| load | no observer, req/s | drainwatch, req/s | ratio |\n|---|---|---|---|"
    )?;
    for (i, name) in [
        "h2load, 4 connections x 10 streams, /ok (no GOAWAY)",
        "4 Go clients, /close (a GOAWAY sent and received per request)",
    ]
    .iter()
    .enumerate()
    {
        let (mut a, mut b) = (rate[i][0].clone(), rate[i][1].clone());
        let (sa, sb) = (spread(&a), spread(&b));
        let (ma, mb) = (median(&mut a), median(&mut b));
        writeln!(
            md,
            "| {name} | {ma:.0} ({sa:.0}) | {mb:.0} ({sb:.0}) | {:.3} |",
            if ma > 0.0 { mb / ma } else { 0.0 }
        )?;
    }
    let n = median(&mut per_run);
    let k = median(&mut runs_per_request);
    writeln!(
        md,
        "\nKernel time per hook run (the BPF program; the breakpoint trap itself is not in it): {n:.0} ns median, {k:.2} runs per /close request."
    )?;
    std::fs::create_dir_all(out_dir)?;
    let file = out_dir.join("goh2.md");
    std::fs::write(&file, &md)?;
    println!("{md}");
    eprintln!("xtask: written to {}", file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn h2load_summary() {
        let text = "finished in 5.00s, 41234.60 req/s, 1.23MB/s\nrequests: 206173 total, 206173 started, 206173 done, 206173 succeeded, 0 failed, 0 errored, 0 timeout\n";
        assert_eq!(super::parse_h2load(text).expect("rate"), 41234.6);
        let bad = text.replace("0 failed", "3 failed");
        assert!(super::parse_h2load(&bad).is_err());
        assert!(super::parse_h2load("nothing").is_err());
    }
}
