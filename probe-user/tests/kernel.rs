//! Kernel tests: the real programs loaded into the running kernel by the
//! real daemon, real TCP traffic in network namespaces these tests create,
//! exact events asserted. Root is required; without it each test says why
//! it skips.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use common::{Daemon, Pair, kinds, of_kind, root_or_skip, serial};
use socket2::{Domain, Socket, Type};

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

fn connect_err(to: SocketAddr) -> std::io::ErrorKind {
    match TcpStream::connect_timeout(&to, Duration::from_secs(10)) {
        Ok(_) => panic!("connect to {to} succeeded"),
        Err(e) => e.kind(),
    }
}

#[test]
fn refused_connect_to_6443_is_one_refused_event() {
    let _g = serial();
    if !root_or_skip("refused_connect_to_6443_is_one_refused_event") {
        return;
    }
    let pair = Pair::new();
    let d = Daemon::start(&[]);
    let to = addr(&pair.server_v4, 6443);
    let kind = pair.in_client(move || connect_err(to));
    assert_eq!(kind, std::io::ErrorKind::ConnectionRefused);

    let evs = d.wait_for(&[&pair.client_v4], "refused", |e| {
        !of_kind(e, "refused").is_empty()
    });
    let refused = of_kind(&evs, "refused");
    assert_eq!(refused.len(), 1, "exactly one refused event: {evs:#?}");
    let r = refused[0];
    let local: SocketAddr = r["local"].as_str().expect("local").parse().expect("addr");
    assert_eq!(local.ip().to_string(), pair.client_v4);
    assert_ne!(
        local.port(),
        0,
        "the refused event carries the real source port"
    );
    assert_eq!(r["remote"], format!("{}:6443", pair.server_v4));
    assert_eq!(
        (r["old_state"].as_str(), r["state"].as_str()),
        (Some("SYN_SENT"), Some("CLOSE"))
    );
    assert_eq!(r["errno"], 111);
    assert_eq!(r["direction"], "active");

    // The whole story, in order: attempt, the server's RST (no socket), the RST arriving, refused.
    assert_eq!(
        kinds(&evs),
        ["connect_attempt", "reset_sent", "reset_received", "refused"],
        "{evs:#?}"
    );
    let attempt = &evs[0];
    assert_eq!(attempt["remote"], format!("{}:6443", pair.server_v4));
    assert_eq!(attempt["pid"], std::process::id());
    let sent = &evs[1];
    assert_eq!(sent["local"], format!("{}:6443", pair.server_v4));
    assert_eq!(sent["remote"], r["local"]);
    assert_eq!(sent["no_socket"], true);
    assert_eq!(sent["reset_reason"], "NO_SOCKET");
    assert_eq!(evs[2]["state"], "SYN_SENT");
    assert!(d.stop().success(), "SIGTERM exits 0");
}

#[test]
fn connect_exchange_close_reports_handshake_and_lifetime() {
    let _g = serial();
    if !root_or_skip("connect_exchange_close_reports_handshake_and_lifetime") {
        return;
    }
    let pair = Pair::new();
    let d = Daemon::start(&["--port", "6443"]);
    let server = addr(&pair.server_v4, 6443);
    let listener = pair.in_server(move || TcpListener::bind(server).expect("bind"));
    let srv = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("read");
        s.write_all(b"world").expect("write");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("eof");
    });
    pair.in_client(move || {
        let mut c = TcpStream::connect(server).expect("connect");
        c.write_all(b"hello").expect("write");
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).expect("read");
        std::thread::sleep(Duration::from_millis(200));
    });
    srv.join().expect("server");

    let evs = d.wait_for(&[&pair.client_v4], "two closes", |e| {
        of_kind(e, "closed").len() == 2
    });
    let est = of_kind(&evs, "established");
    assert_eq!(est.len(), 1, "{evs:#?}");
    let hs = est[0]["duration_seconds"].as_f64().expect("handshake time");
    assert!(hs > 0.0 && hs < 1.0, "handshake {hs}");
    assert_eq!(of_kind(&evs, "connect_attempt").len(), 1);
    let acc = of_kind(&evs, "accepted");
    assert_eq!(acc.len(), 1);
    assert_eq!(acc[0]["local"], format!("{}:6443", pair.server_v4));
    assert_eq!(acc[0]["remote"], est[0]["local"]);
    for c in of_kind(&evs, "closed") {
        let life = c["duration_seconds"].as_f64().expect("lifetime");
        assert!(
            (0.2..5.0).contains(&life),
            "lifetime {life} covers the 200 ms sleep"
        );
    }
    assert!(of_kind(&evs, "refused").is_empty() && of_kind(&evs, "reset_sent").is_empty());
    assert!(d.stop().success());
}

