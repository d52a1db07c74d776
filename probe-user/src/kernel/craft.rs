//! Crafted packets (Ethernet + IPv4/IPv6 + TCP) built with pnet: for the
//! classifier's BPF_PROG_TEST_RUN tests and its micro-benchmark.

use std::net::{Ipv4Addr, Ipv6Addr};

use pnet_packet::{
    MutablePacket,
    ethernet::{EtherTypes, MutableEthernetPacket},
    ip::IpNextHeaderProtocols,
    ipv4::{self, MutableIpv4Packet},
    ipv6::MutableIpv6Packet,
    tcp::MutableTcpPacket,
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);

/// One TCP segment's header values.
pub struct Seg<'a> {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub flags: u8,
    pub payload: &'a [u8],
    pub ttl: u8,
}

pub fn seg<'a>(sport: u16, dport: u16, seq: u32, flags: u8, payload: &'a [u8]) -> Seg<'a> {
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
    // The buffers below are sized for their headers, so `new` cannot fail.
    let Some(mut t) = MutableTcpPacket::new(&mut buf) else {
        return buf;
    };
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

/// An Ethernet + IPv4 frame from [`CLIENT`] to [`SERVER`]; `ihl_words` > 5
/// adds NOP options.
pub fn v4(s: &Seg<'_>, ihl_words: u8, doff_words: u8) -> Vec<u8> {
    v4_between(s, ihl_words, doff_words, CLIENT, SERVER)
}

/// As [`v4`], between the given addresses.
pub fn v4_between(
    s: &Seg<'_>,
    ihl_words: u8,
    doff_words: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Vec<u8> {
    let tcp = tcp_bytes(s, doff_words, &[]);
    let ip_hdr = usize::from(ihl_words.max(5)) * 4;
    let mut frame = vec![0u8; 14 + ip_hdr + tcp.len()];
    {
        let Some(mut eth) = MutableEthernetPacket::new(&mut frame) else {
            return frame;
        };
        eth.set_ethertype(EtherTypes::Ipv4);
    }
    {
        let Some(mut ip) = MutableIpv4Packet::new(&mut frame[14..]) else {
            return frame;
        };
        ip.set_version(4);
        ip.set_header_length(ihl_words);
        ip.set_total_length((ip_hdr + tcp.len()) as u16);
        ip.set_ttl(s.ttl);
        ip.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
        ip.set_source(src);
        ip.set_destination(dst);
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
pub fn v6(s: &Seg<'_>, exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let tcp = tcp_bytes(s, 5, &[]);
    let ext_len: usize = exts.iter().map(|(_, b)| b.len()).sum();
    let mut frame = vec![0u8; 14 + 40 + ext_len + tcp.len()];
    {
        let Some(mut eth) = MutableEthernetPacket::new(&mut frame) else {
            return frame;
        };
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let Some(mut ip) = MutableIpv6Packet::new(&mut frame[14..]) else {
            return frame;
        };
        ip.set_version(6);
        ip.set_payload_length((ext_len + tcp.len()) as u16);
        ip.set_hop_limit(s.ttl);
        let first = exts
            .first()
            .map(|(nh, _)| *nh)
            .unwrap_or(IpNextHeaderProtocols::Tcp.0);
        ip.set_next_header(pnet_packet::ip::IpNextHeaderProtocol(first));
        ip.set_source(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1));
        ip.set_destination(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2));
    }
    let mut off = 54;
    for (_, bytes) in exts {
        frame[off..off + bytes.len()].copy_from_slice(bytes);
        off += bytes.len();
    }
    frame[off..].copy_from_slice(&tcp);
    frame
}

#[cfg(test)]
/// An 8-byte extension header whose own next-header is `next`.
pub fn ext(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}
