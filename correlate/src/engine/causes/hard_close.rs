//! [`Cause::HardClose`]: connections cut without draining while shutting
//! down (an HTTP server's `Close()` instead of a graceful shutdown). Strong
//! kernel evidence from 50 ms before the listener close until 50 ms after
//! the exit (before: the server was serving as usual; after: a new process
//! is); prober failures within `tol` of the listener close or later in the
//! shutdown. Cuts the rules before it in [`super::cuts`] explain are not
//! counted here.

use crate::config::Config;
use crate::output::{Cause, PhaseKind};
use crate::text::{plural, who};

use super::super::cycle::Cycle;
use super::super::draft::{Draft, Group, Owner};

/// How far kernel-timed close evidence may precede the listener's close,
/// or follow the process's exit, and still be that close (ns).
pub(in crate::engine) const HARD_CLOSE_LEAD_NS: u64 = 50_000_000;

/// A strong cut at `t` (kernel) or a prober failure (`probe`) happened
/// while the instance was shutting down, its listener closed at `closed_at`.
pub(in crate::engine) fn during_shutdown(
    c: &Cycle,
    cfg: &Config,
    t: u64,
    closed_at: u64,
    probe: bool,
) -> bool {
    let tol = cfg.tolerance_ns();
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
        return t >= from && t <= until;
    }
    if t.abs_diff(closed_at) <= tol {
        return true;
    }
    t.saturating_add(tol) >= closed_at
}

/// The verdict for a rollout's hard-closed connections.
pub(in crate::engine) fn draft<'a>((inst, cyc): Owner, g: Group<'a>) -> Draft<'a> {
    let (sentence, fix) = sentence(inst.as_deref(), g.attempts.len(), &g.whats());
    Draft::new(Cause::HardClose, (inst, cyc), g, (sentence, fix))
}

/// What the verdict says, and its fix.
fn sentence(inst: Option<&str>, n: usize, whats: &[String]) -> (String, String) {
    (
        format!(
            "{} closed {} hard while shutting down instead of draining them ({})",
            who(inst),
            plural(n, "connection", "connections"),
            whats.join(", ")
        ),
        "shut down gracefully (Go: http.Server.Shutdown(ctx), not Close()): send GOAWAY and let in-flight requests finish".into(),
    )
}
