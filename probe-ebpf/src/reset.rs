//! RSTs: `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`.

use aya_ebpf::{helpers::generated::bpf_jiffies64, programs::TracePointContext};
use probe_common::{flags, kind, sock_view, tcp_state as st};

use crate::{
    event::{emit, field, now, sk_read, watched_tuple},
    maps::{LAYOUTS, SOCKS, TCP_SOCK_LAYOUT, sock_flags},
};

/// The socket's own view: jiffies since data was received and sent, since
/// the last ACK, and its keepalive time (0 = keepalive off). `None` when the
/// BTF offsets are unknown.
#[inline(always)]
fn socket_view(sk: u64) -> Option<([u64; 4], u32)> {
    let l = TCP_SOCK_LAYOUT.load();
    if l.present == 0 || sk == 0 {
        return None;
    }
    let now_j = unsafe { bpf_jiffies64() } as u32;
    let sk_flags: u64 = sk_read(sk, l.sk_flags)?;
    let rx: u32 = sk_read(sk, l.lrcvtime)?;
    let tx: u32 = sk_read(sk, l.lsndtime)?;
    let ack: u32 = sk_read(sk, l.rcv_tstamp)?;
    let ka_time: u32 = sk_read(sk, l.keepalive_time)?;
    let keepalive = sk_flags & (1u64 << (l.keepopen_bit & 63)) != 0;
    let mut bits = sock_view::PRESENT;
    if keepalive {
        bits |= sock_view::KEEPALIVE;
    }
    Some((
        [
            u64::from(now_j.wrapping_sub(rx)),
            u64::from(now_j.wrapping_sub(tx)),
            u64::from(now_j.wrapping_sub(ack)),
            if keepalive { u64::from(ka_time) } else { 0 },
        ],
        bits,
    ))
}

/// Whether the application holds the socket (`sk_socket` set): `false` for
/// a connection the kernel completed that is still in a listener's accept
/// queue (and for one the application already closed: orphaned sockets have
/// no `struct socket` either; userspace tells them apart by state). `None`
/// when the BTF offset is unknown.
#[inline(always)]
fn accepted_by_app(sk: u64) -> Option<bool> {
    let l = TCP_SOCK_LAYOUT.load();
    if l.present == 0 || sk == 0 {
        return None;
    }
    let socket: u64 = sk_read(sk, l.sk_socket)?;
    Some(socket != 0)
}

/// The state to report and how the connection's age is known, from the
/// program's own socket table. A socket that an abortive close already moved
/// to CLOSE is reported in the state it was in before (ESTABLISHED, ...).
#[inline(always)]
fn tracked(sk: u64) -> Option<(u8, u64, u8)> {
    if sk == 0 {
        return None;
    }
    let info = unsafe { SOCKS.get(sk) }?;
    let state = if info.state == st::CLOSE {
        info.prev_state
    } else {
        info.state
    };
    Some((state, info.est_ns, info.flags))
}

pub fn send_reset(ctx: &TracePointContext) -> Option<()> {
    let l = LAYOUTS.load().send_reset;
    let tuple = watched_tuple(ctx, &l.tuple)?;
    let sk = field::<u64>(ctx, l.skaddr).unwrap_or(0);
    let in_ns = if sk != 0 {
        crate::netns::sk_ok(sk)
    } else {
        // No socket (a SYN to a closed port): the packet's device tells.
        crate::netns::skb_ok(field::<u64>(ctx, l.skbaddr).unwrap_or(0))
    };
    if !in_ns {
        return None;
    }
    // Plain values, each written on every path: with `Option`s, LLVM loads
    // an absent payload's stack slot before testing it, and the 5.10
    // verifier rejects reading stack that was never written.
    // Before 6.10 the record has no state: UNKNOWN, as when unreadable.
    let kstate = field::<i32>(ctx, l.state).map_or(st::UNKNOWN, |s| s as u8);
    let reason = field::<u32>(ctx, l.reason);
    let has_reason = reason.is_some();
    let reason = reason.unwrap_or(0);
    let ts = now();
    let (is_tracked, t_state, t_est, t_flags) = match tracked(sk) {
        Some((state, est, fl)) => (true, state, est, fl),
        None => (false, st::UNKNOWN, 0, 0),
    };
    let accept_flags = match accepted_by_app(sk) {
        Some(true) => flags::ACCEPT_CHECKED,
        Some(false) => flags::ACCEPT_CHECKED | flags::NEVER_ACCEPTED,
        None => 0,
    };
    emit(kind::RESET_SENT, &tuple, |ev| {
        ev.sock = sk;
        ev.state = kstate;
        ev.flags |= accept_flags;
        if sk == 0 {
            ev.flags |= flags::NO_SOCKET;
        }
        if is_tracked {
            if kstate == st::UNKNOWN || kstate == st::CLOSE {
                ev.state = t_state;
                ev.flags |= flags::STATE_TRACKED;
            }
            if t_est != 0 {
                ev.duration_ns = ts.saturating_sub(t_est);
            }
            if t_flags & sock_flags::ACTIVE != 0 {
                ev.flags |= flags::ACTIVE;
            }
            if t_flags & sock_flags::PASSIVE != 0 {
                ev.flags |= flags::PASSIVE;
            }
        }
        if has_reason {
            ev.reason = reason;
            ev.flags |= flags::HAS_REASON;
        }
    });
    Some(())
}

pub fn receive_reset(ctx: &TracePointContext) -> Option<()> {
    let l = LAYOUTS.load().receive_reset;
    let tuple = watched_tuple(ctx, &l.tuple)?;
    let sk = field::<u64>(ctx, l.skaddr)?;
    if !crate::netns::sk_ok(sk) {
        return None;
    }
    let kstate = field::<i32>(ctx, l.state).map(|s| s as u8);
    let ts = now();
    let tracked = tracked(sk);
    if let Some(info) = SOCKS.get_ptr_mut(sk) {
        unsafe { (*info).flags |= sock_flags::RST_SEEN };
    }
    let view = socket_view(sk);
    emit(kind::RESET_RECEIVED, &tuple, |ev| {
        ev.sock = sk;
        if let Some((aux, bits)) = view {
            ev.aux = aux;
            ev.aux32 = bits;
        }
        ev.state = kstate.unwrap_or(st::UNKNOWN);
        if let Some((state, est, fl)) = tracked {
            if kstate.is_none() {
                ev.state = state;
                ev.flags |= flags::STATE_TRACKED;
            }
            if est != 0 {
                ev.duration_ns = ts.saturating_sub(est);
            }
            if fl & sock_flags::ACTIVE != 0 {
                ev.flags |= flags::ACTIVE;
            }
            if fl & sock_flags::PASSIVE != 0 {
                ev.flags |= flags::PASSIVE;
            }
        }
    });
    Some(())
}
