//! `drainwatch selftest`: loads every kernel program exactly as `drainwatch
//! run` does, drives loopback TCP on a watched port and checks that the
//! ring buffer carries exactly the expected events. Used by `cargo xtask
//! vm-test` inside QEMU guests (one per kernel) and natively on the host.
//!
//! Output, on stdout: one JSON object per check, one `INSNS <hook>
//! <count>` line per verified program, `KPROBE attached|unavailable`, and a
//! last line `SELFTEST PASS` or `SELFTEST FAIL <reason>`. Exit 0 only on
//! pass. Nothing here panics on a kernel that lacks something: every gap is
//! a failed check naming what is missing.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::ExitCode,
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use probe_common::{DEFAULT_FLOW_TABLE, DEFAULT_RINGBUF_BYTES, LOST_LAYOUT, LOST_RINGBUF_FULL};
use serde_json::json;

use crate::{
    decode::event::{DecodeContext, Event, EventKind, decode, parse_raw},
    kernel::{
        load::{self as loader, HookState, LoadOptions, WireOptions},
        programs::{Attach, PROGRAMS, Program},
        tracefs,
    },
};

#[derive(clap::Args)]
pub struct SelftestArgs {
    /// The loopback port the test traffic uses (watched; nothing else may
    /// listen on it).
    #[arg(long, default_value_t = 6443, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Do not try the kprobe path (as `run --no-kprobes`).
    #[arg(long)]
    no_kprobes: bool,
    /// Do not attach the wire observer to lo (as `run --no-wire`).
    #[arg(long)]
    no_wire: bool,
    /// Seconds to wait for the events of one scenario.
    #[arg(long, default_value_t = 10)]
    wait: u64,
}

/// Kinds the wire observer and the process hooks report: not part of the
/// socket-level expectations (counted, never asserted).
fn socket_kind(k: EventKind) -> bool {
    !matches!(
        k,
        EventKind::WireReset
            | EventKind::Keepalive
            | EventKind::Goaway
            | EventKind::Signal
            | EventKind::ProcessExit
            | EventKind::ProcessExec
    )
}

struct Report {
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, name: &str, pass: bool, detail: serde_json::Value) {
        println!("{}", json!({"check": name, "pass": pass, "detail": detail}));
        if !pass {
            self.failures.push(name.to_string());
        }
    }
}

