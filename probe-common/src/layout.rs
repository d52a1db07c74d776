//! Record layouts of the tracepoints, read by the daemon from tracefs
//! `format` files at start-up and handed to the programs as a global.
//!
//! Offsets are byte offsets into the tracepoint record. A field the running
//! kernel does not have is [`FIELD_ABSENT`].

/// Marks a field the running kernel's record does not carry.
pub const FIELD_ABSENT: u16 = u16::MAX;

/// How a record stores the connection's addresses and ports.
pub mod tuple_style {
    /// No address fields: the tracepoint cannot be used for per-port events.
    pub const NONE: u16 = 0;
    /// Separate `sport`, `dport`, `family`, `saddr[4]`, `daddr[4]`,
    /// `saddr_v6[16]`, `daddr_v6[16]` fields (most TCP tracepoints).
    pub const FIELDS: u16 = 1;
    /// `saddr`/`daddr` are `struct sockaddr_in6`-sized arrays holding a
    /// `sockaddr_in` or `sockaddr_in6` (`tcp:tcp_send_reset` since Linux 6.10).
    pub const SOCKADDR: u16 = 2;
}

/// Where a record keeps its addresses and ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TupleLayout {
    /// One of [`tuple_style`].
    pub style: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
}

impl TupleLayout {
    pub const ABSENT: TupleLayout = TupleLayout {
        style: tuple_style::NONE,
        sport: FIELD_ABSENT,
        dport: FIELD_ABSENT,
        family: FIELD_ABSENT,
        saddr: FIELD_ABSENT,
        daddr: FIELD_ABSENT,
        saddr_v6: FIELD_ABSENT,
        daddr_v6: FIELD_ABSENT,
    };
}

/// Offsets of the fields one tracepoint record has.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpLayout {
    /// Non-zero when the tracepoint exists and its layout was understood.
    pub present: u16,
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub state: u16,
    pub protocol: u16,
    pub reason: u16,
    pub error: u16,
    pub tuple: TupleLayout,
    /// The packet's address (`tcp:tcp_send_reset`), for RSTs with no socket.
    pub skbaddr: u16,
    pub _pad: [u16; 3],
}

impl TpLayout {
    pub const ABSENT: TpLayout = TpLayout {
        present: 0,
        skaddr: FIELD_ABSENT,
        oldstate: FIELD_ABSENT,
        newstate: FIELD_ABSENT,
        state: FIELD_ABSENT,
        protocol: FIELD_ABSENT,
        reason: FIELD_ABSENT,
        error: FIELD_ABSENT,
        tuple: TupleLayout::ABSENT,
        skbaddr: FIELD_ABSENT,
        _pad: [0; 3],
    };
}

/// The `sock:inet_sock_set_state` record layout compiled into the programs
/// (Linux 4.16 to at least 6.18): where the running kernel's record is laid
/// out the same, the program reads its fields with direct loads at these
/// constant offsets instead of one `bpf_probe_read_kernel` per field.
pub mod set_state_direct {
    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}

impl TpLayout {
    /// Whether this `sock:inet_sock_set_state` layout is the one compiled in
    /// ([`set_state_direct`]): the loader's choice between direct loads and
    /// reads at the offsets handed over (the `SET_STATE_DIRECT` global).
    pub fn is_set_state_direct(&self) -> bool {
        use set_state_direct as d;
        let at = |off: u16, want: usize| usize::from(off) == want;
        self.present != 0
            && at(self.skaddr, d::SKADDR)
            && at(self.oldstate, d::OLDSTATE)
            && at(self.newstate, d::NEWSTATE)
            && at(self.protocol, d::PROTOCOL)
            && self.tuple.style == tuple_style::FIELDS
            && at(self.tuple.sport, d::SPORT)
            && at(self.tuple.dport, d::DPORT)
            && at(self.tuple.family, d::FAMILY)
            && at(self.tuple.saddr, d::SADDR)
            && at(self.tuple.daddr, d::DADDR)
            && at(self.tuple.saddr_v6, d::SADDR_V6)
            && at(self.tuple.daddr_v6, d::DADDR_V6)
    }
}

/// Every tracepoint layout the programs use; the `LAYOUTS` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layouts {
    pub set_state: TpLayout,
    pub error_report: TpLayout,
    pub receive_reset: TpLayout,
    pub send_reset: TpLayout,
    pub retransmit: TpLayout,
    pub destroy_sock: TpLayout,
}

impl Layouts {
    pub const ABSENT: Layouts = Layouts {
        set_state: TpLayout::ABSENT,
        error_report: TpLayout::ABSENT,
        receive_reset: TpLayout::ABSENT,
        send_reset: TpLayout::ABSENT,
        retransmit: TpLayout::ABSENT,
        destroy_sock: TpLayout::ABSENT,
    };
}

