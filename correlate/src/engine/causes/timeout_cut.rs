//! [`Cause::InflightCutAtTimeout`]: requests still in flight cut at the
//! request timeout. A cut within max(`tol`, 5 %) of the listener close +
//! the configured request timeout; with no configured timeout, a cut
//! within `tol` of a clean exit (no SIGKILL) more than `tol` after the
//! listener closed (a drain, then the timeout firing as the process
//! exits). The first such cut is the rollout's `requests_cut` phase.
//!
//! Blind spot: without a configured timeout, a cut just before a clean
//! exit for another reason is taken for the timeout.

use std::collections::BTreeMap;

use crate::config::{Config, secs_to_ns};
use crate::output::{Cause, Measured, PhaseKind};
use crate::text::{plural, who};

use super::super::cycle::{Cycle, Mark};
use super::super::draft::{Draft, Group, Owner, dsecs};
use super::Ctx;

/// A cut at `t` is at the configured request timeout after the listener
/// closed at `closed_at` (within max(`tol`, 5 %) of it).
pub(in crate::engine) fn at_configured_timeout(
    cfg: &Config,
    closed_at: Option<u64>,
    t: u64,
) -> bool {
    let (Some(closed_at), Some(rt)) = (closed_at, cfg.request_timeout_s) else {
        return false;
    };
    let at = closed_at.saturating_add(secs_to_ns(rt));
    let slack = cfg.tolerance_ns().max(secs_to_ns(rt * 0.05));
    t.abs_diff(at) <= slack
}

/// No configured timeout: a cut right before a clean exit, after a drain
/// period, is the request timeout firing.
pub(in crate::engine) fn at_exit_without_configured_timeout(
    c: &Cycle,
    cfg: &Config,
    t: u64,
    closed_at: u64,
) -> bool {
    let tol = cfg.tolerance_ns();
    cfg.request_timeout_s.is_none()
        && !c.has(PhaseKind::Sigkill)
        && c.t(PhaseKind::Exit)
            .is_some_and(|x| t > closed_at.saturating_add(tol) && t.abs_diff(x) <= tol)
}

/// The verdict for a rollout's cuts at the timeout; marks its
/// `requests_cut` phase in `phase`.
pub(in crate::engine) fn draft<'a>(
    ctx: &Ctx,
    (inst, cyc): Owner,
    c: Option<&Cycle>,
    g: Group<'a>,
    phase: &mut BTreeMap<(String, usize), Mark>,
) -> Draft<'a> {
    let closed_at = c.and_then(|c| c.t(PhaseKind::ListenerClosed));
    let first = g.first().map(|f| f.t).unwrap_or_default();
    let seconds = closed_at
        .map(|closed_at| dsecs(closed_at, first))
        .unwrap_or(0.0);
    if let (Some(i), Some(cn)) = (&inst, cyc) {
        let wall = g.first().and_then(|f| f.wall.clone());
        phase.insert(
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
    let configured_s = ctx.cfg.request_timeout_s;
    let (sentence, fix) = sentence(
        inst.as_deref(),
        g.attempts.len(),
        seconds,
        configured_s,
        &g.whats(),
    );
    Draft {
        cause: Cause::InflightCutAtTimeout,
        instance: inst,
        cycle: cyc,
        group: g,
        window: None,
        sentence,
        fix,
        measured: Some(Measured::RequestTimeout {
            seconds,
            configured_s,
        }),
    }
}

/// What the verdict says, and its fix.
fn sentence(
    inst: Option<&str>,
    n: usize,
    seconds: f64,
    configured: Option<f64>,
    whats: &[String],
) -> (String, String) {
    let cfgd = configured
        .map(|c| format!(" (request timeout {c:.0} s)"))
        .unwrap_or_default();
    (
        format!(
            "{} still in flight on {} were cut {seconds:.1} s after it stopped listening, at the request timeout{cfgd}: {}",
            plural(n, "request", "requests"),
            who(inst),
            whats.join(", ")
        ),
        "requests and watches must finish or be re-established within the request timeout: make clients retry or resume watches, and keep long requests below it".into(),
    )
}
