//! Typed events: what the daemon decodes from the ring buffer and prints,
//! exports and (later) correlates. Decoding is pure and unit-tested.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use bytes::Buf;
use drainwatch_correlate::{Direction, Keepalive, ResetOrigin, Workload};
use probe_common::{AF_INET, AF_INET6, RawEvent, flags, kind, origin, sock_view, tcp_state};
use serde::Serialize;

/// What happened, one per kernel event kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ConnectAttempt,
    Established,
    Refused,
    TimedOut,
    ConnectError,
    ConnectAborted,
    Accepted,
    Closed,
    ListenOpen,
    ListenClose,
    ResetSent,
    ResetReceived,
    WireReset,
    Keepalive,
    Goaway,
    RefusedStream,
    Signal,
    ProcessExit,
    ProcessExec,
}

impl EventKind {
    pub fn from_raw(k: u8) -> Option<EventKind> {
        Some(match k {
            kind::CONNECT_ATTEMPT => EventKind::ConnectAttempt,
            kind::ESTABLISHED => EventKind::Established,
            kind::REFUSED => EventKind::Refused,
            kind::TIMED_OUT => EventKind::TimedOut,
            kind::CONNECT_ERROR => EventKind::ConnectError,
            kind::CONNECT_ABORTED => EventKind::ConnectAborted,
            kind::ACCEPTED => EventKind::Accepted,
            kind::CLOSED => EventKind::Closed,
            kind::LISTEN_OPEN => EventKind::ListenOpen,
            kind::LISTEN_CLOSE => EventKind::ListenClose,
            kind::RESET_SENT => EventKind::ResetSent,
            kind::RESET_RECEIVED => EventKind::ResetReceived,
            kind::WIRE_RESET => EventKind::WireReset,
            kind::KEEPALIVE => EventKind::Keepalive,
            kind::GOAWAY => EventKind::Goaway,
            kind::RST_STREAM => EventKind::RefusedStream,
            kind::SIGNAL => EventKind::Signal,
            kind::PROCESS_EXIT => EventKind::ProcessExit,
            kind::PROCESS_EXEC => EventKind::ProcessExec,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ConnectAttempt => "connect_attempt",
            EventKind::Established => "established",
            EventKind::Refused => "refused",
            EventKind::TimedOut => "timed_out",
            EventKind::ConnectError => "connect_error",
            EventKind::ConnectAborted => "connect_aborted",
            EventKind::Accepted => "accepted",
            EventKind::Closed => "closed",
            EventKind::ListenOpen => "listen_open",
            EventKind::ListenClose => "listen_close",
            EventKind::ResetSent => "reset_sent",
            EventKind::ResetReceived => "reset_received",
            EventKind::WireReset => "wire_reset",
            EventKind::Keepalive => "keepalive",
            EventKind::Goaway => "goaway",
            EventKind::RefusedStream => "refused_stream",
            EventKind::Signal => "signal",
            EventKind::ProcessExit => "process_exit",
            EventKind::ProcessExec => "process_exec",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str, so `{:<15}` aligns the human lines.
        f.pad(self.as_str())
    }
}

/// The name of a Linux TCP state.
pub fn state_name(s: u8) -> &'static str {
    match s {
        tcp_state::ESTABLISHED => "ESTABLISHED",
        tcp_state::SYN_SENT => "SYN_SENT",
        tcp_state::SYN_RECV => "SYN_RECV",
        tcp_state::FIN_WAIT1 => "FIN_WAIT1",
        tcp_state::FIN_WAIT2 => "FIN_WAIT2",
        tcp_state::TIME_WAIT => "TIME_WAIT",
        tcp_state::CLOSE => "CLOSE",
        tcp_state::CLOSE_WAIT => "CLOSE_WAIT",
        tcp_state::LAST_ACK => "LAST_ACK",
        tcp_state::LISTEN => "LISTEN",
        tcp_state::CLOSING => "CLOSING",
        tcp_state::NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// A decoded, validated kernel event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Wall-clock time, RFC 3339 with microseconds (formatted when printed).
    pub time: WallTime,
    /// Kernel boot-time clock, nanoseconds (for ordering and intervals).
    pub ts_boot_ns: u64,
    pub kind: EventKind,
    /// This host's end (absent for process events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<SocketAddr>,
    /// The TCP state after the transition, or the one an RST came in.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_state: Option<&'static str>,
    /// `old_state` as the kernel numbers it, for comparisons.
    #[serde(skip)]
    pub old_state_code: Option<u8>,
    /// Handshake time (established, accepted), lifetime (closed, resets) or
    /// time since the attempt (failed connects), in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_reason: Option<String>,
    pub retransmits: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// "active" (this host connected), "passive" (accepted) or absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<ConnDirection>,
    /// The RST was sent with no socket behind it (nothing listening).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_socket: bool,
    /// Closed, accepted connections this end closed first: whether the
    /// client was still owed an answer then (its data came last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_pending: Option<bool>,
    /// Closed, accepted connections this end closed first: its response
    /// was still streaming then (a watch: it kept sending for over a second
    /// after the client's last request). Only the wire observer tells.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub response_streaming: bool,
    /// Reset sent by a server socket (ESTABLISHED or CLOSE_WAIT) that the
    /// application never accepted: its listener closed with it still in the
    /// accept queue. Absent where the kernel's layout is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub never_accepted: Option<bool>,
    /// Reported by the kprobe path.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub kprobe: bool,
    /// An opaque per-socket id tying events of one connection together
    /// (the kernel address, keyed so it is not disclosed). Absent for wire
    /// events, which have no socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock_id: Option<SockId>,
    /// What the TC classifier saw, for wire events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wire: Option<Wire>,
    /// The receiving socket's own view of an RST (`reset_received`), read
    /// through BTF: it works where no TC classifier is attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<SocketView>,
    /// Signals to a watched process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalInfo>,
    /// HTTP/2 frames reported by a Go program's own code (uprobes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go: Option<GoFrame>,
    /// Connect attempts: the connecting process's cgroup v2 id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The process (and pod) on this node that opened the connection, from
    /// its connect attempt: set by the pipeline (`pipeline/owners.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<std::sync::Arc<Workload>>,
}

/// What a uprobe in a Go program's HTTP/2 code adds to a `goaway` or
/// `refused_stream` event (the id, code and direction are in `wire`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoFrame {
    /// "x/net" (golang.org/x/net/http2) or "net/http" (its bundled copy).
    pub http2: &'static str,
    /// "server" or "client" for frames received; absent for frames sent
    /// (the writer does not know its role; the ports tell).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// GOAWAY sent: "shutdown" (the process got a terminating signal or
    /// closed a watched listener shortly before), "while_serving" (it
    /// serves on: connection rebalancing, e.g. kube-apiserver's
    /// --goaway-chance) or "answer" (to the client's own GOAWAY on that
    /// connection). Set by the pipeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<&'static str>,
    /// GOAWAY: the debug data's length and its first bytes (escaped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<String>,
    /// The connection was not found behind the frame: the method address
    /// (link time) of the connection type the walk stopped at, for naming.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unattributed_type_pc: Option<String>,
}

fn go_frame(raw: &RawEvent, kind: EventKind) -> Option<GoFrame> {
    let f = raw.flags;
    if f & flags::FROM_UPROBE == 0 {
        return None;
    }
    let received = f & flags::INGRESS != 0;
    let debug_len = (kind == EventKind::Goaway).then_some(raw.duration_ns);
    let debug = debug_len.filter(|&n| n > 0).map(|n| {
        let mut bytes = Vec::with_capacity(probe_common::GO_DEBUG_BYTES);
        for w in &raw.aux[..3] {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        bytes.truncate(n.min(probe_common::GO_DEBUG_BYTES as u64) as usize);
        bytes.push(0);
        sanitize_comm(&bytes)
    });
    Some(GoFrame {
        http2: if f & flags::GO_BUNDLE != 0 {
            "net/http"
        } else {
            "x/net"
        },
        role: received.then_some(if f & flags::GO_SERVER != 0 {
            "server"
        } else {
            "client"
        }),
        sent: None,
        debug_len,
        debug,
        unattributed_type_pc: (f & flags::UNATTRIBUTED != 0).then(|| format!("{:#x}", raw.aux[3])),
    })
}

/// A signal generated for a watched process (`pid`/`comm` are the target).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalInfo {
    /// "SIGTERM", "SIGKILL", "SIGINT" or "SIGQUIT".
    pub name: &'static str,
    pub number: u32,
    /// Thread-group id of the sender.
    pub sender_pid: u32,
    /// The kernel's verdict (0 = delivered; see TRACE_SIGNAL_* in the kernel).
    pub result: i32,
}

pub fn signal_name(n: u32) -> &'static str {
    match n {
        2 => "SIGINT",
        3 => "SIGQUIT",
        9 => "SIGKILL",
        15 => "SIGTERM",
        _ => "OTHER",
    }
}

