//! Attribution: instance, rollout and path of what was observed (`engine/attribute.rs`).

use super::*;

#[test]
fn probe_failures_are_attributed_by_time() {
    let cfg = Config {
        default_instance: None,
        ..base()
    };
    let mut b = B::default();
    // m2 is down (listener closed); m1 is fine.
    b.add(
        0.0,
        Some("m2"),
        Source::Kernel,
        Obs::Signal {
            signal: Signal::Term,
            pid: None,
            sender: None,
        },
    );
    b.add(
        10.0,
        Some("m2"),
        Source::Kernel,
        Obs::ListenerClosed {
            addr: None,
            pid: None,
        },
    );
    b.probe(11.0, ProbeMode::NewConn, None, ProbeOutcome::Refused);
    b.add(
        20.0,
        Some("m2"),
        Source::Kernel,
        Obs::ListenerOpened {
            addr: None,
            pid: None,
        },
    );
    // Nobody is rolling at 100 s: unexplained.
    b.probe(100.0, ProbeMode::Reused, None, ProbeOutcome::Timeout);
    let r = run(&cfg, &b);
    let v = only(&r, Cause::RefusedWhileNotListening { path: Path::ViaLb });
    assert_eq!(v.instance.as_deref(), Some("m2"));
    let u = only(&r, Cause::Unexplained);
    assert_eq!(u.instance, None);
    assert_eq!(r.stats.unattributed, 1);
}

#[test]
fn path_classification() {
    let cfg = Config {
        local_vips: vec![ip(VIP)],
        ..base()
    };
    let api = sa(VIP, 6443);
    assert_eq!(cfg.classify(&sa(VIP, 1), &api), Path::LocalHairpin);
    assert_eq!(cfg.classify(&sa(M1, 1), &api), Path::LocalHairpin);
    assert_eq!(cfg.classify(&sa(WORKER, 1), &api), Path::ViaLb);
    assert_eq!(cfg.classify(&sa(LB, 1), &sa(M1, 6443)), Path::ViaLb);
    assert_eq!(cfg.classify(&sa(WORKER, 1), &sa(M1, 6443)), Path::Direct);
    // A worker holds no VIP: its own traffic to the VIP goes via the LB.
    assert_eq!(base().classify(&sa(M1, 1), &api), Path::ViaLb);
    assert_eq!(Config::default().classify(&sa(M1, 1), &api), Path::Unknown);
    assert_eq!(cfg.classify_probe(None, Some(&api)), Path::LocalHairpin);
}

#[test]
fn unowned_goaway_goes_to_the_rolling_instance() {
    let cfg = Config {
        default_instance: None,
        ..base()
    };
    let mut b = B::default();
    b.add(
        0.0,
        Some("m2"),
        Source::Kernel,
        Obs::Signal {
            signal: Signal::Term,
            pid: None,
            sender: None,
        },
    );
    b.add(
        10.0,
        Some("m2"),
        Source::Kernel,
        Obs::ListenerClosed {
            addr: None,
            pid: None,
        },
    );
    b.add(
        10.0,
        None,
        Source::Wire,
        Obs::Goaway {
            direction: Direction::Sent,
            last_stream_id: 1,
            error_code: "NO_ERROR".into(),
            client: None,
            server: None,
        },
    );
    b.probe(10.2, ProbeMode::Reused, None, ProbeOutcome::Reset);
    let r = run(&cfg, &b);
    assert_eq!(r.timelines[0].goaways, vec![3]);
    let v = only(&r, Cause::GoawayThenFailed);
    assert_eq!(v.instance.as_deref(), Some("m2"));
    assert_eq!(v.evidence, vec![3, 4]);
}

#[test]
fn local_client_refused_by_a_remote_master_is_not_this_instance() {
    // On m1 (no VIP held), kubelet goes through the LB to m2, which is down.
    let cfg = Config {
        default_instance: Some("m1".into()),
        ..base()
    };
    let mut b = B::default();
    b.add(
        0.0,
        Some("m2"),
        Source::Other,
        Obs::ListenerClosed {
            addr: None,
            pid: None,
        },
    );
    b.refused(1.0, sa(M1, 40000), sa(VIP, 6443));
    let r = run(&cfg, &b);
    let v = only(&r, Cause::RefusedWhileNotListening { path: Path::ViaLb });
    assert_eq!(v.instance.as_deref(), Some("m2"));
}
