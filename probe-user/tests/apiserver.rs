//! The apiserver lifecycle end to end: the lab's apiserver stand-in (which
//! shuts down like kube-apiserver) rolled with SIGTERM while drainwatch
//! polls its /readyz directly, probes it over TLS, watches its process and
//! listener in the kernel, and correlates it all into a timeline and verdicts.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Pair, parse_metric, root_or_skip, serial};

#[test]
fn a_graceful_rollout_is_seen_from_http_kernel_and_correlation() {
    let _g = serial();
    if !root_or_skip("a_graceful_rollout_is_seen_from_http_kernel_and_correlation") {
        return;
    }
    let pair = Pair::new();
    let dir = std::env::temp_dir().join(format!("dwt-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut standin = common::graceful_standin(&pair, &dir, "2s", "2s");
    let ca = dir.join("pki/ca.crt");
    let rec = dir.join("rec.jsonl");
    let kubeconfig = common::standin_kubeconfig(&pair, &dir, "not-logged");
    let url = format!("https://{}:6443/", pair.server_v4);
    let d = Daemon::start_in(
        Some(&pair.server),
        &[
            "--no-wire",
            "--instance",
            "m1",
            "--apiserver-url",
            &url,
            "--apiserver-ca",
            ca.to_str().expect("utf8"),
            "--readyz-interval",
            "200ms",
            // The prober's target and CA come from the kubeconfig, as from
            // the kubelet's on a real node.
            "--probe-kubeconfig",
            kubeconfig.to_str().expect("utf8"),
            "--probe-mode",
            "both",
            "--probe-interval",
            "100ms",
            "--shutdown-delay",
            "2s",
            "--request-timeout",
            "2s",
            "--record",
            rec.to_str().expect("utf8"),
            "--kubeconfig",
            kubeconfig.to_str().expect("utf8"),
            "--pod-namespace",
            "openshift-kube-apiserver",
            "--pod-selector",
            "app=openshift-kube-apiserver",
        ],
    );
    let ready = |d: &Daemon| {
        parse_metric(
            &d.metrics(),
            &format!(
                "drainwatch_apiserver_health{{apiserver=\"{}:6443\",check=\"readyz\"}}",
                pair.server_v4
            ),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(&d) != 1.0 {
        assert!(
            Instant::now() < deadline,
            "/readyz never polled green: {}",
            d.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let target = format!("{}:6443", pair.server_v4);
    let probes = |m: &str, mode: &str, code: &str| {
        parse_metric(
            m,
            &format!(
                "drainwatch_probe_requests_total{{code=\"{code}\",method=\"GET\",mode=\"{mode}\",target=\"{target}\"}}"
            ),
        )
    };
    // Three probes of each kind while ready, counted, before the roll.
    common::wait_for(
        Duration::from_secs(10),
        "3 successful probes on new and on reused connections",
        || {
            let m = d.metrics();
            if probes(&m, "new_connection", "200") >= 3.0
                && probes(&m, "reused_connection", "200") >= 3.0
            {
                Ok(())
            } else {
                Err(m)
            }
        },
    );
    // The pod-phase gauge: the pod is Running (and Ready), from the Kubernetes API.
    let pod = |d: &Daemon, what: &str| {
        parse_metric(
            &d.metrics(),
            &format!("drainwatch_apiserver_pod_{what}{{pod=\"kube-apiserver-m1\"}}"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while pod(&d, "ready") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "pod never seen Ready: {}",
            d.metrics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(pod(&d, "running"), 1.0);
    assert_eq!(
        parse_metric(&d.metrics(), "drainwatch_source_up{source=\"kube\"}"),
        1.0
    );
    // Roll it: SIGTERM, as the kubelet does.
    // SAFETY: signalling the stand-in we started.
    unsafe { libc::kill(standin.0.id() as i32, libc::SIGTERM) };
    let _ = standin.0.wait();
    // The daemon sees the roll through its pollers, its watch and the kernel, each
    // on its own schedule: wait until each of them has (the assertions below say which
    // one did not, with what was seen).
    let seen = |d: &Daemon, m: &str| {
        let evs = d.events();
        let mut missing = Vec::new();
        if ready(d) != 0.0 {
            missing.push("readyz red");
        }
        if pod(d, "ready") != 0.0 {
            missing.push("pod unready");
        }
        if probes(m, "new_connection", "500") < 3.0 {
            missing.push("3 probes seeing 500");
        }
        if probes(m, "new_connection", "refused") < 3.0 {
            missing.push("3 refused probes");
        }
        for kind in ["signal", "listen_close", "process_exit"] {
            if !evs.iter().any(|e| e["kind"] == kind) {
                missing.push(kind);
            }
        }
        let refused_verdict = evs.iter().filter_map(|e| e.get("verdict")).any(|v| {
            v["cause"]
                .as_str()
                .is_some_and(|c| c.starts_with("refused"))
        });
        if !refused_verdict {
            missing.push("a refused verdict");
        }
        missing
    };
    let m = common::wait_for(
        Duration::from_secs(15),
        "the daemon to see the roll",
        || {
            let m = d.metrics();
            let missing = seen(&d, &m);
            if missing.is_empty() {
                Ok(m)
            } else {
                Err(format!("missing {missing:?}: {m}"))
            }
        },
    );
    assert_eq!(ready(&d), 0.0, "{m}");
    assert_eq!(
        pod(&d, "ready"),
        0.0,
        "the watch saw the pod turn unready: {m}"
    );
    assert!(!m.contains("not-logged"), "credentials never reach metrics");
    assert!(
        !d.stderr().contains("not-logged"),
        "credentials never reach logs"
    );
    let code_in = |mode: &str, c: &str| probes(&m, mode, c);
    let code = |c: &str| code_in("new_connection", c);
    assert!(code("200") >= 3.0, "probes while ready: {m}");
    assert!(
        code_in("reused_connection", "200") >= 3.0,
        "probes on the kept connection while ready: {m}"
    );
    // Like client-go, the prober speaks HTTP/2 where the server offers it:
    // the only protocol a GOAWAY can reach it on.
    assert!(
        d.stderr()
            .contains(&format!("new reused connection to {target} speaks HTTP/2")),
        "{}",
        d.stderr()
    );
    // kube-apiserver answers a failing /readyz with 500.
    assert!(
        code("500") >= 3.0,
        "probes during the shutdown delay see /readyz fail: {m}"
    );
    assert!(
        code("refused") >= 3.0,
        "probes after the listener closed are refused: {m}"
    );

    let evs = d.events();
    let sigterm = evs
        .iter()
        .find(|e| e["kind"] == "signal" && e["signal"]["name"] == "SIGTERM")
        .unwrap_or_else(|| panic!("no SIGTERM to the listener's owner: {evs:#?}"));
    assert_eq!(sigterm["comm"], "drainwatch-lab");
    assert!(evs.iter().any(|e| e["kind"] == "listen_close"));
    assert!(evs.iter().any(|e| e["kind"] == "process_exit"));
    let verdicts: Vec<&serde_json::Value> = evs.iter().filter_map(|e| e.get("verdict")).collect();
    assert!(
        verdicts.iter().any(|v| v["cause"]
            .as_str()
            .is_some_and(|c| c.starts_with("refused"))),
        "the refused probes after the listener closed are a verdict: {verdicts:#?}"
    );
    // The prober's /readyz got 500 through the drain (not ready, still
    // serving): a graceful shutdown, nothing was cut.
    assert!(
        verdicts
            .iter()
            .all(|v| v["cause"] != "hard_close" && v["cause"] != "unexplained"),
        "a graceful rollout called a cut: {verdicts:#?}"
    );
    assert!(d.stop().success());

    // The timeline, from the recording: SIGTERM, /readyz red, listener closed, exit, in order.
    let out = common::drainwatch_in(&pair.server)
        .args(["analyze", rec.to_str().expect("utf8"), "--instance", "m1"])
        .args([
            "--shutdown-delay",
            "2s",
            "--request-timeout",
            "2s",
            "--output",
            "json",
        ])
        .output()
        .expect("analyze");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    let tl = report["timelines"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["instance"] == "m1"))
        .unwrap_or_else(|| panic!("no timeline for m1: {report:#}"));
    let phase_t = |name: &str| {
        tl["phases"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["kind"] == name))
            .and_then(|p| p["t_ns"].as_u64())
            .unwrap_or_else(|| panic!("no {name} phase: {tl:#}"))
    };
    let (term, red, closed) = (
        phase_t("sigterm"),
        phase_t("readyz_red"),
        phase_t("listener_closed"),
    );
    assert!(term <= red && red < closed, "{tl:#}");
    // The poller's phase has a wall time like the kernel's: same clock, same form.
    let wall = |name: &str| {
        tl["phases"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["kind"] == name))
            .and_then(|p| p["wall"].as_str())
            .unwrap_or_else(|| panic!("{name} phase without a wall time: {tl:#}"))
            .to_string()
    };
    let (red_wall, closed_wall) = (wall("readyz_red"), wall("listener_closed"));
    assert!(
        red_wall.len() == closed_wall.len() && red_wall < closed_wall,
        "{red_wall} {closed_wall}"
    );
    let delay = (closed - term) as f64 / 1e9;
    assert!(
        (1.5..3.0).contains(&delay),
        "the 2 s shutdown delay, measured {delay}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
