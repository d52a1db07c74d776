//! The wire observer's flow table entries (the `FLOWS` map), shared so the
//! daemon can read the table's occupancy.

/// A connection seen from this host: local end first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub lport: u16,
    pub rport: u16,
    pub family: u16,
    pub _pad: u16,
}

/// What the classifier remembers about a flow. Index 0 = ingress (from the
/// peer), 1 = egress (from this host).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub first_ns: u64,
    pub last_ns: u64,
    /// Silence before the most recent packet.
    pub gap_ns: u64,
    pub last_payload_ns: u64,
    pub ka_last_ns: [u64; 2],
    pub ka_interval_ns: u64,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub next_seq: [u32; 2],
    pub h2_next: [u32; 2],
    pub ka_count: u32,
    /// TTL the peer's packets arrive with.
    pub peer_ttl: u8,
    /// 0 ingress, 1 egress: the direction of the most recent packet.
    pub last_dir: u8,
    pub h2: [u8; 2],
    pub seq_known: u8,
    pub from_syn: u8,
    /// Which way the most recent payload bigger than [`SMALL_PAYLOAD`] went:
    /// 0 none yet, 1 ingress, 2 egress. A server closing a connection whose
    /// last such payload came in still owed the client an answer; the TLS
    /// close_notify it sends as it closes, HTTP/2 PINGs and WINDOW_UPDATEs
    /// are smaller and do not count.
    pub big_dir: u8,
    pub _pad: [u8; 5],
}

/// Payloads up to this many bytes are control traffic for [`Flow::big_dir`]:
/// a TLS 1.3 close_notify is 24 bytes, TLS 1.2's 31; an HTTP/2 PING or
/// WINDOW_UPDATE inside TLS 1.3 is 39 or 35. A request is bigger.
pub const SMALL_PAYLOAD: u32 = 40;

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Flow {}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Flow>() == 120);
