//! The one record the kernel programs write into the `EVENTS` ring buffer.

/// What a [`RawEvent`] reports. Stored as `u8` in [`RawEvent::kind`].
pub mod kind {
    /// A socket went CLOSE -> SYN_SENT on a watched port (active open started).
    /// The source port may be 0: Linux assigns it after this transition.
    /// `pid`/`comm` are the connecting process and `aux[0]` its cgroup v2
    /// id: the socket's owner, for naming its pod in later events.
    pub const CONNECT_ATTEMPT: u8 = 1;
    /// SYN_SENT -> ESTABLISHED; `duration_ns` is the handshake time.
    pub const ESTABLISHED: u8 = 2;
    /// SYN_SENT -> CLOSE after an RST from the peer; `duration_ns` since the attempt.
    pub const REFUSED: u8 = 3;
    /// SYN_SENT -> CLOSE with ETIMEDOUT (SYN retransmits exhausted).
    pub const TIMED_OUT: u8 = 4;
    /// SYN_SENT -> CLOSE with another socket error (ICMP unreachable, ...); see `errno`.
    pub const CONNECT_ERROR: u8 = 5;
    /// SYN_SENT -> CLOSE because the application closed the socket first.
    pub const CONNECT_ABORTED: u8 = 6;
    /// SYN_RECV -> ESTABLISHED on the server side of a watched port.
    pub const ACCEPTED: u8 = 7;
    /// A connection that was past the handshake reached CLOSE; `duration_ns`
    /// is its lifetime since ESTABLISHED, `old_state` the state it left.
    pub const CLOSED: u8 = 8;
    /// CLOSE -> LISTEN on a watched port; `pid`/`comm` name the process.
    pub const LISTEN_OPEN: u8 = 9;
    /// LISTEN -> CLOSE on a watched port.
    pub const LISTEN_CLOSE: u8 = 10;
    /// This host sent an RST (`tcp:tcp_send_reset`); `reason` where the kernel gives it.
    pub const RESET_SENT: u8 = 11;
    /// This host received an RST (`tcp:tcp_receive_reset`).
    pub const RESET_RECEIVED: u8 = 12;
    /// An RST seen on the wire by the TC classifier. `duration_ns` is the
    /// flow's age; `aux[0]` idle since the flow's previous packet, `aux[1]`
    /// idle since its previous payload (0 = none seen), `aux[2]` the silence
    /// before that previous packet, `aux[3]` the flow's last keepalive
    /// interval (0 = none seen); `ttl`/`peer_ttl`/`origin` say who sent it.
    pub const WIRE_RESET: u8 = 13;
    /// A TCP keepalive probe on the wire; `aux[0]` is the interval since the
    /// flow's previous probe in the same direction (0 = first), `aux32` the
    /// probe count, `duration_ns` the flow's age.
    pub const KEEPALIVE: u8 = 14;
    /// An HTTP/2 GOAWAY frame: seen in cleartext HTTP/2 on the wire, or
    /// (with [`flags::FROM_UPROBE`]) written or read by a Go program's
    /// HTTP/2 code, TLS or not. `aux32` is the last-stream-id, `reason` the
    /// error code. From a uprobe: [`flags::INGRESS`] when received, `pid`/
    /// `comm` the process, `duration_ns` the debug data's length and `aux[0..3]`
    /// its first 24 bytes.
    pub const GOAWAY: u8 = 15;
    /// A signal generated for a watched process (the apiserver, or whatever
    /// owns a watched listener): `reason` is the signal number, `pid`/`comm`
    /// the target, `aux32` the sender's tgid, `errno` the kernel's result
    /// code (0 = delivered).
    pub const SIGNAL: u8 = 16;
    /// A watched process exited (its thread-group leader): `pid`/`comm`.
    pub const PROCESS_EXIT: u8 = 17;
    /// A process with a watched name started (exec): `pid`/`comm`.
    pub const PROCESS_EXEC: u8 = 18;
    /// An HTTP/2 RST_STREAM REFUSED_STREAM written or read by a Go
    /// program (always [`flags::FROM_UPROBE`]): `aux32` the stream id,
    /// `reason` the error code, [`flags::INGRESS`] when received.
    pub const RST_STREAM: u8 = 19;
    /// One past the highest kind; for validation in the decoder.
    pub const MAX: u8 = 20;
}

