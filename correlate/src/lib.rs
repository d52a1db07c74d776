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
//! A SIGKILL ends a grace period only if a SIGTERM started one. Evidence
//! of a SIGTERM, in this order: the signal itself (`signal:signal_generate`);
//! /readyz observed turning red before the kill (kube-apiserver does so on
//! SIGTERM; only when the process then went down, so not a flap); the
//! listener observed closing more than 50 ms before the kill (a dying
//! process's own teardown closes it just after the kill, so a close before
//! it is the process shutting down). With no kill, an exit on signal 15
//! counts too. Evidence more than the configured grace period (+`tol`)
//! before the kill is not this kill's SIGTERM: whoever sent a SIGTERM kills
//! at the end of the grace period, not later. An inferred SIGTERM is put
//! at its evidence, the latest it can have been, so the grace period it
//! gives is a lower bound (the sentence says "at least"). Nothing else
//! infers one: a SIGKILL without such evidence is
//! [`Cause::KilledWithoutTerm`], never a grace period measured from a
//! guess. Blind spots: /readyz red for another reason (etcd unreachable,
//! an overloaded apiserver) within the grace period before an unannounced
//! kill makes it look announced; a SIGTERM to a process drainwatch does
//! not watch (neither `--watch-comm` nor a watched listener's owner) that
//! the process ignored, with no poller, leaves no trace, so the kill that
//! follows looks unannounced; a pcap has no signals at all.
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
//! The engine classifies each connection itself ([`Config::classify`])
//! unless the adapter set a path: a VIP this node holds ([`Config::local_vips`])
//! dialled from this node is the local hairpin (a GCP internal LB installs its
//! VIP on the node itself); another VIP, or
//! a source in [`Config::lb_addrs`] (a proxying LB), is via the LB; this
//! node's own address is direct. LBs that preserve the client address and
//! dial the node address directly (AWS NLB instance targets) look direct
//! unless the adapter sets the path.
//!
//! # LB health checks
//! An LB's own health-check connections are not client traffic and are
//! neither refusals to report nor arrivals for t: connections from
//! [`Config::health_check_sources`], and, when [`Config::health_check`] is
//! known, the trailing run of arrivals via the LB at least half an interval
//! apart once the LB took the instance out (plus the check one interval
//! before that run). Client traffic sparser than one connection per half
//! check interval cannot be told from checks.
//!
//! # Causes and thresholds
//! `tol` is [`Config::tolerance_s`] (default 1 s).
//! - [`Cause::RefusedWhileNotListening`]: every refused SYN (kernel
//!   `refused`, server `NO_SOCKET` RST, client RST in SYN_SENT, prober
//!   `refused`), one attempt per client address within `tol` (the kernel
//!   and the prober, or both ends of a local connection, count once),
//!   grouped by instance, rollout and path. Window: listener close to
//!   the last refusal.
//! - [`Cause::LbDetectionSlow`]: t = time from /readyz red to the last new
//!   connection (accepted or refused) arriving via the LB after it (a lower
//!   bound on the LB's detection time). The listener close is the observed
//!   one, else /readyz red + the configured shutdown delay. The verdict is
//!   given when t is not shorter than that shutdown delay, i.e. something
//!   arrived via the LB at or after the listener closed; otherwise t is
//!   recorded in the timeline. No arrival after /readyz red, or the
//!   listener closed before it (killed): "not measurable", said in the
//!   timeline.
//!   A /readyz flap without a shutdown is not measured.
//! - Cuts are strong or weak. Strong: a server close with a request
//!   outstanding (the kernel saw the client's data last), a server close
//!   while its response was streaming ([`Obs::StreamCut`]: with the wire
//!   observer, the server kept sending payloads above 128 bytes for over a
//!   second after the client's last payload above 40 bytes, i.e. a watch;
//!   blind spots: a watch quiet since its first events, a multiplexed
//!   HTTP/2 connection whose client keeps sending requests, and a slow
//!   response sent in bursts over a second then closed idle), a deliberate
//!   abort (`TCP_ABORT_ON_CLOSE`) of an open connection, a failed prober
//!   request other than refused and GOAWAY (5xx included). Weak: an RST
//!   over unread data (`TCP_ABORT_ON_DATA`), an abort in a close already
//!   under way, an RST a local client got: graceful closes do these too
//!   (an idle connection closed while the client's TLS close_notify was
//!   unread), so weak cuts alone are never a disruption. In order:
//!   at SIGKILL (kernel evidence from 50 ms before it until 50 ms after
//!   the exit; prober evidence within `tol`) -> [`Cause::SigkillAfterGrace`]
//!   or [`Cause::KilledWithoutTerm`];
//!   within max(`tol`, 5 %) of listener close + request timeout ->
//!   [`Cause::InflightCutAtTimeout`]; a prober failure after a GOAWAY ->
//!   [`Cause::GoawayThenFailed`]; once the instance listens again -> the
//!   new process's traffic, ignored; with no configured timeout, within
//!   `tol` of a clean exit after a drain -> InflightCutAtTimeout; strong
//!   kernel evidence from 50 ms before the listener close until 50 ms after
//!   the exit ->
//!   [`Cause::HardClose`] (before: the server was serving as usual);
//!   prober failures within `tol` of the listener close or later in the
//!   shutdown ->
//!   HardClose. Kernel cuts outside these are ordinary client aborts and
//!   ignored; prober failures nothing explains -> [`Cause::Unexplained`].
//! - [`Cause::AcceptQueueReset`]: every connection the apiserver's kernel
//!   reset while it was still in the listener's accept queue (completed by
//!   the kernel, never accepted by the application: the RST's socket has
//!   no `struct socket` and is ESTABLISHED or CLOSE_WAIT), one per
//!   connection, grouped by instance, rollout and path. Window: listener
//!   close to the last reset. Blind spots: kernels whose BTF lacks
//!   `sock.sk_socket` give no such evidence, and a pcap cannot tell a
//!   queued connection from an accepted one.
//! - [`Cause::SigkillAfterGrace`]: one per rollout with a SIGKILL (observed
//!   or inferred) after evidence of a SIGTERM (above), grace = SIGKILL -
//!   SIGTERM, count = what it cut.
//! - [`Cause::KilledWithoutTerm`]: one per rollout with a SIGKILL and no
//!   evidence of a SIGTERM before it (the OOM killer, a force delete with
//!   `--grace-period=0`, a liveness kill, a runtime kill), count = what it
//!   cut; the sentence names the sender's pid when the signal was seen.
//! - [`Cause::GoawayThenFailed`]: also every prober request that failed
//!   with a GOAWAY error. A GOAWAY alone is graceful: a timeline phase.
//! - [`Cause::IdleResetByMiddlebox`]: wire resets with origin middlebox,
//!   and unprovoked peer resets from a proxying LB (`lb_addrs`: HAProxy,
//!   Azure SLB with TCP reset; after at least 1 s of silence), per instance; the inferred idle timeout is the shortest silence ended
//!   by a reset sent at the timeout (resets answering a later packet only
//!   bound it from above and are used only when there is nothing else);
//!   the cluster is the silences within 10 % (+`tol`) of it; flows without
//!   keepalive, and keepalives slower than the timeout, are named.
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
    Source,
};
pub use output::{
    Cause, CauseTotals, InputStats, LbDetection, Measured, Phase, PhaseGauge, PhaseKind, Report,
    Summary, Timeline, Verdict,
};
pub use time::rfc3339;

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
