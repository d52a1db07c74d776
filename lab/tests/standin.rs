//! The apiserver stand-in against real clients (kubectl, python3-kubernetes, curl) and
//! its shutdown sequence, each in a network namespace of its own. Needs root.
//!
//! Steps across processes are ordered on the event itself (the stand-in's lifecycle
//! records, a GOAWAY on the connection), never on a sleep.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{wait_for, wait_for_async};
use drainwatch_lab::apiserver::Lifecycle;
use drainwatch_lab::scenario::{TOKEN, write_kubeconfig};
use drainwatch_lab::topo::Lab;

const BIN: &str = env!("CARGO_BIN_EXE_drainwatch-lab");

/// Bounds a wait for something the stand-in does within milliseconds; only a hang reaches it.
const HANG: Duration = Duration::from_secs(10);

/// The lifecycle records in `path` so far. The stand-in appends each record as one whole
/// line in one write, so a reader racing a write sees at most an unfinished last line:
/// that one is left for the next read, every complete line must parse.
fn records(path: &Path) -> Vec<Lifecycle> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("{}: {e}", path.display()),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {l:?}: {e}", path.display()))
        })
        .collect()
}

/// Waits for `n` records of `event` in `path`; returns them.
fn await_records(path: &Path, event: &str, n: usize) -> Vec<Lifecycle> {
    wait_for(HANG, &format!("{n} `{event}` lifecycle record(s)"), || {
        let all = records(path);
        let hits: Vec<Lifecycle> = all.iter().filter(|l| l.event == event).cloned().collect();
        if hits.len() >= n {
            Ok(hits)
        } else {
            Err(format!(
                "{:?}",
                all.iter().map(|l| &l.event).collect::<Vec<_>>()
            ))
        }
    })
}

/// `ms` of the `slow_started` record for a `/lab/slow?ms=..&record` request.
fn slow_ms(l: &Lifecycle) -> u64 {
    l.detail["ms"].as_u64().expect("slow_started carries ms")
}

fn skip_unless_root() -> bool {
    if drainwatch_lab::cmd::is_root() {
        return false;
    }
    assert!(
        std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
        "the lab needs root: DRAINWATCH_NO_SKIP is set, nothing may skip"
    );
    eprintln!("skipped: the lab creates network namespaces and needs root");
    true
}

/// One namespace running one stand-in on 127.0.0.1:6443 (and h2c on :8080).
struct Standin {
    lab: Lab,
    ns: String,
    dir: PathBuf,
    child: std::process::Child,
}

impl Standin {
    fn start(tag: &str, mode: &str, delay: &str, timeout: &str) -> Standin {
        let mut lab = Lab::new();
        lab.add_host("api").expect("namespace");
        let ns = lab.ns("api").expect("ns").to_string();
        let dir = std::env::temp_dir().join(format!("dwlab-standin-{tag}-{}", lab.id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                BIN,
                "apiserver",
                "--name",
                "m1",
                "--listen",
                "127.0.0.1:6443",
            ])
            .args([
                "--h2c-listen",
                "127.0.0.1:8080",
                "--startup-delay",
                "100ms",
                "--token",
                TOKEN,
            ])
            .args([
                "--mode",
                mode,
                "--shutdown-delay",
                delay,
                "--request-timeout",
                timeout,
            ])
            .arg("--tls-dir")
            .arg(dir.join("pki"))
            .arg("--truth")
            .arg(dir.join("lifecycle.jsonl"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stand-in");
        lab.track_pid(child.id());
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        while !line.contains("READY") {
            line.clear();
            let n = std::io::BufRead::read_line(&mut out, &mut line).expect("read");
            assert!(n > 0, "stand-in exited before READY");
        }
        write_kubeconfig(
            &dir.join("kubeconfig"),
            "https://127.0.0.1:6443",
            &dir.join("pki/ca.crt"),
        )
        .expect("kubeconfig");
        Standin {
            lab,
            ns,
            dir,
            child,
        }
    }

    fn run(&self, prog: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, prog])
            .args(args)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .output()
            .expect("run client")
    }

