//! The TC classifier run on crafted packets with `BPF_PROG_TEST_RUN`: the
//! real program in this kernel, fed packets built with pnet, including
//! malformed ones that must produce no event. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use pnet_packet::{
    MutablePacket,
    ethernet::{EtherTypes, MutableEthernetPacket},
    ip::IpNextHeaderProtocols,
    ipv4::{self, MutableIpv4Packet},
    ipv6::MutableIpv6Packet,
    tcp::{MutableTcpPacket, TcpFlags},
};
use probe_common::wire_stat as ws;

use crate::{
    event::{DecodeContext, Event, EventKind, decode, parse_raw},
    loader::{self, LoadOptions, WireOptions},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);

struct Rig {
    loaded: loader::Loaded,
    events: aya::maps::RingBuf<aya::maps::MapData>,
    stats: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
}

fn rig() -> Option<Rig> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: BPF_PROG_TEST_RUN of the classifier needs root");
        return None;
    }
    let mut loaded = loader::load(&LoadOptions {
        ports: vec![6443],
        ringbuf_bytes: 1 << 16,
        kernel_log_level: 0,
        kprobes: false,
        // Loaded, attached nowhere: packets come only from test runs.
        wire: Some(WireOptions {
            ifaces: Vec::new(),
            flow_table: 1024,
        }),
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

struct Seg<'a> {
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
    payload: &'a [u8],
    ttl: u8,
}

fn seg<'a>(sport: u16, dport: u16, seq: u32, flags: u8, payload: &'a [u8]) -> Seg<'a> {
    Seg {
        sport,
        dport,
        seq,
        flags,
        payload,
        ttl: 64,
    }
}

fn tcp_bytes(s: &Seg<'_>, doff_words: u8, options: &[u8]) -> Vec<u8> {
    let len = 20 + options.len() + s.payload.len();
    let mut buf = vec![0u8; len];
    let mut t = MutableTcpPacket::new(&mut buf).expect("tcp");
    t.set_source(s.sport);
    t.set_destination(s.dport);
    t.set_sequence(s.seq);
    t.set_acknowledgement(1);
    t.set_data_offset(doff_words);
    t.set_flags(s.flags);
    t.set_window(512);
    let body = t.packet_mut();
    body[20..20 + options.len()].copy_from_slice(options);
    body[20 + options.len()..].copy_from_slice(s.payload);
    buf
}

/// An Ethernet + IPv4 frame; `ihl_words` > 5 adds NOP options.
fn v4(s: &Seg<'_>, ihl_words: u8, doff_words: u8) -> Vec<u8> {
    let tcp = tcp_bytes(s, doff_words, &[]);
    let ip_hdr = usize::from(ihl_words.max(5)) * 4;
    let mut frame = vec![0u8; 14 + ip_hdr + tcp.len()];
    {
        let mut eth = MutableEthernetPacket::new(&mut frame).expect("eth");
        eth.set_ethertype(EtherTypes::Ipv4);
    }
    {
        let mut ip = MutableIpv4Packet::new(&mut frame[14..]).expect("ip");
        ip.set_version(4);
        ip.set_header_length(ihl_words);
        ip.set_total_length((ip_hdr + tcp.len()) as u16);
        ip.set_ttl(s.ttl);
        ip.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
        ip.set_source(CLIENT);
        ip.set_destination(SERVER);
        if ihl_words > 5 {
            // NOP options (type 1) fill the extra words.
            for b in &mut ip.packet_mut()[20..ip_hdr] {
                *b = 1;
            }
        }
        let sum = ipv4::checksum(&ip.to_immutable());
        ip.set_checksum(sum);
    }
    frame[14 + ip_hdr..].copy_from_slice(&tcp);
    frame
}

/// An Ethernet + IPv6 frame with the given extension headers (next-header, bytes).
fn v6(s: &Seg<'_>, exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let tcp = tcp_bytes(s, 5, &[]);
    let ext_len: usize = exts.iter().map(|(_, b)| b.len()).sum();
    let mut frame = vec![0u8; 14 + 40 + ext_len + tcp.len()];
    {
        let mut eth = MutableEthernetPacket::new(&mut frame).expect("eth");
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let mut ip = MutableIpv6Packet::new(&mut frame[14..]).expect("ip6");
        ip.set_version(6);
        ip.set_payload_length((ext_len + tcp.len()) as u16);
        ip.set_hop_limit(s.ttl);
        let first = exts
            .first()
            .map(|(nh, _)| *nh)
            .unwrap_or(IpNextHeaderProtocols::Tcp.0);
        ip.set_next_header(pnet_packet::ip::IpNextHeaderProtocol(first));
        ip.set_source("2001:2::1".parse::<Ipv6Addr>().expect("v6"));
        ip.set_destination("2001:2::2".parse::<Ipv6Addr>().expect("v6"));
    }
    let mut off = 54;
    for (_, bytes) in exts {
        frame[off..off + bytes.len()].copy_from_slice(bytes);
        off += bytes.len();
    }
    frame[off..].copy_from_slice(&tcp);
    frame
}

/// An 8-byte extension header whose own next-header is `next`.
fn ext(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
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
        ("received", Some("unknown"), 64)
    );
    assert_eq!(evs[0].local.to_string(), "198.18.7.2:6443");
    assert_eq!(evs[0].remote.to_string(), "198.18.7.1:40000");

    // IP options are skipped correctly: the ports are still found.
    let evs = r.run(true, &v4(&seg(40001, 6443, 1, rst, &[]), 7, 5));
    assert_eq!(evs.len(), 1, "IPv4 with options: {evs:?}");
    assert_eq!(evs[0].remote.to_string(), "198.18.7.1:40001");

    // IPv6 through hop-by-hop and destination-options headers.
    let evs = r.run(
        true,
        &v6(
            &seg(40002, 6443, 1, rst, &[]),
            &[(0, ext(60)), (60, ext(6))],
        ),
    );
    assert_eq!(evs.len(), 1, "IPv6 with extension headers: {evs:?}");
    assert_eq!(evs[0].local.to_string(), "[2001:2::2]:6443");

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
        ("sent", Some(1), Some("NO_ERROR"))
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

    // A GOAWAY cut by the packet end is counted, not guessed.
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
