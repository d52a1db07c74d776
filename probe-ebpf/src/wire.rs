//! The wire observer: a TC classifier on ingress and egress that keeps a
//! per-flow table for watched ports and reports what only packets show:
//! who really sent an RST (by TTL), after how much silence, keepalive probes,
//! and HTTP/2 GOAWAY frames in cleartext HTTP/2.
//!
//! Every packet is passed on unchanged (TC_ACT_OK); unwatched ports leave
//! after reading the headers needed to find the ports.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use probe_common::{
    AF_INET, AF_INET6, Flow, FlowKey, WIRE_STAT_SLOTS, flags, kind, origin, wire_stat as ws,
};

use crate::event::{Tuple, emit, now, port_watched};

const TC_ACT_OK: i32 = 0;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_TCP: u8 = 6;

const TH_FIN: u8 = 0x01;
const TH_SYN: u8 = 0x02;
const TH_RST: u8 = 0x04;
const TH_ACK: u8 = 0x10;

/// HTTP/2 frame type GOAWAY (RFC 9113 6.8).
const H2_GOAWAY: u8 = 7;
const H2_SETTINGS: u8 = 4;
/// Frames read per packet at most; keeps the verifier's work bounded.
const H2_MAX_FRAMES: u32 = 16;
/// "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", the client connection preface.
const H2_PREFACE_LEN: u32 = 24;
const H2_PREFACE_HEAD: u32 = u32::from_be_bytes(*b"PRI ");

/// Per-direction HTTP/2 inspection state.
mod h2 {
    /// Flow not seen from its start: boundaries unknown.
    pub const UNKNOWN: u8 = 0;
    /// Seen from the SYN, no payload yet in this direction.
    pub const START: u8 = 1;
    /// Frame boundaries known: `h2_next` is the next frame header's seq.
    pub const ALIGNED: u8 = 2;
    /// Not inspectable any more (TLS, not HTTP/2, tracking lost).
    pub const OFF: u8 = 3;
    /// The connection's first payload was this direction's and not HTTP/2:
    /// an HTTP/1.1 request, which an h2c upgrade turns into HTTP/2. The
    /// other direction's first payload decides.
    pub const H1: u8 = 4;
}

#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(probe_common::DEFAULT_FLOW_TABLE, 0);

/// A new flow's value before its first packet: all zero (`h2::UNKNOWN`,
/// no sequence known); read-only data, copied by the map update.
static FRESH_FLOW: Flow = Flow::ZERO;
const _: () = assert!(h2::UNKNOWN == 0);

#[map]
pub static WIRE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(WIRE_STAT_SLOTS, 0);

/// Link-layer header length per ifindex (0 for L3 devices); 14 if absent.
#[map]
pub static IFACE_L2: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

#[inline(always)]
fn stat(slot: u32) {
    if let Some(p) = WIRE_STATS.get_ptr_mut(slot) {
        unsafe { *p += 1 };
    }
}

/// Headers of one TCP packet, from this host's point of view.
struct Pkt {
    tuple: Tuple,
    ttl: u8,
    tcp_flags: u8,
    seq: u32,
    /// Offset of the TCP payload in the packet, and its length.
    payload_off: u32,
    payload_len: u32,
}

#[inline(always)]
fn load<T>(ctx: &TcContext, off: u32) -> Option<T> {
    ctx.load::<T>(off as usize).ok()
}

/// Non-zero when some attached interface has no link-layer header, so the
/// per-interface table must be consulted (set by the loader).
#[unsafe(no_mangle)]
static HAS_L3_IFACES: Global<u32> = Global::new(0);

