//! TCP flow tracking over a capture, deciding what the kernel side decides
//! (docs/architecture.md, "The wire observer (TC)", and probe-ebpf's
//! `wire.rs`), so a capture and the live daemon give the same observations:
//!
//! - flows are keyed (local, remote) from the capture point's view: `--local`
//!   addresses are this host; without them the watched-port (server) side is;
//! - an RST arriving with the TTL the peer's packets normally have is the
//!   peer's, another TTL means a middlebox forged it, no history: unknown;
//! - the silence an RST ended is the time since the flow's last packet, or,
//!   when the RST answers this side's own packet, that plus the gap before
//!   that packet (a middlebox that forgot the flow resets the first packet
//!   after the silence);
//! - a keepalive probe is an ACK without new data whose sequence number is
//!   one below what was already sent (RFC 9293 3.8.4);
//! - HTTP/2 frames are followed from the client preface or the server's
//!   first SETTINGS, or after an h2c upgrade's `101`; a segment resumes at
//!   the frame header inside it, a header cut by a segment boundary is
//!   finished by the next segment; TLS, flows seen mid-stream, headers
//!   spread over three segments, more frames per segment than the kernel
//!   reads and sequence gaps are counted as uninspected, never guessed.
//!
//! What the kernel's tracepoints would add on the capture host (refused,
//! accepted, resets sent and received, closes) is derived from the same
//! packets and tagged [`Source::Kernel`], so the engine attributes it to
//! `--instance` like the daemon's own events; wire-only facts are
//! [`Source::Wire`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use drainwatch_correlate::{Direction, Keepalive, Obs, Observation, ResetOrigin, Source};
use serde::Serialize;

use super::packet::{Segment, flags};

/// What decides which side of a flow is "this host".
#[derive(Debug, Clone, Default)]
pub struct FlowOptions {
    /// Watched (server) ports.
    pub ports: Vec<u16>,
    /// This host's addresses; empty: the server side is local.
    pub locals: Vec<IpAddr>,
}

/// Counts about what was and was not decoded.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FlowStats {
    /// TCP segments on watched ports.
    pub segments: u64,
    /// Second copies of one packet dropped (a router's `-i any` capture
    /// sees each forwarded packet twice; loopback too).
    pub duplicate_copies: u64,
    /// TCP segments on other ports (ignored).
    pub unwatched_segments: u64,
    /// Flows (a flow ends at an RST; a new SYN starts a new one).
    pub flows: u64,
    /// Flows whose first packet was a SYN or SYN-ACK.
    pub flows_from_syn: u64,
    /// Flows first seen mid-stream.
    pub flows_mid_stream: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// SYNs answered by RST.
    pub refused: u64,
    /// SYNs with no answer in the capture.
    pub unanswered_syns: u64,
    /// RSTs seen, by origin (`local` = sent by this host).
    pub resets: BTreeMap<String, u64>,
    /// Keepalive probes.
    pub keepalive_probes: u64,
    /// Flows on which keepalive probes were seen.
    pub flows_with_keepalive: u64,
    /// Orderly closes (FIN both ways).
    pub closes: u64,
    /// HTTP/2 directions followed frame by frame.
    pub h2_followed: u64,
    /// GOAWAY frames found.
    pub goaways: u64,
    /// Flow directions or frames that could not be inspected, by reason.
    pub uninspected: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2 {
    /// Waiting for the first payload of a flow seen from its SYN.
    Start,
    /// Following frame boundaries.
    Aligned,
    /// The connection's first payload was this direction's and not HTTP/2
    /// (an HTTP/1.1 request): an h2c upgrade may follow, the other
    /// direction's first payload decides.
    H1,
    /// Not followed (TLS, not HTTP/2, lost alignment, mid-stream).
    Off,
}

// Directions index per-direction arrays as the kernel does: 0 = ingress
// (remote to local), 1 = egress.
const IN: usize = 0;
const OUT: usize = 1;