/// Offsets inside `struct sock` (its leading `struct sock_common`), resolved
/// from the kernel's BTF; used by the kprobe programs, which get a raw
/// `struct sock *`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockLayout {
    /// Non-zero when every offset below was resolved.
    pub present: u16,
    pub family: u16,
    pub state: u16,
    /// `skc_num`: local port, host byte order.
    pub num: u16,
    /// `skc_dport`: remote port, network byte order.
    pub dport: u16,
    pub rcv_saddr: u16,
    pub daddr: u16,
    pub v6_rcv_saddr: u16,
    pub v6_daddr: u16,
    pub _pad: u16,
}

impl SockLayout {
    pub const ABSENT: SockLayout = SockLayout {
        present: 0,
        family: FIELD_ABSENT,
        state: FIELD_ABSENT,
        num: FIELD_ABSENT,
        dport: FIELD_ABSENT,
        rcv_saddr: FIELD_ABSENT,
        daddr: FIELD_ABSENT,
        v6_rcv_saddr: FIELD_ABSENT,
        v6_daddr: FIELD_ABSENT,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Layouts {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SockLayout {}

/// Offsets for reading a TCP socket's own view of an RST it received
/// (keepalive setting, last data sent and received), from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSockLayout {
    /// Non-zero when every offset below was resolved.
    pub present: u16,
    /// `sock.sk_flags`.
    pub sk_flags: u16,
    /// Bit number of `SOCK_KEEPOPEN` in `sk_flags`.
    pub keepopen_bit: u16,
    /// `tcp_sock.keepalive_time` (jiffies; 0 = the sysctl default).
    pub keepalive_time: u16,
    /// `tcp_sock.lsndtime`: last data sent (jiffies, 32 bits).
    pub lsndtime: u16,
    /// `tcp_sock.rcv_tstamp`: last ACK received (jiffies, 32 bits).
    pub rcv_tstamp: u16,
    /// `inet_connection_sock.icsk_ack.lrcvtime`: last data received (jiffies).
    pub lrcvtime: u16,
    /// `sock.sk_socket`: NULL for a connection the kernel completed but the
    /// application never `accept()`ed (still in the listener's queue).
    pub sk_socket: u16,
}

impl TcpSockLayout {
    pub const ABSENT: TcpSockLayout = TcpSockLayout {
        present: 0,
        sk_flags: FIELD_ABSENT,
        keepopen_bit: 0,
        keepalive_time: FIELD_ABSENT,
        lsndtime: FIELD_ABSENT,
        rcv_tstamp: FIELD_ABSENT,
        lrcvtime: FIELD_ABSENT,
        sk_socket: FIELD_ABSENT,
    };
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for TcpSockLayout {}

/// Offsets in the process tracepoints' records (`signal:signal_generate`,
/// `sched:sched_process_exit`, `sched:sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcLayout {
    /// Non-zero when `signal:signal_generate` was understood.
    pub signal_present: u16,
    pub sig: u16,
    pub sig_errno: u16,
    pub sig_comm: u16,
    pub sig_pid: u16,
    pub sig_result: u16,
    /// Non-zero when `sched:sched_process_exit` was understood.
    pub exit_present: u16,
    pub exit_pid: u16,
}

impl ProcLayout {
    pub const ABSENT: ProcLayout = ProcLayout {
        signal_present: 0,
        sig: FIELD_ABSENT,
        sig_errno: FIELD_ABSENT,
        sig_comm: FIELD_ABSENT,
        sig_pid: FIELD_ABSENT,
        sig_result: FIELD_ABSENT,
        exit_present: 0,
        exit_pid: FIELD_ABSENT,
    };
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for ProcLayout {}

/// Offsets for the network-namespace filter (`--netns`), from BTF: socket ->
/// `struct net`, packet -> device -> `struct net`, task -> nsproxy -> net,
/// and the namespace's inode number in `struct net`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsLayout {
    pub present: u16,
    pub skc_net: u16,
    pub net_inum: u16,
    pub task_nsproxy: u16,
    pub nsproxy_net_ns: u16,
    pub skb_dev: u16,
    pub dev_nd_net: u16,
    pub _pad: u16,
}

impl NetnsLayout {
    pub const ABSENT: NetnsLayout = NetnsLayout {
        present: 0,
        skc_net: FIELD_ABSENT,
        net_inum: FIELD_ABSENT,
        task_nsproxy: FIELD_ABSENT,
        nsproxy_net_ns: FIELD_ABSENT,
        skb_dev: FIELD_ABSENT,
        dev_nd_net: FIELD_ABSENT,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for NetnsLayout {}
