//! `drainwatch audit`: graceful-shutdown rules over Kubernetes manifests.
//!
//! Kinds without pods (Service, ConfigMap, ...) are skipped with a note, because real
//! manifests mix them with workloads; `--strict` turns them into errors. Invalid YAML,
//! documents that are not Kubernetes objects, workloads that do not match their schema and
//! unreadable durations are always errors that name the file and document.

pub mod consumer;
pub mod load;
pub mod rules;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::OutputFormat;
use crate::duration::parse_duration;
use crate::lb_check::model::{MAX_THRESHOLD, Overrides, Preset};
use consumer::{ConsumerConfig, ConsumerKind, ConsumerModel, LbHealthCheck};
use load::{Loaded, ObjectRef, Skipped, UnknownKinds};
use rules::{Finding, RuleConfig, Severity};

/// Flags of `drainwatch audit`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Audit Kubernetes manifests for graceful-shutdown problems",
    long_about = "Reads Kubernetes YAML (multi-document; Pod, Deployment, DaemonSet, \
        StatefulSet, ReplicaSet, Job, CronJob, including kube-apiserver static pods) and checks \
        that terminationGracePeriodSeconds covers preStop sleep + shutdown delay + request \
        timeout, that a preStop sleep leaves the application time after SIGTERM, that the main \
        container keeps serving until its consumers have stopped routing to it, that sidecars \
        have a preStop hook, and that serving containers have a readiness probe. Consumers: \
        --consumer service (the default: kube-proxy, ingress controllers and meshes follow the \
        EndpointSlice, which marks the endpoint terminating when the pod is deleted, so only \
        their propagation time counts) or --consumer lb-health-check (a load balancer that \
        health-checks the pod itself must detect the failure first: give its health check with \
        --lb-preset or --lb-interval/--lb-timeout/--lb-unhealthy-threshold). Per object, the \
        annotations drainwatch.io/consumer (service or lb-health-check) and \
        drainwatch.io/lb-health-check (e.g. \"interval=10s,timeout=5s,unhealthy=2\" or \
        \"preset=aws-nlb\") take precedence over the flags. An in-process shutdown delay can \
        be declared with the pod annotation drainwatch.io/shutdown-delay (and \
        drainwatch.io/request-timeout). An object that knowingly differs waives rules with \
        drainwatch.io/ignore (comma-separated rule ids, e.g. \"drain-window\"): their findings \
        are listed as ignored and do not fail the audit. Other kinds are skipped with a note (errors with \
        --strict). Exit status 0 = no error or warning findings, 1 = findings."
)]
pub struct AuditArgs {
    /// Manifest file to read (repeatable; `-` reads stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,

    /// Time a server (other than kube-apiserver, whose --request-timeout is read) needs to
    /// finish in-flight requests once it stops accepting new ones.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Time consumers need to stop routing once they know the pod is going away (kube-proxy
    /// and ingress controllers applying the EndpointSlice change; a load balancer applying
    /// its health-check verdict).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub propagation_budget: Duration,

    /// Who takes a terminating pod out of rotation, for objects without the
    /// drainwatch.io/consumer annotation: `service` (EndpointSlice consumers; only their
    /// propagation counts) or `lb-health-check` (a load balancer that health-checks the pod
    /// itself; needs --lb-preset or --lb-interval/--lb-timeout/--lb-unhealthy-threshold)
    /// [default: service].
    #[arg(long, value_enum, value_name = "MODEL")]
    pub consumer: Option<ConsumerKind>,

    /// The load balancer's health-check preset, as in `lb-check --preset` (its probe
    /// scheduling and default parameters); the --lb-* values override it.
    #[arg(long, value_enum, value_name = "PRESET")]
    pub lb_preset: Option<Preset>,

    /// The load balancer's health-check interval.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lb_interval: Option<Duration>,

    /// How long one health check waits for an answer.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lb_timeout: Option<Duration>,

    /// Consecutive failed health checks before the load balancer takes the backend out.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_THRESHOLD)))]
    pub lb_unhealthy_threshold: Option<u32>,

    /// Reject kinds that have no pods instead of skipping them.
    #[arg(long)]
    pub strict: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// An audited object and its findings.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectReport {
    /// The object.
    #[serde(flatten)]
    pub object: ObjectRef,
    /// The consumer model its drain window was checked with.
    pub consumer: ConsumerModel,
    /// Its findings.
    pub findings: Vec<Finding>,
    /// Findings of rules the object waives with the `drainwatch.io/ignore` annotation:
    /// reported, not counted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<Finding>,
}

/// The audit of all inputs.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Every workload read, with its findings.
    pub objects: Vec<ObjectReport>,
    /// Documents that were not audited.
    pub skipped: Vec<Skipped>,
    /// Finding counts.
    pub summary: Summary,
    /// No error or warning findings.
    pub pass: bool,
}

/// Finding counts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Errors.
    pub errors: usize,
    /// Warnings.
    pub warnings: usize,
    /// Infos.
    pub infos: usize,
    /// Findings waived by `drainwatch.io/ignore`.
    pub ignored: usize,
}

