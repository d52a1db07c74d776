//! The connection tracepoints' socket table (the `SOCKS` map) and what the
//! kernel's maps cost per entry, so the daemon can state its memory.

/// What the programs remember about a watched socket, keyed by its address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockInfo {
    /// When the handshake started (SYN_SENT or SYN_RECV), 0 if not seen.
    pub start_ns: u64,
    /// When the connection reached ESTABLISHED, 0 if not seen.
    pub est_ns: u64,
    pub retransmits: u32,
    pub state: u8,
    /// The state before CLOSE, kept so that an RST sent while closing is
    /// reported with the state the connection was really in.
    pub prev_state: u8,
    pub flags: u8,
    /// `CLOSE_CHECKED` / `REQUEST_PENDING` / `RESPONSE_STREAMING` (as bits
    /// 0/1/2), set when this end leaves ESTABLISHED for FIN_WAIT1 (it
    /// closed first).
    pub close_bits: u8,
}

/// Default number of sockets the connection tracepoints track at once
/// (`--socket-table`): 100 000 held watches plus 31 072 for churn.
pub const DEFAULT_SOCK_TABLE: u32 = 131_072;

/// Kernel memory of one entry of a preallocated hash or LRU map with
/// `key` and `value` bytes (both rounded up to 8): `struct htab_elem`'s
/// 48-byte header (list node, LRU node, hash) plus key and value, and the
/// entry's 16-byte bucket (the kernel allocates one bucket per entry,
/// rounded up to a power of two: exact at power-of-two sizes). Linux 6.x
/// on 64-bit; per-CPU spare elements (one per CPU) are left out.
pub const fn hash_entry_bytes(key: usize, value: usize) -> usize {
    const ELEM_HEADER: usize = 48;
    const BUCKET: usize = 16;
    ELEM_HEADER + key.div_ceil(8) * 8 + value.div_ceil(8) * 8 + BUCKET
}

/// Bytes per `SOCKS` entry (96).
pub const SOCK_ENTRY_BYTES: usize = hash_entry_bytes(
    core::mem::size_of::<u64>(),
    core::mem::size_of::<SockInfo>(),
);

/// Bytes per `FLOWS` entry (264).
pub const FLOW_ENTRY_BYTES: usize = hash_entry_bytes(
    core::mem::size_of::<crate::FlowKey>(),
    core::mem::size_of::<crate::Flow>(),
);

#[cfg(feature = "user")]
unsafe impl aya::Pod for SockInfo {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_sizes_match_the_measured_memlock() {
        // 16.5 MiB and 6.0 MiB of memlock at 65 536 entries (bench scale).
        assert_eq!(core::mem::size_of::<SockInfo>(), 24);
        assert_eq!(SOCK_ENTRY_BYTES, 96);
        assert_eq!(FLOW_ENTRY_BYTES, 264);
    }
}
