//! The HTTP API on the metrics listener, against a live daemon that watched
//! the lab's apiserver stand-in roll: `/api/v1/verdicts` and
//! `/api/v1/timelines` say what the daemon's own final report says, and
//! `/api/v1/events` pages through the events it printed, by sequence number.

mod common;

use std::time::Duration;

use common::{Daemon, Pair, root_or_skip, serial};
use serde_json::Value;

fn json(d: &Daemon, path: &str) -> Value {
    let (code, body) = d.get(path);
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

#[test]
fn http_api_serves_the_verdicts_timelines_and_events_of_a_rollout() {
    let _g = serial();
    if !root_or_skip("http_api_serves_the_verdicts_timelines_and_events_of_a_rollout") {
        return;
    }
    let pair = Pair::new();
    let dir = std::env::temp_dir().join(format!("dwt-httpapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut standin = common::graceful_standin(&pair, &dir, "1s", "1s");
    let ca = dir.join("pki/ca.crt");
    let url = format!("https://{}:6443/", pair.server_v4);
    let kubeconfig = common::standin_kubeconfig(&pair, &dir, "api");
    // Only this namespace (other tests' and sessions' traffic on 6443
    // would otherwise fill the event buffer); the prober's connects are
    // the clients refused once the listener closes.
    let d = Daemon::start_in(
        Some(&pair.server),
        &[
            "--no-wire",
            "--netns",
            "self",
            "--probe-kubeconfig",
            kubeconfig.to_str().expect("utf8"),
            "--probe-mode",
            "new",
            "--probe-interval",
            "200ms",
            "--instance",
            "m1",
            "--apiserver-url",
            &url,
            "--apiserver-ca",
            ca.to_str().expect("utf8"),
            "--readyz-interval",
            "200ms",
            "--shutdown-delay",
            "1s",
            "--request-timeout",
            "1s",
        ],
    );
    // Before the roll: no verdict, no timeline; events page from 0.
    assert_eq!(
        json(&d, "/api/v1/verdicts")["verdicts"],
        Value::Array(vec![])
    );
    assert_eq!(
        json(&d, "/api/v1/timelines")["timelines"],
        Value::Array(vec![])
    );
    let before = json(&d, "/api/v1/events");
    let cursor = before["next"].as_u64().expect("next");

    // Roll it.
    // SAFETY: signalling the stand-in we started.
    unsafe { libc::kill(standin.0.id() as i32, libc::SIGTERM) };
    let _ = standin.0.wait();
    let timelines = common::wait_for(
        Duration::from_secs(15),
        "a timeline with sigterm, listener_closed and exit on /api/v1/timelines",
        || {
            let v = json(&d, "/api/v1/timelines");
            let kinds: Vec<String> = v["timelines"][0]["phases"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["kind"].as_str().map(String::from))
                .collect();
            if ["sigterm", "listener_closed", "exit"]
                .iter()
                .all(|k| kinds.iter().any(|x| x == k))
            {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    );
    assert_eq!(timelines["timelines"][0]["instance"], "m1");
    let verdicts = common::wait_for(
        Duration::from_secs(15),
        "the refused client's verdict on /api/v1/verdicts",
        || {
            let v = json(&d, "/api/v1/verdicts");
            let refused = v["verdicts"].as_array().into_iter().flatten().any(|v| {
                v["cause"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("refused"))
                    && v["instance"] == "m1"
            });
            if refused { Ok(v) } else { Err(v.to_string()) }
        },
    );

    // The events since the cursor: the roll as the kernel saw it, numbered
    // in order, none of them from before the cursor.
    let page = json(&d, &format!("/api/v1/events?since={cursor}"));
    let evs = page["events"].as_array().expect("events");
    let seqs: Vec<u64> = evs
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    let span = format!(
        "{} events, {:?} to {:?}, after {cursor}, missed {}",
        seqs.len(),
        seqs.first(),
        seqs.last(),
        page["missed"]
    );
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{span}");
    assert_eq!(page["missed"], 0, "{span}");
    assert_eq!(seqs.first().copied(), Some(cursor + 1), "{span}");
    assert_eq!(page["next"].as_u64(), seqs.last().copied());
    for kind in ["signal", "listen_close", "process_exit", "refused"] {
        assert!(
            evs.iter().any(|e| e["event"]["kind"] == kind),
            "no {kind} event after the cursor ({span}): {:?}",
            evs.iter()
                .map(|e| e["event"]["kind"].clone())
                .collect::<Vec<_>>()
        );
    }
    let next = page["next"].as_u64().expect("next");
    let rest = json(&d, &format!("/api/v1/events?since={next}"));
    assert!(
        rest["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["seq"].as_u64().is_some_and(|s| s > next)),
        "{rest}"
    );
    // Bad input: a clear error naming it, as JSON.
    let (code, body) = d.get("/api/v1/events?since=yesterday");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("since=\\\"yesterday\\\""), "{body}");
    let (code, _) = d.get("/api/v1/rollouts");
    assert_eq!(code, 404);

    // `report http://...`: the HTML report of what the API says now.
    let html = dir.join("report.html");
    let url = format!("http://{}", d.metrics_addr);
    // In the daemon's namespace, where its API listens on loopback.
    let out = common::drainwatch_in(&pair.server)
        .args(["report", &url, "-o"])
        .arg(&html)
        .output()
        .expect("drainwatch report URL");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).expect("the report");
    assert!(
        page.starts_with("<!DOCTYPE html>"),
        "{}",
        &page[..page.len().min(200)]
    );
    assert!(page.contains(&format!("drainwatch API at {url}")));
    assert!(page.contains("m1"), "the apiserver's row");
    let refused = verdicts["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .find(|v| {
            v["cause"]
                .as_str()
                .is_some_and(|c| c.starts_with("refused"))
        })
        .expect("the refused verdict");
    // Its sentence, up to the first character HTML would escape.
    let sentence = refused["sentence"].as_str().expect("sentence");
    let plain: String = sentence
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == ' ')
        .collect();
    assert!(
        page.contains(&format!("[node 127.0.0.1] {plain}")),
        "{plain:?} not in the report"
    );
    // A daemon that is not there: the error names the URL.
    let port = common::free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args(["report", &format!("http://127.0.0.1:{port}"), "-o"])
        .arg(dir.join("none.html"))
        .output()
        .expect("drainwatch report URL");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("http://127.0.0.1:{port}/: Connection refused")),
        "{err}"
    );

    // The API says what the daemon's own final report says. The engine
    // goes on between the last read and the stop (a verdict's window and
    // count may still grow), so each verdict read is matched by cause,
    // instance and window start, and each phase read by kind and time.
    let (status, lines) = d.stop_collect();
    assert!(status.success(), "{status}");
    let report = lines
        .iter()
        .find_map(|l| l.get("report"))
        .expect("the final report on stdout");
    let key = |v: &Value| {
        (
            v["cause"].clone(),
            v["instance"].clone(),
            v["window"][0].clone(),
        )
    };
    for v in verdicts["verdicts"].as_array().expect("verdicts") {
        assert!(
            report["verdicts"]
                .as_array()
                .expect("report verdicts")
                .iter()
                .any(|r| key(r) == key(v)),
            "API verdict {v:#} not in the final report {:#}",
            report["verdicts"]
        );
    }
    let api_tl = &timelines["timelines"][0];
    let tl = report["timelines"]
        .as_array()
        .expect("report timelines")
        .iter()
        .find(|t| t["instance"] == api_tl["instance"] && t["cycle"] == api_tl["cycle"])
        .expect("the API's timeline in the final report");
    for p in api_tl["phases"].as_array().expect("phases") {
        assert!(
            tl["phases"]
                .as_array()
                .expect("phases")
                .iter()
                .any(|q| q["kind"] == p["kind"] && q["t_ns"] == p["t_ns"]),
            "phase {p} not in the final report's timeline {tl:#}"
        );
    }
    eprintln!(
        "API: {} verdict(s), {} timeline(s), {} events after the cursor",
        verdicts["verdicts"].as_array().map_or(0, Vec::len),
        timelines["timelines"].as_array().map_or(0, Vec::len),
        evs.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
