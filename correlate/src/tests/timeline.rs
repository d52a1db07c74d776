//! Rollout timelines: phases observed (`engine/cycle.rs`) and inferred (`engine/infer.rs`).

use super::*;

#[test]
fn graceful_shutdown_has_no_verdict() {
    let mut b = B::default();
    graceful(&mut b, 0.0, 20.0, 3.0);
    for i in 0..3u16 {
        b.k(
            20.01,
            Obs::ConnClosed {
                client: sa(LB, 20000 + i),
                server: sa(M1, 6443),
                by_server: true,
                pending_request: Some(false),
            },
        );
    }
    b.probe(
        21.0,
        ProbeMode::Reused,
        Some(sa(LB, 20000)),
        ProbeOutcome::Ok(200),
    );
    let r = run(&base(), &b);
    assert!(r.verdicts.is_empty(), "{:#?}", r.verdicts);
    let t = &r.timelines[0];
    assert_eq!(t.goaways.len(), 1);
    assert!(t.phase(PhaseKind::GoawaySent).is_some());
    assert!(t.phase(PhaseKind::Drained).is_some());
}

#[test]
fn missing_sigterm_is_inferred() {
    let mut b = B::default();
    b.readyz(0.0, false);
    b.listen(30.0, false, 100);
    b.exit(40.0, None);
    b.listen(50.0, true, 200);
    b.readyz(55.0, true);
    let r = run(&base(), &b);
    assert!(r.verdicts.is_empty());
    assert_eq!(r.timelines.len(), 1);
    let p = phase(&r, "m1", 0, PhaseKind::Sigterm).expect("inferred");
    assert!(p.inferred && p.t_ns == 0 && p.note.is_some());
    assert!(
        !phase(&r, "m1", 0, PhaseKind::ListenerClosed)
            .expect("observed")
            .inferred
    );
    assert!(r.timelines[0].complete);
}

#[test]
fn missing_listener_close_is_inferred_from_refusals() {
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.rst(30.2, sa(LB, 1), "NO_SOCKET");
    b.rst(30.4, sa(LB, 2), "NO_SOCKET");
    let r = run(&base(), &b);
    let p = phase(&r, "m1", 0, PhaseKind::ListenerClosed).expect("inferred");
    assert!(p.inferred);
    assert_eq!(p.t_ns, ns(30.2));
    assert!(!r.timelines[0].complete);
    // The refusals via the LB after the listener closed make the LB verdict too.
    let mut c = causes(&r);
    c.sort();
    assert_eq!(
        c,
        vec![
            Cause::RefusedWhileNotListening { path: Path::ViaLb },
            Cause::LbDetectionSlow
        ]
    );
}

#[test]
fn readyz_inferred_at_sigterm_without_poller() {
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.accepted(5.0, sa(LB, 1), sa(M1, 6443));
    b.listen(70.0, false, 100);
    b.exit(71.0, None);
    b.listen(75.0, true, 200);
    let r = run(&base(), &b);
    let p = phase(&r, "m1", 0, PhaseKind::ReadyzRed).expect("inferred");
    assert!(p.inferred);
    assert!(
        r.timelines[0].complete,
        "relisten completes without a poller"
    );
    assert_eq!(
        r.timelines[0].lb_detection.as_ref().and_then(|d| d.t_s),
        Some(5.0)
    );
}

#[test]
fn second_rollout_is_a_second_timeline() {
    let mut b = B::default();
    graceful(&mut b, 0.0, 10.0, 1.0);
    graceful(&mut b, 100.0, 10.0, 1.0);
    let r = run(&base(), &b);
    assert_eq!(r.timelines.len(), 2);
    assert!(r.timelines.iter().all(|t| t.complete));
    assert_eq!(
        phase(&r, "m1", 1, PhaseKind::Sigterm)
            .expect("sigterm")
            .t_ns,
        100 * S
    );
    // The summary's phase gauges show the latest rollout.
    let e1 = r
        .summary
        .phases
        .iter()
        .find(|p| p.phase == "sigterm")
        .expect("gauge");
    assert_eq!(e1.t_ns, 100 * S);
}

#[test]
fn late_events_of_the_old_process_stay_in_its_rollout() {
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.listen(10.0, false, 100);
    b.listen(11.0, true, 200); // new process, SO_REUSEPORT style
    b.exit(12.0, None); // pid 100
    b.readyz(15.0, true);
    let r = run(&base(), &b);
    assert_eq!(r.timelines.len(), 1, "{:#?}", r.timelines);
    assert_eq!(
        phase(&r, "m1", 0, PhaseKind::Exit).expect("exit").t_ns,
        12 * S
    );
}

#[test]
fn wall_clock_is_carried_through() {
    let (cfg, mut b) = gcp_ilb_rollout();
    for o in &mut b.v {
        o.wall = Some(format!("t+{}", o.t_ns / S));
    }
    let r = run(&cfg, &b);
    let v = &r.verdicts[0];
    assert_eq!(v.window_wall, (Some("t+170".into()), Some("t+178".into())));
    assert!(v.line().starts_with("t+170 refused_local_hairpin"));
    let e1 = phase(&r, "m1", 0, PhaseKind::Sigterm).expect("sigterm");
    assert_eq!(e1.wall.as_deref(), Some("t+100"));
}

#[test]
fn phase_numbers_follow_the_rollout_order() {
    let mut sorted = PhaseKind::ALL.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted,
        PhaseKind::ALL,
        "ALL in declaration order, once each"
    );
    for (i, k) in PhaseKind::ALL.iter().enumerate() {
        assert_eq!(k.number(), i + 1, "{k:?}");
    }
}
