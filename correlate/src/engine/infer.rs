//! Stage 3, inference: phases that were not observed but follow from what
//! was, each marked `inferred` with a note (SIGKILL from an exit on signal
//! 9; SIGTERM as below; /readyz red at SIGTERM when there is no poller; the
//! listener close from the first refused SYN or the exit). After the causes
//! ran, the phases their classification decides: requests cut at the
//! timeout, or drained.
//!
//! # SIGTERM before a SIGKILL
//! A SIGKILL ends a grace period only if a SIGTERM started one. Evidence
//! of a SIGTERM, in this order: the signal itself (`signal:signal_generate`);
//! /readyz observed turning red before the kill (kube-apiserver does so on
//! SIGTERM; only when the process then went down, so not a flap); the
//! listener observed closing more than 50 ms before the kill (a dying
//! process's own teardown closes it just after the kill, so a close before
//! it is the process shutting down). With no kill, an exit on signal 15
//! counts too. Evidence more than the configured grace period (+`tol`)
//! before the kill is not this kill's SIGTERM: whoever sent a SIGTERM kills
//! at the end of the grace period, not later. An inferred SIGTERM is put
//! at its evidence, the latest it can have been, so the grace period it
//! gives is a lower bound (the sentence says "at least"). Nothing else
//! infers one: a SIGKILL without such evidence is
//! [`Cause::KilledWithoutTerm`](crate::Cause::KilledWithoutTerm), never a
//! grace period measured from a guess.
//!
//! Blind spots: /readyz red for another reason (etcd unreachable,
//! an overloaded apiserver) within the grace period before an unannounced
//! kill makes it look announced; a SIGTERM to a process drainwatch does
//! not watch (neither `--watch-comm` nor a watched listener's owner) that
//! the process ignored, with no poller, leaves no trace, so the kill that
//! follows looks unannounced; a pcap has no signals at all.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{Config, secs_to_ns};
use crate::output::PhaseKind;

use super::causes::hard_close::HARD_CLOSE_LEAD_NS;
use super::cycle::{Cycle, Mark};
use super::draft::{It, Item};

/// Fills each rollout's missing phases, using its first refusal.
pub(super) fn missing_phases(
    cycles: &mut BTreeMap<String, Vec<Cycle>>,
    items: &[It],
    cfg: &Config,
    has_readyz: &BTreeSet<String>,
) {
    let tol = cfg.tolerance_ns();
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
        sigterm(c, cfg);
    }
    if !c.has(PhaseKind::ReadyzRed) && !has_readyz && cfg.readyz_red_on_sigterm {
        readyz_red_at_sigterm(c);
    }
    if !c.has(PhaseKind::ListenerClosed) {
        listener_close(c, first_refusal);
    }
    c.start = c.marks.values().map(|m| m.t).min().unwrap_or(c.start);
}

/// A SIGTERM not observed, from the evidence the module docs list.
fn sigterm(c: &mut Cycle, cfg: &Config) {
    // Only observed evidence that the process was shutting down counts
    // (see "SIGTERM before a SIGKILL" above): a SIGKILL with
    // none of it had no grace period at all.
    let kill = c.t(PhaseKind::Sigkill);
    // A SIGTERM from whoever killed the process came at most the grace
    // period before the kill; evidence older than that is something else
    // (an apiserver unready for a long time, then killed).
    let within_grace = |t: u64, k: u64| {
        cfg.grace_period_s
            .is_none_or(|g| k.saturating_sub(t) <= secs_to_ns(g).saturating_add(cfg.tolerance_ns()))
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
                !m.inferred && m.t.saturating_add(HARD_CLOSE_LEAD_NS) < k && within_grace(m.t, k)
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

/// Without a poller, /readyz is taken to turn red at SIGTERM.
fn readyz_red_at_sigterm(c: &mut Cycle) {
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

/// The listener close not observed: at the first refused SYN, else with
/// the process.
fn listener_close(c: &mut Cycle, first_refusal: Option<&It>) {
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

/// Phases decided by classification: requests cut at the timeout (the
/// mark the timeout cause made), or drained (no cut before a clean exit).
pub(super) fn decided_phases(
    cycles: &mut BTreeMap<String, Vec<Cycle>>,
    mut cut_phase: BTreeMap<(String, usize), Mark>,
    had_cuts: &BTreeSet<(String, usize)>,
) {
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
}
