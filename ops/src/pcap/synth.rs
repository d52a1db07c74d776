//! Hand-built captures for tests: Ethernet/IPv4/TCP frames in pcap or
//! pcapng containers, byte by byte, so tests control TTLs, timing and
//! sequence numbers exactly and can also write broken files.

use std::net::{IpAddr, SocketAddr};

use super::packet::flags;

/// One TCP segment to write.
#[derive(Debug, Clone)]
pub struct Pkt {
    pub t_us: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ttl: u8,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
    /// IPv4 id: a copy of the packet keeps it, a new packet gets a new one.
    pub ip_id: u16,
}

/// IPv4 + TCP bytes of a segment.
pub fn ip_tcp(p: &Pkt) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (p.src.ip(), p.dst.ip()) else {
        panic!("synth writes IPv4 only");
    };
    let total = 40 + p.payload.len();
    let mut b = vec![0x45, 0];
    b.extend_from_slice(&(total as u16).to_be_bytes());
    // The IPv4 id differs per packet, as Linux's per-socket counter does.
    b.extend_from_slice(&p.ip_id.to_be_bytes());
    b.extend_from_slice(&[0x40, 0, p.ttl, 6, 0, 0]);
    b.extend_from_slice(&s.octets());
    b.extend_from_slice(&d.octets());
    b.extend_from_slice(&p.src.port().to_be_bytes());
    b.extend_from_slice(&p.dst.port().to_be_bytes());
    b.extend_from_slice(&p.seq.to_be_bytes());
    b.extend_from_slice(&p.ack.to_be_bytes());
    b.extend_from_slice(&[0x50, p.flags, 0xff, 0xff, 0, 0, 0, 0]);
    b.extend_from_slice(&p.payload);
    b
}

/// Ethernet frame around `ip`.
pub fn eth(ip: &[u8]) -> Vec<u8> {
    let mut b = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    b.extend_from_slice(ip);
    b
}

/// A pcap file (microsecond timestamps, little-endian) of `frames` with
/// link type `link`.
pub fn pcap(link: u32, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    pcap_snap(link, 65535, frames)
}

/// As [`pcap`], cutting frames at `snaplen` like `tcpdump -s`.
pub fn pcap_snap(link: u32, snaplen: u32, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&snaplen.to_le_bytes());
    b.extend_from_slice(&link.to_le_bytes());
    for (t_us, data) in frames {
        let incl = data.len().min(snaplen as usize);
        b.extend_from_slice(&((t_us / 1_000_000) as u32).to_le_bytes());
        b.extend_from_slice(&((t_us % 1_000_000) as u32).to_le_bytes());
        b.extend_from_slice(&(incl as u32).to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&data[..incl]);
    }
    b
}

