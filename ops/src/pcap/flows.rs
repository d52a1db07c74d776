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
//!   first SETTINGS; TLS, flows seen mid-stream, split frame headers and
//!   sequence gaps are counted as uninspected, never guessed.
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
        });
    }

    fn uninspected(&mut self, reason: &str) {
        *self
            .stats
            .uninspected
            .entry(reason.to_string())
            .or_default() += 1;
    }

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
            let answered = f.last_ns.is_some() && f.last_dir != dir;
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

    fn h2_scan(
        &mut self,
        t_ns: u64,
        wall: &str,
        f: &mut Flow,
        s: &Segment<'_>,
        dir: usize,
        from_server: bool,
    ) {
        let end = s.payload_len as usize;
        let mut off = 0usize;
        match f.h2[dir] {
            H2::Start => {
                if s.payload.starts_with(H2_PREFACE) {
                    off = H2_PREFACE.len();
                } else if s.payload.len() >= 2 && s.payload[0] == 0x16 && s.payload[1] == 0x03 {
                    f.h2[dir] = H2::Off;
                    self.uninspected("h2_tls");
                    return;
                } else if s.payload.len() < 9 && end >= 9 {
                    f.h2[dir] = H2::Off;
                    self.uninspected("h2_snaplen");
                    return;
                } else {
                    // A server's first frame is SETTINGS on stream 0.
                    let ty = s.payload.get(3).copied();
                    let stream = s
                        .payload
                        .get(5..9)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff);
                    if ty != Some(H2_SETTINGS) || stream != Some(0) {
                        f.h2[dir] = H2::Off;
                        self.uninspected("not_h2");
                        return;
                    }
                }
                f.h2[dir] = H2::Aligned;
                self.stats.h2_followed += 1;
            }
            H2::Aligned => {
                let next = f.h2_next[dir];
                if s.seq != next {
                    let seg_end = s.seq.wrapping_add(s.payload_len);
                    if seq_after(next, s.seq) && !seq_after(seg_end, next) {
                        // Entirely bytes already scanned or a frame body
                        // that continues from an earlier packet.
                        return;
                    }
                    if seq_after(next, s.seq) {
                        // The next frame header starts inside this packet.
                        off = next.wrapping_sub(s.seq) as usize;
                    } else {
                        f.h2[dir] = H2::Off;
                        self.uninspected("h2_seq_gap");
                        return;
                    }
                }
            }
            H2::Off => return,
        }
        while off < end {
            if off + 9 > end {
                f.h2[dir] = H2::Off;
                self.uninspected("h2_split_header");
                return;
            }
            let Some(h) = s.payload.get(off..off + 9) else {
                // The capture cut the packet before this frame header.
                f.h2[dir] = H2::Off;
                self.uninspected("h2_snaplen");
                return;
            };
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            if h[3] == H2_GOAWAY {
                match s.payload.get(off + 9..off + 17) {
                    Some(b) if off + 17 <= end => {
                        let last = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
                        let code = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
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
                                last_stream_id: last,
                                error_code: h2_error_name(code),
                            },
                        );
                    }
                    _ if off + 17 > end => self.uninspected("h2_split_goaway"),
                    _ => self.uninspected("h2_snaplen"),
                }
            }
            off += 9 + len;
        }
        f.h2_next[dir] = s.seq.wrapping_add(off as u32);
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
