//! SIGKILL after a grace period or without a SIGTERM (`engine/causes/sigkill.rs`, the SIGTERM evidence in `engine/infer.rs`).

use super::*;

#[test]
fn sigkill_after_30s_grace() {
    let cfg = Config {
        grace_period_s: Some(30.0),
        ..base()
    };
    let mut b = B::default();
    b.sig(0.0, Signal::Term); // ignored: /readyz stays green
    b.sig(30.0, Signal::Kill);
    b.listen(30.001, false, 100);
    b.rst(30.002, sa(LB, 1), "TCP_ABORT_ON_CLOSE");
    b.rst(30.002, sa(LB, 2), "TCP_ABORT_ON_DATA");
    // No SIGKILL tracepoint needed: the exit says signal 9 as well.
    b.exit(30.01, Some(9));
    b.readyz(31.0, false);
    for i in 0..5u16 {
        b.rst(30.5 + f64::from(i) * 0.5, sa(LB, 100 + i), "NO_SOCKET");
    }
    b.listen(40.0, true, 200);
    b.readyz(45.0, true);
    let r = run(&cfg, &b);
    let v = only(&r, Cause::SigkillAfterGrace);
    // The abort counts; the RST over unread data alone proves no cut.
    assert_eq!(v.count, 1);
    match v.measured {
        Some(Measured::Grace {
            seconds,
            configured_s,
        }) => {
            assert_eq!(seconds, Some(30.0));
            assert_eq!(configured_s, Some(30.0));
        }
        ref m => panic!("{m:?}"),
    }
    assert_eq!(
        only(&r, Cause::RefusedWhileNotListening { path: Path::ViaLb }).count,
        5
    );
    assert_eq!(r.verdicts.len(), 2, "{:#?}", r.verdicts);
    let d = r.timelines[0].lb_detection.clone().expect("recorded");
    assert!(d.note.contains("before /readyz turned red"), "{}", d.note);
}

#[test]
fn sigkill_inferred_from_exit_signal() {
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.exit(30.0, Some(9));
    let r = run(&base(), &b);
    let v = only(&r, Cause::SigkillAfterGrace);
    assert!(
        phase(&r, "m1", 0, PhaseKind::Sigkill)
            .expect("sigkill")
            .inferred
    );
    assert_eq!(v.count, 0);
    assert!(v.sentence.contains("30.0 s after SIGTERM"));
}

/// A SIGKILL out of the blue (the OOM killer, a force delete): the
/// listener closes only as the dying process tears down, /readyz goes red
/// only once the poller finds it dead.
fn bare_kill(b: &mut B) {
    b.sig(10.0, Signal::Kill);
    b.listen(10.001, false, 100);
    b.rst(10.002, sa(LB, 1), "TCP_ABORT_ON_CLOSE");
    b.exit(10.01, Some(9));
    b.readyz(11.0, false);
    b.listen(20.0, true, 200);
    b.readyz(25.0, true);
}

#[test]
fn sigkill_without_sigterm_is_its_own_cause() {
    let cfg = Config {
        grace_period_s: Some(30.0),
        ..base()
    };
    let mut b = B::default();
    bare_kill(&mut b);
    let r = run(&cfg, &b);
    assert!(Cause::LABELS.contains(&"killed_without_sigterm"));
    let v = only(&r, Cause::KilledWithoutTerm);
    assert_eq!(v.cause.label(), "killed_without_sigterm");
    assert_eq!(v.count, 1, "the abort at the kill");
    // No grace period existed: none is measured, none is talked about.
    assert_eq!(
        v.measured,
        Some(Measured::Grace {
            seconds: None,
            configured_s: Some(30.0)
        })
    );
    assert!(
        v.sentence.contains("SIGKILLed by pid 1 with no SIGTERM")
            && v.sentence.contains("no graceful shutdown at all")
            && !v.sentence.contains("after SIGTERM"),
        "{}",
        v.sentence
    );
    assert!(
        v.fix.contains("pid 1") && v.fix.contains("OOM") && v.fix.contains("--grace-period=0"),
        "{}",
        v.fix
    );
    assert!(!causes(&r).contains(&Cause::SigkillAfterGrace));
    // /readyz red after the kill is its consequence, not a SIGTERM.
    assert!(phase(&r, "m1", 0, PhaseKind::Sigterm).is_none());
}

#[test]
fn a_kill_seen_only_in_the_exit_status_has_no_grace_either() {
    let mut b = B::default();
    b.listen(40.0, false, 100);
    b.exit(40.0, Some(9));
    let r = run(&base(), &b);
    let v = only(&r, Cause::KilledWithoutTerm);
    assert!(
        v.sentence.contains("exited on SIGKILL") && v.fix.contains("the signal event names"),
        "{v:#?}"
    );
    assert!(phase(&r, "m1", 0, PhaseKind::Sigterm).is_none());
}

#[test]
fn evidence_of_a_shutdown_before_the_kill_means_sigterm() {
    // /readyz red before the kill: kube-apiserver turns it red on SIGTERM.
    let cfg = Config {
        grace_period_s: Some(30.0),
        ..base()
    };
    let mut b = B::default();
    b.readyz(0.0, false);
    b.sig(30.0, Signal::Kill);
    b.exit(30.01, Some(9));
    let r = run(&cfg, &b);
    let v = only(&r, Cause::SigkillAfterGrace);
    assert!(
        v.sentence.contains("at least 30.0 s after SIGTERM")
            && v.sentence.contains("/readyz turned red"),
        "{}",
        v.sentence
    );
    assert!(
        phase(&r, "m1", 0, PhaseKind::Sigterm)
            .expect("inferred")
            .inferred
    );
    // The listener closing well before the kill (no poller): a shutdown.
    let mut b = B::default();
    b.listen(5.0, false, 100);
    b.sig(20.0, Signal::Kill);
    b.exit(20.01, Some(9));
    let r = run(&cfg, &b);
    let v = only(&r, Cause::SigkillAfterGrace);
    assert!(
        v.sentence.contains("at least 15.0 s") && v.sentence.contains("the listener closed"),
        "{}",
        v.sentence
    );
    // /readyz red long before the grace period: not this kill's SIGTERM
    // (an apiserver unready for minutes, then killed).
    let mut b = B::default();
    b.readyz(0.0, false);
    b.sig(300.0, Signal::Kill);
    b.exit(300.01, Some(9));
    let r = run(&cfg, &b);
    only(&r, Cause::KilledWithoutTerm);
    assert!(phase(&r, "m1", 0, PhaseKind::Sigterm).is_none());
}
