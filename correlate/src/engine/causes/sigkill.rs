//! The SIGKILL, with whatever it cut (cuts from 50 ms before the kill until
//! 50 ms after the exit for kernel evidence, within `tol` for the prober's,
//! strong kernel evidence only; see [`super::cuts`]). Whether a SIGTERM
//! came before it is decided by [`super::super::infer`] ("SIGTERM before a
//! SIGKILL", with its blind spots).
//! - [`Cause::SigkillAfterGrace`]: one per rollout with a SIGKILL
//!   (observed or inferred) after evidence of a SIGTERM, grace = SIGKILL -
//!   SIGTERM (at least that, when the SIGTERM was inferred), count = what
//!   it cut.
//! - [`Cause::KilledWithoutTerm`]: one per rollout with a SIGKILL and no
//!   evidence of a SIGTERM before it (the OOM killer, a force delete with
//!   `--grace-period=0`, a liveness kill, a runtime kill), count = what it
//!   cut; the sentence names the sender's pid when the signal was seen.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::output::{Cause, Measured, PhaseKind};
use crate::text::plural;

use super::super::cycle::Cycle;
use super::super::draft::{Draft, Group, It, dsecs};
use super::Ctx;
use super::hard_close::HARD_CLOSE_LEAD_NS;

/// A cut at `t` is the SIGKILL's: the sockets the dying process's exit
/// closes.
pub(in crate::engine) fn cut_by_kill(
    c: &Cycle,
    cfg: &Config,
    t: u64,
    probe: bool,
    strong: bool,
) -> bool {
    let Some(k) = c.t(PhaseKind::Sigkill) else {
        return false;
    };
    // Kernel evidence is timed exactly: the kill's cuts are the sockets
    // the dying process's exit closes. An RST alone over unread data is
    // not a cut (see `cuts`).
    let lead = if probe {
        cfg.tolerance_ns()
    } else {
        HARD_CLOSE_LEAD_NS
    };
    let before_exit = c
        .t(PhaseKind::Exit)
        .is_none_or(|x| t <= x.saturating_add(lead));
    t.saturating_add(lead) >= k && before_exit && (probe || strong)
}

/// One verdict per rollout with a SIGKILL, counting the attempts it cut.
pub(in crate::engine) fn verdicts<'a>(
    ctx: &Ctx,
    mut cuts: BTreeMap<(String, usize), Vec<Vec<&'a It>>>,
    drafts: &mut Vec<Draft<'a>>,
) {
    let cfg = ctx.cfg;
    for (inst, cs) in ctx.cycles {
        for (n, c) in cs.iter().enumerate() {
            let Some(k) = c.marks.get(&PhaseKind::Sigkill) else {
                continue;
            };
            let term = c.marks.get(&PhaseKind::Sigterm).filter(|m| m.t <= k.t);
            let grace = term.map(|m| dsecs(m.t, k.t));
            let attempts = cuts.remove(&(inst.clone(), n)).unwrap_or_default();
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
                        after_grace(
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
                    without_term(
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
}

/// A SIGKILL after a SIGTERM: the grace period ran out. `inferred_from`
/// names the evidence when the SIGTERM itself was not seen (the grace is
/// then at least `grace`).
fn after_grace(
    inst: &str,
    n: usize,
    grace: f64,
    configured: Option<f64>,
    inferred_from: Option<&str>,
) -> (String, String) {
    let how = match inferred_from {
        None => format!("was SIGKILLed {grace:.1} s after SIGTERM"),
        Some(from) => format!(
            "was SIGKILLed at least {grace:.1} s after SIGTERM (SIGTERM not seen; {from} then)"
        ),
    };
    let cfgd = configured
        .map(|c| format!(" (terminationGracePeriodSeconds {c:.0})"))
        .unwrap_or_default();
    (
        format!(
            "apiserver {inst} {how}{cfgd} before it exited cleanly, cutting {}",
            plural(n, "connection or request", "connections or requests")
        ),
        "make the process shut down within the grace period (shutdown-delay + request-timeout < terminationGracePeriodSeconds) and handle SIGTERM, or raise the grace period".into(),
    )
}

/// A SIGKILL with no evidence of a SIGTERM before it: there was no graceful
/// shutdown to run out of time. `sender` is the signalling process when the
/// kill was observed; `inferred` when only the exit on signal 9 says so.
fn without_term(
    inst: &str,
    n: usize,
    sender: Option<u32>,
    inferred: bool,
    configured: Option<f64>,
) -> (String, String) {
    let how = match (sender, inferred) {
        (Some(p), _) => format!("was SIGKILLed by pid {p}"),
        (None, true) => "exited on SIGKILL (the signal itself was not seen)".to_string(),
        (None, false) => "was SIGKILLed".to_string(),
    };
    let cfgd = configured
        .map(|c| format!(": its grace period ({c:.0} s) never started"))
        .unwrap_or_default();
    (
        format!(
            "apiserver {inst} {how} with no SIGTERM before it, so it had no graceful shutdown at all{cfgd}, cutting {}",
            plural(n, "connection or request", "connections or requests")
        ),
        format!(
            "find who sent the SIGKILL ({}): the OOM killer (the kernel log says \"Killed process\"; raise the memory limit), a force delete with --grace-period=0, a liveness probe killing a crash-looping apiserver, or the container runtime; whoever it is must send SIGTERM and wait the grace period first",
            match sender {
                Some(p) => format!("pid {p}, from the signal event"),
                None =>
                    "the signal event names the sender's pid when drainwatch watches the process"
                        .to_string(),
            }
        ),
    )
}
