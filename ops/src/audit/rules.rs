//! Graceful-shutdown rules over one pod spec. Pure: no I/O.
//!
//! The model: when a pod is deleted, kubelet runs each container's preStop hook, then
//! sends SIGTERM; the server keeps serving for its shutdown delay (kube-apiserver's
//! `--shutdown-delay-duration`, or an in-process sleep declared with the
//! `drainwatch.io/shutdown-delay` annotation), then stops listening and gives in-flight
//! requests up to its request timeout. Everything still running when
//! `terminationGracePeriodSeconds` ends is SIGKILLed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use serde::Serialize;
use thiserror::Error;

use super::consumer::{self, ConsumerConfig, ConsumerModel, DEFAULT_SOURCE};
use crate::duration::{DurationError, format_duration, parse_duration};

/// Annotation (pod template or object) declaring a shutdown delay the server implements
/// in-process after SIGTERM (an application that sleeps before closing its listener),
/// invisible in the manifest otherwise.
pub const SHUTDOWN_DELAY_ANNOTATION: &str = "drainwatch.io/shutdown-delay";
/// Annotation declaring how long the server gives in-flight requests after it stops
/// accepting new ones.
pub const REQUEST_TIMEOUT_ANNOTATION: &str = "drainwatch.io/request-timeout";
/// kubectl's annotation naming the pod's main container.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Annotation (object or pod template) waiving rules for an object that knowingly differs:
/// a comma-separated list of rule ids, e.g. `drain-window,readiness-probe`. The waived
/// findings are still reported, as ignored, and do not fail the audit.
pub const IGNORE_ANNOTATION: &str = "drainwatch.io/ignore";

/// Every rule id a finding can carry.
pub const RULES: &[&str] = &[
    "consumer-model",
    "drain-window",
    "grace-period",
    "prestop-sleep-exceeds-grace",
    "prestop-unknown",
    "readiness-probe",
    "sidecar-prestop",
    "sidecar-prestop-exceeds-grace",
    "sidecar-prestop-short",
];

/// The rules [`IGNORE_ANNOTATION`] waives for an object with these annotations; an
/// unknown rule id is an error (a typo would otherwise waive nothing, silently).
pub fn ignored_rules(
    annotations: &BTreeMap<String, String>,
) -> Result<std::collections::BTreeSet<&'static str>, RuleError> {
    let Some(value) = annotations.get(IGNORE_ANNOTATION) else {
        return Ok(Default::default());
    };
    let mut out = std::collections::BTreeSet::new();
    for id in value.split(',').map(str::trim) {
        match RULES.iter().find(|r| **r == id) {
            Some(r) => {
                out.insert(*r);
            }
            None => {
                return Err(RuleError::AnnotationValue {
                    key: IGNORE_ANNOTATION,
                    value: value.clone(),
                    reason: format!("{id:?} is not a rule; the rules are {}", RULES.join(", ")),
                });
            }
        }
    }
    Ok(out)
}

/// Kubernetes default for an unset `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// kube-apiserver's default `--request-timeout` (kube-apiserver reference: 1m0s).
pub const APISERVER_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Tunables of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleConfig {
    /// In-flight budget for servers other than kube-apiserver; 30s, Kubernetes' default
    /// grace period, is what a typical gRPC or HTTP server is given to terminate.
    pub request_timeout: Duration,
    /// Time that consumers (kube-proxy, ingress controllers, meshes, a load balancer
    /// after its verdict) need to stop routing once they know the pod is going away. A
    /// 5s margin after detection has proved too short for a proxy to refresh its
    /// backends; 10s is the default.
    pub propagation_budget: Duration,
    /// Who takes terminating pods out of rotation, unless an object says otherwise.
    pub consumer: ConsumerConfig,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            request_timeout: Duration::from_secs(30),
            propagation_budget: Duration::from_secs(10),
            consumer: ConsumerConfig::default(),
        }
    }
}

/// How bad a finding is. `error` and `warning` fail the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; does not fail the audit.
    Info,
    /// Likely to break shutdown under some conditions.
    Warning,
    /// Requests fail or are cut during every rollout.
    Error,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Info => "INFO",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
        })
    }
}

/// One rule violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Severity.
    pub severity: Severity,
    /// Rule id, e.g. `grace-period`.
    pub rule: &'static str,
    /// Container concerned.
    pub container: String,
    /// Field path inside the object.
    pub field: String,
    /// The value found.
    pub current: String,
    /// Why it matters, citing the public behaviour it relies on.
    pub why: String,
    /// What to set instead.
    pub suggested: String,
}

/// A value in the manifest that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    /// A drainwatch annotation with a bad duration.
    #[error("annotation {key}: {source}")]
    Annotation {
        /// The annotation.
        key: &'static str,
        /// What is wrong.
        source: DurationError,
    },
    /// A drainwatch annotation with a value that cannot be read.
    #[error("annotation {key}: {value:?}: {reason}")]
    AnnotationValue {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// Two annotations that cannot both hold.
    #[error(
        "annotations {first} and {second} contradict each other: a Service consumer has no \
         health check of its own; drop one"
    )]
    Contradiction {
        /// The first annotation.
        first: &'static str,
        /// The second.
        second: &'static str,
    },
    /// The lb-health-check model without a health check to compute its detection time.
    #[error(
        "consumer model lb-health-check (from {from}) needs the load balancer's health \
         check: the drainwatch.io/lb-health-check annotation (e.g. \
         \"interval=10s,timeout=5s,unhealthy=2\" or \"preset=aws-nlb\"), or audit \
         --lb-preset, or --lb-interval, --lb-timeout and --lb-unhealthy-threshold"
    )]
    NoLbHealthCheck {
        /// Where the model came from.
        from: &'static str,
    },
    /// A kube-apiserver flag with a bad duration.
    #[error("container {container}: {flag}: {source}")]
    Flag {
        /// Container name.
        container: String,
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        source: DurationError,
    },
}

