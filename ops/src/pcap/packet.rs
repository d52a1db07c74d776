//! Link, IP and TCP headers of one captured frame, decoded with pnet. Lengths
//! come from the IP header, not from what was captured, so sequence
//! arithmetic stays right when tcpdump cut the frame at its snap length
//! (the lab captures with `-s 256`).

use std::net::{IpAddr, SocketAddr};

use pcap_file::DataLink;
use pnet_packet::ethernet::{EtherType, EtherTypes, EthernetPacket};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::ipv6::Ipv6Packet;
use pnet_packet::sll::SLLPacket;
use pnet_packet::sll2::SLL2Packet;
use pnet_packet::tcp::TcpPacket;

/// TCP flag bits.
pub mod flags {
    pub use pnet_packet::tcp::TcpFlags::{ACK, FIN, PSH, RST, SYN};
}

/// A TCP segment as seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// TCP flags.
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// IPv4 identification (0 for IPv6): tells a copy of the same packet
    /// from a retransmission.
    pub ip_id: u16,
    /// Payload length on the wire (from the IP header).
    pub payload_len: u32,
    /// The captured part of the payload (shorter than `payload_len` when
    /// the capture cut the frame).
    pub payload: &'a [u8],
}

/// Why a frame yields no TCP segment. Counted, never an error: a capture
/// holds ARP, UDP and other traffic the tools do not look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    /// IP but not TCP.
    NotTcp,
    /// A non-first IP fragment, or a first fragment (reassembly is not
    /// attempted, as in the kernel classifier).
    Fragment,
    /// The headers themselves were cut by the snap length or are invalid.
    Short,
}

impl Skip {
    /// Label for the summary.
    pub fn label(self) -> &'static str {
        match self {
            Skip::NotIp => "not_ip",
            Skip::NotTcp => "not_tcp",
            Skip::Fragment => "ip_fragment",
            Skip::Short => "short_or_invalid_headers",
        }
    }
}

/// Whether the decoder handles a link type (checked before decoding so an
/// unsupported capture is an error, not a silent zero).
pub fn supported(link: DataLink) -> bool {
    matches!(
        link,
        DataLink::ETHERNET
            | DataLink::LINUX_SLL
            | DataLink::LINUX_SLL2
            | DataLink::RAW
            | DataLink::IPV4
            | DataLink::IPV6
            | DataLink::NULL
            | DataLink::LOOP
    )
}

/// Decodes one frame down to TCP.
pub fn decode(link: DataLink, data: &[u8]) -> Result<Segment<'_>, Skip> {
    let (ethertype, l3) = match link {
        DataLink::ETHERNET => {
            let eth = EthernetPacket::new(data).ok_or(Skip::Short)?;
            let mut et = eth.get_ethertype();
            let mut off = 14;
            // 802.1Q / QinQ tags: 4 bytes each, the inner ethertype at the end.
            while et == EtherTypes::Vlan || et == EtherTypes::QinQ || et == EtherType(0x88a8) {
                let b = data.get(off + 2..off + 4).ok_or(Skip::Short)?;
                et = EtherType(u16::from_be_bytes([b[0], b[1]]));
                off += 4;
            }
            (et, data.get(off..).ok_or(Skip::Short)?)
        }
        DataLink::LINUX_SLL => {
            let sll = SLLPacket::new(data).ok_or(Skip::Short)?;
            (sll.get_protocol(), data.get(16..).ok_or(Skip::Short)?)
        }
        DataLink::LINUX_SLL2 => {
            let sll = SLL2Packet::new(data).ok_or(Skip::Short)?;
            (sll.get_protocol_type(), data.get(20..).ok_or(Skip::Short)?)
        }
        DataLink::NULL | DataLink::LOOP => {
            // A 4-byte address family (host order for NULL, network order
            // for LOOP); the IP version nibble says the same and needs no
            // guess about the writer's byte order.
            (EtherType(0), data.get(4..).ok_or(Skip::Short)?)
        }
        _ => (EtherType(0), data),
    };
    let version = l3.first().map(|b| b >> 4);
    let is_v4 = ethertype == EtherTypes::Ipv4 || (ethertype == EtherType(0) && version == Some(4));
    let is_v6 = ethertype == EtherTypes::Ipv6 || (ethertype == EtherType(0) && version == Some(6));
    if is_v4 {
        decode_v4(l3)
    } else if is_v6 {
        decode_v6(l3)
    } else {
        Err(Skip::NotIp)
    }
}

fn decode_v4(l3: &[u8]) -> Result<Segment<'_>, Skip> {
    let ip = Ipv4Packet::new(l3).ok_or(Skip::Short)?;
    if ip.get_version() != 4 {
        return Err(Skip::Short);
    }
    let hl = usize::from(ip.get_header_length()) * 4;
    let total = usize::from(ip.get_total_length());
    if hl < 20 || total < hl {
        return Err(Skip::Short);
    }
    if ip.get_next_level_protocol() != IpNextHeaderProtocols::Tcp {
        return Err(Skip::NotTcp);
    }
    // More-fragments bit or a non-zero offset.
    if ip.get_flags() & 1 != 0 || ip.get_fragment_offset() != 0 {
        return Err(Skip::Fragment);
    }
    let l4 = l3.get(hl..).ok_or(Skip::Short)?;
    tcp(
        IpAddr::V4(ip.get_source()),
        IpAddr::V4(ip.get_destination()),
        (ip.get_ttl(), ip.get_identification()),
        l4,
        total - hl,
    )
}

fn decode_v6(l3: &[u8]) -> Result<Segment<'_>, Skip> {
    let ip = Ipv6Packet::new(l3).ok_or(Skip::Short)?;
    let mut next = ip.get_next_header().0;
    let mut off = 40;
    let mut remaining = usize::from(ip.get_payload_length());
    // Extension headers: hop-by-hop, routing, destination options are
    // skipped by their length; a fragment header means a fragment.
    loop {
        match next {
            6 => break,
            0 | 43 | 60 => {
                let h = l3.get(off..off + 2).ok_or(Skip::Short)?;
                let len = (usize::from(h[1]) + 1) * 8;
                next = h[0];
                off += len;
                remaining = remaining.checked_sub(len).ok_or(Skip::Short)?;
            }
            44 => return Err(Skip::Fragment),
            _ => return Err(Skip::NotTcp),
        }
    }
    let l4 = l3.get(off..).ok_or(Skip::Short)?;
    tcp(
        IpAddr::V6(ip.get_source()),
        IpAddr::V6(ip.get_destination()),
        (ip.get_hop_limit(), 0),
        l4,
        remaining,
    )
}

fn tcp(
    src: IpAddr,
    dst: IpAddr,
    (ttl, ip_id): (u8, u16),
    l4: &[u8],
    l4_len: usize,
) -> Result<Segment<'_>, Skip> {
    let t = TcpPacket::new(l4).ok_or(Skip::Short)?;
    let doff = usize::from(t.get_data_offset()) * 4;
    if doff < 20 || l4_len < doff {
        return Err(Skip::Short);
    }
    let payload = l4.get(doff..).unwrap_or(&[]);
    let payload_len = l4_len - doff;
    Ok(Segment {
        src: SocketAddr::new(src, t.get_source()),
        dst: SocketAddr::new(dst, t.get_destination()),
        ttl,
        flags: t.get_flags(),
        seq: t.get_sequence(),
        ack: t.get_acknowledgement(),
        ip_id,
        payload_len: u32::try_from(payload_len).map_err(|_| Skip::Short)?,
        // Ethernet pads short frames: never more than the IP length says.
        payload: payload.get(..payload_len).unwrap_or(payload),
    })
}
