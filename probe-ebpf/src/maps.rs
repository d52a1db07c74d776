//! Maps and load-time globals shared by every program.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use probe_common::{
    DEFAULT_RINGBUF_BYTES, DEFAULT_SOCK_TABLE, ENDPOINT_TABLE, EndpointKey, LOST_SLOTS, Layouts,
    PORT_BITMAP_WORDS, RUNTIME_SLOTS, SockLayout, TcpSockLayout,
};

/// Tracepoint record layouts, filled in by the loader from tracefs.
#[unsafe(no_mangle)]
pub static LAYOUTS: Global<Layouts> = Global::new(Layouts::ABSENT);

/// Non-zero when this kernel's `sock:inet_sock_set_state` record is laid out
/// as compiled in (`probe_common::set_state_direct`): the program then loads
/// its fields directly. A read-only global, so the verifier sees only the
/// path chosen.
#[unsafe(no_mangle)]
pub static SET_STATE_DIRECT: Global<u32> = Global::new(0);

/// `struct sock` field offsets, filled in by the loader from BTF (kprobes only).
#[unsafe(no_mangle)]
pub static SOCK_LAYOUT: Global<SockLayout> = Global::new(SockLayout::ABSENT);

/// `tcp_sock` offsets for the socket's view of a received RST, from BTF.
#[unsafe(no_mangle)]
pub static TCP_SOCK_LAYOUT: Global<TcpSockLayout> = Global::new(TcpSockLayout::ABSENT);

/// Every event goes here; the loader may resize it.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RINGBUF_BYTES, 0);

/// Events the programs could not deliver, per CPU, by cause.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Watched ports as a bitmap: bit `p & 63` of word `p >> 6`.
#[map]
pub static PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

/// Endpoint mode's watched (address, port) pairs (`RUNTIME_ENDPOINTS`);
/// the daemon keeps it in step with the names it resolves.
#[map]
pub static ENDPOINTS: HashMap<EndpointKey, u8> = HashMap::with_max_entries(ENDPOINT_TABLE, 0);

/// Where [`crate::event::endpoint_watched`] builds its lookup key.
#[map]
pub static ENDPOINT_SCRATCH: PerCpuArray<EndpointKey> = PerCpuArray::with_max_entries(1, 0);

/// Switches the daemon flips after attaching (see `RUNTIME_*` in probe-common).
#[map]
pub static RUNTIME: Array<u32> = Array::with_max_entries(RUNTIME_SLOTS, 0);

pub use probe_common::SockInfo;

pub mod sock_flags {
    pub const RST_SEEN: u8 = 1;
    pub const ACTIVE: u8 = 2;
    pub const PASSIVE: u8 = 4;
    pub const PENDING: u8 = 8;
    /// `SockInfo::close_bits`.
    pub const CLOSE_CHECKED: u8 = 1;
    pub const REQUEST_PENDING: u8 = 2;
    /// The server's response was still streaming (see `Flow::stream_from_ns`).
    pub const RESPONSE_STREAMING: u8 = 4;
}

/// Watched sockets, keyed by address; the loader sizes it
/// (`--socket-table`). A plain hash, not LRU: when full, an LRU would evict
/// the least recently used sockets, which at apiserver scale are the idle
/// watches whose reset or close is the evidence, and the eviction would be
/// invisible to the programs. A full hash refuses the new socket instead,
/// and the refusal is counted exactly (`LOST_SOCKS_FULL`). Entries leave at
/// `tcp:tcp_destroy_sock`, or at CLOSE where that is not attached
/// (`RUNTIME_NO_DESTROY`). Blind spot: a socket destroyed without either
/// (none known) would hold its entry until its address is reused.
#[map]
pub static SOCKS: HashMap<u64, SockInfo> = HashMap::with_max_entries(DEFAULT_SOCK_TABLE, 0);

/// Identifies a connection when a record carries no socket address
/// (`sock:inet_sk_error_report`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TupleKey {
    pub daddr: [u8; 16],
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
}

/// A connect that closed in SYN_SENT without an RST, waiting for the socket
/// error (reported just after the close) or the socket's destruction.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub sock: u64,
    pub start_ns: u64,
    pub retransmits: u32,
    pub _pad: u32,
    pub saddr: [u8; 16],
}

#[map]
pub static PENDING: LruHashMap<TupleKey, Pending> = LruHashMap::with_max_entries(4096, 0);

/// Socket errors reported while still in SYN_SENT (ICMP errors), consumed by
/// the following SYN_SENT -> CLOSE.
#[map]
pub static RECENT_ERR: LruHashMap<TupleKey, i32> = LruHashMap::with_max_entries(4096, 0);
