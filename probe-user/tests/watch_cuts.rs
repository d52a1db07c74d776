//! Watches cut at shutdown, counted from the kernel: real clients (the
//! Python Kubernetes client, HTTP/1.1 over TLS; kubectl, HTTP/2 over TLS)
//! hold watches on the lab's apiserver stand-in while it shuts down like
//! kube-apiserver and cuts what is still open at the request timeout. The
//! server's last payload before its close is its own (a watch event), so the
//! "request outstanding" rule cannot see these; the streaming rule (the
//! server kept sending for over a second after the client's last request)
//! must, and the verdict must equal the watches the clients saw cut.
//!
//! No sleep orders anything: the test waits on the stand-in's lifecycle
//! records, the clients' own output and the daemon's events. The one timed
//! pause makes a real duration (the watch keeps streaming for more than a
//! second), which is what the rule measures.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Daemon, Pair, root_or_skip, serial, wait_for};
use serde_json::Value;

/// A child whose stdout lines are collected as they come.
struct Client {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Client {
    fn spawn(ns: &str, args: &[&str]) -> Client {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().expect("lines").push(line);
            }
        });
        let err = child.stderr.take().expect("stderr");
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().expect("lines").push(format!("stderr: {line}"));
            }
        });
        Client { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    fn wait_lines(&self, what: &str, n: usize, pred: impl Fn(&str) -> bool) {
        wait_for(Duration::from_secs(20), what, || {
            let got = self.lines().iter().filter(|l| pred(l)).count();
            (got >= n)
                .then_some(())
                .ok_or(format!("{got} so far: {:?}", self.lines()))
        });
    }
}

fn records(path: &std::path::Path, event: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == event)
        .count()
}

const WATCH_PY: &str = r#"
import sys
from kubernetes import client, config, watch
config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
try:
    for ev in watch.Watch().stream(v1.list_namespaced_config_map, "default",
                                   field_selector="metadata.name=w"):
        print("EVENT", ev["type"], ev["object"].data["n"], flush=True)
    print("ENDED", flush=True)
except Exception as e:
    print("CUT", type(e).__name__, flush=True)
"#;

#[test]
fn watches_cut_at_the_request_timeout_are_counted() {
    let _g = serial();
    if !root_or_skip("watches_cut_at_the_request_timeout_are_counted") {
        return;
    }
    watches_cut(libc::SIGTERM, "inflight_cut_at_timeout");
}

/// SIGKILL while the watches stream (no SIGTERM first): the process's exit
/// closes them, and the kill's verdict counts them.
#[test]
fn watches_cut_by_sigkill_are_counted() {
    let _g = serial();
    if !root_or_skip("watches_cut_by_sigkill_are_counted") {
        return;
    }
    watches_cut(libc::SIGKILL, "killed_without_sigterm");
}

