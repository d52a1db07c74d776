//! Reading tracepoint records and writing events: shared by every program.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_ktime_get_boot_ns},
    },
    programs::TracePointContext,
};
use probe_common::{
    AF_INET, AF_INET6, FIELD_ABSENT, LOST_KIND_BASE, LOST_LAYOUT, LOST_RINGBUF_FULL,
    RUNTIME_ENDPOINTS, RawEvent, TupleLayout, tuple_style,
};

use crate::maps::{ENDPOINT_SCRATCH, ENDPOINTS, EVENTS, LOST, PORTS, RUNTIME, TupleKey};

/// A connection's addresses as this host sees them (`s` = local end).
///
/// The addresses come first and the whole is 8-aligned, so zeroing or
/// copying one is two 8-byte stores; byte-aligned, each compiled to a call
/// of the object's byte-loop `memset`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Tuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    /// Zero addresses with `family` and the ports. Zeroed a word at a
    /// time: a literal's `[0; 16]` compiles to a call of the BPF object's
    /// `memset`, a byte loop (LLVM's BPF backend inlines `memcpy`, never
    /// `memset`).
    #[inline(always)]
    pub fn new(family: u16, sport: u16, dport: u16) -> Tuple {
        let mut t = core::mem::MaybeUninit::<Tuple>::uninit();
        zero_words(t.as_mut_ptr());
        // SAFETY: every byte was just zeroed, and zero is a valid Tuple.
        let mut t = unsafe { t.assume_init() };
        t.family = family;
        t.sport = sport;
        t.dport = dport;
        t
    }

    pub fn key(&self) -> TupleKey {
        TupleKey {
            daddr: self.daddr,
            family: self.family,
            sport: self.sport,
            dport: self.dport,
            _pad: 0,
        }
    }
}

#[inline(always)]
pub fn now() -> u64 {
    // Boot time keeps counting across suspend, so the daemon can map it to wall time.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Reads a field of type `T` at `off`, `None` when absent or unreadable.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, off: u16) -> Option<T> {
    if off == FIELD_ABSENT {
        return None;
    }
    unsafe { ctx.read_at::<T>(off as usize).ok() }
}

#[inline(always)]
pub fn port_watched(port: u16) -> bool {
    match PORTS.get(u32::from(port >> 6)) {
        Some(word) => *word & (1u64 << (port & 63)) != 0,
        None => false,
    }
}

/// In endpoint mode, whether one end of `t` is a watched endpoint; always
/// true in port mode. Called only for watched ports (after [`port_watched`]),
/// so unwatched traffic never pays for the two lookups. The key is built in
/// a per-CPU scratch slot, not on the stack (the classifier's call chain is
/// near the 512-byte limit), and as the socket or packet gives it: the
/// daemon writes an IPv4 endpoint in both its forms (IPv4 and IPv4-mapped
/// IPv6), so no folding is verified here.
#[inline(always)]
// `get(*k)` would copy the key onto the stack: the reference is the point.
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn endpoint_watched(t: &Tuple) -> bool {
    if RUNTIME.get(RUNTIME_ENDPOINTS).copied().unwrap_or(0) == 0 {
        return true;
    }
    let Some(k) = ENDPOINT_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot of this map, used only within this call.
    let k = unsafe { &mut *k };
    k.family = t.family;
    k.addr = t.daddr;
    k.port = t.dport;
    k._pad = 0;
    if unsafe { ENDPOINTS.get(&*k) }.is_some() {
        return true;
    }
    k.addr = t.saddr;
    k.port = t.sport;
    unsafe { ENDPOINTS.get(&*k) }.is_some()
}

/// Reads family and ports only, so unwatched traffic is dropped before the
/// more expensive address reads.
#[inline(always)]
pub fn read_ports(ctx: &TracePointContext, t: &TupleLayout) -> Option<(u16, u16, u16)> {
    match t.style {
        tuple_style::FIELDS => {
            let family = field::<u16>(ctx, t.family).unwrap_or(AF_INET);
            Some((family, field(ctx, t.sport)?, field(ctx, t.dport)?))
        }
        tuple_style::SOCKADDR => {
            let family = field::<u16>(ctx, t.saddr)?;
            let sport = u16::from_be(field::<u16>(ctx, t.saddr.wrapping_add(2))?);
            let dport = u16::from_be(field::<u16>(ctx, t.daddr.wrapping_add(2))?);
            Some((family, sport, dport))
        }
        _ => None,
    }
}

/// Reads the addresses into `tuple` (family and ports already set).
#[inline(always)]
pub fn read_addrs(ctx: &TracePointContext, t: &TupleLayout, tuple: &mut Tuple) -> Option<()> {
    match (t.style, tuple.family) {
        (tuple_style::FIELDS, AF_INET) => {
            let s: [u8; 4] = field(ctx, t.saddr)?;
            let d: [u8; 4] = field(ctx, t.daddr)?;
            tuple.saddr[..4].copy_from_slice(&s);
            tuple.daddr[..4].copy_from_slice(&d);
        }
        (tuple_style::FIELDS, AF_INET6) => {
            tuple.saddr = field(ctx, t.saddr_v6)?;
            tuple.daddr = field(ctx, t.daddr_v6)?;
        }
        (tuple_style::SOCKADDR, AF_INET) => {
            let s: [u8; 4] = field(ctx, t.saddr.wrapping_add(4))?;
            let d: [u8; 4] = field(ctx, t.daddr.wrapping_add(4))?;
            tuple.saddr[..4].copy_from_slice(&s);
            tuple.daddr[..4].copy_from_slice(&d);
        }
        (tuple_style::SOCKADDR, AF_INET6) => {
            tuple.saddr = field(ctx, t.saddr.wrapping_add(8))?;
            tuple.daddr = field(ctx, t.daddr.wrapping_add(8))?;
        }
        _ => return None,
    }
    Some(())
}