/// What a preStop hook does, as far as timing goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreStop {
    /// No hook.
    None,
    /// A `sleep` (exec or the native sleep action): the container keeps running this long.
    Sleep(Duration),
    /// A hook whose duration cannot be told from the manifest.
    Unknown(String),
}

impl PreStop {
    fn sleep(&self) -> Duration {
        match self {
            PreStop::Sleep(d) => *d,
            PreStop::None | PreStop::Unknown(_) => Duration::ZERO,
        }
    }
}

/// Reads a container's preStop hook.
pub fn pre_stop(c: &Container) -> PreStop {
    let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
        return PreStop::None;
    };
    if let Some(sleep) = &hook.sleep {
        return PreStop::Sleep(Duration::from_secs(
            u64::try_from(sleep.seconds).unwrap_or(0),
        ));
    }
    if let Some(cmd) = hook.exec.as_ref().and_then(|e| e.command.as_ref()) {
        return exec_sleep(cmd);
    }
    if let Some(h) = &hook.http_get {
        return PreStop::Unknown(format!("httpGet {}", h.path.as_deref().unwrap_or("/")));
    }
    PreStop::Unknown("a hook without a recognised action".to_string())
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// `["sleep", "20"]`, `["/bin/sh", "-c", "sleep 20 && kill ..."]`: the sum of the sleeps.
fn exec_sleep(cmd: &[String]) -> PreStop {
    let shown = cmd.join(" ");
    let words: Vec<&str> = match cmd.first().map(|c| basename(c)) {
        Some("sleep") => cmd.iter().map(String::as_str).collect(),
        Some("sh" | "bash" | "ash" | "dash" | "zsh") => {
            let Some(script) = cmd
                .iter()
                .position(|a| a.starts_with('-') && a.contains('c'))
                .and_then(|i| cmd.get(i + 1))
            else {
                return PreStop::Unknown(shown);
            };
            script
                .split(|c: char| c.is_whitespace() || ";&|()'\"".contains(c))
                .filter(|w| !w.is_empty())
                .collect()
        }
        _ => return PreStop::Unknown(shown),
    };
    let mut total = Duration::ZERO;
    let mut found = false;
    for pair in words.windows(2) {
        if basename(pair[0]) == "sleep" {
            match sleep_arg(pair[1]) {
                Some(d) => {
                    total = total.saturating_add(d);
                    found = true;
                }
                None => return PreStop::Unknown(shown),
            }
        }
    }
    if found {
        PreStop::Sleep(total)
    } else {
        PreStop::Unknown(shown)
    }
}

/// coreutils `sleep` arguments: a number with an optional s/m/h/d suffix.
fn sleep_arg(arg: &str) -> Option<Duration> {
    if let Some(days) = arg.strip_suffix('d') {
        return parse_duration(&format!("{days}h"))
            .ok()
            .and_then(|d| d.checked_mul(24));
    }
    if !arg.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    parse_duration(arg).ok()
}

/// Words of a container's command and args; shell scripts are split on whitespace so that
/// flags inside `sh -c "exec kube-apiserver --flag=..."` are found too.
fn words(c: &Container) -> Vec<&str> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .flat_map(|a| a.split_whitespace())
        .map(|w| w.trim_matches(|ch| ch == '"' || ch == '\''))
        .collect()
}

/// Whether the container runs kube-apiserver (by name, or by the program it runs).
pub fn is_kube_apiserver(c: &Container) -> bool {
    c.name == "kube-apiserver"
        || words(c)
            .iter()
            .any(|w| !w.starts_with('-') && basename(w) == "kube-apiserver")
}

fn flag_value<'a>(words: &[&'a str], flag: &str) -> Option<&'a str> {
    let mut it = words.iter();
    while let Some(w) = it.next() {
        if let Some(v) = w.strip_prefix(flag) {
            if let Some(v) = v.strip_prefix('=') {
                return Some(v);
            }
            if v.is_empty() {
                return it.next().copied();
            }
        }
    }
    None
}

/// Whether the container accepts connections: it declares ports, or its readiness probe
/// checks a port (then something listens there: `ports:` is informational in Kubernetes
/// and often left out), or it is kube-apiserver.
pub fn is_serving(c: &Container) -> bool {
    c.ports.as_ref().is_some_and(|p| !p.is_empty())
        || c.readiness_probe.as_ref().is_some_and(probe_targets_port)
        || is_kube_apiserver(c)
}