/// What the socket knew when an RST arrived.
///
/// The idle times are present only where the socket's timestamps mean
/// something: after the handshake. Before it (SYN_SENT, SYN_RECV) the
/// kernel has not set them, and `now - 0` in jiffies reads as months of
/// silence; a value longer than the connection's known age is dropped for
/// the same reason (a timestamp the socket never set).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SocketView {
    /// Serialized as e.g. "30s", "7200s (default)" or "none".
    #[serde(serialize_with = "as_text")]
    pub keepalive: SocketKeepalive,
    /// Seconds since the socket last received data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_rx_seconds: Option<f64>,
    /// Seconds since it last sent data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_tx_seconds: Option<f64>,
    /// Seconds since it last received an ACK.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_ack_seconds: Option<f64>,
}

/// A socket's keepalive setting when an RST arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SocketKeepalive {
    /// SO_KEEPALIVE off.
    Off,
    /// On, with the system's `net.ipv4.tcp_keepalive_time` (when readable).
    Default(Option<Duration>),
    /// On, with the socket's own TCP_KEEPIDLE.
    Time(Duration),
}

impl std::fmt::Display for SocketKeepalive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketKeepalive::Off => f.write_str("none"),
            SocketKeepalive::Default(Some(d)) => write!(f, "{} (default)", secs_text(*d)),
            SocketKeepalive::Default(None) => f.write_str("on (default time)"),
            SocketKeepalive::Time(d) => f.write_str(&secs_text(*d)),
        }
    }
}

/// Keepalive on a flow, as the wire observer saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FlowKeepalive {
    /// No probe seen on the flow.
    None,
    /// Probes seen, interval not measured yet.
    Seen,
    /// Probes seen this far apart.
    Interval(Duration),
}

impl std::fmt::Display for FlowKeepalive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlowKeepalive::None => f.write_str("none"),
            FlowKeepalive::Seen => f.write_str("seen"),
            FlowKeepalive::Interval(d) => f.write_str(&secs_text(*d)),
        }
    }
}

impl From<FlowKeepalive> for Keepalive {
    fn from(k: FlowKeepalive) -> Keepalive {
        match k {
            FlowKeepalive::None => Keepalive::None,
            FlowKeepalive::Seen => Keepalive::Seen,
            FlowKeepalive::Interval(d) => Keepalive::Interval(d.as_secs_f64()),
        }
    }
}

/// "30s", "0.25s": whole seconds without a fraction, else to the millisecond.
fn secs_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        let t = format!("{:.3}", d.as_secs_f64());
        format!("{}s", t.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Serializes a value by its `Display` text.
fn as_text<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn opt_as_text<T: std::fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// Whether a socket in TCP state `state` has set its last-received,
/// last-sent and last-ACK timestamps: only once the handshake completed.
fn idle_times_meaningful(state: u8) -> bool {
    matches!(
        state,
        tcp_state::ESTABLISHED
            | tcp_state::FIN_WAIT1
            | tcp_state::FIN_WAIT2
            | tcp_state::CLOSE_WAIT
            | tcp_state::CLOSING
            | tcp_state::LAST_ACK
            | tcp_state::TIME_WAIT
    )
}

fn socket_view(raw: &RawEvent, cx: &DecodeContext, age: Option<f64>) -> Option<SocketView> {
    if raw.aux32 & sock_view::PRESENT == 0 {
        return None;
    }
    let hz = f64::from(cx.hz?);
    let [rx, tx, ack, ka] = raw.aux;
    let keepalive = if raw.aux32 & sock_view::KEEPALIVE == 0 {
        SocketKeepalive::Off
    } else if ka == 0 {
        SocketKeepalive::Default(cx.default_keepalive_secs.map(Duration::from_secs))
    } else {
        // Jiffies: exact in milliseconds at every HZ the kernel allows.
        SocketKeepalive::Time(Duration::from_millis(
            ka.saturating_mul(1000) / u64::from(cx.hz?),
        ))
    };
    let meaningful = idle_times_meaningful(raw.state);
    // One jiffy of slack: the age is nanoseconds, the idle times jiffies.
    let idle = |j: u64| {
        let secs = j as f64 / hz;
        (meaningful && age.is_none_or(|a| secs <= a + 1.0 / hz)).then_some(secs)
    };
    Some(SocketView {
        keepalive,
        idle_rx_seconds: idle(rx),
        idle_tx_seconds: idle(tx),
        idle_ack_seconds: idle(ack),
    })
}

/// Which end opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnDirection {
    /// This host connected.
    Active,
    /// This host accepted it.
    Passive,
}

