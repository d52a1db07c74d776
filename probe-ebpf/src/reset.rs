//! RSTs: `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`.

use aya_ebpf::programs::TracePointContext;
use probe_common::{flags, kind, tcp_state as st};

use crate::{
    event::{emit, field, now, watched_tuple},
    maps::{LAYOUTS, SOCKS, sock_flags},
};

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
    let kstate = field::<i32>(ctx, l.state).map(|s| s as u8);
    let ts = now();
    let tracked = tracked(sk);
    if let Some(info) = SOCKS.get_ptr_mut(sk) {
        unsafe { (*info).flags |= sock_flags::RST_SEEN };
    }
    emit(kind::RESET_RECEIVED, &tuple, |ev| {
        ev.sock = sk;
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
