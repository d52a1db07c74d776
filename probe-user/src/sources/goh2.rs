//! goh2, the user half: finds Go programs to hook (the watched process
//! names, the owners of watched listeners, and every process the kernel
//! programs saw open a connection on a watched port), plans each binary's
//! hooks from its own function table ([`crate::gobin`]), attaches the
//! `go_h2` uprobe program there and writes the maps it reads. The kernel
//! half is `probe-ebpf/src/goh2.rs`.
//!
//! Uprobes attach to a file (inode), not a process: one attachment covers
//! every process of that binary, present and future. Binaries are kept in a
//! ledger by (device, inode), so an upgraded binary (a new inode) is
//! attached anew, and detached once no process runs it.
//!
//! Blind spot: a position-independent binary needs one map entry per
//! process (its load address); a process started after the binary was
//! attached and hitting a hook before the daemon has seen it is counted in
//! `drainwatch_go_h2_unreported_total{reason="unconfigured"}`.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    sync::Arc,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use probe_common::{GO_MAX_BINARIES, GoLayout, GoProbe, GoTypeKey, GoTypeStep, go_stat};
use tokio::sync::{mpsc, watch};

use crate::{export::metrics::Metrics, gobin, kernel::load::percpu_total};

/// A process the pipeline saw on a watched port or starting: a candidate.
#[derive(Debug, Clone, Copy)]
pub struct Hint {
    pub pid: u32,
    /// It has just exec'd or opened a listener: a pid already seen may run
    /// another binary now (a wrapper's `exec` of the real server).
    pub recheck: bool,
}

/// What the daemon tells this task.
pub struct Options {
    /// Process names to hook (the watched names plus `--go-clients`).
    pub names: Vec<String>,
    pub ports: Vec<u16>,
    pub netns: Option<u32>,
    /// Attach with cookies (`go_h2_cookie`, 5.15+); else `go_h2`, with
    /// probe addresses per process for PIE binaries.
    pub cookies: bool,
}

/// How often processes are scanned besides the events' hints.
const RESCAN: Duration = Duration::from_secs(10);

/// One attached binary.
struct Binary {
    id: u32,
    path: String,
    plan: gobin::Plan,
    links: Vec<UProbeLinkId>,
    /// Probe addresses shared by every process (non-PIE).
    shared: Vec<u64>,
    /// Live processes running it, with their own probe addresses (PIE).
    pids: HashMap<u32, Vec<u64>>,
}

struct State {
    ebpf: Ebpf,
    probes: BpfHashMap<MapData, u64, GoProbe>,
    types: BpfHashMap<MapData, GoTypeKey, GoTypeStep>,
    layouts: Array<MapData, GoLayout>,
    cookies: Option<Array<MapData, GoProbe>>,
    program: &'static str,
    binaries: HashMap<(u64, u64), Binary>,
    /// Binaries that cannot be hooked, with why (said once each).
    refused: HashMap<(u64, u64), String>,
    /// Processes already looked at, with the executable they ran then (so a
    /// busy client's every connect is cheap; an exec looks again).
    seen: HashMap<u32, (u64, u64)>,
    free_ids: Vec<u32>,
    metrics: Arc<Metrics>,
}

/// The maps the task writes and reads: probes, types, layouts, stats.
type GoMaps = (
    BpfHashMap<MapData, u64, GoProbe>,
    BpfHashMap<MapData, GoTypeKey, GoTypeStep>,
    Array<MapData, GoLayout>,
    PerCpuArray<MapData, u64>,
);

/// Takes the maps the task writes out of the object.
fn take_maps(ebpf: &mut Ebpf) -> anyhow::Result<GoMaps> {
    let take = |e: &mut Ebpf, n: &str| {
        e.take_map(n)
            .ok_or_else(|| anyhow::anyhow!("the kernel object has no map {n}"))
    };
    Ok((
        BpfHashMap::try_from(take(ebpf, "GO_PROBES")?)?,
        BpfHashMap::try_from(take(ebpf, "GO_TYPES")?)?,
        Array::try_from(take(ebpf, "GO_LAYOUTS")?)?,
        PerCpuArray::try_from(take(ebpf, "GO_STATS")?)?,
    ))
}

