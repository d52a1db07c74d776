//! Per-program kernel run time and run count (`--bpf-stats`): the kernel
//! counts them only while statistics are enabled, which lasts as long as
//! the fd [`enable`] returns is open.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::export::metrics::Metrics;

/// Turns the kernel's statistics on; `None` (with a warning) if it refuses.
pub fn enable() -> Option<std::os::fd::OwnedFd> {
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!("--bpf-stats: cannot enable kernel BPF statistics: {e}");
            None
        }
    }
}

/// Our programs by kernel id, for the task.
pub fn programs(ebpf: &aya::Ebpf) -> Vec<(u32, String)> {
    ebpf.programs()
        .filter_map(|(name, p)| p.info().ok().map(|i| (i.id(), name.to_string())))
        .collect()
}

/// Exports the kernel's run time and run count for each of our programs.
pub async fn task(
    programs: Vec<(u32, String)>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut seen: std::collections::HashMap<u32, (u64, u64)> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        for info in aya::programs::loaded_programs().filter_map(Result::ok) {
            let Some((_, name)) = programs.iter().find(|(id, _)| *id == info.id()) else {
                continue;
            };
            let ns = info.run_time().as_nanos() as u64;
            let cnt = info.run_count();
            let prev = seen.entry(info.id()).or_insert((0, 0));
            metrics
                .program_run_seconds
                .with_label_values(&[name])
                .inc_by(ns.saturating_sub(prev.0) as f64 / 1e9);
            metrics
                .program_runs
                .with_label_values(&[name])
                .inc_by(cnt.saturating_sub(prev.1));
            *prev = (ns, cnt);
        }
    }
}
