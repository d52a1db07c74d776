//! drainwatch's own connections to the apiserver survive an LB that resets
//! flows idle for its timeout (Azure's "TCP reset on idle"), because they
//! have TCP keepalive below it, as client-go's do. Client, router and server
//! namespaces; the lab's idle-reset box on the router (2 s timeout); the
//! lab's apiserver stand-in on the server; the real daemon on the client with
//! `--kubeconfig` to the stand-in (its pod and node-pod watchers, and the
//! Events writer if a verdict comes). Ground truth is the kernel's and the
//! box's: `ss -tnoHp` in the client namespace (the keepalive timer on each of
//! the daemon's sockets, and which sockets there are) and the box's record
//! of the flows it reset. With `--kube-keepalive 0` the box resets the
//! daemon's watches, with `1s` it resets none of them over three timeouts
//! (the same sockets all along) while an idle control connection beside
//! them is reset. Needs root; skips with a reason otherwise.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, KillOnDrop, Pair, Routed, root_or_skip, serial, wait_for};
use serde_json::Value;

/// The box's idle timeout, and the daemon's keepalive below it.
const IDLE: Duration = Duration::from_secs(2);

/// One established connection of the daemon to the stand-in, from `ss`.
#[derive(Debug, Clone, PartialEq)]
struct Conn {
    local: SocketAddr,
    /// `timer:(keepalive,812ms,0)`'s remaining time, if that timer runs.
    keepalive_left: Option<Duration>,
}

