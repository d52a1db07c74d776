//! Idle resets by a middlebox (`engine/causes/idle_reset.rs`).

use super::*;

/// The lab's Azure SLB: as a proxy (HAProxy) it resets the server's side of
/// idle connections on its own at the timeout (peer RSTs from the LB's
/// address, answering nothing); as a NAT it forgets flows and answers the
/// next packet (middlebox RSTs, silence only an upper bound). The timeout
/// inferred is the proxy's exact one; a peer RST from anyone else is not an
/// idle reset.
#[test]
fn lb_proxy_idle_reset_gives_the_exact_timeout() {
    let mut b = B::default();
    let peer = |b: &mut B, t: f64, from: &str, port: u16, answered: bool| {
        b.add(
            t,
            None,
            Source::Wire,
            Obs::WireReset {
                client: Some(sa(from, port)),
                server: Some(sa("198.18.3.10", 8600)),
                origin: ResetOrigin::Peer,
                silence_s: 4.0,
                keepalive: Keepalive::None,
                answered_packet: Some(answered),
            },
        )
    };
    peer(&mut b, 10.0, LB, 54314, false);
    peer(&mut b, 10.1, LB, 54320, false);
    peer(&mut b, 10.2, LB, 54321, true); // answered a write: an abort, not a timer
    peer(&mut b, 10.3, "198.18.2.77", 40000, false); // not an LB
    b.add(
        16.0,
        None,
        Source::Wire,
        Obs::WireReset {
            client: Some(sa("198.18.2.10", 57626)),
            server: Some(sa("198.18.3.10", 8600)),
            origin: ResetOrigin::Middlebox,
            silence_s: 10.0,
            keepalive: Keepalive::None,
            answered_packet: Some(true),
        },
    );
    let r = run(&base(), &b);
    let v = only(&r, Cause::IdleResetByMiddlebox);
    assert_eq!(v.count, 3, "{:#?}", r.verdicts);
    match v.measured {
        Some(Measured::IdleTimeout { inferred_s, .. }) => assert_eq!(inferred_s, 4.0),
        ref m => panic!("{m:?}"),
    }
}

#[test]
fn middlebox_idle_resets_without_keepalive() {
    let mut b = B::default();
    idle_reset(&mut b, 300.0, 1, 260.0, Keepalive::None);
    idle_reset(&mut b, 310.0, 2, 261.5, Keepalive::None);
    idle_reset(&mut b, 900.0, 3, 600.0, Keepalive::None); // answered the next write
    // A peer abort is not the middlebox's doing.
    b.add(
        320.0,
        None,
        Source::Wire,
        Obs::WireReset {
            client: None,
            server: None,
            origin: ResetOrigin::Peer,
            silence_s: 1.0,
            keepalive: Keepalive::Interval(30.0),
            answered_packet: None,
        },
    );
    let r = run(&base(), &b);
    let v = only(&r, Cause::IdleResetByMiddlebox);
    assert_eq!(r.verdicts.len(), 1);
    assert_eq!(v.count, 3);
    match v.measured {
        Some(Measured::IdleTimeout {
            inferred_s,
            max_silence_s,
            without_keepalive,
            with_keepalive,
        }) => {
            assert_eq!(inferred_s, 260.0);
            assert_eq!(max_silence_s, 261.5);
            assert_eq!((without_keepalive, with_keepalive), (3, 0));
        }
        ref m => panic!("{m:?}"),
    }
    assert!(v.sentence.contains("about 260 s") && v.sentence.contains("3 had no TCP keepalive"));
    assert!(v.fix.contains("keepalive"));
}

#[test]
fn answered_idle_resets_only_bound_the_timeout() {
    let answered = |b: &mut B, t: f64, silence_s: f64| {
        b.add(
            t,
            None,
            Source::Wire,
            Obs::WireReset {
                client: None,
                server: None,
                origin: ResetOrigin::Middlebox,
                silence_s,
                keepalive: Keepalive::None,
                answered_packet: Some(true),
            },
        )
    };
    // The lab's conntrack box resets the server's write every 10 s (scaled
    // 600 s) after a 4 s timeout; HAProxy resets at the timeout itself.
    let mut b = B::default();
    answered(&mut b, 10.0, 10.0);
    idle_reset(&mut b, 12.0, 2, 4.02, Keepalive::None);
    answered(&mut b, 13.0, 3.9); // jittery upper bound, ignored next to a measured one
    let r = run(&base(), &b);
    match only(&r, Cause::IdleResetByMiddlebox).measured {
        Some(Measured::IdleTimeout { inferred_s, .. }) => assert_eq!(inferred_s, 4.02),
        ref m => panic!("{m:?}"),
    }
    let mut b = B::default();
    answered(&mut b, 10.0, 10.0);
    answered(&mut b, 20.0, 10.2);
    let r = run(&base(), &b);
    let v = only(&r, Cause::IdleResetByMiddlebox);
    assert_eq!(v.count, 2);
}