#[derive(Debug, Clone)]
struct Flow {
    local: SocketAddr,
    client: SocketAddr,
    server: SocketAddr,
    last_ns: Option<u64>,
    gap_ns: u64,
    last_dir: usize,
    last_payload_ns: [Option<u64>; 2],
    packets: [u64; 2],
    next_seq: [Option<u32>; 2],
    ka_last_ns: [Option<u64>; 2],
    ka_interval_ns: u64,
    ka_count: u64,
    peer_ttl: Option<u8>,
    syn: bool,
    synack: bool,
    accepted: bool,
    fin: [bool; 2],
    fin_first: Option<usize>,
    pending_at_server_fin: Option<bool>,
    h2: [H2; 2],
    h2_next: [u32; 2],
    /// Bytes of the frame header at `h2_next` seen in an earlier segment.
    h2_have: [u8; 2],
    /// Those bytes: the header's first 4, a GOAWAY's bytes 9..17.
    h2_head: [u32; 2],
    h2_tail: [u64; 2],
}

impl Flow {
    fn dir_of(&self, ep: SocketAddr) -> usize {
        if ep == self.local { OUT } else { IN }
    }
}

/// Turns segments into observations.
pub struct Tracker {
    opts: FlowOptions,
    flows: HashMap<(SocketAddr, SocketAddr), Flow>,
    out: Vec<Observation>,
    /// Decoding statistics.
    pub stats: FlowStats,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_SETTINGS: u8 = 4;
const H2_GOAWAY: u8 = 7;

fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// HTTP/2 error code names (RFC 9113 section 7).
pub fn h2_error_name(code: u32) -> String {
    const NAMES: [&str; 14] = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    NAMES
        .get(code as usize)
        .map(|s| (*s).to_string())
        .unwrap_or_else(|| format!("0x{code:x}"))
}

/// Frames read per segment at most, as in the kernel (its loop is bounded).
pub const H2_MAX_FRAMES: usize = 16;

/// Why bytes of a frame header are not in this segment.
enum Cut {
    /// Past the segment's end.
    Segment,
    /// In the segment, but not in the capture (snap length).
    Snaplen,
}

/// `n` (at most 8) bytes big-endian at `at` of the segment's payload;
/// bytes before the payload (negative `at`) read as zero: they are the
/// ones kept from the earlier segment and masked off by the caller (the
/// kernel reads the TCP header there).
fn window_word(s: &Segment<'_>, at: i64, n: usize) -> Result<u64, Cut> {
    if at + n as i64 > i64::from(s.payload_len) {
        return Err(Cut::Segment);
    }
    let mut w = 0u64;
    for i in at..at + n as i64 {
        let b = if i < 0 {
            0
        } else {
            *s.payload.get(i as usize).ok_or(Cut::Snaplen)?
        };
        w = (w << 8) | u64::from(b);
    }
    Ok(w)
}

/// What a direction's first payload says about an h2c upgrade.
enum Upgrade {
    /// `101` to h2c: frames start this many bytes into the payload.
    Switched(usize),
    /// Another answer: the connection stays HTTP/1.
    Not,
    /// A 101 whose header block does not end within [`H2C_HEAD_MAX`] bytes
    /// of this segment (the kernel looks no further).
    Lost,
}

/// How far into the server's first segment the end of a 101 response's
/// header block is looked for, as in the kernel.
pub const H2C_HEAD_MAX: usize = 256;

fn h1_upgrade_end(s: &Segment<'_>) -> Upgrade {
    if !s.payload.starts_with(b"HTTP/1.1 101") {
        return Upgrade::Not;
    }
    let n = (s.payload_len as usize)
        .min(H2C_HEAD_MAX)
        .min(s.payload.len());
    if n < 16 {
        return Upgrade::Lost;
    }
    (12..n.saturating_sub(3))
        .find(|&i| &s.payload[i..i + 4] == b"\r\n\r\n")
        .map_or(Upgrade::Lost, |i| Upgrade::Switched(i + 4))
}

impl Tracker {
    /// A tracker with these options.
    pub fn new(opts: FlowOptions) -> Tracker {
        Tracker {
            opts,
            flows: HashMap::new(),
            out: Vec::new(),
            stats: FlowStats::default(),
        }
    }

