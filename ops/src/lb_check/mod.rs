//! `drainwatch lb-check`: worst-case LB detection time against the server's shutdown
//! timing, with the probe timeline.

pub mod model;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::OutputFormat;
use crate::duration::{format_duration, format_millis, parse_duration};
use model::{Assessment, Overrides, Preset, ProbeParams, Scheduling, ShutdownTimes};

/// Flags of `drainwatch lb-check`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Check that a load balancer's health check takes a backend out of service before it stops listening",
    long_about = "Computes the worst-case time t for a load balancer to take a backend out of \
        service after its health endpoint (/readyz) turns red, from the health-check parameters \
        and the platform's probe scheduling, and checks that the load balancer takes the \
        backend out before the listener closes: t < --shutdown-delay, strictly (a tie removes \
        the backend the instant the listener closes, leaving no room for the LB to propagate \
        its verdict). Also checks \
        --termination-grace-period >= --shutdown-delay + --request-timeout. Durations: 10s, \
        1m30s, 500ms or bare seconds. Exit status 0 = pass, 1 = fail."
)]
pub struct LbCheckArgs {
    /// Load balancer whose probe semantics and default parameters to use.
    #[arg(long, value_enum)]
    pub preset: Preset,

    /// Probe interval (AWS interval, GCP check_interval_sec, Azure intervalInSeconds,
    /// HAProxy inter).
    #[arg(long, alias = "inter", value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,

    /// Probe timeout (GCP timeout_sec, HAProxy `timeout check`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Consecutive failed probes before the backend is out of service (HAProxy fall,
    /// Azure probe threshold).
    #[arg(long, alias = "fall", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(model::MAX_THRESHOLD)))]
    pub unhealthy_threshold: Option<u32>,

    /// Interval after a failed probe (HAProxy fastinter); defaults to --interval.
    #[arg(long, alias = "fastinter", value_name = "DURATION", value_parser = parse_duration)]
    pub fast_interval: Option<Duration>,

    /// Override how probes are scheduled (mainly for --preset custom; default fixed).
    #[arg(long, value_enum)]
    pub scheduling: Option<Scheduling>,

    /// Time between /readyz turning red and the server closing its listener
    /// (kube-apiserver --shutdown-delay-duration).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Time in-flight requests get after the listener closed (kube-apiserver
    /// --request-timeout).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// The pod's terminationGracePeriodSeconds; checked against shutdown-delay + request timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub termination_grace_period: Option<Duration>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Runs `lb-check`, printing to stdout. Exit code 0 when every rule holds, 1 otherwise.
pub fn run(args: &LbCheckArgs) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let pass = run_to(args, &mut stdout.lock())?;
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs `lb-check`, writing the report to `out`; returns whether it passed.
pub fn run_to(args: &LbCheckArgs, out: &mut dyn Write) -> anyhow::Result<bool> {
    let assessment = assess_args(args)?;
    match args.output {
        OutputFormat::Text => out
            .write_all(render_text(args.preset, &assessment).as_bytes())
            .context("writing lb-check report")?,
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, &JsonReport::new(args.preset, &assessment))
                .context("writing lb-check JSON report")?;
            writeln!(out).context("writing lb-check JSON report")?;
        }
    }
    Ok(assessment.pass())
}