#[test]
fn keepalive_clients_are_not_reset_by_the_middlebox() {
    // client-go's 30 s keepalive keeps the flow busy: no resets, only
    // keepalive traffic (which the engine does not need).
    let r = run(&base(), &B::default());
    assert!(r.verdicts.is_empty());
    // A keepalive slower than the timeout does not help, and is said.
    let mut b = B::default();
    idle_reset(&mut b, 300.0, 1, 240.5, Keepalive::Interval(300.0));
    let r = run(&base(), &b);
    let v = only(&r, Cause::IdleResetByMiddlebox);
    assert!(v.sentence.contains("too slow"), "{}", v.sentence);
}

/// From a worker: the resets name their owners; the verdict lists each
/// workload with its count and keepalive, most hurt first, names them in
/// its sentence, and addresses the fix to each program without keepalive.
#[test]
fn client_side_idle_resets_name_the_workloads() {
    let mut b = B::default();
    let py = Workload {
        namespace: Some("default".into()),
        pod: Some("py-watcher".into()),
        pod_uid: Some("0b6c9d2e-1111-4c4c-9a9a-000000000001".into()),
        container: Some("watcher".into()),
        container_id: Some("a".repeat(64)),
        node: Some("worker-1".into()),
        pid: Some(4242),
        comm: Some("python3".into()),
    };
    let curl = Workload {
        pid: Some(77),
        comm: Some("curl".into()),
        ..Workload::default()
    };
    for (i, (t, who)) in [(10.0, &py), (10.2, &py), (10.4, &curl)]
        .into_iter()
        .enumerate()
    {
        let id = idle_reset(&mut b, t, 100 + i as u16, 4.0, Keepalive::None);
        b.v[id as usize - 1].who = Some(std::sync::Arc::new(who.clone()));
    }
    let r = run(&base(), &b);
    let v = only(&r, Cause::IdleResetByMiddlebox);
    assert_eq!(v.count, 3);
    let names: Vec<(&str, u64, Option<u64>)> = v
        .affected
        .iter()
        .map(|a| (a.workload.as_str(), a.count, a.without_keepalive))
        .collect();
    assert_eq!(
        names,
        [
            ("pod default/py-watcher", 2, Some(2)),
            ("process curl", 1, Some(1))
        ]
    );
    assert_eq!(v.affected[0].programs, ["python3"]);
    assert_eq!(v.affected[0].namespace.as_deref(), Some("default"));
    assert!(
        v.sentence
            .contains("hurt: pod default/py-watcher (2; python3; no TCP keepalive), process curl (1; no TCP keepalive)"),
        "{}",
        v.sentence
    );
    assert!(
        v.fix
            .starts_with("pod default/py-watcher: the Python client"),
        "{}",
        v.fix
    );
    assert!(
        v.fix.contains("process curl: turn on SO_KEEPALIVE"),
        "{}",
        v.fix
    );
    assert_eq!(
        v.affected[0].pod_uid.as_deref(),
        Some("0b6c9d2e-1111-4c4c-9a9a-000000000001")
    );
    // Each workload's own fix: its part of the verdict's, with the advice
    // that ends every part.
    let py_fix = v.fix_for(&v.affected[0]);
    let (own, tail) = py_fix.split_once("; ").expect("two parts");
    assert!(
        own.starts_with("pod default/py-watcher: the Python client")
            && v.fix.starts_with(own)
            && v.fix.ends_with(tail)
            && tail.starts_with("N well below"),
        "{py_fix}"
    );
    assert!(
        v.fix_for(&v.affected[1])
            .starts_with("process curl: turn on SO_KEEPALIVE"),
        "{}",
        v.fix_for(&v.affected[1])
    );
    // A workload whose connections had keepalive is not told to turn it on.
    let mut kept = v.affected[0].clone();
    kept.without_keepalive = Some(0);
    assert!(
        v.fix_for(&kept)
            .contains("had TCP keepalive and were still reset idle"),
        "{}",
        v.fix_for(&kept)
    );
    // A recording carries the owners: the same verdict from its JSON.
    let json = serde_json::to_string(&b.v[0]).expect("json");
    let back: Observation = serde_json::from_str(&json).expect("parse");
    assert_eq!(back.who.as_deref(), Some(&py));
}
