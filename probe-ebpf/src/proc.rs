//! Lifecycle of the watched processes: the apiserver (by name) and whatever
//! owns a listener on a watched port. `signal:signal_generate` reports
//! SIGTERM/SIGKILL/SIGINT/SIGQUIT sent to them, `sched:sched_process_exit`
//! their exit, `sched:sched_process_exec` a watched name starting.

use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::map,
    maps::{Array, LruHashMap},
    programs::TracePointContext,
};
use probe_common::{ProcLayout, WATCH_COMMS, kind};

use crate::event::{Tuple, emit, field};

/// Record offsets, from tracefs at load.
#[unsafe(no_mangle)]
pub static PROC_LAYOUT: Global<ProcLayout> = Global::new(ProcLayout::ABSENT);

/// Process names to watch (e.g. "kube-apiserver"), from `--watch-comm`,
/// as two native-endian u64 halves each; all-zero slots are unused. A map,
/// not a global, so comparing reads in place instead of copying to the stack.
#[map]
pub static WATCH_COMM_NAMES: Array<[u64; 2]> = Array::with_max_entries(WATCH_COMMS as u32, 0);

/// Thread-group ids being watched, with why: 1 = by name, 2 = owns a
/// listener on a watched port.
#[map]
pub static WATCHED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

pub const BY_NAME: u8 = 1;
pub const BY_LISTENER: u8 = 2;

const SIGINT: i32 = 2;
const SIGQUIT: i32 = 3;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

const NO_TUPLE: Tuple = Tuple {
    family: 0,
    sport: 0,
    dport: 0,
    saddr: [0; 16],
    daddr: [0; 16],
};

/// Compares as two u64 halves: BPF has no memcmp.
#[inline(always)]
fn comm_watched(comm: &[u8; 16]) -> bool {
    let c0 = u64::from_ne_bytes([
        comm[0], comm[1], comm[2], comm[3], comm[4], comm[5], comm[6], comm[7],
    ]);
    let c1 = u64::from_ne_bytes([
        comm[8], comm[9], comm[10], comm[11], comm[12], comm[13], comm[14], comm[15],
    ]);
    for i in 0..WATCH_COMMS as u32 {
        if let Some(n) = WATCH_COMM_NAMES.get(i)
            && n[0] != 0
            && n[0] == c0
            && n[1] == c1
        {
            return true;
        }
    }
    false
}

/// Called when the current task opens a listener on a watched port.
#[inline(always)]
pub fn watch_current_listener() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = WATCHED.insert(tgid, BY_LISTENER, 0);
}

pub fn signal_generate(ctx: &TracePointContext) -> Option<()> {
    let l = PROC_LAYOUT.load();
    if l.signal_present == 0 {
        return None;
    }
    let sig = field::<i32>(ctx, l.sig)?;
    if !matches!(sig, SIGTERM | SIGKILL | SIGINT | SIGQUIT) {
        return None;
    }
    let pid = field::<i32>(ctx, l.sig_pid)? as u32;
    let comm: [u8; 16] = field(ctx, l.sig_comm)?;
    let known = unsafe { WATCHED.get(pid) }.is_some();
    // With a namespace filter only known processes count: the target's
    // namespace cannot be read here, but WATCHED is filled per namespace.
    if !known && (crate::netns::filtering() || !comm_watched(&comm)) {
        return None;
    }
    let result = field::<i32>(ctx, l.sig_result).unwrap_or(0);
    let sender = (bpf_get_current_pid_tgid() >> 32) as u32;
    emit(kind::SIGNAL, &NO_TUPLE, |ev| {
        ev.pid = pid;
        ev.comm = comm;
        ev.reason = sig as u32;
        ev.aux32 = sender;
        ev.errno = result;
    });
    Some(())
}

pub fn process_exit(ctx: &TracePointContext) -> Option<()> {
    let l = PROC_LAYOUT.load();
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // Only the thread-group leader's exit is the process's.
    if l.exit_present == 0 || tgid != tid {
        return None;
    }
    let comm = bpf_get_current_comm().ok()?;
    let known = unsafe { WATCHED.get(tgid) }.is_some();
    if !known && !(comm_watched(&comm) && crate::netns::current_ok()) {
        return None;
    }
    let _ = WATCHED.remove(tgid);
    let _ = field::<i32>(ctx, l.exit_pid);
    emit(kind::PROCESS_EXIT, &NO_TUPLE, |ev| {
        ev.pid = tgid;
        ev.comm = comm;
    });
    Some(())
}

pub fn process_exec(_ctx: &TracePointContext) -> Option<()> {
    // After exec the task already carries the new name.
    let comm = bpf_get_current_comm().ok()?;
    if !comm_watched(&comm) || !crate::netns::current_ok() {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = WATCHED.insert(tgid, BY_NAME, 0);
    emit(kind::PROCESS_EXEC, &NO_TUPLE, |ev| {
        ev.pid = tgid;
        ev.comm = comm;
    });
    Some(())
}
