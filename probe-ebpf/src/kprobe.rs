//! The kprobe path, for kernels that have kprobes (this one may not):
//! `tcp_connect` runs after the source port is chosen, so its attempts carry
//! the full 4-tuple; `tcp_reset` stands in for `tcp:tcp_receive_reset` where
//! that tracepoint is missing. `struct sock` offsets come from BTF at load.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::ProbeContext};
use probe_common::{AF_INET, AF_INET6, FIELD_ABSENT, flags, kind, tcp_state as st};

use crate::{
    event::{Tuple, emit, now, port_watched, set_owner},
    maps::{SOCK_LAYOUT, SOCKS, sock_flags},
};

#[inline(always)]
fn read<T>(sk: u64, off: u16) -> Option<T> {
    if off == FIELD_ABSENT {
        return None;
    }
    unsafe { bpf_probe_read_kernel((sk + u64::from(off)) as *const T).ok() }
}

/// Reads the socket's tuple if either port is watched.
#[inline(always)]
pub(crate) fn sock_tuple(sk: u64) -> Option<Tuple> {
    let l = SOCK_LAYOUT.load();
    if l.present == 0 {
        return None;
    }
    let family = read::<u16>(sk, l.family)?;
    let sport = read::<u16>(sk, l.num)?;
    let dport = u16::from_be(read::<u16>(sk, l.dport)?);
    if !port_watched(sport) && !port_watched(dport) {
        return None;
    }
    let mut t = Tuple::new(family, sport, dport);
    match family {
        AF_INET => {
            let s: [u8; 4] = read(sk, l.rcv_saddr)?;
            let d: [u8; 4] = read(sk, l.daddr)?;
            t.saddr[..4].copy_from_slice(&s);
            t.daddr[..4].copy_from_slice(&d);
        }
        AF_INET6 => {
            t.saddr = read(sk, l.v6_rcv_saddr)?;
            t.daddr = read(sk, l.v6_daddr)?;
        }
        _ => return None,
    }
    if !crate::event::endpoint_watched(&t) {
        return None;
    }
    Some(t)
}

pub fn tcp_connect(ctx: &ProbeContext) -> Option<()> {
    let sk: u64 = ctx.arg::<*const u8>(0)? as u64;
    let tuple = sock_tuple(sk)?;
    if !crate::netns::sk_ok(sk) {
        return None;
    }
    emit(kind::CONNECT_ATTEMPT, &tuple, |ev| {
        ev.sock = sk;
        ev.old_state = st::CLOSE;
        ev.state = st::SYN_SENT;
        ev.flags = flags::ACTIVE | flags::FROM_KPROBE;
        set_owner(ev);
    });
    Some(())
}

pub fn tcp_reset(ctx: &ProbeContext) -> Option<()> {
    let sk: u64 = ctx.arg::<*const u8>(0)? as u64;
    let tuple = sock_tuple(sk)?;
    if !crate::netns::sk_ok(sk) {
        return None;
    }
    let state = read::<u8>(sk, SOCK_LAYOUT.load().state).unwrap_or(st::UNKNOWN);
    let ts = now();
    let mut est = 0;
    if let Some(info) = SOCKS.get_ptr_mut(sk) {
        unsafe {
            (*info).flags |= sock_flags::RST_SEEN;
            est = (*info).est_ns;
        }
    }
    emit(kind::RESET_RECEIVED, &tuple, |ev| {
        ev.sock = sk;
        ev.state = state;
        ev.flags = flags::FROM_KPROBE;
        if est != 0 {
            ev.duration_ns = ts.saturating_sub(est);
        }
    });
    Some(())
}