/// httpGet, tcpSocket and grpc probes connect to a port (by number or by name); exec
/// probes say nothing about one.
fn probe_targets_port(p: &Probe) -> bool {
    p.http_get.is_some() || p.tcp_socket.is_some() || p.grpc.is_some()
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

fn main_container(annotations: &BTreeMap<String, String>, containers: &[Container]) -> usize {
    annotations
        .get(DEFAULT_CONTAINER_ANNOTATION)
        .and_then(|n| containers.iter().position(|c| &c.name == n))
        .or_else(|| containers.iter().position(is_kube_apiserver))
        .unwrap_or(0)
}

fn annotation(
    annotations: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Option<Duration>, RuleError> {
    annotations
        .get(key)
        .map(|v| parse_duration(v).map_err(|source| RuleError::Annotation { key, source }))
        .transpose()
}

/// How the main container shuts down.
struct Profile {
    apiserver: bool,
    serving: bool,
    pre_stop: PreStop,
    shutdown_delay: Duration,
    shutdown_delay_source: &'static str,
    request_timeout: Duration,
    request_timeout_source: &'static str,
}

impl Profile {
    fn read(
        c: &Container,
        annotations: &BTreeMap<String, String>,
        cfg: &RuleConfig,
    ) -> Result<Self, RuleError> {
        let apiserver = is_kube_apiserver(c);
        let w = words(c);
        let flag = |flag: &'static str| -> Result<Option<Duration>, RuleError> {
            if !apiserver {
                return Ok(None);
            }
            flag_value(&w, flag)
                .map(|v| {
                    parse_duration(v).map_err(|source| RuleError::Flag {
                        container: c.name.clone(),
                        flag,
                        source,
                    })
                })
                .transpose()
        };
        let (shutdown_delay, shutdown_delay_source) = match (
            annotation(annotations, SHUTDOWN_DELAY_ANNOTATION)?,
            flag("--shutdown-delay-duration")?,
        ) {
            (Some(d), _) => (d, SHUTDOWN_DELAY_ANNOTATION),
            (None, Some(d)) => (d, "--shutdown-delay-duration"),
            (None, None) if apiserver => (Duration::ZERO, "--shutdown-delay-duration default"),
            (None, None) => (Duration::ZERO, "none declared"),
        };
        let (request_timeout, request_timeout_source) = match (
            annotation(annotations, REQUEST_TIMEOUT_ANNOTATION)?,
            flag("--request-timeout")?,
        ) {
            (Some(d), _) => (d, REQUEST_TIMEOUT_ANNOTATION),
            (None, Some(d)) => (d, "--request-timeout"),
            (None, None) if apiserver => (APISERVER_REQUEST_TIMEOUT, "--request-timeout default"),
            (None, None) => (cfg.request_timeout, "audit --request-timeout"),
        };
        Ok(Profile {
            apiserver,
            serving: is_serving(c),
            pre_stop: pre_stop(c),
            shutdown_delay,
            shutdown_delay_source,
            request_timeout,
            request_timeout_source,
        })
    }

    /// How long after deletion the container keeps accepting requests.
    fn window(&self) -> Duration {
        self.pre_stop.sleep().saturating_add(self.shutdown_delay)
    }

    fn describe_window(&self) -> String {
        let mut parts = Vec::new();
        if let PreStop::Sleep(d) = self.pre_stop {
            parts.push(format!("preStop sleep {}", format_duration(d)));
        }
        if !self.shutdown_delay.is_zero() {
            parts.push(format!(
                "shutdown delay {} ({})",
                format_duration(self.shutdown_delay),
                self.shutdown_delay_source
            ));
        }
        if parts.is_empty() {
            if self.apiserver {
                "no preStop sleep and --shutdown-delay-duration 0s".to_string()
            } else {
                "no preStop sleep and no shutdown delay".to_string()
            }
        } else {
            parts.join(" + ")
        }
    }
}

/// Audits one pod spec found at `spec_path` (e.g. `spec.template.spec`).
pub fn audit_pod(
    spec_path: &str,
    annotations: &BTreeMap<String, String>,
    spec: &PodSpec,
    cfg: &RuleConfig,
) -> Result<Vec<Finding>, RuleError> {
    let model = consumer_model(annotations, cfg)?;
    audit_pod_with(spec_path, annotations, spec, cfg, &model)
}

/// The consumer model of an object with these annotations.
pub fn consumer_model(
    annotations: &BTreeMap<String, String>,
    cfg: &RuleConfig,
) -> Result<ConsumerModel, RuleError> {
    consumer::resolve(annotations, &cfg.consumer, cfg.propagation_budget)
}

/// [`audit_pod`] with the object's consumer model already resolved.
// Long (about 315 lines) and not split yet: one block per rule, in the order
// findings are listed, each reading the same container and probe facts. The
// split owed is one function per rule over a shared context.
pub fn audit_pod_with(
    spec_path: &str,
    annotations: &BTreeMap<String, String>,
    spec: &PodSpec,
    cfg: &RuleConfig,
    model: &ConsumerModel,
) -> Result<Vec<Finding>, RuleError> {
    let mut out = Vec::new();
    if spec.containers.is_empty() {
        return Ok(out);
    }
    let grace_set = spec.termination_grace_period_seconds;
    let grace = grace_set
        .map(|g| Duration::from_secs(u64::try_from(g).unwrap_or(0)))
        .unwrap_or(DEFAULT_GRACE);
    let grace_shown = match grace_set {
        Some(g) => g.to_string(),
        None => format!("unset (Kubernetes default {})", DEFAULT_GRACE.as_secs()),
    };
    let mi = main_container(annotations, &spec.containers);
    let main = &spec.containers[mi];
    let main_path = format!("{spec_path}.containers[{mi}]");
    let p = Profile::read(main, annotations, cfg)?;
    let window = p.window();

    let needed_window = model.required;
    let suggested_window = if p.serving {
        window.max(needed_window)
    } else {
        window
    };
    let drain = if p.serving {
        p.request_timeout
    } else {
        Duration::ZERO
    };
    let required_grace = window.saturating_add(drain);
    let suggested_grace = grace.max(suggested_window.saturating_add(drain));

    if grace < required_grace {
        let mut terms = Vec::new();
        if let PreStop::Sleep(d) = p.pre_stop {
            terms.push(format!("preStop sleep {}", format_duration(d)));
        }
        if !p.shutdown_delay.is_zero() {
            terms.push(format!(
                "shutdown delay {} ({})",
                format_duration(p.shutdown_delay),
                p.shutdown_delay_source
            ));
        }
        if !drain.is_zero() {
            terms.push(format!(
                "request timeout {} ({})",
                format_duration(drain),
                p.request_timeout_source
            ));
        }
        out.push(Finding {
            severity: Severity::Error,
            rule: "grace-period",
            container: main.name.clone(),
            field: format!("{spec_path}.terminationGracePeriodSeconds"),
            current: grace_shown.clone(),
            why: format!(
                "kubelet SIGKILLs every container when the grace period ends, but {} needs {} \
                 = {} to finish in-flight requests (the grace period counts from deletion, \
                 preStop hook included: Kubernetes docs, Pod Lifecycle, termination of Pods)",
                main.name,
                terms.join(" + "),
                format_duration(required_grace)
            ),
            suggested: ceil_secs(suggested_grace).to_string(),
        });
    }

    // The grace period runs from deletion, preStop included: a sleep that uses all of it
    // leaves nothing for the application's own shutdown (the grace-period finding gives
    // the total; this one says what actually happens).
    if let PreStop::Sleep(d) = p.pre_stop
        && d >= grace
    {
        out.push(Finding {
            severity: Severity::Error,
            rule: "prestop-sleep-exceeds-grace",
            container: main.name.clone(),
            field: format!("{main_path}.lifecycle.preStop"),
            current: format!(
                "sleep {} with terminationGracePeriodSeconds {}",
                format_duration(d),
                format_duration(grace)
            ),
            why: format!(
                "the preStop sleep ({}) does not end before the {} grace period does, so {} gets \
                 SIGTERM with no time left: when the grace period ends kubelet sends SIGTERM with \
                 the hook still running and SIGKILL 2s later (its one-off extension), and \
                 in-flight requests are cut (Kubernetes docs, Pod Lifecycle: Termination of \
                 Pods: the grace period countdown includes the preStop hook)",
                format_duration(d),
                format_duration(grace),
                main.name
            ),
            // A server's need after SIGTERM is known (its request timeout); another
            // program's is not, so no number is made up for it.
            suggested: if drain.is_zero() {
                format!(
                    "terminationGracePeriodSeconds above {} by the time {} needs to exit after \
                     SIGTERM, or a shorter sleep",
                    ceil_secs(d),
                    main.name
                )
            } else {
                format!(
                    "terminationGracePeriodSeconds: {} (the sleep and what {} needs after \
                     SIGTERM), or a shorter sleep",
                    ceil_secs(suggested_grace),
                    main.name
                )
            },
        });
    }

    if p.serving && window < needed_window {
        let (field, suggested) = if p.apiserver && p.pre_stop == PreStop::None {
            // Point at whichever list carries the flags (static pods often use `command`).
            let list = if main.args.as_ref().is_none_or(Vec::is_empty) && main.command.is_some() {
                "command"
            } else {
                "args"
            };
            (
                format!("{main_path}.{list}"),
                match model.lb_health_check {
                    Some(_) => format!("--shutdown-delay-duration={}s", ceil_secs(needed_window)),
                    None => format!(
                        "--shutdown-delay-duration={}s, and more if a load balancer \
                         health-checks /readyz: its worst-case detection + propagation \
                         (drainwatch lb-check)",
                        ceil_secs(needed_window)
                    ),
                },
            )
        } else {
            let sleep = needed_window.saturating_sub(p.shutdown_delay);
            (
                format!("{main_path}.lifecycle.preStop"),
                format!("exec: command: [\"sleep\", \"{}\"]", ceil_secs(sleep)),
            )
        };
        let suggested = if suggested_grace > grace {
            format!(
                "{suggested} (with terminationGracePeriodSeconds >= {})",
                ceil_secs(suggested_grace)
            )
        } else {
            suggested
        };
        out.push(Finding {
            severity: Severity::Error,
            rule: "drain-window",
            container: main.name.clone(),
            field,
            current: p.describe_window(),
            why: format!(
                "{}; {} must keep accepting connections for at least {} after deletion, but it \
                 stops {} after deletion ({}), so connections still routed to it meanwhile are \
                 refused",
                model.explain(),
                main.name,
                format_duration(needed_window),
                format_duration(window),
                p.describe_window()
            ),
            suggested,
        });
    }

    // The default model is the flag's value even for kube-apiserver, so that a rule never
    // silently changes with the workload; but its usual consumer is a load balancer, so
    // say which model was used and how to give the real one.
    if p.serving && p.apiserver && model.source == DEFAULT_SOURCE {
        out.push(Finding {
            severity: Severity::Info,
            rule: "consumer-model",
            container: main.name.clone(),
            field: format!(
                "{}metadata.annotations[{}]",
                spec_path.strip_suffix("spec").unwrap_or(""),
                consumer::CONSUMER_ANNOTATION
            ),
            current: "unset".to_string(),
            why: format!(
                "the drain window was checked with the {} model: kube-proxy and other Service \
                 consumers need {} to drop the endpoint; kube-apiserver is normally also behind \
                 a load balancer that health-checks /readyz (HAProxy or F5 in front of static \
                 pods, a cloud load balancer), which stops routing only after its own \
                 worst-case detection time",
                model.model_name(),
                format_duration(model.required)
            ),
            suggested: "audit --consumer lb-health-check --lb-preset PRESET (or --lb-interval, \
                        --lb-timeout, --lb-unhealthy-threshold), or the annotations \
                        drainwatch.io/consumer: lb-health-check and drainwatch.io/lb-health-check: \
                        \"interval=10s,timeout=5s,unhealthy=2\""
                .to_string(),
        });
    }

    if p.serving && main.readiness_probe.is_none() {
        let suggested = if p.apiserver {
            "httpGet: {path: /readyz, port: 6443, scheme: HTTPS}, periodSeconds: 5, \
             failureThreshold: 3"
        } else {
            "httpGet on the serving port, periodSeconds: 5, failureThreshold: 3, \
             initialDelaySeconds: 5"
        };
        out.push(Finding {
            severity: Severity::Warning,
            rule: "readiness-probe",
            container: main.name.clone(),
            field: format!("{main_path}.readinessProbe"),
            current: "none".to_string(),
            why: "without a readiness probe the pod counts as ready as soon as its containers \
                  start, so during a rollout new pods get connections before they listen, and a \
                  load balancer that checks the same endpoint has nothing that turns red at \
                  shutdown (Kubernetes docs: Configure Liveness, Readiness and Startup Probes)"
                .to_string(),
            suggested: suggested.to_string(),
        });
    }

    if let PreStop::Unknown(what) = &p.pre_stop {
        out.push(unknown_hook(&main.name, &main_path, what));
    }

    // Sidecars only matter while the main container keeps working after deletion.
    if p.serving || !window.is_zero() {
        let sidecar_sleep = Duration::from_secs(ceil_secs(suggested_grace).saturating_sub(1));
        for (i, c) in spec.containers.iter().enumerate() {
            if i == mi {
                continue;
            }
            let path = format!("{spec_path}.containers[{i}]");
            let suggested = format!(
                "exec: command: [\"sleep\", \"{}\"] (just under the grace period, so the \
                 sidecar outlives the main container and still exits on SIGTERM before \
                 SIGKILL), or make it a native sidecar (initContainers with restartPolicy: \
                 Always, stopped after the main containers)",
                sidecar_sleep.as_secs()
            );
            match pre_stop(c) {
                PreStop::None => out.push(Finding {
                    severity: if is_serving(c) {
                        Severity::Error
                    } else {
                        Severity::Warning
                    },
                    rule: "sidecar-prestop",
                    container: c.name.clone(),
                    field: format!("{path}.lifecycle.preStop"),
                    current: "none".to_string(),
                    why: format!(
                        "kubelet sends SIGTERM to every container at once: without a preStop \
                         hook {} exits right away while {} keeps serving for {} and draining \
                         for up to {}, so requests that pass through {} fail",
                        c.name,
                        main.name,
                        format_duration(window),
                        format_duration(drain),
                        c.name
                    ),
                    suggested,
                }),
                PreStop::Sleep(d) if d < window => out.push(Finding {
                    severity: Severity::Warning,
                    rule: "sidecar-prestop-short",
                    container: c.name.clone(),
                    field: format!("{path}.lifecycle.preStop"),
                    current: format!("sleep {}", format_duration(d)),
                    why: format!(
                        "{} gets SIGTERM after {}, before {} stops accepting requests at {}: \
                         a sidecar in the request path must outlive the main container's \
                         shutdown",
                        c.name,
                        format_duration(d),
                        main.name,
                        format_duration(window)
                    ),
                    suggested,
                }),
                PreStop::Sleep(d) if d >= grace => out.push(Finding {
                    severity: Severity::Info,
                    rule: "sidecar-prestop-exceeds-grace",
                    container: c.name.clone(),
                    field: format!("{path}.lifecycle.preStop"),
                    current: format!("sleep {}", format_duration(d)),
                    why: format!(
                        "the sleep outlasts the {} grace period, so {} is SIGKILLed without a \
                         chance to close its connections (a sleep just under the grace period \
                         leaves it a moment after SIGTERM)",
                        format_duration(grace),
                        c.name
                    ),
                    suggested: format!(
                        "exec: command: [\"sleep\", \"{}\"]",
                        ceil_secs(grace).saturating_sub(1)
                    ),
                }),
                PreStop::Unknown(what) => out.push(unknown_hook(&c.name, &path, &what)),
                PreStop::Sleep(_) => {}
            }
        }
    }
    Ok(out)
}

fn unknown_hook(container: &str, path: &str, what: &str) -> Finding {
    Finding {
        severity: Severity::Info,
        rule: "prestop-unknown",
        container: container.to_string(),
        field: format!("{path}.lifecycle.preStop"),
        current: what.to_string(),
        why: "the hook's duration cannot be read from the manifest, so it is counted as 0s; \
              declare a fixed delay with `sleep N` or the drainwatch.io/shutdown-delay annotation"
            .to_string(),
        suggested: "exec: command: [\"sleep\", \"N\"] or lifecycle.preStop.sleep.seconds"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PodSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn rules(findings: &[Finding]) -> Vec<(&'static str, &str, Severity)> {
        findings
            .iter()
            .map(|f| (f.rule, f.container.as_str(), f.severity))
            .collect()
    }

    fn audit(yaml: &str) -> Vec<Finding> {
        audit_pod(
            "spec.template.spec",
            &BTreeMap::new(),
            &spec(yaml),
            &RuleConfig::default(),
        )
        .unwrap()
    }

    fn find<'f>(findings: &'f [Finding], rule: &str) -> &'f Finding {
        findings
            .iter()
            .find(|f| f.rule == rule)
            .unwrap_or_else(|| panic!("no {rule} finding in {findings:#?}"))
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A proxy in front of the pods health-checks them every 5s and takes one out after 3
    /// failures (1s timeout): 16s worst case.
    const PROXY_CHECK: (&str, &str) = (
        consumer::LB_HEALTH_CHECK_ANNOTATION,
        "interval=5s,timeout=1s,unhealthy=3",
    );

    /// A 20s sleep, a 30s grace period and an auth-proxy sidecar without a hook.
    const REPORTING_BEFORE: &str = r#"
terminationGracePeriodSeconds: 30
containers:
- name: sre-reporting
  ports: [{containerPort: 8080}]
  lifecycle: {preStop: {exec: {command: ["sleep", "20"]}}}
  readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 5, failureThreshold: 3}
- name: google-auth-proxy
  ports: [{containerPort: 4180}]
"#;

    #[test]
    fn health_checked_app_with_short_sleep_fails_three_ways() {
        let f = audit_pod(
            "spec.template.spec",
            &ann(&[PROXY_CHECK]),
            &spec(REPORTING_BEFORE),
            &RuleConfig::default(),
        )
        .unwrap();
        assert_eq!(
            rules(&f),
            vec![
                ("grace-period", "sre-reporting", Severity::Error),
                ("drain-window", "sre-reporting", Severity::Error),
                ("sidecar-prestop", "google-auth-proxy", Severity::Error),
            ]
        );
        assert_eq!(
            f[0].field,
            "spec.template.spec.terminationGracePeriodSeconds"
        );
        assert_eq!(f[0].current, "30");
        // window 20 -> 26 (16s detection + 10s budget), + 30s request timeout.
        assert_eq!(f[0].suggested, "56");
        assert_eq!(
            f[1].field,
            "spec.template.spec.containers[0].lifecycle.preStop"
        );
        assert!(
            f[1].suggested
                .starts_with("exec: command: [\"sleep\", \"26\"]"),
            "{}",
            f[1].suggested
        );
        assert!(
            f[1].why.contains(
                "consumer model lb-health-check (annotation drainwatch.io/lb-health-check; \
                 health check interval 5s, timeout 1s, unhealthy threshold 3 from annotation \
                 drainwatch.io/lb-health-check)"
            ),
            "{}",
            f[1].why
        );
        assert!(
            f[1].why
                .contains("worst-case detection 16s (unhealthy threshold x interval + timeout)"),
            "{}",
            f[1].why
        );
        assert!(f[1].why.contains("= 26s"), "{}", f[1].why);
        assert_eq!(
            f[2].field,
            "spec.template.spec.containers[1].lifecycle.preStop"
        );
        assert!(f[2].suggested.contains("\"55\""), "{}", f[2].suggested);
    }

    #[test]
    fn behind_a_service_only_propagation_counts() {
        // The same pod behind a Service: its endpoint is marked terminating at deletion, so
        // the 20s sleep covers the 10s propagation; the readiness probe's 16s plays no part.
        let f = audit(REPORTING_BEFORE);
        assert_eq!(
            rules(&f),
            vec![
                ("grace-period", "sre-reporting", Severity::Error),
                ("sidecar-prestop", "google-auth-proxy", Severity::Error),
            ]
        );
        assert_eq!(f[0].suggested, "50");
        // A 5s sleep does not: the finding names the model and its numbers.
        let f = audit(&REPORTING_BEFORE.replace("\"20\"", "\"5\""));
        let f = [find(&f, "drain-window").clone()];
        assert!(
            f[0].why.starts_with(
                "consumer model service (default: --consumer not given): the endpoint is \
                 marked terminating (EndpointSlice ready: false, terminating: true)"
            ),
            "{}",
            f[0].why
        );
        assert!(
            f[0].why.contains(
                "need up to 10s (--propagation-budget) to stop sending it new connections"
            ),
            "{}",
            f[0].why
        );
        assert!(
            f[0].why.contains(
                "sre-reporting must keep accepting connections for at least 10s after \
                 deletion, but it stops 5s after deletion (preStop sleep 5s)"
            ),
            "{}",
            f[0].why
        );
        assert!(
            f[0].suggested
                .starts_with("exec: command: [\"sleep\", \"10\"]"),
            "{}",
            f[0].suggested
        );
    }

    #[test]
    fn consumer_annotation_beats_the_flag() {
        let aws = RuleConfig {
            consumer: ConsumerConfig {
                default: Some(consumer::ConsumerKind::LbHealthCheck),
                lb_health_check: Some(
                    consumer::LbHealthCheck::resolve(
                        Some(crate::lb_check::model::Preset::AwsNlb),
                        &crate::lb_check::model::Overrides::default(),
                        |f| f.to_string(),
                    )
                    .unwrap(),
                ),
            },
            ..RuleConfig::default()
        };
        // The flag: the AWS check needs 30s + 10s, the 20s sleep is short.
        let f = audit_pod("spec", &BTreeMap::new(), &spec(REPORTING_BEFORE), &aws).unwrap();
        assert_eq!(f[1].rule, "drain-window");
        assert!(
            f[1].why.starts_with(
                "consumer model lb-health-check (--consumer; health check AWS Network Load \
                 Balancer interval 10s, timeout 10s, unhealthy threshold 2 from --lb-preset"
            ),
            "{}",
            f[1].why
        );
        assert!(
            f[1].why.contains("worst-case detection 30s"),
            "{}",
            f[1].why
        );
        assert!(
            f[1].suggested
                .starts_with("exec: command: [\"sleep\", \"40\"]"),
            "{}",
            f[1].suggested
        );
        // The object says it is behind a Service: the annotation wins.
        let a = ann(&[(consumer::CONSUMER_ANNOTATION, "service")]);
        let f = audit_pod("spec", &a, &spec(REPORTING_BEFORE), &aws).unwrap();
        assert!(f.iter().all(|f| f.rule != "drain-window"), "{f:#?}");
        let f = audit_pod(
            "spec",
            &a,
            &spec(&REPORTING_BEFORE.replace("\"20\"", "\"5\"")),
            &aws,
        )
        .unwrap();
        let why = &find(&f, "drain-window").why;
        assert!(
            why.starts_with("consumer model service (annotation drainwatch.io/consumer)"),
            "{why}"
        );
        // An unreadable annotation is an error naming it.
        let e = audit_pod(
            "spec",
            &ann(&[(consumer::CONSUMER_ANNOTATION, "nlb")]),
            &spec(REPORTING_BEFORE),
            &aws,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("annotation drainwatch.io/consumer: \"nlb\""),
            "{e}"
        );
    }

    #[test]
    fn reporting_after_passes() {
        let f = audit(
            r#"
terminationGracePeriodSeconds: 60
containers:
- name: sre-reporting
  ports: [{containerPort: 8080}]
  lifecycle: {preStop: {exec: {command: ["/bin/sh", "-c", "sleep 30"]}}}
  readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 5, failureThreshold: 3, initialDelaySeconds: 5}
- name: google-auth-proxy
  ports: [{containerPort: 4180}]
  lifecycle: {preStop: {exec: {command: ["sleep", "59"]}}}
"#,
        );
        assert_eq!(f, vec![]);
    }

    #[test]
    fn in_process_delay_via_annotation_and_unset_grace() {
        let yaml = r#"
containers:
- name: app
  ports: [{containerPort: 80}]
  readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 5, failureThreshold: 3}