/// Bytes before the IP header on the packet's interface.
#[inline(always)]
fn l3_offset(ctx: &TcContext) -> u32 {
    if HAS_L3_IFACES.load() == 0 {
        return 14;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    match unsafe { IFACE_L2.get(ifindex) } {
        Some(v) => *v,
        None => 14,
    }
}

/// What the direct read of a packet's headers decided.
enum Fast {
    /// Not TCP, or neither port watched: nothing to do.
    Unwatched,
    /// A watched packet, every header field read from the linear area.
    Watched(Pkt),
    /// Look again with the helper-based parser: headers outside the linear
    /// area, IPv6 extension headers, or a malformed header (which that
    /// parser counts).
    Slow,
}

/// Reads a `T` at `at` (already bounds-checked against `data_end`).
#[inline(always)]
fn at<T: Copy>(at: usize) -> T {
    // SAFETY: every caller checked `at + size_of::<T>() <= data_end`; packet
    // data has no alignment guarantee, hence the unaligned read.
    unsafe { core::ptr::read_unaligned(at as *const T) }
}

/// The common case, with direct packet access and no helper call: the IP
/// and TCP headers in the skb's linear area, as they are for everything a
/// local socket sends or receives. Most traffic leaves after the protocol
/// and the ports; a watched packet is parsed whole here. Each helper call
/// (`bpf_skb_load_bytes`) this saves cost 20-40 ns on this project's
/// machine, and the old parser made ten of them per packet.
#[inline(always)]
fn fast_parse<const L3: usize>(ctx: &TcContext, proto: u32, ingress: bool) -> Fast {
    let data = ctx.data();
    let end = ctx.data_end();
    // Protocol and ports first: most traffic leaves there.
    let (l4, v6) = if proto == ETH_P_IP {
        if data + L3 + 20 > end {
            return Fast::Slow;
        }
        let ip = data + L3;
        let vihl: u8 = at(ip);
        if at::<u8>(ip + 9) != IPPROTO_TCP {
            return Fast::Unwatched;
        }
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            return Fast::Slow;
        }
        // Later fragments carry no TCP header.
        if u16::from_be(at::<u16>(ip + 6)) & 0x1fff != 0 {
            return Fast::Unwatched;
        }
        (L3 + ihl, false)
    } else if proto == ETH_P_IPV6 {
        if data + L3 + 40 > end {
            return Fast::Slow;
        }
        match at::<u8>(data + L3 + 6) {
            IPPROTO_TCP => (L3 + 40, true),
            // UDP and ICMPv6 never carry TCP.
            17 | 58 => return Fast::Unwatched,
            _ => return Fast::Slow,
        }
    } else {
        return Fast::Unwatched;
    };
    if data + l4 + 20 > end {
        return Fast::Slow;
    }
    let tcp = data + l4;
    let sport = u16::from_be(at::<u16>(tcp));
    let dport = u16::from_be(at::<u16>(tcp + 2));
    if !port_watched(sport) && !port_watched(dport) {
        return Fast::Unwatched;
    }
    // A watched packet: the rest of the IP header. (The bounds are checked
    // again: the verifier may have lost them across the lookups.)
    let mut t = Tuple::new(0, 0, 0);
    // The IP header's length field counts from `base`.
    let (base, len, ttl) = if v6 {
        if data + L3 + 40 > end {
            return Fast::Slow;
        }
        let ip = data + L3;
        t.family = AF_INET6;
        t.saddr = at(ip + 8);
        t.daddr = at(ip + 24);
        (
            L3 + 40,
            usize::from(u16::from_be(at::<u16>(ip + 4))),
            at::<u8>(ip + 7),
        )
    } else {
        if data + L3 + 20 > end {
            return Fast::Slow;
        }
        let ip = data + L3;
        t.family = AF_INET;
        t.saddr[..4].copy_from_slice(&at::<[u8; 4]>(ip + 12));
        t.daddr[..4].copy_from_slice(&at::<[u8; 4]>(ip + 16));
        (
            L3,
            usize::from(u16::from_be(at::<u16>(ip + 2))),
            at::<u8>(ip + 8),
        )
    };
    if data + l4 + 20 > end {
        return Fast::Slow;
    }
    let tcp = data + l4;
    // GSO packets may give a length of 0 or less than they carry: trust the
    // skb then, as the slow parser does.
    let skb_len = ctx.len() as usize;
    let ip_end = if len == 0 || base + len > skb_len {
        skb_len
    } else {
        base + len
    };
    let doff = usize::from(at::<u8>(tcp + 12) >> 4) * 4;
    if doff < 20 || l4 + doff > ip_end {
        return Fast::Slow;
    }
    let seq = u32::from_be(at::<u32>(tcp + 4));
    let tcp_flags: u8 = at(tcp + 13);
    match finish(t, ingress, (sport, dport), ttl, tcp_flags, seq) {
        Some(mut p) => {
            p.payload_off = (l4 + doff) as u32;
            p.payload_len = (ip_end - (l4 + doff)) as u32;
            Fast::Watched(p)
        }
        None => Fast::Unwatched,
    }
}

