//! [`Cause::LbDetectionSlow`]: t = time from /readyz red to the last new
//! connection (accepted or refused) arriving via the LB after it (a lower
//! bound on the LB's detection time). The listener close is the observed
//! one, else /readyz red + the configured shutdown delay. The verdict is
//! given when t is not shorter than that shutdown delay, i.e. something
//! arrived via the LB at or after the listener closed; otherwise t is
//! recorded in the timeline. No arrival after /readyz red, or the
//! listener closed before it (killed): "not measurable", said in the
//! timeline. A /readyz flap without a shutdown is not measured.
//!
//! # LB health checks
//! An LB's own health-check connections are not client traffic and are
//! neither refusals to report nor arrivals for t: connections from
//! [`Config::health_check_sources`](crate::Config::health_check_sources),
//! and, when [`Config::health_check`](crate::Config::health_check) is
//! known, the trailing run of arrivals via the LB at least half an interval
//! apart once the LB took the instance out (plus the check one interval
//! before that run).
//!
//! Blind spot: client traffic sparser than one connection per half check
//! interval cannot be told from checks.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::secs_to_ns;
use crate::output::{Cause, LbDetection, Measured, PhaseKind};
use crate::text::plural;

use super::super::cycle::Cycle;
use super::super::draft::{Draft, Group, It, Item, dedupe, dsecs};
use super::Ctx;

/// LB health-check connections found among the items.
pub(in crate::engine) struct HealthChecks {
    /// Their ids: not client traffic, for any cause.
    pub(in crate::engine) ids: BTreeSet<u64>,
    /// How many were taken out of each rollout's arrivals.
    ignored: BTreeMap<(String, usize), usize>,
}