pub fn run(args: &SelftestArgs) -> ExitCode {
    let mut report = Report {
        failures: Vec::new(),
    };
    match selftest(args, &mut report) {
        Ok(()) if report.failures.is_empty() => {
            println!("SELFTEST PASS");
            ExitCode::SUCCESS
        }
        Ok(()) => {
            println!(
                "SELFTEST FAIL checks failed: {}",
                report.failures.join(", ")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            let mut reason = format!("{e:#}").replace('\n', " ");
            if !report.failures.is_empty() {
                reason.push_str(&format!(" (failed checks: {})", report.failures.join(", ")));
            }
            println!("SELFTEST FAIL {reason}");
            ExitCode::FAILURE
        }
    }
}

/// A name without spaces for `INSNS` lines: `tracepoint:sock:inet_sock_set_state`.
pub fn hook_token(name: &str) -> String {
    name.split_whitespace().collect::<Vec<_>>().join(":")
}

/// Whether `tcp:tcp_send_reset` reports RSTs sent without a socket (a SYN
/// to a closed port): since Linux 6.10.
fn no_socket_rst_traced(release: &str) -> bool {
    kernel_version(release) >= (6, 10)
}

/// (major, minor) of a release such as `5.10.0-46-cloud-amd64`.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The kernel that reports how many instructions the verifier processed
/// (`bpf_prog_info.verified_insns`).
const VERIFIED_INSNS_SINCE: (u32, u32) = (5, 16);

/// Tracepoints this kernel is expected not to have, with why: the program
/// table's rows whose attach point came after this release.
fn tracepoints_absent_by_design(release: &str) -> Vec<(String, String)> {
    let v = kernel_version(release);
    PROGRAMS
        .iter()
        .filter(|s| matches!(s.attach, Attach::Tracepoint { .. }) && v < s.since)
        .map(|s| {
            (
                s.attach.to_string(),
                format!(
                    "added in Linux {}.{}; without it on {release}: {} is off",
                    s.since.0,
                    s.since.1,
                    s.feature.what()
                ),
            )
        })
        .collect()
}

/// Whether this kernel can attach kprobes at all (kprobe events in tracefs).
fn kernel_has_kprobes(tracefs_root: &std::path::Path) -> bool {
    tracefs_root.join("kprobe_events").exists()
        || std::path::Path::new("/sys/kernel/debug/kprobes").exists()
}

fn selftest(args: &SelftestArgs, report: &mut Report) -> anyhow::Result<()> {
    let release = crate::daemon::kernel_release();
    let (loaded, kprobe_attached) = load_and_check_hooks(args, report, &release)?;
    let reset_reasons = loaded.reset_reasons.clone();
    let mut ebpf = loaded.ebpf;
    let _tc = loaded.tc;
    let mut reader = Reader {
        ring: loader::take_events(&mut ebpf)
            .map_err(|e| anyhow::anyhow!("the EVENTS ring buffer: {e}"))?,
        cx: DecodeContext {
            boot_to_unix_ns: crate::daemon::boot_to_unix_ns(),
            sock_key: crate::daemon::random_key(),
            reset_reasons,
            hz: crate::kernel::clock::kernel_hz(Duration::from_millis(120)),
            default_keepalive_secs: crate::kernel::clock::default_keepalive_secs(),
        },
        port: args.port,
        ignored: BTreeMap::new(),
        undecodable: 0,
    };
    let lost: PerCpuArray<MapData, u64> =
        loader::take_lost(&mut ebpf).map_err(|e| anyhow::anyhow!("the LOST counters: {e}"))?;
    let wait = Duration::from_secs(args.wait.clamp(1, 120));
    // Whatever happened on the port before the first scenario is not ours.
    std::thread::sleep(Duration::from_millis(100));
    let stale = reader.drain();
    if !stale.is_empty() {
        tracing::warn!(
            "{} events on port {} before the test started",
            stale.len(),
            args.port
        );
    }

    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let server = SocketAddr::new(lo, args.port);
    refused_connect(&mut reader, report, server, wait, &release, kprobe_attached);
    connect_exchange_close(&mut reader, report, server, wait);
    abortive_close(&mut reader, report, server, wait);
    listener_open_close(&mut reader, report, server, wait);
    let ring_full = loader::percpu_total(&lost, LOST_RINGBUF_FULL);
    let layout = loader::percpu_total(&lost, LOST_LAYOUT);
    report.check(
        "nothing_lost",
        ring_full == 0 && layout == 0 && reader.undecodable == 0,
        json!({"kernel_ringbuf_full": ring_full, "kernel_layout": layout,
               "undecodable": reader.undecodable, "other_kinds_seen": reader.ignored}),
    );
    drop(ebpf);
    Ok(())
}

/// Loads every program as `run` does and checks each hook against what
/// this kernel should give; returns what was loaded and whether the kprobe
/// path is on.
fn load_and_check_hooks(
    args: &SelftestArgs,
    report: &mut Report,
    release: &str,
) -> anyhow::Result<(loader::Loaded, bool)> {
    let missing = loader::missing_privileges();
    report.check(
        "privileges",
        missing.is_empty(),
        json!({"kernel": release, "missing": missing}),
    );
    if !missing.is_empty() {
        anyhow::bail!(
            "not privileged: lacks {} (run as root)",
            missing.join(" and ")
        );
    }
    let btf = std::path::Path::new(crate::kernel::btf::VMLINUX_BTF).exists();
    report.check(
        "btf",
        btf,
        json!({"path": crate::kernel::btf::VMLINUX_BTF, "present": btf}),
    );
    let root = tracefs::ensure_mounted()
        .map_err(|e| anyhow::anyhow!("tracefs is not mounted and cannot be: {e}"))?;
    let kprobes_expected = !args.no_kprobes && kernel_has_kprobes(&root) && btf;

    let wire = if args.no_wire {
        None
    } else {
        let lo = crate::kernel::iface::lookup("lo")
            .map_err(|e| anyhow::anyhow!("the loopback interface: {e}"))?;
        Some(WireOptions {
            ifaces: vec![lo],
            flow_table: DEFAULT_FLOW_TABLE,
            attach: loader::TcAttach::Auto,
            state_dir: None,
            netns: None,
        })
    };
    let opts = LoadOptions {
        ports: vec![args.port],
        ringbuf_bytes: DEFAULT_RINGBUF_BYTES,
        socket_table: probe_common::DEFAULT_SOCK_TABLE,
        kernel_log_level: 2,
        kprobes: !args.no_kprobes,
        wire,
        watch_comms: vec!["kube-apiserver".into()],
        netns: None,
        go_uprobes: true,
        go_clients: Vec::new(),
        endpoints: None,
    };
    let loaded = loader::load(&opts).map_err(|e| {
        anyhow::anyhow!(
            "loading the kernel programs failed: {}",
            loader::error_chain(&e)
        )
    })?;

    let kprobe_attached = check_hooks(
        report,
        &loaded,
        release,
        args.no_wire,
        &root,
        kprobes_expected,
    );
    Ok((loaded, kprobe_attached))
}

/// Checks every hook against what this kernel should give: each tracepoint
/// attached unless the table says this release lacks it, verified sizes
/// where the kernel reports them, the kprobe path where kprobes exist, the
/// classifier on loopback. Returns whether the kprobe path is on.
fn check_hooks(
    report: &mut Report,
    loaded: &loader::Loaded,
    release: &str,
    no_wire: bool,
    root: &std::path::Path,
    kprobes_expected: bool,
) -> bool {
    // Every hook, its state and verified size.
    let mut hooks = Vec::new();
    let mut kprobe_attached = false;
    for h in &loaded.hooks {
        if let Some(n) = h.insns {
            println!("INSNS {} {n}", hook_token(&h.name()));
        }
        let (state, why) = match &h.state {
            HookState::Attached => ("attached", String::new()),
            HookState::Standby(w) => ("standby", w.clone()),
            HookState::Unavailable(w) => ("unavailable", w.clone()),
        };
        if h.program == Program::KprobeTcpConnect && h.attached() {
            kprobe_attached = true;
        }
        hooks.push(json!({"hook": h.name(), "state": state, "insns": h.insns, "why": why}));
    }
    println!(
        "KPROBE {}",
        if kprobe_attached {
            "attached"
        } else {
            "unavailable"
        }
    );
    let absent_by_design = tracepoints_absent_by_design(release);
    let attached = |n: &str| loaded.hooks.iter().any(|h| h.name() == n && h.attached());
    let tp_missing: Vec<String> = PROGRAMS
        .iter()
        .filter(|s| matches!(s.attach, Attach::Tracepoint { .. }))
        .map(|s| s.attach.to_string())
        .filter(|n| !attached(n) && !absent_by_design.iter().any(|(a, _)| a == n))
        .collect();
    // Expected absent, yet there: the version cut is wrong, say so.
    let unexpected: Vec<&str> = absent_by_design
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| attached(n))
        .collect();
    let expected_absent: BTreeMap<&str, &str> = absent_by_design
        .iter()
        .map(|(n, why)| (n.as_str(), why.as_str()))
        .collect();
    report.check(
        "tracepoints_attached",
        tp_missing.is_empty() && unexpected.is_empty(),
        json!({"missing": tp_missing, "expected_absent": expected_absent,
               "present_though_expected_absent": unexpected, "hooks": hooks}),
    );
    // Before 5.16 the kernel does not say how much the verifier walked: no
    // `INSNS` lines, and vm-test has no budget to hold them to.
    let counted = loaded.hooks.iter().any(|h| h.insns.is_some());
    let counts_expected = kernel_version(release) >= VERIFIED_INSNS_SINCE;
    report.check(
        "verified_insns_reported",
        counted == counts_expected,
        json!({"reported": counted, "expected": counts_expected,
               "why": if counts_expected { String::new() } else {
                   format!("bpf_prog_info.verified_insns came in Linux {}.{}", VERIFIED_INSNS_SINCE.0, VERIFIED_INSNS_SINCE.1)
               }}),
    );
    report.check(
        "kprobe_path",
        kprobe_attached == kprobes_expected,
        json!({"kernel_has_kprobes": kernel_has_kprobes(root), "expected": kprobes_expected, "attached": kprobe_attached}),
    );
    if !no_wire {
        let tc_ok = loaded
            .hooks
            .iter()
            .any(|h| h.program.is_tc() && h.attached());
        report.check("tc_attached_lo", tc_ok, json!({}));
    }

    kprobe_attached
}

