//! Engine unit tests from hand-built observation sequences shaped like the
//! rollouts drainwatch diagnoses (GCP hairpin, slow LB, idle middlebox,
//! hard close, SIGKILL).
//! Addresses follow the lab's topology: masters 198.18.1.11-13, HAProxy
//! 198.18.1.2, VIP 198.18.0.100, worker 198.18.1.50.

use std::net::{IpAddr, SocketAddr};

use crate::*;

const S: u64 = 1_000_000_000;
const VIP: &str = "198.18.0.100";
const M1: &str = "198.18.1.11";
const LB: &str = "198.18.1.2";
const WORKER: &str = "198.18.1.50";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(self::ip(ip), port)
}

fn ns(secs: f64) -> u64 {
    (secs * 1e9).round() as u64
}

/// Builds an input with ids in order of construction.
#[derive(Default)]
struct B {
    v: Vec<Observation>,
}

impl B {
    fn add(&mut self, t: f64, inst: Option<&str>, source: Source, kind: Obs) -> u64 {
        let id = self.v.len() as u64 + 1;
        self.v.push(Observation {
            id,
            t_ns: ns(t),
            wall: None,
            instance: inst.map(str::to_string),
            source,
            kind,
        });
        id
    }
    fn k(&mut self, t: f64, kind: Obs) -> u64 {
        self.add(t, None, Source::Kernel, kind)
    }
    fn sig(&mut self, t: f64, signal: Signal) -> u64 {
        self.k(
            t,
            Obs::Signal {
                signal,
                pid: Some(100),
                sender: Some(1),
            },
        )
    }
    fn readyz(&mut self, t: f64, ready: bool) -> u64 {
        self.add(t, None, Source::Poller, Obs::ReadyzChanged { ready })
    }
    fn listen(&mut self, t: f64, open: bool, pid: u32) -> u64 {
        let addr = Some(sa("0.0.0.0", 6443));
        self.k(
            t,
            if open {
                Obs::ListenerOpened {
                    addr,
                    pid: Some(pid),
                }
            } else {
                Obs::ListenerClosed {
                    addr,
                    pid: Some(pid),
                }
            },
        )
    }
    fn exit(&mut self, t: f64, signal: Option<i32>) -> u64 {
        self.k(
            t,
            Obs::ProcessExit {
                pid: Some(100),
                signal,
                code: signal.is_none().then_some(0),
            },
        )
    }
    fn accepted(&mut self, t: f64, client: SocketAddr, server: SocketAddr) -> u64 {
        self.k(
            t,
            Obs::Accepted {
                client,
                server,
                path: None,
            },
        )
    }
    fn refused(&mut self, t: f64, client: SocketAddr, server: SocketAddr) -> u64 {
        self.k(
            t,
            Obs::Refused {
                client,
                server,
                path: None,
            },
        )
    }
    fn rst(&mut self, t: f64, client: SocketAddr, reason: &str) -> u64 {
        self.k(
            t,
            Obs::ResetSent {
                client,
                server: sa(M1, 6443),
                reason: Some(reason.to_string()),
                state: Some("ESTABLISHED".into()),
            },
        )
    }
    fn probe(
        &mut self,
        t: f64,
        mode: ProbeMode,
        client: Option<SocketAddr>,
        outcome: ProbeOutcome,
    ) -> u64 {
        self.add(
            t,
            None,
            Source::Prober,
            Obs::ProbeResult {
                target: format!("https://{VIP}:6443"),
                mode,
                method: "GET".into(),
                client,
                server: Some(sa(VIP, 6443)),
                outcome,
            },
        )
    }
    fn goaway(&mut self, t: f64) -> u64 {
        self.add(
            t,
            Some("m1"),
            Source::Wire,
            Obs::Goaway {
                direction: Direction::Sent,
                last_stream_id: 7,
                error_code: "NO_ERROR".into(),
            },
        )
    }
}

fn base() -> Config {
    Config {
        default_instance: Some("m1".into()),
        local_addrs: vec![ip(M1)],
        vips: vec![ip(VIP)],
        lb_addrs: vec![ip(LB)],
        request_timeout_s: Some(60.0),
        ..Config::default()
    }
}