/// The local end first, then the endpoint filter; `None` when filtered out.
#[inline(always)]
fn finish(
    mut t: Tuple,
    ingress: bool,
    (sport, dport): (u16, u16),
    ttl: u8,
    tcp_flags: u8,
    seq: u32,
) -> Option<Pkt> {
    if ingress {
        core::mem::swap(&mut t.saddr, &mut t.daddr);
        t.sport = dport;
        t.dport = sport;
    } else {
        t.sport = sport;
        t.dport = dport;
    }
    if !crate::event::endpoint_watched(&t) {
        return None;
    }
    Some(Pkt {
        tuple: t,
        ttl,
        tcp_flags,
        seq,
        payload_off: 0,
        payload_len: 0,
    })
}

/// Parses L3/L4 headers; `None` for non-TCP, unwatched or malformed packets.
#[inline(always)]
fn parse(ctx: &TcContext, ingress: bool) -> Option<Pkt> {
    let l3 = l3_offset(ctx);
    // skb->protocol holds a big-endian 16-bit value.
    let proto = u32::from(u16::from_be(ctx.skb.protocol() as u16));
    let fast = match l3 {
        14 => fast_parse::<14>(ctx, proto, ingress),
        0 => fast_parse::<0>(ctx, proto, ingress),
        _ => Fast::Slow,
    };
    match fast {
        Fast::Unwatched => None,
        Fast::Watched(p) => Some(p),
        Fast::Slow => slow_parse(ctx, l3, proto, ingress),
    }
}