/// The record's tuple if either port is watched, else `None`.
#[inline(always)]
pub fn watched_tuple(ctx: &TracePointContext, t: &TupleLayout) -> Option<Tuple> {
    let ports = read_ports(ctx, t)?;
    if !ports_watched(ports) {
        return None;
    }
    complete_tuple(ctx, ports, |tuple| read_addrs(ctx, t, tuple))
}

/// Whether either port of `(family, sport, dport)` is watched.
#[inline(always)]
pub fn ports_watched((_, sport, dport): (u16, u16, u16)) -> bool {
    port_watched(sport) || port_watched(dport)
}

/// The tuple of a record whose ports are watched: `addrs` reads the
/// addresses, then the endpoint filter decides; `None` when filtered out or
/// unreadable (counted).
#[inline(always)]
pub fn complete_tuple<A: FnOnce(&mut Tuple) -> Option<()>>(
    ctx: &TracePointContext,
    (family, sport, dport): (u16, u16, u16),
    addrs: A,
) -> Option<Tuple> {
    let mut tuple = Tuple::new(family, sport, dport);
    if addrs(&mut tuple).is_none() {
        // A watched connection whose addresses cannot be read means the
        // layout handed over at load does not fit this record: say so.
        aya_log_ebpf::warn!(
            ctx,
            "watched port {} -> {}: addresses unreadable (family {}); event dropped",
            sport,
            dport,
            family
        );
        count_lost(LOST_LAYOUT);
        return None;
    }
    if !endpoint_watched(&tuple) {
        return None;
    }
    Some(tuple)
}

/// Reserves a record in the ring buffer, lets `fill` write it and submits it.
/// A full ring buffer is counted, never silent.
#[inline(always)]
pub fn emit<F: FnOnce(&mut RawEvent)>(kind: u8, tuple: &Tuple, fill: F) {
    let Some(mut entry) = EVENTS.reserve::<RawEvent>(0) else {
        count_lost(LOST_RINGBUF_FULL);
        count_lost(LOST_KIND_BASE + u32::from(kind));
        return;
    };
    // Zeroed a word at a time. `RawEvent::zeroed()` compiles to a call of
    // the BPF object's `memset`, a byte loop: 144 iterations, about 700
    // instructions per event, more than the rest of most programs.
    zero_words(entry.as_mut_ptr());
    // SAFETY: every byte was just initialised, and zero is a valid RawEvent.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.ts_ns = now();
    ev.kind = kind;
    ev.family = tuple.family;
    ev.sport = tuple.sport;
    ev.dport = tuple.dport;
    ev.saddr = tuple.saddr;
    ev.daddr = tuple.daddr;
    fill(ev);
    // Waking the reader costs an irq_work: a self-IPI, which under
    // virtualisation is a VM exit (measured here: about 20 µs each, 1 % of
    // the whole machine at 30 000 events/s when the reader was woken every
    // 8 KiB). The reader drains on a short timer anyway (50 ms), so it is
    // woken only when the ring is half full: a burst that would fill it
    // before the next timer.
    let pending = EVENTS.query(u64::from(aya_ebpf::bindings::BPF_RB_AVAIL_DATA));
    let size = EVENTS.query(u64::from(aya_ebpf::bindings::BPF_RB_RING_SIZE));
    if pending >= size / 2 {
        entry.submit(u64::from(aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP));
    } else {
        entry.submit(u64::from(aya_ebpf::bindings::BPF_RB_NO_WAKEUP));
    }
}

/// Zeroes `*p` with 8-byte stores, volatile so that LLVM cannot fold them
/// back into a `memset` call (see [`Tuple::new`]).
#[inline(always)]
pub fn zero_words<T>(p: *mut T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8) && core::mem::align_of::<T>() >= 8) };
    let words = p.cast::<u64>();
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: inside `*p`, whose size is a multiple of 8 and which is
        // 8-aligned (checked above).
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// Records the current task (for events raised in process context).
#[inline(always)]
pub fn set_task(ev: &mut RawEvent) {
    ev.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Straight into the (zeroed) record: the helper's wrapper would zero a
    // byte-aligned stack copy first, a call of the byte-loop `memset`.
    // On failure the helper zeroes the buffer itself.
    // SAFETY: `comm` is 16 writable bytes.
    unsafe { bpf_get_current_comm(ev.comm.as_mut_ptr().cast(), ev.comm.len() as u32) };
}

/// Records the connecting task and its cgroup v2 id (`aux[0]`), for a
/// connect attempt: connect() runs in the process that owns the socket,
/// the one moment its pod can be told; the daemon keeps that owner for
/// the socket's later events (resets and closes run in softirq context,
/// whose current task is unrelated).
#[inline(always)]
pub fn set_owner(ev: &mut RawEvent) {
    set_task(ev);
    ev.aux[0] = unsafe { bpf_get_current_cgroup_id() };
}

#[inline(always)]
pub fn count_lost(slot: u32) {
    if let Some(p) = LOST.get_ptr_mut(slot) {
        unsafe { *p += 1 };
    }
}

/// Reads a `T` at `off` bytes into the kernel socket `sk` (an offset from
/// BTF); `None` when the offset is unknown or the read fails.
#[inline(always)]
pub fn sk_read<T>(sk: u64, off: u16) -> Option<T> {
    if off == probe_common::FIELD_ABSENT {
        return None;
    }
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((sk + u64::from(off)) as *const T).ok() }
}
