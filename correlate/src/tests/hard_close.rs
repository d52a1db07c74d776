//! Hard closes (`engine/causes/hard_close.rs`).

use super::*;

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