#[test]
fn abortive_close_is_rst_sent_and_received_in_established() {
    let _g = serial();
    if !root_or_skip("abortive_close_is_rst_sent_and_received_in_established") {
        return;
    }
    let pair = Pair::new();
    let d = Daemon::start(&["--port", "6443"]);
    let server = addr(&pair.server_v4, 6443);
    let listener = pair.in_server(move || TcpListener::bind(server).expect("bind"));
    let srv = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 16];
        // The client's RST ends this read with "connection reset".
        let r = s.read(&mut buf);
        let r2 = s.read(&mut buf);
        (r.map(|n| n > 0).unwrap_or(false), r2.map_err(|e| e.kind()))
    });
    pair.in_client(move || {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        sock.connect(&server.into()).expect("connect");
        sock.send(b"x").expect("send");
        std::thread::sleep(Duration::from_millis(100));
        sock.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
        drop(sock);
    });
    let (got_data, second) = srv.join().expect("server");
    assert!(got_data);
    assert_eq!(second, Err(std::io::ErrorKind::ConnectionReset));

    let evs = d.wait_for(&[&pair.client_v4], "rst both ways", |e| {
        !of_kind(e, "reset_sent").is_empty() && !of_kind(e, "reset_received").is_empty()
    });
    let sent = of_kind(&evs, "reset_sent");
    let recv = of_kind(&evs, "reset_received");
    assert_eq!((sent.len(), recv.len()), (1, 1), "{evs:#?}");
    assert_eq!(sent[0]["state"], "ESTABLISHED");
    assert_eq!(
        sent[0]["local"]
            .as_str()
            .map(|s| s.starts_with(&pair.client_v4)),
        Some(true)
    );
    assert_eq!(recv[0]["state"], "ESTABLISHED");
    assert_eq!(recv[0]["local"], format!("{}:6443", pair.server_v4));
    assert_eq!(recv[0]["remote"], sent[0]["local"]);
    assert!(
        sent[0]["reset_reason"].is_string(),
        "this kernel gives a reason"
    );
    let age = recv[0]["duration_seconds"].as_f64().expect("age");
    assert!(age >= 0.1, "connection age {age} covers the 100 ms sleep");
    assert!(d.stop().success());
}

#[test]
fn listener_open_close_carries_our_pid() {
    let _g = serial();
    if !root_or_skip("listener_open_close_carries_our_pid") {
        return;
    }
    let pair = Pair::new();
    let d = Daemon::start(&[]);
    let server = addr(&pair.server_v4, 6443);
    pair.in_server(move || {
        let l = TcpListener::bind(server).expect("bind");
        std::thread::sleep(Duration::from_millis(100));
        drop(l);
    });
    let evs = d.wait_for(&[&pair.server_v4], "listen close", |e| {
        !of_kind(e, "listen_close").is_empty()
    });
    assert_eq!(kinds(&evs), ["listen_open", "listen_close"], "{evs:#?}");
    for e in &evs {
        assert_eq!(e["pid"], std::process::id());
        assert_eq!(e["local"], format!("{}:6443", pair.server_v4));
        assert!(e["comm"].is_string());
    }
    assert!(
        d.metrics()
            .contains("drainwatch_listener_up{port=\"6443\"}")
    );
    assert!(d.stop().success());
}

