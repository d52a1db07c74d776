//! The analysis: observations in, timelines and verdicts out.
//!
//! Deterministic by construction: the input is deduplicated by id and
//! sorted by `(t_ns, id)` before anything looks at it, every map is a
//! `BTreeMap`, and the incremental [`Engine`] recomputes from the same set
//! the batch [`analyze`] sees, so both agree whatever the arrival order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::config::{Config, ConfigError, secs_to_ns};
use crate::model::{Keepalive, Obs, Observation, Path, ProbeOutcome, ResetOrigin, Signal};
use crate::output::{
    Cause, CauseTotals, InputStats, LbDetection, Measured, Phase, PhaseGauge, PhaseKind, Report,
    Summary, Timeline, Verdict,
};
use crate::text;

/// Kernel reset reasons that mean the server aborted a connection (data
/// left unread, `SO_LINGER 0`, memory): a cut, not a refusal.
/// Shortest silence after which an unprovoked RST from a proxying LB counts
/// as its idle timeout (LB idle timeouts are seconds to hours).
const LB_IDLE_MIN_S: f64 = 1.0;

const ABORT_REASONS: &[&str] = &[
    "TCP_ABORT_ON_CLOSE",
    "TCP_ABORT_ON_DATA",
    "TCP_ABORT_ON_LINGER",
    "TCP_ABORT_ON_MEMORY",
];

/// The incremental engine: push observations as they come, ask for
/// verdicts and timelines at any time.
///
/// It keeps every observation after its compaction horizon and recomputes
/// the report from them when asked after a change (so it equals [`analyze`]
/// on the same set). [`Engine::compact`] bounds memory for a long-running
/// daemon: finished rollouts are frozen into an archive and their
/// observations dropped.
#[derive(Debug, Clone)]
pub struct Engine {
    config: Config,
    obs: BTreeMap<u64, Observation>,
    duplicates: u64,
    /// Accepted connections not routed through an LB: counted, not kept.
    direct_arrivals: u64,
    /// Connection closes outside every rollout, forgotten.
    pruned_closes: u64,
    cache: Option<Report>,
    archive: Archive,
    /// At most this many archived rollouts and verdicts are kept as such.
    archive_limits: (usize, usize),
}

/// Archived rollouts kept whole (each instance's latest is always kept).
pub const ARCHIVE_TIMELINES: usize = 256;
/// Archived verdicts kept whole; older ones only count in the totals.
pub const ARCHIVE_VERDICTS: usize = 1024;

/// What compaction froze.
#[derive(Debug, Clone, Default)]
struct Archive {
    /// Observations before this were compacted away.
    horizon: u64,
    timelines: Vec<Timeline>,
    verdicts: Vec<Verdict>,
    /// Archived rollouts per instance: the live ones are numbered after them.
    cycles: BTreeMap<String, usize>,
    /// Instances a /readyz poller reported for (it changes how rollouts end).
    readyz_seen: BTreeSet<String>,
    observations: u64,
    unattributed: u64,
    late: u64,
    /// Totals of verdicts dropped from `verdicts` (over the limit), so the
    /// summary, and the counters exported from it, never go down.
    folded: BTreeMap<String, CauseTotals>,
    /// The latest LB detection time per instance among dropped rollouts.
    folded_lb: BTreeMap<String, f64>,
    forgotten_timelines: u64,
    forgotten_verdicts: u64,
}

impl Archive {
    /// Drops the oldest rollouts and verdicts beyond the limits, keeping
    /// their totals and each instance's latest rollout.
    fn trim(&mut self, (max_timelines, max_verdicts): (usize, usize)) {
        if self.timelines.len() > max_timelines {
            let mut latest: BTreeMap<&str, usize> = BTreeMap::new();
            for (i, t) in self.timelines.iter().enumerate() {
                latest.insert(&t.instance, i);
            }
            let keep: BTreeSet<usize> = latest.into_values().collect();
            let mut excess = self.timelines.len() - max_timelines;
            let mut kept = Vec::with_capacity(max_timelines + keep.len());
            for (i, t) in std::mem::take(&mut self.timelines).into_iter().enumerate() {
                if excess > 0 && !keep.contains(&i) {
                    excess -= 1;
                    self.forgotten_timelines += 1;
                    if let Some(x) = t.lb_detection.as_ref().and_then(|d| d.t_s) {
                        self.folded_lb.insert(t.instance.clone(), x);
                    }
                    continue;
                }
                kept.push(t);
            }
            self.timelines = kept;
        }
        if self.verdicts.len() > max_verdicts {
            let excess = self.verdicts.len() - max_verdicts;
            for v in self.verdicts.drain(..excess) {
                let e = self.folded.entry(v.cause.label().to_string()).or_default();
                e.verdicts += 1;
                e.disruptions += v.count;
                e.seconds += v.seconds();
                self.forgotten_verdicts += 1;
            }
        }
    }
}

impl Engine {
    /// An engine with this configuration.
    pub fn new(config: Config) -> Result<Engine, ConfigError> {
        config.validate()?;
        Ok(Engine {
            config,
            obs: BTreeMap::new(),
            duplicates: 0,
            direct_arrivals: 0,
            pruned_closes: 0,
            cache: None,
            archive: Archive::default(),
            archive_limits: (ARCHIVE_TIMELINES, ARCHIVE_VERDICTS),
        })
    }

    /// How many archived rollouts and verdicts compaction keeps whole
    /// (defaults [`ARCHIVE_TIMELINES`], [`ARCHIVE_VERDICTS`]); older ones
    /// only count in the summary's totals and in the report's stats.
    pub fn set_archive_limits(&mut self, timelines: usize, verdicts: usize) {
        self.archive_limits = (timelines, verdicts);
    }

