//! Connection lifecycle: `sock:inet_sock_set_state`, `sock:inet_sk_error_report`,
//! `tcp:tcp_retransmit_skb` and `tcp:tcp_destroy_sock`.
//!
//! Why several hooks: a refused connect is SYN_SENT -> CLOSE after an RST
//! (seen in `tcp_receive_reset`), but a timed-out one is the same transition
//! followed by the socket error ETIMEDOUT, reported only *after* the state
//! change and without a socket address. Failures without an RST are therefore
//! parked in `PENDING` and resolved by the error report or by the socket's
//! destruction (application closed it first).

use aya_ebpf::{EbpfContext, programs::TracePointContext};
use probe_common::{
    AF_INET, AF_INET6, IPPROTO_TCP, LOST_SOCKS_FULL, RUNTIME_KPROBE_CONNECT, RUNTIME_NO_DESTROY,
    TpLayout, flags, kind, set_state_direct as d, tcp_state as st,
};

use crate::{
    event::{
        Tuple, complete_tuple, count_lost, emit, field, now, port_watched, ports_watched,
        read_addrs, read_ports, set_owner, set_task, watched_tuple,
    },
    maps::{
        LAYOUTS, PENDING, Pending, RECENT_ERR, RUNTIME, SET_STATE_DIRECT, SOCKS, SockInfo,
        TCP_SOCK_LAYOUT, sock_flags,
    },
};

const ETIMEDOUT: i32 = 110;

/// How a `sock:inet_sock_set_state` record's fields are read: [`Direct`]
/// loads where the kernel's layout is the compiled-in one, else
/// [`ByOffset`] (one `bpf_probe_read_kernel` per field, at the offsets read
/// from tracefs). Chosen at load by `SET_STATE_DIRECT`.
trait SetStateRecord {
    fn protocol(&self, ctx: &TracePointContext) -> Option<u16>;
    /// (family, sport, dport).
    fn ports(&self, ctx: &TracePointContext) -> Option<(u16, u16, u16)>;
    /// (old state, new state, socket address).
    fn states(&self, ctx: &TracePointContext) -> Option<(u8, u8, u64)>;
    fn addrs(&self, ctx: &TracePointContext, tuple: &mut Tuple) -> Option<()>;
}

struct ByOffset(TpLayout);

impl SetStateRecord for ByOffset {
    #[inline(always)]
    fn protocol(&self, ctx: &TracePointContext) -> Option<u16> {
        field::<u16>(ctx, self.0.protocol)
    }
    #[inline(always)]
    fn ports(&self, ctx: &TracePointContext) -> Option<(u16, u16, u16)> {
        read_ports(ctx, &self.0.tuple)
    }
    #[inline(always)]
    fn states(&self, ctx: &TracePointContext) -> Option<(u8, u8, u64)> {
        let old = field::<i32>(ctx, self.0.oldstate)? as u8;
        let new = field::<i32>(ctx, self.0.newstate)? as u8;
        Some((old, new, field::<u64>(ctx, self.0.skaddr)?))
    }
    #[inline(always)]
    fn addrs(&self, ctx: &TracePointContext, tuple: &mut Tuple) -> Option<()> {
        read_addrs(ctx, &self.0.tuple, tuple)
    }
}

struct Direct;

/// A load from the record at a constant offset; the verifier checks it
/// against the record's size. Volatile so that each is one load of `T`'s
/// width (the context may not be read in pieces or through a moved pointer).
#[inline(always)]
fn ld<T>(ctx: &TracePointContext, off: usize) -> T {
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(off).cast::<T>()) }
}

/// A 16-byte address as two 8-byte loads (offsets 8-aligned in the layout).
#[inline(always)]
fn ld_v6(ctx: &TracePointContext, off: usize, out: &mut [u8; 16]) {
    out[..8].copy_from_slice(&ld::<u64>(ctx, off).to_ne_bytes());
    out[8..].copy_from_slice(&ld::<u64>(ctx, off + 8).to_ne_bytes());
}