/// The parser for what [`fast_parse`] cannot read directly, one
/// `bpf_skb_load_bytes` per field.
#[inline(always)]
fn slow_parse(ctx: &TcContext, l3: u32, proto: u32, ingress: bool) -> Option<Pkt> {
    let skb_len = ctx.len();
    let mut t = Tuple::new(0, 0, 0);
    let (l4, end, ttl) = if proto == ETH_P_IP {
        let vihl: u8 = load(ctx, l3)?;
        let ihl = u32::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            stat(ws::MALFORMED);
            return None;
        }
        if load::<u8>(ctx, l3 + 9)? != IPPROTO_TCP {
            return None;
        }
        // Later fragments carry no TCP header.
        if u16::from_be(load::<u16>(ctx, l3 + 6)?) & 0x1fff != 0 {
            return None;
        }
        let tot = u32::from(u16::from_be(load::<u16>(ctx, l3 + 2)?));
        let ttl: u8 = load(ctx, l3 + 8)?;
        let s: [u8; 4] = load(ctx, l3 + 12)?;
        let d: [u8; 4] = load(ctx, l3 + 16)?;
        t.family = AF_INET;
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
        // GSO packets may say 0 or less than they carry: trust the skb then.
        let end = if tot == 0 || l3 + tot > skb_len {
            skb_len
        } else {
            l3 + tot
        };
        (l3 + ihl, end, ttl)
    } else if proto == ETH_P_IPV6 {
        let plen = u32::from(u16::from_be(load::<u16>(ctx, l3 + 4)?));
        let mut nh: u8 = load(ctx, l3 + 6)?;
        let ttl: u8 = load(ctx, l3 + 7)?;
        t.family = AF_INET6;
        t.saddr = load(ctx, l3 + 8)?;
        t.daddr = load(ctx, l3 + 24)?;
        let mut off = l3 + 40;
        // Walk a bounded number of extension headers.
        for _ in 0..4 {
            match nh {
                6 => break,
                0 | 43 | 60 => {
                    let next: u8 = load(ctx, off)?;
                    let len: u8 = load(ctx, off + 1)?;
                    nh = next;
                    off += (u32::from(len) + 1) * 8;
                }
                44 => {
                    let next: u8 = load(ctx, off)?;
                    let frag = u16::from_be(load::<u16>(ctx, off + 2)?);
                    if frag & 0xfff8 != 0 {
                        return None;
                    }
                    nh = next;
                    off += 8;
                }
                _ => return None,
            }
        }
        if nh != IPPROTO_TCP {
            return None;
        }
        let end = if plen == 0 || l3 + 40 + plen > skb_len {
            skb_len
        } else {
            l3 + 40 + plen
        };
        (off, end, ttl)
    } else {
        return None;
    };
    let sport = u16::from_be(load::<u16>(ctx, l4)?);
    let dport = u16::from_be(load::<u16>(ctx, l4 + 2)?);
    if !port_watched(sport) && !port_watched(dport) {
        return None;
    }
    let seq = u32::from_be(load::<u32>(ctx, l4 + 4)?);
    let doff_byte: u8 = load(ctx, l4 + 12)?;
    let tcp_flags: u8 = load(ctx, l4 + 13)?;
    let doff = u32::from(doff_byte >> 4) * 4;
    if doff < 20 || l4 + doff > end {
        stat(ws::MALFORMED);
        return None;
    }
    let mut p = finish(t, ingress, (sport, dport), ttl, tcp_flags, seq)?;
    p.payload_off = l4 + doff;
    p.payload_len = end - (l4 + doff);
    Some(p)
}

#[inline(always)]
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

pub fn classify(ctx: &TcContext, ingress: bool) -> i32 {
    let _ = observe(ctx, ingress);
    TC_ACT_OK
}

