//! Types shared across the kernel boundary.
//!
//! Everything here is `#[repr(C)]`, sized and padded explicitly (no implicit
//! padding, no `bool`), because the same bytes are written by the eBPF
//! programs and read by the daemon.
#![cfg_attr(not(test), no_std)]

pub mod endpoint;
pub mod event;
pub mod flow;
pub mod goh2;
pub mod layout;
pub mod socks;

pub use endpoint::*;
pub use event::*;
pub use flow::*;
pub use goh2::*;
pub use layout::*;
pub use socks::*;

/// Number of `u64` words in the watched-port bitmap (65536 ports / 64).
pub const PORT_BITMAP_WORDS: u32 = 1024;

/// Default ports watched when the user names none: kube-apiserver and HTTPS.
pub const DEFAULT_PORTS: [u16; 2] = [6443, 443];

/// Index into the `LOST` per-CPU array: ring-buffer reservations that failed.
pub const LOST_RINGBUF_FULL: u32 = 0;
/// Index into the `LOST` per-CPU array: watched events whose addresses could
/// not be read from the record (a layout that does not fit the kernel).
pub const LOST_LAYOUT: u32 = 1;
/// Index into the `LOST` per-CPU array: watched sockets the full `SOCKS`
/// table could not take (not an event lost: their events go out without
/// what the table would have added, such as the handshake's start).
pub const LOST_SOCKS_FULL: u32 = 2;
/// `LOST[LOST_KIND_BASE + kind]`: ring-buffer reservations that failed, by
/// the kind of the event lost (so received + lost can be checked per kind).
pub const LOST_KIND_BASE: u32 = 4;
/// Number of slots in the `LOST` per-CPU array.
pub const LOST_SLOTS: u32 = LOST_KIND_BASE + event::kind::MAX as u32;

/// Slots of the `WIRE_STATS` per-CPU array: what the TC classifier could
/// not inspect, and flow-table bookkeeping.
pub mod wire_stat {
    /// Flows whose first payload was TLS: HTTP/2 frames not visible.
    pub const H2_TLS: u32 = 0;
    /// Flows first seen mid-stream: frame boundaries unknown.
    pub const H2_MID_STREAM: u32 = 1;
    /// A frame header spread over three or more packets (a header cut by
    /// one packet boundary is reassembled): frame tracking lost.
    pub const H2_SPLIT_HEADER: u32 = 2;
    /// A GOAWAY whose first 17 bytes spread over three or more packets:
    /// not decoded (frame tracking goes on).
    pub const H2_SPLIT_GOAWAY: u32 = 3;
    /// More frames in one packet than the bounded scan reads.
    pub const H2_FRAME_LIMIT: u32 = 4;
    /// A sequence gap: frame tracking lost.
    pub const H2_SEQ_GAP: u32 = 5;
    /// Packets on watched ports with impossible headers, ignored.
    pub const MALFORMED: u32 = 6;
    /// Flows added to the flow table.
    pub const FLOWS_INSERTED: u32 = 7;
    /// Flows removed from the flow table by the program (after an RST, or
    /// replaced by a new connection's SYN on the same four-tuple).
    pub const FLOWS_REMOVED: u32 = 8;
    /// Flows whose first payload was neither HTTP/2 nor TLS.
    pub const NOT_H2: u32 = 9;
    /// Packets the classifier looked at (watched ports only).
    pub const PACKETS: u32 = 10;
    /// An HTTP/1.1 `101 Switching Protocols` to h2c whose header block did
    /// not end in the server's first packet: HTTP/2 after it not followed.
    pub const H2C_UPGRADE_LOST: u32 = 11;
}
/// Number of slots in `WIRE_STATS`.
pub const WIRE_STAT_SLOTS: u32 = 12;

/// How many process names the programs watch (`--watch-comm`).
pub const WATCH_COMMS: usize = 4;

/// Default number of flows the wire observer tracks (LRU): 100 000 held
/// watches plus churn, with no open flow evicted (`cargo xtask bench scale`
/// lost 35 669 open flows of 100 000 at 65 536).
pub const DEFAULT_FLOW_TABLE: u32 = 131_072;

/// Index into the `RUNTIME` config array: a non-zero value means the
/// `tcp_connect` kprobe is attached and reports connect attempts, so the
/// tracepoint path must not report them a second time.
pub const RUNTIME_KPROBE_CONNECT: u32 = 0;
/// Index into the `RUNTIME` config array: a non-zero value means
/// `tcp:tcp_destroy_sock` is not attached, so the programs remove a
/// socket's `SOCKS` entry when it reaches CLOSE instead (the table is not
/// LRU: nothing else would ever free it).
pub const RUNTIME_NO_DESTROY: u32 = 1;
/// Index into the `RUNTIME` config array: a non-zero value turns endpoint
/// mode on (see [`endpoint`]): events on a watched port are kept only when
/// one end is in `ENDPOINTS`.
pub const RUNTIME_ENDPOINTS: u32 = 2;
/// Number of slots in the `RUNTIME` array.
pub const RUNTIME_SLOTS: u32 = 4;

/// Default number of bytes in the event ring buffer (must be a power of two
/// multiple of the page size). Sized for a rollout closing 100 000 watches
/// at once: each close is at least one record of 144 bytes plus the ring's
/// 8-byte header, 100 000 x 152 = 15.2 MB, so 16 MiB holds the whole burst
/// even if the reader read nothing meanwhile. Resets add up to two records
/// per connection (the tracepoint's and the wire's), which the reader must
/// drain during the burst; what does not fit is counted (`LOST`). The 1 MiB
/// it replaces (about 6 900 records) lost 554 in `cargo xtask bench scale`.
pub const DEFAULT_RINGBUF_BYTES: u32 = 16 << 20;

/// Linux TCP states (`include/net/tcp_states.h`); stable kernel ABI.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    /// Not a kernel state: the program could not learn the state.
    pub const UNKNOWN: u8 = 0;
}

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;