impl SetStateRecord for Direct {
    #[inline(always)]
    fn protocol(&self, ctx: &TracePointContext) -> Option<u16> {
        Some(ld(ctx, d::PROTOCOL))
    }
    #[inline(always)]
    fn ports(&self, ctx: &TracePointContext) -> Option<(u16, u16, u16)> {
        Some((ld(ctx, d::FAMILY), ld(ctx, d::SPORT), ld(ctx, d::DPORT)))
    }
    #[inline(always)]
    fn states(&self, ctx: &TracePointContext) -> Option<(u8, u8, u64)> {
        let old = ld::<i32>(ctx, d::OLDSTATE) as u8;
        let new = ld::<i32>(ctx, d::NEWSTATE) as u8;
        Some((old, new, ld(ctx, d::SKADDR)))
    }
    #[inline(always)]
    fn addrs(&self, ctx: &TracePointContext, tuple: &mut Tuple) -> Option<()> {
        match tuple.family {
            AF_INET => {
                tuple.saddr[..4].copy_from_slice(&ld::<u32>(ctx, d::SADDR).to_ne_bytes());
                tuple.daddr[..4].copy_from_slice(&ld::<u32>(ctx, d::DADDR).to_ne_bytes());
            }
            AF_INET6 => {
                ld_v6(ctx, d::SADDR_V6, &mut tuple.saddr);
                ld_v6(ctx, d::DADDR_V6, &mut tuple.daddr);
            }
            _ => return None,
        }
        Some(())
    }
}

pub fn set_state(ctx: &TracePointContext) -> Option<()> {
    // A read-only global: the verifier follows only the branch taken.
    if SET_STATE_DIRECT.load() != 0 {
        set_state_with(ctx, &Direct)
    } else {
        set_state_with(ctx, &ByOffset(LAYOUTS.load().set_state))
    }
}

#[inline(always)]
fn set_state_with<R: SetStateRecord>(ctx: &TracePointContext, r: &R) -> Option<()> {
    if r.protocol(ctx).unwrap_or(IPPROTO_TCP) != IPPROTO_TCP {
        return None;
    }
    // Ports first: an unwatched connection leaves after two bitmap lookups.
    let ports = r.ports(ctx)?;
    if !ports_watched(ports) {
        return None;
    }
    let (old, new, sk) = r.states(ctx)?;
    let reports = matches!(new, st::SYN_SENT | st::SYN_RECV | st::LISTEN | st::CLOSE)
        || (new == st::ESTABLISHED && matches!(old, st::SYN_SENT | st::SYN_RECV));
    if !reports {
        // FIN_WAIT1, CLOSE_WAIT, ...: only a tracked socket's state moves.
        // Tracking began after the endpoint and namespace checks, so the
        // socket's entry alone says it is watched: neither check is
        // repeated, and the addresses are read only for the close check.
        let info = SOCKS.get_ptr_mut(sk)?;
        unsafe {
            (*info).prev_state = (*info).state;
            (*info).state = new;
            if old == st::ESTABLISHED
                && new == st::FIN_WAIT1
                && (*info).flags & sock_flags::PASSIVE != 0
            {
                let (family, sport, dport) = ports;
                let mut tuple = Tuple::new(family, sport, dport);
                r.addrs(ctx, &mut tuple)?;
                (*info).close_bits = request_pending(sk, &tuple);
            }
        }
        return Some(());
    }
    let tuple = complete_tuple(ctx, ports, |t| r.addrs(ctx, t))?;
    if !crate::netns::sk_ok(sk) {
        return None;
    }
    let ts = now();

    match (old, new) {
        (_, st::SYN_SENT) => {
            let info = SockInfo {
                start_ns: ts,
                est_ns: 0,
                retransmits: 0,
                state: st::SYN_SENT,
                prev_state: old,
                flags: sock_flags::ACTIVE,
                close_bits: 0,
            };
            track(sk, info);
            let kprobe_reports = RUNTIME.get(RUNTIME_KPROBE_CONNECT).copied().unwrap_or(0) != 0;
            if !kprobe_reports {
                emit(kind::CONNECT_ATTEMPT, &tuple, |ev| {
                    ev.sock = sk;
                    ev.old_state = old;
                    ev.state = new;
                    ev.flags = flags::ACTIVE;
                    set_owner(ev);
                });
            }
        }
        (_, st::SYN_RECV) => {
            let info = SockInfo {
                start_ns: ts,
                est_ns: 0,
                retransmits: 0,
                state: st::SYN_RECV,
                prev_state: old,
                flags: sock_flags::PASSIVE,
                close_bits: 0,
            };
            track(sk, info);
        }
        (_, st::LISTEN) => {
            crate::proc::watch_current_listener();
            emit(kind::LISTEN_OPEN, &tuple, |ev| {
                ev.sock = sk;
                ev.old_state = old;
                ev.state = new;
                set_task(ev);
            })
        }
        (st::LISTEN, st::CLOSE) => emit(kind::LISTEN_CLOSE, &tuple, |ev| {
            ev.sock = sk;
            ev.old_state = old;
            ev.state = new;
            set_task(ev);
        }),
        (st::SYN_SENT, st::ESTABLISHED) | (st::SYN_RECV, st::ESTABLISHED) => {
            established(sk, old, &tuple, ts)
        }
        (st::SYN_SENT, st::CLOSE) => connect_failed(sk, &tuple, ts),
        // A child socket closed before its handshake completed was never a
        // connection: the kernel discards the losing child when two CPUs
        // complete the same handshake at once (the final ACK and its
        // retransmission), and a peer may reset a half-open one. Not
        // reported (the selftest saw the first on a 2-CPU guest now and
        // then); its entry goes at destruction. Blind spot: a fast-open
        // child that carried data and was reset in SYN_RECV is not
        // reported as closed either.
        (st::SYN_RECV, st::CLOSE) => {}
        (_, st::CLOSE) => closed(sk, old, &tuple, ts),
        // Transitions that report nothing returned above.
        _ => {}
    }
    if new == st::CLOSE && RUNTIME.get(RUNTIME_NO_DESTROY).copied().unwrap_or(0) != 0 {
        // Nothing else would free the entry (see `SOCKS`); an RST this
        // socket sends while closing then goes out without its state before.
        let _ = SOCKS.remove(sk);
    }
    Some(())
}

