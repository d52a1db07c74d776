//! Test harness for the kernel tests: network namespaces the test creates
//! (deleted on drop), code run inside them, and the real daemon as a child
//! process whose JSON events and metrics the tests read.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// How often a wait re-checks its condition: short next to what is waited on, long
/// enough not to compete with it for the CPU.
pub const POLL: Duration = Duration::from_millis(20);

/// Waits until `cond` returns `Ok`. Tests order steps across processes on the event
/// itself (a daemon line, a metric, a socket or process state), never on a sleep: on
/// two busy cores a sleep is not an order. `within` only bounds a hang. `cond` returns
/// `Err(what it saw)` while the event is missing; the failure names what was awaited
/// and what was last seen.
pub fn wait_for<T>(within: Duration, what: &str, mut cond: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// True once every thread of `pid` is stopped (SIGSTOP has taken effect: the signal
/// is only queued when `kill` returns).
pub fn all_threads_stopped(pid: u32) -> Result<(), String> {
    let dir = format!("/proc/{pid}/task");
    let mut states = Vec::new();
    for t in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let t = t.map_err(|e| e.to_string())?;
        let stat = std::fs::read_to_string(t.path().join("stat")).map_err(|e| e.to_string())?;
        // The state follows the parenthesised command name, which may hold spaces.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .unwrap_or('?');
        states.push(state);
    }
    if !states.is_empty() && states.iter().all(|s| *s == 'T' || *s == 't') {
        Ok(())
    } else {
        Err(format!("thread states {states:?}"))
    }
}

/// Kernel tests share the host's tracepoints: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when the kernel tests can run; otherwise prints why they skip.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
            "{test} needs root: DRAINWATCH_NO_SKIP is set (cargo xtask test as root), nothing may skip"
        );
        eprintln!("skipped {test}: needs root to load eBPF programs and create network namespaces");
        return false;
    }
    true
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A client and a server namespace joined by a veth pair, with addresses
/// from 198.18.0.0/15 and 2001:2::/48 (benchmarking ranges) and no route out.
pub struct Pair {
    pub client: String,
    pub server: String,
    pub client_v4: String,
    pub server_v4: String,
    pub client_v6: String,
    pub server_v6: String,
    /// The veth end in the server namespace.
    pub server_dev: String,
}

impl Pair {
    pub fn new() -> Pair {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let client = format!("dwt-{id}-c");
        let server = format!("dwt-{id}-s");
        // Each pair gets its own /30 so events can be told apart by address.
        let octet = 100 + (std::process::id() % 100) as u32 + n;
        let pair = Pair {
            client_v4: format!("198.18.{}.1", octet % 256),
            server_v4: format!("198.18.{}.2", octet % 256),
            client_v6: format!("2001:2:0:{:x}::1", octet),
            server_v6: format!("2001:2:0:{:x}::2", octet),
            client,
            server,
            server_dev: format!("dws{n}x{}", std::process::id() % 10000),
        };
        let (c, s) = (&pair.client, &pair.server);
        sh(&["ip", "netns", "add", c]);
        sh(&["ip", "netns", "add", s]);
        let veth_c = format!("dwc{n}x{}", std::process::id() % 10000);
        let veth_s = pair.server_dev.clone();
        sh(&[
            "ip", "link", "add", &veth_c, "netns", c, "type", "veth", "peer", "name", &veth_s,
            "netns", s,
        ]);
        for (ns, dev, v4, v6) in [
            (c, &veth_c, &pair.client_v4, &pair.client_v6),
            (s, &veth_s, &pair.server_v4, &pair.server_v6),
        ] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            add_addrs(ns, dev, &format!("{v4}/30"), &format!("{v6}/64"));
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        pair
    }

