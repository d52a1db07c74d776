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
    let kstate = field::<i32>(ctx, l.state).map(|s| s as u8);
    let reason = field::<u32>(ctx, l.reason);
    let ts = now();
    let tracked = tracked(sk);
    emit(kind::RESET_SENT, &tuple, |ev| {
        ev.sock = sk;
        ev.state = kstate.unwrap_or(st::UNKNOWN);
        if sk == 0 {
            ev.flags |= flags::NO_SOCKET;
        }
        if let Some((state, est, fl)) = tracked {
            if kstate.is_none() || kstate == Some(st::CLOSE) {
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
        if let Some(r) = reason {
            ev.reason = r;
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