    fn watched(&self, port: u16) -> bool {
        self.opts.ports.contains(&port)
    }

    /// (local, remote) of a segment, or `None` when neither port is watched.
    pub fn orient(&self, s: &Segment<'_>) -> Option<(SocketAddr, SocketAddr)> {
        let (sw, dw) = (self.watched(s.src.port()), self.watched(s.dst.port()));
        if !sw && !dw {
            return None;
        }
        if !self.opts.locals.is_empty() {
            let sl = self.opts.locals.contains(&s.src.ip());
            let dl = self.opts.locals.contains(&s.dst.ip());
            if sl && !dl {
                return Some((s.src, s.dst));
            }
            if dl && !sl {
                return Some((s.dst, s.src));
            }
        }
        // The server (watched-port) side is local; with both ports watched,
        // the lower port is taken as the server's.
        let src_is_server = sw && (!dw || s.src.port() < s.dst.port());
        Some(if src_is_server {
            (s.src, s.dst)
        } else {
            (s.dst, s.src)
        })
    }

    fn emit(&mut self, t_ns: u64, wall: &str, source: Source, kind: Obs) {
        let id = self.out.len() as u64 + 1;
        self.out.push(Observation {
            id,
            t_ns,
            wall: Some(wall.to_string()),
            instance: None,
            source,
            kind,
            who: None,
        });
    }

    fn uninspected(&mut self, reason: &str) {
        *self
            .stats
            .uninspected
            .entry(reason.to_string())
            .or_default() += 1;
    }