/// A refused connect: nothing listens.
fn refused_connect(
    reader: &mut Reader,
    report: &mut Report,
    server: SocketAddr,
    wait: Duration,
    release: &str,
    kprobe_attached: bool,
) {
    let me = std::process::id();
    let outcome = match TcpStream::connect_timeout(&server, Duration::from_secs(5)) {
        Ok(_) => Err(format!(
            "connect to {server} succeeded: something listens there"
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(format!("connect to {server}: {e} (expected refused)")),
    };
    // Before 6.10 `tcp:tcp_send_reset` fires only for RSTs sent by a full
    // socket: the listener-less RST that refuses a SYN is not traced.
    let expected: &[&str] = if no_socket_rst_traced(release) {
        &["connect_attempt", "reset_sent", "reset_received", "refused"]
    } else {
        &["connect_attempt", "reset_received", "refused"]
    };
    let evs = reader.collect(expected, wait);
    let kinds = kinds(&evs);
    let mut problems = Vec::new();
    if let Err(e) = outcome {
        problems.push(e);
    }
    if kinds != expected {
        problems.push(format!("kinds {kinds:?}, expected {expected:?} in order"));
    }
    if let Some(a) = of(&evs, EventKind::ConnectAttempt).first() {
        if a.kprobe != kprobe_attached {
            problems.push(format!(
                "connect_attempt from the kprobe: {}, kprobe attached: {kprobe_attached}",
                a.kprobe
            ));
        }
        let port = a.local.map(|l| l.port()).unwrap_or(0);
        if kprobe_attached && port == 0 {
            problems.push("the kprobe's connect_attempt lacks the source port".into());
        }
        if a.pid != Some(me) {
            problems.push(format!("connect_attempt pid {:?}, expected {me}", a.pid));
        }
    }
    if let Some(r) = of(&evs, EventKind::Refused).first()
        && (r.errno != Some(111) || r.remote != Some(server))
    {
        problems.push(format!(
            "refused: errno {:?} remote {:?}, expected 111 and {server}",
            r.errno, r.remote
        ));
    }
    if let Some(s) = of(&evs, EventKind::ResetSent).first()
        && !s.no_socket
    {
        problems.push("reset_sent is not marked no_socket".into());
    }
    check_events(report, "refused_connect", &evs, problems);
}

/// Connect, accept, exchange, close.
fn connect_exchange_close(
    reader: &mut Reader,
    report: &mut Report,
    server: SocketAddr,
    wait: Duration,
) {
    let outcome = exchange(server);
    let expected = [
        ("listen_open", 1),
        ("connect_attempt", 1),
        ("established", 1),
        ("accepted", 1),
        ("closed", 2),
        ("listen_close", 1),
    ];
    let evs = reader.collect_counts(&expected, wait);
    let mut problems = count_problems(&evs, &expected);
    if let Err(e) = outcome {
        problems.push(e);
    }
    if let Some(e) = of(&evs, EventKind::Established).first() {
        let hs = e.duration_seconds.unwrap_or(-1.0);
        if !(0.0..5.0).contains(&hs) || hs == 0.0 {
            problems.push(format!("handshake time {hs}"));
        }
        if let Some(a) = of(&evs, EventKind::Accepted).first()
            && a.remote != e.local
        {
            problems.push(format!(
                "accepted remote {:?} is not the client {:?}",
                a.remote, e.local
            ));
        }
    }
    for c in of(&evs, EventKind::Closed) {
        let life = c.duration_seconds.unwrap_or(-1.0);
        if !(0.15..10.0).contains(&life) {
            problems.push(format!("closed lifetime {life} does not cover the 200 ms"));
        }
    }
    check_events(report, "connect_exchange_close", &evs, problems);
}

/// An SO_LINGER 0 close: RST sent by the client, received by the server.
fn abortive_close(reader: &mut Reader, report: &mut Report, server: SocketAddr, wait: Duration) {
    let outcome = abortive(server);
    let expected = [
        ("listen_open", 1),
        ("connect_attempt", 1),
        ("established", 1),
        ("accepted", 1),
        ("reset_sent", 1),
        ("reset_received", 1),
        ("closed", 2),
        ("listen_close", 1),
    ];
    let evs = reader.collect_counts(&expected, wait);
    let mut problems = count_problems(&evs, &expected);
    if let Err(e) = outcome {
        problems.push(e);
    }
    let sent = of(&evs, EventKind::ResetSent);
    let recv = of(&evs, EventKind::ResetReceived);
    if let (Some(s), Some(r)) = (sent.first(), recv.first()) {
        if s.state != "ESTABLISHED" || r.state != "ESTABLISHED" {
            problems.push(format!(
                "reset states sent {} received {}, expected ESTABLISHED",
                s.state, r.state
            ));
        }
        if r.local != Some(server) || r.remote != s.local {
            problems.push(format!(
                "reset_received {:?} <- {:?} does not match reset_sent from {:?}",
                r.local, r.remote, s.local
            ));
        }
    }
    check_events(report, "abortive_close", &evs, problems);
}

/// A listener opens and closes.
fn listener_open_close(
    reader: &mut Reader,
    report: &mut Report,
    server: SocketAddr,
    wait: Duration,
) {
    let me = std::process::id();
    let outcome = TcpListener::bind(server)
        .map(|l| {
            std::thread::sleep(Duration::from_millis(100));
            drop(l);
        })
        .map_err(|e| format!("bind {server}: {e}"));
    let expected = ["listen_open", "listen_close"];
    let evs = reader.collect(&expected, wait);
    let kinds = kinds(&evs);
    let mut problems = Vec::new();
    if let Err(e) = outcome {
        problems.push(e);
    }
    if kinds != expected {
        problems.push(format!("kinds {kinds:?}, expected {expected:?} in order"));
    }
    for e in &evs {
        if e.pid != Some(me) || e.local != Some(server) {
            problems.push(format!(
                "{} pid {:?} local {:?}, expected {me} and {server}",
                e.kind, e.pid, e.local
            ));
        }
    }
    check_events(report, "listener_open_close", &evs, problems);
}

fn kinds(evs: &[Event]) -> Vec<&'static str> {
    evs.iter().map(|e| e.kind.as_str()).collect()
}

fn of(evs: &[Event], kind: EventKind) -> Vec<&Event> {
    evs.iter().filter(|e| e.kind == kind).collect()
}

fn count_problems(evs: &[Event], expected: &[(&str, usize)]) -> Vec<String> {
    let mut got: BTreeMap<&str, usize> = BTreeMap::new();
    for e in evs {
        *got.entry(e.kind.as_str()).or_default() += 1;
    }
    let want: BTreeMap<&str, usize> = expected.iter().copied().collect();
    if got == want {
        Vec::new()
    } else {
        vec![format!("kinds {got:?}, expected {want:?}")]
    }
}

fn check_events(report: &mut Report, name: &str, evs: &[Event], problems: Vec<String>) {
    let events: Vec<serde_json::Value> = evs
        .iter()
        .map(|e| {
            json!({"kind": e.kind, "local": e.local, "remote": e.remote, "state": e.state,
                   "old_state": e.old_state, "kprobe": e.kprobe, "errno": e.errno,
                   "reset_reason": e.reset_reason})
        })
        .collect();
    report.check(
        name,
        problems.is_empty(),
        json!({"problems": problems, "events": events}),
    );
}

/// Client connects, sends, reads the answer, waits 200 ms, closes; the
/// server answers and closes after the client's FIN.
fn exchange(server: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(server).map_err(|e| format!("bind {server}: {e}"))?;
    let srv = std::thread::spawn(move || -> Result<(), String> {
        let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        set_timeouts(&s);
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf)
            .map_err(|e| format!("server read: {e}"))?;
        s.write_all(b"world")
            .map_err(|e| format!("server write: {e}"))?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .map_err(|e| format!("server waiting for EOF: {e}"))?;
        Ok(())
    });
    let client = (|| -> Result<(), String> {
        let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(5))
            .map_err(|e| format!("connect {server}: {e}"))?;
        set_timeouts(&c);
        c.write_all(b"hello")
            .map_err(|e| format!("client write: {e}"))?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf)
            .map_err(|e| format!("client read: {e}"))?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    })();
    let server_result = srv
        .join()
        .unwrap_or_else(|_| Err("server thread panicked".into()));
    client.and(server_result)
}

