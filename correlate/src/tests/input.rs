//! Input and configuration: recordings, validation, hostile input (`lib.rs`, `config.rs`).

use super::*;

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