    // Long (about 190 lines) and not split yet: the per-segment state machine
    // (new SYN on a used key, handshake, payload, keepalive, FIN, RST) works
    // on one borrowed flow entry in a fixed order, as the classifier does.
    // The split owed is one method per step on the flow.
    /// Feeds one segment seen at `t_ns` (relative to the capture start)
    /// and `wall` (RFC 3339).
    pub fn push(&mut self, t_ns: u64, wall: &str, s: &Segment<'_>) {
        let Some((local, remote)) = self.orient(s) else {
            self.stats.unwatched_segments += 1;
            return;
        };
        self.stats.segments += 1;
        let key = (local, remote);
        let syn = s.flags & flags::SYN != 0;
        let ack = s.flags & flags::ACK != 0;
        let rst = s.flags & flags::RST != 0;
        let fin = s.flags & flags::FIN != 0;

        // A new SYN on a key whose flow got past its handshake is a new
        // connection reusing the port pair: finish the old one first.
        if syn
            && !ack
            && self
                .flows
                .get(&key)
                .is_some_and(|f| f.synack || f.accepted || f.packets.iter().sum::<u64>() > 1)
        {
            self.finish(key);
        }
        if !self.flows.contains_key(&key) {
            let (client, server) = if syn && !ack {
                (s.src, s.dst)
            } else if syn {
                (s.dst, s.src)
            } else {
                // Mid-stream: the watched port is the server's.
                let src_is_server = self.watched(s.src.port())
                    && (!self.watched(s.dst.port()) || s.src.port() < s.dst.port());
                if src_is_server {
                    (s.dst, s.src)
                } else {
                    (s.src, s.dst)
                }
            };
            self.stats.flows += 1;
            if syn {
                self.stats.flows_from_syn += 1;
            } else {
                self.stats.flows_mid_stream += 1;
                self.uninspected("h2_mid_stream");
            }
            let h2 = if syn { H2::Start } else { H2::Off };
            self.flows.insert(
                key,
                Flow {
                    local,
                    client,
                    server,
                    last_ns: None,
                    gap_ns: 0,
                    last_dir: IN,
                    last_payload_ns: [None; 2],
                    packets: [0; 2],
                    next_seq: [None; 2],
                    ka_last_ns: [None; 2],
                    ka_interval_ns: 0,
                    ka_count: 0,
                    peer_ttl: None,
                    syn: false,
                    synack: false,
                    accepted: false,
                    fin: [false; 2],
                    fin_first: None,
                    pending_at_server_fin: None,
                    h2: [h2; 2],
                    h2_next: [0; 2],
                    h2_have: [0; 2],
                    h2_head: [0; 2],
                    h2_tail: [0; 2],
                },
            );
        }
        let Some(mut f) = self.flows.remove(&key) else {
            return;
        };
        let dir = f.dir_of(s.src);
        let from_server = s.src == f.server;

        if rst {
            self.reset(t_ns, wall, &f, s, dir, from_server);
            // The kernel drops the flow at an RST: what follows is a new flow.
            return;
        }

        // Keepalive probe: one below what was already sent, no new data
        // (Windows adds one garbage byte).
        let is_keepalive = ack
            && !syn
            && !fin
            && s.payload_len <= 1
            && f.next_seq[dir].is_some_and(|n| s.seq == n.wrapping_sub(1));
        if is_keepalive {
            if let Some(prev) = f.ka_last_ns[dir] {
                f.ka_interval_ns = t_ns.saturating_sub(prev);
            }
            f.ka_last_ns[dir] = Some(t_ns);
            if f.ka_count == 0 {
                self.stats.flows_with_keepalive += 1;
            }
            f.ka_count += 1;
            self.stats.keepalive_probes += 1;
        } else {
            let advance = s.payload_len + u32::from(syn) + u32::from(fin);
            let end = s.seq.wrapping_add(advance);
            if f.next_seq[dir].is_none_or(|n| seq_after(end, n)) {
                f.next_seq[dir] = Some(end);
            }
        }

        if dir == IN {
            f.peer_ttl = Some(s.ttl);
        }
        if let Some(last) = f.last_ns {
            f.gap_ns = t_ns.saturating_sub(last);
        }
        f.last_ns = Some(t_ns);
        f.last_dir = dir;
        f.packets[dir] += 1;

        // Handshake.
        if syn && !ack {
            f.syn = true;
        } else if syn && from_server {
            f.synack = true;
        } else if !syn && !from_server && f.synack && !f.accepted {
            f.accepted = true;
            self.stats.handshakes += 1;
            self.emit(
                t_ns,
                wall,
                Source::Kernel,
                Obs::Accepted {
                    client: f.client,
                    server: f.server,
                    path: None,
                },
            );
        }

        if s.payload_len > 0 && !is_keepalive {
            f.last_payload_ns[dir] = Some(t_ns);
            self.h2_scan(t_ns, wall, &mut f, s, dir, from_server);
        } else if syn && f.h2[dir] == H2::Start {
            // The SYN occupies one sequence number.
            f.h2_next[dir] = s.seq.wrapping_add(1);
        }

        if fin && !f.fin[dir] {
            f.fin[dir] = true;
            if f.fin_first.is_none() {
                f.fin_first = Some(dir);
                if from_server {
                    // A request is outstanding when the client sent data
                    // after the server's last data.
                    let sd = f.dir_of(f.server);
                    let cd = 1 - sd;
                    f.pending_at_server_fin =
                        Some(match (f.last_payload_ns[cd], f.last_payload_ns[sd]) {
                            (Some(c), Some(sv)) => c > sv,
                            (Some(_), None) => true,
                            _ => false,
                        });
                }
            }
            if f.fin[IN] && f.fin[OUT] {
                self.stats.closes += 1;
                let by_server = f.fin_first == Some(f.dir_of(f.server));
                self.emit(
                    t_ns,
                    wall,
                    Source::Kernel,
                    Obs::ConnClosed {
                        client: f.client,
                        server: f.server,
                        by_server,
                        pending_request: if by_server {
                            f.pending_at_server_fin
                        } else {
                            Some(false)
                        },
                    },
                );
            }
        }
        self.flows.insert(key, f);
    }

