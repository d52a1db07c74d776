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
    match &load.endpoints {
        None => println!(
            "watching    every connection on these ports (port mode: a master; --apiserver-endpoint for a client node)"
        ),
        Some(e) => {
            println!(
                "watching    only these apiserver endpoints on them (endpoint mode, names resolved again every {}s):",
                crate::sources::endpoints::RESOLVE_EVERY.as_secs()
            );
            for l in e.resolved.lines() {
                println!("  {l}");
            }
        }
    }
    println!("ring buffer {} bytes", load.ringbuf_bytes);
    println!(
        "sockets     {} at most, {} bytes each: {}",
        load.socket_table,
        probe_common::SOCK_ENTRY_BYTES,
        mib(load.socket_table, probe_common::SOCK_ENTRY_BYTES)
    );
    match &load.wire {
        Some(w) => {
            println!("wire        TC classifier on {}", w.place());
            println!(
                "flows       {} at most, {} bytes each: {}",
                w.flow_table,
                probe_common::FLOW_ENTRY_BYTES,
                mib(w.flow_table, probe_common::FLOW_ENTRY_BYTES)
            );
        }
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
    if load.go_uprobes {
        go_binaries(load);
    }
    Ok(if core_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The Go binaries the uprobes would hook now (watched names, listener
/// owners, `--go-client` names), one line per binary with its hooks or why
/// not; clients that connect to a watched port later are hooked then.
fn go_binaries(load: &LoadOptions) {
    use std::os::unix::fs::MetadataExt as _;
    let mut names = load.watch_comms.clone();
    names.extend(load.go_clients.iter().cloned());
    let pids = crate::kernel::procscan::watched_processes(&names, &load.ports, load.netns);
    println!("Go HTTP/2 (uprobes, GOAWAY and refused streams inside TLS):");
    let mut seen = std::collections::HashSet::new();
    for (pid, _) in pids {
        let exe = format!("/proc/{pid}/exe");
        let Ok(meta) = std::fs::metadata(&exe) else {
            continue;
        };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let path = std::fs::read_link(&exe)
            .map(|p| p.display().to_string())
            .unwrap_or(exe.clone());
        match crate::gobin::plan_file(std::path::Path::new(&exe)).map_err(|e| e.to_string()) {
            Ok(plan) => {
                println!(
                    "  {path} (pid {pid}, {}, {}): {} hooks: {}",
                    plan.go_version.as_deref().unwrap_or("Go version unknown"),
                    if plan.pie { "PIE" } else { "not PIE" },
                    plan.hooks.len(),
                    plan.summary()
                );
                for (name, why) in &plan.skipped {
                    println!("    not hooked: {name}: {why}");
                }
            }
            Err(why) => println!("  {path} (pid {pid}): not hooked: {why}"),
        }
    }
    if seen.is_empty() {
        println!(
            "  no watched Go process runs now; each is hooked when it starts, listens or connects"
        );
    }
}

/// A table's kernel memory, preallocated at load, in MiB.
fn mib(entries: u32, per_entry: usize) -> String {
    let bytes = u64::from(entries) * per_entry as u64;
    format!(
        "{:.1} MiB, preallocated",
        bytes as f64 / f64::from(1u32 << 20)
    )
}