// `insert(key, FRESH_FLOW, ..)` would copy the value onto the stack: the
// reference to the read-only data is the point.
#[allow(clippy::needless_borrows_for_generic_args)]
fn observe(ctx: &TcContext, ingress: bool) -> Option<()> {
    let p = parse(ctx, ingress)?;
    stat(ws::PACKETS);
    let ts = now();
    let dir = usize::from(!ingress);
    let key = FlowKey {
        laddr: p.tuple.saddr,
        raddr: p.tuple.daddr,
        lport: p.tuple.sport,
        rport: p.tuple.dport,
        family: p.tuple.family,
        _pad: 0,
    };
    let syn = p.tcp_flags & TH_SYN != 0;
    let rst = p.tcp_flags & TH_RST != 0;
    let fin = p.tcp_flags & TH_FIN != 0;

    // A connection's first SYN starts a fresh flow, also over the entry of
    // an earlier connection on the same four-tuple (port reuse).
    let first_syn = syn && p.tcp_flags & TH_ACK == 0;
    let existing = FLOWS.get_ptr_mut(key);
    let existing = if first_syn && existing.is_some() {
        // Replaced: counted as removed, so evictions stay exact.
        stat(ws::FLOWS_REMOVED);
        None
    } else {
        existing
    };
    let flow = match existing {
        Some(f) => f,
        None => {
            // A new flow starts as a zeroed copy of `FRESH_FLOW`, then its
            // few non-zero fields are set in place: a 160-byte value built on
            // the stack compiled to four calls of the byte-loop `memset`.
            if FLOWS.insert(key, &FRESH_FLOW, 0).is_err() {
                return None;
            }
            let f = FLOWS.get_ptr_mut(key)?;
            // SAFETY: a value of this map, just inserted.
            unsafe {
                (*f).first_ns = ts;
                if syn {
                    (*f).h2 = [h2::START; 2];
                    (*f).from_syn = 1;
                }
            }
            stat(ws::FLOWS_INSERTED);
            if !syn {
                stat(ws::H2_MID_STREAM);
            }
            f
        }
    };
    let f = unsafe { &mut *flow };

    if rst {
        report_reset(&p, f, ts, ingress);
        let _ = FLOWS.remove(key);
        stat(ws::FLOWS_REMOVED);
        return Some(());
    }

    // Keepalive probe: no new data, sequence one below what was already
    // sent (RFC 9293 3.8.4); Windows adds one garbage byte.
    let seq_bit = 1u8 << dir;
    let is_keepalive = f.seq_known & seq_bit != 0
        && p.tcp_flags & TH_ACK != 0
        && !syn
        && !fin
        && p.payload_len <= 1
        && p.seq == f.next_seq[dir].wrapping_sub(1);
    if is_keepalive {
        let prev = f.ka_last_ns[dir];
        let interval = if prev != 0 {
            ts.saturating_sub(prev)
        } else {
            0
        };
        f.ka_last_ns[dir] = ts;
        if interval != 0 {
            f.ka_interval_ns = interval;
        }
        f.ka_count += 1;
        let count = f.ka_count;
        let age = ts.saturating_sub(f.first_ns);
        let from_syn = f.from_syn;
        emit(kind::KEEPALIVE, &p.tuple, |ev| {
            ev.duration_ns = age;
            ev.ttl = p.ttl;
            ev.aux32 = count;
            ev.aux[0] = interval;
            if ingress {
                ev.flags |= flags::INGRESS;
            }
            if from_syn != 0 {
                ev.flags |= flags::FLOW_FROM_SYN;
            }
        });
    } else {
        let advance = p.payload_len + u32::from(syn) + u32::from(fin);
        let end_seq = p.seq.wrapping_add(advance);
        if f.seq_known & seq_bit == 0 || seq_after(end_seq, f.next_seq[dir]) {
            f.next_seq[dir] = end_seq;
            f.seq_known |= seq_bit;
        }
    }

    if ingress {
        f.peer_ttl = p.ttl;
    }
    if f.last_ns != 0 {
        f.gap_ns = ts.saturating_sub(f.last_ns);
    }
    f.last_ns = ts;
    f.last_dir = dir as u8;
    f.packets[dir] += 1;
    f.bytes[dir] += u64::from(p.payload_len);
    if fin {
        f.fin_dirs |= seq_bit;
    }
    if p.payload_len > 0 && !is_keepalive {
        f.last_payload_ns = ts;
        if p.payload_len > probe_common::SMALL_PAYLOAD {
            f.big_dir = dir as u8 + 1;
            if ingress {
                f.stream_from_ns = 0;
                f.stream_last_ns = 0;
            } else if p.payload_len > probe_common::STREAM_PAYLOAD {
                if f.stream_from_ns == 0 {
                    f.stream_from_ns = ts;
                }
                f.stream_last_ns = ts;
            }
        }
        h2_scan(ctx, &p, f, dir);
    } else if syn && f.h2[dir] == h2::START {
        // The SYN itself occupies one sequence number.
        f.h2_next[dir] = p.seq.wrapping_add(1);
    }
    Some(())
}

