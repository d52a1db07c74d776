//! The scenarios: build a topology, start apiservers, load balancers, clients and
//! captures, roll the apiserver(s), then gather every record into one [`Truth`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::apiserver::{Lifecycle, ShutdownMode};
use crate::capture::{self, Capture};
use crate::clock::{TimeScale, now_ns};
use crate::lb::{self, Haproxy, HealthCheck, LbEvent, TcpLb, VIP};
use crate::loadgen::{Outcome, RequestRecord};
use crate::procs::{self, Proc, ProcError};
use crate::record::{self, RecordError, Recorder};
use crate::timer::TimerRecord;
use crate::tls::{self, TlsError};
use crate::topo::{Lab, TopoError};

mod gotls;
mod idleclient;
pub use crate::truth::Truth;
pub use gotls::go_standin_from_env;
pub use idleclient::{cgroup2_root, clean_cgroups};

/// The scenarios, one per rollout failure (and one rollout done right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// GCP's internal passthrough LB delivers a master's own traffic to the VIP to its local
    /// apiserver, health check or not: refused while it restarts.
    GcpIlbRollout,
    /// NLB with a health check fast enough for the shutdown delay: no client errors.
    AwsNlbRollout,
    /// Worst-case LB detection longer than the shutdown delay: new connections refused.
    AwsNlbSlowHealthcheck,
    /// A middlebox resets flows idle past its timeout (Azure LB's TCP reset on idle).
    AzureIdleReset,
    /// Azure LB's TCP reset on idle seen from a worker node: RSTs to both ends of idle
    /// flows; pod clients without keepalive are reset, with keepalive survive.
    AzureIdleResetClient,
    /// `http.Server.Close()` instead of `Shutdown()`: in-flight requests cut.
    HardClose,
    /// The process outlives its grace period and is SIGKILLed.
    SigkillAfterGrace,
    /// A Go HTTP/2 server over TLS sends GOAWAY at shutdown, then exits
    /// before its watches end: the watches are cut after the GOAWAY.
    GoawayTls,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 8] = [
        Scenario::GcpIlbRollout,
        Scenario::AwsNlbRollout,
        Scenario::AwsNlbSlowHealthcheck,
        Scenario::AzureIdleReset,
        Scenario::AzureIdleResetClient,
        Scenario::HardClose,
        Scenario::SigkillAfterGrace,
        Scenario::GoawayTls,
    ];

    /// Kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::GcpIlbRollout => "gcp-ilb-rollout",
            Scenario::AwsNlbRollout => "aws-nlb-rollout",
            Scenario::AwsNlbSlowHealthcheck => "aws-nlb-slow-healthcheck",
            Scenario::AzureIdleReset => "azure-idle-reset",
            Scenario::AzureIdleResetClient => "azure-idle-reset-client",
            Scenario::HardClose => "hard-close",
            Scenario::SigkillAfterGrace => "sigkill-after-grace",
            Scenario::GoawayTls => "goaway-tls",
        }
    }

    /// Default time scale: 70 s shutdown delay -> 7 s; Azure's 4 min idle -> 4 s.
    pub fn default_time_scale(self) -> f64 {
        match self {
            Scenario::AzureIdleReset | Scenario::AzureIdleResetClient => 1.0 / 60.0,
            _ => 0.1,
        }
    }
}

/// A scenario failed to run (not: the scenario's finding did not reproduce).
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Building the topology failed.
    #[error(transparent)]
    Topo(#[from] TopoError),
    /// A lab process failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// Records could not be written or read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Certificates.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The output directory.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Ground truth could not be serialized.
    #[error("writing truth.json: {0}")]
    Json(#[from] serde_json::Error),
    /// Something the scenario waits for did not happen.
    #[error("{0}")]
    Stuck(String),
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Output directory (created).
    pub out: PathBuf,
    /// Override of the scenario's default time scale.
    pub time_scale: Option<f64>,
    /// The `drainwatch-lab` binary (run inside namespaces for the apiserver and clients).
    pub bin: PathBuf,
    /// Write pcaps with tcpdump.
    pub capture: bool,
    /// Real-world timing overrides (applied before scaling).
    pub overrides: Overrides,
    /// Hold for an observer: once the topology exists, write `topology.json` (hosts,
    /// their namespaces and addresses) to the output directory and wait until this
    /// file exists before starting any server, so an observer such as drainwatch
    /// sees the whole scenario from its first listener.
    pub hold_for: Option<PathBuf>,
    /// The Go stand-in (`lab/go/h2probe` built by `cargo xtask go-fixtures`),
    /// for the scenarios that run Go's own HTTP/2 server.
    pub go_standin: Option<PathBuf>,
}

/// Real-world (unscaled) settings that replace a scenario's defaults, to try other
/// health checks or shutdown delays against the same rollout.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// shutdown-delay-duration, real seconds.
    #[arg(long)]
    pub shutdown_delay: Option<f64>,
    /// Request timeout after the listener closed, real seconds.
    #[arg(long)]
    pub request_timeout: Option<f64>,
    /// terminationGracePeriodSeconds, real seconds.
    #[arg(long)]
    pub grace: Option<f64>,
    /// LB health check interval, real seconds.
    #[arg(long)]
    pub hc_interval: Option<f64>,
    /// LB health check timeout, real seconds.
    #[arg(long)]
    pub hc_timeout: Option<f64>,
    /// LB unhealthy threshold.
    #[arg(long)]
    pub hc_fall: Option<u32>,
    /// LB healthy threshold.
    #[arg(long)]
    pub hc_rise: Option<u32>,
    /// Idle timeout of the Azure middlebox, real seconds.
    #[arg(long)]
    pub idle_timeout: Option<f64>,
}

