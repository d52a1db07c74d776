//! Engine unit tests from hand-built observation sequences shaped like the
//! rollouts drainwatch diagnoses (GCP hairpin, slow LB, idle middlebox,
//! hard close, SIGKILL).
//! Addresses follow the lab's topology: masters 198.18.1.11-13, HAProxy
//! 198.18.1.2, VIP 198.18.0.100, worker 198.18.1.50.
//!
//! One file per stage or cause, as in `engine/`; the shared builders and
//! rollouts are here.

use std::net::{IpAddr, SocketAddr};

use crate::*;

mod accept_queue;
mod attribute;
mod cuts;
mod hard_close;
mod idle_reset;
mod incremental;
mod input;
mod lb_detection;
mod refused;
mod sigkill;
mod timeline;

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
            who: None,
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
                client: None,
                server: None,
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