    /// Adds one observation; returns false when it is not used: a
    /// duplicate id, or older than the compaction horizon (counted as
    /// late). Of two observations with one id the earlier `t_ns` is kept,
    /// so the result does not depend on which copy came first.
    pub fn push(&mut self, o: Observation) -> bool {
        // Only arrivals through an LB say anything (the LB still sending new
        // connections after the instance went unready); on a busy server the
        // others are most observations, so they are counted and dropped
        // here rather than held and walked every report.
        if let Obs::Accepted {
            client,
            server,
            path,
        } = &o.kind
            && path.unwrap_or_else(|| self.config.classify(client, server)) != Path::ViaLb
        {
            self.direct_arrivals += 1;
            if let Some(r) = &mut self.cache {
                r.stats.direct_arrivals = self.direct_arrivals;
            }
            return false;
        }
        if o.t_ns < self.archive.horizon {
            self.archive.late += 1;
            self.cache = None;
            return false;
        }
        match self.obs.get(&o.id) {
            Some(old) => {
                self.duplicates += 1;
                if o.t_ns < old.t_ns {
                    self.obs.insert(o.id, o);
                }
                self.cache = None;
                false
            }
            None => {
                self.obs.insert(o.id, o);
                self.cache = None;
                true
            }
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Observations held (not yet compacted away).
    pub fn len(&self) -> usize {
        self.obs.len()
    }

    /// No observations held.
    pub fn is_empty(&self) -> bool {
        self.obs.is_empty()
    }

    /// Observations older than this are no longer accepted.
    pub fn horizon_ns(&self) -> u64 {
        self.archive.horizon
    }

    /// Everything concluded from what was pushed so far.
    pub fn report(&mut self) -> &Report {
        let (config, obs, duplicates, archive) =
            (&self.config, &self.obs, self.duplicates, &self.archive);
        let (direct, pruned) = (self.direct_arrivals, self.pruned_closes);
        self.cache.get_or_insert_with(|| {
            let live = compute(config, obs.values(), duplicates, &archive.readyz_seen);
            let mut r = merge(archive, live);
            r.stats.direct_arrivals = direct;
            r.stats.pruned_closes = pruned;
            r
        })
    }

    /// The verdicts so far.
    pub fn verdicts(&mut self) -> &[Verdict] {
        &self.report().verdicts
    }

    /// The timelines so far.
    pub fn timelines(&mut self) -> &[Timeline] {
        &self.report().timelines
    }

    /// Metric-friendly totals so far.
    pub fn summary(&mut self) -> &Summary {
        &self.report().summary
    }

    /// Freezes what happened before `keep_after_ns` and drops its
    /// observations, so memory stays bounded. The cut moves earlier so that
    /// it never splits a rollout (one still in progress, or ending at or
    /// after `keep_after_ns`, keeps all its observations); verdicts without
    /// a rollout (idle resets, unattributed failures) are split at the cut,
    /// each observation counted once. Observations older than the cut that
    /// arrive later are counted as late and ignored. Returns how many
    /// observations were dropped.
    pub fn compact(&mut self, keep_after_ns: u64) -> usize {
        let tol = self.config.tolerance_ns();
        let mut cut = keep_after_ns;
        if cut <= self.archive.horizon {
            return 0;
        }
        let archived_cycles = self.archive.cycles.clone();
        for t in &self.report().timelines {
            let archived = archived_cycles.get(&t.instance).copied().unwrap_or(0);
            if t.cycle < archived {
                continue;
            }
            let start = t.phases.iter().map(|p| p.t_ns).min().unwrap_or(0);
            let end = t.phases.iter().map(|p| p.t_ns).max().unwrap_or(0);
            // Leave room for connection evidence just around the rollout.
            if !t.complete || end.saturating_add(tol) >= keep_after_ns {
                cut = cut.min(start.saturating_sub(tol));
            }
        }
        if cut <= self.archive.horizon {
            return 0;
        }
        let before: Vec<Observation> = self
            .obs
            .values()
            .filter(|o| o.t_ns < cut)
            .cloned()
            .collect();
        if before.is_empty() {
            self.archive.horizon = cut;
            return 0;
        }
        let pre = compute(&self.config, before.iter(), 0, &self.archive.readyz_seen);
        let pre = offset(&self.archive, pre);
        for o in &before {
            if matches!(o.kind, Obs::ReadyzChanged { .. })
                && let Some(i) = instance_of(&self.config, o)
            {
                self.archive.readyz_seen.insert(i);
            }
        }
        for t in &pre.timelines {
            let n = self.archive.cycles.entry(t.instance.clone()).or_insert(0);
            *n = (*n).max(t.cycle + 1);
        }
        self.archive.timelines.extend(pre.timelines);
        self.archive.verdicts.extend(pre.verdicts);
        self.archive.trim(self.archive_limits);
        self.archive.observations += pre.stats.observations;
        self.archive.unattributed += pre.stats.unattributed;
        self.archive.horizon = cut;
        self.obs.retain(|_, o| o.t_ns >= cut);
        self.cache = None;
        before.len()
    }
}

impl Engine {
    /// Forgets kernel-observed connection closes older than `before_ns`
    /// that lie outside every rollout (with [`PRUNE_MARGIN_NS`] either
    /// side; a close counts only between the listener closing and the exit,
    /// or when a SIGKILL lands): a server closing a connection with a request unanswered
    /// outside a rollout is ordinary client or server behaviour, never a
    /// verdict, and a busy server makes many. Nothing is archived; the
    /// report does not change. Returns how many were forgotten.
    pub fn prune_closes(&mut self, before_ns: u64) -> usize {
        let ranges: Vec<(u64, u64)> = self
            .report()
            .timelines
            .iter()
            .map(|t| {
                let start = t.phases.iter().map(|p| p.t_ns).min().unwrap_or(0);
                let end = t.phases.iter().map(|p| p.t_ns).max().unwrap_or(0);
                (
                    start.saturating_sub(PRUNE_MARGIN_NS),
                    if t.complete {
                        end.saturating_add(PRUNE_MARGIN_NS)
                    } else {
                        u64::MAX
                    },
                )
            })
            .collect();
        let held = self.obs.len();
        self.obs.retain(|_, o| {
            !(matches!(o.kind, Obs::ConnClosed { .. })
                && o.t_ns < before_ns
                && !ranges.iter().any(|(a, b)| (*a..=*b).contains(&o.t_ns)))
        });
        let n = held - self.obs.len();
        if n > 0 {
            self.pruned_closes += n as u64;
            // The report stays what it was (that is the point): only its
            // input counts change, so no recomputation.
            if let Some(r) = &mut self.cache {
                r.stats.observations = r.stats.observations.saturating_sub(n as u64);
                r.stats.pruned_closes = self.pruned_closes;
            }
        }
        n
    }
}

/// How far outside a rollout a connection close is still kept (more than
/// the engine's tolerance for clocks of different sources).
pub const PRUNE_MARGIN_NS: u64 = 2_000_000_000;

/// Numbers live rollouts after the archived ones.
fn offset(archive: &Archive, mut r: Report) -> Report {
    let off = |i: &str| archive.cycles.get(i).copied().unwrap_or(0);
    for t in &mut r.timelines {
        t.cycle += off(&t.instance);
    }
    for v in &mut r.verdicts {
        if let (Some(i), Some(c)) = (&v.instance, v.cycle.as_mut()) {
            *c += off(i);
        }
    }
    r
}

fn merge(archive: &Archive, live: Report) -> Report {
    if archive.horizon == 0 && archive.timelines.is_empty() && archive.verdicts.is_empty() {
        return live;
    }
    let live = offset(archive, live);
    let mut timelines = archive.timelines.clone();
    timelines.extend(live.timelines);
    timelines.sort_by(|a, b| (&a.instance, a.cycle).cmp(&(&b.instance, b.cycle)));
    let mut verdicts = archive.verdicts.clone();
    verdicts.extend(live.verdicts);
    sort_verdicts(&mut verdicts);
    let mut summary = summarize(&verdicts, &timelines);
    for (cause, t) in &archive.folded {
        let e = summary.by_cause.entry(cause.clone()).or_default();
        e.verdicts += t.verdicts;
        e.disruptions += t.disruptions;
        e.seconds += t.seconds;
    }
    for (instance, x) in &archive.folded_lb {
        summary
            .lb_detection_seconds
            .entry(instance.clone())
            .or_insert(*x);
    }
    Report {
        timelines,
        verdicts,
        summary,
        stats: InputStats {
            observations: archive.observations + live.stats.observations,
            duplicates: live.stats.duplicates,
            unattributed: archive.unattributed + live.stats.unattributed,
            late: archive.late,
            direct_arrivals: live.stats.direct_arrivals,
            pruned_closes: live.stats.pruned_closes,
            forgotten_timelines: archive.forgotten_timelines,
            forgotten_verdicts: archive.forgotten_verdicts,
        },
    }
}

fn sort_verdicts(v: &mut [Verdict]) {
    v.sort_by(|a, b| {
        (a.window, a.cause, &a.instance, &a.evidence).cmp(&(
            b.window,
            b.cause,
            &b.instance,
            &b.evidence,
        ))
    });
}

/// Batch analysis: the same as pushing every observation into an
/// [`Engine`] and asking for its report.
pub fn analyze(config: &Config, observations: Vec<Observation>) -> Result<Report, ConfigError> {
    let mut e = Engine::new(config.clone())?;
    for o in observations {
        e.push(o);
    }
    Ok(e.report().clone())
}

// ---------------------------------------------------------------------------
// Internal model

#[derive(Debug, Clone)]
struct Mark {
    t: u64,
    ids: Vec<u64>,
    wall: Option<String>,
    inferred: bool,
    note: Option<String>,
}

#[derive(Debug, Clone)]
struct Cycle {
    start: u64,
    marks: BTreeMap<PhaseKind, Mark>,
    complete: bool,
    goaways: Vec<u64>,
    exit_signal: Option<i32>,
    exit_code: Option<i32>,
    /// Who sent the SIGKILL, when the signal was observed: the first thing
    /// to look at for a kill without SIGTERM.
    kill_sender: Option<u32>,
    /// Processes this rollout is about (signalled, closing, exiting): their
    /// late events still belong here after the new process listens.
    pids: BTreeSet<u32>,
}

impl Cycle {
    fn new(t: u64) -> Cycle {
        Cycle {
            start: t,
            marks: BTreeMap::new(),
            complete: false,
            goaways: Vec::new(),
            exit_signal: None,
            exit_code: None,
            kill_sender: None,
            pids: BTreeSet::new(),
        }
    }

    /// The process really went down, as opposed to a /readyz flap.
    fn shut_down(&self) -> bool {
        [
            PhaseKind::ListenerClosed,
            PhaseKind::Exit,
            PhaseKind::Sigkill,
            PhaseKind::PodNotRunning,
        ]
        .iter()
        .any(|k| self.has(*k))
    }

    fn t(&self, k: PhaseKind) -> Option<u64> {
        self.marks.get(&k).map(|m| m.t)
    }

    fn has(&self, k: PhaseKind) -> bool {
        self.marks.contains_key(&k)
    }

    /// First observation of a phase sets it; later ones add evidence.
    fn observe(&mut self, k: PhaseKind, o: &Observation) {
        self.marks
            .entry(k)
            .and_modify(|m| m.ids.push(o.id))
            .or_insert_with(|| Mark {
                t: o.t_ns,
                ids: vec![o.id],
                wall: o.wall.clone(),
                inferred: false,
                note: None,
            });
    }

    fn infer(&mut self, k: PhaseKind, from: &Mark, note: String) {
        self.marks.entry(k).or_insert_with(|| Mark {
            t: from.t,
            ids: from.ids.clone(),
            wall: from.wall.clone(),
            inferred: true,
            note: Some(note),
        });
    }

    /// Last moment a connection event can belong to this rollout's old
    /// process: the relisten (a new process serves after it).
    fn serving_end(&self) -> u64 {
        self.t(PhaseKind::ListeningAgain)
            .or(self.t(PhaseKind::Ready))
            .unwrap_or(u64::MAX)
    }

    fn not_listening_from(&self) -> Option<u64> {
        [
            PhaseKind::ListenerClosed,
            PhaseKind::Sigkill,
            PhaseKind::Exit,
        ]
        .iter()
        .filter_map(|k| self.t(*k))
        .min()
    }
}

/// Instance and rollout an item belongs to, as far as known.
type Owner = (Option<String>, Option<usize>);

/// A connection-level fact, normalised from the observation kinds.
#[derive(Debug, Clone)]
enum Item {
    /// A refused SYN; key identifies the attempt across observers.
    Refusal { key: Option<SocketAddr>, path: Path },
    /// A new connection accepted by the instance.
    Arrival { path: Path },
    /// A connection or request cut; `what` says how it was seen. `strong`
    /// when a request is known to have been cut (a server close with a
    /// request outstanding, a failed probe); an abortive RST alone is weak:
    /// after a GOAWAY it is the graceful close of a connection the client
    /// still wrote to.
    Cut {
        key: Option<SocketAddr>,
        what: String,
        strong: bool,
    },
    /// A queued, never-accepted connection reset at listener close.
    AcceptQueueReset { path: Path },
    /// A probe request failed because of a GOAWAY.
    ProbeGoaway,
    /// A middlebox reset an idle flow; `answered` when it answered a
    /// packet after the silence.
    IdleReset {
        silence_s: f64,
        keepalive: Keepalive,
        answered: bool,
    },
}

#[derive(Debug, Clone)]
struct It {
    t: u64,
    id: u64,
    client: Option<SocketAddr>,
    wall: Option<String>,
    inst: Option<String>,
    probe: bool,
    item: Item,
}

fn item_of(cfg: &Config, o: &Observation) -> Option<(Item, bool)> {
    let item = match &o.kind {
        Obs::Refused {
            client,
            server,
            path,
        } => Item::Refusal {
            key: Some(*client),
            path: path.unwrap_or_else(|| cfg.classify(client, server)),
        },
        Obs::Accepted {
            client,
            server,
            path,
        } => Item::Arrival {
            path: path.unwrap_or_else(|| cfg.classify(client, server)),
        },
        Obs::ResetSent {
            client,
            server,
            reason,
            state,
        } => match reason.as_deref() {
            // No socket: nothing listening (a SYN to a closed port).
            Some("NO_SOCKET") => Item::Refusal {
                key: Some(*client),
                path: cfg.classify(client, server),
            },
            Some(r) if ABORT_REASONS.contains(&r) => Item::Cut {
                key: Some(*client),
                what: format!(
                    "server RST {r}{}",
                    state
                        .as_deref()
                        .map(|s| format!(" in {s}"))
                        .unwrap_or_default()
                ),
                // A deliberate abort of an open connection (SO_LINGER 0) cuts
                // whatever was on it; an RST because of unread data, or in a
                // close already under way, is also what ordinary closes do.
                strong: r == "TCP_ABORT_ON_CLOSE"
                    && matches!(state.as_deref(), Some("ESTABLISHED" | "CLOSE_WAIT")),
            },
            _ => return None,
        },
        Obs::StreamCut { client, .. } => Item::Cut {
            key: Some(*client),
            what: "closed by the server while its response was streaming (a watch)".to_string(),
            strong: true,
        },
        Obs::AcceptQueueReset { client, server } => Item::AcceptQueueReset {
            path: cfg.classify(client, server),
        },
        Obs::ResetReceived {
            client,
            server,
            state,
        } => match state.as_deref() {
            Some("SYN_SENT") => Item::Refusal {
                key: Some(*client),
                path: cfg.classify(client, server),
            },
            Some("ESTABLISHED") | Some("CLOSE_WAIT") | Some("FIN_WAIT1") | Some("FIN_WAIT2") => {
                Item::Cut {
                    key: Some(*client),
                    what: "RST received by a local client".to_string(),
                    strong: false,
                }
            }
            _ => return None,
        },
        Obs::ConnClosed {
            client,
            by_server: true,
            pending_request: Some(true),
            ..
        } => Item::Cut {
            key: Some(*client),
            what: "closed by the server with a request outstanding".to_string(),
            strong: true,
        },
        Obs::WireReset {
            origin: ResetOrigin::Middlebox,
            silence_s,
            keepalive,
            answered_packet,
            ..
        } => Item::IdleReset {
            silence_s: *silence_s,
            keepalive: *keepalive,
            answered: *answered_packet == Some(true),
        },
        // A proxying LB (HAProxy, Azure's SLB with TCP reset) is the TCP peer
        // of the server's connection: an RST it sends on its own after a
        // silence, answering nothing, is its idle timeout firing.
        Obs::WireReset {
            client,
            server,
            origin: ResetOrigin::Peer,
            silence_s,
            keepalive,
            answered_packet: Some(false),
        } if *silence_s >= LB_IDLE_MIN_S
            && [client, server]
                .into_iter()
                .flatten()
                .any(|a| cfg.lb_addrs.contains(&a.ip())) =>
        {
            Item::IdleReset {
                silence_s: *silence_s,
                keepalive: *keepalive,
                answered: false,
            }
        }
        Obs::ProbeResult {
            mode,
            method,
            client,
            server,
            outcome,
            ..
        } => match outcome {
            ProbeOutcome::Refused => Item::Refusal {
                key: *client,
                path: cfg.classify_probe(client.as_ref(), server.as_ref()),
            },
            ProbeOutcome::Goaway => Item::ProbeGoaway,
            o if o.failed() => Item::Cut {
                key: *client,
                what: format!(
                    "probe {} {method}: {}",
                    text::mode(*mode),
                    text::outcome(*o)
                ),
                strong: true,
            },
            _ => return None,
        },
        _ => return None,
    };
    Some((item, matches!(o.kind, Obs::ProbeResult { .. })))
}

fn client_of(k: &Obs) -> Option<SocketAddr> {
    match k {
        Obs::Refused { client, .. }
        | Obs::Accepted { client, .. }
        | Obs::ResetSent { client, .. }
        | Obs::ResetReceived { client, .. }
        | Obs::AcceptQueueReset { client, .. }
        | Obs::StreamCut { client, .. }
        | Obs::ConnClosed { client, .. } => Some(*client),
        Obs::WireReset { client, .. } | Obs::ProbeResult { client, .. } => *client,
        _ => None,
    }
}

/// The trailing run of arrivals via the LB after /readyz turned red
/// (`red_at`) that are at least half a check interval apart: once the LB
/// has taken the instance out, only its health checks still arrive, at the
/// check interval, while client traffic
/// (denser than that) has stopped. The check right after the last client
/// is found by the rhythm: one interval (within 15 %) before the run.
/// Returns their ids.
fn health_check_train(arr: &[&It], red_at: u64, interval_s: f64) -> Vec<u64> {
    let interval = secs_to_ns(interval_s);
    let min_gap = interval / 2;
    let mut after: Vec<&It> = arr.iter().copied().filter(|i| i.t > red_at).collect();
    let mut out = Vec::new();
    let mut first = None;
    while after.len() >= 2 {
        let (a, b) = (after[after.len() - 2], after[after.len() - 1]);
        if b.t.saturating_sub(a.t) < min_gap {
            break;
        }
        out.push(b.id);
        first = Some(b.t);
        after.pop();
    }
    while let (Some(f), Some(last)) = (first, after.last()) {
        let expected = f.saturating_sub(interval);
        if last.t.abs_diff(expected) > interval / 100 * 15 {
            break;
        }
        out.push(last.id);
        first = Some(last.t);
        after.pop();
    }
    out
}

fn instance_of(cfg: &Config, o: &Observation) -> Option<String> {
    if o.instance.is_some() {
        return o.instance.clone();
    }
    if !o.source.is_node_local() {
        return None;
    }
    // A client on this node seeing a refusal from a remote apiserver (via
    // the LB to another master) is not about this node's instance.
    let client_side_server = match &o.kind {
        Obs::Refused { server, .. } | Obs::ResetReceived { server, .. } => Some(server.ip()),
        _ => None,
    };
    match client_side_server {
        Some(s) if !cfg.is_local_server(s) => None,
        _ => cfg.default_instance.clone(),
    }
}

// ---------------------------------------------------------------------------
// Timelines

/// Builds the rollouts of one instance from its lifecycle observations.
fn build_cycles(obs: &[&Observation], has_readyz: bool) -> Vec<Cycle> {
    let mut out = Vec::new();
    let mut cur: Option<Cycle> = None;
    let mut listeners: BTreeSet<Option<SocketAddr>> = BTreeSet::new();

    // A shutdown event after the previous rollout already relistened
    // starts the next rollout, unless it is about the old process.
    fn begin<'c>(
        cur: &'c mut Option<Cycle>,
        out: &mut Vec<Cycle>,
        t: u64,
        pid: Option<u32>,
    ) -> &'c mut Cycle {
        let next = cur.as_ref().is_some_and(|c| {
            c.has(PhaseKind::ListeningAgain) && !pid.is_some_and(|p| c.pids.contains(&p))
        });
        if next && let Some(c) = cur.take() {
            out.push(c);
        }
        let c = cur.get_or_insert_with(|| Cycle::new(t));
        c.pids.extend(pid);
        c
    }

