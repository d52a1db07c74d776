//! [`Cause::GoawayThenFailed`]: a prober request that failed after the
//! instance sent an HTTP/2 GOAWAY (sorted by [`super::cuts`]), and every
//! prober request that failed with a GOAWAY error. A GOAWAY alone is
//! graceful: a timeline phase.
//!
//! Blind spot: only the prober's requests are counted; the GOAWAY is on the
//! wire, but other clients' failures after it are not.

use std::collections::BTreeMap;

use crate::output::{Cause, PhaseKind};
use crate::text::{plural, who};

use super::super::cycle::Cycle;
use super::super::draft::{Draft, Group, It, Owner};
use super::Ctx;

/// `t` is at or after the rollout's GOAWAY.
pub(in crate::engine) fn after_goaway(c: &Cycle, t: u64) -> bool {
    c.t(PhaseKind::GoawaySent).is_some_and(|g| t >= g)
}

/// The verdict for a rollout's prober failures after its GOAWAY.
pub(in crate::engine) fn cut_draft<'a>(
    (inst, cyc): Owner,
    c: Option<&Cycle>,
    mut g: Group<'a>,
) -> Draft<'a> {
    let (sentence, fix) = sentence(inst.as_deref(), g.attempts.len());
    if let Some(c) = c {
        g.extra_ids.extend(c.goaways.iter().copied());
    }
    Draft::new(Cause::GoawayThenFailed, (inst, cyc), g, (sentence, fix))
}

/// One verdict per rollout with prober requests failed by a GOAWAY.
pub(in crate::engine) fn probe_verdicts<'a>(
    ctx: &Ctx,
    probe_goaways: BTreeMap<Owner, Vec<&'a It>>,
    drafts: &mut Vec<Draft<'a>>,
) {
    for ((inst, cyc), its) in probe_goaways {
        let mut g = Group::new(its.into_iter().map(|i| vec![i]).collect());
        if let Some(c) = ctx.cycle(&inst, cyc) {
            g.extra_ids.extend(c.goaways.iter().copied());
        }
        let (sentence, fix) = sentence(inst.as_deref(), g.attempts.len());
        drafts.push(Draft::new(
            Cause::GoawayThenFailed,
            (inst, cyc),
            g,
            (sentence, fix),
        ));
    }
}

/// What the verdict says, and its fix.
fn sentence(inst: Option<&str>, n: usize) -> (String, String) {
    (
        format!(
            "{} sent HTTP/2 GOAWAY while shutting down, and {} still failed after it",
            who(inst),
            plural(n, "request", "requests")
        ),
        "clients must retry requests above the GOAWAY's last-stream-id on a new connection (client-go does for idempotent requests); keep the listener's shutdown delay long enough for the LB to stop sending".into(),
    )
}