    fn reset(
        &mut self,
        t_ns: u64,
        wall: &str,
        f: &Flow,
        s: &Segment<'_>,
        dir: usize,
        from_server: bool,
    ) {
        let ingress = dir == IN;
        let origin = if !ingress {
            ResetOrigin::Local
        } else {
            match f.peer_ttl {
                None => ResetOrigin::Unknown,
                Some(t) if t == s.ttl => ResetOrigin::Peer,
                Some(_) => ResetOrigin::Middlebox,
            }
        };
        let label = match origin {
            ResetOrigin::Local => "local",
            ResetOrigin::Peer => "peer",
            ResetOrigin::Middlebox => "middlebox",
            ResetOrigin::Unknown => "unknown",
        };
        *self.stats.resets.entry(label.to_string()).or_default() += 1;

        if ingress {
            let idle = f.last_ns.map_or(0, |l| t_ns.saturating_sub(l));
            // As the daemon decides it (`decode/event.rs`): an answer comes
            // within a round trip of this host's packet.
            let answered = f.last_ns.is_some()
                && f.last_dir != dir
                && idle < drainwatch_correlate::idle::ANSWER_WINDOW_NS;
            let silence = if answered { f.gap_ns + idle } else { idle };
            let keepalive = if f.ka_interval_ns != 0 {
                // Whole seconds, as the daemon reports it ("30s").
                Keepalive::Interval(secs(f.ka_interval_ns).round())
            } else if f.ka_count != 0 {
                Keepalive::Seen
            } else {
                Keepalive::None
            };
            self.emit(
                t_ns,
                wall,
                Source::Wire,
                Obs::WireReset {
                    client: Some(f.client),
                    server: Some(f.server),
                    origin,
                    silence_s: secs(silence),
                    answered_packet: Some(answered),
                    keepalive,
                },
            );
        }

        if !from_server {
            // A client abort: the engine ignores those, as the daemon does.
            return;
        }
        if f.syn && !f.synack && !f.accepted {
            self.stats.refused += 1;
            self.emit(
                t_ns,
                wall,
                Source::Kernel,
                Obs::Refused {
                    client: f.client,
                    server: f.server,
                    path: None,
                },
            );
            return;
        }
        let sd = f.dir_of(f.server);
        let saw_server = f.accepted || f.packets[sd] > 0;
        // After the server's own FIN an RST answers a late segment for a
        // closed socket, not an abort; a middlebox's forged RST is not the
        // server's either.
        if !saw_server
            || f.fin[sd]
            || matches!(origin, ResetOrigin::Middlebox | ResetOrigin::Unknown)
        {
            return;
        }
        let state = if f.fin[1 - sd] {
            "CLOSE_WAIT"
        } else {
            "ESTABLISHED"
        };
        if !ingress {
            // The server is this host. The wire cannot tell which abort
            // (close with unread data, SO_LINGER 0, memory); all are the
            // same cut to the engine, so report the generic one.
            self.emit(
                t_ns,
                wall,
                Source::Kernel,
                Obs::ResetSent {
                    client: f.client,
                    server: f.server,
                    reason: Some("TCP_ABORT_ON_CLOSE".into()),
                    state: Some(state.into()),
                },
            );
        } else {
            self.emit(
                t_ns,
                wall,
                Source::Kernel,
                Obs::ResetReceived {
                    client: f.client,
                    server: f.server,
                    state: Some(state.into()),
                },
            );
        }
    }