    for o in obs {
        match &o.kind {
            Obs::Signal {
                signal,
                pid,
                sender,
            } => {
                let k = match signal {
                    Signal::Term => PhaseKind::Sigterm,
                    Signal::Kill => PhaseKind::Sigkill,
                    Signal::Other(_) => continue,
                };
                let c = begin(&mut cur, &mut out, o.t_ns, *pid);
                if k == PhaseKind::Sigkill && !c.has(k) {
                    c.kill_sender = *sender;
                }
                c.observe(k, o);
            }
            Obs::ReadyzChanged { ready: false } => {
                begin(&mut cur, &mut out, o.t_ns, None).observe(PhaseKind::ReadyzRed, o);
            }
            Obs::ReadyzChanged { ready: true } => {
                if let Some(mut c) = cur.take() {
                    c.observe(PhaseKind::Ready, o);
                    c.complete = true;
                    out.push(c);
                }
            }
            Obs::HealthzChanged { healthy: false } => {
                if let Some(c) = cur.as_mut() {
                    c.observe(PhaseKind::HealthzRed, o);
                }
            }
            Obs::PodPhase { running: false } => {
                begin(&mut cur, &mut out, o.t_ns, None).observe(PhaseKind::PodNotRunning, o);
            }
            Obs::PodPhase { running: true } => {
                if let Some(c) = cur.as_mut().filter(|c| c.not_listening_from().is_some()) {
                    c.observe(PhaseKind::PodRunning, o);
                }
            }
            Obs::ListenerClosed { addr, pid } => {
                // An address we never saw open (the engine started late)
                // means we cannot tell which are left: take it as the last.
                if addr.is_none() || !listeners.remove(addr) {
                    listeners.clear();
                }
                if listeners.is_empty() {
                    begin(&mut cur, &mut out, o.t_ns, *pid).observe(PhaseKind::ListenerClosed, o);
                }
            }
            Obs::ListenerOpened { addr, .. } => {
                listeners.insert(*addr);
                let reopened = cur.as_ref().is_some_and(|c| {
                    c.not_listening_from().is_some() && !c.has(PhaseKind::ListeningAgain)
                });
                if reopened {
                    if let Some(c) = cur.as_mut() {
                        c.observe(PhaseKind::ListeningAgain, o);
                    }
                    // Without a poller, listening again is as ready as we can see.
                    if !has_readyz && let Some(mut c) = cur.take() {
                        c.complete = true;
                        out.push(c);
                    }
                }
            }
            Obs::ProcessExit { signal, code, pid } => {
                let c = begin(&mut cur, &mut out, o.t_ns, *pid);
                if !c.has(PhaseKind::Exit) {
                    c.exit_signal = *signal;
                    c.exit_code = *code;
                }
                c.observe(PhaseKind::Exit, o);
            }
            Obs::Goaway {
                direction: crate::model::Direction::Sent,
                ..
            } => {
                if let Some(c) = cur.as_mut() {
                    c.goaways.push(o.id);
                    c.observe(PhaseKind::GoawaySent, o);
                }
            }
            _ => {}
        }
    }
    out.extend(cur);
    out
}

