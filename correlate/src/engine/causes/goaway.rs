//! [`Cause::GoawayThenFailed`]: a prober request that failed after the
//! instance sent an HTTP/2 GOAWAY, and a request cut (a strong cut, see
//! [`super::cuts`]) on a connection the instance had sent GOAWAY on, e.g.
//! a Go server whose `Shutdown()` deadline ran out, or that exited without
//! waiting for it, while watches were open; and every prober request that
//! failed with a GOAWAY error. A GOAWAY alone is graceful: a timeline phase.
//!
//! Blind spots: a connection's GOAWAY is known only where its source knew
//! the connection (the uprobes in a Go server, the wire observer on h2c, a
//! capture); another client's request refused above the last-stream-id is
//! retried by the client and seen by nobody here; a cut that no kernel rule
//! calls strong (an idle connection closed) is not counted.

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
    let cut = g
        .attempts
        .iter()
        .filter(|a| !a.iter().any(|i| i.probe))
        .count();
    let (sentence, fix) = if cut == 0 {
        sentence(inst.as_deref(), g.attempts.len())
    } else {
        cut_sentence(inst.as_deref(), g.attempts.len(), cut)
    };
    if let Some(c) = c {
        g.extra_ids.extend(c.goaways.iter().copied());
    }
    Draft::new(Cause::GoawayThenFailed, (inst, cyc), g, (sentence, fix))
}

/// What the verdict says when connections it had sent GOAWAY on were cut
/// with requests open (`cut` of the `n` failures).
fn cut_sentence(inst: Option<&str>, n: usize, cut: usize) -> (String, String) {
    let probes = n - cut;
    (
        format!(
            "{} sent HTTP/2 GOAWAY while shutting down, then closed {} it had sent it on with requests still open (watches or requests in flight){}",
            who(inst),
            plural(cut, "connection", "connections"),
            if probes > 0 {
                format!(", and {} failed", plural(probes, "probe request", "probe requests"))
            } else {
                String::new()
            }
        ),
        "let the server finish what it accepted before it exits: give the graceful shutdown a deadline longer than its longest request (kube-apiserver: the request timeout, within terminationGracePeriodSeconds) and wait for it to return; clients holding watches must re-watch on a new connection (client-go does)".into(),
    )
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