    fn spawn(&self, prog: &str, args: &[&str]) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, prog])
            .args(args)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client")
    }

    fn curl(&self, extra: &[&str], url: &str) -> (i32, String) {
        let ca = self.dir.join("pki/ca.crt");
        let mut args = vec![
            "-s",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().expect("path"),
        ];
        args.extend_from_slice(extra);
        args.push(url);
        let o = self.run("curl", &args);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    fn sigterm(&self) -> Instant {
        drainwatch_lab::cmd::kill(self.child.id(), libc::SIGTERM);
        Instant::now()
    }

    fn wait_exit(&mut self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn lifecycle_path(&self) -> PathBuf {
        self.dir.join("lifecycle.jsonl")
    }

    fn lifecycle(&self) -> Vec<Lifecycle> {
        records(&self.lifecycle_path())
    }

    /// Waits until the stand-in has written its `event` record; returns it.
    fn await_record(&self, event: &str) -> Lifecycle {
        await_records(&self.lifecycle_path(), event, 1).remove(0)
    }

    fn at(&self, event: &str) -> u64 {
        self.lifecycle()
            .iter()
            .find(|l| l.event == event)
            .map(|l| l.t_ns)
            .unwrap_or_else(|| panic!("no {event} in {:?}", self.lifecycle()))
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lab.teardown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(path: &Path, s: &str) {
    std::fs::write(path, s).expect("write");
}

#[test]
fn kubectl_works_against_the_stand_in() {
    if skip_unless_root() {
        return;
    }
    let mut s = Standin::start("kubectl", "graceful", "1s", "1s");
    let o = s.run("kubectl", &["get", "--raw", "/readyz"]);
    assert!(
        o.status.success() && text(&o).trim() == "ok",
        "readyz: {}",
        text(&o)
    );
    let o = s.run("kubectl", &["get", "--raw", "/readyz?verbose"]);
    assert!(text(&o).contains("[+]shutdown ok"), "{}", text(&o));

    let o = s.run(
        "kubectl",
        &[
            "-n",
            "openshift-kube-apiserver",
            "get",
            "cm",
            "config",
            "-o",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let cm: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(
        cm["data"]["config.yaml"]
            .as_str()
            .unwrap_or_default()
            .contains("shutdown-delay-duration")
    );

    // kubectl sends typed objects as protobuf; objects from files go as JSON.
    let f = s.dir.join("cm.json");
    write(
        &f,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":"1"}}"#,
    );
    let o = s.run(
        "kubectl",
        &["create", "--validate=false", "-f", f.to_str().expect("p")],
    );
    assert!(o.status.success(), "create: {}", text(&o));
    write(
        &f,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"a":"2"}}"#,
    );
    let o = s.run(
        "kubectl",
        &["replace", "--validate=false", "-f", f.to_str().expect("p")],
    );
    assert!(o.status.success(), "replace: {}", text(&o));
    let o = s.run("kubectl", &["get", "cm", "x", "-o", "jsonpath={.data.a}"]);
    assert_eq!(text(&o).trim(), "2");
    let o = s.run("kubectl", &["get", "cm", "nope"]);
    assert!(
        !o.status.success() && text(&o).contains("NotFound"),
        "{}",
        text(&o)
    );

    // `kubectl get pods -w` shows the stand-in's own pod going unready on SIGTERM, and
    // ends when the server cuts the watch at the request timeout.
    let w = s.spawn(
        "kubectl",
        &["-n", "openshift-kube-apiserver", "get", "pods", "-w"],
    );
    // The watch is subscribed to changes before the stand-in records its start, so the
    // pod's readiness change on SIGTERM reaches it.
    s.await_record("watch_started");
    s.sigterm();
    assert!(
        s.wait_exit(Duration::from_secs(10)),
        "stand-in did not exit"
    );
    let o = w.wait_with_output().expect("kubectl -w");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("kube-apiserver-m1   1/1"), "{out}");
    assert!(out.contains("kube-apiserver-m1   0/1"), "{out}");
}

#[test]
fn python_client_lists_creates_and_watches() {
    if skip_unless_root() {
        return;
    }
    let s = Standin::start("python", "graceful", "1s", "1s");
    let script = s.dir.join("t.py");
    // The update must follow the watch's start (else the watch's initial ADDED already
    // shows it and no MODIFIED comes): the updater waits for the stand-in's
    // `watch_started` record, the deadline only bounds a hang.
    write(
        &script,
        r#"
import sys, threading, time
from kubernetes import client, config, watch
config.load_kube_config()
v1 = client.CoreV1Api()
names = [c.metadata.name for c in v1.list_config_map_for_all_namespaces().items]
assert "config" in names, names
v1.create_namespaced_config_map("default", {"metadata": {"name": "py"}, "data": {"n": "0"}})
def update():
    deadline = time.monotonic() + 10
    while '"watch_started"' not in open(sys.argv[1]).read():
        assert time.monotonic() < deadline, "no watch_started record in 10 s"
        time.sleep(0.02)
    client.CoreV1Api().replace_namespaced_config_map("py", "default", {"metadata": {"name": "py"}, "data": {"n": "1"}})
threading.Thread(target=update).start()
seen = []
for ev in watch.Watch().stream(v1.list_namespaced_config_map, "default", field_selector="metadata.name=py", timeout_seconds=3):
    seen.append((ev["type"], ev["object"].data["n"]))
    if len(seen) == 2:
        break
assert seen == [("ADDED", "0"), ("MODIFIED", "1")], seen
print("PYTHON OK")
"#,
    );
    let lifecycle = s.lifecycle_path();
    let o = s.run(
        "/usr/bin/python3",
        &[script.to_str().expect("p"), lifecycle.to_str().expect("p")],
    );
    assert!(
        text(&o).contains("PYTHON OK"),
        "python client failed: {}",
        text(&o)
    );
}

#[test]
fn curl_speaks_h2_http11_and_h2c() {
    if skip_unless_root() {
        return;
    }
    let s = Standin::start("curl", "graceful", "1s", "1s");
    let (rc, v) = s.curl(
        &["-o", "/dev/null", "-w", "%{http_version}", "--http2"],
        "https://127.0.0.1:6443/livez",
    );
    assert_eq!((rc, v.as_str()), (0, "2"));
    let (rc, v) = s.curl(
        &["-o", "/dev/null", "-w", "%{http_version}", "--http1.1"],
        "https://127.0.0.1:6443/livez",
    );
    assert_eq!((rc, v.as_str()), (0, "1.1"));
    let (rc, v) = s.curl(
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            "--http2-prior-knowledge",
        ],
        "http://127.0.0.1:8080/livez",
    );
    assert_eq!((rc, v.as_str()), (0, "2"));
    let (_, v) = s.curl(
        &["-w", " %{http_code}"],
        "https://127.0.0.1:6443/api/v1/namespaces/default/configmaps",
    );
    assert!(v.ends_with(" 401"), "API without a token: {v}");
}

#[test]
fn graceful_shutdown_follows_kube_apiserver() {
    if skip_unless_root() {
        return;
    }
    let mut s = Standin::start("graceful", "graceful", "1500ms", "2s");
    // Requests in flight when the listener closes (T + 1.5 s): one finishes within the
    // request timeout (2 s after the close), one does not. Both are known to be served before SIGTERM (their
    // `slow_started` records), so they cannot miss the listener, however slow curl
    // starts here.
    let ca = s.dir.join("pki/ca.crt");
    let slow = |ms: u32| {
        s.spawn(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--http2",
                "--cacert",
                ca.to_str().expect("p"),
                &format!("https://127.0.0.1:6443/lab/slow?ms={ms}&record"),
            ],
        )
    };
    let done = slow(2500);
    let cut = slow(8000);
    let started = await_records(&s.lifecycle_path(), "slow_started", 2);
    let t0 = s.sigterm();
    // readyz red at once (the record follows the switch), the server still serves
    // (shutdown delay).
    s.await_record("readyz_red");
    let (rc, body) = s.curl(&["-w", "%{http_code}"], "https://127.0.0.1:6443/readyz");
    let during_delay = t0.elapsed();
    assert_eq!(rc, 0, "readyz {during_delay:?} after SIGTERM");
    assert!(
        body.contains("[-]shutdown failed") && body.ends_with("500"),
        "{body}"
    );
    let (_, code) = s.curl(
        &["-o", "/dev/null", "-w", "%{http_code}"],
        "https://127.0.0.1:6443/healthz",
    );
    assert_eq!(
        code,
        "200",
        "healthz {:?} after SIGTERM, within the 1.5 s shutdown delay",
        t0.elapsed()
    );
    // The listener closed: not listening any more, from the record on (it follows the close).
    s.await_record("listener_closed");
    let (rc, _) = s.curl(&[], "https://127.0.0.1:6443/healthz");
    assert_eq!(
        rc, 7,
        "expected connection refused after the listener closed"
    );
    assert!(s.wait_exit(Duration::from_secs(10)));
    let done = done.wait_with_output().expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&done.stdout),
        "200",
        "in-flight request was not drained"
    );
    let cut = cut.wait_with_output().expect("curl");
    assert!(
        !cut.status.success(),
        "request past the request timeout was not cut"
    );

    let (term, red, closed) = (s.at("sigterm"), s.at("readyz_red"), s.at("listener_closed"));
    // The drained request was in flight when the listener closed: it started before
    // SIGTERM and lasted 2.5 s, so it ends after the close (T + 1.5 s) unless it started over 1 s before
    // the SIGTERM, which only a stalled test could make happen.
    let done_start = started
        .iter()
        .find(|l| slow_ms(l) == 2500)
        .expect("the 2.5 s request's record")
        .t_ns;
    assert!(
        term - done_start < 1_000_000_000,
        "the 2.5 s request started {} ms before SIGTERM: not in flight when the listener closed",
        (term - done_start) / 1_000_000
    );
    assert!(
        red - term < 50_000_000,
        "readyz red {}ms after SIGTERM",
        (red - term) / 1_000_000
    );
    let delay = (closed - term) as f64 / 1e9;
    assert!(
        (delay - 1.5).abs() < 0.2,
        "listener closed {delay:.3}s after SIGTERM"
    );
    let cut_at = s.at("requests_cut");
    let timeout = (cut_at - closed) as f64 / 1e9;
    assert!(
        (timeout - 2.0).abs() < 0.2,
        "requests cut {timeout:.3}s after the listener closed"
    );
    assert!(s.at("goaway_sent") >= closed && s.at("exit") >= cut_at);
}

