//! Types shared across the kernel boundary.
//!
//! Everything here is `#[repr(C)]`, sized and padded explicitly (no implicit
//! padding, no `bool`), because the same bytes are written by the eBPF
//! programs and read by the daemon.
#![no_std]

pub mod event;
pub mod layout;

pub use event::*;
pub use layout::*;

/// Number of `u64` words in the watched-port bitmap (65536 ports / 64).
pub const PORT_BITMAP_WORDS: u32 = 1024;

/// Default ports watched when the user names none: kube-apiserver and HTTPS.
pub const DEFAULT_PORTS: [u16; 2] = [6443, 443];

/// Index into the `LOST` per-CPU array: ring-buffer reservations that failed.
pub const LOST_RINGBUF_FULL: u32 = 0;
/// Index into the `LOST` per-CPU array: watched events whose addresses could
/// not be read from the record (a layout that does not fit the kernel).
pub const LOST_LAYOUT: u32 = 1;
/// Number of slots in the `LOST` per-CPU array.
pub const LOST_SLOTS: u32 = 4;

/// Index into the `RUNTIME` config array: a non-zero value means the
/// `tcp_connect` kprobe is attached and reports connect attempts, so the
/// tracepoint path must not report them a second time.
pub const RUNTIME_KPROBE_CONNECT: u32 = 0;
/// Number of slots in the `RUNTIME` array.
pub const RUNTIME_SLOTS: u32 = 4;

/// Default number of bytes in the event ring buffer (must be a power of two
/// multiple of the page size).
pub const DEFAULT_RINGBUF_BYTES: u32 = 1 << 20;

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