/// Starts tracking a socket. A full table refuses it: counted, never silent.
#[inline(always)]
fn track(sk: u64, info: SockInfo) {
    if SOCKS.insert(sk, info, 0).is_err() {
        count_lost(LOST_SOCKS_FULL);
    }
}

fn established(sk: u64, old: u8, tuple: &Tuple, ts: u64) {
    let (start, retrans, known) = match SOCKS.get_ptr_mut(sk) {
        Some(info) => unsafe {
            (*info).est_ns = ts;
            (*info).prev_state = old;
            (*info).state = st::ESTABLISHED;
            ((*info).start_ns, (*info).retransmits, true)
        },
        None => (0, 0, false),
    };
    if !known {
        // Not seen at the handshake's start (every connect passes SYN_SENT
        // and every accepted child SYN_RECV, syncookie and fast-open ones
        // too): it began before the programs were loaded, or the full table
        // refused it then, counted once there. Track it now if there is
        // room; a refusal here is not counted again. Blind spot: a handshake
        // begun before the load that finds the table full is not counted.
        let info = SockInfo {
            start_ns: 0,
            est_ns: ts,
            retransmits: 0,
            state: st::ESTABLISHED,
            prev_state: old,
            flags: if old == st::SYN_SENT {
                sock_flags::ACTIVE
            } else {
                sock_flags::PASSIVE
            },
            close_bits: 0,
        };
        let _ = SOCKS.insert(sk, info, 0);
    }
    let (k, dir) = if old == st::SYN_SENT {
        (kind::ESTABLISHED, flags::ACTIVE)
    } else {
        (kind::ACCEPTED, flags::PASSIVE)
    };
    emit(k, tuple, |ev| {
        ev.sock = sk;
        ev.old_state = old;
        ev.state = st::ESTABLISHED;
        ev.retransmits = retrans;
        ev.flags = dir;
        if start != 0 {
            ev.duration_ns = ts.saturating_sub(start);
        } else {
            ev.flags |= flags::NO_START;
        }
    });
}

