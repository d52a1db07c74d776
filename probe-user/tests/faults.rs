//! Faults and hardening, with the real daemon: what a `kill -9` leaves is
//! removed by the next start; when the Kubernetes API, the kubeconfig or the
//! apiserver fail, kernel observation goes on and each source's health is
//! exported; credentials never reach output; a missing tracefs is mounted and
//! a missing tracepoint turns off only what it feeds; kernel strings are
//! escaped; metrics stay on loopback unless told otherwise.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, Pair, of_kind, parse_metric, root_or_skip, serial};

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

fn out(args: &[&str]) -> String {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Programs attached to `dev` in namespace `ns` by TCX links, both ways.
fn tcx_attached(ns: &str, dev: &str) -> usize {
    let dev = dev.to_string();
    Pair::run_in(ns, move || {
        [
            aya::programs::TcAttachType::Ingress,
            aya::programs::TcAttachType::Egress,
        ]
        .into_iter()
        .map(|t| {
            aya::programs::SchedClassifier::query_tcx(&dev, t)
                .map(|(_, progs)| progs.len())
                .unwrap_or(0)
        })
        .sum()
    })
}

/// Makes `n` connects to `to` from the client side; how many were refused.
fn refused_connects(pair: &Pair, to: SocketAddr, n: usize) -> usize {
    pair.in_client(move || {
        (0..n)
            .filter(|_| {
                TcpStream::connect_timeout(&to, Duration::from_secs(2))
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
            })
            .count()
    })
}

fn settle(want: usize, f: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    while f() != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn after_kill_9_the_next_start_removes_what_the_dead_instance_left() {
    let _g = serial();
    if !root_or_skip("after_kill_9_the_next_start_removes_what_the_dead_instance_left") {
        return;
    }
    let pair = Pair::new();
    let state = temp_dir("state");
    let (ns, dev) = (pair.server.clone(), pair.server_dev.clone());
    let filters = |dir: &str| {
        out(&[
            "ip", "netns", "exec", &ns, "tc", "filter", "show", "dev", &dev, dir,
        ])
    };
    let qdiscs = || {
        out(&[
            "ip", "netns", "exec", &ns, "tc", "qdisc", "show", "dev", &dev,
        ])
    };
    assert!(
        !qdiscs().contains("clsact"),
        "no clsact before: {}",
        qdiscs()
    );
    let args = [
        "--iface",
        &dev,
        "--port",
        "7446",
        "--tc-attach",
        "netlink",
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--no-kube",
    ];

    // The netlink path (kernels before 6.6): a qdisc and two filters that
    // outlive a killed process.
    let d = Daemon::start_in(Some(&ns), &args);
    let dead_pid = d.pid();
    assert!(
        filters("ingress").contains("tc_ingress"),
        "{}",
        filters("ingress")
    );
    assert!(
        filters("egress").contains("tc_egress"),
        "{}",
        filters("egress")
    );
    assert!(qdiscs().contains("clsact"));
    let ledger = state.join(format!("tc-{dead_pid}.json"));
    assert!(ledger.exists(), "the ledger is written while attached");
    d.signal(libc::SIGKILL);
    let st = d.stop();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(9),
        "{st:?}"
    );
    assert!(
        filters("ingress").contains("tc_ingress") && qdiscs().contains("clsact"),
        "a killed instance leaves its filters and qdisc behind: {}",
        filters("ingress")
    );

    // The next start removes them, then attaches its own and works.
    let d = Daemon::start_in(Some(&ns), &args);
    let log = d.stderr();
    for dir in ["ingress", "egress"] {
        assert!(
            log.contains(&format!(
                "removed the tc {dir} filter on {dev} (pref 49152) left by drainwatch pid {dead_pid}"
            )) || log.contains(&format!(
                "removed the tc {dir} filter on {dev} (pref 49151) left by drainwatch pid {dead_pid}"
            )),
            "{log}"
        );
    }
    assert!(
        log.contains(&format!(
            "removed the clsact qdisc on {dev} left by drainwatch pid {dead_pid}"
        )),
        "{log}"
    );
    assert!(!ledger.exists(), "the dead instance's ledger is gone");
    assert_eq!(
        filters("ingress")
            .lines()
            .filter(|l| l.contains("tc_ingress"))
            .count(),
        1,
        "{}",
        filters("ingress")
    );
    assert_eq!(
        filters("egress")
            .lines()
            .filter(|l| l.contains("tc_egress"))
            .count(),
        1,
        "{}",
        filters("egress")
    );
    let to = addr(&pair.server_v4, 7446);
    assert_eq!(refused_connects(&pair, to, 3), 3);
    // Each refused connect is a SYN in and an RST out on the watched port.
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.metric("drainwatch_wire_packets_total") < 6.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        d.metric("drainwatch_wire_packets_total"),
        6.0,
        "{}",
        d.metrics()
    );
    assert_eq!(d.metric("drainwatch_source_up{source=\"wire\"}"), 1.0);
    let own = state.join(format!("tc-{}.json", d.pid()));
    assert!(d.stop().success());
    assert_eq!(
        filters("ingress").trim(),
        "",
        "a clean exit leaves no filter"
    );
    assert_eq!(filters("egress").trim(), "");
    assert!(!qdiscs().contains("clsact"), "nor the qdisc: {}", qdiscs());
    assert!(!own.exists(), "nor its ledger");

    // TCX links (6.6+) need no cleanup: they die with the process.
    let tcx = || tcx_attached(&ns, &dev);
    assert_eq!(tcx(), 0, "no classifier before");
    let d = Daemon::start_in(Some(&ns), &["--iface", &dev, "--port", "7446", "--no-kube"]);
    assert_eq!(tcx(), 2, "ingress and egress attached by TCX links");
    assert!(d.stderr().contains("tc ingress"), "{}", d.stderr());
    d.signal(libc::SIGKILL);
    let _ = d.stop();
    assert_eq!(settle(0, tcx), 0, "the kernel released them");
    assert!(!qdiscs().contains("clsact"));
    let _ = std::fs::remove_dir_all(&state);
}

