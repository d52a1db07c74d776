//! The TC classifier run on crafted packets with `BPF_PROG_TEST_RUN`: the
//! real program in this kernel, fed packets built with pnet, including
//! malformed ones that must produce no event. Needs root.

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use drainwatch_correlate::{Direction, ResetOrigin};
use pnet_packet::tcp::TcpFlags;
use probe_common::wire_stat as ws;

use crate::{
    decode::event::{DecodeContext, Event, EventKind, decode, parse_raw},
    kernel::{
        craft::{CLIENT, SERVER, ext, seg, v4, v4_between, v6},
        load::{self as loader, LoadOptions, WireOptions},
    },
};

struct Rig {
    loaded: loader::Loaded,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    stats: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
}

fn rig() -> Option<Rig> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
            "BPF_PROG_TEST_RUN needs root: DRAINWATCH_NO_SKIP is set, nothing may skip"
        );
        eprintln!("skipped: BPF_PROG_TEST_RUN of the classifier needs root");
        return None;
    }
    let mut loaded = loader::load(&LoadOptions {
        ports: vec![6443],
        ringbuf_bytes: 1 << 16,
        socket_table: 1024,
        kernel_log_level: 0,
        kprobes: false,
        // Loaded, attached nowhere: packets come only from test runs.
        wire: Some(WireOptions {
            ifaces: Vec::new(),
            flow_table: 1024,
            attach: loader::TcAttach::Auto,
            state_dir: None,
            netns: None,
        }),
        watch_comms: Vec::new(),
        netns: None,
        go_uprobes: false,
        go_clients: Vec::new(),
        endpoints: None,
    })
    .expect("load");
    let events = loader::take_events(&mut loaded.ebpf).expect("events");
    let stats = loader::take_wire_stats(&mut loaded.ebpf).expect("stats");
    Some(Rig {
        loaded,
        events,
        stats,
    })
}

impl Rig {
    /// Runs `tc_ingress` (or egress) on `frame`; returns the wire events it made.
    fn run(&mut self, ingress: bool, frame: &[u8]) -> Vec<Event> {
        let name = if ingress { "tc_ingress" } else { "tc_egress" };
        let prog: &mut SchedClassifier = self
            .loaded
            .ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("classifier");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        let res = prog
            .test_run(opts)
            .unwrap_or_else(|e| panic!("test run of {} bytes: {e}", frame.len()));
        assert_eq!(
            res.return_value, 0,
            "the classifier always passes packets on"
        );
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            let raw = parse_raw(&item).expect("record");
            let ev = decode(&raw, &DecodeContext::plain()).expect("decode");
            if matches!(
                ev.kind,
                EventKind::WireReset | EventKind::Keepalive | EventKind::Goaway
            ) {
                out.push(ev);
            }
        }
        out
    }

    fn stat(&self, slot: u32) -> u64 {
        loader::percpu_total(&self.stats, slot)
    }
}