fn connect_failed(sk: u64, tuple: &Tuple, ts: u64) {
    let (start, retrans, rst) = match SOCKS.get_ptr_mut(sk) {
        Some(info) => unsafe {
            (*info).prev_state = st::SYN_SENT;
            (*info).state = st::CLOSE;
            (
                (*info).start_ns,
                (*info).retransmits,
                (*info).flags & sock_flags::RST_SEEN != 0,
            )
        },
        None => (0, 0, false),
    };
    let key = tuple.key();
    let early_err = unsafe { RECENT_ERR.get(key) }.copied();
    if rst || early_err.is_some() {
        let _ = RECENT_ERR.remove(key);
        let (k, errno) = match early_err {
            Some(e) if !rst => (kind::CONNECT_ERROR, e),
            _ => (kind::REFUSED, 111),
        };
        emit(k, tuple, |ev| {
            ev.sock = sk;
            ev.old_state = st::SYN_SENT;
            ev.state = st::CLOSE;
            ev.errno = errno;
            ev.retransmits = retrans;
            ev.flags = flags::ACTIVE;
            if start != 0 {
                ev.duration_ns = ts.saturating_sub(start);
            } else {
                ev.flags |= flags::NO_START;
            }
        });
        return;
    }
    if let Some(info) = SOCKS.get_ptr_mut(sk) {
        unsafe { (*info).flags |= sock_flags::PENDING };
    }
    let pending = Pending {
        sock: sk,
        start_ns: start,
        retransmits: retrans,
        _pad: 0,
        saddr: tuple.saddr,
    };
    let _ = PENDING.insert(key, pending, 0);
}

/// An accepting socket closing first: was the client still owed an answer?
/// Read at the ESTABLISHED -> FIN_WAIT1 transition, before the FIN is sent.
/// With the wire observer on, yes when the flow's last payload bigger than
/// control traffic came from the client (the close_notify TLS sends as it
/// closes does not count). Without it, yes when the socket's last data
/// received (`icsk_ack.lrcvtime`) is later than its last data sent
/// (`lsndtime`), both in 32-bit jiffies (a TLS close_notify hides this).
#[inline(always)]
fn request_pending(sk: u64, tuple: &Tuple) -> u8 {
    let mut key = probe_common::FlowKey {
        laddr: tuple.saddr,
        raddr: tuple.daddr,
        lport: tuple.sport,
        rport: tuple.dport,
        family: tuple.family,
        _pad: 0,
    };
    // A dual-stack listener ([::]:6443) sees IPv4 clients as ::ffff:a.b.c.d;
    // the wire sees IPv4.
    let mapped = |a: &[u8; 16]| a[..10] == [0u8; 10] && a[10] == 0xff && a[11] == 0xff;
    if key.family == probe_common::AF_INET6 && mapped(&key.laddr) && mapped(&key.raddr) {
        let (mut l, mut r) = ([0u8; 16], [0u8; 16]);
        l[..4].copy_from_slice(&key.laddr[12..]);
        r[..4].copy_from_slice(&key.raddr[12..]);
        key.laddr = l;
        key.raddr = r;
        key.family = probe_common::AF_INET;
    }
    if let Some(f) = unsafe { crate::wire::FLOWS.get(key) }
        && f.big_dir != 0
    {
        return if f.big_dir == 1 {
            sock_flags::CLOSE_CHECKED | sock_flags::REQUEST_PENDING
        } else if f.stream_last_ns.saturating_sub(f.stream_from_ns)
            >= probe_common::STREAM_SPREAD_NS
            && f.stream_from_ns != 0
        {
            sock_flags::CLOSE_CHECKED | sock_flags::RESPONSE_STREAMING
        } else {
            sock_flags::CLOSE_CHECKED
        };
    }
    let l = TCP_SOCK_LAYOUT.load();
    if l.present == 0 {
        return 0;
    }
    let (Some(rx), Some(tx)) = (
        crate::event::sk_read::<u32>(sk, l.lrcvtime),
        crate::event::sk_read::<u32>(sk, l.lsndtime),
    ) else {
        return 0;
    };
    let mut bits = sock_flags::CLOSE_CHECKED;
    if (rx.wrapping_sub(tx) as i32) > 0 {
        bits |= sock_flags::REQUEST_PENDING;
    }
    bits
}