impl Event {
    /// Whether this end closed first: it left ESTABLISHED for FIN_WAIT.
    pub fn closed_first(&self) -> bool {
        matches!(
            self.old_state_code,
            Some(tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2)
        )
    }
}

/// Wire details of a `wire_reset`, `keepalive` or `goaway` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Wire {
    /// "received" (ingress) or "sent" (egress).
    pub direction: Direction,
    pub ttl: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_ttl: Option<u8>,
    /// Resets: "peer", "middlebox", "local" or "unknown".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<ResetOrigin>,
    /// Seconds since the flow's first packet seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_age_seconds: Option<f64>,
    /// Resets: seconds from the flow's previous packet to the RST. Not the
    /// idle time when the RST answers this host's own packet (then it is
    /// the RST's round trip): that is `silence_seconds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_previous_packet_seconds: Option<f64>,
    /// Resets: seconds from the flow's previous payload to the RST.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_previous_payload_seconds: Option<f64>,
    /// Resets: the silence the reset ended, i.e. the idle time. When the RST
    /// answers this host's own packet (a middlebox that forgot the flow
    /// resets the first packet after the silence), it is the gap before that
    /// packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silence_seconds: Option<f64>,
    /// Resets: the RST answered this host's own packet (so the silence is the
    /// gap before that packet).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub answered_packet: bool,
    /// Resets: keepalive on the flow, serialized as e.g. "30s", "seen" or "none".
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_as_text"
    )]
    pub keepalive: Option<FlowKeepalive>,
    /// Keepalive probes: seconds since the previous probe (absent for the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_interval_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_count: Option<u32>,
    /// GOAWAY: the last stream the sender will process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_stream_id: Option<u32>,
    /// GOAWAY and RST_STREAM: the error code's name (RFC 9113 7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// RST_STREAM: the stream refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u32>,
}

/// Names of HTTP/2 error codes; unknown codes map to "UNKNOWN" so labels stay bounded.
pub fn h2_error_name(code: u32) -> &'static str {
    match code {
        0 => "NO_ERROR",
        1 => "PROTOCOL_ERROR",
        2 => "INTERNAL_ERROR",
        3 => "FLOW_CONTROL_ERROR",
        4 => "SETTINGS_TIMEOUT",
        5 => "STREAM_CLOSED",
        6 => "FRAME_SIZE_ERROR",
        7 => "REFUSED_STREAM",
        8 => "CANCEL",
        9 => "COMPRESSION_ERROR",
        10 => "CONNECT_ERROR",
        11 => "ENHANCE_YOUR_CALM",
        12 => "INADEQUATE_SECURITY",
        13 => "HTTP_1_1_REQUIRED",
        _ => "UNKNOWN",
    }
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn wire_info(raw: &RawEvent, kind: EventKind) -> Option<Wire> {
    let f = raw.flags;
    let mut w = Wire {
        direction: if f & flags::INGRESS != 0 {
            Direction::Received
        } else {
            Direction::Sent
        },
        ttl: raw.ttl,
        peer_ttl: None,
        origin: None,
        flow_age_seconds: (f & flags::FLOW_FROM_SYN != 0).then(|| secs(raw.duration_ns)),
        since_previous_packet_seconds: None,
        since_previous_payload_seconds: None,
        silence_seconds: None,
        answered_packet: false,
        keepalive: None,
        keepalive_interval_seconds: None,
        keepalive_count: None,
        last_stream_id: None,
        error_code: None,
        stream_id: None,
    };
    match kind {
        EventKind::WireReset => {
            w.peer_ttl = (raw.peer_ttl != 0).then_some(raw.peer_ttl);
            w.origin = Some(match raw.origin {
                origin::PEER => ResetOrigin::Peer,
                origin::MIDDLEBOX => ResetOrigin::Middlebox,
                origin::LOCAL => ResetOrigin::Local,
                _ => ResetOrigin::Unknown,
            });
            let [idle, idle_payload, gap, ka] = raw.aux;
            w.since_previous_packet_seconds = Some(secs(idle));
            w.since_previous_payload_seconds = (idle_payload != 0).then(|| secs(idle_payload));
            // An RST answers this host's last packet only when it comes
            // within a round trip of it; one that comes later arrived on
            // its own, at a timer (an LB that resets both ends at its idle
            // timeout), and the silence it ended is `idle` itself.
            let answers_ours = f & flags::LAST_OPPOSITE != 0
                && f & flags::INGRESS != 0
                && idle < drainwatch_correlate::idle::ANSWER_WINDOW_NS;
            w.answered_packet = answers_ours;
            // Both come from the kernel's packet clock; a bogus record must
            // not overflow (found by fuzz/regressions/event).
            w.silence_seconds = Some(if answers_ours {
                secs(gap.saturating_add(idle))
            } else {
                secs(idle)
            });
            w.keepalive = Some(if ka != 0 {
                FlowKeepalive::Interval(Duration::from_nanos(ka))
            } else if f & flags::FLOW_KEEPALIVE != 0 {
                FlowKeepalive::Seen
            } else {
                FlowKeepalive::None
            });
        }
        EventKind::Keepalive => {
            w.keepalive_interval_seconds = (raw.aux[0] != 0).then(|| secs(raw.aux[0]));
            w.keepalive_count = Some(raw.aux32);
        }
        EventKind::Goaway => {
            w.flow_age_seconds = None;
            w.last_stream_id = Some(raw.aux32);
            w.error_code = Some(h2_error_name(raw.reason));
        }
        EventKind::RefusedStream => {
            w.flow_age_seconds = None;
            w.stream_id = Some(raw.aux32);
            w.error_code = Some(h2_error_name(raw.reason));
        }
        _ => return None,
    }
    Some(w)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {expected}", expected = RawEvent::SIZE)]
    Size(usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("TCP state {0} out of range")]
    State(u8),
}