#[test]
fn syn_into_blackhole_times_out_with_retransmits() {
    let _g = serial();
    if !root_or_skip("syn_into_blackhole_times_out_with_retransmits") {
        return;
    }
    let pair = Pair::new();
    pair.exec(
        &pair.client,
        &["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"],
    );
    pair.exec(&pair.server, &["nft", "add table inet dwt"]);
    pair.exec(
        &pair.server,
        &[
            "nft",
            "add chain inet dwt input { type filter hook input priority 0 ; }",
        ],
    );
    pair.exec(
        &pair.server,
        &["nft", "add rule inet dwt input tcp dport 6443 drop"],
    );
    let d = Daemon::start(&[]);
    // The wire is the ground truth for how many SYNs went out (kernels since
    // 6.5 retransmit early SYNs at linear 1 s intervals, older ones back off).
    let dump = common::Tcpdump::start(
        &pair.server,
        &pair.server_dev,
        "tcp[tcpflags] & tcp-syn != 0",
    );
    let to = addr(&pair.server_v4, 6443);
    let started = Instant::now();
    let kind = pair.in_client(move || connect_err(to));
    let took = started.elapsed();
    assert_eq!(kind, std::io::ErrorKind::TimedOut, "after {took:?}");

    let evs = d.wait_for(&[&pair.client_v4], "timed out", |e| {
        !of_kind(e, "timed_out").is_empty()
    });
    // tcpdump prints a packet a moment after it crossed the wire: wait until it has
    // printed as many SYNs as the event claims (a deadline ends the wait if the event
    // claims too many), then compare exactly.
    let claimed = evs
        .iter()
        .find(|e| e["kind"] == "timed_out")
        .and_then(|e| e["retransmits"].as_u64())
        .unwrap_or(0) as usize
        + 1;
    let syn_lines = |lines: Vec<String>| -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| l.contains("Flags [S]"))
            .collect()
    };
    common::wait_for(
        Duration::from_secs(10),
        &format!("tcpdump to print the {claimed} SYNs the event counts"),
        || {
            let syns = syn_lines(dump.lines());
            if syns.len() >= claimed {
                Ok(())
            } else {
                Err(format!("{syns:?}"))
            }
        },
    );
    let syns = syn_lines(dump.finish());
    assert!(
        syns.len() >= 2,
        "at least one retransmit on the wire: {syns:?}"
    );
    assert_eq!(kinds(&evs), ["connect_attempt", "timed_out"], "{evs:#?}");
    let t = &evs[1];
    assert_eq!(t["errno"], 110);
    assert_eq!(
        t["retransmits"].as_u64(),
        Some(syns.len() as u64 - 1),
        "SYN retransmits = SYNs on the wire - 1: {syns:?}"
    );
    let after = t["duration_seconds"].as_f64().expect("duration");
    let took = took.as_secs_f64();
    assert!(
        (after - took).abs() < 0.5,
        "event says {after} s, the connect took {took} s"
    );
    assert!(
        after > 2.5,
        "tcp_syn_retries=1 allows about 3 s, got {after}"
    );
    assert!(d.stop().success());
}

#[test]
fn unwatched_port_traffic_makes_no_events() {
    let _g = serial();
    if !root_or_skip("unwatched_port_traffic_makes_no_events") {
        return;
    }
    let pair = Pair::new();
    let d = Daemon::start(&[]);
    let open = addr(&pair.server_v4, 8080);
    let closed = addr(&pair.server_v4, 8081);
    let listener = pair.in_server(move || TcpListener::bind(open).expect("bind"));
    pair.in_client(move || {
        let mut c = TcpStream::connect(open).expect("connect");
        c.write_all(b"ping").expect("write");
        drop(c);
        assert_eq!(connect_err(closed), std::io::ErrorKind::ConnectionRefused);
    });
    let (s, _) = listener.accept().expect("accept");
    drop(s);
    drop(listener);
    // Then one watched refusal, so we know the daemon was seeing traffic.
    let to = addr(&pair.server_v4, 443);
    pair.in_client(move || connect_err(to));
    let evs = d.wait_for(&[&pair.client_v4, &pair.server_v4], "443 refusal", |e| {
        !of_kind(e, "refused").is_empty()
    });
    for e in &evs {
        let l: SocketAddr = e["local"].as_str().expect("l").parse().expect("a");
        let r: SocketAddr = e["remote"].as_str().expect("r").parse().expect("a");
        assert!(
            l.port() == 443 || r.port() == 443,
            "event on an unwatched port: {e}"
        );
    }
    assert_eq!(of_kind(&evs, "refused").len(), 1);
    assert!(d.stop().success());
}