fn run(cfg: &Config, b: &B) -> Report {
    analyze(cfg, b.v.clone()).expect("valid config")
}

fn causes(r: &Report) -> Vec<Cause> {
    r.verdicts.iter().map(|v| v.cause).collect()
}

fn only(r: &Report, cause: Cause) -> &Verdict {
    let v: Vec<&Verdict> = r.verdicts.iter().filter(|v| v.cause == cause).collect();
    assert_eq!(v.len(), 1, "one {cause:?} in {:#?}", r.verdicts);
    v[0]
}

fn phase(r: &Report, inst: &str, cycle: usize, k: PhaseKind) -> Option<Phase> {
    r.timelines
        .iter()
        .find(|t| t.instance == inst && t.cycle == cycle)
        .and_then(|t| t.phase(k).cloned())
}

/// A graceful kube-apiserver restart of m1: SIGTERM and /readyz red at `t0`,
/// the listener closing after the shutdown delay, drained exit, relisten, ready.
fn graceful(b: &mut B, t0: f64, delay: f64, drain: f64) {
    b.sig(t0, Signal::Term);
    b.readyz(t0, false);
    b.listen(t0 + delay, false, 100);
    b.goaway(t0 + delay);
    b.exit(t0 + delay + drain, None);
    b.listen(t0 + delay + drain + 4.0, true, 200);
    b.readyz(t0 + delay + drain + 10.0, true);
}

/// A rollout behind a GCP internal LB: shutdown delay 70 s; the master's own
/// client reaches the VIP, which the node holds, and is refused for 9 s after
/// the listener closes; the worker, through the real LB, stops arriving 20 s
/// after /readyz turns red.
fn gcp_ilb_rollout() -> (Config, B) {
    let cfg = Config {
        local_vips: vec![ip(VIP)],
        shutdown_delay_s: Some(70.0),
        grace_period_s: Some(135.0),
        ..base()
    };
    let mut b = B::default();
    for i in 0..20 {
        b.accepted(
            100.0 + f64::from(i),
            sa(WORKER, 40000 + i as u16),
            sa(VIP, 6443),
        );
    }
    graceful(&mut b, 100.0, 70.0, 5.0);
    // 45 refused attempts, each seen by the client side (refused) and the
    // server side (NO_SOCKET reset) of the same node.
    for i in 0..45u16 {
        let t = 170.1 + f64::from(i) * 0.2;
        let client = sa(VIP, 50000 + i);
        b.refused(t, client, sa(VIP, 6443));
        b.k(
            t,
            Obs::ResetSent {
                client,
                server: sa(VIP, 6443),
                reason: Some("NO_SOCKET".into()),
                state: None,
            },
        );
    }
    (cfg, b)
}

#[test]
fn gcp_ilb_hairpin_refusals() {
    let (cfg, b) = gcp_ilb_rollout();
    let r = run(&cfg, &b);
    assert_eq!(
        causes(&r),
        vec![Cause::RefusedWhileNotListening {
            path: Path::LocalHairpin
        }],
        "{:#?}",
        r.verdicts
    );
    let v = &r.verdicts[0];
    assert_eq!(v.count, 45, "both ends of one attempt count once");
    assert_eq!(v.instance.as_deref(), Some("m1"));
    assert_eq!(v.evidence.len(), 91, "90 observations + the listener close");
    assert!(v.sentence.contains("own traffic") && v.sentence.contains("take the VIP off"));
    match v.measured {
        Some(Measured::NotListening { seconds }) => {
            assert!((seconds - 8.9).abs() < 0.01, "{seconds}")
        }
        ref m => panic!("{m:?}"),
    }
    // The worker's LB path was fine: t = 19 s < 70 s.
    let lb = r.timelines[0].lb_detection.clone().expect("lb detection");
    assert_eq!(lb.holds, Some(true));
    assert!((lb.t_s.expect("t") - 19.0).abs() < 1e-6);
    assert_eq!(r.summary.by_cause["refused_local_hairpin"].disruptions, 45);
    assert!(
        phase(&r, "m1", 0, PhaseKind::Drained)
            .expect("drained")
            .inferred
    );
    assert!(r.timelines[0].complete);
}

