//! The incremental engine: order, duplicates, compaction, pruning, the archive (`engine/incremental.rs`).

use super::*;

#[test]
fn direct_arrivals_are_counted_not_kept_and_change_nothing() {
    let (cfg, mut b) = slow_lb_rollout(30.0);
    let before = run(&cfg, &b);
    // A busy server's own traffic: clients connecting straight to m1.
    for i in 0..1000u16 {
        b.accepted(
            1.0 + f64::from(i) / 100.0,
            sa("198.18.9.9", 40000 + i),
            sa(M1, 6443),
        );
    }
    let mut e = Engine::new(cfg).expect("config");
    for o in b.v.clone() {
        e.push(o);
    }
    let held = e.len();
    let after = e.report().clone();
    assert_eq!(after.stats.direct_arrivals, 1000);
    assert_eq!(held, b.v.len() - 1000, "none of them is held");
    assert_eq!(after.verdicts, before.verdicts);
    assert_eq!(after.timelines, before.timelines);
}

/// A long-running engine forgets closes far from any rollout; the ones
/// that make the verdict stay, and the report does not change.
#[test]
fn closes_outside_rollouts_are_pruned_without_changing_the_report() {
    let mut b = B::default();
    let close = |b: &mut B, t: f64, port: u16| {
        b.k(
            t,
            Obs::ConnClosed {
                client: sa(LB, port),
                server: sa(M1, 6443),
                by_server: true,
                pending_request: Some(true),
            },
        );
    };
    for i in 0..50u16 {
        close(&mut b, 150.0 + f64::from(i), 40000 + i);
    }
    b.sig(200.0, Signal::Term);
    b.readyz(200.0, false);
    b.listen(207.0, false, 100);
    for i in 0..2u16 {
        close(&mut b, 207.003, 20000 + i);
    }
    b.exit(207.005, None);
    b.listen(209.0, true, 200);
    b.readyz(210.0, true);
    for i in 0..50u16 {
        close(&mut b, 300.0 + f64::from(i), 41000 + i);
    }
    let full = run(&base(), &b);
    let mut e = Engine::new(base()).expect("config");
    for o in b.v.clone() {
        e.push(o);
    }
    let held = e.len();
    // The rollout runs 200..210 s: closes at 150..197 s and 300..349 s are
    // more than 2 s away; those at 198 and 199 s are kept.
    assert_eq!(e.prune_closes(ns(400.0)), 48 + 50);
    assert_eq!(e.prune_closes(ns(400.0)), 0);
    assert_eq!(e.len(), held - 98);
    // Nothing younger than the given time goes.
    let mut young = Engine::new(base()).expect("config");
    for o in b.v.clone() {
        young.push(o);
    }
    assert_eq!(young.prune_closes(ns(160.0)), 10, "only 150..159 s");
    let r = e.report().clone();
    assert_eq!(r.verdicts, full.verdicts);
    assert_eq!(r.timelines, full.timelines);
    assert_eq!(r.stats.pruned_closes, 98);
    assert_eq!(r.stats.observations, full.stats.observations - 98);
    assert_eq!(causes(&r), vec![Cause::HardClose]);
    assert_eq!(r.verdicts[0].count, 2);
}

/// Mixes order and duplicates the input; the result must not change.
fn scramble(v: &[Observation]) -> Vec<Observation> {
    let mut out: Vec<Observation> = v.iter().rev().cloned().collect();
    out.rotate_left(v.len() / 3);
    out.extend(v.iter().step_by(3).cloned());
    out
}

#[test]
fn reordered_and_duplicated_input_gives_the_same_report() {
    for (cfg, b) in [
        gcp_ilb_rollout(),
        slow_lb_rollout(30.0),
        (base(), close_instead_of_shutdown()),
    ] {
        let plain = run(&cfg, &b);
        let mixed = analyze(&cfg, scramble(&b.v)).expect("valid");
        assert_eq!(plain.verdicts, mixed.verdicts);
        assert_eq!(plain.timelines, mixed.timelines);
        assert_eq!(plain.summary, mixed.summary);
        assert!(mixed.stats.duplicates > 0);
        assert_eq!(plain.stats.observations, mixed.stats.observations);
    }
}

#[test]
fn duplicate_id_keeps_the_earliest_copy() {
    let (cfg, b) = slow_lb_rollout(30.0);
    let mut v = b.v.clone();
    let mut late = v[0].clone();
    late.t_ns += 5 * S;
    v.insert(0, late);
    let r = analyze(&cfg, v).expect("valid");
    assert_eq!(r.verdicts, run(&cfg, &b).verdicts);
}

#[test]
fn incremental_equals_batch() {
    for (cfg, b) in [
        gcp_ilb_rollout(),
        slow_lb_rollout(30.0),
        (base(), close_instead_of_shutdown()),
    ] {
        let batch = run(&cfg, &b);
        let mut e = Engine::new(cfg.clone()).expect("valid");
        for (n, o) in b.v.iter().enumerate() {
            e.push(o.clone());
            if n % 7 == 0 {
                // Asking in between must not change the end result.
                let _ = e.verdicts().len();
                let _ = e.timelines().len();
            }
        }
        assert_eq!(e.report(), &batch);
        assert!(!e.push(b.v[0].clone()), "duplicate");
        assert_eq!(e.verdicts(), batch.verdicts.as_slice());
        assert_eq!(e.len(), b.v.len());
    }
}