#[test]
fn ipv6_refused_connect() {
    let _g = serial();
    if !root_or_skip("ipv6_refused_connect") {
        return;
    }
    let pair = Pair::new();
    let d = Daemon::start(&[]);
    let to = addr(&pair.server_v6, 6443);
    assert_eq!(
        pair.in_client(move || connect_err(to)),
        std::io::ErrorKind::ConnectionRefused
    );
    let evs = d.wait_for(&[&pair.client_v6], "v6 refused", |e| {
        !of_kind(e, "refused").is_empty()
    });
    let r = of_kind(&evs, "refused");
    assert_eq!(r.len(), 1, "{evs:#?}");
    assert_eq!(r[0]["remote"], format!("[{}]:6443", pair.server_v6));
    let local: SocketAddr = r[0]["local"].as_str().expect("l").parse().expect("a");
    assert_eq!(local.ip().to_string(), pair.client_v6);
    assert_eq!(of_kind(&evs, "reset_sent").len(), 1);
    assert!(d.stop().success());
}

#[test]
fn metrics_count_exactly_what_was_driven() {
    let _g = serial();
    if !root_or_skip("metrics_count_exactly_what_was_driven") {
        return;
    }
    // An unusual port, so nothing else on the host adds to the counters.
    let port = 7443;
    let pair = Pair::new();
    let d = Daemon::start(&["--port", &port.to_string()]);
    let to = addr(&pair.server_v4, port);
    pair.in_client(move || {
        for _ in 0..3 {
            assert_eq!(connect_err(to), std::io::ErrorKind::ConnectionRefused);
        }
    });
    let listener = pair.in_server(move || TcpListener::bind(to).expect("bind"));
    pair.in_client(move || {
        for _ in 0..2 {
            let c = TcpStream::connect(to).expect("connect");
            drop(c);
        }
    });
    for _ in 0..2 {
        drop(listener.accept().expect("accept"));
    }
    drop(listener);
    d.wait_for(&[&pair.client_v4], "all events", |e| {
        of_kind(e, "closed").len() == 4 && of_kind(e, "refused").len() == 3
    });
    let p = format!("{{port=\"{port}\"}}");
    let m = d.metrics();
    let get = |name: &str| common::parse_metric(&m, &format!("{name}{p}"));
    assert_eq!(get("drainwatch_connect_attempts_total"), 5.0, "{m}");
    assert_eq!(get("drainwatch_connect_refused_total"), 3.0);
    assert_eq!(get("drainwatch_connect_established_total"), 2.0);
    assert_eq!(get("drainwatch_connections_accepted_total"), 2.0);
    assert_eq!(get("drainwatch_connect_timeouts_total"), 0.0);
    assert_eq!(get("drainwatch_handshake_seconds_count"), 2.0);
    assert_eq!(get("drainwatch_listener_up"), 0.0);
    let rs = common::parse_metric(
        &m,
        &format!("drainwatch_resets_total{{direction=\"sent\",port=\"{port}\",state=\"UNKNOWN\"}}"),
    );
    assert_eq!(rs, 3.0, "{m}");
    assert_eq!(
        common::parse_metric(
            &m,
            "drainwatch_events_lost_total{stage=\"kernel_ringbuf_full\"}"
        ),
        0.0
    );
    assert_eq!(
        common::parse_metric(&m, "drainwatch_events_lost_total{stage=\"decode\"}"),
        0.0
    );
    assert!(m.contains("drainwatch_build_info{"));
    assert!(d.stop().success());
}