/// Fills phases that were not observed but follow from what was.
fn infer_phases(c: &mut Cycle, cfg: &Config, has_readyz: bool, first_refusal: Option<&It>) {
    if c.exit_signal == Some(9)
        && let Some(m) = c.marks.get(&PhaseKind::Exit).cloned()
    {
        c.infer(
            PhaseKind::Sigkill,
            &m,
            "SIGKILL not observed: the process exited on signal 9".into(),
        );
    }
    if !c.has(PhaseKind::Sigterm) {
        // Only observed evidence that the process was shutting down counts
        // (see "SIGTERM before a SIGKILL" in the crate docs): a SIGKILL with
        // none of it had no grace period at all.
        let kill = c.t(PhaseKind::Sigkill);
        // A SIGTERM from whoever killed the process came at most the grace
        // period before the kill; evidence older than that is something else
        // (an apiserver unready for a long time, then killed).
        let within_grace = |t: u64, k: u64| {
            cfg.grace_period_s.is_none_or(|g| {
                k.saturating_sub(t) <= secs_to_ns(g).saturating_add(cfg.tolerance_ns())
            })
        };
        // Not for a /readyz flap: only when the process then went down.
        let red = c
            .marks
            .get(&PhaseKind::ReadyzRed)
            .filter(|m| {
                !m.inferred && c.shut_down() && kill.is_none_or(|k| m.t < k && within_grace(m.t, k))
            })
            .cloned();
        // A dying process's own teardown closes its listener just after the
        // kill; a close before it, by more than that slack, was the process
        // shutting down by itself.
        let closed = kill.and_then(|k| {
            c.marks
                .get(&PhaseKind::ListenerClosed)
                .filter(|m| {
                    !m.inferred
                        && m.t.saturating_add(HARD_CLOSE_LEAD_NS) < k
                        && within_grace(m.t, k)
                })
                .cloned()
        });
        if let Some(m) = red {
            c.infer(
                PhaseKind::Sigterm,
                &m,
                "SIGTERM not observed: /readyz turned red, which kube-apiserver does on SIGTERM (at the latest then)".into(),
            );
        } else if let Some(m) = closed {
            c.infer(
                PhaseKind::Sigterm,
                &m,
                "SIGTERM not observed: the listener closed before the SIGKILL, which a shutdown on SIGTERM does (at the latest then)".into(),
            );
        } else if c.exit_signal == Some(15)
            && let Some(m) = c.marks.get(&PhaseKind::Exit).cloned()
        {
            c.infer(
                PhaseKind::Sigterm,
                &m,
                "SIGTERM not observed: the process exited on signal 15".into(),
            );
        }
    }
    if !c.has(PhaseKind::ReadyzRed) && !has_readyz && cfg.readyz_red_on_sigterm {
        // Only when the process did shut down gracefully: a process that
        // ignored SIGTERM (killed before its listener closed) kept /readyz green.
        let graceful = match (c.t(PhaseKind::ListenerClosed), c.t(PhaseKind::Sigkill)) {
            (Some(l), Some(k)) => l < k,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if graceful && let Some(m) = c.marks.get(&PhaseKind::Sigterm).cloned() {
            c.infer(
                PhaseKind::ReadyzRed,
                &m,
                "no /readyz poller: assumed red at SIGTERM (kube-apiserver turns /readyz red as SIGTERM arrives)".into(),
            );
        }
    }
    if !c.has(PhaseKind::ListenerClosed) {
        if let Some(r) = first_refusal {
            let m = Mark {
                t: r.t,
                ids: vec![r.id],
                wall: r.wall.clone(),
                inferred: true,
                note: None,
            };
            c.infer(
                PhaseKind::ListenerClosed,
                &m,
                "listener close not observed: a SYN was refused here (at the latest then)".into(),
            );
        } else if let Some(m) = c
            .marks
            .get(&PhaseKind::Sigkill)
            .or(c.marks.get(&PhaseKind::Exit))
            .cloned()
        {
            c.infer(
                PhaseKind::ListenerClosed,
                &m,
                "listener close not observed: it closes with the process at the latest".into(),
            );
        }
    }
    c.start = c.marks.values().map(|m| m.t).min().unwrap_or(c.start);
}

// ---------------------------------------------------------------------------
// Classification

/// Merges items that are one attempt seen twice (kernel and prober, or
/// both ends of a local connection): same client address within the tolerance.
/// How far apart kernel sightings of one connection attempt can be (ns).
const SAME_ATTEMPT_NS: u64 = 10_000_000;

fn dedupe(items: Vec<&It>, tol: u64) -> Vec<Vec<&It>> {
    let mut groups: Vec<Vec<&It>> = Vec::new();
    let mut last_by_key: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for it in items {
        let key = match &it.item {
            Item::Refusal { key, .. } | Item::Cut { key, .. } => *key,
            _ => None,
        };
        if let Some(k) = key {
            // The same attempt seen twice: by the prober and the kernel
            // (within `tol`), or by several kernel hooks (the RST sent, the
            // RST received, the refused connect: microseconds apart). Two
            // kernel sightings further apart are two attempts that reused a
            // source port.
            if let Some(&g) = last_by_key.get(&k)
                && groups[g].last().is_some_and(|p| {
                    let window = if p.probe || it.probe {
                        tol
                    } else {
                        tol.min(SAME_ATTEMPT_NS)
                    };
                    it.t.saturating_sub(p.t) <= window
                })
            {
                groups[g].push(it);
                continue;
            }
            last_by_key.insert(k, groups.len());
        }
        groups.push(vec![it]);
    }
    groups
}

struct Group<'a> {
    attempts: Vec<Vec<&'a It>>,
    extra_ids: Vec<u64>,
}