/// Client connects, sends one byte, waits 100 ms and closes with SO_LINGER
/// 0 (an RST); the server's second read sees "connection reset".
fn abortive(server: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(server).map_err(|e| format!("bind {server}: {e}"))?;
    let srv = std::thread::spawn(move || -> Result<(), String> {
        let (mut s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        set_timeouts(&s);
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => {}
            other => return Err(format!("server read: {other:?}, expected data")),
        }
        match s.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
            other => Err(format!("server read: {other:?}, expected connection reset")),
        }
    });
    let client = (|| -> Result<(), String> {
        let mut c = TcpStream::connect_timeout(&server, Duration::from_secs(5))
            .map_err(|e| format!("connect {server}: {e}"))?;
        c.write_all(b"x")
            .map_err(|e| format!("client write: {e}"))?;
        std::thread::sleep(Duration::from_millis(100));
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket fd and a pointer to a linger of the right size.
        let rc = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!("SO_LINGER 0: {}", std::io::Error::last_os_error()));
        }
        drop(c);
        Ok(())
    })();
    let server_result = srv
        .join()
        .unwrap_or_else(|_| Err("server thread panicked".into()));
    client.and(server_result)
}

fn set_timeouts(s: &TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
}

/// Reads and decodes the ring buffer, keeping socket events on the port.
struct Reader {
    ring: RingBuf<MapData>,
    cx: DecodeContext,
    port: u16,
    /// Other kinds seen (wire, process), by name.
    ignored: BTreeMap<&'static str, u64>,
    undecodable: u64,
}