impl Overrides {
    fn apply(&self, t: &mut Timing) {
        let set = |v: Option<f64>, f: &mut f64| {
            if let Some(v) = v.filter(|v| v.is_finite() && *v >= 0.0) {
                *f = v;
            }
        };
        set(self.shutdown_delay, &mut t.shutdown_delay);
        set(self.request_timeout, &mut t.request_timeout);
        set(self.grace, &mut t.grace);
        set(self.hc_interval, &mut t.hc_interval);
        set(self.hc_timeout, &mut t.hc_timeout);
        set(self.idle_timeout, &mut t.idle_timeout);
        if let Some(v) = self.hc_fall.filter(|v| *v > 0) {
            t.hc_fall = v;
        }
        if let Some(v) = self.hc_rise.filter(|v| *v > 0) {
            t.hc_rise = v;
        }
    }
}

/// The token every lab kubeconfig carries and every lab apiserver accepts.
pub const TOKEN: &str = "drainwatch-lab-token";

/// Timing of one scenario in real-world seconds (before scaling).
#[derive(Debug, Clone, Copy, Serialize)]
struct Timing {
    shutdown_delay: f64,
    request_timeout: f64,
    startup: f64,
    restart_gap: f64,
    grace: f64,
    hc_interval: f64,
    hc_timeout: f64,
    hc_fall: u32,
    hc_rise: u32,
    idle_timeout: f64,
}

impl Timing {
    /// The real-world timings the scenarios scale down, an OpenShift control plane on
    /// AWS: 70 s shutdown delay, 60 s request timeout, 135 s grace; the NLB target
    /// group's check (HTTPS /readyz, interval 10 s, timeout 10 s, unhealthy threshold 2).
    fn openshift() -> Self {
        Timing {
            shutdown_delay: 70.0,
            request_timeout: 60.0,
            startup: 10.0,
            restart_gap: 20.0,
            grace: 135.0,
            hc_interval: 10.0,
            hc_timeout: 10.0,
            hc_fall: 2,
            hc_rise: 2,
            // Azure SLB's default idle timeout.
            idle_timeout: 240.0,
        }
    }
}

