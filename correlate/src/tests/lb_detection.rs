//! LB detection time and LB health checks (`engine/causes/lb_detection.rs`).

use super::*;

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
fn lb_detection_not_measurable_without_traffic() {
    let mut b = B::default();
    graceful(&mut b, 0.0, 70.0, 1.0);
    let r = run(&base(), &b);
    assert!(r.verdicts.is_empty());
    let d = r.timelines[0].lb_detection.clone().expect("recorded");
    assert_eq!(d.t_s, None);
    assert!(d.note.contains("not measurable"));
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
                client: None,
                server: None,
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
fn health_check_worst_case_is_interval_times_threshold_plus_timeout() {
    let hc = HealthCheck {
        interval_s: 10.0,
        timeout_s: 10.0,
        unhealthy_threshold: 2,
    };
    assert_eq!(hc.worst_case_s(), 30.0);
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

/// SIGTERM, then a SIGKILL that cuts the /readyz poll in flight: the poller
/// reports red a moment before the dying process closes its listener (seen
/// on a busy CI machine, 0.6 ms). That red is the kill, not a warning the LB
/// could have acted on: no detection time, no `lb_detection_slow`.
#[test]
fn readyz_red_after_the_sigkill_is_no_warning_to_the_lb() {
    let cfg = Config {
        grace_period_s: Some(3.0),
        ..lab_hc(1.0, 3)
    };
    let mut b = B::default();
    b.sig(0.0, Signal::Term);
    b.sig(3.0, Signal::Kill);
    b.readyz(3.0005, false);
    b.listen(3.001, false, 100);
    // The LB keeps sending new connections for a while: refused.
    for i in 1..=5u16 {
        b.rst(3.0 + f64::from(i) * 0.3, sa(LB, 31000 + i), "NO_SOCKET");
    }
    b.exit(3.01, Some(9));
    let r = run(&cfg, &b);
    assert!(
        !causes(&r).contains(&Cause::LbDetectionSlow),
        "{:#?}",
        r.verdicts
    );
    let refused = only(&r, Cause::RefusedWhileNotListening { path: Path::ViaLb });
    assert_eq!(refused.count, 5);
    let d = r.timelines[0].lb_detection.clone().expect("recorded");
    assert_eq!((d.t_s, d.shutdown_delay_s), (None, None));
    assert!(d.note.contains("after the SIGKILL"), "{}", d.note);
}
