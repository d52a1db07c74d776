//! Cuts sorted among the request timeout, GOAWAY and unexplained failures (`engine/causes/cuts.rs`, `timeout_cut.rs`, `goaway.rs`, `unexplained.rs`).

use super::*;

#[test]
fn inflight_cut_at_request_timeout_and_goaway_failures() {
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.listen(70.0, false, 100);
    b.goaway(70.0);
    // A request raced the GOAWAY and failed with it.
    b.probe(70.5, ProbeMode::Reused, None, ProbeOutcome::Goaway);
    // Cut 60 s after the listener closed: two server-side cuts and the prober's 504.
    b.k(
        130.0,
        Obs::ConnClosed {
            client: sa(LB, 1),
            server: sa(M1, 6443),
            by_server: true,
            pending_request: Some(true),
        },
    );
    b.rst(130.0, sa(LB, 2), "TCP_ABORT_ON_CLOSE");
    b.probe(130.1, ProbeMode::Reused, None, ProbeOutcome::Ok(504));
    b.exit(130.2, None);
    let r = run(&base(), &b);
    let v = only(&r, Cause::InflightCutAtTimeout);
    assert_eq!(v.count, 3);
    match v.measured {
        Some(Measured::RequestTimeout { seconds, .. }) => assert!((seconds - 60.0).abs() < 1e-9),
        ref m => panic!("{m:?}"),
    }
    let g = only(&r, Cause::GoawayThenFailed);
    assert_eq!(g.count, 1);
    assert_eq!(g.evidence.len(), 2, "the failure and the GOAWAY");
    assert_eq!(r.verdicts.len(), 2);
    let cut = phase(&r, "m1", 0, PhaseKind::RequestsCut).expect("requests cut");
    assert_eq!(cut.t_ns, 130 * S);
}

#[test]
fn timeout_inferred_without_configured_request_timeout() {
    let cfg = Config {
        request_timeout_s: None,
        ..base()
    };
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.listen(7.0, false, 100);
    b.rst(13.0, sa(LB, 2), "TCP_ABORT_ON_CLOSE");
    b.exit(13.1, None);
    let r = run(&cfg, &b);
    assert_eq!(causes(&r), vec![Cause::InflightCutAtTimeout]);
}

/// A graceful shutdown whose process exits 1 s after its GOAWAY, while two
/// watches it had sent GOAWAY on are still streaming: both are cut after the
/// GOAWAY (not a hard close); a third connection cut at the same moment that
/// never got a GOAWAY (an HTTP/1 watch) stays a hard close.
#[test]
fn watches_cut_on_connections_that_got_a_goaway() {
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.listen(70.0, false, 100);
    let (a, c, h1) = (sa(LB, 30001), sa(LB, 30002), sa(LB, 30003));
    for client in [a, c] {
        b.k(
            70.0,
            Obs::Goaway {
                direction: Direction::Sent,
                last_stream_id: 1,
                error_code: "NO_ERROR".into(),
                client: Some(client),
                server: Some(sa(M1, 6443)),
            },
        );
    }
    // A GOAWAY on another connection, received by the instance: no effect.
    b.k(
        70.0,
        Obs::Goaway {
            direction: Direction::Received,
            last_stream_id: 0,
            error_code: "NO_ERROR".into(),
            client: Some(h1),
            server: Some(sa(M1, 6443)),
        },
    );
    for client in [a, c, h1] {
        b.k(
            71.0,
            Obs::StreamCut {
                client,
                server: sa(M1, 6443),
            },
        );
    }
    b.exit(71.0, None);
    let r = run(&base(), &b);
    let g = only(&r, Cause::GoawayThenFailed);
    assert_eq!(g.count, 2, "{:#?}", r.verdicts);
    assert!(
        g.sentence.contains("closed 2 connections"),
        "{}",
        g.sentence
    );
    let h = only(&r, Cause::HardClose);
    assert_eq!(h.count, 1);
    assert_eq!(r.verdicts.len(), 2);
}

/// A prober GETting /readyz through the LB while the instance drains gets
/// 500 (not ready) until the LB takes it out: not a failure. The same 500
/// on an API path is one.
#[test]
fn health_endpoint_5xx_during_the_drain_is_not_a_failure() {
    let rollout = |target: &str| {
        let mut b = B::default();
        b.sig(0.0, Signal::Term);
        b.readyz(0.0, false);
        for i in 0..3 {
            b.add(
                0.2 + f64::from(i) * 0.2,
                None,
                Source::Prober,
                Obs::ProbeResult {
                    target: target.into(),
                    mode: ProbeMode::NewConn,
                    method: "GET".into(),
                    client: Some(sa(LB, 40000 + i as u16)),
                    server: Some(sa(VIP, 6443)),
                    outcome: ProbeOutcome::Ok(500),
                },
            );
        }
        b.listen(1.0, false, 100);
        b.exit(1.5, None);
        b.listen(3.0, true, 200);
        b.readyz(3.5, true);
        run(&base(), &b)
    };
    let health = rollout(&format!("{VIP}:6443/readyz"));
    assert!(health.verdicts.is_empty(), "{:#?}", health.verdicts);
    let api = rollout(&format!("{VIP}:6443/api/v1/namespaces"));
    assert_eq!(api.verdicts.len(), 1, "{:#?}", api.verdicts);
}

/// A Go server's cleartext GOAWAY seen by its uprobe and on the wire is one
/// frame in the rollout's list; two frames on one connection from one
/// source (a two-step shutdown) stay two.
#[test]
fn one_goaway_seen_by_two_sources_is_one_frame() {
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.listen(5.0, false, 100);
    let g = |client| Obs::Goaway {
        direction: Direction::Sent,
        last_stream_id: 3,
        error_code: "NO_ERROR".into(),
        client: Some(client),
        server: Some(sa(M1, 6443)),
    };
    let a = sa(LB, 31001);
    let uprobe = b.add(5.0, Some("m1"), Source::Kernel, g(a));
    b.add(5.001, Some("m1"), Source::Wire, g(a));
    let second = b.add(5.2, Some("m1"), Source::Kernel, g(a));
    b.exit(6.0, None);
    let r = run(&base(), &b);
    let tl = r
        .timelines
        .iter()
        .find(|t| t.phase(PhaseKind::GoawaySent).is_some())
        .expect("the rollout");
    assert_eq!(tl.goaways, vec![uprobe, second]);
}
