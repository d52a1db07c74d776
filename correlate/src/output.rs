//! The engine's output: per-instance rollout timelines, verdicts with
//! evidence, and Prometheus-friendly summaries. All serde-serializable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Path;

/// Why connections or requests were disrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Cause {
    /// SYNs refused because the instance was not listening, by path
    /// (`LocalHairpin`: a VIP this node holds, as a GCP internal LB
    /// installs it, routed the node's own clients to itself).
    RefusedWhileNotListening {
        /// How the refused connections were routed.
        path: Path,
    },
    /// The LB still sent new connections at or after the listener closed:
    /// its detection time after /readyz turned red was not shorter than the
    /// shutdown delay.
    LbDetectionSlow,
    /// Requests still in flight were cut at the request timeout.
    InflightCutAtTimeout,
    /// Connections cut without draining while shutting down (an HTTP
    /// server's `Close()` instead of a graceful shutdown).
    HardClose,
    /// Connections the kernel had completed but the application never
    /// accepted, reset when the listener closed with them still queued, by
    /// path (through an LB, the client typically gets a 502/503).
    AcceptQueueReset {
        /// How the reset connections were routed.
        path: Path,
    },
    /// A GOAWAY was sent, and requests still failed after it.
    GoawayThenFailed,
    /// Idle connections reset by a middlebox (an LB or NAT that forgot
    /// flows idle longer than its timeout).
    IdleResetByMiddlebox,
    /// SIGKILL before a clean exit, after a SIGTERM: the grace period ran out.
    SigkillAfterGrace,
    /// SIGKILL with no SIGTERM before it: no graceful shutdown at all (the
    /// OOM killer, a force delete with `--grace-period=0`, a runtime kill).
    /// Serialized as its metric label, `killed_without_sigterm`.
    #[serde(rename = "killed_without_sigterm")]
    KilledWithoutTerm,
    /// Failed probe requests that no instance's lifecycle explains.
    Unexplained,
}

impl Cause {
    /// Every value [`Cause::label`] gives, so exporters can start each
    /// series at zero (alerts then see a zero, not an absent series).
    pub const LABELS: &'static [&'static str] = &[
        "refused_local_hairpin",
        "refused_via_lb",
        "refused_direct",
        "refused_unknown_path",
        "lb_detection_slow",
        "inflight_cut_at_timeout",
        "hard_close",
        "accept_queue_reset",
        "goaway_then_failed",
        "idle_reset_by_middlebox",
        "sigkill_after_grace",
        "killed_without_sigterm",
        "unexplained",
    ];

    /// A bounded label value for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Cause::RefusedWhileNotListening { path } => match path {
                Path::LocalHairpin => "refused_local_hairpin",
                Path::ViaLb => "refused_via_lb",
                Path::Direct => "refused_direct",
                Path::Unknown => "refused_unknown_path",
            },
            Cause::LbDetectionSlow => "lb_detection_slow",
            Cause::InflightCutAtTimeout => "inflight_cut_at_timeout",
            Cause::HardClose => "hard_close",
            Cause::AcceptQueueReset { .. } => "accept_queue_reset",
            Cause::GoawayThenFailed => "goaway_then_failed",
            Cause::IdleResetByMiddlebox => "idle_reset_by_middlebox",
            Cause::SigkillAfterGrace => "sigkill_after_grace",
            Cause::KilledWithoutTerm => "killed_without_sigterm",
            Cause::Unexplained => "unexplained",
        }
    }
}

/// A number the verdict measured, with what it is checked against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Measured {
    /// Seconds the instance refused connections after its listener closed.
    NotListening {
        /// Last refusal minus listener close (or first refusal).
        seconds: f64,
    },
    /// The LB's detection time: from /readyz turning red to the last new
    /// connection through the LB.
    LbDetection(LbDetection),
    /// Seconds from listener close to the cut.
    RequestTimeout {
        /// Observed: from the listener close to the cut.
        seconds: f64,
        /// The configured request timeout, when known.
        configured_s: Option<f64>,
    },
    /// Middlebox idle timeout inferred from the silences the resets ended.
    IdleTimeout {
        /// The shortest silence a middlebox reset ended: the timeout is at
        /// most this (a reset answering a later packet ends a longer one).
        inferred_s: f64,
        /// The longest silence in the cluster.
        max_silence_s: f64,
        /// Resets on flows without keepalive.
        without_keepalive: u64,
        /// Resets on flows whose keepalive is known to be on.
        with_keepalive: u64,
    },
    /// The grace period actually given (SIGKILL - SIGTERM).
    Grace {
        /// Seconds, when SIGTERM was seen.
        seconds: Option<f64>,
        /// The configured grace period.
        configured_s: Option<f64>,
    },
}