fn report_reset(p: &Pkt, f: &Flow, ts: u64, ingress: bool) {
    let idle = if f.last_ns != 0 {
        ts.saturating_sub(f.last_ns)
    } else {
        0
    };
    let idle_payload = if f.last_payload_ns != 0 {
        ts.saturating_sub(f.last_payload_ns)
    } else {
        0
    };
    let dir = u8::from(!ingress);
    let o = if !ingress {
        origin::LOCAL
    } else if f.peer_ttl == 0 {
        origin::UNKNOWN
    } else if f.peer_ttl == p.ttl {
        origin::PEER
    } else {
        origin::MIDDLEBOX
    };
    emit(kind::WIRE_RESET, &p.tuple, |ev| {
        ev.duration_ns = ts.saturating_sub(f.first_ns);
        ev.ttl = p.ttl;
        ev.peer_ttl = f.peer_ttl;
        ev.origin = o;
        ev.aux32 = (f.packets[0] + f.packets[1]) as u32;
        ev.aux[0] = idle;
        ev.aux[1] = idle_payload;
        ev.aux[2] = f.gap_ns;
        ev.aux[3] = f.ka_interval_ns;
        if ingress {
            ev.flags |= flags::INGRESS;
        }
        if f.from_syn != 0 {
            ev.flags |= flags::FLOW_FROM_SYN;
        }
        if f.last_ns != 0 && f.last_dir != dir {
            ev.flags |= flags::LAST_OPPOSITE;
        }
        if f.ka_count != 0 {
            ev.flags |= flags::FLOW_KEEPALIVE;
        }
    });
}

/// Follows HTTP/2 frame boundaries in one direction and reports GOAWAY.
///
/// `h2_next` is the sequence number of the next frame header. A segment
/// may start anywhere: before it (a retransmission, or the body of a frame
/// that began in an earlier segment), so parsing resumes at the header
/// inside the segment; or after it (bytes the capture missed), which ends
/// inspection. A header (with a GOAWAY's ids: its first 17 bytes) cut by
/// the segment's end is kept in the flow and finished by the next segment;
/// one spread over three segments is counted, not guessed.
/// `ops/src/pcap/flows.rs` follows the same rules on captures.
fn h2_scan(ctx: &TcContext, p: &Pkt, f: &mut Flow, dir: usize) {
    let end = p.payload_off + p.payload_len;
    let seg_end = p.seq.wrapping_add(p.payload_len);
    match f.h2[dir] {
        h2::START => {
            if !h2_start(ctx, p, f, dir) {
                return;
            }
        }
        h2::ALIGNED => {}
        _ => return,
    }
    // Bytes of the first header that came in an earlier segment.
    let mut have = u32::from(f.h2_have[dir]);
    // The next byte still wanted: a header's start, or its rest.
    let pos = f.h2_next[dir].wrapping_add(have);
    if seq_after(p.seq, pos) {
        f.h2[dir] = h2::OFF;
        stat(ws::H2_SEQ_GAP);
        return;
    }
    if !seq_after(seg_end, pos) {
        // Bytes already scanned, or a frame body continuing.
        return;
    }
    let mut off = p.payload_off + pos.wrapping_sub(p.seq);
    for _ in 0..H2_MAX_FRAMES {
        if off >= end {
            break;
        }
        // Where the header starts: before the payload when its first bytes
        // are the kept ones (the packet's own bytes there are masked off).
        let win = off - have;
        if win + 4 > end {
            if have != 0 {
                f.h2[dir] = h2::OFF;
                stat(ws::H2_SPLIT_HEADER);
            } else {
                h2_keep(ctx, p, f, dir, off, end);
            }
            return;
        }
        let Some(w) = load::<u32>(ctx, win).map(u32::from_be) else {
            return;
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
            if win + 17 > end {
                if have == 0 {
                    h2_keep(ctx, p, f, dir, off, end);
                    return;
                }
                stat(ws::H2_SPLIT_GOAWAY);
            } else {
                let Some(w) = load::<u64>(ctx, win + 9).map(u64::from_be) else {
                    return;
                };
                let body = if have <= 9 {
                    w
                } else {
                    let miss = 8 * (17 - have);
                    (f.h2_tail[dir] << miss) | (w & ((1u64 << miss) - 1))
                };
                emit(kind::GOAWAY, &p.tuple, |ev| {
                    ev.aux32 = (body >> 32) as u32 & 0x7fff_ffff;
                    ev.reason = body as u32;
                    ev.ttl = p.ttl;
                    if dir == 0 {
                        ev.flags |= flags::INGRESS;
                    }
                });
            }
        }
        off = win + 9 + (head >> 8);
        have = 0;
    }
    if off < end {
        f.h2[dir] = h2::OFF;
        stat(ws::H2_FRAME_LIMIT);
        return;
    }
    f.h2_have[dir] = 0;
    f.h2_next[dir] = p.seq.wrapping_add(off - p.payload_off);
}