"#;
        let mut ann = ann(&[PROXY_CHECK]);
        ann.insert(SHUTDOWN_DELAY_ANNOTATION.to_string(), "20s".to_string());
        let f = audit_pod("spec", &ann, &spec(yaml), &RuleConfig::default()).unwrap();
        assert_eq!(rules(&f)[0], ("grace-period", "app", Severity::Error));
        assert_eq!(f[0].current, "unset (Kubernetes default 30)");
        assert!(
            f[0].why
                .contains("shutdown delay 20s (drainwatch.io/shutdown-delay)"),
            "{}",
            f[0].why
        );
        assert_eq!(f[1].rule, "drain-window");
        // The in-process delay counts: the sleep to add is 26 - 20.
        assert!(
            f[1].suggested
                .starts_with("exec: command: [\"sleep\", \"6\"]"),
            "{}",
            f[1].suggested
        );

        ann.insert(SHUTDOWN_DELAY_ANNOTATION.to_string(), "soon".to_string());
        let e = audit_pod("spec", &ann, &spec(yaml), &RuleConfig::default()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("annotation drainwatch.io/shutdown-delay: invalid duration \"soon\""),
            "{e}"
        );
    }

    #[test]
    fn kube_apiserver_reads_its_flags() {
        let yaml = r#"
terminationGracePeriodSeconds: 135
containers:
- name: kube-apiserver
  command: ["/bin/bash", "-ec", "exec hyperkube kube-apiserver --shutdown-delay-duration=70s --secure-port 6443"]
  readinessProbe: {httpGet: {path: /readyz, port: 6443, scheme: HTTPS}, periodSeconds: 5, failureThreshold: 3, timeoutSeconds: 10}
"#;
        // HAProxy-like check of /readyz: 3 x 5s + 10s = 25s, + 10s propagation.
        let lb = ann(&[(
            consumer::LB_HEALTH_CHECK_ANNOTATION,
            "interval=5s,timeout=10s,unhealthy=3",
        )]);
        let audit_lb = |yaml: &str| {
            audit_pod(
                "spec.template.spec",
                &lb,
                &spec(yaml),
                &RuleConfig::default(),
            )
            .unwrap()
        };
        assert_eq!(audit_lb(yaml), vec![]);
        // 120 < 70 + 60.
        let f = audit_lb(&yaml.replace("135", "120"));
        assert_eq!(
            rules(&f),
            vec![("grace-period", "kube-apiserver", Severity::Error)]
        );
        assert!(
            f[0].why.contains("--request-timeout default"),
            "{}",
            f[0].why
        );
        // Without the flag the apiserver closes its listener at SIGTERM.
        let f = audit_lb(&yaml.replace("--shutdown-delay-duration=70s", ""));
        assert_eq!(f[0].rule, "drain-window");
        assert_eq!(f[0].field, "spec.template.spec.containers[0].command");
        assert!(
            f[0].suggested.starts_with("--shutdown-delay-duration=35s"),
            "{}",
            f[0].suggested
        );
        let e = audit_pod(
            "spec",
            &BTreeMap::new(),
            &spec(&yaml.replace("70s", "70x")),
            &RuleConfig::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "container kube-apiserver: --shutdown-delay-duration: invalid duration \"70x\""
            ),
            "{e}"
        );
    }

    #[test]
    fn kube_apiserver_on_the_default_model_says_so() {
        let yaml = r#"
containers:
- name: kube-apiserver
  command: ["kube-apiserver", "--shutdown-delay-duration=5s"]
"#;
        let all = audit(yaml);
        // The default rule stays the flag's value: 5s < 10s of Service propagation.
        let f = [find(&all, "drain-window").clone()];
        assert!(
            f[0].why.starts_with("consumer model service (default"),
            "{}",
            f[0].why
        );
        assert!(
            f[0].suggested.starts_with(
                "--shutdown-delay-duration=10s, and more if a load balancer health-checks /readyz"
            ),
            "{}",
            f[0].suggested
        );
        let note = find(&all, "consumer-model");
        assert_eq!(note.severity, Severity::Info);
        assert_eq!(
            note.field,
            "spec.template.metadata.annotations[drainwatch.io/consumer]"
        );
        assert!(
            note.why
                .contains("normally also behind a load balancer that health-checks /readyz"),
            "{}",
            note.why
        );
        // Given a model, by flag or annotation, there is nothing to note.
        let cfg = RuleConfig {
            consumer: ConsumerConfig {
                default: Some(consumer::ConsumerKind::Service),
                lb_health_check: None,
            },
            ..RuleConfig::default()
        };
        let f = audit_pod("spec.template.spec", &BTreeMap::new(), &spec(yaml), &cfg).unwrap();
        assert!(f.iter().all(|f| f.rule != "consumer-model"), "{f:#?}");
    }

    #[test]
    fn missing_readiness_probe_and_unknown_hooks() {
        let f = audit(
            r#"
terminationGracePeriodSeconds: 60
containers:
- name: web
  ports: [{containerPort: 80}]
  lifecycle: {preStop: {httpGet: {path: /drain, port: 80}}}
"#,
        );
        assert_eq!(
            rules(&f),
            vec![
                ("drain-window", "web", Severity::Error),
                ("readiness-probe", "web", Severity::Warning),
                ("prestop-unknown", "web", Severity::Info),
            ]
        );
    }

    #[test]
    fn sidecar_sleep_checks_and_default_container() {
        let yaml = r#"
terminationGracePeriodSeconds: 60
containers:
- name: log-shipper
  lifecycle: {preStop: {sleep: {seconds: 10}}}
- name: app
  ports: [{containerPort: 80}]
  lifecycle: {preStop: {exec: {command: ["sleep", "30"]}}}
  readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 5, failureThreshold: 3}
