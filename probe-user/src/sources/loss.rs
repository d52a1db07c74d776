//! Events the kernel programs dropped (ring buffer full, a record layout
//! they could not read), polled from their per-CPU counters and exported,
//! in total and by event kind; and sockets the full socket table refused.

use std::time::Duration;

use aya::maps::{MapData, PerCpuArray};
use probe_common::{LOST_KIND_BASE, LOST_LAYOUT, LOST_RINGBUF_FULL, LOST_SOCKS_FULL};
use prometheus::IntCounter;
use tokio::sync::watch;

use crate::{decode::event::EventKind, export::metrics::Metrics, kernel::load::percpu_total};

/// Polls every 250 ms until `stop` changes, then once more.
pub async fn task(
    lost: PerCpuArray<MapData, u64>,
    metrics: std::sync::Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let stages = [
        (
            LOST_RINGBUF_FULL,
            metrics.lost_counter("kernel_ringbuf_full"),
        ),
        (LOST_LAYOUT, metrics.lost_counter("kernel_layout")),
    ];
    let by_kind: Vec<(u32, IntCounter)> = (1..probe_common::event::kind::MAX)
        .filter_map(|k| {
            EventKind::from_raw(k).map(|kind| {
                (
                    LOST_KIND_BASE + u32::from(k),
                    metrics
                        .events_lost_by_kind
                        .with_label_values(&[kind.as_str()]),
                )
            })
        })
        .collect();
    let mut seen = [0u64; 2];
    let mut seen_kind = vec![0u64; by_kind.len()];
    let mut seen_socks = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let done = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        for (i, (slot, counter)) in stages.iter().enumerate() {
            let total = percpu_total(&lost, *slot);
            if total > seen[i] {
                counter.inc_by(total - seen[i]);
                tracing::warn!(
                    "{} events dropped in the kernel ({})",
                    total - seen[i],
                    if *slot == LOST_RINGBUF_FULL {
                        "ring buffer full"
                    } else {
                        "record layout mismatch"
                    }
                );
                seen[i] = total;
            }
        }
        let socks = percpu_total(&lost, LOST_SOCKS_FULL);
        if socks > seen_socks {
            metrics.socket_table_full.inc_by(socks - seen_socks);
            tracing::warn!(
                "{} sockets on watched ports not tracked: the socket table is full (--socket-table)",
                socks - seen_socks
            );
            seen_socks = socks;
        }
        for (i, (slot, counter)) in by_kind.iter().enumerate() {
            let total = percpu_total(&lost, *slot);
            if total > seen_kind[i] {
                counter.inc_by(total - seen_kind[i]);
                seen_kind[i] = total;
            }
        }
        if done {
            return Ok(());
        }
    }
}
