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
    let base = std::env::temp_dir().join(format!("dwt-lab-{scenario}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("out dir");
    let go = base.join("observer-ready");
    let mut lab = Lab(Command::new(lab_binary())
        .args(["run", scenario, "--out"])
        .arg(&base)
        .arg("--hold-for")
        .arg(&go)
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
        assert!(Instant::now() < deadline, "the lab did not tear down in 60 s");
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
    let truth: Value = serde_json::from_slice(&std::fs::read(out.join("truth.json")).expect("truth"))
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
        out: base,
    };
    // The same engine over the same observations with the recorded settings:
    // the recording reproduces the live verdicts and timelines exactly.
    assert_eq!(
        o.analyzed["verdicts"], o.live["verdicts"],
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

#[test]
fn explore() {
    let _g = serial();
    if !root_or_skip("explore") {
        return;
    }
    let s = std::env::var("SCEN").unwrap_or("gcp-ilb-rollout".into());
    let o = if s == "azure-idle-reset" {
        observe(&s, "server", |_| vec!["--port".into(), "8600".into(), "--port".into(), "8005".into()])
    } else {
        observe(&s, "m1", |t| master_flags(t, "m1"))
    };
    let _ = o.requests();
    let _ = o.lifecycle("m1", "x");
    let _ = o.timing("grace");
    let _ = o.addr("m1");
    let _ = o.of_cause("x");
    panic!("explore");
}