/// Reads a ring-buffer record into a [`RawEvent`] (little-endian, the only
/// byte order the `bpfel` programs produce).
pub fn parse_raw(mut b: &[u8]) -> Result<RawEvent, DecodeError> {
    if b.len() != RawEvent::SIZE {
        return Err(DecodeError::Size(b.len()));
    }
    let mut ev = RawEvent::zeroed();
    ev.ts_ns = b.get_u64_le();
    ev.sock = b.get_u64_le();
    ev.duration_ns = b.get_u64_le();
    ev.kind = b.get_u8();
    ev.old_state = b.get_u8();
    ev.state = b.get_u8();
    ev._pad0 = b.get_u8();
    ev.family = b.get_u16_le();
    ev.sport = b.get_u16_le();
    ev.dport = b.get_u16_le();
    ev._pad1 = b.get_u16_le();
    ev.pid = b.get_u32_le();
    ev.reason = b.get_u32_le();
    ev.errno = b.get_i32_le();
    ev.retransmits = b.get_u32_le();
    ev.flags = b.get_u32_le();
    b.copy_to_slice(&mut ev.saddr);
    b.copy_to_slice(&mut ev.daddr);
    b.copy_to_slice(&mut ev.comm);
    ev.ttl = b.get_u8();
    ev.peer_ttl = b.get_u8();
    ev.origin = b.get_u8();
    ev._pad2 = b.get_u8();
    ev.aux32 = b.get_u32_le();
    for a in &mut ev.aux {
        *a = b.get_u64_le();
    }
    Ok(ev)
}

/// What decoding needs besides the record itself.
pub struct DecodeContext {
    /// Add to a boot-time timestamp to get Unix time, in ns.
    pub boot_to_unix_ns: i128,
    /// Key mixed into socket ids.
    pub sock_key: u64,
    /// `tcp_send_reset` reason numbers to names, as this kernel has them.
    pub reset_reasons: Vec<(u64, String)>,
    /// The kernel's tick rate, for jiffies in the socket view.
    pub hz: Option<u32>,
    /// `net.ipv4.tcp_keepalive_time`, for sockets using the default.
    pub default_keepalive_secs: Option<u64>,
}

impl DecodeContext {
    /// A context for tests: no clock offset, no key.
    #[cfg(test)]
    pub fn plain() -> DecodeContext {
        DecodeContext {
            boot_to_unix_ns: 0,
            sock_key: 0,
            reset_reasons: Vec::new(),
            hz: Some(250),
            default_keepalive_secs: Some(7200),
        }
    }
}

fn ip(family: u16, a: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
        // A dual-stack listener (`[::]:6443`, as kube-apiserver binds)
        // holds its IPv4 clients as IPv4-mapped IPv6 sockets: the same
        // connection is IPv4 on the wire, to the prober and in `--vip` or
        // `--lb-addr`, so it is given in one form, IPv4. Mapped addresses
        // never appear on a wire, so nothing real is merged by this.
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*a);
            Ok(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            })
        }
        f => Err(DecodeError::Family(f)),
    }
}

/// Kernel strings are untrusted: keep printable ASCII, escape the rest.
pub fn sanitize_comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let mut s = String::with_capacity(end);
    for &b in &raw[..end] {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Formats Unix nanoseconds as RFC 3339 UTC with microseconds (times
/// before the epoch, which boot-clock arithmetic cannot produce, clamp to it).
pub fn rfc3339(unix_ns: i128) -> String {
    drainwatch_correlate::rfc3339(u64::try_from(unix_ns).unwrap_or(0))
}

/// Unix nanoseconds, shown as RFC 3339: formatting waits until an event is
/// printed (`--output none` never pays for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallTime(pub i128);

impl fmt::Display for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&rfc3339(self.0))
    }
}

impl Serialize for WallTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl PartialEq<&str> for WallTime {
    fn eq(&self, other: &&str) -> bool {
        rfc3339(self.0) == *other
    }
}

/// A keyed socket id, shown as 16 hex digits when printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockId(pub u64);