/// Bits in [`RawEvent::flags`].
pub mod flags {
    /// The program saw no start for this socket (it predates the daemon or
    /// its entry was evicted): `duration_ns` is 0 and means "unknown".
    pub const NO_START: u32 = 1 << 0;
    /// Reported by a kprobe rather than a tracepoint.
    pub const FROM_KPROBE: u32 = 1 << 1;
    /// An RST sent without a socket (e.g. a SYN to a port nobody listens on).
    pub const NO_SOCKET: u32 = 1 << 2;
    /// The connection was opened actively (connect()) by this host.
    pub const ACTIVE: u32 = 1 << 3;
    /// The connection was accepted by a listener on this host.
    pub const PASSIVE: u32 = 1 << 4;
    /// The `reason` field is valid (the kernel's tracepoint carries one).
    pub const HAS_REASON: u32 = 1 << 5;
    /// Wire events: the packet was received (TC ingress); else sent (egress).
    pub const INGRESS: u32 = 1 << 7;
    /// Wire events: the flow was seen from its SYN, so its age is exact.
    pub const FLOW_FROM_SYN: u32 = 1 << 8;
    /// Wire reset: the flow's previous packet went the other way (so the RST
    /// answers it, and the silence that matters is `aux[2]`).
    pub const LAST_OPPOSITE: u32 = 1 << 9;
    /// Wire reset: keepalive probes were seen on the flow before it.
    pub const FLOW_KEEPALIVE: u32 = 1 << 10;
    /// The state was taken from the program's own socket table, not the kernel record.
    pub const STATE_TRACKED: u32 = 1 << 6;
    /// Closed: this (accepting) end closed first, and whether a request was
    /// outstanding then is known (see `REQUEST_PENDING`).
    pub const CLOSE_CHECKED: u32 = 1 << 11;
    /// Closed: when this end closed first, the last data on the connection
    /// had come from the client (`lrcvtime` after `lsndtime`): a request it
    /// was still owed an answer to.
    pub const REQUEST_PENDING: u32 = 1 << 12;
    /// Reset sent: the socket had no `struct socket` (`sk_socket` NULL),
    /// checked because the BTF offset is known. With [`NEVER_ACCEPTED`] set
    /// the application never `accept()`ed it.
    pub const ACCEPT_CHECKED: u32 = 1 << 13;
    /// Reset sent by a server socket in ESTABLISHED or CLOSE_WAIT that the
    /// application never accepted: a listener closed with it still queued.
    pub const NEVER_ACCEPTED: u32 = 1 << 14;
    /// Closed (with [`CLOSE_CHECKED`]): this end closed first while its
    /// response was still streaming (it kept sending for over a second
    /// after the peer's last request): a watch cut.
    pub const RESPONSE_STREAMING: u32 = 1 << 15;
    /// Reported by a uprobe in a Go program's HTTP/2 code.
    pub const FROM_UPROBE: u32 = 1 << 16;
    /// Uprobe events: the copy of HTTP/2 bundled in `net/http` (else
    /// `golang.org/x/net/http2`).
    pub const GO_BUNDLE: u32 = 1 << 17;
    /// Uprobe events: the connection's socket was not found (an unknown
    /// wrapper around it: `aux[3]` is the wrapper's method address, link
    /// time); the addresses are empty.
    pub const UNATTRIBUTED: u32 = 1 << 18;
    /// Uprobe events: received by the server side (`serverConn`), or by the
    /// client side (without this bit); for sent frames the role is unknown
    /// to the hook and this bit is clear.
    pub const GO_SERVER: u32 = 1 << 19;
}

