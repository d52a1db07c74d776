//! The analysis: observations in, timelines and verdicts out.
//!
//! Deterministic by construction: the input is deduplicated by id and
//! sorted by `(t_ns, id)` before anything looks at it, every map is a
//! `BTreeMap`, and the incremental [`Engine`] recomputes from the same set
//! the batch [`analyze`] sees, so both agree whatever the arrival order.
//!
//! [`compute`] runs the stages, one module each:
//! 1. [`cycle`]: each instance's rollouts from its lifecycle observations;
//! 2. [`attribute`]: connection-level items, with instance, rollout and path;
//! 3. [`infer`]: phases not observed but implied;
//! 4. [`causes`]: one module per cause, with its rule, blind spots and
//!    sentence;
//! 5. [`report`]: verdicts, timelines, totals.
//!
//! [`draft`] holds what they pass each other; [`incremental`] the
//! [`Engine`] that keeps observations and an archive and calls [`compute`].

use std::collections::BTreeSet;

use crate::config::Config;
use crate::model::Observation;
use crate::output::{InputStats, Report};

mod attribute;
mod causes;
mod cycle;
mod draft;
mod incremental;
mod infer;
mod report;

pub use incremental::{ARCHIVE_TIMELINES, ARCHIVE_VERDICTS, Engine, analyze};

use causes::{Ctx, accept_queue, cuts, goaway, idle_reset, lb_detection, refused, sigkill};

/// The report of a set of observations (`readyz_seen`: instances a poller
/// reported for in observations already compacted away).
fn compute<'a>(
    cfg: &Config,
    all: impl Iterator<Item = &'a Observation>,
    duplicates: u64,
    readyz_seen: &BTreeSet<String>,
) -> Report {
    let tol = cfg.tolerance_ns();
    let mut sorted: Vec<&Observation> = all.collect();
    sorted.sort_by_key(|o| (o.t_ns, o.id));

    // 1. Timelines: each instance's rollouts, as observed.
    let cycle::Lifecycles {
        mut cycles,
        has_readyz,
        unowned_goaways,
    } = cycle::lifecycles(cfg, &sorted, readyz_seen);

    // 2. Attribution: connection-level items; what names no instance goes
    // to the one whose rollout explains it.
    let mut items = attribute::items(cfg, &sorted);
    attribute::unowned_items(&mut items, &cycles, tol);
    attribute::unowned_goaways(&unowned_goaways, &mut cycles, tol);

    // 3. Inference: the phases that follow from what was observed.
    infer::missing_phases(&mut cycles, &items, cfg, &has_readyz);

    // 4. Causes, each from the items of its rollouts.
    let mut buckets = attribute::by_owner(&items, &cycles, tol);
    let ctx = Ctx {
        cfg,
        tol,
        cycles: &cycles,
    };
    let mut drafts = Vec::new();
    let checks = lb_detection::health_checks(&ctx, &items, &mut buckets.arrivals);
    refused::verdicts(&ctx, buckets.refusals, &checks.ids, &mut drafts);
    accept_queue::verdicts(&ctx, buckets.queue_resets, &mut drafts);
    let lb = lb_detection::per_rollout(&ctx, &buckets.arrivals, &checks, &mut drafts);
    let cut = cuts::verdicts(&ctx, buckets.cuts, &mut drafts);
    goaway::probe_verdicts(&ctx, buckets.probe_goaways, &mut drafts);
    sigkill::verdicts(&ctx, cut.sigkill, &mut drafts);
    idle_reset::verdicts(cfg, buckets.idle, &mut drafts);

    // 3 again: the phases the cuts decide (cut at the timeout, or drained).
    infer::decided_phases(&mut cycles, cut.timeout_phase, &cut.had_cuts);

    // 5. The report.
    let stats = InputStats {
        observations: sorted.len() as u64,
        duplicates,
        unattributed: buckets.unattributed,
        late: 0,
        direct_arrivals: 0,
        pruned_closes: 0,
        forgotten_timelines: 0,
        forgotten_verdicts: 0,
    };
    report::report(&cycles, &lb, drafts, stats)
}