impl fmt::Display for SockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for SockId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Turns a raw record into a typed event, rejecting what cannot be right.
pub fn decode(raw: &RawEvent, cx: &DecodeContext) -> Result<Event, DecodeError> {
    let kind = EventKind::from_raw(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
    if raw.state > tcp_state::NEW_SYN_RECV {
        return Err(DecodeError::State(raw.state));
    }
    if raw.old_state > tcp_state::NEW_SYN_RECV {
        return Err(DecodeError::State(raw.old_state));
    }
    let is_process = matches!(
        kind,
        EventKind::Signal | EventKind::ProcessExit | EventKind::ProcessExec
    );
    let from_uprobe = raw.flags & flags::FROM_UPROBE != 0;
    if kind == EventKind::RefusedStream && !from_uprobe {
        return Err(DecodeError::Kind(raw.kind));
    }
    let unattributed = from_uprobe && raw.flags & flags::UNATTRIBUTED != 0;
    let (local, remote) = if is_process || unattributed {
        (None, None)
    } else {
        (
            Some(SocketAddr::new(ip(raw.family, &raw.saddr)?, raw.sport)),
            Some(SocketAddr::new(ip(raw.family, &raw.daddr)?, raw.dport)),
        )
    };
    let f = raw.flags;
    let duration_known = f & flags::NO_START == 0 && raw.duration_ns != 0;
    let is_wire = matches!(
        kind,
        EventKind::WireReset | EventKind::Keepalive | EventKind::Goaway | EventKind::RefusedStream
    ) && !from_uprobe;
    let duration_seconds = match kind {
        EventKind::ConnectAttempt | EventKind::ListenOpen | EventKind::ListenClose => None,
        _ if is_wire || from_uprobe => None,
        _ if duration_known => Some(raw.duration_ns as f64 / 1e9),
        _ => None,
    };
    let in_process_context = is_process
        || from_uprobe
        || matches!(
            kind,
            EventKind::ConnectAttempt
                | EventKind::ListenOpen
                | EventKind::ListenClose
                | EventKind::ConnectAborted
        );
    let reset_reason = (f & flags::HAS_REASON != 0).then(|| {
        cx.reset_reasons
            .iter()
            .find(|(n, _)| *n == u64::from(raw.reason))
            .map(|(_, name)| name.clone())
            .unwrap_or_else(|| format!("REASON_{}", raw.reason))
    });
    let direction = if f & flags::ACTIVE != 0 {
        Some(ConnDirection::Active)
    } else if f & flags::PASSIVE != 0 {
        Some(ConnDirection::Passive)
    } else {
        None
    };
    let errno = matches!(
        kind,
        EventKind::Refused | EventKind::TimedOut | EventKind::ConnectError
    )
    .then_some(raw.errno);
    Ok(Event {
        time: WallTime(i128::from(raw.ts_ns) + cx.boot_to_unix_ns),
        ts_boot_ns: raw.ts_ns,
        kind,
        local,
        remote,
        state: state_name(raw.state),
        old_state: (raw.old_state != 0).then(|| state_name(raw.old_state)),
        old_state_code: (raw.old_state != 0).then_some(raw.old_state),
        duration_seconds,
        errno,
        reset_reason,
        retransmits: raw.retransmits,
        pid: (in_process_context && raw.pid != 0).then_some(raw.pid),
        comm: (in_process_context && raw.comm[0] != 0).then(|| sanitize_comm(&raw.comm)),
        direction,
        no_socket: f & flags::NO_SOCKET != 0,
        request_pending: (kind == EventKind::Closed && f & flags::CLOSE_CHECKED != 0)
            .then_some(f & flags::REQUEST_PENDING != 0),
        response_streaming: kind == EventKind::Closed
            && f & flags::CLOSE_CHECKED != 0
            && f & flags::RESPONSE_STREAMING != 0,
        // Orphaned sockets (closed by the application) have no `struct
        // socket` either, but they are past ESTABLISHED and CLOSE_WAIT.
        never_accepted: (kind == EventKind::ResetSent
            && f & flags::ACCEPT_CHECKED != 0
            && f & flags::ACTIVE == 0)
            .then_some(
                f & flags::NEVER_ACCEPTED != 0
                    && matches!(raw.state, tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT),
            ),
        kprobe: f & flags::FROM_KPROBE != 0,
        sock_id: (!is_wire && !is_process && !unattributed)
            .then(|| SockId(mix(raw.sock ^ cx.sock_key))),
        wire: wire_info(raw, kind),
        socket: (kind == EventKind::ResetReceived)
            .then(|| socket_view(raw, cx, duration_seconds))
            .flatten(),
        signal: (kind == EventKind::Signal).then(|| SignalInfo {
            name: signal_name(raw.reason),
            number: raw.reason,
            sender_pid: raw.aux32,
            result: raw.errno,
        }),
        go: go_frame(raw, kind),
        cgroup_id: (kind == EventKind::ConnectAttempt && raw.aux[0] != 0).then_some(raw.aux[0]),
        owner: None,
    })
}

/// splitmix64 finaliser: makes ids unlike kernel addresses.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

impl Event {
    /// The port that makes this connection watched: the remote port for
    /// connections this host opened, the local one otherwise (0 for process
    /// events).
    pub fn service_port(&self, watched: &[u16]) -> u16 {
        let (Some(local), Some(remote)) = (self.local, self.remote) else {
            return 0;
        };
        match self.kind {
            EventKind::ListenOpen | EventKind::ListenClose => local.port(),
            _ if watched.contains(&remote.port())
                && self.direction != Some(ConnDirection::Passive) =>
            {
                remote.port()
            }
            _ if watched.contains(&local.port()) => local.port(),
            _ => remote.port(),
        }
    }

    /// One human-readable line.
    pub fn human(&self) -> String {
        let mut s = format!("{} {:<15}", self.time, self.kind);
        if let (Some(l), Some(r)) = (self.local, self.remote) {
            s.push_str(&format!(" {l} -> {r}"));
        }
        if let Some(sig) = &self.signal {
            s.push_str(&format!(
                " {} to pid {} ({}) from pid {}",
                sig.name,
                self.pid.unwrap_or(0),
                self.comm.as_deref().unwrap_or("?"),
                sig.sender_pid
            ));
            return s;
        }
        if matches!(self.kind, EventKind::ProcessExit | EventKind::ProcessExec) {
            s.push_str(&format!(
                " pid {} ({})",
                self.pid.unwrap_or(0),
                self.comm.as_deref().unwrap_or("?")
            ));
            return s;
        }
        // Wire events come from packets, not from a socket's state machine.
        if self.wire.is_none() {
            s.push(' ');
            s.push_str(self.state);
        }
        if let Some(old) = self.old_state {
            s.push_str(&format!(" (from {old})"));
        }
        if let Some(d) = self.duration_seconds {
            let what = match self.kind {
                EventKind::Established | EventKind::Accepted => "handshake",
                EventKind::Closed | EventKind::ResetSent | EventKind::ResetReceived => "age",
                _ => "after",
            };
            s.push_str(&format!(" {what} {}", human_duration(d)));
        }
        if let Some(e) = self.errno {
            s.push_str(&format!(" errno {e}"));
        }
        if let Some(r) = &self.reset_reason {
            s.push_str(&format!(" reason {r}"));
        }
        if self.no_socket {
            s.push_str(" no-socket");
        }
        if self.response_streaming {
            s.push_str(" response-streaming (cut)");
        }
        if self.never_accepted == Some(true) {
            s.push_str(" never-accepted (accept queue)");
        }
        if self.retransmits > 0 {
            s.push_str(&format!(" syn-retransmits {}", self.retransmits));
        }
        if let (Some(pid), Some(comm)) = (self.pid, &self.comm) {
            s.push_str(&format!(" pid {pid} ({comm})"));
        }
        if let Some(o) = &self.owner {
            s.push_str(&format!(" [{}", o.name()));
            if let (Some(pid), Some(comm)) = (o.pid, &o.comm)
                && self.pid != Some(pid)
            {
                s.push_str(&format!(" pid {pid} ({comm})"));
            }
            s.push(']');
        }
        if let Some(v) = &self.socket {
            s.push_str(&format!(" keepalive {}", v.keepalive));
            if let Some(rx) = v.idle_rx_seconds {
                s.push_str(&format!(" last-rx {} ago", human_duration(rx)));
            }
        }
        if let Some(w) = &self.wire {
            s.push_str(&format!(" {}", w.direction.as_str()));
            if let Some(o) = w.origin {
                s.push_str(&format!(" from {} (ttl {}", o.as_str(), w.ttl));
                if let Some(p) = w.peer_ttl {
                    s.push_str(&format!(", peer ttl {p}"));
                }
                s.push(')');
            }
            if let Some(x) = w.silence_seconds {
                s.push_str(&format!(" after {} idle", human_duration(x)));
            }
            if let Some(k) = &w.keepalive {
                s.push_str(&format!(" keepalive {k}"));
            }
            if let Some(i) = w.keepalive_interval_seconds {
                s.push_str(&format!(" interval {}", human_duration(i)));
            }
            if let (Some(id), Some(code)) = (w.last_stream_id, w.error_code) {
                s.push_str(&format!(" last-stream-id {id} {code}"));
            }
            if let (Some(id), Some(code)) = (w.stream_id, w.error_code) {
                s.push_str(&format!(" stream {id} {code}"));
            }
        }
        if let Some(g) = &self.go {
            s.push_str(&format!(" (Go {}", g.http2));
            if let Some(r) = g.role {
                s.push_str(&format!(" {r}"));
            }
            if let Some(w) = g.sent {
                s.push_str(&format!(", {}", w.replace('_', " ")));
            }
            if let Some(d) = g.debug.as_deref().filter(|d| !d.is_empty()) {
                s.push_str(&format!(", debug {d:?}"));
            }
            if let Some(pc) = &g.unattributed_type_pc {
                s.push_str(&format!(", connection not found: type at {pc}"));
            }
            s.push(')');
        }
        s
    }
}

fn human_duration(secs: f64) -> String {
    if secs < 1e-3 {
        format!("{:.0}us", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.1}ms", secs * 1e3)
    } else {
        format!("{secs:.3}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: u8) -> RawEvent {
        let mut r = RawEvent::zeroed();
        r.ts_ns = 5_000_000_000;
        r.kind = kind;
        r.family = AF_INET;
        r.sport = 40000;
        r.dport = 6443;
        r.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        r.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        r
    }

    fn bytes(r: &RawEvent) -> Vec<u8> {
        // SAFETY: RawEvent is repr(C) with no padding; viewing it as bytes is sound.
        unsafe {
            std::slice::from_raw_parts((r as *const RawEvent).cast::<u8>(), RawEvent::SIZE).to_vec()
        }
    }

    #[test]
    fn roundtrip_through_bytes() {
        let mut r = raw(kind::REFUSED);
        r.errno = 111;
        r.retransmits = 2;
        r.duration_ns = 1_500_000;
        r.flags = flags::ACTIVE;
        r.comm[..4].copy_from_slice(b"curl");
        r.ttl = 63;
        r.peer_ttl = 64;
        r.origin = 2;
        r.aux32 = 0xdead_beef;
        r.aux = [1, 2, 3, u64::MAX];
        assert_eq!(parse_raw(&bytes(&r)), Ok(r));
    }

    #[test]
    fn refused_event_fields() {
        let mut r = raw(kind::REFUSED);
        r.errno = 111;
        r.old_state = tcp_state::SYN_SENT;
        r.state = tcp_state::CLOSE;
        r.duration_ns = 250_000;
        r.flags = flags::ACTIVE;
        let e = decode(&r, &DecodeContext::plain()).expect("decode");
        assert_eq!(e.kind, EventKind::Refused);
        assert_eq!(
            e.local.map(|a| a.to_string()).as_deref(),
            Some("198.18.0.1:40000")
        );
        assert_eq!(
            e.remote.map(|a| a.to_string()).as_deref(),
            Some("198.18.0.2:6443")
        );
        assert_eq!((e.state, e.old_state), ("CLOSE", Some("SYN_SENT")));
        assert_eq!(e.errno, Some(111));
        assert_eq!(e.duration_seconds, Some(0.00025));
        assert_eq!(e.direction, Some(ConnDirection::Active));
        assert_eq!(e.time, "1970-01-01T00:00:05.000000Z");
        assert_eq!(e.service_port(&[6443]), 6443);
        let j = serde_json::to_value(&e).expect("json");
        assert_eq!(j["kind"], "refused");
        assert_eq!(j["remote"], "198.18.0.2:6443");
        assert!(j.get("pid").is_none());
    }

    #[test]
    fn reset_reason_uses_kernel_names() {
        let mut r = raw(kind::RESET_SENT);
        r.flags = flags::HAS_REASON | flags::NO_SOCKET;
        r.reason = 1;
        let mut cx = DecodeContext::plain();
        cx.reset_reasons = vec![(0, "NOT_SPECIFIED".into()), (1, "NO_SOCKET".into())];
        let e = decode(&r, &cx).expect("decode");
        assert_eq!(e.reset_reason.as_deref(), Some("NO_SOCKET"));
        assert!(e.no_socket);
        r.reason = 99;
        let e = decode(&r, &cx).expect("decode");
        assert_eq!(e.reset_reason.as_deref(), Some("REASON_99"));
    }

    #[test]
    fn ipv6_and_task() {
        let mut r = raw(kind::LISTEN_OPEN);
        r.family = AF_INET6;
        r.saddr = Ipv6Addr::LOCALHOST.octets();
        r.daddr = [0; 16];
        r.pid = 42;
        r.comm[..6].copy_from_slice(b"ap\x1bi\0x");
        let e = decode(&r, &DecodeContext::plain()).expect("decode");
        assert_eq!(
            e.local.map(|a| a.to_string()).as_deref(),
            Some("[::1]:40000")
        );
        assert_eq!(e.pid, Some(42));
        assert_eq!(e.comm.as_deref(), Some("ap\\x1bi"));
        assert_eq!(e.service_port(&[6443]), 40000);
    }

    /// A dual-stack listener's IPv4 client is given as IPv4, the form the
    /// wire and the prober give the same connection.
    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let mut r = raw(kind::ACCEPTED);
        r.family = AF_INET6;
        r.saddr = Ipv4Addr::new(198, 18, 1, 11).to_ipv6_mapped().octets();
        r.daddr = Ipv4Addr::new(198, 18, 1, 2).to_ipv6_mapped().octets();
        let e = decode(&r, &DecodeContext::plain()).expect("decode");
        assert_eq!(
            e.local.map(|a| a.to_string()).as_deref(),
            Some("198.18.1.11:40000")
        );
        assert!(e.remote.is_some_and(|a| a.is_ipv4()));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(parse_raw(&[0u8; 10]), Err(DecodeError::Size(10)));
        let cx = DecodeContext::plain();
        assert_eq!(decode(&raw(0), &cx), Err(DecodeError::Kind(0)));
        assert_eq!(
            decode(&raw(kind::MAX), &cx),
            Err(DecodeError::Kind(kind::MAX))
        );
        let mut r = raw(kind::CLOSED);
        r.family = 7;
        assert_eq!(decode(&r, &cx), Err(DecodeError::Family(7)));
        let mut r = raw(kind::CLOSED);
        r.state = 200;
        assert_eq!(decode(&r, &cx), Err(DecodeError::State(200)));
    }

    #[test]
    fn no_start_means_unknown_duration() {
        let mut r = raw(kind::CLOSED);
        r.flags = flags::NO_START;
        r.duration_ns = 0;
        assert_eq!(
            decode(&r, &DecodeContext::plain())
                .expect("ok")
                .duration_seconds,
            None
        );
    }

    #[test]
    fn wire_reset_from_a_middlebox_after_silence() {
        let mut r = raw(kind::WIRE_RESET);
        r.flags = flags::INGRESS | flags::FLOW_FROM_SYN | flags::LAST_OPPOSITE;
        r.ttl = 64;
        r.peer_ttl = 63;
        r.origin = origin::MIDDLEBOX;
        r.duration_ns = 5_000_000_000;
        r.aux = [200_000, 3_200_000_000, 3_000_000_000, 0];
        let e = decode(&r, &DecodeContext::plain()).expect("decode");
        let w = e.wire.clone().expect("wire");
        assert_eq!(
            (w.direction, w.origin),
            (Direction::Received, Some(ResetOrigin::Middlebox))
        );
        assert_eq!(w.peer_ttl, Some(63));
        assert_eq!(
            w.silence_seconds,
            Some(3.0002),
            "gap before our packet + idle"
        );
        // The RST came 0.2 ms after our packet: that is not the idle time.
        assert_eq!(w.since_previous_packet_seconds, Some(0.0002));
        assert_eq!(w.since_previous_payload_seconds, Some(3.2));
        let json = serde_json::to_value(&w).expect("json");
        assert_eq!(json["silence_seconds"], 3.0002);
        assert_eq!(json["since_previous_packet_seconds"], 0.0002);
        assert!(json.get("idle_seconds").is_none(), "{json}");
        assert_eq!(w.keepalive, Some(FlowKeepalive::None));
        assert_eq!(json["keepalive"], "none");
        assert_eq!(e.sock_id, None);
        assert!(
            e.human().contains("from middlebox (ttl 64, peer ttl 63)"),
            "{}",
            e.human()
        );
    }

    #[test]
    fn wire_reset_with_absurd_gaps_saturates() {
        // fuzz/regressions/event/wire-reset-silence-overflow: gap + idle
        // overflowed u64 and panicked.
        let mut r = raw(kind::WIRE_RESET);
        r.flags = flags::INGRESS | flags::LAST_OPPOSITE;
        r.aux = [u64::MAX, 0, 2, 0];
        let w = decode(&r, &DecodeContext::plain())
            .expect("decode")
            .wire
            .expect("wire");
        assert_eq!(w.silence_seconds, Some(secs(u64::MAX)));
    }

    #[test]
    fn goaway_and_keepalive() {
        let mut r = raw(kind::GOAWAY);
        r.flags = flags::INGRESS;
        r.aux32 = 1;
        r.reason = 0;
        let w = decode(&r, &DecodeContext::plain())
            .expect("decode")
            .wire
            .expect("wire");
        assert_eq!(
            (w.last_stream_id, w.error_code),
            (Some(1), Some("NO_ERROR"))
        );
        r.reason = 99;
        let w = decode(&r, &DecodeContext::plain())
            .expect("decode")
            .wire
            .expect("wire");
        assert_eq!(w.error_code, Some("UNKNOWN"));
        let mut k = raw(kind::KEEPALIVE);
        k.aux = [1_000_000_000, 0, 0, 0];
        k.aux32 = 3;
        let w = decode(&k, &DecodeContext::plain())
            .expect("decode")
            .wire
            .expect("wire");
        assert_eq!(
            (w.keepalive_interval_seconds, w.keepalive_count),
            (Some(1.0), Some(3))
        );
        assert_eq!(w.direction, Direction::Sent);
    }

    /// Keepalive travels as a duration from decode to correlation: a
    /// sub-second interval is not rounded away (it was, as "{:.0}s" text
    /// parsed back: 1.5 s became 2 s, 0.4 s became 0 s).
    #[test]
    fn keepalive_keeps_sub_second_precision() {
        let mut r = raw(kind::WIRE_RESET);
        r.flags = flags::INGRESS;
        r.aux = [1_000_000_000, 0, 0, 1_500_000_000];
        let e = decode(&r, &DecodeContext::plain()).expect("decode");
        let w = e.wire.clone().expect("wire");
        let ka = w.keepalive.expect("keepalive");
        assert_eq!(ka, FlowKeepalive::Interval(Duration::from_millis(1500)));
        assert_eq!(Keepalive::from(ka), Keepalive::Interval(1.5));
        assert_eq!(serde_json::to_value(&w).expect("json")["keepalive"], "1.5s");
        r.aux[3] = 400_000_000;
        let w = decode(&r, &DecodeContext::plain())
            .expect("decode")
            .wire
            .expect("wire");
        assert_eq!(
            w.keepalive.map(Keepalive::from),
            Some(Keepalive::Interval(0.4))
        );
        // The socket's own setting, in jiffies: 375 at HZ 250 is 1.5 s.
        let mut r = raw(kind::RESET_RECEIVED);
        r.state = tcp_state::ESTABLISHED;
        r.aux32 = sock_view::PRESENT | sock_view::KEEPALIVE;
        r.aux = [0, 0, 0, 375];
        let v = decode(&r, &DecodeContext::plain())
            .expect("decode")
            .socket
            .expect("view");
        assert_eq!(
            v.keepalive,
            SocketKeepalive::Time(Duration::from_millis(1500))
        );
        assert_eq!(v.keepalive.to_string(), "1.5s");
    }

    #[test]
    fn socket_view_in_seconds() {
        let mut r = raw(kind::RESET_RECEIVED);
        r.state = tcp_state::ESTABLISHED;
        r.aux32 = sock_view::PRESENT | sock_view::KEEPALIVE;
        r.aux = [750, 250, 500, 0];
        let v = decode(&r, &DecodeContext::plain())
            .expect("decode")
            .socket
            .expect("view");
        assert_eq!(v.keepalive.to_string(), "7200s (default)");
        assert_eq!(
            (v.idle_rx_seconds, v.idle_tx_seconds, v.idle_ack_seconds),
            (Some(3.0), Some(1.0), Some(2.0))
        );
        r.aux = [0, 0, 0, 250];
        let v = decode(&r, &DecodeContext::plain())
            .expect("decode")
            .socket
            .expect("view");
        assert_eq!(v.keepalive.to_string(), "1s");
        r.aux32 = sock_view::PRESENT;
        let v = decode(&r, &DecodeContext::plain())
            .expect("decode")
            .socket
            .expect("view");
        assert_eq!(v.keepalive.to_string(), "none");
        r.aux32 = 0;
        assert_eq!(
            decode(&r, &DecodeContext::plain()).expect("decode").socket,
            None
        );
    }

    /// The idle times of a reset's socket view, per TCP state: present
    /// after the handshake, absent before it (the kernel has not set the
    /// timestamps; a refused connect's `now - 0` jiffies read as 17179859 s
    /// once), and absent when longer than the connection's known age.
    #[test]
    fn socket_view_idle_times_per_state() {
        // Jiffies since boot at 250 Hz after ~2.2 years: what `now - 0` gives.
        let unset = 17_179_859 * 250;
        let expect = [
            (tcp_state::SYN_SENT, false),
            (tcp_state::SYN_RECV, false),
            (tcp_state::NEW_SYN_RECV, false),
            (tcp_state::LISTEN, false),
            (tcp_state::CLOSE, false),
            (tcp_state::UNKNOWN, false),
            (tcp_state::ESTABLISHED, true),
            (tcp_state::FIN_WAIT1, true),
            (tcp_state::FIN_WAIT2, true),
            (tcp_state::CLOSE_WAIT, true),
            (tcp_state::CLOSING, true),
            (tcp_state::LAST_ACK, true),
            (tcp_state::TIME_WAIT, true),
        ];
        for (state, present) in expect {
            let mut r = raw(kind::RESET_RECEIVED);
            r.state = state;
            r.aux32 = sock_view::PRESENT | sock_view::KEEPALIVE;
            r.aux = [500, 250, 125, 2500];
            let e = decode(&r, &DecodeContext::plain()).expect("decode");
            let v = e.socket.as_ref().expect("view");
            // The keepalive setting is the socket's own, meaningful in every state.
            assert_eq!(v.keepalive.to_string(), "10s", "state {state}");
            let want = present.then_some((2.0, 1.0, 0.5));
            let got = v
                .idle_rx_seconds
                .zip(v.idle_tx_seconds)
                .zip(v.idle_ack_seconds)
                .map(|((a, b), c)| (a, b, c));
            assert_eq!(got, want, "state {}", state_name(state));
            let j = serde_json::to_value(&e).expect("json");
            assert_eq!(
                j["socket"].get("idle_rx_seconds").is_some(),
                present,
                "state {}",
                state_name(state)
            );
            assert_eq!(e.human().contains("last-rx"), present);
        }
        // SYN_SENT with the unset timestamp the kernel reports as a jiffies wrap.
        let mut r = raw(kind::RESET_RECEIVED);
        r.state = tcp_state::SYN_SENT;
        r.aux32 = sock_view::PRESENT;
        r.aux = [unset, unset, unset, 0];
        let v = decode(&r, &DecodeContext::plain())
            .expect("decode")
            .socket
            .expect("view");
        assert_eq!(
            (v.idle_rx_seconds, v.idle_tx_seconds, v.idle_ack_seconds),
            (None, None, None)
        );
        // ESTABLISHED, but a timestamp older than the connection: never set.
        r.state = tcp_state::ESTABLISHED;
        r.flags = flags::STATE_TRACKED;
        r.duration_ns = 1_000_000_000;
        r.aux = [unset, 125, 125, 0];
        let e = decode(&r, &DecodeContext::plain()).expect("decode");
        assert_eq!(e.duration_seconds, Some(1.0));
        let v = e.socket.expect("view");
        assert_eq!((v.idle_rx_seconds, v.idle_tx_seconds), (None, Some(0.5)));
    }

    /// A server socket reset with no `struct socket`: never accepted when
    /// it was still open (ESTABLISHED, CLOSE_WAIT); an orphan after the
    /// application's close otherwise; unknown without the layout.
    #[test]
    fn never_accepted_resets() {
        let mut r = raw(kind::RESET_SENT);
        r.flags = flags::ACCEPT_CHECKED | flags::NEVER_ACCEPTED | flags::PASSIVE;
        for (state, want) in [
            (tcp_state::ESTABLISHED, true),
            (tcp_state::CLOSE_WAIT, true),
            (tcp_state::FIN_WAIT1, false),
            (tcp_state::LAST_ACK, false),
        ] {
            r.state = state;
            let e = decode(&r, &DecodeContext::plain()).expect("decode");
            assert_eq!(e.never_accepted, Some(want), "{}", state_name(state));
            assert_eq!(e.human().contains("never-accepted"), want);
        }
        r.state = tcp_state::ESTABLISHED;
        r.flags = flags::ACCEPT_CHECKED | flags::PASSIVE;
        assert_eq!(
            decode(&r, &DecodeContext::plain())
                .expect("decode")
                .never_accepted,
            Some(false)
        );
        r.flags = flags::PASSIVE;
        assert_eq!(
            decode(&r, &DecodeContext::plain())
                .expect("decode")
                .never_accepted,
            None
        );
        // A client's own reset is never about an accept queue.
        r.flags = flags::ACCEPT_CHECKED | flags::NEVER_ACCEPTED | flags::ACTIVE;
        assert_eq!(
            decode(&r, &DecodeContext::plain())
                .expect("decode")
                .never_accepted,
            None
        );
    }

    #[test]
    fn signals_carry_no_addresses() {
        let mut r = raw(kind::SIGNAL);
        r.family = 0;
        r.reason = 15;
        r.pid = 321;
        r.aux32 = 1;
        r.comm[..14].copy_from_slice(b"kube-apiserver");
        let e = decode(&r, &DecodeContext::plain()).expect("decode");
        assert_eq!((e.local, e.remote, e.sock_id), (None, None, None));
        let sig = e.signal.as_ref().expect("signal");
        assert_eq!((sig.name, sig.sender_pid), ("SIGTERM", 1));
        assert_eq!(
            e.human().split_once(' ').map(|x| x.1.trim_start()),
            Some("signal          SIGTERM to pid 321 (kube-apiserver) from pid 1")
        );
        assert_eq!(e.service_port(&[6443]), 0);
        let j = serde_json::to_value(&e).expect("json");
        assert!(j.get("local").is_none());
        // A connection event without an address family is still rejected.
        let mut c = raw(kind::CLOSED);
        c.family = 0;
        assert_eq!(
            decode(&c, &DecodeContext::plain()),
            Err(DecodeError::Family(0))
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        // 2020-10-26T06:02:01Z, a curl timestamp from a reported incident.
        assert_eq!(
            rfc3339(1_603_692_121_000_000_000),
            "2020-10-26T06:02:01.000000Z"
        );
        assert_eq!(
            rfc3339(951_782_400_123_456_789),
            "2000-02-29T00:00:00.123456Z"
        );
    }
}