/// A rollout behind an AWS LB that takes t = 30 s to detect /readyz red.
fn slow_lb_rollout(delay: f64) -> (Config, B) {
    let cfg = Config {
        shutdown_delay_s: Some(delay),
        health_check: Some(HealthCheck {
            interval_s: 10.0,
            timeout_s: 10.0,
            unhealthy_threshold: 2,
        }),
        ..base()
    };
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.listen(delay, false, 100);
    // New connections through HAProxy once a second until the LB takes m1
    // out 30 s after /readyz red: accepted while listening, refused after.
    for i in 1..=30u16 {
        let t = f64::from(i);
        let client = sa(LB, 30000 + i);
        if t < delay {
            b.accepted(t, client, sa(M1, 6443));
        } else {
            b.rst(t, client, "NO_SOCKET");
        }
    }
    b.exit(delay + 2.0, None);
    b.listen(delay + 5.0, true, 200);
    b.readyz(delay + 8.0, true);
    (cfg, b)
}

#[test]
fn lb_detection_fails_with_30s_shutdown_delay() {
    let (cfg, b) = slow_lb_rollout(30.0);
    let r = run(&cfg, &b);
    let v = only(&r, Cause::LbDetectionSlow);
    match &v.measured {
        Some(Measured::LbDetection(d)) => {
            assert_eq!(d.t_s, Some(30.0));
            assert_eq!(d.holds, Some(false));
            assert_eq!(d.shutdown_delay_s, Some(30.0));
            assert_eq!(d.hc_worst_case_s, Some(30.0));
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(v.count, 1, "one connection arrived at the listener close");
    assert!(
        v.sentence.contains("not less than the shutdown delay") && !v.sentence.contains("E2"),
        "{}",
        v.sentence
    );
    let refused = only(&r, Cause::RefusedWhileNotListening { path: Path::ViaLb });
    assert_eq!(refused.count, 1);
    assert_eq!(r.summary.lb_detection_seconds["m1"], 30.0);
}

#[test]
fn lb_detection_passes_with_70s_shutdown_delay() {
    let (cfg, b) = slow_lb_rollout(70.0);
    let r = run(&cfg, &b);
    assert!(r.verdicts.is_empty(), "{:#?}", r.verdicts);
    let d = r.timelines[0].lb_detection.clone().expect("measured");
    assert_eq!(
        (d.t_s, d.holds, d.lower_bound),
        (Some(30.0), Some(true), true)
    );
}

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

#[test]
fn lb_detection_not_measurable_without_traffic() {
    let mut b = B::default();
    graceful(&mut b, 0.0, 70.0, 1.0);
    let r = run(&base(), &b);
    assert!(r.verdicts.is_empty());
    let d = r.timelines[0].lb_detection.clone().expect("recorded");
    assert_eq!(d.t_s, None);
    assert!(d.note.contains("not measurable"));
}

fn idle_reset(b: &mut B, t: f64, port: u16, silence_s: f64, keepalive: Keepalive) -> u64 {
    b.add(
        t,
        None,
        Source::Wire,
        Obs::WireReset {
            client: Some(sa("198.18.2.10", port)),
            server: Some(sa("198.18.3.10", 8600)),
            origin: ResetOrigin::Middlebox,
            silence_s,
            keepalive,
            answered_packet: None,
        },
    )
}

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

/// A server that calls Close() instead of a graceful shutdown: every
/// connection is cut as the listener closes.
fn close_instead_of_shutdown() -> B {
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.listen(20.0, false, 100);
    for i in 0..3u16 {
        b.rst(20.01, sa(LB, 20000 + i), "TCP_ABORT_ON_CLOSE");
    }
    // The prober's reused connection was one of them.
    b.probe(
        20.02,
        ProbeMode::Reused,
        Some(sa(LB, 20000)),
        ProbeOutcome::Eof,
    );
    b.exit(20.5, None);
    b.listen(25.0, true, 200);
    b.readyz(30.0, true);
    b
}

#[test]
fn close_instead_of_shutdown_is_a_hard_close() {
    let r = run(&base(), &close_instead_of_shutdown());
    assert_eq!(causes(&r), vec![Cause::HardClose], "{:#?}", r.verdicts);
    let v = &r.verdicts[0];
    assert_eq!(v.count, 3);
    assert_eq!(v.evidence.len(), 4);
    assert!(v.sentence.contains("TCP_ABORT_ON_CLOSE") && v.fix.contains("Shutdown(ctx)"));
    assert!(phase(&r, "m1", 0, PhaseKind::Drained).is_none());
}

/// Lab-shaped: a hard close cuts two requests the kernel saw pending; an
/// RST from closing a health check just before, and one after the new
/// process listens, are ordinary traffic, not the close.
#[test]
fn hard_close_counts_only_the_close_instant() {
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.rst(6.8, sa(LB, 30000), "TCP_ABORT_ON_DATA");
    b.listen(7.0, false, 100);
    for i in 0..2u16 {
        b.k(
            7.003,
            Obs::ConnClosed {
                client: sa(LB, 20000 + i),
                server: sa(M1, 6443),
                by_server: true,
                pending_request: Some(true),
            },
        );
    }
    b.exit(7.005, None);
    b.listen(9.0, true, 200);
    b.rst(9.5, sa(LB, 30001), "TCP_ABORT_ON_CLOSE");
    b.readyz(10.0, true);
    let r = run(&base(), &b);
    assert_eq!(causes(&r), vec![Cause::HardClose], "{:#?}", r.verdicts);
    assert_eq!(r.verdicts[0].count, 2, "{:#?}", r.verdicts);
}

/// A server that closes its listener with connections still queued (the
/// kernel completed them, the application never accepted them): each is
/// reset at the close, counted per path, with nothing else blamed; a
/// graceful rollout otherwise.
#[test]
fn accept_queue_resets_at_listener_close_are_their_own_cause() {
    let mut b = B::default();
    graceful(&mut b, 0.0, 5.0, 1.0);
    for i in 0..3u16 {
        b.accepted(4.9, sa(LB, 21000 + i), sa(M1, 6443));
        b.k(
            5.0005,
            Obs::AcceptQueueReset {
                client: sa(LB, 21000 + i),
                server: sa(M1, 6443),
            },
        );
    }
    b.k(
        5.001,
        Obs::AcceptQueueReset {
            client: sa(WORKER, 22000),
            server: sa(M1, 6443),
        },
    );
    let r = run(&base(), &b);
    let mut got: Vec<(Cause, u64)> = r.verdicts.iter().map(|v| (v.cause, v.count)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (Cause::AcceptQueueReset { path: Path::ViaLb }, 3),
            (Cause::AcceptQueueReset { path: Path::Direct }, 1),
        ],
        "{:#?}",
        r.verdicts
    );
    let v = only(&r, Cause::AcceptQueueReset { path: Path::ViaLb });
    assert!(
        v.sentence.contains("accept queue") && v.sentence.contains("502"),
        "{}",
        v.sentence
    );
    assert!(v.fix.contains("before the listener closes"), "{}", v.fix);
    assert_eq!(v.instance.as_deref(), Some("m1"));
    assert_eq!(
        r.summary
            .by_cause
            .get("accept_queue_reset")
            .map(|c| c.disruptions),
        Some(4)
    );
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

/// Two refused connects that happen to reuse a source port are two
/// attempts; the kernel's RST sent and refused connect of one attempt are one.
#[test]
fn reused_source_port_refusals_are_two_attempts() {
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.listen(7.0, false, 100);
    let c = sa(LB, 36548);
    b.rst(7.1, c, "NO_SOCKET");
    b.refused(7.100_01, c, sa(M1, 6443));
    b.rst(7.15, c, "NO_SOCKET");
    b.refused(7.150_01, c, sa(M1, 6443));
    b.exit(7.2, None);
    let r = run(&base(), &b);
    let n: u64 = r
        .verdicts
        .iter()
        .filter(|v| matches!(v.cause, Cause::RefusedWhileNotListening { .. }))
        .map(|v| v.count)
        .sum();
    assert_eq!(n, 2, "{:#?}", r.verdicts);
}

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

#[test]
fn unknown_path_fix_names_flags_not_config_keys() {
    let cfg = Config {
        local_addrs: vec![],
        vips: vec![],
        lb_addrs: vec![],
        ..base()
    };
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.listen(1.0, false, 100);
    b.refused(2.0, sa("203.0.113.7", 40000), sa("203.0.113.1", 6443));
    let r = run(&cfg, &b);
    let v = only(
        &r,
        Cause::RefusedWhileNotListening {
            path: Path::Unknown,
        },
    );
    for flag in ["--vip", "--local-vip", "--lb-addr", "--local"] {
        assert!(v.fix.contains(flag), "{flag}: {}", v.fix);
    }
    for key in ["local_addrs", "local_vips", "lb_addrs", "vips,"] {
        assert!(!v.fix.contains(key), "{key}: {}", v.fix);
    }
}

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
fn aws_nlb_clean_rollout_has_no_verdicts() {
    let cfg = Config {
        default_instance: None,
        shutdown_delay_s: Some(70.0),
        health_check: Some(HealthCheck {
            interval_s: 10.0,
            timeout_s: 10.0,
            unhealthy_threshold: 2,
        }),
        ..base()
    };
    let mut b = B::default();
    for (n, m) in ["m1", "m2", "m3"].iter().enumerate() {
        let t0 = 200.0 * n as f64;
        let inst = Some(*m);
        let server = sa(&format!("198.18.1.1{}", n + 1), 6443);
        b.add(
            t0,
            inst,
            Source::Kernel,
            Obs::Signal {
                signal: Signal::Term,
                pid: None,
                sender: None,
            },
        );
        b.add(
            t0,
            inst,
            Source::Poller,
            Obs::ReadyzChanged { ready: false },
        );
        for i in 0..15u16 {
            b.add(
                t0 + f64::from(i) + 0.5,
                inst,
                Source::Kernel,
                Obs::Accepted {
                    client: sa(LB, 1000 + i),
                    server,
                    path: None,
                },
            );
        }
        b.add(
            t0 + 70.0,
            inst,
            Source::Kernel,
            Obs::ListenerClosed {
                addr: None,
                pid: None,
            },
        );
        b.add(
            t0 + 70.0,
            inst,
            Source::Wire,
            Obs::Goaway {
                direction: Direction::Sent,
                last_stream_id: 3,
                error_code: "NO_ERROR".into(),
            },
        );
        b.add(
            t0 + 70.1,
            inst,
            Source::Kernel,
            Obs::ConnClosed {
                client: sa(LB, 1),
                server,
                by_server: true,
                pending_request: Some(false),
            },
        );
        b.add(
            t0 + 75.0,
            inst,
            Source::Kernel,
            Obs::ProcessExit {
                pid: None,
                signal: None,
                code: Some(0),
            },
        );
        b.add(
            t0 + 80.0,
            inst,
            Source::Kernel,
            Obs::ListenerOpened {
                addr: None,
                pid: None,
            },
        );
        b.add(
            t0 + 90.0,
            inst,
            Source::Poller,
            Obs::ReadyzChanged { ready: true },
        );
    }
    for i in 0..600 {
        b.probe(
            f64::from(i),
            ProbeMode::NewConn,
            None,
            ProbeOutcome::Ok(200),
        );
    }
    let r = run(&cfg, &b);
    assert!(r.verdicts.is_empty(), "{:#?}", r.verdicts);
    assert_eq!(r.timelines.len(), 3);
    for t in &r.timelines {
        assert!(t.complete);
        let d = t.lb_detection.clone().expect("measured");
        assert_eq!(d.holds, Some(true));
        assert!((d.t_s.expect("t") - 14.5).abs() < 1e-6);
    }
    assert_eq!(r.summary.lb_detection_seconds.len(), 3);
    assert!(r.summary.by_cause.is_empty());
    assert_eq!(r.stats.unattributed, 0);
}

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
fn jsonl_round_trip_and_errors() {
    let (cfg, b) = slow_lb_rollout(30.0);
    let text: String =
        b.v.iter()
            .map(|o| serde_json::to_string(o).expect("serializes") + "\n")
            .collect();
    let parsed = parse_jsonl(&text).expect("parses");
    assert_eq!(parsed, b.v);
    let r = analyze(&cfg, parsed).expect("valid");
    let json = serde_json::to_string(&r).expect("report serializes");
    let back: Report = serde_json::from_str(&json).expect("report deserializes");
    assert_eq!(back, r);
    let err = parse_jsonl("\n{\"id\":1}\n").expect_err("incomplete");
    assert_eq!(err.line, 2);
    assert!(err.to_string().starts_with("line 2:"));
}

#[test]
fn config_is_validated() {
    let cfg = Config {
        shutdown_delay_s: Some(-1.0),
        ..Config::default()
    };
    assert!(matches!(
        Engine::new(cfg),
        Err(ConfigError::Duration {
            name: "shutdown_delay_s",
            ..
        })
    ));
    let cfg = Config {
        health_check: Some(HealthCheck {
            interval_s: 1.0,
            timeout_s: 1.0,
            unhealthy_threshold: 0,
        }),
        ..Config::default()
    };
    assert_eq!(Engine::new(cfg).err(), Some(ConfigError::Threshold));
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
fn health_check_worst_case_is_interval_times_threshold_plus_timeout() {
    let hc = HealthCheck {
        interval_s: 10.0,
        timeout_s: 10.0,
        unhealthy_threshold: 2,
    };
    assert_eq!(hc.worst_case_s(), 30.0);
}

#[test]
fn verdict_lines_are_readable() {
    let (cfg, b) = gcp_ilb_rollout();
    let r = run(&cfg, &b);
    let line = r.verdicts[0].line();
    assert!(
        line.starts_with("t=170.000s refused_local_hairpin [m1] the LB kept routing"),
        "{line}"
    );
}

/// The lab's HAProxy checks /readyz from its own address, the one it
/// proxies from: once it took m1 out, only its checks arrive, every
/// interval, and after the listener closes they are refused. They are not client traffic.
fn haproxy_checks(b: &mut B, from: f64, to: f64, interval: f64, e3: f64) {
    let mut t = from;
    let mut port = 60000;
    while t < to {
        let client = sa(LB, port);
        if t < e3 {
            b.accepted(t, client, sa(M1, 6443));
        } else {
            b.rst(t, client, "NO_SOCKET");
        }
        t += interval;
        port += 1;
    }
}

fn lab_hc(interval: f64, fall: u32) -> Config {
    Config {
        health_check: Some(HealthCheck {
            interval_s: interval,
            timeout_s: interval,
            unhealthy_threshold: fall,
        }),
        ..base()
    }
}

#[test]
fn lb_health_checks_after_the_listener_closed_are_not_refused_clients() {
    // aws-nlb-rollout, scaled: /readyz red at 0, LB out at 2.5 s, listener
    // closed at 7 s, relisten 10 s.
    let cfg = lab_hc(1.0, 2);
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    for i in 0..25u16 {
        b.accepted(f64::from(i) * 0.1, sa(LB, 1000 + i), sa(M1, 6443));
    }
    haproxy_checks(&mut b, 2.6, 10.0, 1.0, 7.0);
    b.listen(7.0, false, 100);
    b.exit(7.5, None);
    b.listen(10.0, true, 200);
    b.readyz(10.5, true);
    let r = run(&cfg, &b);
    assert!(r.verdicts.is_empty(), "{:#?}", r.verdicts);
    let d = r.timelines[0].lb_detection.clone().expect("measured");
    assert_eq!(d.holds, Some(true));
    assert!((d.t_s.expect("t") - 2.4).abs() < 1e-6, "{d:?}");
    assert!(d.note.contains("8 later LB health-check"), "{}", d.note);
}

#[test]
fn slow_health_check_measures_detection_time_from_client_traffic() {
    // aws-nlb-slow-healthcheck, scaled: delay 3 s, checks every 2 s x 3:
    // clients keep arriving (refused) until the LB takes m1 out at 6.5 s.
    let cfg = lab_hc(2.0, 3);
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.readyz(0.0, false);
    b.listen(3.0, false, 100);
    for i in 0..65u16 {
        let t = f64::from(i) * 0.1;
        let client = sa(LB, 1000 + i);
        if t < 3.0 {
            b.accepted(t, client, sa(M1, 6443));
        } else {
            b.rst(t, client, "NO_SOCKET");
        }
    }
    haproxy_checks(&mut b, 7.0, 12.0, 2.0, 3.0);
    b.exit(3.5, None);
    b.listen(12.0, true, 200);
    let r = run(&cfg, &b);
    let v = only(&r, Cause::LbDetectionSlow);
    match &v.measured {
        Some(Measured::LbDetection(d)) => {
            assert!((d.t_s.expect("t") - 6.4).abs() < 1e-6, "{d:?}");
            assert_eq!(d.hc_worst_case_s, Some(8.0));
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(v.count, 35);
    let refused = only(&r, Cause::RefusedWhileNotListening { path: Path::ViaLb });
    assert_eq!(refused.count, 35, "the 3 health checks are not counted");
}

#[test]
fn health_check_sources_are_not_clients() {
    let cfg = Config {
        health_check_sources: vec![Cidr::try_from("35.191.0.0/16".to_string()).expect("cidr")],
        ..base()
    };
    let mut b = B::default();
    graceful(&mut b, 0.0, 10.0, 1.0);
    b.rst(12.0, sa("35.191.3.4", 1), "NO_SOCKET");
    let r = run(&cfg, &b);
    assert!(r.verdicts.is_empty(), "{:#?}", r.verdicts);
    assert!(Cidr::try_from("10.0.0.0/33".to_string()).is_err());
    let c = Cidr::try_from("fd00::/8".to_string()).expect("v6");
    assert!(c.contains(ip("fd12::1")) && !c.contains(ip("fe80::1")) && !c.contains(ip(M1)));
    assert_eq!(String::from(c), "fd00::/8");
}

#[test]
fn readyz_flap_is_not_a_shutdown() {
    let mut b = B::default();
    b.readyz(0.0, false);
    b.accepted(1.0, sa(LB, 1), sa(M1, 6443));
    b.readyz(3.0, true);
    let r = run(&base(), &b);
    assert!(r.verdicts.is_empty());
    assert_eq!(r.timelines.len(), 1);
    let t = &r.timelines[0];
    assert!(
        t.phase(PhaseKind::Sigterm).is_none(),
        "no SIGTERM inferred from a flap"
    );
    assert!(t.lb_detection.is_none());
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

#[test]
fn extreme_input_does_not_panic() {
    let cfg = Config {
        request_timeout_s: Some(1e300),
        shutdown_delay_s: Some(1e300),
        health_check: Some(HealthCheck {
            interval_s: 1e300,
            timeout_s: 0.0,
            unhealthy_threshold: 1,
        }),
        ..base()
    };
    let mut b = B::default();
    let end = u64::MAX as f64;
    b.sig(end, Signal::Term);
    b.readyz(0.0, false);
    b.listen(end, false, 1);
    b.rst(end, sa(LB, 1), "NO_SOCKET");
    b.rst(end, sa(LB, 2), "TCP_ABORT_ON_CLOSE");
    b.accepted(end, sa(LB, 3), sa(M1, 6443));
    b.accepted(1.0, sa(LB, 4), sa(M1, 6443));
    b.probe(end, ProbeMode::Reused, None, ProbeOutcome::Eof);
    b.exit(end, Some(9));
    idle_reset(&mut b, end, 1, f64::NAN, Keepalive::Interval(f64::INFINITY));
    idle_reset(&mut b, 0.0, 1, -1.0, Keepalive::Unknown);
    for o in &mut b.v {
        if o.t_ns > 0 {
            o.t_ns = u64::MAX;
        }
    }
    let r = run(&cfg, &b);
    assert!(!r.timelines.is_empty());
    let mut e = Engine::new(cfg).expect("valid");
    for o in b.v {
        e.push(o);
    }
    e.compact(u64::MAX);
    let _ = e.report();
}