/// LB health checks are not client traffic: connections from a configured
/// checker source, or, from the LB's own address, the sparse train at the
/// check interval that follows the LB taking the instance out. Takes them
/// out of `arrivals`.
pub(in crate::engine) fn health_checks(
    ctx: &Ctx,
    items: &[It],
    arrivals: &mut BTreeMap<(String, usize), Vec<&It>>,
) -> HealthChecks {
    let cfg = ctx.cfg;
    let mut health_checks: BTreeSet<u64> = items
        .iter()
        .filter(|i| matches!(i.item, Item::Refusal { .. } | Item::Arrival { .. }))
        .filter(|i| i.client.is_some_and(|c| cfg.is_health_check_source(&c)))
        .map(|i| i.id)
        .collect();
    if let Some(hc) = cfg.health_check {
        for ((inst, n), arr) in arrivals.iter() {
            let Some(red_at) = ctx
                .cycle(&Some(inst.clone()), Some(*n))
                .and_then(|c| c.t(PhaseKind::ReadyzRed))
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
    let mut ignored: BTreeMap<(String, usize), usize> = BTreeMap::new();
    for (k, v) in arrivals.iter_mut() {
        let before = v.len();
        v.retain(|i| !health_checks.contains(&i.id));
        ignored.insert(k.clone(), before - v.len());
    }
    HealthChecks {
        ids: health_checks,
        ignored,
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

/// The LB detection time of every rollout that shut down after /readyz
/// turned red, and a verdict where it was too slow.
pub(in crate::engine) fn per_rollout<'a>(
    ctx: &Ctx,
    arrivals: &BTreeMap<(String, usize), Vec<&'a It>>,
    checks: &HealthChecks,
    drafts: &mut Vec<Draft<'a>>,
) -> BTreeMap<(String, usize), LbDetection> {
    let mut lb: BTreeMap<(String, usize), LbDetection> = BTreeMap::new();
    for (inst, cs) in ctx.cycles {
        for (n, c) in cs.iter().enumerate() {
            if let Some(det) = detect(ctx, inst, n, c, arrivals, checks, drafts) {
                lb.insert((inst.clone(), n), det);
            }
        }
    }
    lb
}

/// Why the LB had no warning at all, if it had none: killed or crashed,
/// the listener went before /readyz could warn it, or /readyz failed
/// because the process was being killed (a poll cut by the SIGKILL, seen on
/// a busy machine a moment before the dying process got to close its
/// listener). Then there is no detection time to speak of. Blind spot: a
/// real red phase the poller missed, followed by a kill, is not measured
/// either (reported as not measurable, never as a wrong time).
fn no_warning(c: &Cycle, red_at: u64) -> Option<String> {
    if let Some(closed) = c
        .t(PhaseKind::ListenerClosed)
        .filter(|closed_at| *closed_at < red_at)
    {
        return Some(format!(
            "the listener closed {:.1} s before /readyz turned red",
            dsecs(closed, red_at)
        ));
    }
    c.t(PhaseKind::Sigkill)
        .filter(|killed_at| *killed_at <= red_at)
        .map(|killed| {
            format!(
                "/readyz turned red {:.3} s after the SIGKILL",
                dsecs(killed, red_at)
            )
        })
}

/// One rollout's detection time; pushes the verdict when it was too slow.
fn detect<'a>(
    ctx: &Ctx,
    inst: &str,
    n: usize,
    c: &Cycle,
    arrivals: &BTreeMap<(String, usize), Vec<&'a It>>,
    checks: &HealthChecks,
    drafts: &mut Vec<Draft<'a>>,
) -> Option<LbDetection> {
    let cfg = ctx.cfg;
    // A /readyz flap without a shutdown has no listener close to race.
    let red = c
        .marks
        .get(&PhaseKind::ReadyzRed)
        .filter(|_| c.shut_down())?;
    let red_at = red.t;
    let hc = cfg.health_check.map(|h| h.worst_case_s());
    if let Some(why) = no_warning(c, red_at) {
        return Some(LbDetection {
            t_s: None,
            lower_bound: false,
            shutdown_delay_s: None,
            holds: None,
            hc_worst_case_s: hc,
            note: format!("not measurable: {why}, so the LB had no warning"),
            evidence: red.ids.clone(),
        });
    }
    let closed_at = c
        .t(PhaseKind::ListenerClosed)
        .filter(|closed_at| *closed_at >= red_at)
        .or_else(|| {
            cfg.shutdown_delay_s
                .map(|d| red_at.saturating_add(secs_to_ns(d)))
        });
    let delay = closed_at.map(|closed_at| dsecs(red_at, closed_at));
    let key = (inst.to_string(), n);
    let after: Vec<&It> = arrivals
        .get(&key)
        .map(|v| v.iter().copied().filter(|i| i.t > red_at).collect())
        .unwrap_or_default();
    let Some(last) = after.iter().max_by_key(|i| (i.t, i.id)) else {
        return Some(LbDetection {
            t_s: None,
            lower_bound: false,
            shutdown_delay_s: delay,
            holds: None,
            hc_worst_case_s: hc,
            note: "not measurable: no new connection through the LB arrived after /readyz turned red (no traffic, or the LB took it out at once)".into(),
            evidence: red.ids.clone(),
        });
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
            match checks.ignored.get(&key) {
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
            ctx.tol,
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
        let (sentence, fix) = sentence(inst, g.attempts.len(), &det, dsecs(closed_at, last.t));
        drafts.push(Draft {
            cause: Cause::LbDetectionSlow,
            instance: Some(inst.to_string()),
            cycle: Some(n),
            group: g,
            window: Some((closed_at, last.t, e3_wall, last.wall.clone())),
            sentence,
            fix,
            measured: Some(Measured::LbDetection(det.clone())),
        });
    }
    Some(det)
}

/// What the verdict says, and its fix.
fn sentence(inst: &str, late: usize, d: &LbDetection, past_e3: f64) -> (String, String) {
    let t = d.t_s.unwrap_or_default();
    let delay = d
        .shutdown_delay_s
        .map_or_else(|| "unknown".to_string(), |s| format!("{s:.1} s"));
    let hc = d
        .hc_worst_case_s
        .map(|w| format!("; its health check can take up to {w:.1} s"))
        .unwrap_or_default();
    (
        format!(
            "the LB took at least {t:.1} s to notice /readyz on apiserver {inst} had turned red, not less than the shutdown delay ({delay}), and it still sent {} at or after the listener close{}{hc}",
            plural(late, "new connection", "new connections"),
            if past_e3 >= 0.05 {
                format!(" (the last {past_e3:.1} s after it)")
            } else {
                String::new()
            }
        ),
        "make the LB's /readyz health check take the instance out within the shutdown delay (interval x unhealthy threshold + timeout < shutdown-delay-duration), or raise shutdown-delay-duration above t".into(),
    )
}
