//! drainwatch's kernel programs. Thin entry points; the work is in one
//! module per area: `conn` (connection lifecycle), `reset` (RSTs), `kprobe`
//! (the kprobe path), `wire` (the TC classifier), `goh2` (uprobes in Go
//! programs' HTTP/2 code).
#![no_std]
#![no_main]

mod conn;
mod event;
mod goh2;
mod kprobe;
mod maps;
mod netns;
mod proc;
mod reset;
mod wire;

use aya_ebpf::{
    macros::{classifier, kprobe, tracepoint, uprobe},
    programs::{ProbeContext, TcContext, TracePointContext},
};

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = conn::set_state(&ctx);
    0
}

#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    let _ = conn::error_report(&ctx);
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = conn::retransmit(&ctx);
    0
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let _ = conn::destroy_sock(&ctx);
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let _ = reset::send_reset(&ctx);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let _ = reset::receive_reset(&ctx);
    0
}

#[tracepoint(category = "signal", name = "signal_generate")]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let _ = proc::signal_generate(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = proc::process_exit(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = proc::process_exec(&ctx);
    0
}

#[kprobe]
pub fn kprobe_tcp_connect(ctx: ProbeContext) -> u32 {
    let _ = kprobe::tcp_connect(&ctx);
    0
}

#[kprobe]
pub fn kprobe_tcp_reset(ctx: ProbeContext) -> u32 {
    let _ = kprobe::tcp_reset(&ctx);
    0
}

/// Attached by the daemon in Go binaries, at each HTTP/2 GOAWAY and
/// RST_STREAM writer and reader (see `goh2`); 5.15+, with attach cookies.
#[uprobe]
pub fn go_h2_cookie(ctx: ProbeContext) -> u32 {
    let _ = goh2::hook_cookie(&ctx);
    0
}

/// The same for kernels without attach cookies (the verifier there rejects
/// the cookie helper).
#[uprobe]
pub fn go_h2(ctx: ProbeContext) -> u32 {
    let _ = goh2::hook(&ctx);
    0
}

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    wire::classify(&ctx, true)
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    wire::classify(&ctx, false)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