/// Keeps the start of a frame header cut by the segment's end at `off`
/// (its length and type, or fewer bytes; for a GOAWAY what there is of its
/// ids) for the next segment to finish.
#[inline(always)]
fn h2_keep(ctx: &TcContext, p: &Pkt, f: &mut Flow, dir: usize, off: u32, end: u32) {
    let k = end - off;
    if k == 0 || k > 16 {
        return;
    }
    let head = if k >= 4 {
        load::<u32>(ctx, off).map(u32::from_be)
    } else {
        // The last k bytes of the payload.
        load::<u32>(ctx, end - 4).map(|w| u32::from_be(w) & ((1u32 << (8 * k)) - 1))
    };
    let tail = if k > 9 {
        load::<u64>(ctx, end - 8).map(|w| u64::from_be(w) & ((1u64 << (8 * (k - 9))) - 1))
    } else {
        Some(0)
    };
    let (Some(head), Some(tail)) = (head, tail) else {
        return;
    };
    f.h2_head[dir] = head;
    f.h2_tail[dir] = tail;
    f.h2_have[dir] = k as u8;
    f.h2_next[dir] = p.seq.wrapping_add(off - p.payload_off);
}

/// A direction's first payload: the client preface, the server's SETTINGS,
/// TLS, or HTTP/1.1, which becomes HTTP/2 after an h2c upgrade (RFC 7540
/// 3.2: the client's request first, the server's `101 Switching Protocols`
/// and then frames, starting with SETTINGS; the client's preface follows
/// the 101). `true` with `h2_next` at the first frame header when frames
/// follow.
#[inline(always)]
fn h2_start(ctx: &TcContext, p: &Pkt, f: &mut Flow, dir: usize) -> bool {
    let off = p.payload_off;
    let other = 1 - dir;
    let Some(head) = load::<u32>(ctx, off).map(u32::from_be) else {
        return false;
    };
    let skip = if head == H2_PREFACE_HEAD {
        H2_PREFACE_LEN
    } else if (head >> 16) as u16 == 0x1603 {
        f.h2[dir] = h2::OFF;
        stat(ws::H2_TLS);
        return false;
    } else if f.h2[other] == h2::H1 {
        // The answer to an HTTP/1.1 request: HTTP/2 only after a 101.
        f.h2[other] = h2::OFF;
        match h1_upgrade_end(ctx, p) {
            Upgrade::Switched(n) => {
                f.h2[other] = h2::START;
                n
            }
            Upgrade::Not => {
                // Both directions are HTTP/1.
                stat(ws::NOT_H2);
                stat(ws::NOT_H2);
                f.h2[dir] = h2::OFF;
                return false;
            }
            Upgrade::Lost => {
                stat(ws::H2C_UPGRADE_LOST);
                f.h2[dir] = h2::OFF;
                return false;
            }
        }
    } else {
        // A server's first frame is SETTINGS on stream 0.
        let ty: u8 = load(ctx, off + 3).unwrap_or(0);
        let stream = load::<u32>(ctx, off + 5).map(u32::from_be).unwrap_or(1);
        if ty != H2_SETTINGS || stream & 0x7fff_ffff != 0 {
            if f.h2[dir] == h2::START && f.h2[other] == h2::START {
                // The connection's first payload: HTTP/1.1 may upgrade.
                f.h2[dir] = h2::H1;
                return false;
            }
            f.h2[dir] = h2::OFF;
            stat(ws::NOT_H2);
            return false;
        }
        0
    };
    f.h2[dir] = h2::ALIGNED;
    f.h2_have[dir] = 0;
    f.h2_next[dir] = p.seq.wrapping_add(skip);
    true
}