#[test]
fn compaction_keeps_results_and_bounds_memory() {
    // Three rollouts of m1 with hairpin refusals, and idle resets throughout.
    let (cfg, _) = gcp_ilb_rollout();
    let mut b = B::default();
    for n in 0..3 {
        let t0 = 1000.0 * f64::from(n);
        graceful(&mut b, t0, 70.0, 5.0);
        for i in 0..5u16 {
            b.refused(t0 + 70.5 + f64::from(i), sa(VIP, 50000 + i), sa(VIP, 6443));
        }
        idle_reset(&mut b, t0 + 500.0, 1, 260.0, Keepalive::None);
    }
    let batch = run(&cfg, &b);
    let mut e = Engine::new(cfg.clone()).expect("valid");
    let mut dropped = 0;
    for o in &b.v {
        e.push(o.clone());
        if o.t_ns > 1500 * S {
            // Mid-way: the third rollout has not started yet.
            dropped += e.compact(o.t_ns - 100 * S);
        }
    }
    assert!(dropped > 0 && e.len() < b.v.len());
    assert!(e.horizon_ns() > 0);
    let r = e.report().clone();
    assert_eq!(r.timelines, batch.timelines);
    let strip = |v: &[Verdict]| -> Vec<(Cause, Option<usize>, u64)> {
        v.iter().map(|v| (v.cause, v.cycle, v.count)).collect()
    };
    // The idle-reset verdict is split at the cut; everything else is equal.
    let rollout = |v: &[Verdict]| -> Vec<Verdict> {
        v.iter().filter(|v| v.cycle.is_some()).cloned().collect()
    };
    assert_eq!(rollout(&r.verdicts), rollout(&batch.verdicts));
    assert_eq!(
        strip(&r.verdicts)
            .iter()
            .filter(|v| v.1.is_none())
            .map(|v| v.2)
            .sum::<u64>(),
        3
    );
    assert_eq!(
        r.summary.by_cause["refused_local_hairpin"],
        batch.summary.by_cause["refused_local_hairpin"]
    );
    assert_eq!(r.stats.observations, batch.stats.observations);
    // Too old now: ignored and counted.
    let mut old = b.v[0].clone();
    old.id = 99_999;
    assert!(!e.push(old));
    assert_eq!(e.report().stats.late, 1);
    // A rollout in progress is never cut.
    let mut e = Engine::new(cfg).expect("valid");
    let (_, b) = gcp_ilb_rollout();
    for o in &b.v {
        e.push(o.clone());
    }
    e.compact(172 * S);
    assert_eq!(e.report().verdicts, run(&gcp_ilb_rollout().0, &b).verdicts);
}

#[test]
fn archive_is_capped_and_its_totals_kept() {
    // Six rollouts of m1, each with five hairpin refusals and an idle
    // reset, compacted as a daemon does; the archive keeps one rollout and
    // two verdicts whole, the totals stay those of the batch analysis.
    let (cfg, _) = gcp_ilb_rollout();
    let mut b = B::default();
    for n in 0..6u16 {
        let t0 = 1000.0 * f64::from(n);
        graceful(&mut b, t0, 70.0, 5.0);
        for i in 0..5u16 {
            b.refused(t0 + 70.5 + f64::from(i), sa(VIP, 50000 + i), sa(VIP, 6443));
        }
        idle_reset(&mut b, t0 + 500.0, 1 + n, 260.0, Keepalive::None);
    }
    let batch = run(&cfg, &b);
    assert_eq!(batch.timelines.len(), 6);
    let mut e = Engine::new(cfg.clone()).expect("valid");
    e.set_archive_limits(1, 2);
    let mut uncapped = Engine::new(cfg).expect("valid");
    for o in &b.v {
        e.push(o.clone());
        uncapped.push(o.clone());
        if o.t_ns > 600 * S {
            e.compact(o.t_ns - 100 * S);
            uncapped.compact(o.t_ns - 100 * S);
        }
    }
    let r = e.report().clone();
    let full = uncapped.report().clone();
    assert!(r.stats.forgotten_timelines >= 3, "{:?}", r.stats);
    assert!(r.stats.forgotten_verdicts >= 3, "{:?}", r.stats);
    assert_eq!(
        r.timelines.len() as u64 + r.stats.forgotten_timelines,
        full.timelines.len() as u64
    );
    assert_eq!(
        r.verdicts.len() as u64 + r.stats.forgotten_verdicts,
        full.verdicts.len() as u64
    );
    // What is listed is the newest; the summary (the exported counters)
    // is the uncapped engine's, cause by cause.
    assert_eq!(r.timelines.last(), full.timelines.last());
    assert_eq!(r.summary.by_cause.len(), full.summary.by_cause.len());
    for (cause, t) in &full.summary.by_cause {
        let c = &r.summary.by_cause[cause];
        assert_eq!(
            (c.verdicts, c.disruptions),
            (t.verdicts, t.disruptions),
            "{cause}"
        );
        assert!((c.seconds - t.seconds).abs() < 1e-6, "{cause}");
    }
    assert_eq!(
        r.summary.by_cause["refused_local_hairpin"].disruptions,
        batch.summary.by_cause["refused_local_hairpin"].disruptions
    );
    assert_eq!(r.summary.phases, full.summary.phases);
    assert_eq!(
        r.summary.lb_detection_seconds,
        full.summary.lb_detection_seconds
    );
}
