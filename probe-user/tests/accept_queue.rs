//! A server that closes its listener with connections still in its accept
//! queue (handshaken by the kernel, never accepted by the application), as
//! Go servers and kube-apiserver do when new connections keep arriving: the
//! kernel resets each one. Behind HAProxy every such connection is a 502 or
//! 503 for a client; drainwatch must count exactly those, as their own
//! cause, through the LB and directly.
//!
//! Real pieces only: HAProxy (its own log is the ground truth), curl as the
//! clients, a listening socket that never accepts, the daemon in the
//! server's namespace. The test waits on the listener's queue length (`ss`)
//! and on the daemon's events, never on time.

mod common;

use std::{
    io::Write as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{Daemon, Pair, root_or_skip, serial, wait_for};
use serde_json::Value;

const PORT: u16 = 6443;

/// A listener in `ns` on `addr:PORT` with a backlog but no `accept()`:
/// it closes the listener when a line arrives on its stdin, then prints
/// `closed` and exits.
fn never_accepting_listener(ns: &str, addr: &str) -> Listener {
    let script = format!(
        "import socket,sys\n\
         s=socket.socket(socket.AF_INET6 if ':' in '{addr}' else socket.AF_INET)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{addr}',{PORT}))\n\
         s.listen(64)\n\
         print('listening',flush=True)\n\
         sys.stdin.readline()\n\
         s.close()\n\
         print('closed',flush=True)\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 listener");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("listener output");
    assert_eq!(line.trim(), "listening", "listener did not start");
    Listener { child, out }
}

/// The listener process and its output, kept open until it says `closed`.
struct Listener {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

/// Connections waiting in the accept queue of the listener on `PORT` in
/// `ns` (`ss`'s Recv-Q of a LISTEN socket).
fn queued(ns: &str) -> usize {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ss",
            "-Hltn",
            &format!("sport = :{PORT}"),
        ])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        .sum()
}

/// Closes the listener and waits for it to say so.
fn close_listener(mut l: Listener) {
    l.child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"close\n")
        .expect("tell the listener");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut l.out, &mut line).expect("listener output");
    assert_eq!(line.trim(), "closed", "the listener did not close");
    let _ = l.child.wait();
}

fn verdicts(evs: &[Value]) -> Vec<Value> {
    evs.iter()
        .filter_map(|e| e.get("verdict").cloned())
        .collect()
}

/// The last printed state of each verdict (updates re-print a verdict).
fn final_of_cause(evs: &[Value], cause: &str) -> Vec<Value> {
    let mut by_key: Vec<(String, Value)> = Vec::new();
    for v in verdicts(evs).into_iter().filter(|v| v["cause"] == cause) {
        let key = format!("{}/{}/{}", v["instance"], v["cycle"], v["path"]);
        match by_key.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = v,
            None => by_key.push((key, v)),
        }
    }
    by_key.into_iter().map(|(_, v)| v).collect()
}

