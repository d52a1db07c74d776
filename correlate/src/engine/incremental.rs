//! The incremental [`Engine`] (push, report, compact, prune) and its
//! archive of compacted rollouts; [`analyze`], the batch form.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, ConfigError};
use crate::model::{Obs, Observation, Path};
use crate::output::{CauseTotals, InputStats, Report, Summary, Timeline, Verdict};

use super::attribute::instance_of;
use super::compute;
use super::report::{sort_verdicts, summarize};

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

/// Batch analysis: the same as pushing every observation into an
/// [`Engine`] and asking for its report.
pub fn analyze(config: &Config, observations: Vec<Observation>) -> Result<Report, ConfigError> {
    let mut e = Engine::new(config.clone())?;
    for o in observations {
        e.push(o);
    }
    Ok(e.report().clone())
}