/// One event, written by the kernel programs and decoded by the daemon.
///
/// Addresses are in network byte order; IPv4 uses the first 4 bytes of the
/// 16-byte arrays. Ports are in host byte order. `saddr`/`sport` is always
/// this host's end of the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_boot_ns()` at the event.
    pub ts_ns: u64,
    /// Kernel socket address, used only to tie events of one socket together.
    pub sock: u64,
    /// Handshake time, connection lifetime or time since the attempt, per kind.
    pub duration_ns: u64,
    /// One of [`kind`].
    pub kind: u8,
    /// TCP state before the transition (or 0).
    pub old_state: u8,
    /// TCP state after the transition, or the state an RST was sent/received in.
    pub state: u8,
    pub _pad0: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad1: u16,
    /// Thread-group id of the current task (meaningful for listener events).
    pub pid: u32,
    /// Kernel reset reason (`enum sk_rst_reason`) when [`flags::HAS_REASON`].
    pub reason: u32,
    /// Socket error (positive errno) for failed connects.
    pub errno: i32,
    /// SYN retransmits seen before the outcome.
    pub retransmits: u32,
    /// [`flags`] bits.
    pub flags: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Current task's command name, NUL-padded.
    pub comm: [u8; 16],
    /// Wire events: IP TTL / hop limit of this packet.
    pub ttl: u8,
    /// Wire events: the TTL the peer's packets normally arrive with (0 = unknown).
    pub peer_ttl: u8,
    /// Wire resets: one of [`origin`].
    pub origin: u8,
    pub _pad2: u8,
    /// Per-kind 32-bit value (see [`kind`]).
    pub aux32: u32,
    /// Per-kind values (see [`kind`]).
    pub aux: [u64; 4],
}

/// `aux32` bits of `RESET_RECEIVED`: the socket's own view, read through
/// BTF offsets. With [`sock_view::PRESENT`], `aux` holds jiffies since data
/// was received, since data was sent, since the last ACK, and the keepalive
/// time in jiffies (0 = the sysctl default, or keepalive off).
pub mod sock_view {
    pub const PRESENT: u32 = 1;
    pub const KEEPALIVE: u32 = 2;
}

/// Who sent an RST seen on the wire.
pub mod origin {
    /// No history to judge by.
    pub const UNKNOWN: u8 = 0;
    /// Its TTL matches the peer's packets: the peer sent it.
    pub const PEER: u8 = 1;
    /// Its TTL differs from the peer's packets: something on the path forged it.
    pub const MIDDLEBOX: u8 = 2;
    /// This host sent it (egress).
    pub const LOCAL: u8 = 3;
}

impl RawEvent {
    /// Size of the record in the ring buffer.
    pub const SIZE: usize = core::mem::size_of::<RawEvent>();

    /// An all-zero record, the start for every event the programs build.
    pub const fn zeroed() -> Self {
        RawEvent {
            ts_ns: 0,
            sock: 0,
            duration_ns: 0,
            kind: 0,
            old_state: 0,
            state: 0,
            _pad0: 0,
            family: 0,
            sport: 0,
            dport: 0,
            _pad1: 0,
            pid: 0,
            reason: 0,
            errno: 0,
            retransmits: 0,
            flags: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; 16],
            ttl: 0,
            peer_ttl: 0,
            origin: 0,
            _pad2: 0,
            aux32: 0,
            aux: [0; 4],
        }
    }
}

// The record has no implicit padding: 3 x u64, 4 x u8, 4 x u16, 5 x u32,
// 3 x 16 bytes, 4 x u8, u32, 4 x u64.
const _: () = assert!(RawEvent::SIZE == 24 + 4 + 8 + 20 + 48 + 4 + 4 + 32);

#[cfg(feature = "user")]
unsafe impl aya::Pod for RawEvent {}