    /// Follows HTTP/2 frames in one direction, as the kernel's `h2_scan`
    /// does (probe-ebpf/src/wire.rs): `h2_next` is the next frame header's
    /// sequence number; a segment starting before it (a retransmission, or
    /// a frame body continuing) resumes at the header inside it, one
    /// starting after it (bytes the capture missed) ends inspection. A
    /// header cut by the segment's end (with a GOAWAY's ids: its first 17
    /// bytes) is finished by the next segment; one spread over three
    /// segments is counted. At most [`H2_MAX_FRAMES`] frames per segment
    /// (the one finished counts), as in the kernel.
    fn h2_scan(
        &mut self,
        t_ns: u64,
        wall: &str,
        f: &mut Flow,
        s: &Segment<'_>,
        dir: usize,
        from_server: bool,
    ) {
        let end = s.payload_len as i64;
        match f.h2[dir] {
            H2::Start => {
                if !self.h2_start(f, s, dir) {
                    return;
                }
            }
            H2::Aligned => {}
            H2::H1 | H2::Off => return,
        }
        let mut have = u32::from(f.h2_have[dir]);
        let pos = f.h2_next[dir].wrapping_add(have);
        if seq_after(s.seq, pos) {
            f.h2[dir] = H2::Off;
            self.uninspected("h2_seq_gap");
            return;
        }
        if !seq_after(s.seq.wrapping_add(s.payload_len), pos) {
            // Bytes already scanned, or a frame body continuing.
            return;
        }
        let mut off = i64::from(pos.wrapping_sub(s.seq));
        for _ in 0..H2_MAX_FRAMES {
            if off >= end {
                break;
            }
            // Before the payload when its first bytes are the kept ones.
            let win = off - i64::from(have);
            let w = match window_word(s, win, 4) {
                Ok(w) => w as u32,
                Err(Cut::Segment) if have == 0 => {
                    self.h2_keep(f, s, dir, off);
                    return;
                }
                Err(reason) => {
                    f.h2[dir] = H2::Off;
                    self.uninspected(match reason {
                        Cut::Segment => "h2_split_header",
                        Cut::Snaplen => "h2_snaplen",
                    });
                    return;
                }
            };
            let head = if have == 0 {
                w
            } else if have < 4 {
                let miss = 8 * (4 - have);
                (f.h2_head[dir] << miss) | (w & ((1u32 << miss) - 1))
            } else {
                f.h2_head[dir]
            };
            if head as u8 == H2_GOAWAY {
                match window_word(s, win + 9, 8) {
                    Ok(w) => {
                        let body = if have <= 9 {
                            w
                        } else {
                            let miss = 8 * (17 - have);
                            (f.h2_tail[dir] << miss) | (w & ((1u64 << miss) - 1))
                        };
                        let conn = (f.client, f.server);
                        self.goaway(t_ns, wall, from_server, body, conn);
                    }
                    Err(Cut::Segment) if have == 0 => {
                        self.h2_keep(f, s, dir, off);
                        return;
                    }
                    Err(Cut::Segment) => self.uninspected("h2_split_goaway"),
                    Err(Cut::Snaplen) => self.uninspected("h2_snaplen"),
                }
            }
            off = win + 9 + i64::from(head >> 8);
            have = 0;
        }
        if off < end {
            f.h2[dir] = H2::Off;
            self.uninspected("h2_frame_limit");
            return;
        }
        f.h2_have[dir] = 0;
        f.h2_next[dir] = s.seq.wrapping_add(off as u32);
    }