#[test]
fn tiny_ring_buffer_loses_only_what_it_counts() {
    let _g = serial();
    if !root_or_skip("tiny_ring_buffer_loses_only_what_it_counts") {
        return;
    }
    let port = 7444;
    let connects = 200;
    let pair = Pair::new();
    let d = Daemon::start(&["--port", &port.to_string(), "--ringbuf-bytes", "4096"]);
    // Stop the reader so the burst must overflow the 4 KiB buffer; `kill` only queues
    // the signal, so wait until the daemon is really stopped.
    d.signal(libc::SIGSTOP);
    common::wait_for(
        Duration::from_secs(10),
        "the daemon to stop on SIGSTOP",
        || common::all_threads_stopped(d.pid()),
    );
    let to = addr(&pair.server_v4, port);
    pair.in_client(move || {
        for _ in 0..connects {
            assert_eq!(connect_err(to), std::io::ErrorKind::ConnectionRefused);
        }
    });
    // Each connect returned only after its four events were emitted or counted lost,
    // all while the daemon was stopped: the kernel's counts are final now.
    d.signal(libc::SIGCONT);
    // Four events per refused connect: attempt, RST sent, RST received, refused.
    let expected = 4 * connects;
    const KINDS: [&str; 4] = ["connect_attempt", "reset_sent", "reset_received", "refused"];
    let lost_of = |m: &str| {
        common::parse_metric(
            m,
            "drainwatch_events_lost_total{stage=\"kernel_ringbuf_full\"}",
        ) as usize
    };
    let lost_kind_of = |m: &str, kind: &str| {
        common::parse_metric(
            m,
            &format!("drainwatch_events_lost_by_kind_total{{kind=\"{kind}\"}}"),
        ) as usize
    };
    // The loss poller's first round after SIGCONT exports those final counts (all of
    // them, kinds included, once everything adds up); until then the sums fall short.
    let m = common::wait_for(
        Duration::from_secs(10),
        "received + lost to account for every event, in total and per kind",
        || {
            let m = d.metrics();
            let evs = d.events_for(&[&pair.client_v4]);
            let total = evs.len() + lost_of(&m);
            let short: Vec<String> = KINDS
                .iter()
                .filter(|k| of_kind(&evs, k).len() + lost_kind_of(&m, k) < connects)
                .map(|k| k.to_string())
                .collect();
            if total >= expected && short.is_empty() {
                Ok(m)
            } else {
                Err(format!("{total} of {expected}; kinds short: {short:?}"))
            }
        },
    );
    let lost = lost_of(&m);
    assert!(lost > 0, "the burst should overflow a 4 KiB ring buffer");
    // Stopping drains the ring buffer to the end before exit: the events printed by
    // then are all there will ever be, so an extra one (counted twice) shows here.
    let (st, all) = d.stop_collect();
    assert!(st.success());
    let evs: Vec<serde_json::Value> = all
        .into_iter()
        .filter(|e| {
            ["local", "remote"].iter().any(|k| {
                e[*k]
                    .as_str()
                    .and_then(|s| s.parse::<SocketAddr>().ok())
                    .is_some_and(|a| a.ip().to_string() == pair.client_v4)
            })
        })
        .collect();
    let received = evs.len();
    assert!(received > 0);
    assert_eq!(
        received + lost,
        expected,
        "received {received} + lost {lost}"
    );
    // And per kind: each of the four happened once per connect.
    for kind in KINDS {
        let got = of_kind(&evs, kind).len();
        let lost_kind = lost_kind_of(&m, kind);
        assert_eq!(
            got + lost_kind,
            connects,
            "{kind}: received {got} + lost {lost_kind}"
        );
    }
}

#[test]
fn sigterm_detaches_every_program() {
    let _g = serial();
    if !root_or_skip("sigterm_detaches_every_program") {
        return;
    }
    let ours = || {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| {
                p.name_as_str()
                    .is_some_and(|n| "inet_sock_set_state".starts_with(n) && n.len() >= 8)
            })
            .count()
    };
    // The kernel frees a program shortly after its last fd closes (RCU), so
    // earlier tests' daemons may still be draining: wait, bounded.
    let settle = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while ours() != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        ours()
    };
    assert_eq!(settle(0), 0, "no drainwatch programs before the test");
    let d = Daemon::start(&[]);
    assert_eq!(ours(), 1, "the daemon's program is loaded");
    assert!(d.stop().success());
    assert_eq!(settle(0), 0, "and gone after SIGTERM");
}

