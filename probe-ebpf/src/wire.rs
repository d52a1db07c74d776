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
}

#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(probe_common::DEFAULT_FLOW_TABLE, 0);

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

/// The fast exit for most traffic: reads IP protocol and TCP ports with
/// direct packet access (no helper calls) and answers `true` when the packet
/// is surely not on a watched port. `false` means "look closer" (watched, or
/// headers outside the linear area, or IPv6 extension headers).
#[inline(always)]
fn surely_unwatched<const L3: usize>(ctx: &TcContext, proto: u32) -> bool {
    let data = ctx.data();
    let end = ctx.data_end();
    let l4 = if proto == ETH_P_IP {
        if data + L3 + 20 > end {
            return false;
        }
        let ip = (data + L3) as *const u8;
        // SAFETY: bounds checked against data_end above.
        let (vihl, p) = unsafe { (*ip, *ip.add(9)) };
        if p != IPPROTO_TCP {
            return true;
        }
        let ihl = usize::from(vihl & 0x0f) * 4;
        if ihl < 20 {
            // Malformed: the full parser counts it.
            return false;
        }
        L3 + ihl
    } else if proto == ETH_P_IPV6 {
        if data + L3 + 40 > end {
            return false;
        }
        // SAFETY: bounds checked against data_end above.
        let nh = unsafe { *((data + L3 + 6) as *const u8) };
        match nh {
            IPPROTO_TCP => L3 + 40,
            // UDP and ICMPv6 never carry TCP.
            17 | 58 => return true,
            _ => return false,
        }
    } else {
        return true;
    };
    if data + l4 + 4 > end {
        return false;
    }
    // SAFETY: bounds checked against data_end above.
    let ports = unsafe { *((data + l4) as *const [u8; 4]) };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    !port_watched(sport) && !port_watched(dport)
}

/// Parses L3/L4 headers; `None` for non-TCP, unwatched or malformed packets.
#[inline(always)]
fn parse(ctx: &TcContext, ingress: bool) -> Option<Pkt> {
    let l3 = l3_offset(ctx);
    // skb->protocol holds a big-endian 16-bit value.
    let proto = u32::from(u16::from_be(ctx.skb.protocol() as u16));
    let quick_exit = match l3 {
        14 => surely_unwatched::<14>(ctx, proto),
        0 => surely_unwatched::<0>(ctx, proto),
        _ => false,
    };
    if quick_exit {
        return None;
    }
    let skb_len = ctx.len();
    let mut t = Tuple {
        family: 0,
        sport: 0,
        dport: 0,
        saddr: [0; 16],
        daddr: [0; 16],
    };
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
    // Local end first.
    if ingress {
        core::mem::swap(&mut t.saddr, &mut t.daddr);
        t.sport = dport;
        t.dport = sport;
    } else {
        t.sport = sport;
        t.dport = dport;
    }
    Some(Pkt {
        tuple: t,
        ttl,
        tcp_flags,
        seq,
        payload_off: l4 + doff,
        payload_len: end - (l4 + doff),
    })
}

#[inline(always)]
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

pub fn classify(ctx: &TcContext, ingress: bool) -> i32 {
    let _ = observe(ctx, ingress);
    TC_ACT_OK
}

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
            let fresh = Flow {
                first_ns: ts,
                last_ns: 0,
                gap_ns: 0,
                last_payload_ns: 0,
                ka_last_ns: [0; 2],
                ka_interval_ns: 0,
                packets: [0; 2],
                bytes: [0; 2],
                next_seq: [0; 2],
                h2_next: [0; 2],
                ka_count: 0,
                peer_ttl: 0,
                last_dir: 0,
                h2: if syn {
                    [h2::START; 2]
                } else {
                    [h2::UNKNOWN; 2]
                },
                seq_known: 0,
                from_syn: u8::from(syn),
                big_dir: 0,
                fin_dirs: 0,
                _pad: [0; 4],
            };
            if FLOWS.insert(key, fresh, 0).is_err() {
                return None;
            }
            stat(ws::FLOWS_INSERTED);
            if !syn {
                stat(ws::H2_MID_STREAM);
            }
            FLOWS.get_ptr_mut(key)?
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
fn h2_scan(ctx: &TcContext, p: &Pkt, f: &mut Flow, dir: usize) {
    let mut off = p.payload_off;
    let end = p.payload_off + p.payload_len;
    match f.h2[dir] {
        h2::START => {
            let head: u32 = match load::<u32>(ctx, off) {
                Some(v) => u32::from_be(v),
                None => return,
            };
            let b0 = (head >> 24) as u8;
            let b1 = (head >> 16) as u8;
            if head == H2_PREFACE_HEAD {
                off += H2_PREFACE_LEN;
            } else if b0 == 0x16 && b1 == 0x03 {
                f.h2[dir] = h2::OFF;
                stat(ws::H2_TLS);
                return;
            } else {
                // A server's first frame is SETTINGS on stream 0.
                let ty: u8 = load(ctx, off + 3).unwrap_or(0);
                let stream = load::<u32>(ctx, off + 5).map(u32::from_be).unwrap_or(1);
                if ty != H2_SETTINGS || stream & 0x7fff_ffff != 0 {
                    f.h2[dir] = h2::OFF;
                    stat(ws::NOT_H2);
                    return;
                }
            }
            f.h2[dir] = h2::ALIGNED;
        }
        h2::ALIGNED => {
            if p.seq != f.h2_next[dir] {
                if seq_after(f.h2_next[dir], p.seq) {
                    // A retransmission of bytes already scanned.
                    return;
                }
                f.h2[dir] = h2::OFF;
                stat(ws::H2_SEQ_GAP);
                return;
            }
        }
        _ => return,
    }
    for _ in 0..H2_MAX_FRAMES {
        if off >= end {
            break;
        }
        if off + 9 > end {
            f.h2[dir] = h2::OFF;
            stat(ws::H2_SPLIT_HEADER);
            return;
        }
        let Some(w0) = load::<u32>(ctx, off).map(u32::from_be) else {
            return;
        };
        let len = w0 >> 8;
        let ty = w0 as u8;
        if ty == H2_GOAWAY {
            if off + 17 <= end {
                let last = load::<u32>(ctx, off + 9).map(u32::from_be).unwrap_or(0);
                let code = load::<u32>(ctx, off + 13).map(u32::from_be).unwrap_or(0);
                emit(kind::GOAWAY, &p.tuple, |ev| {
                    ev.aux32 = last & 0x7fff_ffff;
                    ev.reason = code;
                    ev.ttl = p.ttl;
                    if dir == 0 {
                        ev.flags |= flags::INGRESS;
                    }
                });
            } else {
                stat(ws::H2_SPLIT_GOAWAY);
            }
        }
        off += 9 + len;
    }
    if off < end {
        f.h2[dir] = h2::OFF;
        stat(ws::H2_FRAME_LIMIT);
        return;
    }
    f.h2_next[dir] = p.seq.wrapping_add(off - p.payload_off);
}