/// A pcapng file: one section, one Ethernet interface with the default
/// microsecond resolution, one enhanced packet block per frame.
pub fn pcapng(frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    fn block(ty: u32, body: &[u8]) -> Vec<u8> {
        let pad = (4 - body.len() % 4) % 4;
        let len = (12 + body.len() + pad) as u32;
        let mut b = ty.to_le_bytes().to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(body);
        b.extend(std::iter::repeat_n(0, pad));
        b.extend_from_slice(&len.to_le_bytes());
        b
    }
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    let mut out = block(0x0a0d_0d0a, &shb);
    let mut idb = 1u16.to_le_bytes().to_vec();
    idb.extend_from_slice(&[0, 0]);
    idb.extend_from_slice(&65535u32.to_le_bytes());
    out.extend(block(1, &idb));
    for (t_us, data) in frames {
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&((t_us >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(*t_us as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(data);
        epb.extend(std::iter::repeat_n(0, (4 - data.len() % 4) % 4));
        out.extend(block(6, &epb));
    }
    out
}

/// Start of the synthetic captures: 2026-01-01T00:00:00Z.
pub const T0_US: u64 = 1_767_225_600_000_000;

/// A TCP conversation that keeps sequence numbers, for writing scenarios.
pub struct Conv {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub client_ttl: u8,
    pub server_ttl: u8,
    pub cseq: u32,
    pub sseq: u32,
    pub pkts: Vec<Pkt>,
}

impl Conv {
    pub fn new(client: &str, server: &str) -> Conv {
        Conv {
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            client_ttl: 64,
            server_ttl: 64,
            cseq: 1000,
            sseq: 5000,
            pkts: Vec::new(),
        }
    }

    fn push(&mut self, t_s: f64, from_client: bool, fl: u8, payload: &[u8], ttl: Option<u8>) {
        let (src, dst, seq, ack, dttl) = if from_client {
            (
                self.client,
                self.server,
                self.cseq,
                self.sseq,
                self.client_ttl,
            )
        } else {
            (
                self.server,
                self.client,
                self.sseq,
                self.cseq,
                self.server_ttl,
            )
        };
        self.pkts.push(Pkt {
            t_us: T0_US + (t_s * 1e6).round() as u64,
            src,
            dst,
            ttl: ttl.unwrap_or(dttl),
            flags: fl,
            seq,
            ack,
            payload: payload.to_vec(),
            ip_id: self.pkts.len() as u16 + if from_client { 1000 } else { 3000 },
        });
        let adv = payload.len() as u32
            + u32::from(fl & flags::SYN != 0)
            + u32::from(fl & flags::FIN != 0);
        if from_client {
            self.cseq = self.cseq.wrapping_add(adv);
        } else {
            self.sseq = self.sseq.wrapping_add(adv);
        }
    }

    pub fn handshake(&mut self, t_s: f64) -> &mut Self {
        self.push(t_s, true, flags::SYN, &[], None);
        self.push(t_s + 0.0001, false, flags::SYN | flags::ACK, &[], None);
        self.push(t_s + 0.0002, true, flags::ACK, &[], None);
        self
    }
    pub fn syn(&mut self, t_s: f64) -> &mut Self {
        self.push(t_s, true, flags::SYN, &[], None);
        self
    }
    pub fn refuse(&mut self, t_s: f64) -> &mut Self {
        // The RST answering a SYN acknowledges it and carries seq 0.
        self.sseq = 0;
        self.push(t_s, false, flags::RST | flags::ACK, &[], None);
        self
    }
    pub fn client_data(&mut self, t_s: f64, data: &[u8]) -> &mut Self {
        self.push(t_s, true, flags::PSH | flags::ACK, data, None);
        self
    }
    pub fn server_data(&mut self, t_s: f64, data: &[u8]) -> &mut Self {
        self.push(t_s, false, flags::PSH | flags::ACK, data, None);
        self
    }
    pub fn client_ack(&mut self, t_s: f64) -> &mut Self {
        self.push(t_s, true, flags::ACK, &[], None);
        self
    }
    pub fn server_ack(&mut self, t_s: f64) -> &mut Self {
        self.push(t_s, false, flags::ACK, &[], None);
        self
    }
    /// A keepalive probe from the client: one below its next sequence.
    pub fn client_keepalive(&mut self, t_s: f64) -> &mut Self {
        self.cseq = self.cseq.wrapping_sub(1);
        self.push(t_s, true, flags::ACK, &[], None);
        self.cseq = self.cseq.wrapping_add(1);
        self
    }
    /// An RST towards the server as if from the client, with this TTL.
    pub fn rst_to_server(&mut self, t_s: f64, ttl: u8) -> &mut Self {
        self.push(t_s, true, flags::RST, &[], Some(ttl));
        self
    }
    /// An RST from the server (an abort).
    pub fn server_rst(&mut self, t_s: f64) -> &mut Self {
        self.push(t_s, false, flags::RST | flags::ACK, &[], None);
        self
    }
}

/// Ethernet frames of packets, sorted by time.
pub fn frames(pkts: &[Pkt]) -> Vec<(u64, Vec<u8>)> {
    let mut v: Vec<(u64, Vec<u8>)> = pkts.iter().map(|p| (p.t_us, eth(&ip_tcp(p)))).collect();
    v.sort_by_key(|f| f.0);
    v
}