/// Resolves the flags against the preset and assesses them (no I/O).
pub fn assess_args(args: &LbCheckArgs) -> anyhow::Result<Assessment> {
    let overrides = Overrides {
        interval: args.interval,
        timeout: args.timeout,
        unhealthy_threshold: args.unhealthy_threshold,
        fast_interval: args.fast_interval,
        scheduling: args.scheduling,
    };
    let params = args
        .preset
        .resolve(&overrides)
        .context("lb-check: invalid health-check parameters")?;
    let times = ShutdownTimes {
        shutdown_delay: args.shutdown_delay,
        request_timeout: args.request_timeout,
        grace: args.termination_grace_period,
    };
    Ok(model::assess(params, &times))
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

/// `interval 10s, timeout 10s, unhealthy threshold 2`: the parameters in one line (also
/// used by audit's findings, so both tools name them alike).
pub fn params_line(p: &ProbeParams) -> String {
    let mut s = format!(
        "interval {}, timeout {}, unhealthy threshold {}",
        format_duration(p.interval),
        format_duration(p.timeout),
        p.unhealthy_threshold
    );
    if let Some(fast) = p.fast_interval {
        s.push_str(&format!(", fast interval {}", format_duration(fast)));
    }
    s
}

/// The human report.
pub fn render_text(preset: Preset, a: &Assessment) -> String {
    let mut s = String::new();
    let delay = a.times.shutdown_delay;
    s.push_str(&format!(
        "lb-check: {} ({})\n",
        preset.platform(),
        params_line(&a.params)
    ));
    s.push_str(&format!("  {}\n", preset.semantics(&a.params)));
    for w in preset.warnings() {
        s.push_str(&format!("WARNING: {w}\n"));
    }
    if a.params.scheduling == Scheduling::Fixed && a.params.timeout > a.params.interval {
        s.push_str(
            "WARNING: timeout is longer than the interval: probes overlap, and most platforms \
             reject this configuration\n",
        );
    }
    s.push_str("\nWorst-case timeline (T = SIGTERM; /readyz red at T+0s):\n");
    for e in &a.timeline {
        s.push_str(&format!(
            "  {:<4} T+{:<7} {}\n",
            e.id,
            format_duration(e.at),
            e.what
        ));
    }
    s.push('\n');
    let d = &a.detection_check;
    let detail = if d.pass {
        format!(
            "the LB takes the backend out of service within {}, {} before the server stops \
             listening (shutdown-delay {})",
            format_duration(a.detection),
            format_millis(d.margin_ms),
            format_duration(delay)
        )
    } else if d.margin_ms == 0 {
        format!(
            "worst-case detection {} equals shutdown-delay {} (margin 0s): the LB removes the \
             backend the instant the listener closes; it must take the backend out before \
             the listener closes (detection time < shutdown delay)",
            format_duration(a.detection),
            format_duration(delay)
        )
    } else {
        format!(
            "worst-case detection {} exceeds shutdown-delay {} (margin {}): for up to {} the \
             LB sends new connections to a server that no longer listens",
            format_duration(a.detection),
            format_duration(delay),
            format_millis(d.margin_ms),
            format_millis(-d.margin_ms)
        )
    };
    s.push_str(&format!("{} detection: {detail}\n", verdict(d.pass)));
    if let (Some(g), Some(grace)) = (&a.grace_check, a.times.grace) {
        let grace = format_duration(grace);
        let detail = format!(
            "termination grace period {grace} {} shutdown-delay {} + request timeout {} = {} \
             (margin {}){}",
            if g.pass { ">=" } else { "<" },
            format_duration(delay),
            format_duration(a.times.request_timeout),
            format_duration(a.drain_end()),
            format_millis(g.margin_ms),
            if g.pass {
                ""
            } else {
                ": kubelet SIGKILLs the server while requests may still be in flight"
            }
        );
        s.push_str(&format!("{} grace period: {detail}\n", verdict(g.pass)));
    }
    s.push_str(&format!("{}\n", verdict(a.pass())));
    s
}

#[derive(Serialize)]
struct JsonReport<'a> {
    preset: Preset,
    platform: &'static str,
    semantics: String,
    params: &'a ProbeParams,
    worst_case_detection_seconds: f64,
    shutdown_delay_seconds: f64,
    request_timeout_seconds: f64,
    termination_grace_period_seconds: Option<f64>,
    detection: &'a model::Comparison,
    grace_period: Option<&'a model::Comparison>,
    warnings: Vec<String>,
    timeline: &'a [model::TimelineEvent],
    pass: bool,
}

impl<'a> JsonReport<'a> {
    fn new(preset: Preset, a: &'a Assessment) -> Self {
        JsonReport {
            preset,
            platform: preset.platform(),
            semantics: preset.semantics(&a.params),
            params: &a.params,
            worst_case_detection_seconds: a.detection.as_secs_f64(),
            shutdown_delay_seconds: a.times.shutdown_delay.as_secs_f64(),
            request_timeout_seconds: a.times.request_timeout.as_secs_f64(),
            termination_grace_period_seconds: a.times.grace.map(|g| g.as_secs_f64()),
            detection: &a.detection_check,
            grace_period: a.grace_check.as_ref(),
            warnings: preset.warnings(),
            timeline: &a.timeline,
            pass: a.pass(),
        }
    }
}