/// The LB's detection time `t`: how long after /readyz turned red the LB
/// still sent new connections. It must be shorter than the shutdown delay
/// (/readyz red to listener close).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbDetection {
    /// Seconds from /readyz red to the last new connection or refusal
    /// through the LB, `None` when not measurable.
    pub t_s: Option<f64>,
    /// `t` is a lower bound: the LB was still sending `t` after /readyz red.
    pub lower_bound: bool,
    /// /readyz red to listener close: observed, or the configured shutdown delay.
    pub shutdown_delay_s: Option<f64>,
    /// `t` shorter than the shutdown delay, when both are known.
    pub holds: Option<bool>,
    /// The health check's worst case (interval x threshold + timeout), when configured.
    pub hc_worst_case_s: Option<f64>,
    /// Why `t` could not be measured, or how it was.
    pub note: String,
    /// The observations `t` was measured from.
    pub evidence: Vec<u64>,
}

/// One classified disruption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Why.
    #[serde(flatten)]
    pub cause: Cause,
    /// The instance, when it could be attributed.
    pub instance: Option<String>,
    /// Which of the instance's timelines (index into its cycles), if any.
    pub cycle: Option<usize>,
    /// First and last evidence time, ns.
    pub window: (u64, u64),
    /// Wall-clock of the window's ends, when the input had it.
    pub window_wall: (Option<String>, Option<String>),
    /// Connections or requests disrupted (distinct attempts; the same
    /// attempt seen by the kernel and by the prober counts once).
    pub count: u64,
    /// Evidence ids, ascending.
    pub evidence: Vec<u64>,
    /// What happened, in one sentence, pointing at the fix.
    pub sentence: String,
    /// The fix on its own.
    pub fix: String,
    /// What was measured.
    pub measured: Option<Measured>,
    /// The workloads on this node whose connections it counts, most hurt
    /// first, when the kernel named their owners (client side); at most
    /// [`AFFECTED_MAX`], the rest in `affected_more`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affected: Vec<Affected>,
    /// Workloads hurt beyond the listed ones.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub affected_more: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How many workloads a verdict lists by name.
pub const AFFECTED_MAX: usize = 16;

/// A workload a verdict hurt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Affected {
    /// Its name ([`crate::Workload::name`]): `pod NS/NAME`, `process COMM`, ...
    pub workload: String,
    /// The pod's namespace, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's name, when known (with `namespace`, the object to tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's uid, when known (what a Kubernetes Event's `regarding`
    /// names besides the pod's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The programs (command names) whose connections were hurt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<String>,
    /// Connections or requests of it the verdict counts.
    pub count: u64,
    /// Idle resets: how many of those connections had no TCP keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub without_keepalive: Option<u64>,
}

impl Verdict {
    /// Seconds the disruption lasted (window length).
    pub fn seconds(&self) -> f64 {
        (self.window.1.saturating_sub(self.window.0)) as f64 / 1e9
    }

    /// One readable line.
    pub fn line(&self) -> String {
        let when = self
            .window_wall
            .0
            .clone()
            .unwrap_or_else(|| format!("t={:.3}s", self.window.0 as f64 / 1e9));
        format!(
            "{when} {} [{}] {}",
            self.cause.label(),
            self.instance.as_deref().unwrap_or("-"),
            self.sentence
        )
    }
}

/// A lifecycle phase of one instance's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// SIGTERM: the graceful shutdown starts.
    Sigterm,
    /// /readyz red: load balancers should stop sending.
    ReadyzRed,
    /// /healthz red.
    HealthzRed,
    /// Pod left Running.
    PodNotRunning,
    /// The listener closed: new connections are refused.
    ListenerClosed,
    /// GOAWAY sent (graceful).
    GoawaySent,
    /// In-flight requests finished before exit.
    Drained,
    /// In-flight requests cut.
    RequestsCut,
    /// SIGKILL.
    Sigkill,
    /// The process exited.
    Exit,
    /// A new listener.
    ListeningAgain,
    /// Pod Running again.
    PodRunning,
    /// /readyz green again.
    Ready,
}

impl PhaseKind {
    /// Every phase, in the order a rollout goes through them.
    pub const ALL: [PhaseKind; 13] = [
        PhaseKind::Sigterm,
        PhaseKind::ReadyzRed,
        PhaseKind::HealthzRed,
        PhaseKind::PodNotRunning,
        PhaseKind::ListenerClosed,
        PhaseKind::GoawaySent,
        PhaseKind::Drained,
        PhaseKind::RequestsCut,
        PhaseKind::Sigkill,
        PhaseKind::Exit,
        PhaseKind::ListeningAgain,
        PhaseKind::PodRunning,
        PhaseKind::Ready,
    ];

    /// Its 1-based position in [`PhaseKind::ALL`]: the number the
    /// `drainwatch_lifecycle_phase` gauge carries (a match, so that a new
    /// phase cannot be forgotten here).
    pub fn number(self) -> usize {
        match self {
            PhaseKind::Sigterm => 1,
            PhaseKind::ReadyzRed => 2,
            PhaseKind::HealthzRed => 3,
            PhaseKind::PodNotRunning => 4,
            PhaseKind::ListenerClosed => 5,
            PhaseKind::GoawaySent => 6,
            PhaseKind::Drained => 7,
            PhaseKind::RequestsCut => 8,
            PhaseKind::Sigkill => 9,
            PhaseKind::Exit => 10,
            PhaseKind::ListeningAgain => 11,
            PhaseKind::PodRunning => 12,
            PhaseKind::Ready => 13,
        }
    }