/// Runs until `stop` changes. Owns the object: the uprobe program attaches
/// from here, and dropping the object at the end detaches everything.
pub async fn task(
    mut ebpf: Ebpf,
    opts: Options,
    mut pids: mpsc::Receiver<Hint>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (probes, types, layouts, stats) = take_maps(&mut ebpf)?;
    let cookies = if opts.cookies {
        let m = ebpf
            .take_map("GO_COOKIES")
            .ok_or_else(|| anyhow::anyhow!("the kernel object has no map GO_COOKIES"))?;
        Some(Array::try_from(m)?)
    } else {
        None
    };
    let mut st = State {
        ebpf,
        probes,
        types,
        layouts,
        program: if cookies.is_some() {
            "go_h2_cookie"
        } else {
            "go_h2"
        },
        cookies,
        binaries: HashMap::new(),
        refused: HashMap::new(),
        seen: HashMap::new(),
        free_ids: (0..GO_MAX_BINARIES).rev().collect(),
        metrics,
    };
    let mut rescan = tokio::time::interval(RESCAN);
    let mut stat_tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported = [0u64; 4];
    let mut rst_reported = [0u64; 32];
    loop {
        tokio::select! {
            _ = rescan.tick() => {
                let names = opts.names.clone();
                let ports = opts.ports.clone();
                let netns = opts.netns;
                st.forget_dead();
                let known: HashSet<u32> = st.seen.keys().copied().collect();
                let found = tokio::task::spawn_blocking(move || {
                    crate::kernel::procscan::watched_processes_except(&names, &ports, netns, &known)
                })
                .await
                .unwrap_or_default();
                for (pid, _) in found {
                    st.consider(pid, false).await;
                }
            }
            Some(h) = pids.recv() => st.consider(h.pid, h.recheck).await,
            _ = stat_tick.tick() => {
                for (i, (slot, reason)) in [
                    (go_stat::UNCONFIGURED, "unconfigured"),
                    (go_stat::UNATTRIBUTED, "unattributed"),
                    (go_stat::UNWATCHED, "unwatched_port"),
                    (go_stat::CLOSED_CONNECTION, "closed_connection"),
                ]
                .into_iter()
                .enumerate()
                {
                    let total = percpu_total(&stats, slot);
                    if total > reported[i] {
                        st.metrics
                            .go_h2_unreported
                            .with_label_values(&[reason])
                            .inc_by(total - reported[i]);
                        reported[i] = total;
                    }
                }
                for (i, seen) in rst_reported.iter_mut().enumerate() {
                    let (base, direction) = if i < 16 {
                        (go_stat::RST_SENT_BASE, "sent")
                    } else {
                        (go_stat::RST_RECEIVED_BASE, "received")
                    };
                    let code = (i % 16) as u32;
                    let total = percpu_total(&stats, base + code);
                    if total > *seen {
                        let name = if code == 15 {
                            "OTHER"
                        } else {
                            crate::decode::event::h2_error_name(code)
                        };
                        st.metrics
                            .go_rst_streams
                            .with_label_values(&[direction, name])
                            .inc_by(total - *seen);
                        *seen = total;
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    Ok(())
}

fn exe_key(pid: u32) -> Option<(u64, u64)> {
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The load bias of a PIE process: where its file's first page is mapped
/// minus where the file says it goes (`load_base`).
fn pie_bias(pid: u32, key: (u64, u64), load_base: u64) -> Option<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let range = f.next()?;
        let _perms = f.next()?;
        let offset = u64::from_str_radix(f.next()?, 16).ok()?;
        let dev = f.next()?;
        let ino: u64 = f.next()?.parse().ok()?;
        let (maj, min) = dev.split_once(':')?;
        let dev = libc::makedev(
            u32::from_str_radix(maj, 16).ok()?,
            u32::from_str_radix(min, 16).ok()?,
        );
        if offset != 0 || ino != key.1 || dev != key.0 {
            return None;
        }
        let start = u64::from_str_radix(range.split_once('-')?.0, 16).ok()?;
        Some(start.wrapping_sub(load_base))
    })
}

impl State {
    /// Hooks `pid`'s binary if it is a Go program with HTTP/2 (once per binary;
    /// a pid already seen is looked at again only on `recheck`).
    async fn consider(&mut self, pid: u32, recheck: bool) {
        if pid == 0 || pid == std::process::id() || (!recheck && self.seen.contains_key(&pid)) {
            return;
        }
        let Some(key) = exe_key(pid) else {
            return;
        };
        // By pid and executable: a process that execs another binary (a
        // shell wrapper's `exec kube-apiserver`) is a new candidate.
        if self.seen.insert(pid, key) == Some(key) {
            return;
        }
        if self.seen.len() > 65_536 {
            self.forget_dead();
        }
        if self.refused.contains_key(&key) {
            return;
        }
        if self.binaries.contains_key(&key) {
            self.add_process(key, pid);
            return;
        }
        let path = format!("/proc/{pid}/exe");
        let shown = std::fs::read_link(&path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.clone());
        let read = path.clone();
        let planned = tokio::task::spawn_blocking(move || {
            gobin::plan_file(std::path::Path::new(&read)).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let plan = match planned {
            Ok(p) => p,
            Err(why) => {
                // Once per binary (refused ones are remembered by file).
                tracing::info!("go: not hooking {shown} (pid {pid}): {why}");
                self.refused.insert(key, why);
                return;
            }
        };
        for (name, why) in &plan.skipped {
            tracing::warn!("go: {shown}: not hooking {name}: {why}");
        }
        match self.attach(key, pid, &path, &shown, plan) {
            Ok(()) => self
                .metrics
                .source_up
                .with_label_values(&["go_http2"])
                .set(1),
            Err(e) => {
                tracing::warn!("go: attaching to {shown} (pid {pid}) failed: {e:#}");
                self.refused.insert(key, format!("{e:#}"));
                self.metrics
                    .source_up
                    .with_label_values(&["go_http2"])
                    .set(0);
            }
        }
    }

    fn attach(
        &mut self,
        key: (u64, u64),
        pid: u32,
        path: &str,
        shown: &str,
        plan: gobin::Plan,
    ) -> anyhow::Result<()> {
        let Some(id) = self.free_ids.pop() else {
            anyhow::bail!("{GO_MAX_BINARIES} Go binaries are hooked already");
        };
        let mut links = Vec::new();
        let attached = (|| -> anyhow::Result<()> {
            self.layouts.set(id, plan.layout, 0)?;
            for t in &plan.conn_types {
                let k = GoTypeKey {
                    binary: id,
                    _pad: 0,
                    pc: t.pc,
                };
                let step = GoTypeStep {
                    terminal: u16::from(t.next_off.is_none()),
                    next_off: t.next_off.unwrap_or(0),
                    _pad: 0,
                };
                self.types.insert(k, step, 0)?;
            }
            let prog: &mut UProbe = self
                .ebpf
                .program_mut(self.program)
                .ok_or_else(|| anyhow::anyhow!("no {} program", self.program))?
                .try_into()?;
            for (i, h) in plan.hooks.iter().enumerate() {
                let cookie = match &mut self.cookies {
                    Some(map) => {
                        let slot = id * 12 + i as u32;
                        map.set(slot, probe_of(id, h), 0)?;
                        Some(u64::from(slot))
                    }
                    None => None,
                };
                links.push(prog.attach(
                    UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(h.file_offset),
                        cookie,
                    },
                    path,
                    UProbeScope::AllProcesses,
                )?);
            }
            Ok(())
        })();
        if let Err(e) = attached {
            self.release(id, &plan, links);
            return Err(e);
        }
        tracing::info!(
            "go: attached {} HTTP/2 hooks to {shown} (pid {pid}, {}, x/net {}, {}): {}",
            plan.hooks.len(),
            plan.go_version.as_deref().unwrap_or("Go version unknown"),
            plan.xnet_version
                .as_deref()
                .unwrap_or("not a module dependency"),
            if plan.pie { "PIE" } else { "not PIE" },
            plan.summary()
        );
        self.binaries.insert(
            key,
            Binary {
                id,
                path: shown.to_string(),
                plan,
                links,
                shared: Vec::new(),
                pids: HashMap::new(),
            },
        );
        self.metrics.go_binaries.set(self.binaries.len() as i64);
        self.add_process(key, pid);
        Ok(())
    }

    /// Writes the probe addresses `pid` hits (once per binary unless PIE;
    /// never with cookies).
    fn add_process(&mut self, key: (u64, u64), pid: u32) {
        let Some(b) = self.binaries.get_mut(&key) else {
            return;
        };
        if self.cookies.is_some() || (!b.plan.pie && !b.shared.is_empty()) {
            b.pids.insert(pid, Vec::new());
            tracing::info!("go: pid {pid} hooked ({})", b.path);
            return;
        }
        let bias = if b.plan.pie {
            match pie_bias(pid, key, b.plan.load_base) {
                Some(bias) => bias,
                None => {
                    tracing::debug!("go: pid {pid}: load address of {} not found", b.path);
                    return;
                }
            }
        } else {
            0
        };
        let mut keys = Vec::new();
        for h in &b.plan.hooks {
            let ip = h.probe_va.wrapping_add(bias);
            match self.probes.insert(ip, probe_of(b.id, h), 0) {
                Ok(()) => keys.push(ip),
                Err(e) => tracing::warn!("go: pid {pid}: probe address not recorded: {e}"),
            }
        }
        if b.plan.pie {
            b.pids.insert(pid, keys);
        } else {
            b.shared = keys;
            b.pids.insert(pid, Vec::new());
        }
        tracing::info!("go: pid {pid} hooked ({})", b.path);
    }

    /// Drops exited processes; detaches binaries nobody runs any more.
    fn forget_dead(&mut self) {
        self.seen.retain(|pid, key| exe_key(*pid) == Some(*key));
        let mut gone = Vec::new();
        for (key, b) in self.binaries.iter_mut() {
            let probes = &mut self.probes;
            b.pids.retain(|pid, keys| {
                let alive = exe_key(*pid) == Some(*key);
                if !alive {
                    for k in keys.iter() {
                        let _ = probes.remove(k);
                    }
                }
                alive
            });
            if b.pids.is_empty() {
                gone.push(*key);
            }
        }
        for key in gone {
            if let Some(b) = self.binaries.remove(&key) {
                tracing::info!("go: {} no longer runs; detached its hooks", b.path);
                for k in &b.shared {
                    let _ = self.probes.remove(k);
                }
                self.release(b.id, &b.plan, b.links);
            }
        }
        self.metrics.go_binaries.set(self.binaries.len() as i64);
    }

    fn release(&mut self, id: u32, plan: &gobin::Plan, links: Vec<UProbeLinkId>) {
        if let Some(map) = &mut self.cookies {
            for i in 0..plan.hooks.len() as u32 {
                let _ = map.set(id * 12 + i, probe_common::GoProbe::UNSET, 0);
            }
        }
        if let Some(prog) = self
            .ebpf
            .program_mut(self.program)
            .and_then(|p| <&mut UProbe>::try_from(p).ok())
        {
            for l in links {
                let _ = prog.detach(l);
            }
        }
        for t in &plan.conn_types {
            let _ = self.types.remove(&GoTypeKey {
                binary: id,
                _pad: 0,
                pc: t.pc,
            });
        }
        self.free_ids.push(id);
    }
}

/// The kernel's view of hook `h` of binary `id`.
fn probe_of(id: u32, h: &gobin::Hook) -> GoProbe {
    GoProbe {
        link_va: h.probe_va,
        binary: id,
        hook: h.hook,
        bundle: u8::from(h.copy == gobin::Copy::Bundle),
        _pad: [0; 2],
    }
}
