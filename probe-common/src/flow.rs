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
    pub _pad: [u8; 6],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Flow {}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Flow>() == 120);