/// `ss ARGS SERVER` in namespace `ns`: its output (it must succeed).
fn ss(ns: &str, args: &[&str], server: SocketAddr) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss"])
        .args(args)
        .arg(server.to_string())
        .output()
        .expect("ss");
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ss -tnoHp` in namespace `ns`: the established connections of process
/// `pid` to `server`, by local address.
fn daemon_conns(ns: &str, pid: u32, server: SocketAddr) -> BTreeMap<SocketAddr, Conn> {
    let owner = format!("pid={pid},");
    ss(ns, &["-tnoHp", "state", "established", "dst"], server)
        .lines()
        .filter(|l| l.contains(&owner))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Recv-Q, Send-Q, local, peer, users:(...), timer:(...)
            let local: SocketAddr = f[2].parse().unwrap_or_else(|e| panic!("{l}: {e}"));
            let keepalive_left = f
                .iter()
                .find_map(|t| t.strip_prefix("timer:(keepalive,"))
                .map(|t| parse_ss_time(t.split(',').next().unwrap_or_default()));
            (
                local,
                Conn {
                    local,
                    keepalive_left,
                },
            )
        })
        .collect()
}

/// Sockets of namespace `ns` to `server` in any state but TIME-WAIT
/// (a closed connection waiting out its time is gone from the path).
fn lingering(ns: &str, server: SocketAddr) -> Vec<String> {
    ss(ns, &["-tanH", "dst"], server)
        .lines()
        .filter(|l| !l.starts_with("TIME-WAIT"))
        .map(str::to_string)
        .collect()
}

/// ss's timer values: `812ms`, `1.5sec`, `29sec`, `2min10sec`.
fn parse_ss_time(t: &str) -> Duration {
    let (mins, rest) = match t.split_once("min") {
        Some((m, r)) => (m.parse::<u64>().unwrap_or_else(|e| panic!("{t}: {e}")), r),
        None => (0, t),
    };
    let rest_d = if let Some(ms) = rest.strip_suffix("ms") {
        Duration::from_millis(ms.parse().unwrap_or_else(|e| panic!("{t}: {e}")))
    } else if let Some(s) = rest.strip_suffix("sec") {
        Duration::from_secs_f64(s.parse().unwrap_or_else(|e| panic!("{t}: {e}")))
    } else if rest.is_empty() {
        Duration::ZERO
    } else {
        panic!("ss timer {t:?}")
    };
    Duration::from_secs(mins * 60) + rest_d
}

/// The flows the box reset so far, as (a, b) address pairs.
fn box_resets(out: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .filter(|r| r["event"] == "reset")
        .map(|r| {
            (
                r["a"].as_str().unwrap_or_default().to_string(),
                r["b"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Whether `flow` has `addr` at either end.
fn touches(flow: &(String, String), addr: &SocketAddr) -> bool {
    let a = addr.to_string();
    flow.0 == a || flow.1 == a
}

#[test]
fn kube_connections_survive_an_idle_reset_lb() {
    let _g = serial();
    if !root_or_skip("kube_connections_survive_an_idle_reset_lb") {
        return;
    }
    let r = Routed::new();
    // The router's ends of the two links, named after the client's (see Routed::new).
    let suffix = r.client_dev.strip_prefix("dwrc").expect("client dev name");
    let (router_c, router_s) = (format!("dwrr{suffix}"), format!("dwrq{suffix}"));
    let dir = std::env::temp_dir().join(format!("dwt-kube-keepalive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");

    let server: SocketAddr = format!("{}:6443", r.server_ip).parse().expect("addr");
    let _standin = KillOnDrop(common::start_standin(
        &r.server,
        &dir,
        &[
            "--name",
            "m1",
            "--listen",
            &server.to_string(),
            "--san",
            &r.server_ip,
            "--startup-delay",
            "100ms",
        ],
    ));
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: https://{server}\n    certificate-authority: {}\nusers:\n- name: lab\n  user:\n    token: t\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: default\ncurrent-context: lab\n",
            dir.join("pki/ca.crt").display()
        ),
    )
    .expect("kubeconfig");
    let kc = kc.to_str().expect("utf8").to_string();

    let out = dir.join("box.jsonl");
    let mut idle_box = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &r.router])
            .arg(common::lab_binary())
            .args(["idle-reset-box", "--iface", &router_c, "--iface", &router_s])
            .args(["--idle", "2s", "--duration", "120s", "--out"])
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .expect("idle-reset box"),
    );
    // Kept open until the box exits: it prints its summary at the end.
    let mut box_stdout = BufReader::new(idle_box.0.stdout.take().expect("stdout"));
    let mut ready = String::new();
    box_stdout.read_line(&mut ready).expect("box stdout");
    assert!(ready.starts_with("READY"), "box: {ready:?}");

    let start = |keepalive: &str| {
        Daemon::start_in(
            Some(&r.client),
            &[
                "--netns",
                "self",
                "--kubeconfig",
                &kc,
                "--node-name",
                "worker-1",
                "--kube-keepalive",
                keepalive,
                "--no-go-uprobes",
            ],
        )
    };
    let watching = |d: &Daemon| {
        let pid = d.pid();
        wait_for(Duration::from_secs(20), "the daemon's two watches", || {
            let c = daemon_conns(&r.client, pid, server);
            if c.len() >= 2 {
                Ok(c)
            } else {
                Err(format!("{c:?}"))
            }
        })
    };

    // Without keepalive the box resets the daemon's idle watches: the box
    // and the path do what the second run is checked against.
    let d = start("0");
    let first = watching(&d);
    assert!(
        first.values().all(|c| c.keepalive_left.is_none()),
        "keepalive off: {first:?}"
    );
    let reset = wait_for(
        IDLE * 4,
        "a reset of the daemon's watch connections",
        || {
            let resets = box_resets(&out);
            let hit: Vec<SocketAddr> = first
                .keys()
                .filter(|a| resets.iter().any(|f| touches(f, a)))
                .copied()
                .collect();
            if hit.is_empty() {
                Err(format!("{resets:?}"))
            } else {
                Ok(hit)
            }
        },
    );
    let first_exit = d.stop();
    assert!(first_exit.success(), "daemon exited {first_exit}");
    // The first daemon's connections closed with it, but one the server
    // had not closed yet lingers half-open (FIN_WAIT2) until the box resets
    // it at its idle timeout: only once none is left are the box's later
    // resets the second daemon's.
    wait_for(
        IDLE * 4,
        "the first daemon's connections gone",
        || match lingering(&r.client, server) {
            l if l.is_empty() => Ok(()),
            l => Err(format!("{l:?}")),
        },
    );
    let before = box_resets(&out).len();

    // With keepalive 1 s (below the 2 s timeout), over three timeouts: the
    // same sockets, the keepalive timer on each, no reset of any; an idle
    // control connection on the same path is reset meanwhile.
    let d = start("1s");
    let pid = d.pid();
    let kept = watching(&d);
    let since = Instant::now();
    let control_server = SocketAddr::new(server.ip(), 7000);
    let listener = Pair::run_in(&r.server, move || {
        TcpListener::bind(control_server).expect("control listen")
    });
    let mut control = Pair::run_in(&r.client, move || {
        TcpStream::connect(control_server).expect("control connect")
    });
    let (mut control_s, _) = listener.accept().expect("control accept");
    let mut b = [0u8; 1];
    control.write_all(b"q").expect("control write");
    control_s.read_exact(&mut b).expect("control read");
    control.set_read_timeout(Some(IDLE * 4)).expect("timeout");
    let err = control
        .read(&mut b)
        .expect_err("the control connection is reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "control: {err}");
    let control_local = control.local_addr().expect("addr");

    let mut polls = 0u32;
    let mut longest_left = Duration::ZERO;
    // Every connection the daemon was seen to hold open in this run.
    let mut held: std::collections::BTreeSet<SocketAddr> = kept.keys().copied().collect();
    wait_for(
        IDLE * 5,
        "three idle timeouts with the same sockets",
        || {
            let now = daemon_conns(&r.client, pid, server);
            held.extend(now.keys().copied());
            for (a, c) in &kept {
                let Some(n) = now.get(a) else {
                    panic!("{a} ({c:?}) is gone after {:?}: {now:?}", since.elapsed())
                };
                let left = n
                    .keepalive_left
                    .unwrap_or_else(|| panic!("no keepalive timer on {a}: {now:?}"));
                assert!(left <= Duration::from_secs(1), "{a}: {left:?} left of 1 s");
                longest_left = longest_left.max(left);
            }
            polls += 1;
            if since.elapsed() >= IDLE * 3 {
                Ok(())
            } else {
                Err(format!("{:?} of {:?}", since.elapsed(), IDLE * 3))
            }
        },
    );
    let all = d.stop();
    assert!(all.success(), "daemon exited {all}");
    let resets = box_resets(&out);
    let new: Vec<&(String, String)> = resets[before..].iter().collect();
    // The control flow is reset, and no connection the daemon held open.
    // A connection the daemon had already closed (an orphan in FIN_WAIT2
    // while the server's watch is still open, the half-close HTTP allows)
    // sends no keepalive and may be reset: it is no longer the daemon's.
    assert!(
        new.iter().any(|f| touches(f, &control_local)),
        "the control flow is reset: {new:?} vs {control_local}"
    );
    let daemons: Vec<&(String, String)> = new
        .iter()
        .copied()
        .filter(|f| held.iter().any(|a| touches(f, a)))
        .collect();
    assert!(
        daemons.is_empty(),
        "no connection the daemon held open is reset: {daemons:?} (held: {held:?})"
    );
    // SAFETY: a pid of our own child.
    unsafe { libc::kill(idle_box.0.id() as i32, libc::SIGTERM) };
    let status = idle_box.0.wait().expect("box exit");
    assert!(status.success(), "box exited {status}");
    drop(box_stdout);
    println!(
        "keepalive off: {} of {} watch connections reset; keepalive 1s: {} connections kept {:.1}s ({} polls, timer at most {:?}), control reset, box resets in all {}",
        reset.len(),
        first.len(),
        kept.len(),
        since.elapsed().as_secs_f64(),
        polls,
        longest_left,
        resets.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