    /// Runs `f` on a thread that has joined network namespace `ns`.
    pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid netns fd; only this thread changes namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    pub fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        Pair::run_in(&self.client, f)
    }

    pub fn in_server<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        Pair::run_in(&self.server, f)
    }

    pub fn exec(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full);
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// client -- router -- server, each a namespace, two veth links, a /30 on
/// each side (198.18.0.0/15), routes only between the two subnets.
pub struct Routed {
    pub client: String,
    pub router: String,
    pub server: String,
    pub client_ip: String,
    pub server_ip: String,
    /// The client's veth (where a client-side observer attaches).
    pub client_dev: String,
}

impl Routed {
    pub fn new() -> Routed {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let id = format!("{pid}-{n}");
        let base = 2 * ((pid % 60) + n * 7 % 60) as u32;
        let (a, b) = (base % 250, (base + 1) % 250);
        let r = Routed {
            client: format!("dwt-{id}-rc"),
            router: format!("dwt-{id}-rr"),
            server: format!("dwt-{id}-rs"),
            client_ip: format!("198.19.{a}.1"),
            server_ip: format!("198.19.{b}.2"),
            client_dev: format!("dwrc{n}x{}", pid % 10000),
        };
        for ns in [&r.client, &r.router, &r.server] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let rc = format!("dwrr{n}x{}", pid % 10000);
        let rs = format!("dwrq{n}x{}", pid % 10000);
        let sv = format!("dwrs{n}x{}", pid % 10000);
        sh(&[
            "ip",
            "link",
            "add",
            &r.client_dev,
            "netns",
            &r.client,
            "type",
            "veth",
            "peer",
            "name",
            &rc,
            "netns",
            &r.router,
        ]);
        sh(&[
            "ip", "link", "add", &sv, "netns", &r.server, "type", "veth", "peer", "name", &rs,
            "netns", &r.router,
        ]);
        let router_c = format!("198.19.{a}.2");
        let router_s = format!("198.19.{b}.1");
        for (ns, dev, addr) in [
            (&r.client, &r.client_dev, format!("{}/30", r.client_ip)),
            (&r.router, &rc, format!("{router_c}/30")),
            (&r.router, &rs, format!("{router_s}/30")),
            (&r.server, &sv, format!("{}/30", r.server_ip)),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", &addr, "dev", dev]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        sh(&[
            "ip",
            "-n",
            &r.client,
            "route",
            "add",
            &format!("198.19.{b}.0/30"),
            "via",
            &router_c,
        ]);
        sh(&[
            "ip",
            "-n",
            &r.server,
            "route",
            "add",
            &format!("198.19.{a}.0/30"),
            "via",
            &router_s,
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &r.router,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        r
    }

    /// Makes the router a stateful middlebox that forgets flows idle for
    /// `secs` and answers their next packet with an RST (TOOLCHAIN.md's recipe).
    pub fn idle_reset_middlebox(&self, secs: u32) {
        let ns = &self.router;
        sh(&["ip", "netns", "exec", ns, "nft", "add table inet mb"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "add chain inet mb mbfwd { type filter hook forward priority 0 ; }",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "add rule inet mb mbfwd ct state invalid reject with tcp reset",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("net.netfilter.nf_conntrack_tcp_timeout_established={secs}"),
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.netfilter.nf_conntrack_tcp_loose=0",
        ]);
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        for ns in [&self.client, &self.router, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The real `drainwatch run` binary, with JSON events collected from stdout.
pub struct Daemon {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    pub metrics_addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    /// The namespace it runs in, if not the host's.
    netns: Option<String>,
    /// Reads stdout until the daemon closes it.
    stdout_reader: Option<std::thread::JoinHandle<()>>,
}

/// Adds an IPv4 and an IPv6 address (with their prefix lengths) to `dev`
/// in namespace `ns`, the IPv6 one without duplicate address detection.
pub fn add_addrs(ns: &str, dev: &str, v4_cidr: &str, v6_cidr: &str) {
    sh(&["ip", "-n", ns, "addr", "add", v4_cidr, "dev", dev]);
    sh(&["ip", "-n", ns, "addr", "add", v6_cidr, "dev", dev, "nodad"]);
}

/// `drainwatch` run inside network namespace `ns` (`ip netns exec`).
pub fn drainwatch_in(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_drainwatch")]);
    c
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_in(None, extra)
    }

    /// Starts the daemon inside network namespace `netns` (the wire
    /// observer attaches to interfaces there).
    pub fn start_in(netns: Option<&str>, extra: &[&str]) -> Daemon {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_drainwatch")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_drainwatch")),
        };
        let mut child = cmd
            .args([
                "run",
                "--output",
                "json",
                "--metrics-addr",
                &metrics_addr.to_string(),
            ])
            .args(extra)
            .env("DRAINWATCH_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn drainwatch");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let ev = events.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("daemon printed non-JSON {line:?}: {e}"));
                ev.lock().expect("events").push(v);
            }
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let st = stderr_text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Kept before readiness is signalled: a test that reads the
                // log once the daemon is ready finds the ready line in it.
                let ready = line.contains("drainwatch ready");
                {
                    let mut s = st.lock().expect("stderr");
                    s.push_str(&line);
                    s.push('\n');
                }
                if ready {
                    let _ = ready_tx.send(());
                }
            }
        });
        let mut d = Daemon {
            child,
            events,
            metrics_addr,
            stderr: stderr_text,
            netns: netns.map(str::to_string),
            stdout_reader: Some(stdout_reader),
        };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = d.child.kill();
            panic!("daemon did not become ready; stderr:\n{}", d.stderr());
        }
        d
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().expect("events").clone()
    }

    /// Events touching any of `addrs` (as local or remote IP).
    pub fn events_for(&self, addrs: &[&str]) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| {
                addrs.iter().any(|a| {
                    let hit = |k: &str| {
                        e[k].as_str()
                            .and_then(|s| s.parse::<SocketAddr>().ok())
                            .map(|sa| sa.ip().to_string() == *a)
                            .unwrap_or(false)
                    };
                    hit("local") || hit("remote")
                })
            })
            .collect()
    }

    /// Waits until `pred` holds for the events touching `addrs`.
    pub fn wait_for(
        &self,
        addrs: &[&str],
        what: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let evs = self.events_for(addrs);
            if pred(&evs) {
                // Not an order but an observation window, so that "exactly N" assertions
                // can fail: an extra event (a duplicate) emitted within 300 ms of the
                // awaited ones is caught. Everything the awaited events depend on was
                // already read (one ring buffer, read in order); a slow daemon can only
                // make an extra event miss the window, never fail a correct run.
                std::thread::sleep(Duration::from_millis(300));
                return self.events_for(addrs);
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; events: {evs:#?}\nstderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET /metrics over HTTP with curl (a real client).
    pub fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "curl"]);
                c
            }
            None => Command::new("curl"),
        };
        let out = cmd.args(["-sf", &url]).output().expect("curl");
        assert!(out.status.success(), "scraping /metrics failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// GET `path` (with its query) on the metrics listener with curl:
    /// (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.metrics_addr);
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "curl"]);
                c
            }
            None => Command::new("curl"),
        };
        let out = cmd
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", &url])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text
            .rsplit_once('\n')
            .unwrap_or_else(|| panic!("GET {path}: no status from curl: {text:?}"));
        let code = code
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("GET {path}: status {code:?}"));
        (code, body.to_string())
    }

    /// The value of one series, e.g. `drainwatch_connect_refused_total{port="6443"}`.
    pub fn metric(&self, series: &str) -> f64 {
        parse_metric(&self.metrics(), series)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then the exit status and everything it printed on stdout
    /// up to its exit (the final report included).
    pub fn stop_collect(mut self) -> (std::process::ExitStatus, Vec<Value>) {
        let reader = self.stdout_reader.take();
        let events = self.events.clone();
        let st = self.stop();
        if let Some(r) = reader {
            let _ = r.join();
        }
        let evs = events.lock().expect("events").clone();
        (st, evs)
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn parse_metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

pub fn kinds(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

pub fn of_kind<'a>(evs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["kind"] == kind).collect()
}

/// Real tcpdump in a namespace, printing one line per matching packet.
pub struct Tcpdump {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Reads stdout until tcpdump closes it.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Tcpdump {
    pub fn start(ns: &str, dev: &str, filter: &str) -> Tcpdump {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "tcpdump",
                "-l",
                "-n",
                // Each packet as it arrives, not when a ring block retires (1 s).
                "--immediate-mode",
                "-i",
                dev,
                filter,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l.lock().expect("lines").push(line);
            }
        });
        // tcpdump says "listening on" once its capture is open.
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("tcpdump did not start");
        Tcpdump {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// The packet lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Stops the capture and returns the packet lines.
    pub fn finish(mut self) -> Vec<String> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        // Every line is in once the reader has seen the end of tcpdump's stdout.
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.lines.lock().expect("lines").clone()
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lab's binary (apiserver stand-in), built next to this test binary
/// (`cargo test --workspace` and `cargo build -p drainwatch-lab` build it).
pub fn lab_binary() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_drainwatch")).with_file_name("drainwatch-lab");
    assert!(
        p.exists(),
        "{} missing: run `cargo build -p drainwatch-lab` (cargo xtask test does)",
        p.display()
    );
    p
}

/// Starts the lab's apiserver stand-in in namespace `ns` with `args`
/// (after `apiserver`), keeping its files in `dir`; returns once it is READY.
pub fn start_standin(ns: &str, dir: &std::path::Path, args: &[&str]) -> Child {
    standin(Some(ns), dir, args)
}

/// The same in the test's own network namespace (loopback).
pub fn start_standin_here(dir: &std::path::Path, args: &[&str]) -> Child {
    standin(None, dir, args)
}

fn standin(ns: Option<&str>, dir: &std::path::Path, args: &[&str]) -> Child {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(lab_binary());
            c
        }
        None => Command::new(lab_binary()),
    };
    let mut child = cmd
        .arg("apiserver")
        .args(args)
        .arg("--tls-dir")
        .arg(dir.join("pki"))
        .arg("--truth")
        .arg(dir.join("lifecycle.jsonl"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("stand-in");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while !line.contains("READY") {
        line.clear();
        assert!(
            out.read_line(&mut line).expect("read") > 0,
            "stand-in exited before READY"
        );
    }
    child
}

/// A child process killed (and reaped) when dropped, so that a failing
/// test leaves no server running in a deleted namespace.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The lab's stand-in in `pair`'s server namespace on `server_v4:6443`,
/// shutting down gracefully after `delay` and cutting what is still open
/// `timeout` later; ready when this returns, killed when dropped.
pub fn graceful_standin(
    pair: &Pair,
    dir: &std::path::Path,
    delay: &str,
    timeout: &str,
) -> KillOnDrop {
    let listen = format!("{}:6443", pair.server_v4);
    KillOnDrop(start_standin(
        &pair.server,
        dir,
        &[
            "--name",
            "m1",
            "--mode",
            "graceful",
            "--listen",
            &listen,
            "--shutdown-delay",
            delay,
            "--request-timeout",
            timeout,
            "--startup-delay",
            "100ms",
            "--san",
            &pair.server_v4,
        ],
    ))
}

/// A kubeconfig in `dir` for the stand-in of [`graceful_standin`]: its CA,
/// bearer `token`, namespace `default`.
pub fn standin_kubeconfig(pair: &Pair, dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{}:6443\n    certificate-authority: {}\nusers:\n- name: lab\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: default\ncurrent-context: lab\n",
            pair.server_v4,
            dir.join("pki/ca.crt").display()
        ),
    )
    .expect("kubeconfig");
    kubeconfig
}
