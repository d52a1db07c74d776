//! Cuts: connections and requests cut, sorted among the causes that
//! explain them ([`classify_cut`], in the order below), each class then
//! worded by its cause's module.
//!
//! Cuts are strong or weak. Strong: a server close with a request
//! outstanding (the kernel saw the client's data last), a server close
//! while its response was streaming ([`Obs::StreamCut`](crate::Obs::StreamCut):
//! with the wire observer, the server kept sending payloads above 128 bytes
//! for over a second after the client's last payload above 40 bytes, i.e. a
//! watch; blind spots: a watch quiet since its first events, a multiplexed
//! HTTP/2 connection whose client keeps sending requests, and a slow
//! response sent in bursts over a second then closed idle), a deliberate
//! abort (`TCP_ABORT_ON_CLOSE`) of an open connection, a failed prober
//! request other than refused and GOAWAY (5xx included). Weak: an RST over
//! unread data (`TCP_ABORT_ON_DATA`), an abort in a close already under
//! way, an RST a local client got: graceful closes do these too (an idle
//! connection closed while the client's TLS close_notify was unread), so
//! weak cuts alone are never a disruption.
//!
//! In order: at SIGKILL ([`super::sigkill`]); at the request timeout
//! ([`super::timeout_cut`]); a prober failure after a GOAWAY
//! ([`super::goaway`]); once the instance listens again -> the new
//! process's traffic, ignored; with no configured timeout, just before a
//! clean exit after a drain ([`super::timeout_cut`]); during the shutdown
//! ([`super::hard_close`]). Kernel cuts outside these are ordinary client
//! aborts and ignored; prober failures nothing explains ->
//! [`super::unexplained`].

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::output::PhaseKind;

use super::super::cycle::{Cycle, Mark};
use super::super::draft::{Draft, Group, It, Item, Owner, dedupe};
use super::{Ctx, goaway, hard_close, sigkill, timeout_cut, unexplained};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(in crate::engine) enum CutClass {
    Sigkill,
    Timeout,
    Goaway,
    Hard,
    Unexplained,
}

/// Which cause explains a cut at `t` in rollout `c`: the rules of the
/// causes, in order (module docs).
pub(in crate::engine) fn classify_cut(
    c: &Cycle,
    cfg: &Config,
    t: u64,
    probe: bool,
    strong: bool,
    on_goaway_conn: bool,
) -> CutClass {
    if sigkill::cut_by_kill(c, cfg, t, probe, strong) {
        return CutClass::Sigkill;
    }
    let closed_at = c.t(PhaseKind::ListenerClosed);
    if timeout_cut::at_configured_timeout(cfg, closed_at, t) {
        return CutClass::Timeout;
    }
    let after_goaway = goaway::after_goaway(c, t);
    if probe && after_goaway {
        return CutClass::Goaway;
    }
    // A request cut on a connection the instance had already sent GOAWAY
    // on: it shut down gracefully, then closed the connection (exited, or
    // a shutdown deadline passed) before the requests it had accepted were
    // done. Not a hard close: the GOAWAY went out first.
    if strong && on_goaway_conn {
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
    if timeout_cut::at_exit_without_configured_timeout(c, cfg, t, closed_at) {
        return CutClass::Timeout;
    }
    if !probe && !strong {
        // An RST because of unread data, or one a client got, happens in
        // ordinary closes too, graceful shutdowns included (an idle
        // connection closed while the client's TLS close_notify or PING was
        // unread): alone it proves no cut.
        return CutClass::Unexplained;
    }
    if hard_close::during_shutdown(c, cfg, t, closed_at, probe) {
        CutClass::Hard
    } else {
        CutClass::Unexplained
    }
}

/// What sorting the cuts leaves for later stages.
#[derive(Default)]
pub(in crate::engine) struct Sorted<'a> {
    /// The `requests_cut` phase of rollouts cut at the request timeout.
    pub(in crate::engine) timeout_phase: BTreeMap<(String, usize), Mark>,
    /// Each rollout's attempts its SIGKILL cut, for [`super::sigkill`].
    pub(in crate::engine) sigkill: BTreeMap<(String, usize), Vec<Vec<&'a It>>>,
    /// Rollouts with any explained cut (not drained).
    pub(in crate::engine) had_cuts: BTreeSet<(String, usize)>,
}

/// Sorts each rollout's cuts by cause and pushes a verdict per cause (the
/// SIGKILL's are left to [`super::sigkill`]).
pub(in crate::engine) fn verdicts<'a>(
    ctx: &Ctx,
    cuts: BTreeMap<Owner, Vec<&'a It>>,
    drafts: &mut Vec<Draft<'a>>,
) -> Sorted<'a> {
    let mut out = Sorted::default();
    for ((inst, cyc), its) in cuts {
        let c = ctx.cycle(&inst, cyc);
        let classes = classes(ctx, c, dedupe(its, ctx.tol));
        for (class, attempts) in classes {
            if let (Some(i), Some(n)) = (&inst, cyc) {
                if class != CutClass::Unexplained {
                    out.had_cuts.insert((i.clone(), n));
                }
                if class == CutClass::Sigkill {
                    out.sigkill.insert((i.clone(), n), attempts);
                    continue;
                }
            }
            let g = Group::new(attempts);
            let owner = (inst.clone(), cyc);
            drafts.push(match class {
                CutClass::Timeout => timeout_cut::draft(ctx, owner, c, g, &mut out.timeout_phase),
                CutClass::Goaway => goaway::cut_draft(owner, c, g),
                CutClass::Hard => hard_close::draft(owner, g),
                CutClass::Unexplained | CutClass::Sigkill => unexplained::draft(owner, g),
            });
        }
    }
    out
}

/// One rollout's cut attempts by class; kernel cuts nothing explains are
/// dropped.
fn classes<'a>(
    ctx: &Ctx,
    c: Option<&Cycle>,
    attempts: Vec<Vec<&'a It>>,
) -> BTreeMap<CutClass, Vec<Vec<&'a It>>> {
    let mut classes: BTreeMap<CutClass, Vec<Vec<&It>>> = BTreeMap::new();
    for a in attempts {
        let Some(first) = a.first() else { continue };
        let class = match c {
            Some(c) => classify_cut(
                c,
                ctx.cfg,
                first.t,
                a.iter().any(|i| i.probe),
                a.iter()
                    .any(|i| matches!(i.item, Item::Cut { strong: true, .. })),
                a.iter()
                    .filter_map(|i| i.client.as_ref())
                    .any(|k| c.goaway_before(k, first.t)),
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
    classes
}