enum Upgrade {
    /// `101` to h2c: frames start this many bytes into the payload.
    Switched(u32),
    /// Another answer: the connection stays HTTP/1.
    Not,
    /// A 101 whose header block does not end within the bytes looked at.
    Lost,
}

/// "HTTP/1.1" and " 101", the start of a 101 response's status line.
const H1_VERSION: u64 = u64::from_be_bytes(*b"HTTP/1.1");
const H1_101: u32 = u32::from_be_bytes(*b" 101");
const CRLFCRLF: u32 = u32::from_be_bytes(*b"\r\n\r\n");
/// How far into the server's first packet the end of a 101 response's
/// header block is looked for (the loop the verifier walks). Servers send
/// 70-odd bytes (status line, `Connection` and `Upgrade`).
const H2C_HEAD_MAX: u32 = 256;

/// The 101 response's bytes, copied out of the packet: the scan then reads
/// memory the verifier can bound (a map value) with no helper per byte.
#[map]
static H2C_SCRATCH: PerCpuArray<[u8; H2C_HEAD_MAX as usize]> = PerCpuArray::with_max_entries(1, 0);

/// Whether this packet starts a `101 Switching Protocols` response whose
/// header block ends inside it (and where).
#[inline(always)]
fn h1_upgrade_end(ctx: &TcContext, p: &Pkt) -> Upgrade {
    let off = p.payload_off;
    let is_101 = load::<u64>(ctx, off).map(u64::from_be) == Some(H1_VERSION)
        && load::<u32>(ctx, off + 8).map(u32::from_be) == Some(H1_101);
    if !is_101 {
        return Upgrade::Not;
    }
    let Some(buf) = H2C_SCRATCH.get_ptr_mut(0) else {
        return Upgrade::Lost;
    };
    let at = buf as *mut u32;
    // The helper's length must be provably 1..=H2C_HEAD_MAX, and the
    // verifier then tracks it precisely back to where it came from: the
    // packet's payload length, which would make every state that differs
    // in it distinct (the whole classifier walked over twice as long).
    // Through the map value the length is a fresh unknown, bounded by the
    // mask; LLVM cannot fold the mask away either.
    // SAFETY: the first 4 bytes of the map value.
    unsafe { core::ptr::write_volatile(at, p.payload_len.min(H2C_HEAD_MAX)) };
    // SAFETY: as above.
    let n = unsafe { core::ptr::read_volatile(at) };
    if n < 16 {
        return Upgrade::Lost;
    }
    let n = ((n - 1) & (H2C_HEAD_MAX - 1)) + 1;
    // SAFETY: `buf` is a map value of H2C_HEAD_MAX bytes and n <= H2C_HEAD_MAX.
    let r =
        unsafe { aya_ebpf::helpers::bpf_skb_load_bytes(ctx.skb.skb.cast(), off, buf.cast(), n) };
    if r != 0 {
        return Upgrade::Lost;
    }
    let mut acc = 0u32;
    for i in 12..H2C_HEAD_MAX {
        if i >= n {
            break;
        }
        // SAFETY: i < H2C_HEAD_MAX, inside the map value.
        let b = unsafe { *(buf as *const u8).add(i as usize) };
        acc = (acc << 8) | u32::from(b);
        if acc == CRLFCRLF {
            return Upgrade::Switched(i + 1);
        }
    }
    Upgrade::Lost
}