/// Two watches (Python, kubectl) streaming for over a second, then the
/// stand-in gets `signal`; the verdict of `cause` must count both.
fn watches_cut(signal: i32, cause: &str) {
    let pair = Pair::new();
    let dir = std::env::temp_dir().join(format!("dwt-watch-{}-{signal}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut standin = common::graceful_standin(&pair, &dir, "1s", "2s");
    let lifecycle = dir.join("lifecycle.jsonl");
    let kubeconfig = common::standin_kubeconfig(&pair, &dir, "lab");
    let kc = kubeconfig.to_str().expect("utf8").to_string();
    let d = Daemon::start_in(
        Some(&pair.server),
        &[
            "--no-kube",
            "--instance",
            "m1",
            "--shutdown-delay",
            "1s",
            "--request-timeout",
            "2s",
        ],
    );
    let kubectl = |args: &[&str]| {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.client,
                "kubectl",
                "--kubeconfig",
                &kc,
            ])
            .args(args)
            .output()
            .expect("kubectl");
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    // Objects from files go as JSON (the stand-in speaks no protobuf).
    let cm = |n: u32| {
        let f = dir.join(format!("cm{n}.json"));
        std::fs::write(
            &f,
            format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"w","namespace":"default"}},"data":{{"n":"{n}"}}}}"#
            ),
        )
        .expect("configmap file");
        f.to_str().expect("utf8").to_string()
    };
    kubectl(&["create", "--validate=false", "-f", &cm(0)]);

    let script = dir.join("watch.py");
    std::fs::write(&script, WATCH_PY).expect("script");
    let py = Client::spawn(
        &pair.client,
        &["/usr/bin/python3", script.to_str().expect("utf8"), &kc],
    );
    let kw = Client::spawn(
        &pair.client,
        &[
            "kubectl",
            "--kubeconfig",
            &kc,
            "get",
            "configmap",
            "w",
            "-w",
            "-o",
            "jsonpath={.data.n}{\"\\n\"}",
        ],
    );
    wait_for(Duration::from_secs(20), "both watches started", || {
        let n = records(&lifecycle, "watch_started");
        (n >= 2).then_some(()).ok_or(format!(
            "{n} watch_started records; python: {:?}; kubectl: {:?}",
            py.lines(),
            kw.lines()
        ))
    });
    py.wait_lines("the Python watch's first event", 1, |l| {
        l == "EVENT ADDED 0"
    });
    // Two updates more than a second apart: each watch streams for longer
    // than a second after its request (a real duration, not an order).
    kubectl(&["replace", "--validate=false", "-f", &cm(1)]);
    py.wait_lines("update 1 (Python)", 1, |l| l == "EVENT MODIFIED 1");
    kw.wait_lines("update 1 (kubectl)", 1, |l| l == "1");
    std::thread::sleep(Duration::from_millis(1300));
    kubectl(&["replace", "--validate=false", "-f", &cm(2)]);
    py.wait_lines("update 2 (Python)", 1, |l| l == "EVENT MODIFIED 2");
    kw.wait_lines("update 2 (kubectl)", 1, |l| l == "2");

    // The rollout: SIGTERM, /readyz red, listener closed after 1 s, what is
    // still open is cut 2 s later.
    // SAFETY: signalling the stand-in we started.
    unsafe { libc::kill(standin.0.id() as i32, signal) };
    wait_for(Duration::from_secs(20), "the stand-in to exit", || {
        standin
            .0
            .try_wait()
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or("running".into())
    });
    if signal == libc::SIGTERM {
        assert_eq!(
            records(&lifecycle, "requests_cut"),
            1,
            "the stand-in cut what was open"
        );
    }
    let py_out = py.child.wait_with_output().expect("python");
    let _ = kw.child.wait_with_output().expect("kubectl -w");
    let py_lines = py.lines.lock().expect("lines").clone();
    assert!(
        py_lines.iter().any(|l| l.starts_with("CUT ")),
        "the Python watch was not cut: {py_lines:?} {}",
        String::from_utf8_lossy(&py_out.stderr)
    );
    // kubectl -w returns when its watch ends: the server ended it, cut at
    // the request timeout or by the kill (the stand-in never ends a watch
    // cleanly first).
    let clients_cut = 2;

    let evs = d.wait_for(&[&pair.client_v4], "the two streaming closes", |evs| {
        evs.iter()
            .filter(|e| e["kind"] == "closed" && e["response_streaming"] == true)
            .count()
            >= clients_cut
    });
    let streaming: Vec<&Value> = evs
        .iter()
        .filter(|e| e["kind"] == "closed" && e["response_streaming"] == true)
        .collect();
    assert_eq!(streaming.len(), clients_cut, "{streaming:#?}");
    let (_, evs) = d.stop_collect();
    let verdicts: Vec<Value> = evs
        .iter()
        .filter_map(|e| e.get("verdict").cloned())
        .collect();
    let last = verdicts
        .iter()
        .rev()
        .find(|v| v["cause"] == cause)
        .unwrap_or_else(|| panic!("no {cause} verdict: {verdicts:#?}"));
    assert_eq!(
        last["count"].as_u64(),
        Some(clients_cut as u64),
        "{verdicts:#?}"
    );
    if signal == libc::SIGTERM {
        assert!(
            last["sentence"]
                .as_str()
                .is_some_and(|s| s.contains("streaming")),
            "{last:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