#[test]
fn crafted_packets_give_exact_events_and_malformed_ones_none() {
    let Some(mut r) = rig() else { return };
    let rst = TcpFlags::RST | TcpFlags::ACK;

    // A well-formed RST to a watched port: exactly one event (the harness can see).
    let evs = r.run(true, &v4(&seg(40000, 6443, 1, rst, &[]), 5, 5));
    assert_eq!(evs.len(), 1, "{evs:?}");
    let w = evs[0].wire.as_ref().expect("wire");
    assert_eq!(evs[0].kind, EventKind::WireReset);
    assert_eq!(
        (w.direction, w.origin, w.ttl),
        (Direction::Received, Some(ResetOrigin::Unknown), 64)
    );
    assert_eq!(
        evs[0].local.map(|a| a.to_string()).unwrap_or_default(),
        "198.18.7.2:6443"
    );
    assert_eq!(
        evs[0].remote.map(|a| a.to_string()).unwrap_or_default(),
        "198.18.7.1:40000"
    );

    // IP options are skipped correctly: the ports are still found.
    let evs = r.run(true, &v4(&seg(40001, 6443, 1, rst, &[]), 7, 5));
    assert_eq!(evs.len(), 1, "IPv4 with options: {evs:?}");
    assert_eq!(
        evs[0].remote.map(|a| a.to_string()).unwrap_or_default(),
        "198.18.7.1:40001"
    );

    // IPv6 through hop-by-hop and destination-options headers.
    let evs = r.run(
        true,
        &v6(
            &seg(40002, 6443, 1, rst, &[]),
            &[(0, ext(60)), (60, ext(6))],
        ),
    );
    assert_eq!(evs.len(), 1, "IPv6 with extension headers: {evs:?}");
    assert_eq!(
        evs[0].local.map(|a| a.to_string()).unwrap_or_default(),
        "[2001:2::2]:6443"
    );

    let malformed_before = r.stat(ws::MALFORMED);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("unwatched port", v4(&seg(40003, 8080, 1, rst, &[]), 5, 5)),
        // (The kernel's test runner itself refuses frames shorter than an IP header.)
        (
            "truncated TCP header",
            v4(&seg(40004, 6443, 1, rst, &[]), 5, 5)[..14 + 20 + 10].to_vec(),
        ),
        (
            "IHL pointing past the packet",
            v4(&seg(40010, 6443, 1, rst, &[]), 15, 5)[..14 + 44].to_vec(),
        ),
        ("IHL below 5", v4(&seg(40005, 6443, 1, rst, &[]), 3, 5)),
        (
            "TCP data offset below 5",
            v4(&seg(40006, 6443, 1, rst, &[]), 5, 2),
        ),
        (
            "data offset past the packet",
            v4(&seg(40007, 6443, 1, rst, &[]), 5, 15),
        ),
        (
            "IPv6 unknown extension header",
            v6(&seg(40008, 6443, 1, rst, &[]), &[(99, ext(6))]),
        ),
        ("Ethernet only", vec![0u8; 14]),
    ];
    for (what, frame) in &bad {
        let evs = r.run(true, frame);
        assert!(evs.is_empty(), "{what}: {evs:?}");
    }
    // A short payload: the IP length claims less than the TCP header.
    let mut short = v4(&seg(40009, 6443, 1, rst, &[]), 5, 5);
    short[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes());
    assert!(
        r.run(true, &short).is_empty(),
        "IP length shorter than the TCP header"
    );
    let malformed = r.stat(ws::MALFORMED) - malformed_before;
    assert_eq!(
        malformed, 4,
        "IHL, two bad data offsets and the short packet are counted"
    );
}

/// HTTP/2 frame bytes: 24-bit length, type, flags, stream id, payload.
fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(7, 0, 0, &p)
}

#[test]
fn goaway_is_found_across_frames_and_split_ones_are_counted() {
    let Some(mut r) = rig() else { return };
    let ack = TcpFlags::ACK | TcpFlags::PSH;
    // Server side of a flow seen from its SYN: SETTINGS, HEADERS, DATA, then GOAWAY.
    assert!(
        r.run(
            false,
            &v4(
                &seg(6443, 41000, 999, TcpFlags::SYN | TcpFlags::ACK, &[]),
                5,
                5
            )
        )
        .is_empty()
    );
    let mut first = frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    first.extend(frame(1, 4, 1, &[0x88]));
    first.extend(frame(0, 1, 1, b"ok\n"));
    assert!(
        r.run(false, &v4(&seg(6443, 41000, 1000, ack, &first), 5, 5))
            .is_empty()
    );
    let next = 1000 + first.len() as u32;
    let evs = r.run(
        false,
        &v4(&seg(6443, 41000, next, ack, &goaway(1, 0)), 5, 5),
    );
    assert_eq!(evs.len(), 1, "{evs:?}");
    let w = evs[0].wire.as_ref().expect("wire");
    assert_eq!(evs[0].kind, EventKind::Goaway);
    assert_eq!(
        (w.direction, w.last_stream_id, w.error_code),
        (Direction::Sent, Some(1), Some("NO_ERROR"))
    );

    // The client side: preface, then a GOAWAY with an error in the same packet.
    assert!(
        r.run(true, &v4(&seg(6443, 41001, 5, TcpFlags::SYN, &[]), 5, 5))
            .is_empty()
    );
    let mut c = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    c.extend(frame(4, 0, 0, &[]));
    c.extend(goaway(7, 11));
    let evs = r.run(true, &v4(&seg(6443, 41001, 6, ack, &c), 5, 5));
    assert_eq!(evs.len(), 1, "{evs:?}");
    let w = evs[0].wire.as_ref().expect("wire");
    assert_eq!(
        (w.last_stream_id, w.error_code),
        (Some(7), Some("ENHANCE_YOUR_CALM"))
    );

    // A GOAWAY cut by the packet end is finished by the next packet; one
    // spread over three packets is counted, not guessed.
    assert!(
        r.run(
            false,
            &v4(
                &seg(6443, 41002, 49, TcpFlags::SYN | TcpFlags::ACK, &[]),
                5,
                5
            )
        )
        .is_empty()
    );
    let mut cut = frame(4, 0, 0, &[]);
    cut.extend_from_slice(&goaway(3, 0)[..12]);
    let split_before = r.stat(ws::H2_SPLIT_GOAWAY);
    assert!(
        r.run(false, &v4(&seg(6443, 41002, 50, ack, &cut), 5, 5))
            .is_empty()
    );
    let rest = 50 + cut.len() as u32;
    let evs = r.run(
        false,
        &v4(&seg(6443, 41002, rest, ack, &goaway(3, 0)[12..]), 5, 5),
    );
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].wire.as_ref().and_then(|w| w.last_stream_id), Some(3));
    let three = goaway(4, 0);
    let mut seq = rest + 5;
    for piece in [&three[..2], &three[2..12], &three[12..]] {
        assert!(
            r.run(false, &v4(&seg(6443, 41002, seq, ack, piece), 5, 5))
                .is_empty()
        );
        seq += piece.len() as u32;
    }
    assert_eq!(r.stat(ws::H2_SPLIT_GOAWAY) - split_before, 1);

    // TLS is recognised and counted as not inspectable.
    assert!(
        r.run(true, &v4(&seg(6443, 41003, 5, TcpFlags::SYN, &[]), 5, 5))
            .is_empty()
    );
    let tls_before = r.stat(ws::H2_TLS);
    let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0];
    assert!(
        r.run(true, &v4(&seg(6443, 41003, 6, ack, &hello), 5, 5))
            .is_empty()
    );
    assert_eq!(r.stat(ws::H2_TLS) - tls_before, 1);
}

