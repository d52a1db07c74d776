//! drainwatch correlation engine: observations of an apiserver rollout in,
//! per-instance timelines and verdicts with evidence out.
//!
//! Pure and deterministic: no I/O, no clocks, no randomness. Time is what
//! the input says (`t_ns` on one monotonic axis, plus an optional wall-clock
//! string carried through). The same code runs live ([`Engine::push`] as
//! events arrive) and offline ([`analyze`] on a recording), with identical
//! results for the same set of observations.
//!
//! # Timelines
//! Per instance, each rollout is SIGTERM -> /readyz red -> listener
//! closed -> drained or requests cut -> exit -> listening again -> ready.
//! Input may be reordered (it is sorted by `(t_ns, id)`), duplicated
//! (deduplicated by id) or incomplete: a phase that was not observed is
//! inferred only from evidence that implies it, and marked `inferred` with
//! a note (SIGTERM as the next section says; /readyz red at SIGTERM when
//! there is no poller; the listener close from the first refused SYN or
//! the exit; SIGKILL from an exit on signal 9).
//!
//! # SIGTERM before a SIGKILL
//! A SIGKILL ends a grace period only if a SIGTERM started one: the
//! signal, /readyz turning red, or the listener closing before the kill
//! is evidence of one; without it the kill is
//! [`Cause::KilledWithoutTerm`]. The rule and its blind spots are in
//! `src/engine/infer.rs`.
//!
//! # Attribution
//! Observations without an instance take [`Config::default_instance`] when
//! they come from a node-local source (kernel, poller, Kubernetes API) and
//! are about this node's apiserver (for client-side refusals: the dialled
//! address is local, see [`Config::is_local_server`]). Others (prober,
//! wire, remote servers) go to the one instance whose rollout explains them
//! at that time: for refusals, an instance that was not listening; for
//! other failures, one that was shutting down. When none or several fit,
//! they stay unattributed (failed probes counted in
//! [`InputStats::unattributed`]).
//!
//! # Paths
//! The engine classifies each connection itself ([`Config::classify`],
//! which says what it cannot tell apart) unless the adapter set a path: a
//! VIP this node holds ([`Config::local_vips`]) dialled from this node is
//! the local hairpin (a GCP internal LB installs its VIP on the node
//! itself); another VIP, or a source in [`Config::lb_addrs`] (a proxying
//! LB), is via the LB; this node's own address is direct.
//!
//! # Causes
//! Each cause is decided in its own module under `src/engine/causes/`,
//! which holds its rule, the blind spots of that rule and the sentence its
//! verdict says; `tol` there is [`Config::tolerance_s`] (default 1 s).
//!
//! | cause | module |
//! |---|---|
//! | [`Cause::RefusedWhileNotListening`] | `refused.rs` |
//! | [`Cause::AcceptQueueReset`] | `accept_queue.rs` |
//! | [`Cause::LbDetectionSlow`], and which arrivals are the LB's health checks | `lb_detection.rs` |
//! | cuts (strong or weak), sorted in order among the causes below | `cuts.rs` |
//! | [`Cause::InflightCutAtTimeout`] | `timeout_cut.rs` |
//! | [`Cause::GoawayThenFailed`] | `goaway.rs` |
//! | [`Cause::HardClose`] | `hard_close.rs` |
//! | [`Cause::SigkillAfterGrace`], [`Cause::KilledWithoutTerm`] | `sigkill.rs` |
//! | [`Cause::IdleResetByMiddlebox`] (the rule itself is [`idle::infer`]) | `idle_reset.rs` |
//! | [`Cause::Unexplained`] | `unexplained.rs` |
//!
//! The stages before them (`src/engine/`): `cycle.rs` builds each
//! instance's rollouts, `attribute.rs` gives each observation its
//! instance, rollout and path, `infer.rs` fills in phases not observed;
//! `compute` in `mod.rs` runs them in that order.
//!
//! # Memory
//! [`Engine`] keeps the observations since its horizon and recomputes on
//! demand; [`Engine::compact`] freezes finished rollouts into an archive
//! (never splitting one) so a daemon's memory stays bounded.

mod config;
mod engine;
pub mod idle;
mod model;
mod output;
mod text;
mod time;

#[cfg(test)]
mod tests;

pub use config::{Cidr, Config, ConfigError, HealthCheck};
pub use engine::{ARCHIVE_TIMELINES, ARCHIVE_VERDICTS, Engine, analyze};
pub use model::{
    Direction, Keepalive, Obs, Observation, Path, ProbeMode, ProbeOutcome, ResetOrigin, Signal,
    Source, Workload,
};
pub use output::{
    Affected, Cause, CauseTotals, InputStats, LbDetection, Measured, Phase, PhaseGauge, PhaseKind,
    Report, Summary, Timeline, Verdict,
};
pub use time::{parse_rfc3339, rfc3339};

/// A line of a recording that is not an observation.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: not an observation: {source}")]
pub struct InputError {
    /// 1-based line number.
    pub line: usize,
    /// What serde said.
    #[source]
    pub source: serde_json::Error,
}

/// The first line of a recording `drainwatch run --record` writes: the
/// engine configuration the live verdicts came from, so `analyze` of the
/// file reproduces them without repeating every flag.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordingHeader {
    /// Format version of the recording (1).
    pub drainwatch_recording: u32,
    /// The live engine's configuration.
    pub config: Config,
}

/// A parsed recording: its header, if it has one, and its observations.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The live configuration, from the header line.
    pub header: Option<RecordingHeader>,
    /// Observations, in file order.
    pub observations: Vec<Observation>,
}

/// Parses a recording: an optional [`RecordingHeader`] line, then one JSON
/// [`Observation`] per line, blank lines ignored. Stops at the first bad
/// line, naming it: never a partial silent result.
pub fn parse_recording(text: &str) -> Result<Recording, InputError> {
    let mut rec = Recording::default();
    for (n, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        if rec.header.is_none()
            && rec.observations.is_empty()
            && l.trim_start().starts_with("{\"drainwatch_recording\"")
        {
            let h: RecordingHeader = serde_json::from_str(l).map_err(|source| InputError {
                line: n + 1,
                source,
            })?;
            rec.header = Some(h);
            continue;
        }
        let o = serde_json::from_str(l).map_err(|source| InputError {
            line: n + 1,
            source,
        })?;
        rec.observations.push(o);
    }
    Ok(rec)
}

/// Parses a recording's observations (see [`parse_recording`]; a header
/// line is accepted and skipped).
pub fn parse_jsonl(text: &str) -> Result<Vec<Observation>, InputError> {
    parse_recording(text).map(|r| r.observations)
}