/// Runs `f` on a thread that has entered namespace `ns`, so its sockets live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on a valid namespace fd affects only this thread.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
    .join()
    .expect("netns thread")
}

#[test]
fn http2_clients_get_goaway_when_the_listener_closes() {
    if skip_unless_root() {
        return;
    }
    let s = Standin::start("goaway", "no-delay", "0s", "3s");
    let pid = s.child.id();
    let lifecycle = s.lifecycle_path();
    // A raw h2 (prior knowledge) connection with a slow stream in flight at SIGTERM: the
    // stream completes (drained) and a new stream on the same connection is refused
    // with GOAWAY. Each step waits on the event itself: the stream being served (the
    // stand-in's record), then the GOAWAY reaching this connection.
    let (slow, next) = in_netns(&s.ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            let tcp = tokio::net::TcpStream::connect("127.0.0.1:8080")
                .await
                .expect("connect h2c");
            let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
            tokio::spawn(conn);
            let mut c = client.ready().await.expect("ready");
            let req = |path: &str| {
                http::Request::get(format!("http://127.0.0.1:8080{path}"))
                    .body(())
                    .expect("req")
            };
            let (resp, _) = c
                .send_request(req("/lab/slow?ms=1000&record"), true)
                .expect("send slow");
            // Polled without blocking the thread: the connection task runs here too.
            wait_for_async(HANG, "the slow stream's `slow_started` record", || {
                let evs: Vec<String> = records(&lifecycle).into_iter().map(|l| l.event).collect();
                if evs.iter().any(|e| e == "slow_started") {
                    Ok(())
                } else {
                    Err(format!("{evs:?}"))
                }
            })
            .await;
            drainwatch_lab::cmd::kill(pid, libc::SIGTERM);
            // h2 turns a received GOAWAY into a connection error that every later
            // `ready()` returns: that error is the GOAWAY arriving.
            let deadline = Instant::now() + HANG;
            let goaway = loop {
                match c.clone().ready().await {
                    Err(e) => break e,
                    Ok(_) => {
                        assert!(
                            Instant::now() < deadline,
                            "no GOAWAY on the h2 connection {HANG:?} after SIGTERM; lifecycle: {:?}",
                            records(&lifecycle).into_iter().map(|l| l.event).collect::<Vec<_>>()
                        );
                        tokio::time::sleep(common::POLL).await;
                    }
                }
            };
            assert!(goaway.is_go_away(), "connection failed without GOAWAY: {goaway}");
            // A new stream on the same connection is refused with that GOAWAY.
            let next = match c.ready().await {
                Ok(mut c) => match c.send_request(req("/livez"), true) {
                    Ok((r, _)) => r.await.map(|r| r.status().as_u16()),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let slow = resp.await.map(|r| r.status().as_u16());
            (
                slow.map_err(|e| e.to_string()),
                next.map_err(|e| (e.is_go_away(), e.to_string())),
            )
        })
    });
    assert_eq!(slow, Ok(200), "the in-flight stream was not drained");
    match next {
        Err((goaway, msg)) => assert!(goaway, "new stream failed without GOAWAY: {msg}"),
        Ok(code) => panic!("new stream after the listener closed got {code}"),
    }
    let closed = s.at("listener_closed");
    assert!(s.at("goaway_sent") >= closed);
}

