//! Each scenario reproduces the rollout failure it is named after, judged from ground truth alone, and
//! leaves nothing behind. Needs root (network namespaces); skips with a reason otherwise.

use std::path::PathBuf;

use drainwatch_lab::loadgen::Outcome;
use drainwatch_lab::scenario::{self, RunOpts, Scenario, Truth};
use drainwatch_lab::topo;
use serde_json::Value;

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

fn out_dir(s: Scenario) -> PathBuf {
    std::env::temp_dir().join(format!("dwlab-test-{}-{}", s.name(), std::process::id()))
}

async fn run(s: Scenario) -> Truth {
    let out = out_dir(s);
    let opts = RunOpts {
        out: out.clone(),
        time_scale: None,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_drainwatch-lab")),
        capture: true,
        overrides: Default::default(),
        hold_for: None,
        go_standin: scenario::go_standin_from_env(),
    };
    let truth = scenario::run(s, &opts).await.expect("scenario runs");
    println!("{}", truth.timeline());
    assert_clean(&truth);
    for p in &truth.pcaps {
        let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 24, "pcap {p} is empty ({len} bytes)");
    }
    assert!(out.join("truth.json").exists());
    let _ = std::fs::remove_dir_all(&out);
    truth
}

/// No namespace of this run and no process it started survive it.
fn assert_clean(t: &Truth) {
    let id = t.params["lab_id"].as_str().expect("lab id");
    let left = topo::lab_namespaces(&format!("{}{id}-", topo::PREFIX)).expect("ip netns list");
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    for l in &t.lifecycle {
        if l.pid == 0 {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", l.pid)).unwrap_or_default();
        let alive = status
            .lines()
            .any(|x| x.starts_with("State:") && !x.contains("zombie"));
        let same = std::fs::read_to_string(format!("/proc/{}/cmdline", l.pid))
            .unwrap_or_default()
            .contains("drainwatch-lab");
        assert!(!(alive && same), "apiserver pid {} still running", l.pid);
    }
}

fn secs(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) / 1e9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_ilb_rollout_refuses_only_the_rolling_master_itself() {
    if skip_unless_root() {
        return;
    }
    let t = run(Scenario::GcpIlbRollout).await;
    let closed = t
        .first("m1", "listener_closed")
        .expect("m1 closed its listener");
    let relisten = t
        .events("m1", "listening")
        .iter()
        .map(|l| l.t_ns)
        .find(|&x| x > closed)
        .expect("m1 listened again");
    // The master's own traffic to the VIP is hairpinned to its local
    // apiserver, which refuses while it is not listening.
    for c in ["m1-new", "m1-reuse", "m1-curl", "m1-kubectl"] {
        let refused: Vec<_> = t
            .errors_of(c)
            .into_iter()
            .filter(|r| r.outcome == Outcome::Refused)
            .collect();
        assert!(
            !refused.is_empty(),
            "{c}: no connection refused via the VIP"
        );
        for r in &refused {
            assert!(
                r.end_ns >= closed && r.start_ns <= relisten + 50_000_000,
                "{c}: refused outside the window the listener was closed"
            );
        }
    }
    // ... while a host outside the masters goes through the health-checking LB.
    for c in [
        "worker-new",
        "worker-reuse",
        "worker-h1",
        "worker-curl",
        "worker-kubectl",
    ] {
        assert!(t.requests_of(c).len() > 10, "{c} sent too few requests");
        assert!(
            t.errors_of(c).is_empty(),
            "{c}: errors {:?}",
            t.errors_of(c)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_nlb_rollout_with_a_fast_health_check_has_no_client_errors() {
    if skip_unless_root() {
        return;
    }
    let t = run(Scenario::AwsNlbRollout).await;
    for m in ["m1", "m2", "m3"] {
        let red = t.first(m, "readyz_red").expect("readyz turned red");
        let closed = t.first(m, "listener_closed").expect("listener closed");
        let down =
            t.lb.iter()
                .find(|e| e.server == m && e.state == "DOWN" && e.t_ns >= red)
                .expect("LB took the instance out");
        // The LB took it out before the listener closed: its detection time, from
        // readyz turning red, is shorter than the shutdown delay.
        assert!(
            down.t_ns < closed,
            "{m}: LB detection {:.2}s after readyz turned red is not before the listener closed",
            secs(red, down.t_ns)
        );
        assert!(
            !t.events(m, "drained").is_empty(),
            "{m}: in-flight requests did not drain"
        );
    }
    for c in ["worker-new", "worker-reuse", "worker-h1", "worker-slow"] {
        assert!(t.requests_of(c).len() > 10, "{c} sent too few requests");
        assert!(
            t.errors_of(c).is_empty(),
            "{c}: errors {:?}",
            t.errors_of(c)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_nlb_slow_health_check_sends_traffic_to_a_closed_listener() {
    if skip_unless_root() {
        return;
    }
    let t = run(Scenario::AwsNlbSlowHealthcheck).await;
    let red = t.first("m1", "readyz_red").expect("readyz red");
    let closed = t.first("m1", "listener_closed").expect("listener closed");
    let down =
        t.lb.iter()
            .find(|e| e.server == "m1" && e.state == "DOWN" && e.t_ns >= red)
            .map(|e| e.t_ns)
            .expect("LB took m1 out eventually");
    assert!(
        down > closed,
        "the slow check detected m1 before its listener closed"
    );
    let errors = t.errors_of("worker-new");
    assert!(
        !errors.is_empty(),
        "no client error although the LB was late"
    );
    for e in &errors {
        assert!(
            e.start_ns + 50_000_000 >= closed,
            "an error before the listener closed: {e:?}"
        );
        assert!(
            e.start_ns <= down + 100_000_000,
            "an error after the LB took m1 out: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_close_cuts_in_flight_requests() {
    if skip_unless_root() {
        return;
    }
    let t = run(Scenario::HardClose).await;
    let closed = t.events("m1", "connections_closed");
    let closed = closed.first().expect("m1 closed its connections at once");
    assert!(
        closed.detail["inflight_cut"].as_u64().unwrap_or(0) > 0,
        "nothing was in flight"
    );
    assert!(t.events("m1", "drained").is_empty() && t.events("m1", "goaway_sent").is_empty());
    let cut: Vec<_> = t
        .errors_of("worker-slow")
        .into_iter()
        .filter(|r| r.start_ns < closed.t_ns && r.end_ns + 100_000_000 >= closed.t_ns)
        .collect();
    assert!(!cut.is_empty(), "no in-flight request was cut at close");
    // Only the cut requests failed: the LB had already taken m1 out for new ones.
    assert!(
        t.errors_of("worker-new").is_empty(),
        "worker-new: errors {:?}",
        t.errors_of("worker-new")
    );
    // A kept-alive connection the LB pinned to m1 before it was taken out is cut too:
    // a request sent on it in the instant the close travels back through the LB fails
    // (as it would for client-go). Any such error is at the close, never before or later.
    for e in t.errors_of("worker-reuse") {
        assert!(
            e.end_ns + 50_000_000 >= closed.t_ns && e.start_ns <= closed.t_ns + 200_000_000,
            "worker-reuse: an error away from the hard close: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_grace_period() {
    if skip_unless_root() {
        return;
    }
    let t = run(Scenario::SigkillAfterGrace).await;
    let term = t.first("m1", "sigterm_sent").expect("SIGTERM sent");
    assert!(!t.events("m1", "sigterm_ignored").is_empty());
    let kill = t.first("m1", "sigkill_sent").expect("SIGKILL sent");
    let grace = t.events("m1", "sigterm_sent")[0].detail["grace_s"]
        .as_f64()
        .expect("grace");
    let waited = secs(term, kill);
    assert!(
        (waited - grace).abs() < 0.5,
        "SIGKILL {waited:.2}s after SIGTERM, grace {grace}s"
    );
    let exited = t.events("m1", "exited");
    assert_eq!(
        exited[0].detail["signal"], 9,
        "did not die of SIGKILL: {:?}",
        exited[0]
    );
    // The killed process never reached its own shutdown sequence.
    let pid = exited[0].pid;
    assert!(
        t.lifecycle
            .iter()
            .all(|l| l.pid != pid || !matches!(l.event.as_str(), "listener_closed" | "exit"))
    );
    let after_kill = t
        .requests
        .iter()
        .filter(|r| r.outcome.is_error() && r.end_ns >= kill)
        .count();
    assert!(after_kill > 0, "no client noticed the SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_idle_reset_drops_idle_connections_without_keepalive() {
    if skip_unless_root() {
        return;
    }
    let t = run(Scenario::AzureIdleReset).await;
    let idle = t.params["idle_timeout_s"].as_f64().expect("idle timeout");
    let slow = t.params["timer_periods_s"]["8600"]
        .as_f64()
        .expect("period");
    let conn_of = |who: &str| {
        t.timer_of(who)
            .first()
            .map(|r| r.conn.clone())
            .expect("client connected")
    };
    let server_side = |conn: &str| -> Vec<&drainwatch_lab::timer::TimerRecord> {
        t.timer
            .iter()
            .filter(|r| r.who == "server" && r.conn == conn)
            .collect()
    };

    // Conntrack middlebox, no keepalive: the server's first write after the idle timeout
    // is answered with an RST, and the client never hears of it (a stale connection).
    let c = conn_of("ct-nokeepalive");
    let srv = server_side(&c);
    let reset = srv
        .iter()
        .find(|r| r.event == "closed")
        .expect("server side closed");
    assert_eq!(reset.outcome, Some(Outcome::Reset));
    // The write that met the RST is the reset's own trigger; the idle time is measured
    // from the traffic before it.
    let last_ok = srv
        .iter()
        .filter(|r| r.event != "closed" && r.t_ns + 500_000_000 < reset.t_ns)
        .map(|r| r.t_ns)
        .max()
        .expect("traffic");
    let idle_for = secs(last_ok, reset.t_ns);
    assert!(
        idle_for >= idle && idle_for <= slow + 1.0,
        "reset after {idle_for:.2}s idle (timeout {idle}s)"
    );
    assert!(
        t.timer_of("ct-nokeepalive")
            .iter()
            .any(|r| r.event == "alive_at_end")
    );

    // With keepalive the same flow survives, and the periodic write arrives.
    let c = conn_of("ct-keepalive");
    assert!(
        server_side(&c)
            .iter()
            .all(|r| r.outcome != Some(Outcome::Reset))
    );
    let got = t
        .timer_of("ct-keepalive")
        .iter()
        .filter(|r| r.event == "received")
        .count();
    assert!(got >= 2, "keepalive client received {got} messages");
    assert!(
        t.timer_of("ct-keepalive")
            .iter()
            .any(|r| r.event == "alive_at_end")
    );

    // HAProxy (nolinger): both sides are closed at the idle timeout itself.
    let cl = t.timer_of("lb-nokeepalive");
    let start = cl
        .iter()
        .find(|r| r.event == "connected")
        .expect("connected")
        .t_ns;
    let end = cl
        .iter()
        .find(|r| r.event == "closed")
        .expect("client closed by the LB");
    let after = secs(start, end.t_ns);
    assert!(
        (after - idle).abs() < 1.0,
        "LB closed the client after {after:.2}s, timeout {idle}s"
    );
    let srv_reset = t.timer.iter().find(|r| {
        r.who == "server"
            && r.outcome == Some(Outcome::Reset)
            && r.t_ns.abs_diff(end.t_ns) < 500_000_000
    });
    assert!(
        srv_reset.is_some(),
        "server side not reset together with the client side"
    );

    // curl without keepalive: through the resetting LB the stream ends at the idle timeout
    // (HAProxy sends FIN then RST, so curl exits 0 rather than 56); through the conntrack
    // middlebox curl is never told and runs into its own time limit.
    let curl = |c: &str| *t.requests_of(c).first().expect("curl ran");
    let lb = curl("lb-curl");
    let lasted = secs(lb.start_ns, lb.end_ns);
    assert!(
        matches!(lb.outcome, Outcome::Eof | Outcome::Reset),
        "{lb:?}"
    );
    assert!(
        (lasted - idle).abs() < 1.0,
        "curl through the LB lasted {lasted:.2}s"
    );
    assert_eq!(curl("ct-curl").outcome, Outcome::Timeout);

    // The Watcher/Updater pair on python3-kubernetes: the watch without keepalive
    // silently misses the update made after the idle timeout; with keepalive it sees it.
    let updated = |w: &str| {
        t.watchers
            .iter()
            .any(|r| r["who"] == w && r["event"] == "event" && r["detail"]["n"] == "1")
    };
    assert!(
        t.watchers
            .iter()
            .any(|r| r["who"] == "updater" && r["event"] == "updated" && r["detail"]["n"] == 1)
    );
    assert!(
        updated("w-keepalive"),
        "the keepalive watcher missed the update"
    );
    assert!(
        !updated("w-nokeepalive"),
        "the watcher without keepalive saw the update"
    );
    assert!(
        t.watchers
            .iter()
            .any(|r| r["who"] == "w-nokeepalive" && r["event"] == "event"),
        "the watcher without keepalive never watched"
    );
}

/// Go's own HTTP/2 server over TLS: the LB takes m1 out before its
/// listener closes, `Shutdown()` sends GOAWAY, and the process exits 1 s
/// later with watches open: exactly the watches open on m1 fail, each with
/// Go's error for a connection closed after its GOAWAY, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_tls_cuts_the_watches_open_at_exit() {
    if skip_unless_root() {
        return;
    }
    let t = run(Scenario::GoawayTls).await;
    let goaway = t.events("m1", "goaway_sent");
    let goaway = goaway.first().expect("m1 sent GOAWAY");
    let cut = t.events("m1", "requests_cut");
    let cut = cut.first().expect("m1 exited with watches open");
    let open = cut.detail["inflight"].as_u64().expect("inflight");
    assert!(open > 0, "no watch was open on m1 at exit");
    let mut lost = t.errors_of("worker-watch-xnet");
    lost.extend(t.errors_of("worker-watch-std"));
    assert_eq!(lost.len() as u64, open, "{lost:?}");
    for r in &lost {
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("server sent GOAWAY and closed the connection")),
            "{r:?}"
        );
        assert!(
            r.end_ns >= goaway.t_ns && r.end_ns + 50_000_000 >= cut.t_ns,
            "{r:?}"
        );
    }
}

/// Azure LB's TCP reset on idle from a worker node: the idle-reset box sends RSTs to
/// both ends of every flow idle for the timeout; exactly the clients without keepalive
/// (the pod `default/py-watcher`, and curl outside any pod) are reset, each after an idle
/// time of the timeout, and the pod with client-go's keepalive survives and sees the
/// update made after the idle period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_idle_reset_client_resets_exactly_the_clients_without_keepalive() {
    if skip_unless_root() {
        return;
    }
    let t = run(Scenario::AzureIdleResetClient).await;
    let idle = t.params["idle_timeout_s"].as_f64().expect("idle timeout");
    let within = |what: &str, s: f64| {
        assert!(
            (s - idle).abs() <= idle * 0.1,
            "{what}: {s:.3}s idle, timeout {idle}s"
        );
    };
    let result = |c: &str| {
        t.client_results
            .iter()
            .find(|r| r["client"] == c)
            .unwrap_or_else(|| panic!("no result for {c}: {:?}", t.client_results))
    };
    let reset: Vec<&str> = t
        .client_results
        .iter()
        .filter(|r| r["outcome"] == "reset")
        .filter_map(|r| r["client"].as_str())
        .collect();
    assert_eq!(reset, ["curl-idle", "py-watcher"], "{:?}", t.client_results);

    // The pod without keepalive: its watch broke when the box reset its flow, an idle
    // period after the last event it received, and it never saw the later update.
    let py = result("py-watcher");
    assert_eq!(py["pod"], "default/py-watcher");
    assert!(
        py["error"]
            .as_str()
            .is_some_and(|e| e.contains("Connection broken")),
        "{py}"
    );
    let (err_ns, last_ns) = (
        py["t_ns"].as_u64().expect("error time"),
        py["last_event_ns"].as_u64().expect("an event"),
    );
    within(
        "py-watcher, from its last event to its error",
        secs(last_ns, err_ns),
    );
    assert_eq!(py["saw_update_after_idle"], false);

    // The pod with keepalive: the same watch survives and sees the update.
    let go = result("go-watcher");
    assert_eq!(
        (
            go["outcome"].as_str(),
            go["saw_update_after_idle"].as_bool()
        ),
        (Some("survived"), Some(true)),
        "{go}"
    );
    assert!(go["keepalive_s"].as_f64().is_some_and(|k| k < idle));

    // curl outside any pod: ECONNRESET, as curl prints it.
    let curl = result("curl-idle");
    assert_eq!(curl["pod"], Value::Null);
    assert_eq!(curl["exit"], 56);
    assert_eq!(
        curl["error"],
        "curl: (56) Recv failure: Connection reset by peer"
    );

    // The box reset exactly those two flows, each at the timeout, RSTs to both ends.
    let resets: Vec<&Value> = t
        .idle_resets
        .iter()
        .filter(|r| r["event"] == "reset")
        .collect();
    assert_eq!(resets.len(), 2, "{resets:?}");
    let flow = |r: &Value| [r["a"].clone(), r["b"].clone()];
    let has = |r: &Value, addr: &Value| flow(r).contains(addr);
    let py_local = &py["local"];
    assert!(resets.iter().any(|r| has(r, py_local)), "py-watcher's flow");
    assert!(
        resets.iter().any(|r| has(r, &curl["remote"])),
        "curl's flow"
    );
    assert!(
        !resets.iter().any(|r| has(r, &go["local"])),
        "the keepalive flow was reset"
    );
    for r in &resets {
        within("box", r["idle_s"].as_f64().expect("idle_s"));
        assert!(
            r["rst_to_a"]["seq"].is_u64() && r["rst_to_b"]["seq"].is_u64(),
            "{r}"
        );
    }
    let counts = &t
        .idle_resets
        .iter()
        .find(|r| r["event"] == "summary")
        .expect("box summary")["counts"];
    assert_eq!(
        (counts["reset"].as_u64(), counts["rsts_sent"].as_u64()),
        (Some(2), Some(4))
    );

    // Both pods were registered for the node, and their cgroups are gone.
    let pods = t.params["pods"].as_array().expect("pods");
    assert_eq!(pods.len(), 2);
    for p in pods {
        let dir = p["cgroup_dir"].as_str().expect("cgroup dir");
        assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
    }
    let root = t.params["cgroup2_root"].as_str().expect("cgroup2 root");
    let sub = t.params["cgroup_subtree"].as_str().expect("subtree");
    assert!(!std::path::Path::new(&format!("{root}{sub}")).exists());
}
