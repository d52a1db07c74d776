//! goh2: HTTP/2 GOAWAY and RST_STREAM inside TLS, from uprobes in Go
//! programs' own HTTP/2 code. One program, attached by the daemon at six
//! functions of each copy of the code (x/net and the `net/http` bundle):
//! the `Framer` writers for frames sent, and the server's and the client's
//! `process*` methods for frames received. They run only for those frames,
//! never per write. The arguments come from Go's register ABI; the
//! connection is found by walking interface values from the receiver to the
//! `*net.TCPConn`, its fd, and through the task's file table to the kernel
//! socket, so the event carries the same socket and 4-tuple as every other.

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::pt_regs,
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf,
        generated::{bpf_get_attach_cookie, bpf_get_current_task},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::ProbeContext,
};
use probe_common::{
    FileLayout, GO_DEBUG_BYTES, GO_MAX_BINARIES, GO_MAX_COOKIES, GO_MAX_HOPS, GO_MAX_PROBES,
    GO_MAX_TYPES, GO_STAT_SLOTS, GoLayout, GoProbe, GoTypeKey, GoTypeStep, H2_REFUSED_STREAM,
    flags, go_hook, go_stat, kind,
};

use crate::event::{Tuple, emit, set_task};

/// Probe address in the process -> which hook of which binary (kernels
/// without attach cookies: one entry per process for PIE binaries).
#[map]
pub static GO_PROBES: HashMap<u64, GoProbe> = HashMap::with_max_entries(GO_MAX_PROBES, 0);

/// Attach cookie -> which hook of which binary (5.15+: the cookie names the
/// probe, so a PIE process needs no entry of its own).
#[map]
pub static GO_COOKIES: Array<GoProbe> = Array::with_max_entries(GO_MAX_COOKIES, 0);

/// (binary, method address) -> how to step through that connection type.
#[map]
pub static GO_TYPES: HashMap<GoTypeKey, GoTypeStep> = HashMap::with_max_entries(GO_MAX_TYPES, 0);

/// Per binary: the struct offsets of its Go version.
#[map]
pub static GO_LAYOUTS: Array<GoLayout> = Array::with_max_entries(GO_MAX_BINARIES, 0);

/// What the hooks could not report, per CPU (see `go_stat`).
#[map]
pub static GO_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GO_STAT_SLOTS, 0);

/// Kernel offsets from the task to a socket, from BTF.
#[unsafe(no_mangle)]
pub static FILE_LAYOUT: Global<FileLayout> = Global::new(FileLayout::ABSENT);

#[inline(always)]
fn stat(slot: u32) {
    if let Some(p) = GO_STATS.get_ptr_mut(slot) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn user<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    unsafe { bpf_probe_read_user(addr as *const T).ok() }
}

#[inline(always)]
fn kern<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// The kernel `struct sock` behind file descriptor `fd` of the current
/// task, when that file is a socket (`socket->file == file` proves it).
#[inline(always)]
fn fd_sock(fd: u64) -> Option<u64> {
    let l = FILE_LAYOUT.load();
    if l.present == 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kern(task + u64::from(l.task_files))?;
    let fdt: u64 = kern(files + u64::from(l.files_fdt))?;
    let max: u32 = kern(fdt + u64::from(l.fdt_max_fds))?;
    if fd >= u64::from(max) {
        return None;
    }
    let table: u64 = kern(fdt + u64::from(l.fdt_fd))?;
    let file: u64 = kern(table + 8 * fd)?;
    let socket: u64 = kern(file + u64::from(l.file_private_data))?;
    let back: u64 = kern(socket + u64::from(l.socket_file))?;
    if back != file {
        return None;
    }
    kern(socket + u64::from(l.socket_sk))
}

/// What `conn_fd` returns when the connection is already closed (Go sets
/// `Sysfd` to -1): a frame written then never reaches the wire.
const CLOSED: u64 = u64::MAX;