#[test]
fn hard_close_and_ignore_term_modes() {
    if skip_unless_root() {
        return;
    }
    let mut s = Standin::start("hard", "hard-close", "500ms", "5s");
    let ca = s.dir.join("pki/ca.crt");
    let inflight = s.spawn(
        "curl",
        &[
            "-s",
            "--http2",
            "--cacert",
            ca.to_str().expect("p"),
            "https://127.0.0.1:6443/lab/slow?ms=3000&record",
        ],
    );
    // In flight for sure: the stand-in is serving it.
    s.await_record("slow_started");
    s.sigterm();
    assert!(s.wait_exit(Duration::from_secs(5)));
    let o = inflight.wait_with_output().expect("curl");
    assert!(
        !o.status.success(),
        "in-flight request survived a hard close"
    );
    let ev: Vec<String> = s.lifecycle().into_iter().map(|l| l.event).collect();
    assert!(
        ev.contains(&"connections_closed".to_string()) && !ev.contains(&"goaway_sent".to_string()),
        "{ev:?}"
    );

    let mut s = Standin::start("ignore", "ignore-term", "500ms", "5s");
    let t0 = s.sigterm();
    // The stand-in has handled the signal once it records ignoring it.
    s.await_record("sigterm_ignored");
    let (_, code) = s.curl(
        &["-o", "/dev/null", "-w", "%{http_code}"],
        "https://127.0.0.1:6443/readyz",
    );
    assert_eq!(code, "200", "ignore-term turned readyz red");
    // A real duration: past the 500 ms shutdown delay a server that obeyed SIGTERM would
    // have closed its listener; this one still serves and is still running.
    let past_delay = Duration::from_millis(700);
    std::thread::sleep(past_delay.saturating_sub(t0.elapsed()));
    let (_, code) = s.curl(
        &["-o", "/dev/null", "-w", "%{http_code}"],
        "https://127.0.0.1:6443/healthz",
    );
    assert_eq!(code, "200", "ignore-term stopped serving after the delay");
    assert!(
        matches!(s.child.try_wait(), Ok(None)),
        "ignore-term exited on SIGTERM"
    );
    let ev: Vec<String> = s.lifecycle().into_iter().map(|l| l.event).collect();
    assert!(
        !ev.iter().any(|e| e == "sigterm" || e == "listener_closed"),
        "ignore-term began a shutdown: {ev:?}"
    );
}