#[test]
fn check_lists_hooks_and_kprobe_fallback() {
    let _g = serial();
    if !root_or_skip("check_lists_hooks_and_kprobe_fallback") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args(["run", "--check"])
        .output()
        .expect("run --check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for tp in [
        "sock:inet_sock_set_state",
        "sock:inet_sk_error_report",
        "tcp:tcp_send_reset",
        "tcp:tcp_receive_reset",
        "tcp:tcp_retransmit_skb",
        "tcp:tcp_destroy_sock",
    ] {
        assert!(
            text.contains(&format!("used         tracepoint {tp}")),
            "{tp}: {text}"
        );
    }
    // kprobes: verified everywhere; attached only where the kernel has them.
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let line = text
        .lines()
        .find(|l| l.contains("kprobe tcp_connect"))
        .expect("kprobe line");
    assert!(line.contains("insns verified"), "{line}");
    assert_eq!(line.trim_start().starts_with("used"), kprobes, "{line}");
}

#[test]
fn without_privileges_the_error_says_what_is_missing() {
    let _g = serial();
    if !root_or_skip("without_privileges_the_error_says_what_is_missing") {
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_drainwatch"))
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("CAP_BPF") && err.contains("root"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

/// Waits until an event matching `pred` is among the daemon's events.
fn wait_event(
    d: &Daemon,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(e) = d.events().into_iter().find(|e| pred(e)) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:#?}",
            d.events()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn signals_and_exits_of_watched_processes() {
    let _g = serial();
    if !root_or_skip("signals_and_exits_of_watched_processes") {
        return;
    }
    let d = Daemon::start(&[]);
    let me = std::process::id();

    // Watched by name: a process called kube-apiserver (the default name).
    let dir = std::env::temp_dir().join(format!("dwt-proc-{me}"));
    std::fs::create_dir_all(&dir).expect("dir");
    let fake = dir.join("kube-apiserver");
    std::fs::copy("/bin/sleep", &fake).expect("copy sleep");
    let mut api = std::process::Command::new(&fake)
        .arg("30")
        .spawn()
        .expect("start");
    let api_pid = api.id();
    wait_event(&d, "exec of kube-apiserver", |e| {
        e["kind"] == "process_exec" && e["pid"] == api_pid
    });
    // A process nobody watches: its signals are not reported.
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    // SAFETY: signalling our own children.
    unsafe {
        libc::kill(other.id() as i32, libc::SIGTERM);
        libc::kill(api_pid as i32, libc::SIGTERM);
    }
    let _ = other.wait();
    let _ = api.wait();
    let sig = wait_event(&d, "SIGTERM", |e| {
        e["kind"] == "signal" && e["pid"] == api_pid
    });
    assert_eq!(sig["signal"]["name"], "SIGTERM");
    assert_eq!(sig["signal"]["sender_pid"], me);
    assert_eq!(sig["comm"], "kube-apiserver");
    wait_event(&d, "exit", |e| {
        e["kind"] == "process_exit" && e["pid"] == api_pid
    });

    // Watched as the owner of a listener on a watched port, then SIGKILLed.
    let pair = Pair::new();
    let script = format!(
        "import socket,time\ns=socket.socket()\ns.bind(('{}',6443))\ns.listen()\ntime.sleep(30)",
        pair.server_v4
    );
    let mut owner = std::process::Command::new("ip")
        .args(["netns", "exec", &pair.server, "python3", "-c", &script])
        .spawn()
        .expect("python3");
    let owner_pid = owner.id();
    wait_event(&d, "listen", |e| {
        e["kind"] == "listen_open" && e["pid"] == owner_pid
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(owner_pid as i32, libc::SIGKILL) };
    let _ = owner.wait();
    let sig = wait_event(&d, "SIGKILL", |e| {
        e["kind"] == "signal" && e["pid"] == owner_pid
    });
    assert_eq!(sig["signal"]["name"], "SIGKILL");
    wait_event(&d, "owner exit", |e| {
        e["kind"] == "process_exit" && e["pid"] == owner_pid
    });

    // No wait needed for the absence check: the unwatched process was signalled and
    // reaped before the listener owner was even started, and every event goes through
    // one ring buffer read in order, so anything reported about it came before the
    // owner's exit, which has been read.
    let other_pid = other.id();
    assert!(
        !d.events().iter().any(|e| e["pid"] == other_pid),
        "an unwatched process was reported"
    );
    let m = d.metrics();
    assert_eq!(
        common::parse_metric(&m, "drainwatch_process_signals_total{signal=\"SIGTERM\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        common::parse_metric(&m, "drainwatch_process_signals_total{signal=\"SIGKILL\"}"),
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(d.stop().success());
}

#[test]
fn refusals_after_the_listener_closed_become_a_verdict_live_and_offline() {
    let _g = serial();
    if !root_or_skip("refusals_after_the_listener_closed_become_a_verdict_live_and_offline") {
        return;
    }
    let pair = Pair::new();
    let dir = std::env::temp_dir().join(format!("dwt-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rec = dir.join("observations.jsonl");
    let rec_s = rec.to_str().expect("utf8").to_string();
    // The daemon sits on the "master": the server namespace.
    let d = Daemon::start_in(
        Some(&pair.server),
        &["--instance", "m1", "--record", &rec_s, "--no-wire"],
    );
    let server = addr(&pair.server_v4, 6443);
    // The apiserver listens, serves one connection, stops listening...
    let l = pair.in_server(move || TcpListener::bind(server).expect("bind"));
    pair.in_client(move || drop(TcpStream::connect(server).expect("connect")));
    drop(l.accept().expect("accept"));
    drop(l);
    // The daemon has seen the listener close before the refusals come.
    wait_event(&d, "the listener's close", |e| {
        e["kind"] == "listen_close" && e["local"] == format!("{}:6443", pair.server_v4)
    });
    // ...and clients keep coming: three refused connections.
    pair.in_client(move || {
        for _ in 0..3 {
            assert_eq!(connect_err(server), std::io::ErrorKind::ConnectionRefused);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let live = loop {
        let v: Vec<serde_json::Value> = d
            .events()
            .into_iter()
            .filter(|e| e.get("verdict").is_some())
            .map(|e| e["verdict"].clone())
            .collect();
        if !v.is_empty() || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(d.stop().success());
    assert_eq!(live.len(), 1, "{live:#?}");
    let v = &live[0];
    assert!(
        v["cause"]
            .as_str()
            .is_some_and(|c| c.starts_with("refused")),
        "{v:#}"
    );
    assert_eq!(
        v["count"], 3,
        "three refused SYNs, each seen at both ends, counted once"
    );
    assert_eq!(v["instance"], "m1");
    assert!(v["sentence"].as_str().is_some_and(|s| !s.is_empty()));

    // Offline: the recording gives the same verdict.
    let out = common::drainwatch_in(&pair.server)
        .args(["analyze", &rec_s, "--instance", "m1", "--output", "json"])
        .output()
        .expect("analyze");
    assert_eq!(out.status.code(), Some(1), "exit 1: verdicts found");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    let offline = report["verdicts"].as_array().expect("verdicts");
    assert_eq!(offline.len(), 1, "{report:#}");
    for k in [
        "cause", "count", "instance", "window", "evidence", "sentence",
    ] {
        assert_eq!(offline[0][k], v[k], "{k} differs between live and offline");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn netns_filter_reports_only_the_chosen_namespace() {
    let _g = serial();
    if !root_or_skip("netns_filter_reports_only_the_chosen_namespace") {
        return;
    }
    let pair = Pair::new();
    let client_ns = format!("/run/netns/{}", pair.client);
    let d = Daemon::start(&["--netns", &client_ns, "--no-wire"]);
    // A listener in the server namespace: not ours.
    let server = addr(&pair.server_v4, 6443);
    pair.in_server(move || drop(TcpListener::bind(server).expect("bind")));
    // Then a refusal between the two namespaces: only the client's half is ours. Its
    // `refused` is the last event of all this (the client's socket closes on the RST
    // the server sent), and the ring buffer is read in order: once it is in, anything
    // wrongly reported from the server namespace is in too.
    let to = addr(&pair.server_v4, 6443);
    pair.in_client(move || assert_eq!(connect_err(to), std::io::ErrorKind::ConnectionRefused));
    let evs = d.wait_for(&[&pair.client_v4, &pair.server_v4], "refused", |e| {
        !of_kind(e, "refused").is_empty()
    });
    assert_eq!(
        kinds(&evs),
        ["connect_attempt", "reset_received", "refused"],
        "the server's RST and listener are in another namespace: {evs:#?}"
    );
    assert!(d.stop().success());

    // Without the filter the same traffic shows both ends.
    let d = Daemon::start(&["--no-wire"]);
    pair.in_client(move || assert_eq!(connect_err(to), std::io::ErrorKind::ConnectionRefused));
    let evs = d.wait_for(&[&pair.client_v4], "refused", |e| {
        !of_kind(e, "refused").is_empty()
    });
    assert_eq!(of_kind(&evs, "reset_sent").len(), 1, "{evs:#?}");
    assert!(d.stop().success());
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args(["run", "--netns", "/nonexistent/ns"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("--netns /nonexistent/ns"),
        "{err}"
    );
}

#[test]
fn error_reports_of_refused_connects_do_not_linger_in_the_kernel_tables() {
    let _g = serial();
    if !root_or_skip("error_reports_of_refused_connects_do_not_linger_in_the_kernel_tables") {
        return;
    }
    // An RST's error report comes after the socket closed; what the program
    // notes for it must go with the socket, or the table fills up.
    let port = 7451;
    let pair = Pair::new();
    let d = Daemon::start(&["--port", &port.to_string(), "--no-wire", "--no-kube"]);
    let to = addr(&pair.server_v4, port);
    pair.in_client(move || {
        for _ in 0..200 {
            assert_eq!(connect_err(to), std::io::ErrorKind::ConnectionRefused);
        }
    });
    d.wait_for(&[&pair.client_v4], "200 refused", |e| {
        of_kind(e, "refused").len() == 200
    });
    // The tables are counted every 15 s (and once at start, before any traffic): the
    // check needs a count taken after the refusals, and a table still at 0 cannot show
    // one. A connection held open puts its two sockets (client and server end) in
    // `socks`; the first count showing them came after every refusal.
    let server = addr(&pair.server_v4, port);
    let listener = pair.in_server(move || TcpListener::bind(server).expect("bind"));
    let held = pair.in_client(move || TcpStream::connect(server).expect("connect"));
    let (held_server, _) = listener.accept().expect("accept");
    let socks = "drainwatch_map_entries{map=\"socks\"}";
    common::wait_for(
        Duration::from_secs(30),
        "a table count after the refusals (the held connection in socks)",
        || {
            let m = d.metrics();
            if common::parse_metric(&m, socks) > 0.0 {
                Ok(())
            } else {
                Err(m)
            }
        },
    );
    let m = d.metrics();
    assert_eq!(
        common::parse_metric(&m, "drainwatch_map_capacity{map=\"recent_err\"}"),
        4096.0,
        "{m}"
    );
    assert!(
        m.contains("drainwatch_map_entries{map=\"recent_err\"}"),
        "{m}"
    );
    for map in ["recent_err", "pending"] {
        assert_eq!(
            common::parse_metric(&m, &format!("drainwatch_map_entries{{map=\"{map}\"}}")),
            0.0,
            "{map}: {m}"
        );
    }
    assert_eq!(
        common::parse_metric(&m, socks),
        2.0,
        "only the held connection's two sockets: {m}"
    );
    drop((held, held_server, listener));
    assert!(d.stop().success());
}