    /// A direction's first payload: the client preface, the server's
    /// SETTINGS, TLS, or HTTP/1.1, which becomes HTTP/2 after an h2c
    /// upgrade (RFC 7540 3.2: the client's request, the server's `101
    /// Switching Protocols` and then its frames; the client's preface
    /// follows the 101). `true` with `h2_next` at the first frame header
    /// when frames follow.
    fn h2_start(&mut self, f: &mut Flow, s: &Segment<'_>, dir: usize) -> bool {
        let other = 1 - dir;
        let end = s.payload_len as usize;
        let skip = if s.payload.starts_with(H2_PREFACE) {
            H2_PREFACE.len()
        } else if s.payload.len() >= 2 && s.payload[0] == 0x16 && s.payload[1] == 0x03 {
            f.h2[dir] = H2::Off;
            self.uninspected("h2_tls");
            return false;
        } else if f.h2[other] == H2::H1 {
            // The answer to an HTTP/1.1 request: HTTP/2 only after a 101.
            f.h2[other] = H2::Off;
            match h1_upgrade_end(s) {
                Upgrade::Switched(n) => {
                    f.h2[other] = H2::Start;
                    n
                }
                Upgrade::Not => {
                    // Both directions are HTTP/1.
                    self.uninspected("not_h2");
                    self.uninspected("not_h2");
                    f.h2[dir] = H2::Off;
                    return false;
                }
                Upgrade::Lost => {
                    self.uninspected("h2c_upgrade_lost");
                    f.h2[dir] = H2::Off;
                    return false;
                }
            }
        } else if s.payload.len() < 9 && end >= 9 {
            f.h2[dir] = H2::Off;
            self.uninspected("h2_snaplen");
            return false;
        } else {
            // A server's first frame is SETTINGS on stream 0.
            let ty = s.payload.get(3).copied();
            let stream = s
                .payload
                .get(5..9)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff);
            if ty != Some(H2_SETTINGS) || stream != Some(0) {
                if f.h2[dir] == H2::Start && f.h2[other] == H2::Start {
                    // The connection's first payload: HTTP/1.1 may upgrade.
                    f.h2[dir] = H2::H1;
                    return false;
                }
                f.h2[dir] = H2::Off;
                self.uninspected("not_h2");
                return false;
            }
            0
        };
        f.h2[dir] = H2::Aligned;
        f.h2_have[dir] = 0;
        f.h2_next[dir] = s.seq.wrapping_add(skip as u32);
        self.stats.h2_followed += 1;
        true
    }

    /// Keeps the start of a frame header cut by the segment's end at
    /// `off` (1 to 16 bytes) for the next segment to finish.
    fn h2_keep(&mut self, f: &mut Flow, s: &Segment<'_>, dir: usize, off: i64) {
        let end = i64::from(s.payload_len);
        let k = (end - off) as u32;
        let head = if k >= 4 {
            window_word(s, off, 4)
        } else {
            window_word(s, end - 4, 4).map(|w| w & ((1u64 << (8 * k)) - 1))
        };
        let tail = if k > 9 {
            window_word(s, end - 8, 8).map(|w| w & ((1u64 << (8 * (k - 9))) - 1))
        } else {
            Ok(0)
        };
        let (Ok(head), Ok(tail)) = (head, tail) else {
            f.h2[dir] = H2::Off;
            self.uninspected("h2_snaplen");
            return;
        };
        f.h2_head[dir] = head as u32;
        f.h2_tail[dir] = tail;
        f.h2_have[dir] = k as u8;
        f.h2_next[dir] = s.seq.wrapping_add(off as u32);
    }

    /// A GOAWAY whose bytes 9..17 (last-stream-id, error code) are `body`,
    /// on the connection `(client, server)`.
    fn goaway(
        &mut self,
        t_ns: u64,
        wall: &str,
        from_server: bool,
        body: u64,
        (client, server): (SocketAddr, SocketAddr),
    ) {
        self.stats.goaways += 1;
        self.emit(
            t_ns,
            wall,
            Source::Wire,
            Obs::Goaway {
                direction: if from_server {
                    Direction::Sent
                } else {
                    Direction::Received
                },
                last_stream_id: (body >> 32) as u32 & 0x7fff_ffff,
                error_code: h2_error_name(body as u32),
                client: Some(client),
                server: Some(server),
            },
        );
    }

    fn finish(&mut self, key: (SocketAddr, SocketAddr)) {
        if let Some(f) = self.flows.remove(&key)
            && f.syn
            && !f.synack
        {
            self.stats.unanswered_syns += 1;
        }
    }

    /// Ends the capture: flows still open are counted, observations returned.
    pub fn finish_all(mut self) -> (Vec<Observation>, FlowStats) {
        let keys: Vec<_> = self.flows.keys().copied().collect();
        for k in keys {
            self.finish(k);
        }
        (self.out, self.stats)
    }
}