#[test]
fn kube_rs_lists_creates_replaces_and_watches() {
    use futures_util::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{
        Api, Client, Config,
        api::{ListParams, PostParams, WatchEvent, WatchParams},
        config::{KubeConfigOptions, Kubeconfig},
    };

    if skip_unless_root() {
        return;
    }
    let s = Standin::start("kube-rs", "graceful", "1s", "1s");
    let kubeconfig = s.dir.join("kubeconfig");
    let lifecycle = s.lifecycle_path();
    let netns = format!("/run/netns/{}", s.ns);
    // The client must live in the stand-in's namespace: a thread joins it,
    // then builds its own runtime there.
    let seen = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&netns).expect("netns");
        // SAFETY: a valid netns fd; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let kc = Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
            let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .expect("config");
            let client = Client::try_from(config).expect("client");
            let all: Api<ConfigMap> = Api::all(client.clone());
            let names: Vec<String> = all
                .list(&ListParams::default())
                .await
                .expect("list")
                .items
                .into_iter()
                .filter_map(|c| c.metadata.name)
                .collect();
            assert!(names.contains(&"config".to_string()), "{names:?}");
            let cms: Api<ConfigMap> = Api::namespaced(client, "default");
            let mut cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "rs"}, "data": {"n": "0"}
            }))
            .expect("cm");
            cms.create(&PostParams::default(), &cm)
                .await
                .expect("create");
            let updater = {
                let cms = cms.clone();
                cm.data = Some([("n".to_string(), "1".to_string())].into());
                // The update must follow the watch's start (else the watch's initial
                // ADDED already shows it and no MODIFIED comes): wait for the stand-in's
                // `watch_started` record, without blocking the watch on this thread.
                tokio::spawn(async move {
                    wait_for_async(HANG, "the watch's `watch_started` record", || {
                        let evs: Vec<String> =
                            records(&lifecycle).into_iter().map(|l| l.event).collect();
                        if evs.iter().any(|e| e == "watch_started") {
                            Ok(())
                        } else {
                            Err(format!("{evs:?}"))
                        }
                    })
                    .await;
                    cms.replace("rs", &PostParams::default(), &cm)
                        .await
                        .expect("replace");
                })
            };
            let wp = WatchParams::default().fields("metadata.name=rs").timeout(3);
            let mut stream = cms.watch(&wp, "0").await.expect("watch").boxed();
            let mut seen = Vec::new();
            while let Some(ev) = stream.next().await {
                match ev.expect("event") {
                    WatchEvent::Added(c) => {
                        seen.push(("ADDED", c.data.unwrap_or_default()["n"].clone()))
                    }
                    WatchEvent::Modified(c) => {
                        seen.push(("MODIFIED", c.data.unwrap_or_default()["n"].clone()))
                    }
                    _ => {}
                }
                if seen.len() == 2 {
                    break;
                }
            }
            updater.await.expect("updater");
            seen
        })
    })
    .join()
    .expect("kube-rs thread");
    assert_eq!(
        seen,
        [("ADDED", "0".to_string()), ("MODIFIED", "1".to_string())]
    );
}