/// Follows the interface value at `at` to a `*net.TCPConn` and returns its
/// fd, or the unknown type's method address (link time) where it stops
/// (0: unreadable; `CLOSED`: the connection is closed).
#[inline(always)]
fn conn_fd(at: u64, p: &GoProbe, l: &GoLayout, bias: u64) -> Result<u64, u64> {
    let mut tab: u64 = user(at).ok_or(0u64)?;
    let mut data: u64 = user(at + 8).ok_or(0u64)?;
    for _ in 0..GO_MAX_HOPS {
        let fun0: u64 = user(tab + u64::from(l.itab_fun0)).ok_or(0u64)?;
        let key = GoTypeKey {
            binary: p.binary,
            _pad: 0,
            pc: fun0.wrapping_sub(bias),
        };
        let step: GoTypeStep = match unsafe { GO_TYPES.get(key) } {
            Some(s) => *s,
            None => return Err(key.pc),
        };
        if step.terminal != 0 {
            let net_fd: u64 = user(data + u64::from(l.tcp_conn_fd)).ok_or(0u64)?;
            let fd: i64 = user(net_fd + u64::from(l.net_fd_sysfd)).ok_or(0u64)?;
            return u64::try_from(fd).map_err(|_| CLOSED);
        }
        let next = data + u64::from(step.next_off);
        tab = user(next).ok_or(0u64)?;
        data = user(next + 8).ok_or(0u64)?;
    }
    Err(0)
}

/// A frame as the hook sees it.
struct Frame {
    kind: u8,
    id: u32,
    code: u32,
    debug_ptr: u64,
    debug_len: u64,
    received: bool,
}

#[inline(always)]
fn frame(r: &pt_regs, hook: u8, l: &GoLayout) -> Option<Frame> {
    // Go's register ABI: receiver in RAX, then RBX, RCX, RDI, RSI, ...;
    // 32-bit arguments leave the upper half undefined.
    let f = r.rbx;
    Some(match hook {
        go_hook::WRITE_GOAWAY => Frame {
            kind: kind::GOAWAY,
            id: r.rbx as u32,
            code: r.rcx as u32,
            debug_ptr: r.rdi,
            debug_len: r.rsi,
            received: false,
        },
        go_hook::WRITE_RST_STREAM => Frame {
            kind: kind::RST_STREAM,
            id: r.rbx as u32,
            code: r.rcx as u32,
            debug_ptr: 0,
            debug_len: 0,
            received: false,
        },
        go_hook::SERVER_GOAWAY | go_hook::CLIENT_GOAWAY => Frame {
            kind: kind::GOAWAY,
            id: user(f + u64::from(l.goaway_last))?,
            code: user(f + u64::from(l.goaway_code))?,
            debug_ptr: user(f + u64::from(l.goaway_debug))?,
            debug_len: user(f + u64::from(l.goaway_debug) + 8)?,
            received: true,
        },
        go_hook::SERVER_RST_STREAM | go_hook::CLIENT_RST_STREAM => Frame {
            kind: kind::RST_STREAM,
            id: user(f + u64::from(l.frame_stream))?,
            code: user(f + u64::from(l.rst_code))?,
            debug_ptr: 0,
            debug_len: 0,
            received: true,
        },
        _ => return None,
    })
}

/// The entry without cookies: the probe is found by its address.
pub fn hook(ctx: &ProbeContext) -> Option<()> {
    let r = unsafe { &*ctx.regs };
    // The kernel sets the ip to the probe's address before the handler
    // runs; the second look-up covers a kernel that leaves it after the
    // breakpoint instruction.
    let ip = r.rip;
    let p = match unsafe { GO_PROBES.get(ip) } {
        Some(p) => *p,
        None => match unsafe { GO_PROBES.get(ip.wrapping_sub(1)) } {
            Some(p) => *p,
            None => {
                stat(go_stat::UNCONFIGURED);
                return None;
            }
        },
    };
    report(ctx, r, p)
}