impl<'a> Group<'a> {
    fn new(attempts: Vec<Vec<&'a It>>) -> Group<'a> {
        Group {
            attempts,
            extra_ids: Vec::new(),
        }
    }

    fn first(&self) -> Option<&'a It> {
        self.attempts
            .iter()
            .flatten()
            .min_by_key(|i| (i.t, i.id))
            .copied()
    }

    fn last(&self) -> Option<&'a It> {
        self.attempts
            .iter()
            .flatten()
            .max_by_key(|i| (i.t, i.id))
            .copied()
    }

    fn evidence(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .attempts
            .iter()
            .flatten()
            .map(|i| i.id)
            .chain(self.extra_ids.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

struct Draft<'a> {
    cause: Cause,
    instance: Option<String>,
    cycle: Option<usize>,
    group: Group<'a>,
    window: Option<(u64, u64, Option<String>, Option<String>)>,
    sentence: String,
    fix: String,
    measured: Option<Measured>,
}

impl Draft<'_> {
    fn finish(self) -> Option<Verdict> {
        let (start, end, ws, we) = match self.window {
            Some(w) => w,
            None => {
                let (f, l) = (self.group.first()?, self.group.last()?);
                (f.t, l.t, f.wall.clone(), l.wall.clone())
            }
        };
        Some(Verdict {
            cause: self.cause,
            instance: self.instance,
            cycle: self.cycle,
            window: (start, end),
            window_wall: (ws, we),
            count: self.group.attempts.len() as u64,
            evidence: self.group.evidence(),
            sentence: format!("{}; fix: {}", self.sentence, self.fix),
            fix: self.fix,
            measured: self.measured,
        })
    }
}

fn dsecs(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) / 1e9
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CutClass {
    Sigkill,
    Timeout,
    Goaway,
    Hard,
    Unexplained,
}

/// How far kernel-timed close evidence may precede the listener's close,
/// or follow the process's exit, and still be that close (ns).
const HARD_CLOSE_LEAD_NS: u64 = 50_000_000;

fn classify_cut(c: &Cycle, cfg: &Config, t: u64, probe: bool, strong: bool) -> CutClass {
    let tol = cfg.tolerance_ns();
    let closed_at = c.t(PhaseKind::ListenerClosed);
    if let Some(k) = c.t(PhaseKind::Sigkill) {
        // Kernel evidence is timed exactly: the kill's cuts are the sockets
        // the dying process's exit closes. An RST alone over unread data is
        // not a cut (see below).
        let lead = if probe { tol } else { HARD_CLOSE_LEAD_NS };
        let before_exit = c
            .t(PhaseKind::Exit)
            .is_none_or(|x| t <= x.saturating_add(lead));
        if t.saturating_add(lead) >= k && before_exit && (probe || strong) {
            return CutClass::Sigkill;
        }
    }
    if let (Some(closed_at), Some(rt)) = (closed_at, cfg.request_timeout_s) {
        let at = closed_at.saturating_add(secs_to_ns(rt));
        let slack = tol.max(secs_to_ns(rt * 0.05));
        if t.abs_diff(at) <= slack {
            return CutClass::Timeout;
        }
    }
    let after_goaway = c.t(PhaseKind::GoawaySent).is_some_and(|g| t >= g);
    if probe && after_goaway {
        return CutClass::Goaway;
    }
    if !strong && after_goaway {
        // The server said goodbye first: an RST now is a graceful close
        // meeting data the client still sent, not a cut request.
        return CutClass::Unexplained;
    }
    let Some(closed_at) = closed_at else {
        return CutClass::Unexplained;
    };
    // Once the instance listens again, resets are the new process's
    // ordinary traffic, not this shutdown's.
    if c.t(PhaseKind::ListeningAgain).is_some_and(|l| t >= l) {
        return CutClass::Unexplained;
    }
    if cfg.request_timeout_s.is_none()
        && !c.has(PhaseKind::Sigkill)
        && c.t(PhaseKind::Exit)
            .is_some_and(|x| t > closed_at.saturating_add(tol) && t.abs_diff(x) <= tol)
    {
        // No configured timeout: a cut right before exit, after a drain
        // period, is the request timeout firing.
        return CutClass::Timeout;
    }
    if !probe && !strong {
        // An RST because of unread data, or one a client got, happens in
        // ordinary closes too, graceful shutdowns included (an idle
        // connection closed while the client's TLS close_notify or PING was
        // unread): alone it proves no cut.
        return CutClass::Unexplained;
    }
    if !probe {
        // Kernel evidence is timed exactly: the server cut a request while
        // shutting down if it did so from the listener's close (the same
        // close call may come just before) until the process exited; before
        // that it was serving as usual, after it a new process is.
        let from = closed_at.saturating_sub(HARD_CLOSE_LEAD_NS);
        let until = c
            .t(PhaseKind::Exit)
            .map_or(closed_at.saturating_add(tol), |x| {
                x.saturating_add(HARD_CLOSE_LEAD_NS)
            });
        return if t >= from && t <= until {
            CutClass::Hard
        } else {
            CutClass::Unexplained
        };
    }
    if t.abs_diff(closed_at) <= tol {
        return CutClass::Hard;
    }
    if t.saturating_add(tol) >= closed_at {
        CutClass::Hard
    } else {
        CutClass::Unexplained
    }
}