struct Run {
    lab: Lab,
    out: PathBuf,
    bin: PathBuf,
    scale: TimeScale,
    timing: Timing,
    rec: Arc<Recorder>,
    lb_rec: Arc<Recorder>,
    masters: BTreeMap<String, Proc>,
    master_addrs: BTreeMap<String, Ipv4Addr>,
    clients: Vec<Proc>,
    captures: Vec<Capture>,
    haproxies: Vec<Haproxy>,
    started_ns: u64,
    params: Value,
    hold_for: Option<PathBuf>,
    go_standin: Option<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ScenarioError + '_ {
    move |source| ScenarioError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Run {
    fn new(opts: &RunOpts, scale: f64, timing: Timing) -> Result<Self, ScenarioError> {
        std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
        // A previous run's records in the same directory would mix into this truth.
        for entry in std::fs::read_dir(&opts.out)
            .map_err(io_err(&opts.out))?
            .flatten()
        {
            let p = entry.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let stale = p.extension().is_some_and(|e| e == "jsonl" || e == "pcap")
                || (name.starts_with("shell-") && name.ends_with(".txt"));
            if stale {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        Ok(Run {
            lab: Lab::new(),
            rec: Arc::new(Recorder::open(&opts.out.join("lifecycle.jsonl"))?),
            lb_rec: Arc::new(Recorder::open(&opts.out.join("lb.jsonl"))?),
            out: opts.out.clone(),
            bin: opts.bin.clone(),
            scale: TimeScale(scale),
            timing,
            masters: BTreeMap::new(),
            master_addrs: BTreeMap::new(),
            clients: Vec::new(),
            captures: Vec::new(),
            haproxies: Vec::new(),
            started_ns: now_ns(),
            params: json!({}),
            hold_for: opts.hold_for.clone(),
            go_standin: opts.go_standin.clone(),
        })
    }

    /// With [`RunOpts::hold_for`]: writes `scenario-done` and waits (at most 60 s)
    /// until the observer has stopped and removed the go-ahead file, so it sees
    /// the scenario and none of the teardown (clients and servers killed).
    async fn release_observer(&mut self) {
        let Some(go) = self.hold_for.clone() else {
            return;
        };
        let done = self.out.join("scenario-done");
        if let Err(e) = std::fs::write(&done, b"") {
            tracing::warn!("{}: {e}; not waiting for the observer", done.display());
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while go.exists() {
            if std::time::Instant::now() > deadline {
                tracing::warn!(
                    "the observer did not remove {} within 60 s; tearing down",
                    go.display()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes `topology.json` and, with [`RunOpts::hold_for`], waits (at most 120 s)
    /// for the observer's go-ahead file.
    async fn offer_observer(&mut self) -> Result<(), ScenarioError> {
        let hosts: BTreeMap<String, Value> = self
            .lab
            .hosts()
            .map(|(name, h)| (name.clone(), json!({"ns": h.ns, "addrs": h.addrs})))
            .collect();
        // The CA exists before any server starts, so an observer can verify them.
        let ca = if self.master_addrs.is_empty() {
            None
        } else {
            Some(self.pki()?.ca)
        };
        let t = self.timing;
        // The lab's timings as the observer sees them (scaled), seconds.
        let timing_s = json!({
            "shutdown_delay": self.s(t.shutdown_delay).as_secs_f64(),
            "request_timeout": self.s(t.request_timeout).as_secs_f64(),
            "grace": self.s(t.grace).as_secs_f64(),
            "hc_interval": self.s(t.hc_interval).as_secs_f64(),
            "hc_timeout": self.s(t.hc_timeout).as_secs_f64(),
            "hc_fall": t.hc_fall,
            "idle_timeout": self.s(t.idle_timeout).as_secs_f64(),
        });
        let topo = json!({
            "lab_id": self.lab.id(),
            "hosts": hosts,
            "params": self.params,
            "ca": ca,
            "timing_s": timing_s,
        });
        let path = self.out.join("topology.json");
        let tmp = self.out.join("topology.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&topo)?).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        let Some(go) = self.hold_for.clone() else {
            return Ok(());
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !go.exists() {
            if std::time::Instant::now() > deadline {
                return Err(ScenarioError::Io {
                    path: go,
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no observer created this file within 120 s of topology.json",
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.note("lab", 0, "observer_ready", Value::Null);
        Ok(())
    }

    fn s(&self, real: f64) -> Duration {
        self.scale.secs(real)
    }

    fn arg_s(&self, real: f64) -> String {
        format!("{:.3}s", self.s(real).as_secs_f64())
    }

    fn note(&self, instance: &str, pid: u32, event: &str, detail: Value) {
        self.rec.write(&Lifecycle {
            t_ns: now_ns(),
            instance: instance.to_string(),
            pid,
            event: event.to_string(),
            detail,
        });
    }

    fn pki(&self) -> Result<tls::TlsFiles, ScenarioError> {
        let mut sans: Vec<String> = vec![
            "localhost".into(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "127.0.0.1".into(),
            VIP.to_string(),
        ];
        sans.extend(self.master_addrs.values().map(|a| a.to_string()));
        Ok(tls::ensure(&self.out.join("pki"), &sans)?)
    }

    /// Three masters, an LB host holding the VIP and a worker on one LAN. With
    /// `hairpin`, each master also holds the VIP locally (GCP's ILB).
    fn lan_topology(&mut self, masters: usize, hairpin: bool) -> Result<(), ScenarioError> {
        let [a, b, c] = lb::LAN;
        self.lab.add_lan("lan")?;
        self.lab.add_host("lb")?;
        let lb_addr = Ipv4Addr::new(a, b, c, 2);
        self.lab.attach("lb", "lan", "eth0", lb_addr, 24)?;
        self.lab.add_local_vip("lb", VIP)?;
        self.lab.add_host("worker")?;
        self.lab
            .attach("worker", "lan", "eth0", Ipv4Addr::new(a, b, c, 50), 24)?;
        self.lab.route("worker", &format!("{VIP}/32"), lb_addr)?;
        for i in 1..=masters {
            let name = format!("m{i}");
            let addr = Ipv4Addr::new(a, b, c, 10 + i as u8);
            self.lab.add_host(&name)?;
            self.lab.attach(&name, "lan", "eth0", addr, 24)?;
            if hairpin {
                self.lab.add_local_vip(&name, VIP)?;
            } else {
                self.lab.route(&name, &format!("{VIP}/32"), lb_addr)?;
            }
            self.master_addrs.insert(name, addr);
        }
        self.params["vip"] = json!(VIP.to_string());
        self.params["masters"] = json!(self.master_addrs);
        Ok(())
    }

    async fn start_apiserver(
        &mut self,
        name: &str,
        mode: ShutdownMode,
    ) -> Result<(), ScenarioError> {
        self.pki()?;
        let ns = self.lab.ns(name)?.to_string();
        let t = self.timing;
        let args: Vec<String> = vec![
            "apiserver".into(),
            "--name".into(),
            name.into(),
            "--listen".into(),
            "0.0.0.0:6443".into(),
            "--tls-dir".into(),
            self.out.join("pki").display().to_string(),
            "--shutdown-delay".into(),
            self.arg_s(t.shutdown_delay),
            "--request-timeout".into(),
            self.arg_s(t.request_timeout),
            "--startup-delay".into(),
            self.arg_s(t.startup),
            "--mode".into(),
            mode.to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default(),
            "--truth".into(),
            self.out.join("lifecycle.jsonl").display().to_string(),
            "--token".into(),
            TOKEN.into(),
        ];
        let mut p = procs::spawn(name, &ns, &self.bin, &args)?;
        self.lab.track_pid(p.pid);
        p.wait_for("READY", Duration::from_secs(20)).await?;
        self.masters.insert(name.to_string(), p);
        Ok(())
    }

    /// kubelet's part of a rollout: SIGTERM, SIGKILL after the grace period, restart
    /// after a gap, wait until the new process is ready.
    async fn roll(&mut self, name: &str, mode_after: ShutdownMode) -> Result<(), ScenarioError> {
        self.terminate(name).await?;
        tokio::time::sleep(self.s(self.timing.restart_gap)).await;
        self.start_apiserver(name, mode_after).await
    }

    /// Stops `name`'s apiserver as kubelet does: SIGTERM, SIGKILL after the
    /// grace period; notes both and the exit.
    async fn terminate(&mut self, name: &str) -> Result<(), ScenarioError> {
        let grace = self.s(self.timing.grace);
        let Some(mut p) = self.masters.remove(name) else {
            return Err(ScenarioError::Stuck(format!(
                "no apiserver running on {name}"
            )));
        };
        self.note(
            name,
            p.pid,
            "sigterm_sent",
            json!({"grace_s": grace.as_secs_f64()}),
        );
        crate::cmd::kill(p.pid, libc::SIGTERM);
        let status = match p.wait_exit(grace).await {
            Some(s) => s,
            None => {
                self.note(name, p.pid, "sigkill_sent", Value::Null);
                crate::cmd::kill(p.pid, libc::SIGKILL);
                p.wait_exit(Duration::from_secs(10)).await.ok_or_else(|| {
                    ScenarioError::Stuck(format!("{name}: apiserver survived SIGKILL"))
                })?
            }
        };
        use std::os::unix::process::ExitStatusExt;
        self.note(
            name,
            p.pid,
            "exited",
            json!({"code": status.code(), "signal": status.signal()}),
        );
        Ok(())
    }

    async fn wait_lb(
        &self,
        server: &str,
        state: &str,
        after_ns: u64,
        within: Duration,
    ) -> Result<(), ScenarioError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let evs: Vec<LbEvent> = record::read_lines(&self.out.join("lb.jsonl"))?;
            if evs
                .iter()
                .any(|e| e.server == server && e.state == state && e.t_ns >= after_ns)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ScenarioError::Stuck(format!(
                    "LB did not mark {server} {state} within {:.1}s",
                    within.as_secs_f64()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start_lb(&mut self, check: HealthCheck) -> Result<(), ScenarioError> {
        let cfg = lb::haproxy_tcp_lb(&TcpLb {
            bind: SocketAddr::from((VIP, 6443)),
            servers: self
                .master_addrs
                .iter()
                .map(|(n, a)| (n.clone(), SocketAddr::from((*a, 6443))))
                .collect(),
            check,
        });
        let ns = self.lab.ns("lb")?.to_string();
        let h = lb::start_haproxy(
            "lb",
            &ns,
            &cfg,
            &self.out.join("haproxy.cfg"),
            Arc::clone(&self.lb_rec),
        )
        .await?;
        self.lab.track_pid(h.pid);
        self.haproxies.push(h);
        self.params["health_check"] = json!({
            "interval_s": check.interval.as_secs_f64(), "timeout_s": check.timeout.as_secs_f64(),
            "fall": check.fall, "rise": check.rise,
            "worst_case_detection_s": check.worst_case_detection().as_secs_f64()});
        Ok(())
    }

    fn check(&self) -> HealthCheck {
        let t = self.timing;
        HealthCheck {
            interval: self.s(t.hc_interval),
            timeout: self.s(t.hc_timeout),
            fall: t.hc_fall,
            rise: t.hc_rise,
        }
    }

    /// Starts a load generator on `host`; it runs until stopped (bounded by `max`).
    fn start_client(
        &mut self,
        host: &str,
        name: &str,
        extra: &[&str],
        max: Duration,
    ) -> Result<(), ScenarioError> {
        let ns = self.lab.ns(host)?.to_string();
        let mut args: Vec<String> = vec![
            "loadgen".into(),
            "--name".into(),
            name.into(),
            "--target".into(),
            format!("{VIP}:6443"),
            "--ca".into(),
            self.out.join("pki/ca.crt").display().to_string(),
            "--token".into(),
            TOKEN.into(),
            "--duration".into(),
            format!("{:.3}s", max.as_secs_f64()),
            "--out".into(),
            self.out
                .join(format!("client-{name}.jsonl"))
                .display()
                .to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let p = procs::spawn(name, &ns, &self.bin, &args)?;
        self.lab.track_pid(p.pid);
        self.clients.push(p);
        Ok(())
    }

    /// Starts a real API client (curl or kubectl) in a bounded shell loop on `host`, one
    /// process and one new connection per request, like a client that does not reuse
    /// connections.
    fn start_api_loop(
        &mut self,
        host: &str,
        name: &str,
        client: ApiClient,
        count: u32,
    ) -> Result<(), ScenarioError> {
        let path = "/api/v1/namespaces/openshift-kube-apiserver/configmaps/config";
        let (tool, request) = match client {
            ApiClient::Curl => (
                ShellClient::Curl,
                format!(
                    "d=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 --cacert {ca} \\\n    -H 'Authorization: Bearer {TOKEN}' https://{VIP}:6443{path} 2>&1)",
                    ca = self.out.join("pki/ca.crt").display(),
                ),
            ),
            ApiClient::Kubectl => (
                ShellClient::Kubectl,
                format!(
                    "d=$(kubectl --kubeconfig {kc} --cache-dir {cache} --request-timeout=5s get --raw {path} 2>&1 >/dev/null)",
                    kc = self.out.join("kubeconfig").display(),
                    cache = self.out.join("kubecache").display(),
                ),
            ),
        };
        let p = self.spawn_shell(host, name, tool, count, &request)?;
        self.clients.push(p);
        Ok(())
    }

    /// Writes and starts a shell loop of at most `count` runs of `request` (a command
    /// that sets `d`). Each line of `shell-<tag>-<name>.txt` is
    /// `seq start_ns end_ns exit detail`; [`shell_record`] reads it back.
    fn spawn_shell(
        &mut self,
        host: &str,
        name: &str,
        tool: ShellClient,
        count: u32,
        request: &str,
    ) -> Result<Proc, ScenarioError> {
        let ns = self.lab.ns(host)?.to_string();
        let out = self.out.join(format!("shell-{}-{name}.txt", tool.tag()));
        let script = format!(
            "# {name}: bounded to {count} requests, stopped by the lab when the scenario ends\n\
             i=0\n\
             while [ \"$i\" -lt {count} ]; do\n\
             \x20 s=$(date +%s%N)\n\
             \x20 {request}\n\
             \x20 rc=$?\n\
             \x20 e=$(date +%s%N)\n\
             \x20 d=$(printf '%s' \"$d\" | head -n1)\n\
             \x20 echo \"$i $s $e $rc $d\" >> {out}\n\
             \x20 i=$((i+1))\n\
             \x20 sleep 0.1\n\
             done\n",
            out = out.display(),
        );
        let file = self.out.join(format!("{name}.sh"));
        std::fs::write(&file, script).map_err(io_err(&file))?;
        let p = procs::spawn(name, &ns, Path::new("sh"), &[file.display().to_string()])?;
        self.lab.track_pid(p.pid);
        Ok(p)
    }

    async fn capture(&mut self, host: &str, iface: &str, file: &str) -> Result<(), ScenarioError> {
        let ns = self.lab.ns(host)?.to_string();
        let c = capture::start(&ns, iface, &self.out.join(file)).await?;
        self.lab.track_pid(c.pid());
        self.captures.push(c);
        Ok(())
    }

    /// Stops clients, captures, LBs and apiservers, then reads every record.
    async fn finish(mut self, scenario: Scenario) -> Result<Truth, ScenarioError> {
        // An observer stops before the teardown, which is not part of the scenario.
        self.release_observer().await;
        // Everything after this marker is the lab tearing down, not the scenario.
        self.note("lab", 0, "teardown", Value::Null);
        for c in &mut self.clients {
            c.stop(Duration::from_secs(15)).await;
        }
        let mut pcaps = Vec::new();
        for c in self.captures.drain(..) {
            pcaps.push(c.stop().await.display().to_string());
        }
        for h in self.haproxies.drain(..) {
            h.stop().await;
        }
        for (_, mut p) in std::mem::take(&mut self.masters) {
            crate::cmd::kill(p.pid, libc::SIGKILL);
            let _ = p.wait_exit(Duration::from_secs(5)).await;
        }
        self.lab.teardown();
        let mut requests: Vec<RequestRecord> = Vec::new();
        let mut timer: Vec<TimerRecord> = Vec::new();
        let mut watchers: Vec<Value> = Vec::new();
        let mut client_results: Vec<Value> = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .map_err(io_err(&self.out))?
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for p in files {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.starts_with("client-") && name.ends_with(".jsonl") {
                requests.extend(record::read_lines::<RequestRecord>(&p)?);
            } else if let Some((tag, client)) = name
                .strip_prefix("shell-")
                .and_then(|n| n.strip_suffix(".txt"))
                .and_then(|n| n.split_once('-'))
            {
                let Some(tool) = ShellClient::ALL.into_iter().find(|t| t.tag() == tag) else {
                    continue;
                };
                let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
                requests.extend(text.lines().filter_map(|l| shell_record(client, tool, l)));
            } else if name.starts_with("timer-") && name.ends_with(".jsonl") {
                timer.extend(record::read_lines::<TimerRecord>(&p)?);
            } else if name.starts_with("watch-") && name.ends_with(".jsonl") {
                watchers.extend(record::read_lines::<Value>(&p)?);
            } else if name.starts_with("result-") && name.ends_with(".jsonl") {
                client_results.extend(record::read_lines::<Value>(&p)?);
            }
        }
        let mut params = self.params.clone();
        params["timing_real_s"] = serde_json::to_value(self.timing).unwrap_or_default();
        params["lab_id"] = json!(self.lab.id());
        let truth = Truth {
            scenario: scenario.name().to_string(),
            time_scale: self.scale.0,
            started_ns: self.started_ns,
            ended_ns: now_ns(),
            params,
            lifecycle: record::read_lines(&self.out.join("lifecycle.jsonl"))?,
            lb: record::read_lines(&self.out.join("lb.jsonl"))?,
            requests,
            timer,
            watchers,
            pcaps,
            idle_resets: record::read_lines(&self.out.join("idle-reset.jsonl"))?,
            client_results,
        };
        let path = self.out.join("truth.json");
        let text = serde_json::to_string_pretty(&truth)?;
        std::fs::write(&path, text).map_err(io_err(&path))?;
        let tl = self.out.join("timeline.txt");
        std::fs::write(&tl, truth.timeline()).map_err(io_err(&tl))?;
        Ok(truth)
    }
}

/// Runs one scenario to completion and returns its ground truth (also written to
/// `truth.json` and `timeline.txt` in the output directory).
pub async fn run(scenario: Scenario, opts: &RunOpts) -> Result<Truth, ScenarioError> {
    crate::cmd::preflight(PYTHON).map_err(TopoError::from)?;
    let scale = opts.time_scale.unwrap_or(scenario.default_time_scale());
    match scenario {
        Scenario::AzureIdleReset => azure(opts, scale).await,
        Scenario::AzureIdleResetClient => idleclient::azure_idle_reset_client(opts, scale).await,
        Scenario::GoawayTls => gotls::goaway_tls(opts, scale).await,
        _ => lan_scenario(scenario, opts, scale).await,
    }
}

async fn lan_scenario(
    scenario: Scenario,
    opts: &RunOpts,
    scale: f64,
) -> Result<Truth, ScenarioError> {
    let mut t = Timing::openshift();
    let mut mode = ShutdownMode::Graceful;
    let mut roll = vec!["m1"];
    match scenario {
        Scenario::AwsNlbRollout => roll = vec!["m1", "m2", "m3"],
        Scenario::AwsNlbSlowHealthcheck => {
            // Delay 30 s, but a check whose worst case is far beyond it.
            t.shutdown_delay = 30.0;
            t.restart_gap = 30.0;
            t.hc_interval = 20.0;
            t.hc_timeout = 10.0;
            t.hc_fall = 3;
        }
        Scenario::HardClose => {
            // Go's Close() instead of Shutdown(), after a delay the LB check fits
            // in: whatever fails here fails because of the close alone.
            mode = ShutdownMode::HardClose;
        }
        Scenario::SigkillAfterGrace => {
            t.grace = 30.0;
            mode = ShutdownMode::IgnoreTerm;
        }
        _ => {}
    }
    opts.overrides.apply(&mut t);
    let mut run = Run::new(opts, scale, t)?;
    let hairpin = scenario == Scenario::GcpIlbRollout;
    run.lan_topology(3, hairpin)?;
    run.params["hairpin"] = json!(hairpin);
    run.params["rolled"] = json!(roll);
    run.params["mode"] = json!(mode);
    run.offer_observer().await?;
    let names: Vec<String> = run.master_addrs.keys().cloned().collect();
    for m in &names {
        let md = if roll.contains(&m.as_str()) {
            mode
        } else {
            ShutdownMode::Graceful
        };
        run.start_apiserver(m, md).await?;
    }
    let check = run.check();
    run.start_lb(check).await?;
    if opts.capture {
        run.capture("lan", "br0", "lan.pcap").await?;
        if hairpin {
            run.capture("m1", "any", "m1.pcap").await?;
        }
    }
    write_kubeconfig(
        &run.out.join("kubeconfig"),
        &format!("https://{VIP}:6443"),
        &run.out.join("pki/ca.crt"),
    )
    .map_err(io_err(&run.out))?;
    // Bounded: longer than any rollout here could take, and stopped as soon as it is done.
    let max = Duration::from_secs(240);
    let slow = format!("/lab/slow?ms={}", run.s(20.0).as_millis());
    if matches!(
        scenario,
        Scenario::AwsNlbRollout | Scenario::HardClose | Scenario::SigkillAfterGrace
    ) {
        let timeout = format!("{:.3}s", (run.s(20.0) * 4).as_secs_f64().max(5.0));
        run.start_client(
            "worker",
            "worker-slow",
            &[
                "--mode",
                "reuse",
                "--proto",
                "h2",
                "--concurrency",
                "6",
                "--interval",
                "10ms",
                "--path",
                &slow,
                "--timeout",
                &timeout,
            ],
            max,
        )?;
        // Alone and first, its connections go round-robin over all three masters, so
        // some of its requests are in flight on the rolling master when it closes.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    run.start_client(
        "worker",
        "worker-new",
        &["--mode", "new", "--interval", "50ms"],
        max,
    )?;
    run.start_client(
        "worker",
        "worker-reuse",
        &["--mode", "reuse", "--proto", "h2", "--interval", "50ms"],
        max,
    )?;
    run.start_client(
        "worker",
        "worker-h1",
        &["--mode", "reuse", "--proto", "h1", "--interval", "100ms"],
        max,
    )?;
    run.start_api_loop("worker", "worker-curl", ApiClient::Curl, 2000)?;
    if hairpin {
        run.start_api_loop("m1", "m1-curl", ApiClient::Curl, 2000)?;
        run.start_api_loop("m1", "m1-kubectl", ApiClient::Kubectl, 1000)?;
        run.start_api_loop("worker", "worker-kubectl", ApiClient::Kubectl, 1000)?;
        run.start_client(
            "m1",
            "m1-new",
            &["--mode", "new", "--interval", "50ms"],
            max,
        )?;
        run.start_client(
            "m1",
            "m1-reuse",
            &["--mode", "reuse", "--proto", "h2", "--interval", "50ms"],
            max,
        )?;
    }
    // Let every client establish its connections before the rollout starts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for m in &roll {
        let before = now_ns();
        let after_mode = ShutdownMode::Graceful;
        run.roll(m, after_mode).await?;
        // A rollout waits for the LB to take the new instance back before the next one.
        let within = run.check().worst_case_detection() * 3 + Duration::from_secs(10);
        run.wait_lb(m, "UP", before, within).await.or_else(|e| {
            // The LB may never have marked it down (too slow a check): then it is UP.
            if scenario == Scenario::AwsNlbSlowHealthcheck
                || scenario == Scenario::SigkillAfterGrace
            {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    run.finish(scenario).await
}

/// Client -- router -- server, the router a conntrack middlebox that resets
/// flows idle past the timeout, plus HAProxy on the router as the variant that resets
/// both sides at the timeout.
async fn azure(opts: &RunOpts, scale: f64) -> Result<Truth, ScenarioError> {
    let mut t = Timing::openshift();
    opts.overrides.apply(&mut t);
    let mut run = Run::new(opts, scale, t)?;
    let client = Ipv4Addr::new(198, 18, 2, 10);
    let slb_c = Ipv4Addr::new(198, 18, 2, 1);
    let slb_s = Ipv4Addr::new(198, 18, 3, 1);
    let server = Ipv4Addr::new(198, 18, 3, 10);
    for h in ["client", "slb", "server"] {
        run.lab.add_host(h)?;
    }
    run.lab
        .link(("client", "eth0", client), ("slb", "eth0", slb_c), 24)?;
    run.lab
        .link(("slb", "eth1", slb_s), ("server", "eth0", server), 24)?;
    run.lab.route("client", "198.18.3.0/24", slb_c)?;
    run.lab.route("server", "198.18.2.0/24", slb_s)?;
    let idle = run.s(t.idle_timeout);
    lb::conntrack_idle_reset(&run.lab, "slb", idle)?;
    let fast = run.s(5.0);
    let slow = run.s(600.0);
    let cfg = lb::haproxy_idle_reset(
        idle,
        &[(
            SocketAddr::from((slb_c, 18600)),
            SocketAddr::from((server, 8600)),
        )],
    );
    let slb_ns = run.lab.ns("slb")?.to_string();
    let h = lb::start_haproxy(
        "slb",
        &slb_ns,
        &cfg,
        &run.out.join("haproxy.cfg"),
        Arc::clone(&run.lb_rec),
    )
    .await?;
    run.lab.track_pid(h.pid);
    run.haproxies.push(h);
    run.params["idle_timeout_s"] = json!(idle.as_secs_f64().round().max(1.0));
    run.params["timer_periods_s"] = json!({"8005": fast.as_secs_f64(), "8600": slow.as_secs_f64()});
    run.params["addrs"] = json!({"client": client, "slb_client_side": slb_c, "slb_server_side": slb_s, "server": server});
    run.offer_observer().await?;
    if opts.capture {
        run.capture("slb", "any", "slb.pcap").await?;
    }
    let total = run.s(840.0);
    let server_ns = run.lab.ns("server")?.to_string();
    let timer_args: Vec<String> = vec![
        "timer-server".into(),
        "--port".into(),
        format!("0.0.0.0:8005={:.3}s", fast.as_secs_f64()),
        "--port".into(),
        format!("0.0.0.0:8600={:.3}s", slow.as_secs_f64()),
        "--duration".into(),
        format!("{:.3}s", (total + Duration::from_secs(10)).as_secs_f64()),
        "--out".into(),
        run.out.join("timer-server.jsonl").display().to_string(),
    ];
    let mut ts = procs::spawn("timer-server", &server_ns, &run.bin, &timer_args)?;
    run.lab.track_pid(ts.pid);
    ts.wait_for("LISTENING", Duration::from_secs(10)).await?;
    // The apiserver behind the same middlebox, for the Python Watcher/Updater pair.
    run.master_addrs.insert("server".into(), server);
    run.start_apiserver("server", ShutdownMode::Graceful)
        .await?;
    let kubeconfig = run.out.join("kubeconfig");
    write_kubeconfig(
        &kubeconfig,
        &format!("https://{server}:6443"),
        &run.out.join("pki/ca.crt"),
    )
    .map_err(io_err(&run.out))?;
    let script = run.out.join("kube_client.py");
    std::fs::write(&script, PY_CLIENT).map_err(io_err(&script))?;
    let py = |role: &str, name: &str, extra: &[String]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            script.display().to_string(),
            "--role".into(),
            role.into(),
            "--name".into(),
            name.into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--out".into(),
            run.out
                .join(format!("watch-{name}.jsonl"))
                .display()
                .to_string(),
            "--duration".into(),
            format!("{:.3}", total.as_secs_f64()),
        ];
        v.extend_from_slice(extra);
        v
    };
    // Keepalive well inside the idle timeout (AKS guidance: below 4 min).
    let ka = format!("{:.3}s", run.s(120.0).as_secs_f64().max(1.0));
    let client_ns = run.lab.ns("client")?.to_string();
    let clients: [(&str, SocketAddr, Option<&str>); 4] = [
        ("ct-fast", SocketAddr::from((server, 8005)), None),
        ("ct-nokeepalive", SocketAddr::from((server, 8600)), None),
        (
            "ct-keepalive",
            SocketAddr::from((server, 8600)),
            Some(ka.as_str()),
        ),
        ("lb-nokeepalive", SocketAddr::from((slb_c, 18600)), None),
    ];
    let mut procs_ = Vec::new();
    let python = Path::new(PYTHON);
    let updater = py(
        "updater",
        "updater",
        &["--period".into(), format!("{:.3}", slow.as_secs_f64())],
    );
    for (name, keepalive) in [("w-nokeepalive", None), ("w-keepalive", Some(run.s(120.0)))] {
        let mut extra = Vec::new();
        if let Some(k) = keepalive {
            extra = vec![
                "--keepalive".to_string(),
                format!("{:.3}", k.as_secs_f64().max(1.0)),
            ];
        }
        let p = procs::spawn(name, &client_ns, python, &py("watcher", name, &extra))?;
        run.lab.track_pid(p.pid);
        procs_.push(p);
    }
    // The updater starts once both watches are open, so every watch is idle for one whole
    // update period, however long Python took to start.
    for name in ["w-nokeepalive", "w-keepalive"] {
        let file = run.out.join(format!("watch-{name}.jsonl"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !record::read_lines::<Value>(&file)?
            .iter()
            .any(|r| r["event"] == "watch_start")
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(ScenarioError::Stuck(format!(
                    "{name} did not start watching"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = procs::spawn("updater", &client_ns, python, &updater)?;
    run.lab.track_pid(p.pid);
    procs_.push(p);
    // A client without keepalive: `curl --no-keepalive --http0.9` to the 600 s port, once
    // through the resetting LB and once through the conntrack middlebox.
    for (name, target) in [
        ("lb-curl", SocketAddr::from((slb_c, 18600))),
        ("ct-curl", SocketAddr::from((server, 8600))),
    ] {
        let request = format!(
            "d=$(curl -s -o /dev/null --no-keepalive --http0.9 --max-time {max:.0} http://{target}/ 2>&1)",
            max = total.as_secs_f64().ceil(),
        );
        let p = run.spawn_shell("client", name, ShellClient::CurlRaw, 1, &request)?;
        procs_.push(p);
    }
    for (name, target, keepalive) in clients {
        let mut a: Vec<String> = vec![
            "timer-client".into(),
            "--name".into(),
            name.into(),
            "--connect".into(),
            target.to_string(),
            "--duration".into(),
            format!("{:.3}s", total.as_secs_f64()),
            "--out".into(),
            run.out
                .join(format!("timer-{name}.jsonl"))
                .display()
                .to_string(),
        ];
        if let Some(k) = keepalive {
            a.extend(["--keepalive".to_string(), k.to_string()]);
        }
        let p = procs::spawn(name, &client_ns, &run.bin, &a)?;
        run.lab.track_pid(p.pid);
        procs_.push(p);
    }
    // The stale watcher never learns its connection is gone: stop whatever still runs.
    let deadline = tokio::time::Instant::now() + total + Duration::from_secs(3);
    for mut p in procs_ {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if p.wait_exit(left).await.is_none() {
            p.stop(Duration::from_secs(2)).await;
        }
    }
    ts.stop(Duration::from_secs(2)).await;
    run.finish(Scenario::AzureIdleReset).await
}

/// An API client run in a loop by [`Run::start_api_loop`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum ApiClient {
    Curl,
    Kubectl,
}

/// A real client run in a shell loop.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ShellClient {
    /// curl GET of the API, HTTP status as detail.
    Curl,
    /// curl of a raw TCP stream (HTTP/0.9, the timer server): exit 0 means the peer closed it.
    CurlRaw,
    /// kubectl (client-go), first error line as detail.
    Kubectl,
}

impl ShellClient {
    const ALL: [ShellClient; 3] = [
        ShellClient::Curl,
        ShellClient::CurlRaw,
        ShellClient::Kubectl,
    ];

    /// Tag in the output file name, `shell-<tag>-<client>.txt`.
    fn tag(self) -> &'static str {
        match self {
            ShellClient::Curl => "curl",
            ShellClient::CurlRaw => "rawcurl",
            ShellClient::Kubectl => "kubectl",
        }
    }
}

/// Parses one line of a shell loop's output (`seq start_ns end_ns exit detail`).
fn shell_record(client: &str, tool: ShellClient, line: &str) -> Option<RequestRecord> {
    let mut it = line.splitn(5, ' ');
    let seq: u64 = it.next()?.parse().ok()?;
    let start_ns: u64 = it.next()?.parse().ok()?;
    let end_ns: u64 = it.next()?.parse().ok()?;
    let exit: i32 = it.next()?.parse().ok()?;
    let detail = it.next().unwrap_or_default().trim().to_string();
    let (outcome, status) = match tool {
        ShellClient::Curl => {
            let status = detail.parse::<u16>().ok().filter(|s| *s != 0);
            (curl_outcome(exit, status), status)
        }
        ShellClient::CurlRaw if exit == 0 => (Outcome::Eof, None),
        ShellClient::CurlRaw => (curl_outcome(exit, None), None),
        ShellClient::Kubectl => (kubectl_outcome(exit, &detail), None),
    };
    let error = match tool {
        ShellClient::Kubectl if exit != 0 => Some(detail),
        ShellClient::CurlRaw if exit == 0 => Some("closed by the peer".into()),
        ShellClient::Kubectl => None,
        _ => (exit != 0).then(|| format!("curl exit {exit}")),
    };
    Some(RequestRecord {
        client: client.to_string(),
        seq,
        start_ns,
        end_ns,
        outcome,
        status,
        conn: seq + 1,
        local: None,
        error,
        retried_after: None,
    })
}

/// Maps curl's exit codes (man curl, EXIT CODES) to outcomes.
fn curl_outcome(exit: i32, status: Option<u16>) -> Outcome {
    match exit {
        0 if status.is_some_and(|s| (200..300).contains(&s)) => Outcome::Ok,
        0 => Outcome::HttpError,
        7 => Outcome::Refused,
        28 => Outcome::Timeout,
        35 | 51 | 58 | 60 | 77 => Outcome::Tls,
        52 => Outcome::Eof,
        55 | 56 => Outcome::Reset,
        _ => Outcome::Other,
    }
}

/// Maps kubectl's (client-go's) error text to outcomes.
fn kubectl_outcome(exit: i32, detail: &str) -> Outcome {
    let d = detail.to_ascii_lowercase();
    match () {
        _ if exit == 0 => Outcome::Ok,
        _ if d.contains("refused") => Outcome::Refused,
        _ if d.contains("reset by peer") => Outcome::Reset,
        _ if d.contains("goaway") => Outcome::Goaway,
        _ if d.contains("eof") => Outcome::Eof,
        _ if d.contains("timeout") || d.contains("deadline") => Outcome::Timeout,
        _ if d.contains("x509") || d.contains("tls") => Outcome::Tls,
        _ if d.contains("error from server") => Outcome::HttpError,
        _ => Outcome::Other,
    }
}

/// The Python interpreter that has Debian's python3-kubernetes.
pub const PYTHON: &str = "/usr/bin/python3";

/// The Watcher/Updater pair on the Python Kubernetes client.
const PY_CLIENT: &str = include_str!("../py/kube_client.py");

/// Writes a kubeconfig for the lab's apiserver (token auth, lab CA).
pub fn write_kubeconfig(path: &Path, server: &str, ca: &Path) -> std::io::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: lab\n  user:\n    token: {TOKEN}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: default\ncurrent-context: lab\n",
        ca = ca.display()
    );
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shell_client_lines() {
        let r = shell_record("c", ShellClient::Curl, "3 100 200 7 000").expect("line");
        assert_eq!((r.seq, r.outcome, r.status), (3, Outcome::Refused, None));
        let r = shell_record("c", ShellClient::Curl, "4 100 200 0 200").expect("line");
        assert_eq!((r.outcome, r.status), (Outcome::Ok, Some(200)));
        let r = shell_record(
            "k",
            ShellClient::Kubectl,
            "5 100 200 1 Unable to connect to the server: dial tcp 198.18.0.100:6443: connect: connection refused",
        )
        .expect("line");
        assert_eq!(r.outcome, Outcome::Refused);
        assert!(
            r.error
                .is_some_and(|e| e.contains("connect: connection refused"))
        );
        assert!(shell_record("c", ShellClient::Curl, "garbage").is_none());
    }
}
