//! drainwatch beside each lab scenario, checked against the lab's ground
//! truth (truth.json). The lab holds after building its hosts
//! (`--hold-for`), drainwatch starts inside the observed host's network
//! namespace as the DaemonSet would on a master (`--netns self`, wire
//! observer on its interfaces, /readyz polled directly), and only then do
//! the servers start. Every test also checks that `analyze` of the
//! recording gives exactly the live verdicts.

mod common;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, lab_binary, root_or_skip, serial};
use serde_json::Value;

/// A scenario run with drainwatch watching one of its hosts.
struct Observed {
    truth: Value,
    topo: Value,
    /// The final report the daemon printed as it exited.
    live: Value,
    /// Every verdict line it streamed (first reports and updates).
    streamed: Vec<Value>,
    /// `drainwatch analyze` of the recording, with no flags.
    analyzed: Value,
    /// Every JSON line the daemon printed.
    events: Vec<Value>,
    out: PathBuf,
}

impl Observed {
    fn verdicts(&self) -> &Vec<Value> {
        self.live["verdicts"].as_array().expect("verdicts")
    }

    fn of_cause(&self, cause: &str) -> Vec<&Value> {
        self.verdicts()
            .iter()
            .filter(|v| v["cause"] == cause)
            .collect()
    }

    fn requests(&self) -> &Vec<Value> {
        self.truth["requests"].as_array().expect("requests")
    }

    /// The first lifecycle event `event` of `instance`, ns.
    fn lifecycle(&self, instance: &str, event: &str) -> Option<u64> {
        self.truth["lifecycle"]
            .as_array()?
            .iter()
            .find(|l| l["instance"] == instance && l["event"] == event)
            .and_then(|l| l["t_ns"].as_u64())
    }

    fn timing(&self, key: &str) -> f64 {
        self.topo["timing_s"][key].as_f64().expect(key)
    }

    fn addr(&self, host: &str) -> String {
        self.topo["hosts"][host]["addrs"][0]
            .as_str()
            .expect("address")
            .to_string()
    }

    /// The verdicts, one line each, for failure messages.
    fn dump(&self) -> String {
        let mut s = format!("recording and truth in {}\n", self.out.display());
        for v in self.verdicts() {
            s.push_str(&format!(
                "  {} {} path={} count={} measured={} window={}..{}: {}\n",
                v["cause"],
                v["instance"],
                v["path"],
                v["count"],
                v["measured"],
                v["window_wall"][0],
                v["window_wall"][1],
                v["sentence"]
            ));
        }
        s
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.out);
        }
    }
}

/// Kills the scenario if the test fails midway (the lab cleans up after itself).
struct Lab(std::process::Child);

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling our own child; SIGTERM lets it tear down.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

/// Runs `scenario` with drainwatch in `host`'s namespace, started with
/// `flags(topology)` besides the recording.
fn observe(scenario: &str, host: &str, flags: impl Fn(&Value) -> Vec<String>) -> Observed {
    observe_lab(scenario, &[], host, flags)
}