fn compute<'a>(
    cfg: &Config,
    all: impl Iterator<Item = &'a Observation>,
    duplicates: u64,
    readyz_seen: &BTreeSet<String>,
) -> Report {
    let tol = cfg.tolerance_ns();
    let mut sorted: Vec<&Observation> = all.collect();
    sorted.sort_by_key(|o| (o.t_ns, o.id));

    // Lifecycle observations per instance.
    let mut life: BTreeMap<String, Vec<&Observation>> = BTreeMap::new();
    let mut has_readyz: BTreeSet<String> = readyz_seen.clone();
    let mut unowned_goaways: Vec<&Observation> = Vec::new();
    for o in &sorted {
        let lifecycle = matches!(
            o.kind,
            Obs::Signal { .. }
                | Obs::ProcessExit { .. }
                | Obs::ReadyzChanged { .. }
                | Obs::HealthzChanged { .. }
                | Obs::PodPhase { .. }
                | Obs::ListenerOpened { .. }
                | Obs::ListenerClosed { .. }
                | Obs::Goaway { .. }
        );
        if !lifecycle {
            continue;
        }
        match instance_of(cfg, o) {
            Some(i) => {
                if matches!(o.kind, Obs::ReadyzChanged { .. }) {
                    has_readyz.insert(i.clone());
                }
                life.entry(i).or_default().push(o);
            }
            None if matches!(o.kind, Obs::Goaway { .. }) => unowned_goaways.push(o),
            None => {}
        }
    }
    let mut cycles: BTreeMap<String, Vec<Cycle>> = life
        .iter()
        .map(|(i, obs)| (i.clone(), build_cycles(obs, has_readyz.contains(i))))
        .collect();

    // Connection-level items, with instances resolved.
    let mut items: Vec<It> = sorted
        .iter()
        .filter_map(|o| {
            let (item, probe) = item_of(cfg, o)?;
            Some(It {
                t: o.t_ns,
                id: o.id,
                client: client_of(&o.kind),
                wall: o.wall.clone(),
                inst: instance_of(cfg, o),
                probe,
                item,
            })
        })
        .collect();

    // Attribute what names no instance to the one instance whose rollout
    // explains it at that time (not listening, for refusals; shutting
    // down, for cuts); ambiguous or none stays unattributed.
    let candidates = |t: u64, refusal: bool| -> Vec<String> {
        cycles
            .iter()
            .filter(|(_, cs)| {
                cs.iter().any(|c| {
                    let from = if refusal {
                        c.not_listening_from()
                    } else {
                        Some(c.start)
                    };
                    from.is_some_and(|f| t.saturating_add(tol) >= f)
                        && t <= c.serving_end().saturating_add(tol)
                })
            })
            .map(|(i, _)| i.clone())
            .collect()
    };
    for it in items.iter_mut().filter(|i| i.inst.is_none()) {
        let refusal = matches!(it.item, Item::Refusal { .. });
        if matches!(it.item, Item::IdleReset { .. } | Item::Arrival { .. }) {
            continue;
        }
        if let [only] = candidates(it.t, refusal).as_slice() {
            it.inst = Some(only.clone());
        }
    }
    let goaway_owners: Vec<(&Observation, String)> = unowned_goaways
        .iter()
        .filter(|g| {
            matches!(
                g.kind,
                Obs::Goaway {
                    direction: crate::model::Direction::Sent,
                    ..
                }
            )
        })
        .filter_map(|g| match candidates(g.t_ns, false).as_slice() {
            [only] => Some((*g, only.clone())),
            _ => None,
        })
        .collect();
    for (g, inst) in goaway_owners {
        if let Some(c) = cycles.get_mut(&inst).and_then(|cs| {
            cs.iter_mut()
                .find(|c| g.t_ns.saturating_add(tol) >= c.start && g.t_ns <= c.serving_end())
        }) {
            c.goaways.push(g.id);
            c.observe(PhaseKind::GoawaySent, g);
        }
    }

    // Infer missing phases, using the first refusal per cycle.
    for (inst, cs) in cycles.iter_mut() {
        for c in cs.iter_mut() {
            let end = c.serving_end();
            let first_refusal = items.iter().find(|i| {
                i.inst.as_deref() == Some(inst.as_str())
                    && !i.probe
                    && matches!(i.item, Item::Refusal { .. })
                    && i.t.saturating_add(tol) >= c.start
                    && i.t <= end
            });
            infer_phases(c, cfg, has_readyz.contains(inst), first_refusal);
        }
    }

    // Which rollout each item belongs to.
    let cycle_of = |inst: &Option<String>, t: u64| -> Option<usize> {
        let cs = cycles.get(inst.as_ref()?)?;
        cs.iter().position(|c| {
            t.saturating_add(tol) >= c.start && t <= c.serving_end().saturating_add(tol)
        })
    };

    let mut drafts: Vec<Draft> = Vec::new();
    let mut unattributed = 0u64;

    // Refusals, by (instance, rollout, path).
    let mut refusals: BTreeMap<(Owner, Path), Vec<&It>> = BTreeMap::new();
    let mut cuts: BTreeMap<Owner, Vec<&It>> = BTreeMap::new();
    let mut probe_goaways: BTreeMap<Owner, Vec<&It>> = BTreeMap::new();
    let mut queue_resets: BTreeMap<(Owner, Path), Vec<&It>> = BTreeMap::new();
    let mut idle: BTreeMap<Option<String>, Vec<&It>> = BTreeMap::new();
    let mut arrivals: BTreeMap<(String, usize), Vec<&It>> = BTreeMap::new();
    for it in &items {
        if it.probe && it.inst.is_none() {
            unattributed += 1;
        }
        let cyc = cycle_of(&it.inst, it.t);
        match &it.item {
            Item::Refusal { path, .. } => {
                refusals
                    .entry(((it.inst.clone(), cyc), *path))
                    .or_default()
                    .push(it);
                if *path == Path::ViaLb
                    && let (Some(i), Some(c)) = (&it.inst, cyc)
                {
                    arrivals.entry((i.clone(), c)).or_default().push(it);
                }
            }
            Item::Arrival { path: Path::ViaLb } => {
                if let (Some(i), Some(c)) = (&it.inst, cyc) {
                    arrivals.entry((i.clone(), c)).or_default().push(it);
                }
            }
            Item::Arrival { .. } => {}
            Item::Cut { .. } => cuts.entry((it.inst.clone(), cyc)).or_default().push(it),
            Item::ProbeGoaway => probe_goaways
                .entry((it.inst.clone(), cyc))
                .or_default()
                .push(it),
            Item::IdleReset { .. } => idle.entry(it.inst.clone()).or_default().push(it),
            Item::AcceptQueueReset { path } => queue_resets
                .entry(((it.inst.clone(), cyc), *path))
                .or_default()
                .push(it),
        }
    }

    let cyc_ref = |inst: &Option<String>, cyc: Option<usize>| -> Option<&Cycle> {
        cycles.get(inst.as_ref()?)?.get(cyc?)
    };

    // LB health checks are not client traffic: connections from a
    // configured checker source, or, from the LB's own address, the sparse
    // train at the check interval that follows the LB taking the instance out.
    let mut health_checks: BTreeSet<u64> = items
        .iter()
        .filter(|i| matches!(i.item, Item::Refusal { .. } | Item::Arrival { .. }))
        .filter(|i| i.client.is_some_and(|c| cfg.is_health_check_source(&c)))
        .map(|i| i.id)
        .collect();
    if let Some(hc) = cfg.health_check {
        for ((inst, n), arr) in &arrivals {
            let Some(red_at) =
                cyc_ref(&Some(inst.clone()), Some(*n)).and_then(|c| c.t(PhaseKind::ReadyzRed))
            else {
                continue;
            };
            let clients: Vec<&It> = arr
                .iter()
                .copied()
                .filter(|i| !health_checks.contains(&i.id))
                .collect();
            health_checks.extend(health_check_train(&clients, red_at, hc.interval_s));
        }
    }
    let mut checks_ignored: BTreeMap<(String, usize), usize> = BTreeMap::new();
    for (k, v) in arrivals.iter_mut() {
        let before = v.len();
        v.retain(|i| !health_checks.contains(&i.id));
        checks_ignored.insert(k.clone(), before - v.len());
    }

    for (((inst, cyc), path), mut its) in refusals {
        its.retain(|i| !health_checks.contains(&i.id));
        let group = Group::new(dedupe(its, tol));
        let c = cyc_ref(&inst, cyc);
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let closed_at = c
            .and_then(|c| c.marks.get(&PhaseKind::ListenerClosed))
            .filter(|m| m.t <= first.t);
        let (from, from_wall) = match closed_at {
            Some(m) => (m.t, m.wall.clone()),
            None => (first.t, first.wall.clone()),
        };
        let window = Some((from, last.t, from_wall, last.wall.clone()));
        let seconds = dsecs(from, last.t);
        let (sentence, fix) =
            text::refused(inst.as_deref(), path, group.attempts.len(), seconds, cfg);
        let mut g = group;
        if let Some(c) = c {
            g.extra_ids.extend(
                c.marks
                    .get(&PhaseKind::ListenerClosed)
                    .map(|m| m.ids.clone())
                    .unwrap_or_default(),
            );
        }
        drafts.push(Draft {
            cause: Cause::RefusedWhileNotListening { path },
            instance: inst,
            cycle: cyc,
            group: g,
            window,
            sentence,
            fix,
            measured: Some(Measured::NotListening { seconds }),
        });
    }

    // Connections reset in the accept queue, by (instance, rollout, path):
    // each one is a client whose connection was completed by the kernel
    // and then reset without an answer. One per connection (the kernel
    // reports each once); the window runs from the listener's close.
    for (((inst, cyc), path), its) in queue_resets {
        let group = Group::new(its.into_iter().map(|i| vec![i]).collect());
        let c = cyc_ref(&inst, cyc);
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let closed_at = c
            .and_then(|c| c.marks.get(&PhaseKind::ListenerClosed))
            .filter(|m| m.t <= first.t.saturating_add(tol));
        let (from, from_wall) = match closed_at {
            Some(m) => (m.t.min(first.t), m.wall.clone()),
            None => (first.t, first.wall.clone()),
        };
        let seconds = dsecs(from, last.t);
        let (sentence, fix) =
            text::accept_queue_reset(inst.as_deref(), path, group.attempts.len(), seconds);
        let mut g = group;
        if let Some(m) = closed_at {
            g.extra_ids.extend(m.ids.iter().copied());
        }
        drafts.push(Draft {
            cause: Cause::AcceptQueueReset { path },
            instance: inst,
            cycle: cyc,
            group: g,
            window: Some((from, last.t, from_wall, last.wall.clone())),
            sentence,
            fix,
            measured: None,
        });
    }

    // LB detection per rollout.
    let mut lb: BTreeMap<(String, usize), LbDetection> = BTreeMap::new();
    for (inst, cs) in &cycles {
        for (n, c) in cs.iter().enumerate() {
            // A /readyz flap without a shutdown has no listener close to race.
            let Some(red) = c.marks.get(&PhaseKind::ReadyzRed).filter(|_| c.shut_down()) else {
                continue;
            };
            let red_at = red.t;
            let hc = cfg.health_check.map(|h| h.worst_case_s());
            if let Some(closed) = c
                .t(PhaseKind::ListenerClosed)
                .filter(|closed_at| *closed_at < red_at)
            {
                // Killed or crashed: the listener went before /readyz could
                // warn the LB, so there is no detection time to speak of.
                lb.insert(
                    (inst.clone(), n),
                    LbDetection {
                        t_s: None,
                        lower_bound: false,
                        shutdown_delay_s: None,
                        holds: None,
                        hc_worst_case_s: hc,
                        note: format!(
                            "not measurable: the listener closed {:.1} s before /readyz turned red, so the LB had no warning",
                            dsecs(closed, red_at)
                        ),
                        evidence: red.ids.clone(),
                    },
                );
                continue;
            }
            let closed_at = c
                .t(PhaseKind::ListenerClosed)
                .filter(|closed_at| *closed_at >= red_at)
                .or_else(|| {
                    cfg.shutdown_delay_s
                        .map(|d| red_at.saturating_add(secs_to_ns(d)))
                });
            let delay = closed_at.map(|closed_at| dsecs(red_at, closed_at));
            let after: Vec<&It> = arrivals
                .get(&(inst.clone(), n))
                .map(|v| v.iter().copied().filter(|i| i.t > red_at).collect())
                .unwrap_or_default();
            let Some(last) = after.iter().max_by_key(|i| (i.t, i.id)) else {
                lb.insert(
                    (inst.clone(), n),
                    LbDetection {
                        t_s: None,
                        lower_bound: false,
                        shutdown_delay_s: delay,
                        holds: None,
                        hc_worst_case_s: hc,
                        note: "not measurable: no new connection through the LB arrived after /readyz turned red (no traffic, or the LB took it out at once)".into(),
                        evidence: red.ids.clone(),
                    },
                );
                continue;
            };
            let t = dsecs(red_at, last.t);
            let holds = closed_at.map(|closed_at| last.t < closed_at);
            let mut evidence: Vec<u64> = red
                .ids
                .iter()
                .copied()
                .chain(after.iter().map(|i| i.id))
                .collect();
            evidence.sort_unstable();
            let det = LbDetection {
                t_s: Some(t),
                lower_bound: true,
                shutdown_delay_s: delay,
                holds,
                hc_worst_case_s: hc,
                note: format!(
                    "last new connection through the LB {t:.1} s after /readyz turned red{}{}",
                    if red.inferred {
                        " (/readyz red inferred)"
                    } else {
                        ""
                    },
                    match checks_ignored.get(&(inst.clone(), n)) {
                        Some(&k) if k > 0 =>
                            format!("; {k} later LB health-check connection(s) not counted"),
                        _ => String::new(),
                    }
                ),
                evidence,
            };
            if holds == Some(false) {
                let closed_at = closed_at.unwrap_or(red_at);
                let late: Vec<Vec<&It>> = dedupe(
                    after.iter().copied().filter(|i| i.t >= closed_at).collect(),
                    tol,
                );
                let mut g = Group::new(late);
                g.extra_ids.extend(red.ids.iter().copied());
                if let Some(m) = c.marks.get(&PhaseKind::ListenerClosed) {
                    g.extra_ids.extend(m.ids.iter().copied());
                }
                let e3_wall = c
                    .marks
                    .get(&PhaseKind::ListenerClosed)
                    .and_then(|m| m.wall.clone());
                let (sentence, fix) =
                    text::lb_slow(inst, g.attempts.len(), &det, dsecs(closed_at, last.t));
                drafts.push(Draft {
                    cause: Cause::LbDetectionSlow,
                    instance: Some(inst.clone()),
                    cycle: Some(n),
                    group: g,
                    window: Some((closed_at, last.t, e3_wall, last.wall.clone())),
                    sentence,
                    fix,
                    measured: Some(Measured::LbDetection(det.clone())),
                });
            }
            lb.insert((inst.clone(), n), det);
        }
    }

    // Cuts: sigkill, request timeout, after GOAWAY, hard close.
    let mut cut_phase: BTreeMap<(String, usize), Mark> = BTreeMap::new();
    let mut sigkill_cuts: BTreeMap<(String, usize), Vec<Vec<&It>>> = BTreeMap::new();
    let mut had_cuts: BTreeSet<(String, usize)> = BTreeSet::new();
    for ((inst, cyc), its) in cuts {
        let attempts = dedupe(its, tol);
        let c = cyc_ref(&inst, cyc);
        let mut classes: BTreeMap<CutClass, Vec<Vec<&It>>> = BTreeMap::new();
        for a in attempts {
            let Some(first) = a.first() else { continue };
            let class = match c {
                Some(c) => classify_cut(
                    c,
                    cfg,
                    first.t,
                    a.iter().any(|i| i.probe),
                    a.iter()
                        .any(|i| matches!(i.item, Item::Cut { strong: true, .. })),
                ),
                None => CutClass::Unexplained,
            };
            // Kernel cuts outside any explanation are ordinary client
            // behaviour (aborted requests), not rollout disruptions.
            if class == CutClass::Unexplained && !a.iter().any(|i| i.probe) {
                continue;
            }
            classes.entry(class).or_default().push(a);
        }
        for (class, attempts) in classes {
            if let (Some(i), Some(n)) = (&inst, cyc) {
                if class != CutClass::Unexplained {
                    had_cuts.insert((i.clone(), n));
                }
                if class == CutClass::Sigkill {
                    sigkill_cuts.insert((i.clone(), n), attempts);
                    continue;
                }
            }
            let g = Group::new(attempts);
            let n = g.attempts.len();
            let closed_at = c.and_then(|c| c.t(PhaseKind::ListenerClosed));
            let (cause, (sentence, fix), measured) = match class {
                CutClass::Timeout => {
                    let first = g.first().map(|f| f.t).unwrap_or_default();
                    let seconds = closed_at
                        .map(|closed_at| dsecs(closed_at, first))
                        .unwrap_or(0.0);
                    if let (Some(i), Some(cn)) = (&inst, cyc) {
                        let wall = g.first().and_then(|f| f.wall.clone());
                        cut_phase.insert(
                            (i.clone(), cn),
                            Mark {
                                t: first,
                                ids: g.evidence(),
                                wall,
                                inferred: false,
                                note: None,
                            },
                        );
                    }
                    (
                        Cause::InflightCutAtTimeout,
                        text::timeout_cut(
                            inst.as_deref(),
                            n,
                            seconds,
                            cfg.request_timeout_s,
                            &whats(&g),
                        ),
                        Some(Measured::RequestTimeout {
                            seconds,
                            configured_s: cfg.request_timeout_s,
                        }),
                    )
                }
                CutClass::Goaway => (
                    Cause::GoawayThenFailed,
                    text::goaway_failed(inst.as_deref(), n),
                    None,
                ),
                CutClass::Hard => (
                    Cause::HardClose,
                    text::hard_close(inst.as_deref(), n, &whats(&g)),
                    None,
                ),
                CutClass::Unexplained | CutClass::Sigkill => (
                    Cause::Unexplained,
                    text::unexplained(inst.as_deref(), n, &whats(&g)),
                    None,
                ),
            };
            let mut g = g;
            if cause == Cause::GoawayThenFailed
                && let Some(c) = c
            {
                g.extra_ids.extend(c.goaways.iter().copied());
            }
            drafts.push(Draft {
                cause,
                instance: inst.clone(),
                cycle: cyc,
                group: g,
                window: None,
                sentence,
                fix,
                measured,
            });
        }
    }

    for ((inst, cyc), its) in probe_goaways {
        let mut g = Group::new(its.into_iter().map(|i| vec![i]).collect());
        if let Some(c) = cyc_ref(&inst, cyc) {
            g.extra_ids.extend(c.goaways.iter().copied());
        }
        let (sentence, fix) = text::goaway_failed(inst.as_deref(), g.attempts.len());
        drafts.push(Draft {
            cause: Cause::GoawayThenFailed,
            instance: inst,
            cycle: cyc,
            group: g,
            window: None,
            sentence,
            fix,
            measured: None,
        });
    }

    // SIGKILL, with whatever it cut.
    for (inst, cs) in &cycles {
        for (n, c) in cs.iter().enumerate() {
            let Some(k) = c.marks.get(&PhaseKind::Sigkill) else {
                continue;
            };
            let term = c.marks.get(&PhaseKind::Sigterm).filter(|m| m.t <= k.t);
            let grace = term.map(|m| dsecs(m.t, k.t));
            let attempts = sigkill_cuts.remove(&(inst.clone(), n)).unwrap_or_default();
            let mut g = Group::new(attempts);
            for p in [PhaseKind::Sigterm, PhaseKind::Sigkill, PhaseKind::Exit] {
                if let Some(m) = c.marks.get(&p) {
                    g.extra_ids.extend(m.ids.iter().copied());
                }
            }
            let end = g.last().map_or(k.t, |l| l.t.max(k.t));
            let end_wall = g
                .last()
                .filter(|l| l.t > k.t)
                .map_or(k.wall.clone(), |l| l.wall.clone());
            // A SIGTERM mark is there only on evidence of one (infer_phases):
            // without it the kill was the whole shutdown, not the end of a
            // grace period.
            let (cause, (sentence, fix)) = match term {
                Some(m) => {
                    let inferred_from = m.inferred.then(|| {
                        if c.marks
                            .get(&PhaseKind::ReadyzRed)
                            .is_some_and(|r| !r.inferred && r.ids == m.ids)
                        {
                            "/readyz turned red"
                        } else {
                            "the listener closed"
                        }
                    });
                    (
                        Cause::SigkillAfterGrace,
                        text::sigkill(
                            inst,
                            g.attempts.len(),
                            dsecs(m.t, k.t),
                            cfg.grace_period_s,
                            inferred_from,
                        ),
                    )
                }
                None => (
                    Cause::KilledWithoutTerm,
                    text::killed_without_term(
                        inst,
                        g.attempts.len(),
                        c.kill_sender,
                        k.inferred,
                        cfg.grace_period_s,
                    ),
                ),
            };
            drafts.push(Draft {
                cause,
                instance: Some(inst.clone()),
                cycle: Some(n),
                group: g,
                window: Some((k.t, end, k.wall.clone(), end_wall)),
                sentence,
                fix,
                measured: Some(Measured::Grace {
                    seconds: grace,
                    configured_s: cfg.grace_period_s,
                }),
            });
        }
    }

    // Idle resets by a middlebox: the one rule in `idle::infer`.
    for (inst, its) in idle {
        let samples: Vec<crate::idle::IdleSample> = its
            .iter()
            .filter_map(|i| match i.item {
                Item::IdleReset {
                    silence_s,
                    keepalive,
                    answered,
                } => Some(crate::idle::IdleSample {
                    silence_s,
                    answered,
                    keepalive,
                }),
                _ => None,
            })
            .collect();
        let Some(inf) = crate::idle::infer(&samples, cfg.tolerance_s) else {
            continue;
        };
        let g = Group::new(its.into_iter().map(|i| vec![i]).collect());
        let (sentence, fix) = text::idle(inst.as_deref(), g.attempts.len(), &inf);
        drafts.push(Draft {
            cause: Cause::IdleResetByMiddlebox,
            instance: inst,
            cycle: None,
            group: g,
            window: None,
            sentence,
            fix,
            measured: Some(Measured::IdleTimeout {
                inferred_s: inf.timeout_s,
                max_silence_s: inf.cluster_max_s,
                without_keepalive: inf.without_keepalive,
                with_keepalive: inf.with_keepalive,
            }),
        });
    }

    // Phases decided by classification: cut at the timeout, or drained.
    for (inst, cs) in cycles.iter_mut() {
        for (n, c) in cs.iter_mut().enumerate() {
            let key = (inst.clone(), n);
            if let Some(m) = cut_phase.remove(&key) {
                c.marks.insert(PhaseKind::RequestsCut, m);
            } else if !had_cuts.contains(&key)
                && !c.has(PhaseKind::Sigkill)
                && c.exit_signal.is_none()
                && let Some(m) = c.marks.get(&PhaseKind::Exit).cloned()
            {
                c.infer(
                    PhaseKind::Drained,
                    &m,
                    "no connection was cut before the process exited on its own".into(),
                );
            }
        }
    }

    let mut verdicts: Vec<Verdict> = drafts.into_iter().filter_map(Draft::finish).collect();
    sort_verdicts(&mut verdicts);

    let timelines: Vec<Timeline> = cycles
        .iter()
        .flat_map(|(inst, cs)| {
            let lb = &lb;
            cs.iter().enumerate().map(move |(n, c)| {
                let mut phases: Vec<Phase> = c
                    .marks
                    .iter()
                    .map(|(k, m)| Phase {
                        kind: *k,
                        t_ns: m.t,
                        wall: m.wall.clone(),
                        inferred: m.inferred,
                        evidence: m.ids.clone(),
                        note: m.note.clone(),
                    })
                    .collect();
                phases.sort_by_key(|p| (p.t_ns, p.kind));
                Timeline {
                    instance: inst.clone(),
                    cycle: n,
                    phases,
                    complete: c.complete,
                    lb_detection: lb.get(&(inst.clone(), n)).cloned(),
                    goaways: c.goaways.clone(),
                }
            })
        })
        .collect();

    let summary = summarize(&verdicts, &timelines);
    Report {
        timelines,
        verdicts,
        summary,
        stats: InputStats {
            observations: sorted.len() as u64,
            duplicates,
            unattributed,
            late: 0,
            direct_arrivals: 0,
            pruned_closes: 0,
            forgotten_timelines: 0,
            forgotten_verdicts: 0,
        },
    }
}

