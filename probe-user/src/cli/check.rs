//! `drainwatch run --check`: what this host supports and what would be used.

use std::process::ExitCode;

use crate::{
    daemon,
    kernel::{
        btf,
        load::{self as loader, HookState, LoadOptions},
        programs::Program,
        tracefs,
    },
};

/// `run --check`: what this host supports and what would be used.
pub fn check(load: &LoadOptions) -> anyhow::Result<ExitCode> {
    println!("kernel      {}", daemon::kernel_release());
    let btf = std::path::Path::new(btf::VMLINUX_BTF).exists();
    println!(
        "BTF         {}",
        if btf {
            btf::VMLINUX_BTF
        } else {
            "absent (kprobe path off)"
        }
    );
    match tracefs::ensure_mounted() {
        Ok(root) => println!("tracefs     {}", root.display()),
        Err(e) => println!("tracefs     unavailable: {e}"),
    }
    println!("ports       {:?}", load.ports);
    println!("ring buffer {} bytes", load.ringbuf_bytes);
    match &load.wire {
        Some(w) => println!("wire        TC classifier on {}", w.place()),
        None => println!("wire        off (--no-wire)"),
    }
    let loaded = loader::load(load)?;
    println!("hooks:");
    let mut core_ok = false;
    for h in &loaded.hooks {
        let insns = h
            .insns
            .map(|n| format!(" ({n} insns verified)"))
            .unwrap_or_default();
        let line = match &h.state {
            HookState::Attached => format!("  used         {}{insns}", h.name()),
            HookState::Standby(why) => format!("  standby      {}{insns}: {why}", h.name()),
            HookState::Unavailable(why) => format!("  unavailable  {}{insns}: {why}", h.name()),
        };
        println!("{line}");
        if h.program == Program::InetSockSetState && h.attached() {
            core_ok = true;
        }
    }
    if !loaded.hooks.iter().any(|h| h.insns.is_some()) {
        println!(
            "verified instruction counts: not reported by this kernel (bpf_prog_info.verified_insns, Linux 5.16+)"
        );
    }
    if !loaded.reset_reasons.is_empty() {
        println!(
            "reset reasons: {} known to this kernel",
            loaded.reset_reasons.len()
        );
    }
    drop(loaded);
    Ok(if core_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
