//! `drainwatch bench-classifier` (hidden; used by `cargo xtask bench wire`):
//! runs the real TC classifier in this kernel on crafted packets with
//! BPF_PROG_TEST_RUN, many times, and prints the kernel's average time per
//! run. No traffic, no noise from other processes' packets.

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use pnet_packet::tcp::TcpFlags;

use crate::kernel::{
    craft::{seg, v4, v6},
    load::{self as loader, LoadOptions, WireOptions},
};

pub fn run(repeat: u32) -> anyhow::Result<()> {
    let mut loaded = loader::load(&LoadOptions {
        ports: vec![6443],
        ringbuf_bytes: 1 << 22,
        socket_table: 1024,
        kernel_log_level: 0,
        kprobes: false,
        wire: Some(WireOptions {
            ifaces: Vec::new(),
            flow_table: 1024,
            attach: loader::TcAttach::Auto,
            state_dir: None,
            netns: None,
        }),
        watch_comms: Vec::new(),
        netns: None,
        go_uprobes: false,
        go_clients: Vec::new(),
        endpoints: None,
    })?;
    // Events are not read here; a full ring buffer only counts losses.
    let ack = TcpFlags::ACK;
    let payload = [0u8; 1200];
    let cases = [
        (
            "unwatched port, ACK",
            v4(&seg(40000, 5201, 1, ack, &[]), 5, 5),
        ),
        (
            "unwatched port, IPv6 ACK",
            v6(&seg(40000, 5201, 1, ack, &[]), &[]),
        ),
        (
            "watched port, ACK",
            v4(&seg(40000, 6443, 1, ack, &[]), 5, 5),
        ),
        (
            "watched port, 1200-byte payload",
            v4(&seg(40001, 6443, 1, ack | TcpFlags::PSH, &payload), 5, 5),
        ),
    ];
    println!("| packet | classifier ns/run ({repeat} runs, BPF_PROG_TEST_RUN) |");
    println!("|---|---|");
    for (name, frame) in &cases {
        let prog: &mut SchedClassifier = loaded
            .ebpf
            .program_mut("tc_ingress")
            .ok_or_else(|| anyhow::anyhow!("tc_ingress missing from the object"))?
            .try_into()?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let res = prog.test_run(opts)?;
        println!("| {name} | {} |", res.duration.as_nanos());
    }
    Ok(())
}