- name: metrics
  lifecycle: {preStop: {exec: {command: ["sleep", "90"]}}}
"#;
        let mut ann = BTreeMap::new();
        ann.insert(DEFAULT_CONTAINER_ANNOTATION.to_string(), "app".to_string());
        let f = audit_pod("spec", &ann, &spec(yaml), &RuleConfig::default()).unwrap();
        assert_eq!(
            rules(&f),
            vec![
                ("sidecar-prestop-short", "log-shipper", Severity::Warning),
                ("sidecar-prestop-exceeds-grace", "metrics", Severity::Info),
            ]
        );
        assert_eq!(f[0].field, "spec.containers[0].lifecycle.preStop");
    }

    #[test]
    fn non_serving_jobs_only_need_their_hooks_to_fit() {
        let f = audit("containers: [{name: batch}]\n");
        assert_eq!(f, vec![]);
        let f = audit(
            "terminationGracePeriodSeconds: 10\ncontainers: [{name: w, lifecycle: {preStop: {exec: {command: [sleep, '1m']}}}}]\n",
        );
        assert_eq!(
            rules(&f),
            vec![
                ("grace-period", "w", Severity::Error),
                ("prestop-sleep-exceeds-grace", "w", Severity::Error),
            ]
        );
        assert_eq!(f[0].suggested, "60");
        // No request timeout to add for a program that serves nothing: no number made up.
        assert!(
            f[1].suggested
                .starts_with("terminationGracePeriodSeconds above 60 by the time w needs"),
            "{}",
            f[1].suggested
        );
    }

    #[test]
    fn readiness_probe_on_a_port_means_serving_without_ports() {
        // No `ports:`: this passed as "not serving", yet sleep 30 with grace 30 leaves the
        // application no time at all after SIGTERM.
        let yaml = r#"
terminationGracePeriodSeconds: 30
containers:
- name: app
  lifecycle: {preStop: {exec: {command: ["sleep", "30"]}}}
  readinessProbe: PROBE
- name: proxy
  readinessProbe: {tcpSocket: {port: 4180}}
"#;
        for probe in [
            "{httpGet: {path: /ready, port: 8080}}",
            "{httpGet: {path: /ready, port: http}}",
            "{tcpSocket: {port: 9000}}",
            "{grpc: {port: 9090}}",
        ] {
            let f = audit(&yaml.replace("PROBE", probe));
            // The 30s sleep covers the Service's propagation: no drain-window finding.
            assert_eq!(
                rules(&f),
                vec![
                    ("grace-period", "app", Severity::Error),
                    ("prestop-sleep-exceeds-grace", "app", Severity::Error),
                    // The sidecar probed on a port serves too: a missing hook is an error.
                    ("sidecar-prestop", "proxy", Severity::Error),
                ],
                "{probe}: {f:#?}"
            );
            assert_eq!(f[0].suggested, "60");
            assert!(
                f[0].why.contains(
                    "preStop sleep 30s + request timeout 30s (audit --request-timeout) = 60s"
                ),
                "{}",
                f[0].why
            );
            assert_eq!(
                f[1].field,
                "spec.template.spec.containers[0].lifecycle.preStop"
            );
            assert_eq!(
                f[1].current,
                "sleep 30s with terminationGracePeriodSeconds 30s"
            );
            assert!(
                f[1].why.contains("app gets SIGTERM with no time left"),
                "{}",
                f[1].why
            );
        }

        // An exec probe says nothing about a port: not serving, and a 20s sleep fits.
        let f = audit(
            r#"
terminationGracePeriodSeconds: 30
containers:
- name: worker
  lifecycle: {preStop: {exec: {command: ["sleep", "20"]}}}
  readinessProbe: {exec: {command: [cat, /tmp/ready]}}
"#,
        );
        assert_eq!(f, vec![]);
    }

    #[test]
    fn absurd_sleeps_saturate_instead_of_panicking() {
        let f = audit(
            r#"
containers:
- name: app
  ports: [{containerPort: 80}]
  lifecycle: {preStop: {exec: {command: ["sh", "-c", "sleep 18446744073709551615; sleep 18446744073709551615"]}}}
  readinessProbe: {periodSeconds: 2147483647, failureThreshold: 2147483647, timeoutSeconds: 2147483647}
"#,
        );
        assert_eq!(f[0].rule, "grace-period");
    }

    #[test]
    fn parses_prestop_forms() {
        let c = |cmd: &[&str]| exec_sleep(&cmd.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(c(&["sleep", "20"]), PreStop::Sleep(Duration::from_secs(20)));
        assert_eq!(
            c(&["/bin/sleep", "1.5"]),
            PreStop::Sleep(Duration::from_millis(1500))
        );
        assert_eq!(
            c(&["sh", "-c", "echo bye; sleep 5 && sleep 10"]),
            PreStop::Sleep(Duration::from_secs(15))
        );
        assert_eq!(
            c(&["sleep", "1d"]),
            PreStop::Sleep(Duration::from_secs(86_400))
        );
        assert!(matches!(c(&["sleep", "infinity"]), PreStop::Unknown(_)));
        assert!(matches!(c(&["/drain.sh"]), PreStop::Unknown(_)));
        assert!(matches!(
            c(&["sh", "-c", "nginx -s quit"]),
            PreStop::Unknown(_)
        ));
    }
}