impl Reader {
    fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            let ev = parse_raw(&item)
                .ok()
                .and_then(|raw| decode(&raw, &self.cx).ok());
            drop(item);
            let Some(ev) = ev else {
                self.undecodable += 1;
                continue;
            };
            if !socket_kind(ev.kind) {
                *self.ignored.entry(ev.kind.as_str()).or_default() += 1;
                continue;
            }
            let on_port = |a: Option<SocketAddr>| {
                a.is_some_and(|a| a.port() == self.port && a.ip().is_loopback())
            };
            let local_lo = ev.local.is_some_and(|a| a.ip().is_loopback());
            if local_lo && (on_port(ev.local) || on_port(ev.remote)) {
                out.push(ev);
            }
        }
        out
    }

    /// Events until `expected` (a sequence) has as many events of each
    /// kind, or `wait` passes; then stragglers for 300 ms more.
    fn collect(&mut self, expected: &[&str], wait: Duration) -> Vec<Event> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for k in expected {
            *counts.entry(k).or_default() += 1;
        }
        let counts: Vec<(&str, usize)> = counts.into_iter().collect();
        self.collect_counts(&counts, wait)
    }

    fn collect_counts(&mut self, expected: &[(&str, usize)], wait: Duration) -> Vec<Event> {
        let deadline = Instant::now() + wait;
        let mut evs = Vec::new();
        loop {
            evs.extend(self.drain());
            let done = expected
                .iter()
                .all(|(k, n)| evs.iter().filter(|e| e.kind.as_str() == *k).count() >= *n);
            if done || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        evs.extend(self.drain());
        evs.sort_by_key(|e| e.ts_boot_ns);
        evs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_tokens_have_no_spaces() {
        assert_eq!(
            hook_token("tracepoint sock:inet_sock_set_state"),
            "tracepoint:sock:inet_sock_set_state"
        );
        assert_eq!(hook_token("tc ingress lo"), "tc:ingress:lo");
        assert!(!no_socket_rst_traced("6.1.0-56-cloud-amd64"));
        assert!(no_socket_rst_traced("6.12.117+deb12-cloud-amd64"));
        assert!(no_socket_rst_traced("6.18.44-fc-v445"));
        assert!(!no_socket_rst_traced("5.15.0"));
        assert_eq!(kernel_version("5.10.0-46-cloud-amd64"), (5, 10));
        assert_eq!(kernel_version("6.12.118+deb13-cloud-amd64"), (6, 12));
    }

    #[test]
    fn old_kernels_expect_the_error_report_absent_by_version() {
        let old = tracepoints_absent_by_design("5.10.0-46-cloud-amd64");
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].0, "tracepoint sock:inet_sk_error_report");
        assert!(
            old[0].1.contains("5.14") && old[0].1.contains("5.10.0-46"),
            "{}",
            old[0].1
        );
        assert!(tracepoints_absent_by_design("5.14.0").is_empty());
        assert!(tracepoints_absent_by_design("6.1.0-57-cloud-amd64").is_empty());
    }

    #[test]
    fn counts_compare_exactly() {
        assert!(count_problems(&[], &[]).is_empty());
        assert_eq!(count_problems(&[], &[("closed", 1)]).len(), 1);
    }
}
