//! `goaway-tls`: the rollout of a Go HTTP/2 apiserver stand-in over TLS
//! (`lab/go/h2probe standin`: Go's own HTTP/2 server, as kube-apiserver
//! uses it), behind HAProxy, with Go clients holding watches through the
//! LB. The rolled instance turns /readyz red, waits the shutdown delay (the
//! LB takes it out), then `Shutdown()` sends GOAWAY on every connection and
//! waits for the open requests only 10 s (real) before the process exits:
//! every watch still open on it is cut after its GOAWAY ("http2: server
//! sent GOAWAY and closed the connection"). Only the TLS bytes are on the
//! wire; the frames are visible to drainwatch through its uprobes in the
//! Go server.

use std::time::Duration;

use serde_json::json;

use crate::procs;
use crate::scenario::{Run, RunOpts, Scenario, ScenarioError, Timing, Truth, VIP};

/// How long `Shutdown()` waits for open requests before the process exits
/// (real seconds, scaled): far shorter than the watches it serves.
const SHUTDOWN_TIMEOUT_S: f64 = 10.0;

/// Watchers per client, one connection each: HAProxy spreads connections
/// round-robin, so the rolled master holds about half of them.
const WATCHERS: u32 = 4;

/// The Go stand-in under `$DRAINWATCH_GO_FIXTURES` (what `cargo xtask
/// go-fixtures` builds): Go 1.24, stripped like a release build.
pub fn go_standin_from_env() -> Option<std::path::PathBuf> {
    std::env::var_os("DRAINWATCH_GO_FIXTURES")
        .map(|d| std::path::PathBuf::from(d).join("go1.24-stripped/h2probe"))
}

impl Run {
    /// Starts the Go stand-in on `name` and waits for it to serve.
    async fn start_go_standin(&mut self, name: &str) -> Result<(), ScenarioError> {
        let bin = self.go_standin.clone().ok_or_else(|| {
            ScenarioError::Stuck(
                "goaway-tls needs the Go stand-in: run `cargo xtask go-fixtures` and set \
                 DRAINWATCH_GO_FIXTURES, or pass --go-standin PATH"
                    .into(),
            )
        })?;
        if !bin.is_file() {
            return Err(ScenarioError::Stuck(format!(
                "--go-standin {}: no such file (build it with `cargo xtask go-fixtures`)",
                bin.display()
            )));
        }
        let pki = self.pki()?;
        let ns = self.lab.ns(name)?.to_string();
        let t = self.timing;
        let args: Vec<String> = vec![
            "standin".into(),
            "-impl".into(),
            "xnet".into(),
            "-addr".into(),
            "0.0.0.0:6443".into(),
            "-name".into(),
            name.into(),
            "-cert".into(),
            pki.cert.display().to_string(),
            "-key".into(),
            pki.key.display().to_string(),
            "-truth".into(),
            self.out.join("lifecycle.jsonl").display().to_string(),
            "-drain".into(),
            self.arg_s(t.shutdown_delay),
            "-shutdown-timeout".into(),
            self.arg_s(SHUTDOWN_TIMEOUT_S),
        ];
        let mut p = procs::spawn(name, &ns, &bin, &args)?;
        self.lab.track_pid(p.pid);
        p.wait_for("READY", Duration::from_secs(20)).await?;
        self.masters.insert(name.to_string(), p);
        Ok(())
    }

    /// Starts `n` Go watchers (`impl_`: `xnet` or `std`) on the worker,
    /// through the VIP, and waits until every first watch is open.
    async fn start_go_watchers(&mut self, impl_: &str, max: Duration) -> Result<(), ScenarioError> {
        let Some(bin) = self.go_standin.clone() else {
            return Err(ScenarioError::Stuck("no Go stand-in binary".into()));
        };
        let name = format!("worker-watch-{impl_}");
        let ns = self.lab.ns("worker")?.to_string();
        let args: Vec<String> = vec![
            "watch".into(),
            "-impl".into(),
            impl_.into(),
            "-addr".into(),
            format!("{VIP}:6443"),
            "-ca".into(),
            self.out.join("pki/ca.crt").display().to_string(),
            "-name".into(),
            name.clone(),
            "-n".into(),
            WATCHERS.to_string(),
            "-out".into(),
            self.out
                .join(format!("client-{name}.jsonl"))
                .display()
                .to_string(),
            "-for".into(),
            format!("{:.3}s", max.as_secs_f64()),
        ];
        let mut p = procs::spawn(&name, &ns, &bin, &args)?;
        self.lab.track_pid(p.pid);
        p.wait_for("ready", Duration::from_secs(30)).await?;
        self.clients.push(p);
        Ok(())
    }
}

/// Two masters behind HAProxy (HTTPS /readyz check), m1 rolled.
pub(super) async fn goaway_tls(opts: &RunOpts, scale: f64) -> Result<Truth, ScenarioError> {
    let mut t = Timing::openshift();
    opts.overrides.apply(&mut t);
    let mut run = Run::new(opts, scale, t)?;
    run.lan_topology(2, false)?;
    run.params["hairpin"] = json!(false);
    run.params["rolled"] = json!(["m1"]);
    run.params["mode"] = json!("shutdown_then_exit");
    run.params["shutdown_timeout_s"] = json!(run.s(SHUTDOWN_TIMEOUT_S).as_secs_f64());
    run.params["watchers_per_client"] = json!(WATCHERS);
    run.offer_observer().await?;
    let names: Vec<String> = run.master_addrs.keys().cloned().collect();
    for m in &names {
        run.start_go_standin(m).await?;
    }
    let check = run.check();
    run.start_lb(check).await?;
    if opts.capture {
        run.capture("lan", "br0", "lan.pcap").await?;
    }
    // Bounded: longer than the rollout could take; stopped when it is done.
    let max = Duration::from_secs(240);
    for impl_ in ["xnet", "std"] {
        run.start_go_watchers(impl_, max).await?;
    }
    let before = crate::clock::now_ns();
    run.terminate("m1").await?;
    tokio::time::sleep(run.s(run.timing.restart_gap)).await;
    run.start_go_standin("m1").await?;
    let within = run.check().worst_case_detection() * 3 + Duration::from_secs(10);
    run.wait_lb("m1", "UP", before, within).await?;
    run.finish(Scenario::GoawayTls).await
}
