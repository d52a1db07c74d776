//! Connection lifecycle: `sock:inet_sock_set_state`, `sock:inet_sk_error_report`,
//! `tcp:tcp_retransmit_skb` and `tcp:tcp_destroy_sock`.
//!
//! Why several hooks: a refused connect is SYN_SENT -> CLOSE after an RST
//! (seen in `tcp_receive_reset`), but a timed-out one is the same transition
//! followed by the socket error ETIMEDOUT, reported only *after* the state
//! change and without a socket address. Failures without an RST are therefore
//! parked in `PENDING` and resolved by the error report or by the socket's
//! destruction (application closed it first).

use aya_ebpf::programs::TracePointContext;
use probe_common::{IPPROTO_TCP, RUNTIME_KPROBE_CONNECT, flags, kind, tcp_state as st};

use crate::{
    event::{Tuple, emit, field, now, read_addrs, read_ports, set_task, watched_tuple},
    maps::{LAYOUTS, PENDING, Pending, RECENT_ERR, RUNTIME, SOCKS, SockInfo, sock_flags},
};

const ETIMEDOUT: i32 = 110;

pub fn set_state(ctx: &TracePointContext) -> Option<()> {
    let l = LAYOUTS.load().set_state;
    if field::<u16>(ctx, l.protocol).unwrap_or(IPPROTO_TCP) != IPPROTO_TCP {
        return None;
    }
    let old = field::<i32>(ctx, l.oldstate)? as u8;
    let new = field::<i32>(ctx, l.newstate)? as u8;
    let sk = field::<u64>(ctx, l.skaddr)?;
    let tuple = watched_tuple(ctx, &l.tuple)?;
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
                _pad: 0,
            };
            let _ = SOCKS.insert(sk, info, 0);
            let kprobe_reports = RUNTIME.get(RUNTIME_KPROBE_CONNECT).copied().unwrap_or(0) != 0;
            if !kprobe_reports {
                emit(kind::CONNECT_ATTEMPT, &tuple, |ev| {
                    ev.sock = sk;
                    ev.old_state = old;
                    ev.state = new;
                    ev.flags = flags::ACTIVE;
                    set_task(ev);
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
                _pad: 0,
            };
            let _ = SOCKS.insert(sk, info, 0);
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
        (_, st::CLOSE) => closed(sk, old, &tuple, ts),
        _ => {
            if let Some(info) = SOCKS.get_ptr_mut(sk) {
                unsafe {
                    (*info).prev_state = (*info).state;
                    (*info).state = new;
                }
            }
        }
    }
    Some(())
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
        // Seen first here (e.g. a fast-open or syncookie child): start tracking now.
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
            _pad: 0,
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

fn closed(sk: u64, old: u8, tuple: &Tuple, ts: u64) {
    let (est, fl) = match SOCKS.get_ptr_mut(sk) {
        Some(info) => unsafe {
            (*info).prev_state = old;
            (*info).state = st::CLOSE;
            ((*info).est_ns, (*info).flags)
        },
        None => (0, 0),
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
        // Still in SYN_SENT (an ICMP error): the close that follows consumes it.
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
    let info = unsafe { SOCKS.get(sk) }.copied()?;
    let _ = SOCKS.remove(sk);
    if info.flags & sock_flags::PENDING != 0 {
        let (family, sport, dport) = read_ports(ctx, &l.tuple)?;
        let mut tuple = Tuple {
            family,
            sport,
            dport,
            saddr: [0; 16],
            daddr: [0; 16],
        };
        read_addrs(ctx, &l.tuple, &mut tuple)?;
        resolve_pending(&tuple.key(), &tuple, kind::CONNECT_ABORTED, 0, true);
    }
    Some(())
}
