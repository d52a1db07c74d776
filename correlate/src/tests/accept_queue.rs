//! Connections reset in the accept queue (`engine/causes/accept_queue.rs`).

use super::*;

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