    /// Bounded label value.
    pub fn label(self) -> &'static str {
        match self {
            PhaseKind::Sigterm => "sigterm",
            PhaseKind::ReadyzRed => "readyz_red",
            PhaseKind::HealthzRed => "healthz_red",
            PhaseKind::PodNotRunning => "pod_not_running",
            PhaseKind::ListenerClosed => "listener_closed",
            PhaseKind::GoawaySent => "goaway_sent",
            PhaseKind::Drained => "drained",
            PhaseKind::RequestsCut => "requests_cut",
            PhaseKind::Sigkill => "sigkill",
            PhaseKind::Exit => "exit",
            PhaseKind::ListeningAgain => "listening_again",
            PhaseKind::PodRunning => "pod_running",
            PhaseKind::Ready => "ready",
        }
    }
}

/// When a phase happened and how we know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Which phase.
    pub kind: PhaseKind,
    /// When, ns.
    pub t_ns: u64,
    /// Wall clock, when known.
    pub wall: Option<String>,
    /// Not observed but inferred from other evidence (see `note`).
    pub inferred: bool,
    /// The observations behind it.
    pub evidence: Vec<u64>,
    /// How it was inferred.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One rollout of one instance: SIGTERM -> /readyz red -> listener closed ->
/// drained or cut -> exit -> listening again -> ready.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// The instance.
    pub instance: String,
    /// Index of this rollout among the instance's rollouts.
    pub cycle: usize,
    /// Phases in time order.
    pub phases: Vec<Phase>,
    /// Ended with the instance ready (or listening, without a poller) again.
    pub complete: bool,
    /// The LB's detection time for this rollout.
    pub lb_detection: Option<LbDetection>,
    /// GOAWAY frames sent during the rollout (graceful ones included).
    pub goaways: Vec<u64>,
}

impl Timeline {
    /// The phase, if present.
    pub fn phase(&self, kind: PhaseKind) -> Option<&Phase> {
        self.phases.iter().find(|p| p.kind == kind)
    }
}

/// Totals for one cause, for `drainwatch_disruptions_total{cause}` and
/// `drainwatch_disruption_seconds_total{cause}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CauseTotals {
    /// Verdicts with this cause.
    pub verdicts: u64,
    /// Sum of their counts (disrupted connections or requests).
    pub disruptions: u64,
    /// Sum of their window lengths, seconds.
    pub seconds: f64,
}

/// A gauge sample with instance and phase labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseGauge {
    /// Instance label.
    pub instance: String,
    /// Phase label ([`PhaseKind::label`]).
    pub phase: String,
    /// When, ns on the input's axis.
    pub t_ns: u64,
    /// Wall clock, when known.
    pub wall: Option<String>,
    /// Inferred rather than observed.
    pub inferred: bool,
}

/// Prometheus-friendly view of a report. The totals are recomputed from all
/// input, so they only grow as observations arrive in order; a late
/// observation can reclassify (export them as gauges or take the max).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Per cause label.
    pub by_cause: BTreeMap<String, CauseTotals>,
    /// Latest measured LB detection time per instance, seconds.
    pub lb_detection_seconds: BTreeMap<String, f64>,
    /// Phases of each instance's latest rollout.
    pub phases: Vec<PhaseGauge>,
}

/// Counts about the input itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputStats {
    /// Distinct observations.
    pub observations: u64,
    /// Dropped as duplicates (same id).
    pub duplicates: u64,
    /// Failed probe requests no instance could be found for.
    pub unattributed: u64,
    /// Arrived older than the engine's compaction horizon, ignored.
    pub late: u64,
    /// Accepted connections not through an LB: counted, not kept (only an
    /// LB's arrivals after an instance went unready matter).
    #[serde(default)]
    pub direct_arrivals: u64,
    /// Kernel-observed connection closes outside every rollout, forgotten
    /// (a long-running engine only: they never make a verdict).
    #[serde(default)]
    pub pruned_closes: u64,
    /// Archived rollouts no longer listed (a long-running engine keeps the
    /// latest [`crate::ARCHIVE_TIMELINES`] and each instance's last); their
    /// verdicts still count in the summary.
    #[serde(default)]
    pub forgotten_timelines: u64,
    /// Archived verdicts no longer listed (beyond
    /// [`crate::ARCHIVE_VERDICTS`]); counted in the summary's totals.
    #[serde(default)]
    pub forgotten_verdicts: u64,
}

/// Everything the engine concluded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Rollouts, by instance then time.
    pub timelines: Vec<Timeline>,
    /// Verdicts, by time.
    pub verdicts: Vec<Verdict>,
    /// Metric-friendly totals.
    pub summary: Summary,
    /// About the input.
    pub stats: InputStats,
}