/// A kubeconfig holding a token and a client key that must never be printed.
const TOKEN: &str = "dw-secret-token-7f3a9c";
const KEY_MARK: &str = "DWSECRETKEYMATERIAL";

fn kubeconfig(server: &str) -> String {
    use std::fmt::Write as _;
    let key = format!("-----BEGIN PRIVATE KEY-----\n{KEY_MARK}\n-----END PRIVATE KEY-----\n");
    let b64 = base64_encode(key.as_bytes());
    let mut s = String::new();
    let _ = write!(
        s,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: {TOKEN}\n    client-key-data: {b64}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n"
    );
    s
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn kernel_observation_goes_on_when_the_api_side_fails() {
    let _g = serial();
    if !root_or_skip("kernel_observation_goes_on_when_the_api_side_fails") {
        return;
    }
    let pair = Pair::new();
    let dir = temp_dir("kubeconfig");
    // The apiserver is down: nothing listens on its port.
    let down = format!("https://{}:7447", pair.server_v4);
    let down_cfg = dir.join("down.yaml");
    std::fs::write(&down_cfg, kubeconfig(&down)).expect("write");
    // Wrong: right shape, a broken field, secrets beside it.
    let wrong_cfg = dir.join("wrong.yaml");
    std::fs::write(
        &wrong_cfg,
        kubeconfig(&down).replace("contexts:", "contexts: [\n"),
    )
    .expect("write");
    let missing_cfg = dir.join("missing.yaml");

    for (what, kube, probe) in [
        ("apiserver down", &down_cfg, &down_cfg),
        ("wrong kubeconfig", &wrong_cfg, &wrong_cfg),
        ("missing kubeconfig", &missing_cfg, &missing_cfg),
    ] {
        // In the client's namespace: every connection it makes stays in the
        // test's namespaces.
        let d = Daemon::start_in(
            Some(&pair.client),
            &[
                "--port",
                "7447,7448",
                "--no-wire",
                "--kubeconfig",
                kube.to_str().expect("utf-8"),
                "--probe-kubeconfig",
                probe.to_str().expect("utf-8"),
                "--apiserver-url",
                &format!("{down}/"),
                "--insecure-skip-tls-verify",
                "--readyz-interval",
                "200ms",
                "--probe-interval",
                "200ms",
            ],
        );
        // Kernel observation goes on (on another port than the one the
        // daemon's own pollers are refused on).
        let to = addr(&pair.server_v4, 7448);
        assert_eq!(refused_connects(&pair, to, 5), 5, "{what}");
        let port_7448 = format!("{}:7448", pair.server_v4);
        let evs = d.wait_for(&[&pair.client_v4], "refused", |e| {
            of_kind(e, "refused")
                .iter()
                .filter(|e| e["remote"] == port_7448)
                .count()
                >= 5
        });
        let ours: Vec<_> = of_kind(&evs, "refused")
            .into_iter()
            .filter(|e| e["remote"] == format!("{}:7448", pair.server_v4))
            .collect();
        assert_eq!(ours.len(), 5, "{what}: {evs:#?}");
        // Each source's health, once each had a chance to fail.
        let deadline = Instant::now() + Duration::from_secs(5);
        let up =
            |m: &str, s: &str| parse_metric(m, &format!("drainwatch_source_up{{source=\"{s}\"}}"));
        let mut m = d.metrics();
        let all_seen = |m: &str| {
            ["kube", "readyz", "probe"]
                .iter()
                .all(|s| m.contains(&format!("drainwatch_source_up{{source=\"{s}\"}}")))
        };
        while !all_seen(&m) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            m = d.metrics();
        }
        assert_eq!(up(&m, "kernel"), 1.0, "{what}: {m}");
        for s in ["kube", "readyz", "probe"] {
            assert!(
                m.contains(&format!("drainwatch_source_up{{source=\"{s}\"}} 0")),
                "{what}: source {s} must read 0: {m}"
            );
        }
        let log = d.stderr();
        match what {
            "apiserver down" => {
                assert!(log.contains("/readyz on"), "{what}: {log}");
                assert!(
                    m.contains("code=\"refused\""),
                    "{what}: probes count refusals: {m}"
                );
            }
            _ => {
                // The bad file is named, for both of its uses.
                let name = kube.display().to_string();
                assert!(
                    log.matches(&name).count() >= 2,
                    "{what}: the log names {name}: {log}"
                );
                assert!(log.contains("probe source off"), "{what}: {log}");
            }
        }
        let (st, printed) = d.stop_collect();
        assert!(st.success(), "{what}: {st:?}");
        let printed = serde_json::to_string(&printed).expect("json");
        for secret in [
            TOKEN,
            KEY_MARK,
            &base64_encode(b"-----BEGIN PRIVATE KEY-----")[..20],
        ] {
            for (where_, text) in [("stderr", &log), ("stdout", &printed), ("metrics", &m)] {
                assert!(
                    !text.contains(secret),
                    "{what}: a credential ({secret}) leaked into {where_}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_tracefs_is_mounted_and_a_missing_tracepoint_turns_off_only_its_events() {
    let _g = serial();
    if !root_or_skip(
        "a_missing_tracefs_is_mounted_and_a_missing_tracepoint_turns_off_only_its_events",
    ) {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_drainwatch");
    // In a private mount namespace, with tracefs unmounted from both places.
    let script = format!(
        "umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null; \
         if [ -e /sys/kernel/tracing/events ]; then echo STILL-MOUNTED; exit 1; fi; \
         DRAINWATCH_LOG=info {bin} run --check --no-wire"
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("mounted tracefs at /sys/kernel/tracing (it was not mounted)"),
        "{stderr}"
    );
    assert!(
        stdout.contains("used         tracepoint sock:inet_sock_set_state"),
        "{stdout}"
    );

    // A kernel without tcp:tcp_receive_reset: its formats, minus that one.
    let root = temp_dir("tracefs");
    let live = std::path::Path::new("/sys/kernel/tracing/events");
    assert!(
        live.exists(),
        "the host has tracefs mounted (the daemon mounted it above or before)"
    );
    for (cat, name) in [
        ("sock", "inet_sock_set_state"),
        ("sock", "inet_sk_error_report"),
        ("tcp", "tcp_send_reset"),
        ("tcp", "tcp_retransmit_skb"),
        ("tcp", "tcp_destroy_sock"),
        ("signal", "signal_generate"),
        ("sched", "sched_process_exit"),
    ] {
        let to = root.join("events").join(cat).join(name);
        std::fs::create_dir_all(&to).expect("mkdir");
        std::fs::copy(live.join(cat).join(name).join("format"), to.join("format")).expect("copy");
    }
    let o = Command::new(bin)
        .args(["run", "--check", "--no-wire"])
        .env("DRAINWATCH_TRACEFS", &root)
        .env("DRAINWATCH_LOG", "info")
        .output()
        .expect("run --check");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("tcp:tcp_receive_reset unavailable"))
        .collect();
    assert_eq!(lines.len(), 1, "one clear line: {stderr}");
    assert!(
        lines[0].contains("tracepoint not present in this kernel"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("the events it feeds are off: RSTs this host received"),
        "{}",
        lines[0]
    );
    for tp in [
        "sock:inet_sock_set_state",
        "tcp:tcp_send_reset",
        "tcp:tcp_destroy_sock",
    ] {
        assert!(
            stdout.contains(&format!("used         tracepoint {tp}")),
            "{tp}: {stdout}"
        );
    }
    assert!(
        !stdout.contains("used         tracepoint tcp:tcp_receive_reset"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn kernel_strings_are_escaped_before_output() {
    let _g = serial();
    if !root_or_skip("kernel_strings_are_escaped_before_output") {
        return;
    }
    let pair = Pair::new();
    let d = Daemon::start(&["--port", "7449", "--no-wire", "--no-kube"]);
    let at = addr(&pair.server_v4, 7449);
    pair.in_server(move || {
        // A thread name with a terminal escape and a newline: what a hostile
        // process could call itself.
        let name = b"ev\x1b[2Jil\n\0";
        // SAFETY: PR_SET_NAME with a NUL-terminated buffer of <= 16 bytes.
        let rc = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        assert_eq!(rc, 0);
        let l = TcpListener::bind(at).expect("bind");
        std::thread::sleep(Duration::from_millis(100));
        drop(l);
    });
    let evs = d.wait_for(&[&pair.server_v4], "listen_open", |e| {
        !of_kind(e, "listen_open").is_empty()
    });
    let open = of_kind(&evs, "listen_open");
    assert_eq!(open[0]["comm"], "ev\\x1b[2Jil\\x0a", "{evs:#?}");
    assert!(d.stop().success());
}

#[test]
fn metrics_listen_on_loopback_unless_told_otherwise() {
    let _g = serial();
    if !root_or_skip("metrics_listen_on_loopback_unless_told_otherwise") {
        return;
    }
    // Its own namespace, so the default port is free and the check is exact.
    let pair = Pair::new();
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.server,
            env!("CARGO_BIN_EXE_drainwatch"),
            "run",
            "--no-wire",
            "--no-kube",
        ])
        .env("DRAINWATCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("drainwatch ready") {
                let _ = tx.send(line);
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let listening = out(&["ip", "netns", "exec", &pair.server, "ss", "-Hltn"]);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().expect("wait");
    assert!(
        ready.contains("metrics on http://127.0.0.1:9977/metrics"),
        "{ready}"
    );
    let sockets: Vec<&str> = listening.lines().filter(|l| l.contains(":9977")).collect();
    assert_eq!(sockets.len(), 1, "{listening}");
    assert!(sockets[0].contains("127.0.0.1:9977"), "{listening}");
    assert!(st.success(), "{st:?}");
}
