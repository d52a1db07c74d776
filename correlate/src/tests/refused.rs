//! Refusals while not listening, by path (`engine/causes/refused.rs`).

use super::*;

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
fn verdict_lines_are_readable() {
    let (cfg, b) = gcp_ilb_rollout();
    let r = run(&cfg, &b);
    let line = r.verdicts[0].line();
    assert!(
        line.starts_with("t=170.000s refused_local_hairpin [m1] the LB kept routing"),
        "{line}"
    );
}
