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
    /// Directions a FIN went: bit 0 ingress, bit 1 egress.
    pub fin_dirs: u8,
    /// Bytes of the frame header at `h2_next` (with a GOAWAY's 8 payload
    /// bytes: up to 16) already seen in an earlier packet, 0 when none: a
    /// header cut by a segment boundary is finished by the next segment.
    pub h2_have: [u8; 2],
    pub _pad: [u8; 2],
    /// Those bytes, big-endian: the header's first 4 (length and type) ...
    pub h2_head: [u32; 2],
    /// ... and a GOAWAY's last-stream-id and error code (its bytes 9..17).
    pub h2_tail: [u64; 2],
    /// The first and the latest payload bigger than [`STREAM_PAYLOAD`] this
    /// host sent since the peer's last one bigger than [`SMALL_PAYLOAD`]
    /// (0 when none): a
    /// response that kept coming for longer than [`STREAM_SPREAD_NS`] after
    /// its request was streaming (a watch). A server that closes a
    /// connection in that state cuts the stream.
    pub stream_from_ns: u64,
    pub stream_last_ns: u64,
}

/// How long after its request a response must still be sending for the
/// connection to count as streaming (a watch) rather than a reply that is
/// done. Blind spots: a watch quiet since its first events, and a
/// multiplexed HTTP/2 connection whose client keeps sending requests, do not
/// look streaming; a slow response sent in bursts over more than this, then
/// an idle connection closed gracefully, does.
pub const STREAM_SPREAD_NS: u64 = 1_000_000_000;

/// The least payload a streamed response's segment carries to count for
/// [`STREAM_SPREAD_NS`]: a watch event is a JSON or protobuf object of a
/// few hundred bytes; a server's HTTP/2 PING, GOAWAY, SETTINGS or
/// WINDOW_UPDATE is well under this even with TLS 1.2's larger record
/// overhead (seen: 56 and 84 bytes), and such keepalive traffic must not
/// make an idle connection look streaming.
pub const STREAM_PAYLOAD: u32 = 128;

/// A flow closed both ways is dropped from the table once it has been
/// silent this long (the last ACK and any retransmission are past).
pub const FLOW_CLOSED_LINGER_NS: u64 = 5_000_000_000;

/// A flow closed one way only (the other side went away without a FIN, or
/// its FIN was not seen) is dropped after this much silence: longer than
/// Linux's FIN_WAIT2 and TIME_WAIT (60 s each).
pub const FLOW_HALF_CLOSED_IDLE_NS: u64 = 120_000_000_000;

impl Flow {
    /// A flow before its first packet: every field zero (HTTP/2 state
    /// unknown, no sequence number known).
    // SAFETY: every field is an integer or an array of integers, for which
    // all-zero bytes are a valid value.
    pub const ZERO: Flow = unsafe { core::mem::zeroed() };

    /// Whether userspace may delete this flow at `now_ns` (boot clock):
    /// it is closed and over. Open flows are never dropped, however long
    /// idle: an idle connection is exactly what an idle timeout resets,
    /// and its silence is the evidence. Without this, closed flows stay
    /// until the LRU evicts, and under connection churn it evicts the
    /// least recently used, i.e. the idle flows that matter most.
    pub fn is_done(&self, now_ns: u64) -> bool {
        let silent = now_ns.saturating_sub(self.last_ns);
        match self.fin_dirs {
            0 => false,
            3 => silent >= FLOW_CLOSED_LINGER_NS,
            _ => silent >= FLOW_HALF_CLOSED_IDLE_NS,
        }
    }
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
const _: () = assert!(core::mem::size_of::<Flow>() == 160);

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(fin_dirs: u8, last_ns: u64) -> Flow {
        Flow {
            first_ns: 1,
            last_ns,
            packets: [3, 3],
            bytes: [10, 10],
            peer_ttl: 64,
            seq_known: 3,
            from_syn: 1,
            fin_dirs,
            ..Flow::ZERO
        }
    }

    #[test]
    fn only_closed_flows_are_done() {
        const S: u64 = 1_000_000_000;
        let t = 1000 * S;
        // Open: never, however long silent.
        assert!(!flow(0, t).is_done(t + 86_400 * S));
        // Closed both ways: after 5 s of silence.
        assert!(!flow(3, t).is_done(t + 4 * S));
        assert!(flow(3, t).is_done(t + 5 * S));
        // One way only: after 120 s.
        for dirs in [1, 2] {
            assert!(!flow(dirs, t).is_done(t + 119 * S));
            assert!(flow(dirs, t).is_done(t + 120 * S));
        }
        // A clock that went backwards (a packet after the walk's time).
        assert!(!flow(3, t).is_done(t - S));
    }
}