#[test]
fn accept_queue_resets_behind_haproxy_equal_its_502s() {
    let _g = serial();
    if !root_or_skip("accept_queue_resets_behind_haproxy_equal_its_502s") {
        return;
    }
    const CLIENTS: usize = 5;
    let pair = Pair::new();
    let dir = std::env::temp_dir().join(format!("dw-aq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let d = Daemon::start_in(
        Some(&pair.server),
        &[
            "--port",
            &PORT.to_string(),
            "--no-kube",
            "--instance",
            "m1",
            "--lb-addr",
            &pair.client_v4,
        ],
    );
    let listener = never_accepting_listener(&pair.server, &pair.server_v4);

    // HAProxy in the client namespace, one backend connection per request,
    // no retries after the request was sent (as by default): a reset backend
    // connection is the client's 502.
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  log stdout format raw local0\ndefaults\n  mode http\n  log global\n  option httplog\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse never\nfrontend fe\n  bind 127.0.0.1:8080\n  default_backend be\nbackend be\n  server m1 {}:{PORT}\n",
            pair.server_v4
        ),
    )
    .expect("haproxy.cfg");
    let mut haproxy = Command::new("ip")
        .args(["netns", "exec", &pair.client, "haproxy", "-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("haproxy");
    let client_ns = pair.client.clone();
    wait_for(
        Duration::from_secs(10),
        "HAProxy listening on 127.0.0.1:8080",
        || {
            let out = Command::new("ip")
                .args(["netns", "exec", &client_ns, "ss", "-Hltn", "sport = :8080"])
                .output()
                .map_err(|e| e.to_string())?;
            (!out.stdout.is_empty())
                .then_some(())
                .ok_or("not yet".into())
        },
    );

    let curls: Vec<Child> = (0..CLIENTS)
        .map(|_| {
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &pair.client,
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "http://127.0.0.1:8080/api",
                ])
                .stdout(Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    let server_ns = pair.server.clone();
    wait_for(
        Duration::from_secs(15),
        &format!("{CLIENTS} connections in the accept queue"),
        || {
            let n = queued(&server_ns);
            (n == CLIENTS).then_some(()).ok_or(format!("{n} queued"))
        },
    );
    close_listener(listener);
    let codes: Vec<String> = curls
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().expect("curl").stdout).into_owned())
        .collect();
    let failed = codes.iter().filter(|c| *c == "502" || *c == "503").count();
    assert_eq!(failed, CLIENTS, "curl status codes: {codes:?}");

    let evs = d.wait_for(
        &[&pair.client_v4],
        "a reset for each queued connection",
        |evs| {
            evs.iter()
                .filter(|e| e["kind"] == "reset_sent" && e["never_accepted"] == true)
                .count()
                >= CLIENTS
        },
    );
    let resets: Vec<&Value> = evs
        .iter()
        .filter(|e| e["kind"] == "reset_sent" && e["never_accepted"] == true)
        .collect();
    assert_eq!(resets.len(), CLIENTS, "{resets:#?}");

    // HAProxy's own log: one line per request, the status code after the
    // timers (`... be/m1 0/0/0/-1/2 502 ...`).
    let _ = haproxy.kill();
    let out = haproxy.wait_with_output().expect("haproxy");
    let log = String::from_utf8_lossy(&out.stdout);
    let lb_failures = log
        .lines()
        .filter(|l| l.contains(" be/m1 "))
        .filter(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "be/m1")
                .nth(2)
                .is_some_and(|code| code == "502" || code == "503")
        })
        .count();
    assert_eq!(lb_failures, CLIENTS, "HAProxy log:\n{log}");

    let (_, evs) = d.stop_collect();
    let v = final_of_cause(&evs, "accept_queue_reset");
    assert_eq!(v.len(), 1, "{:#?}", verdicts(&evs));
    assert_eq!(v[0]["path"], "via_lb", "{:#?}", v[0]);
    assert_eq!(
        v[0]["count"].as_u64(),
        Some(lb_failures as u64),
        "{:#?}",
        v[0]
    );
    // Nothing else is blamed: no refusal (the listener was not closed to
    // new SYNs before the resets), no hard close.
    let others: Vec<Value> = verdicts(&evs)
        .into_iter()
        .filter(|v| v["cause"] != "accept_queue_reset")
        .collect();
    assert!(others.is_empty(), "{others:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Directly (no LB): plain TCP clients queue on a listener that never
/// accepts; each gets a reset when it closes, and the verdict counts the
/// clients' own connection errors, IPv4 and IPv6.
#[test]
fn accept_queue_resets_direct_equal_the_clients_errors() {
    let _g = serial();
    if !root_or_skip("accept_queue_resets_direct_equal_the_clients_errors") {
        return;
    }
    let pair = Pair::new();
    let d = Daemon::start_in(
        Some(&pair.server),
        &["--port", &PORT.to_string(), "--no-kube", "--instance", "m1"],
    );
    for (server, n) in [
        (pair.server_v4.clone(), 3usize),
        (pair.server_v6.clone(), 2),
    ] {
        let listener = never_accepting_listener(&pair.server, &server);
        let target = if server.contains(':') {
            format!("[{server}]:{PORT}")
        } else {
            format!("{server}:{PORT}")
        };
        let clients: Vec<std::net::TcpStream> = (0..n)
            .map(|_| {
                let t = target.clone();
                pair.in_client(move || std::net::TcpStream::connect(&t).expect("connect"))
            })
            .collect();
        let server_ns = pair.server.clone();
        wait_for(Duration::from_secs(10), "queued connections", || {
            let q = queued(&server_ns);
            (q == n).then_some(()).ok_or(format!("{q} queued"))
        });
        close_listener(listener);
        let errors = clients
            .into_iter()
            .filter(|mut c| {
                use std::io::Read as _;
                let mut b = [0u8; 1];
                c.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                matches!(c.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
            })
            .count();
        assert_eq!(errors, n, "every queued client saw a reset");
    }
    let (_, evs) = d.stop_collect();
    let v = final_of_cause(&evs, "accept_queue_reset");
    let total: u64 = v.iter().filter_map(|v| v["count"].as_u64()).sum();
    assert_eq!(total, 5, "{:#?}", verdicts(&evs));
    assert!(
        v.iter()
            .all(|v| v["path"] == "direct" || v["path"] == "unknown"),
        "{v:#?}"
    );
}