fn whats(g: &Group) -> Vec<String> {
    let mut v: Vec<String> = g
        .attempts
        .iter()
        .flatten()
        .filter_map(|i| match &i.item {
            Item::Cut { what, .. } => Some(what.clone()),
            _ => None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn summarize(verdicts: &[Verdict], timelines: &[Timeline]) -> Summary {
    let mut s = Summary::default();
    for v in verdicts {
        let e = s
            .by_cause
            .entry(v.cause.label().to_string())
            .or_insert_with(CauseTotals::default);
        e.verdicts += 1;
        e.disruptions += v.count;
        e.seconds += v.seconds();
    }
    for t in timelines {
        if let Some(x) = t.lb_detection.as_ref().and_then(|d| d.t_s) {
            s.lb_detection_seconds.insert(t.instance.clone(), x);
        }
    }
    // Latest rollout per instance (timelines are by instance, then time).
    let mut latest: BTreeMap<&str, &Timeline> = BTreeMap::new();
    for t in timelines {
        latest.insert(&t.instance, t);
    }
    for t in latest.values() {
        for p in &t.phases {
            s.phases.push(PhaseGauge {
                instance: t.instance.clone(),
                phase: p.kind.label().to_string(),
                t_ns: p.t_ns,
                wall: p.wall.clone(),
                inferred: p.inferred,
            });
        }
    }
    s
}