/// The shared segmentation cases (`drainwatch_ops::pcap::h2cases`, also run
/// through the pcap follower) through the real classifier: this host is the
/// server, so its segments go through `tc_egress` and the client's through
/// `tc_ingress`; every case must give exactly its GOAWAYs and uninspected
/// counts.
#[test]
fn shared_h2_segmentation_cases_through_the_classifier() {
    use drainwatch_ops::pcap::h2cases::{CLIENT_ISN, SERVER_ISN, cases};
    let Some(mut r) = rig() else { return };
    let slots = [
        (ws::H2_TLS, "h2_tls"),
        (ws::H2_MID_STREAM, "h2_mid_stream"),
        (ws::H2_SPLIT_HEADER, "h2_split_header"),
        (ws::H2_SPLIT_GOAWAY, "h2_split_goaway"),
        (ws::H2_FRAME_LIMIT, "h2_frame_limit"),
        (ws::H2_SEQ_GAP, "h2_seq_gap"),
        (ws::NOT_H2, "not_h2"),
        (ws::H2C_UPGRADE_LOST, "h2c_upgrade_lost"),
    ];
    let ack = TcpFlags::ACK | TcpFlags::PSH;
    for (i, c) in cases().into_iter().enumerate() {
        let port = 42000 + i as u16;
        let before: Vec<u64> = slots.iter().map(|(s, _)| r.stat(*s)).collect();
        let client = |seq, flags, payload: &[u8]| {
            v4_between(&seg(port, 6443, seq, flags, payload), 5, 5, CLIENT, SERVER)
        };
        let server = |seq, flags, payload: &[u8]| {
            v4_between(&seg(6443, port, seq, flags, payload), 5, 5, SERVER, CLIENT)
        };
        let mut evs = r.run(true, &client(CLIENT_ISN, TcpFlags::SYN, &[]));
        evs.extend(r.run(
            false,
            &server(SERVER_ISN, TcpFlags::SYN | TcpFlags::ACK, &[]),
        ));
        evs.extend(r.run(
            true,
            &client(CLIENT_ISN.wrapping_add(1), TcpFlags::ACK, &[]),
        ));
        for s in &c.segs {
            let isn = if s.from_server {
                SERVER_ISN
            } else {
                CLIENT_ISN
            };
            let seq = isn.wrapping_add(1).wrapping_add(s.rel_seq);
            let frame = if s.from_server {
                server(seq, ack, &s.bytes)
            } else {
                client(seq, ack, &s.bytes)
            };
            evs.extend(r.run(!s.from_server, &frame));
        }
        let goaways: Vec<(bool, u32, u32)> = evs
            .iter()
            .filter(|e| e.kind == EventKind::Goaway)
            .map(|e| {
                let w = e.wire.as_ref().expect("wire");
                let code = w.error_code.expect("code");
                (
                    w.direction == Direction::Sent,
                    w.last_stream_id.expect("id"),
                    (0..14)
                        .find(|&i| drainwatch_ops::pcap::flows::h2_error_name(i) == code)
                        .expect("known code"),
                )
            })
            .collect();
        assert_eq!(goaways, c.goaways, "{}", c.name);
        let mut uninspected: Vec<(&str, u64)> = slots
            .iter()
            .zip(&before)
            .map(|((s, name), b)| (*name, r.stat(*s) - b))
            .filter(|(_, n)| *n != 0)
            .collect();
        uninspected.sort_unstable();
        assert_eq!(uninspected, c.uninspected, "{}", c.name);
    }
}