fn closed(sk: u64, old: u8, tuple: &Tuple, ts: u64) {
    let (est, fl, close_bits) = match SOCKS.get_ptr_mut(sk) {
        Some(info) => unsafe {
            (*info).prev_state = old;
            (*info).state = st::CLOSE;
            ((*info).est_ns, (*info).flags, (*info).close_bits)
        },
        None => (0, 0, 0),
    };
    emit(kind::CLOSED, tuple, |ev| {
        ev.sock = sk;
        ev.old_state = old;
        ev.state = st::CLOSE;
        if fl & sock_flags::ACTIVE != 0 {
            ev.flags |= flags::ACTIVE;
        }
        if fl & sock_flags::PASSIVE != 0 {
            ev.flags |= flags::PASSIVE;
        }
        if close_bits & sock_flags::CLOSE_CHECKED != 0 {
            ev.flags |= flags::CLOSE_CHECKED;
        }
        if close_bits & sock_flags::REQUEST_PENDING != 0 {
            ev.flags |= flags::REQUEST_PENDING;
        }
        if close_bits & sock_flags::RESPONSE_STREAMING != 0 {
            ev.flags |= flags::RESPONSE_STREAMING;
        }
        if est != 0 {
            ev.duration_ns = ts.saturating_sub(est);
        } else {
            ev.flags |= flags::NO_START;
        }
    });
}

/// Emits the outcome of a parked connect failure.
fn resolve_pending(key: &crate::maps::TupleKey, tuple: &Tuple, k: u8, errno: i32, task: bool) {
    let Some(p) = (unsafe { PENDING.get(key) }).copied() else {
        return;
    };
    let _ = PENDING.remove(key);
    if let Some(info) = SOCKS.get_ptr_mut(p.sock) {
        unsafe { (*info).flags &= !sock_flags::PENDING };
    }
    let ts = now();
    emit(k, tuple, |ev| {
        ev.sock = p.sock;
        ev.saddr = p.saddr;
        ev.old_state = st::SYN_SENT;
        ev.state = st::CLOSE;
        ev.errno = errno;
        ev.retransmits = p.retransmits;
        ev.flags = flags::ACTIVE;
        if p.start_ns != 0 {
            ev.duration_ns = ts.saturating_sub(p.start_ns);
        } else {
            ev.flags |= flags::NO_START;
        }
        if task {
            set_task(ev);
        }
    });
}

pub fn error_report(ctx: &TracePointContext) -> Option<()> {
    let l = LAYOUTS.load().error_report;
    if field::<u16>(ctx, l.protocol).unwrap_or(IPPROTO_TCP) != IPPROTO_TCP {
        return None;
    }
    let tuple = watched_tuple(ctx, &l.tuple)?;
    let error = field::<i32>(ctx, l.error)?;
    let key = tuple.key();
    if unsafe { PENDING.get(key) }.is_some() {
        let k = if error == ETIMEDOUT {
            kind::TIMED_OUT
        } else {
            kind::CONNECT_ERROR
        };
        resolve_pending(&key, &tuple, k, error, false);
    } else {
        // Still in SYN_SENT (an ICMP error): the close that follows consumes
        // it. An RST's error is reported after the socket already closed
        // (tcp_done first); that entry goes when the socket is destroyed.
        let _ = RECENT_ERR.insert(key, error, 0);
    }
    Some(())
}

pub fn retransmit(ctx: &TracePointContext) -> Option<()> {
    let l = LAYOUTS.load().retransmit;
    let state = field::<i32>(ctx, l.state)? as u8;
    if state != st::SYN_SENT {
        return None;
    }
    let sk = field::<u64>(ctx, l.skaddr)?;
    if let Some(info) = SOCKS.get_ptr_mut(sk) {
        unsafe { (*info).retransmits += 1 };
    }
    Some(())
}

pub fn destroy_sock(ctx: &TracePointContext) -> Option<()> {
    let l = LAYOUTS.load().destroy_sock;
    let sk = field::<u64>(ctx, l.skaddr)?;
    let info = unsafe { SOCKS.get(sk) }.copied();
    if info.is_some() {
        let _ = SOCKS.remove(sk);
    }
    // Not `watched_tuple`: its warning on unreadable addresses costs this
    // program ~3600 more verified instructions (4750 budget on 6.12), and a
    // socket going away has nothing to report.
    let (family, sport, dport) = read_ports(ctx, &l.tuple)?;
    if !port_watched(sport) && !port_watched(dport) {
        return None;
    }
    let mut tuple = Tuple::new(family, sport, dport);
    read_addrs(ctx, &l.tuple, &mut tuple)?;
    let key = tuple.key();
    // The error an RST reported after the close (nothing reads it).
    let _ = RECENT_ERR.remove(key);
    if info.is_some_and(|i| i.flags & sock_flags::PENDING != 0) {
        resolve_pending(&key, &tuple, kind::CONNECT_ABORTED, 0, true);
    }
    Some(())
}