/// The entry with attach cookies (5.15+): the cookie indexes `GO_COOKIES`.
pub fn hook_cookie(ctx: &ProbeContext) -> Option<()> {
    let r = unsafe { &*ctx.regs };
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let p = match GO_COOKIES.get(cookie as u32) {
        Some(p) if p.link_va != 0 => *p,
        _ => {
            stat(go_stat::UNCONFIGURED);
            return None;
        }
    };
    report(ctx, r, p)
}

fn report(_ctx: &ProbeContext, r: &pt_regs, p: GoProbe) -> Option<()> {
    let ip = r.rip;
    let l = *GO_LAYOUTS.get(p.binary)?;
    let bias = ip.wrapping_sub(p.link_va) & !0xfff;
    let fr = frame(r, p.hook, &l)?;
    if fr.kind == kind::RST_STREAM {
        let base = if fr.received {
            go_stat::RST_RECEIVED_BASE
        } else {
            go_stat::RST_SENT_BASE
        };
        stat(base + fr.code.min(15));
        if fr.code != H2_REFUSED_STREAM {
            return None;
        }
    }
    let iface = match p.hook {
        go_hook::WRITE_GOAWAY | go_hook::WRITE_RST_STREAM => r.rax + u64::from(l.framer_r),
        go_hook::SERVER_GOAWAY | go_hook::SERVER_RST_STREAM => r.rax + u64::from(l.server_conn),
        _ => {
            let cc: u64 = user(r.rax + u64::from(l.read_loop_cc))?;
            cc + u64::from(l.client_tconn)
        }
    };
    let mut tuple = Tuple::new(0, 0, 0);
    let mut sock = 0u64;
    let mut unknown_pc = 0u64;
    match conn_fd(iface, &p, &l, bias) {
        Ok(fd) => match fd_sock(fd) {
            Some(sk) => {
                // Only watched ports: a gRPC client (say, to etcd) uses the
                // same Framer.
                match crate::kprobe::sock_tuple(sk) {
                    Some(t) => tuple = t,
                    None => {
                        stat(go_stat::UNWATCHED);
                        return None;
                    }
                }
                if !crate::netns::sk_ok(sk) {
                    return None;
                }
                sock = sk;
            }
            // The fd no longer names a socket: the connection closed between
            // Go's close and its marking the fd -1. Not on the wire either.
            None => {
                stat(go_stat::CLOSED_CONNECTION);
                return None;
            }
        },
        Err(CLOSED) => {
            stat(go_stat::CLOSED_CONNECTION);
            return None;
        }
        Err(pc) => {
            unknown_pc = pc;
            stat(go_stat::UNATTRIBUTED);
        }
    }
    let server = matches!(p.hook, go_hook::SERVER_GOAWAY | go_hook::SERVER_RST_STREAM);
    emit(fr.kind, &tuple, |ev| {
        ev.sock = sock;
        ev.aux32 = fr.id;
        ev.reason = fr.code;
        ev.flags = flags::FROM_UPROBE;
        if fr.received {
            ev.flags |= flags::INGRESS;
        }
        if server {
            ev.flags |= flags::GO_SERVER;
        }
        if p.bundle != 0 {
            ev.flags |= flags::GO_BUNDLE;
        }
        if sock == 0 {
            ev.flags |= flags::UNATTRIBUTED;
            ev.aux[3] = unknown_pc;
        }
        set_task(ev);
        if fr.kind == kind::GOAWAY {
            ev.duration_ns = fr.debug_len;
            let n = fr.debug_len.min(GO_DEBUG_BYTES as u64) as usize;
            if n > 0 && n <= GO_DEBUG_BYTES && fr.debug_ptr != 0 {
                let buf =
                    unsafe { core::slice::from_raw_parts_mut(ev.aux.as_mut_ptr().cast::<u8>(), n) };
                let _ = unsafe { bpf_probe_read_user_buf(fr.debug_ptr as *const u8, buf) };
            }
        }
    });
    Some(())
}