/// Runs `audit`, printing to stdout. Exit code 0 when there are no error or warning
/// findings, 1 otherwise.
pub fn run(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let pass = run_to(args, &mut std::io::stdin().lock(), &mut stdout.lock())?;
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs `audit` with explicit stdin and stdout; returns whether it passed.
pub fn run_to(args: &AuditArgs, stdin: &mut dyn Read, out: &mut dyn Write) -> anyhow::Result<bool> {
    // Flag errors come before any file is read.
    let cfg = rule_config(args)?;
    let unknown = if args.strict {
        UnknownKinds::Error
    } else {
        UnknownKinds::Skip
    };
    let mut loaded = Loaded::default();
    for path in &args.files {
        let (name, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .context("reading manifests from stdin")?;
            ("<stdin>".to_string(), text)
        } else {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{name}: cannot read manifest"))?;
            (name, text)
        };
        load::load_str(&name, &text, unknown, &mut loaded)?;
    }
    let report = audit(loaded, &cfg)?;
    match args.output {
        OutputFormat::Text => out
            .write_all(render_text(&report).as_bytes())
            .context("writing audit report")?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &report)
                .context("writing audit JSON report")?;
            writeln!(out).context("writing audit JSON report")?;
        }
    }
    Ok(report.pass)
}

/// The rules' settings from the flags; the load balancer's health check is resolved (and
/// checked) once here, with lb-check's presets and math.
pub fn rule_config(args: &AuditArgs) -> anyhow::Result<RuleConfig> {
    let overrides = Overrides {
        interval: args.lb_interval,
        timeout: args.lb_timeout,
        unhealthy_threshold: args.lb_unhealthy_threshold,
        ..Overrides::default()
    };
    let given = args.lb_preset.is_some() || overrides != Overrides::default();
    let lb_health_check = if given {
        let lb = LbHealthCheck::resolve(args.lb_preset, &overrides, |flag| {
            format!("--lb-{}", flag.trim_start_matches('-'))
        })
        .map_err(|e| anyhow::anyhow!("audit: load balancer health check: {e}"))?;
        Some(lb)
    } else {
        None
    };
    if args.consumer == Some(ConsumerKind::LbHealthCheck) && lb_health_check.is_none() {
        anyhow::bail!(
            "audit: --consumer lb-health-check needs the load balancer's health check: \
             --lb-preset, or --lb-interval, --lb-timeout and --lb-unhealthy-threshold"
        );
    }
    Ok(RuleConfig {
        request_timeout: args.request_timeout,
        propagation_budget: args.propagation_budget,
        consumer: ConsumerConfig {
            default: args.consumer,
            lb_health_check,
        },
    })
}

/// Applies the rules to everything loaded (no I/O).
pub fn audit(loaded: Loaded, cfg: &RuleConfig) -> anyhow::Result<AuditReport> {
    let mut objects = Vec::new();
    let mut summary = Summary::default();
    for w in loaded.workloads {
        let context = || {
            format!(
                "{}: document {}: {}",
                w.object.file, w.object.document, w.object
            )
        };
        let consumer = rules::consumer_model(&w.annotations, cfg).with_context(context)?;
        let waived = rules::ignored_rules(&w.annotations).with_context(context)?;
        let (ignored, findings): (Vec<Finding>, Vec<Finding>) =
            rules::audit_pod_with(w.spec_path, &w.annotations, &w.spec, cfg, &consumer)
                .with_context(context)?
                .into_iter()
                .partition(|f| waived.contains(f.rule));
        summary.ignored += ignored.len();
        for f in &findings {
            match f.severity {
                Severity::Error => summary.errors += 1,
                Severity::Warning => summary.warnings += 1,
                Severity::Info => summary.infos += 1,
            }
        }
        objects.push(ObjectReport {
            object: w.object,
            consumer,
            findings,
            ignored,
        });
    }
    Ok(AuditReport {
        objects,
        skipped: loaded.skipped,
        pass: summary.errors == 0 && summary.warnings == 0,
        summary,
    })
}

/// The human report.
pub fn render_text(r: &AuditReport) -> String {
    let mut s = String::new();
    for o in &r.objects {
        for f in &o.findings {
            s.push_str(&format!(
                "{:<7} {}, container {} [{}]\n",
                f.severity.to_string(),
                o.object,
                f.container,
                f.rule
            ));
            s.push_str(&format!(
                "  at:      {} (document {})\n",
                o.object.file, o.object.document
            ));
            s.push_str(&format!("  field:   {} = {}\n", f.field, f.current));
            s.push_str(&format!("  why:     {}\n", f.why));
            s.push_str(&format!("  suggest: {}\n\n", f.suggested));
        }
    }
    for o in &r.objects {
        for f in &o.ignored {
            s.push_str(&format!(
                "ignored {} {}, container {} [{}]: waived by {} on the object\n",
                f.severity,
                o.object,
                f.container,
                f.rule,
                rules::IGNORE_ANNOTATION
            ));
        }
    }
    for sk in &r.skipped {
        s.push_str(&format!(
            "note: {} (document {}): skipped {} {}: {}\n",
            sk.object.file, sk.object.document, sk.api_version, sk.object, sk.reason
        ));
    }
    if r.objects.is_empty() {
        s.push_str(
            "note: no Pod, Deployment, DaemonSet, StatefulSet, ReplicaSet, Job or CronJob found\n",
        );
    }
    let clean = r.objects.iter().filter(|o| o.findings.is_empty()).count();
    let ignored = if r.summary.ignored > 0 {
        format!(", {} ignored", r.summary.ignored)
    } else {
        String::new()
    };
    s.push_str(&format!(
        "{} object(s) audited ({} clean), {} skipped: {} error(s), {} warning(s), {} info{ignored}: {}\n",
        r.objects.len(),
        clean,
        r.skipped.len(),
        r.summary.errors,
        r.summary.warnings,
        r.summary.infos,
        if r.pass { "PASS" } else { "FAIL" }
    ));
    s
}