/// [`observe`], with `lab_args` for `drainwatch-lab run`.
fn observe_lab(
    scenario: &str,
    lab_args: &[String],
    host: &str,
    flags: impl Fn(&Value) -> Vec<String>,
) -> Observed {
    let base = std::env::temp_dir().join(format!("dwt-lab-{scenario}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("out dir");
    let go = base.join("observer-ready");
    let mut lab = Lab(Command::new(lab_binary())
        .args(["run", scenario, "--out"])
        .arg(&base)
        .arg("--hold-for")
        .arg(&go)
        .args(lab_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("drainwatch-lab"));
    let out = base.join(scenario);
    let topo_path = out.join("topology.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !topo_path.exists() {
        if let Some(st) = lab.0.try_wait().expect("wait") {
            let mut err = String::new();
            use std::io::Read as _;
            let _ = lab.0.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("the lab exited ({st}) before building its hosts: {err}");
        }
        assert!(Instant::now() < deadline, "no topology.json in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let topo: Value =
        serde_json::from_slice(&std::fs::read(&topo_path).expect("topology")).expect("json");
    let ns = topo["hosts"][host]["ns"]
        .as_str()
        .expect("the host's namespace")
        .to_string();
    let rec = base.join("rec.jsonl");
    let mut args: Vec<String> = vec![
        "--netns".into(),
        "self".into(),
        "--record".into(),
        rec.display().to_string(),
    ];
    args.extend(flags(&topo));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start_in(Some(&ns), &args);
    std::fs::write(&go, b"").expect("go-ahead");
    // The scenario ends; the observer stops before the lab tears down.
    let done = out.join("scenario-done");
    let deadline = Instant::now() + Duration::from_secs(240);
    while !done.exists() {
        if let Some(st) = lab.0.try_wait().expect("wait") {
            panic!("the lab exited ({st}) before the scenario was done");
        }
        assert!(
            Instant::now() < deadline,
            "{scenario} did not finish in 240 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = d.stderr();
    let (st, events) = d.stop_collect();
    assert!(st.success(), "drainwatch exited {st}; stderr:\n{stderr}");
    std::fs::remove_file(&go).expect("release the lab");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = lab.0.try_wait().expect("wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the lab did not tear down in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "drainwatch-lab run {scenario} failed: {status}"
    );
    let live = events
        .iter()
        .rev()
        .find_map(|e| e.get("report"))
        .unwrap_or_else(|| panic!("no final report from drainwatch; stderr:\n{stderr}"))
        .clone();
    let streamed: Vec<Value> = events
        .iter()
        .filter_map(|e| e.get("verdict").cloned())
        .collect();
    let truth: Value =
        serde_json::from_slice(&std::fs::read(out.join("truth.json")).expect("truth"))
            .expect("truth.json");
    let a = Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args(["analyze", rec.to_str().expect("utf8"), "--output", "json"])
        .output()
        .expect("analyze");
    let analyzed: Value = serde_json::from_slice(&a.stdout).unwrap_or_else(|e| {
        panic!(
            "analyze gave no report ({e}): {}",
            String::from_utf8_lossy(&a.stderr)
        )
    });
    let o = Observed {
        truth,
        topo,
        live,
        streamed,
        analyzed,
        events,
        out: base,
    };
    // The same engine over the same observations with the recorded settings:
    // the recording reproduces the live verdicts and timelines exactly.
    assert_eq!(
        o.analyzed["verdicts"],
        o.live["verdicts"],
        "analyze of the recording differs from live; {}",
        o.dump()
    );
    assert_eq!(o.analyzed["timelines"], o.live["timelines"]);
    // What was streamed, latest version of each, is what the final report says.
    for v in o.verdicts() {
        assert!(
            o.streamed.contains(v),
            "final verdict never streamed: {v:#}"
        );
    }
    eprintln!("{scenario}: {}", o.dump());
    o
}

/// Flags for a master of the LAN scenarios: its name, the VIP, the
/// apiserver's timings, /readyz polled on its own address.
fn master_flags(topo: &Value, host: &str) -> Vec<String> {
    let addr = topo["hosts"][host]["addrs"][0].as_str().expect("addr");
    let vip = topo["params"]["vip"].as_str().expect("vip");
    let lb = topo["hosts"]["lb"]["addrs"][0].as_str().expect("lb addr");
    let t = |k: &str| format!("{}s", topo["timing_s"][k].as_f64().expect(k));
    let mut f: Vec<String> = vec![
        "--instance".into(),
        host.into(),
        "--vip".into(),
        vip.into(),
        "--lb-addr".into(),
        lb.into(),
        "--shutdown-delay".into(),
        t("shutdown_delay"),
        "--request-timeout".into(),
        t("request_timeout"),
        "--grace-period".into(),
        t("grace"),
        "--lb-health-check".into(),
        format!(
            "{}/{}/{}",
            t("hc_interval"),
            t("hc_timeout"),
            topo["timing_s"]["hc_fall"]
        ),
        "--apiserver-url".into(),
        format!("https://{addr}:6443"),
        "--apiserver-ca".into(),
        topo["ca"].as_str().expect("ca").into(),
        "--readyz-interval".into(),
        "100ms".into(),
    ];
    if topo["params"]["hairpin"] == true {
        f.extend(["--local-vip".into(), vip.into()]);
    }
    f
}

/// The failed requests of the clients whose name starts with `prefix`.
fn failed<'a>(o: &'a Observed, prefix: &str) -> Vec<&'a Value> {
    o.requests()
        .iter()
        .filter(|r| {
            r["client"].as_str().is_some_and(|c| c.starts_with(prefix)) && r["outcome"] != "ok"
        })
        .collect()
}

/// The clients' failed requests that were in flight at `t_ns`: started
/// before it and not failed more than 50 ms before it.
fn failed_at(o: &Observed, prefix: &str, t_ns: u64) -> u64 {
    failed_during(o, prefix, t_ns, t_ns)
}

/// The clients' failed requests in flight at some instant from `from_ns`
/// to `to_ns`: started before `to_ns` and not failed more than 50 ms
/// before `from_ns`.
fn failed_during(o: &Observed, prefix: &str, from_ns: u64, to_ns: u64) -> u64 {
    failed(o, prefix)
        .iter()
        .filter(|r| {
            r["start_ns"].as_u64().is_some_and(|s| s <= to_ns)
                && r["end_ns"]
                    .as_u64()
                    .is_some_and(|e| e + 50_000_000 >= from_ns)
        })
        .count() as u64
}

/// Asserts that the refusals through the LB are the clients' failed
/// requests, give or take the LB's own health checks: HAProxy checks from
/// the address it proxies from, and while clients are still being refused
/// its checks cannot be told apart by their rhythm (with a distinct checker
/// source, `--health-check-source` removes them exactly). At most one check
/// per interval over the window, plus one.
fn assert_via_lb_counts(o: &Observed, via_lb: &[&Value], clients_failed: u64) {
    let n = sum_counts(via_lb);
    let window_s: f64 = via_lb
        .iter()
        .map(|v| {
            (v["window"][1].as_u64().unwrap_or(0) - v["window"][0].as_u64().unwrap_or(0)) as f64
                / 1e9
        })
        .sum();
    let checks = (window_s / o.timing("hc_interval")).ceil() as u64 + 1;
    assert!(
        n >= clients_failed && n <= clients_failed + checks,
        "{n} refused through the LB; the clients lost {clients_failed} requests \
         (and at most {checks} health checks fit the {window_s:.2}s window); {}",
        o.dump()
    );
}

fn sum_counts(vs: &[&Value]) -> u64 {
    vs.iter().map(|v| v["count"].as_u64().expect("count")).sum()
}

/// A GCP internal passthrough LB delivers a master's own traffic to the VIP
/// back to itself, whatever the health check says.
#[test]
fn gcp_hairpin_verdict_counts_every_refused_client_request() {
    let _g = serial();
    if !root_or_skip("gcp_hairpin_verdict_counts_every_refused_client_request") {
        return;
    }
    let o = observe("gcp-ilb-rollout", "m1", |t| master_flags(t, "m1"));
    let refused_by_m1_clients = o
        .requests()
        .iter()
        .filter(|r| {
            r["client"].as_str().is_some_and(|c| c.starts_with("m1-")) && r["outcome"] == "refused"
        })
        .count() as u64;
    assert!(
        refused_by_m1_clients > 0,
        "the scenario reproduces the hairpin refusals"
    );
    // Every refusal of m1's own clients through the VIP is a hairpin verdict.
    let hairpin: Vec<&Value> = o
        .verdicts()
        .iter()
        .filter(|v| v["cause"] == "refused_while_not_listening" && v["path"] == "local_hairpin")
        .collect();
    assert_eq!(
        sum_counts(&hairpin),
        refused_by_m1_clients,
        "refused count equals the clients' refused count; {}",
        o.dump()
    );
    assert!(hairpin.iter().all(|v| v["instance"] == "m1"));
    // Nothing else went wrong, except what the clients saw: the LB took m1
    // out before its listener closed, drainwatch's own poller is not a client.
    // A connection accepted just before the listener closed and aborted by
    // the stand-in as it shut down is a cut a client saw (reset, EOF): a
    // hard-close verdict may name those, never more of them than there were.
    // So is a connection whose handshake completed just before the listener
    // closed but which the server never accepted (the kernel resets the
    // accept queue): an accept-queue verdict, one per client reset.
    // Any client's: connections the LB had opened to m1 before taking it
    // out are cut too, and a client that retried a cut request (Go retries
    // an idempotent one after a GOAWAY or a reset) saw the cut all the same
    // (CI: worker-reuse retried after a GOAWAY, 1 hard-close cut).
    let cut_seen = o
        .requests()
        .iter()
        .filter(|r| {
            !matches!(r["outcome"].as_str(), Some("ok" | "refused"))
                || !r["retried_after"].is_null()
        })
        .count() as u64;
    let others: Vec<&Value> = o
        .verdicts()
        .iter()
        .filter(|v| !(v["cause"] == "refused_while_not_listening" && v["path"] == "local_hairpin"))
        .collect();
    assert!(
        others
            .iter()
            .all(|v| v["cause"] == "hard_close" || v["cause"] == "accept_queue_reset"),
        "only hairpin verdicts, cuts and accept-queue resets; {}",
        o.dump()
    );
    assert!(
        sum_counts(&others) <= cut_seen,
        "{} cut, the clients saw {cut_seen} cut (retries included); {}",
        sum_counts(&others),
        o.dump()
    );
    let lb = o.live["timelines"]
        .as_array()
        .expect("timelines")
        .iter()
        .find_map(|t| t["lb_detection"]["holds"].as_bool());
    assert_eq!(
        lb,
        Some(true),
        "the LB measured as taking m1 out before its listener closed; {}",
        o.dump()
    );

    // The same run from real tcpdump's capture on m1: the same hairpin count.
    let m1 = o.addr("m1");
    let vip = o.topo["params"]["vip"].as_str().expect("vip").to_string();
    let pcap = o.out.join("gcp-ilb-rollout/m1.pcap");
    let pcap_json = Command::new(env!("CARGO_BIN_EXE_drainwatch"))
        .args(["analyze", "--pcap", pcap.to_str().expect("utf8")])
        .args(["--instance", "m1", "--local", &m1, "--local", &vip])
        .args(["--local-vip", &vip, "--vip", &vip, "--output", "json"])
        .output()
        .expect("analyze --pcap");
    let pcap_report: Value = serde_json::from_slice(&pcap_json.stdout).unwrap_or_else(|e| {
        panic!(
            "analyze --pcap gave no report ({e}): {}",
            String::from_utf8_lossy(&pcap_json.stderr)
        )
    });
    let pcap_hairpin: u64 = pcap_report["report"]["verdicts"]
        .as_array()
        .or_else(|| pcap_report["verdicts"].as_array())
        .expect("pcap verdicts")
        .iter()
        .filter(|v| v["cause"] == "refused_while_not_listening" && v["path"] == "local_hairpin")
        .map(|v| v["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(
        pcap_hairpin, refused_by_m1_clients,
        "live (kernel) and capture give the same hairpin count"
    );
}

/// An NLB whose check takes the master out well within
/// the shutdown delay, all three masters rolled: no disruption at all.
#[test]
fn aws_nlb_rollout_gives_no_verdicts() {
    let _g = serial();
    if !root_or_skip("aws_nlb_rollout_gives_no_verdicts") {
        return;
    }
    let o = observe("aws-nlb-rollout", "m1", |t| master_flags(t, "m1"));
    assert!(
        o.requests().iter().all(|r| r["outcome"] == "ok"),
        "truth: no client saw an error"
    );
    assert!(o.verdicts().is_empty(), "{}", o.dump());
    // m1's rollout was seen whole.
    let phases: Vec<&str> = o.live["timelines"]
        .as_array()
        .expect("timelines")
        .iter()
        .flat_map(|t| t["phases"].as_array().into_iter().flatten())
        .filter_map(|p| p["kind"].as_str())
        .collect();
    for p in [
        "sigterm",
        "readyz_red",
        "listener_closed",
        "exit",
        "listening_again",
        "ready",
    ] {
        assert!(phases.contains(&p), "phase {p} missing: {phases:?}");
    }
}

/// A check too slow for the shutdown delay: the LB keeps sending new
/// connections after the listener closed. The verdict measures the LB's
/// detection time; the
/// truth is when HAProxy marked m1 DOWN.
#[test]
fn aws_nlb_slow_health_check_measures_lb_detection() {
    let _g = serial();
    if !root_or_skip("aws_nlb_slow_health_check_measures_lb_detection") {
        return;
    }
    let o = observe("aws-nlb-slow-healthcheck", "m1", |t| master_flags(t, "m1"));
    let red = o.lifecycle("m1", "readyz_red").expect("readyz red");
    let down = o.truth["lb"]
        .as_array()
        .expect("lb")
        .iter()
        .find(|e| e["server"] == "m1" && e["state"] == "DOWN" && e["t_ns"].as_u64() > Some(red))
        .and_then(|e| e["t_ns"].as_u64())
        .expect("the LB took m1 out");
    let truth_t = (down - red) as f64 / 1e9;
    let slow = o.of_cause("lb_detection_slow");
    assert_eq!(slow.len(), 1, "{}", o.dump());
    let m = &slow[0]["measured"];
    assert_eq!(m["holds"], false);
    let t = m["t_s"].as_f64().expect("t measured");
    let interval = o.timing("hc_interval");
    assert!(
        (t - truth_t).abs() <= interval,
        "measured t {t:.2}s vs the LB's {truth_t:.2}s: more than one check interval ({interval}s) apart"
    );
    // The refusals through the LB are the clients' failed requests
    // (HAProxy does not retry), give or take its health checks.
    let via_lb = o
        .verdicts()
        .iter()
        .filter(|v| v["cause"] == "refused_while_not_listening" && v["path"] == "via_lb")
        .collect::<Vec<_>>();
    // A connection whose handshake completed in the instant before the
    // listener closed is reset from the accept queue: a client's failure too.
    let queued = o.of_cause("accept_queue_reset");
    let queued_n = sum_counts(&queued);
    assert_via_lb_counts(
        &o,
        &via_lb,
        (failed(&o, "worker-").len() as u64).saturating_sub(queued_n),
    );
    assert_eq!(
        o.verdicts().len(),
        1 + via_lb.len() + queued.len(),
        "nothing else: {}",
        o.dump()
    );
}

/// `Close()` instead of `Shutdown()`: the requests in flight at
/// the listener's close are cut, and the verdict counts exactly those.
#[test]
fn hard_close_verdict_counts_the_cut_requests() {
    let _g = serial();
    if !root_or_skip("hard_close_verdict_counts_the_cut_requests") {
        return;
    }
    let o = observe("hard-close", "m1", |t| master_flags(t, "m1"));
    let cut = o.truth["lifecycle"]
        .as_array()
        .expect("lifecycle")
        .iter()
        .find(|l| l["instance"] == "m1" && l["event"] == "connections_closed")
        .and_then(|l| l["detail"]["inflight_cut"].as_u64())
        .expect("truth: requests cut");
    assert!(cut > 0, "the scenario cut something");
    let hard = o.of_cause("hard_close");
    assert_eq!(hard.len(), 1, "{}", o.dump());
    // The stand-in counts a request once it reached the server (it lets
    // every connection read what is in its socket before cutting), so its
    // count is exact; the clients' failures at the close instant bound it
    // from above (a request still on the wire is cut with nothing pending
    // at the server).
    let unread = o.truth["lifecycle"]
        .as_array()
        .expect("lifecycle")
        .iter()
        .find(|l| l["instance"] == "m1" && l["event"] == "connections_closed")
        .and_then(|l| l["detail"]["unread_connections"].as_u64());
    assert_eq!(
        unread,
        Some(0),
        "the stand-in's count is exact only when every connection read its socket"
    );
    let closed_at = o
        .lifecycle("m1", "connections_closed")
        .expect("connections closed");
    let at_close = failed_at(&o, "worker-", closed_at);
    let n = hard[0]["count"].as_u64().expect("count");
    assert_eq!(
        n,
        cut,
        "the stand-in cut {cut} requests in flight, the verdict counts {n}; {}",
        o.dump()
    );
    assert!(
        n <= at_close,
        "{n} cut; the clients saw {at_close} cut; {}",
        o.dump()
    );
    assert_eq!(o.verdicts().len(), 1, "nothing else: {}", o.dump());
}

/// A grace period too short: SIGKILL cuts what was in flight; the
/// LB, which had not noticed yet, sends new connections to the dead master.
#[test]
fn sigkill_after_grace_verdict_measures_the_grace_period() {
    let _g = serial();
    if !root_or_skip("sigkill_after_grace_verdict_measures_the_grace_period") {
        return;
    }
    let o = observe("sigkill-after-grace", "m1", |t| master_flags(t, "m1"));
    let kill = o.of_cause("sigkill_after_grace");
    assert_eq!(kill.len(), 1, "{}", o.dump());
    let grace = o.timing("grace");
    let m = &kill[0]["measured"];
    let waited = m["seconds"].as_f64().expect("seconds");
    assert!(
        (waited - grace).abs() < 0.5,
        "SIGKILL {waited:.2}s after SIGTERM, grace {grace}s"
    );
    // The requests the kill cut: in flight from the moment SIGKILL was sent
    // to the process's exit (the slow ones, and any other client's caught
    // then: on a busy machine a request sent just after the signal still
    // reaches the process before the kernel ends it; CI saw one 0.9 ms
    // after).
    let killed_at = o.lifecycle("m1", "sigkill_sent").expect("SIGKILL sent");
    let exited_at = o.lifecycle("m1", "exited").expect("exited");
    let all_failed = failed(&o, "worker-");
    let at_kill = failed_during(&o, "worker-", killed_at, exited_at);
    let n = kill[0]["count"].as_u64().expect("count");
    // The LB's own health checks are connections too: one in flight when
    // the kill came is cut like a client's, and no client sees it (CI: a
    // check from the LB's address closed with its request unanswered 28 ms
    // before SIGKILL, 3 cut vs 2 client requests). At most one check per
    // interval over the verdict's window, plus one.
    let window_s = (kill[0]["window"][1].as_u64().unwrap_or(0)
        - kill[0]["window"][0].as_u64().unwrap_or(0)) as f64
        / 1e9;
    let checks = (window_s / o.timing("hc_interval")).ceil() as u64 + 1;
    assert!(
        n >= 1 && n <= at_kill + checks,
        "{n} cut, {at_kill} client requests were in flight at the kill \
         (and at most {checks} LB health checks); {}",
        o.dump()
    );
    // Every other verdict is the LB sending new connections to the dead
    // master, each one a client's failed request.
    let via_lb: Vec<&Value> = o
        .verdicts()
        .iter()
        .filter(|v| v["cause"] == "refused_while_not_listening" && v["path"] == "via_lb")
        .collect();
    // A connection whose handshake completed in the instant before the
    // listener closed is reset from the accept queue: a client's failure too.
    let queued = o.of_cause("accept_queue_reset");
    let queued_n = sum_counts(&queued);
    assert_eq!(
        o.verdicts().len(),
        1 + via_lb.len() + queued.len(),
        "{}",
        o.dump()
    );
    let new_failed = (all_failed.len() as u64).saturating_sub(at_kill + queued_n);
    assert_via_lb_counts(&o, &via_lb, new_failed);
}

/// An Azure-style LB's idle timeout resets idle connections; drainwatch on
/// the server infers the timeout from the resets.
#[test]
fn azure_idle_reset_infers_the_idle_timeout() {
    let _g = serial();
    if !root_or_skip("azure_idle_reset_infers_the_idle_timeout") {
        return;
    }
    let o = observe("azure-idle-reset", "server", |t| {
        let slb = t["params"]["addrs"]["slb_server_side"]
            .as_str()
            .expect("slb")
            .to_string();
        [
            "--port",
            "8600",
            "--port",
            "8005",
            "--lb-addr",
            &slb,
            "--instance",
            "server",
        ]
        .map(String::from)
        .to_vec()
    });
    let truth = o.truth["params"]["idle_timeout_s"]
        .as_f64()
        .expect("idle timeout");
    let idle = o.of_cause("idle_reset_by_middlebox");
    assert_eq!(idle.len(), 1, "{}", o.dump());
    let inferred = idle[0]["measured"]["inferred_s"]
        .as_f64()
        .expect("inferred");
    assert!(
        (inferred - truth).abs() <= truth * 0.1,
        "inferred {inferred:.2}s, the SLB's timeout is {truth}s; {}",
        o.dump()
    );
    assert_eq!(
        idle[0]["measured"]["without_keepalive"].as_u64(),
        idle[0]["count"].as_u64(),
        "none of the reset connections had keepalive"
    );
}

/// The Go stand-in (Go's own HTTP/2 server, TLS, stripped like a release
/// build) sends GOAWAY at shutdown, then exits 1 s later (its Shutdown
/// deadline) with watches open: drainwatch sees the GOAWAYs only through
/// its uprobes (the wire carries TLS), and the watches cut on those
/// connections make one GOAWAY-then-failure verdict counting exactly the
/// watches the clients lost on m1, with nothing called a hard close.
#[test]
fn goaway_tls_verdict_counts_the_watches_cut_after_the_goaway() {
    let _g = serial();
    if !root_or_skip("goaway_tls_verdict_counts_the_watches_cut_after_the_goaway") {
        return;
    }
    let fixtures = std::env::var_os("DRAINWATCH_GO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go/fixtures")
        });
    let standin = fixtures.join("go1.24-stripped/h2probe");
    assert!(
        standin.is_file(),
        "{}: build the Go test programs first with `cargo xtask go-fixtures` (cargo xtask test does)",
        standin.display()
    );
    let o = observe_lab(
        "goaway-tls",
        &["--go-standin".into(), standin.display().to_string()],
        "m1",
        |t| master_flags(t, "m1"),
    );
    // Ground truth: the watches the Go clients lost, each with Go's own
    // error for a connection closed after its GOAWAY.
    let lost: Vec<&Value> = failed(&o, "worker-watch-");
    let after_goaway = lost
        .iter()
        .filter(|r| {
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("server sent GOAWAY and closed the connection"))
        })
        .count() as u64;
    assert!(after_goaway > 0, "the scenario cut watches; {}", o.dump());
    assert_eq!(
        after_goaway,
        lost.len() as u64,
        "every watch lost was lost after a GOAWAY: {lost:#?}"
    );
    let inflight = o.truth["lifecycle"]
        .as_array()
        .expect("lifecycle")
        .iter()
        .find(|l| l["instance"] == "m1" && l["event"] == "requests_cut")
        .and_then(|l| l["detail"]["inflight"].as_u64())
        .expect("truth: m1 cut its open watches");
    assert_eq!(
        inflight, after_goaway,
        "the stand-in cut {inflight} watches; the clients lost {after_goaway}"
    );
    // drainwatch: one GOAWAY per watch connection, from the uprobes in
    // the Go server, each at shutdown and on stream 1 (one watch each).
    let goaways: Vec<&Value> = o
        .events
        .iter()
        .filter(|e| e["kind"] == "goaway" && e["go"].is_object())
        .filter(|e| e["local"].as_str().is_some_and(|l| l.ends_with(":6443")))
        .collect();
    let lb = o.addr("lb");
    let to_lb: Vec<&&Value> = goaways
        .iter()
        .filter(|e| {
            e["remote"]
                .as_str()
                .is_some_and(|r| r.starts_with(&format!("{lb}:")))
        })
        .collect();
    assert_eq!(
        to_lb.len() as u64,
        inflight,
        "GOAWAYs to the LB's connections: {to_lb:#?}"
    );
    for e in &to_lb {
        assert_eq!(e["go"]["sent"], "shutdown", "{e}");
        assert_eq!(e["wire"]["last_stream_id"], 1, "{e}");
        assert_eq!(e["wire"]["error_code"], "NO_ERROR", "{e}");
    }
    let v = o.of_cause("goaway_then_failed");
    assert_eq!(v.len(), 1, "{}", o.dump());
    assert_eq!(
        v[0]["count"].as_u64(),
        Some(inflight),
        "the verdict counts the watches cut; {}",
        o.dump()
    );
    assert!(o.of_cause("hard_close").is_empty(), "{}", o.dump());
    assert!(
        o.of_cause("unexplained_failures").is_empty(),
        "{}",
        o.dump()
    );
    // m1's rollout has the GOAWAYs as its phase, from the uprobes alone.
    let rollout = o.live["timelines"]
        .as_array()
        .expect("timelines")
        .iter()
        .find(|t| {
            t["instance"] == "m1"
                && t["phases"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["kind"] == "sigterm"))
        })
        .expect("m1's rollout");
    assert!(
        rollout["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .any(|p| p["kind"] == "goaway_sent"),
        "{rollout:#}"
    );
    assert_eq!(
        rollout["goaways"].as_array().map(Vec::len),
        Some(inflight as usize),
        "{rollout:#}"
    );
}

/// Azure LB's TCP reset on idle from a worker, drainwatch on that worker
/// only, in endpoint mode, with the node's pods from the stand-in: one
/// idle-reset verdict whose inferred timeout is the box's, counting exactly
/// the flows the box reset, naming the pod without keepalive (all its
/// connections without keepalive) and curl outside any pod, never the pod
/// with client-go's keepalive; its fix is addressed to the Python client.
#[test]
fn azure_idle_reset_client_names_the_pod_without_keepalive() {
    let _g = serial();
    if !root_or_skip("azure_idle_reset_client_names_the_pod_without_keepalive") {
        return;
    }
    let o = observe("azure-idle-reset-client", "client", |t| {
        let p = &t["params"];
        let s = |k: &str| {
            p[k].as_str()
                .unwrap_or_else(|| panic!("params.{k}"))
                .to_string()
        };
        let curl_target = p["non_pod_clients"][0]["target"]
            .as_str()
            .expect("curl's target")
            .to_string();
        vec![
            "--apiserver-endpoint".into(),
            s("apiserver"),
            "--apiserver-endpoint".into(),
            curl_target,
            "--kubeconfig".into(),
            s("kubeconfig"),
            "--node-name".into(),
            s("node"),
            // drainwatch's own API connections are kept alive below the
            // box's timeout (4 s here, 4 minutes on Azure, where the
            // default 30 s does it).
            "--kube-keepalive".into(),
            "1s".into(),
        ]
    });
    let truth_timeout = o.truth["params"]["idle_timeout_s"]
        .as_f64()
        .expect("idle timeout");
    // Ground truth is the box's resets of the clients' flows; it resets
    // no other (none of drainwatch's own).
    let clients = o.truth["client_results"]
        .as_array()
        .expect("client_results");
    // A client's flow: its local address, or (curl, whose port is not
    // recorded) the server port only it dials.
    let of_client = |r: &Value| {
        clients.iter().any(|c| match c["local"].is_null() {
            false => r["a"] == c["local"] || r["b"] == c["local"],
            true => r["a"] == c["remote"] || r["b"] == c["remote"],
        })
    };
    let resets: Vec<&Value> = o.truth["idle_resets"]
        .as_array()
        .expect("idle_resets")
        .iter()
        .filter(|r| r["event"] == "reset")
        .collect();
    assert!(
        resets.iter().all(|r| of_client(r)),
        "only the clients' flows: {resets:?}"
    );
    assert_eq!(resets.len(), 2, "py-watcher's and curl's flows");
    let idle = o.of_cause("idle_reset_by_middlebox");
    assert_eq!(idle.len(), 1, "{}", o.dump());
    let v = idle[0];
    assert_eq!(
        v["count"].as_u64(),
        Some(resets.len() as u64),
        "one per flow the box reset; {}",
        o.dump()
    );
    let inferred = v["measured"]["inferred_s"].as_f64().expect("inferred");
    assert!(
        (inferred - truth_timeout).abs() <= truth_timeout * 0.1,
        "inferred {inferred:.2}s, the box's timeout is {truth_timeout}s; {}",
        o.dump()
    );
    let affected: Vec<(&str, u64, Option<u64>)> = v["affected"]
        .as_array()
        .expect("affected workloads")
        .iter()
        .map(|a| {
            (
                a["workload"].as_str().expect("workload"),
                a["count"].as_u64().expect("count"),
                a["without_keepalive"].as_u64(),
            )
        })
        .collect();
    let expect_pod = o.truth["params"]["expect_reset"][0]
        .as_str()
        .expect("the pod expected reset");
    let survivor = o.truth["params"]["expect_survive"][0]
        .as_str()
        .expect("the pod expected to survive");
    assert_eq!(
        affected,
        [
            (format!("pod {expect_pod}").as_str(), 1, Some(1)),
            ("process curl", 1, Some(1))
        ],
        "{}",
        o.dump()
    );
    let sentence = v["sentence"].as_str().expect("sentence");
    assert!(
        sentence.contains(&format!("pod {expect_pod}")),
        "{sentence}"
    );
    assert!(!sentence.contains(survivor), "{sentence}");
    let fix = v["fix"].as_str().expect("fix");
    assert!(
        fix.starts_with(&format!("pod {expect_pod}: the Python client")),
        "{fix}"
    );
    // The clients' own results agree: exactly those two were reset.
    let reset_clients: Vec<&str> = o.truth["client_results"]
        .as_array()
        .expect("client_results")
        .iter()
        .filter(|r| r["outcome"] == "reset")
        .filter_map(|r| r["client"].as_str())
        .collect();
    assert_eq!(reset_clients.len(), 2, "{reset_clients:?}");
    // Every wire RST the client saw names the owner of its connection.
    let wire: Vec<&Value> = o
        .events
        .iter()
        .filter(|e| e["kind"] == "wire_reset")
        .collect();
    assert!(!wire.is_empty(), "{}", o.dump());
    for e in &wire {
        assert!(e["owner"].is_object(), "wire reset without owner: {e:#}");
    }
}
