//! The wire observer's counters and its flow table: polled every second,
//! the table walked every 5 s, on a blocking thread, to export its
//! occupancy, count silent LRU evictions and remove flows that are closed
//! and over ([`probe_common::Flow::is_done`]).

use std::{sync::Arc, time::Duration};

use aya::maps::{HashMap, MapData, PerCpuArray};
use probe_common::{Flow, FlowKey, wire_stat as ws};
use tokio::sync::watch;

use crate::{
    export::metrics::Metrics,
    kernel::load::percpu_total,
    sources::{http::boot_ns, occupancy},
};

/// Why the classifier left a packet's payload uninspected, by counter slot.
const UNINSPECTED: [(u32, &str); 8] = [
    (ws::H2_TLS, "tls"),
    (ws::H2_MID_STREAM, "mid_stream"),
    (ws::H2_SPLIT_HEADER, "split_header"),
    (ws::H2_SPLIT_GOAWAY, "split_goaway"),
    (ws::H2_FRAME_LIMIT, "frame_limit"),
    (ws::H2_SEQ_GAP, "seq_gap"),
    (ws::NOT_H2, "not_http2"),
    (ws::H2C_UPGRADE_LOST, "h2c_upgrade_lost"),
];

/// The poller's state between rounds.
struct WireStats {
    stats: PerCpuArray<MapData, u64>,
    flows: HashMap<MapData, FlowKey, Flow>,
    /// The flow table as the occupancy walker sees it (batch lookups).
    walker: Option<occupancy::Tracked>,
    metrics: Arc<Metrics>,
    /// Counter totals already exported, by slot.
    seen: [u64; probe_common::WIRE_STAT_SLOTS as usize],
    evicted_seen: u64,
    /// Flows removed here (not by the program) so far.
    swept: u64,
    /// The batch walk failed once: walk key by key from then on.
    walk_failed: bool,
}

/// Polls until `stop` changes.
pub async fn task(
    stats: PerCpuArray<MapData, u64>,
    flows: HashMap<MapData, FlowKey, Flow>,
    walker: Option<occupancy::Tracked>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for (_, reason) in UNINSPECTED {
        metrics
            .wire_uninspected
            .with_label_values(&[reason])
            .inc_by(0);
    }
    if let Some(w) = &walker {
        metrics
            .map_capacity
            .with_label_values(&[w.label()])
            .set(i64::from(w.capacity()));
    }
    let mut s = WireStats {
        stats,
        flows,
        walker,
        metrics,
        seen: [0; probe_common::WIRE_STAT_SLOTS as usize],
        evicted_seen: 0,
        swept: 0,
        walk_failed: false,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        s.export_counters();
        // Walk the table every 5 s (one syscall per 256 entries, or per
        // entry where batch lookups are missing). At 100 000 flows a walk
        // takes 0.05-0.3 s of syscalls: on a blocking thread, so that no
        // runtime worker (the ring-buffer reader's among them) waits for it.
        round += 1;
        if round % 5 == 1 {
            let walk = tokio::task::spawn_blocking(move || {
                s.sweep();
                s
            });
            s = tokio::select! {
                r = walk => r.map_err(|e| anyhow::anyhow!("flow-table walk: {e}"))?,
                _ = stop.changed() => return Ok(()),
            };
        }
    }
}

impl WireStats {
    /// What a counter slot gained since the last round.
    fn delta(&mut self, slot: u32) -> u64 {
        let total = percpu_total(&self.stats, slot);
        let prev = &mut self.seen[slot as usize];
        let d = total.saturating_sub(*prev);
        *prev = total.max(*prev);
        d
    }

    fn export_counters(&mut self) {
        for (slot, reason) in UNINSPECTED {
            let d = self.delta(slot);
            if d > 0 {
                self.metrics
                    .wire_uninspected
                    .with_label_values(&[reason])
                    .inc_by(d);
            }
        }
        let packets = self.delta(ws::PACKETS);
        self.metrics.wire_packets.inc_by(packets);
        let malformed = self.delta(ws::MALFORMED);
        self.metrics.wire_malformed.inc_by(malformed);
        let _ = self.delta(ws::FLOWS_INSERTED);
        let _ = self.delta(ws::FLOWS_REMOVED);
    }

    /// Walks the flow table: removes the flows that are over, exports the
    /// occupancy and the evictions.
    fn sweep(&mut self) {
        let started = std::time::Instant::now();
        let now = boot_ns();
        let (entries, done) = self.walk(now);
        // A flow that saw a packet since the walk is kept (a new SYN
        // replaces a closed flow in the kernel anyway).
        let mut removed_now = 0u64;
        for key in &done {
            if self.flows.get(key, 0).is_ok_and(|f| f.is_done(now))
                && self.flows.remove(key).is_ok()
            {
                removed_now += 1;
            }
        }
        self.swept += removed_now;
        self.metrics.flows_closed_removed.inc_by(removed_now);
        let entries = entries.saturating_sub(removed_now);
        self.metrics.flow_entries.set(entries as i64);
        if let Some(w) = &self.walker {
            self.metrics
                .map_entries
                .with_label_values(&[w.label()])
                .set(entries as i64);
        }
        // LRU evictions are silent in the kernel: whatever was inserted
        // and neither removed (by the program or here) nor present was
        // evicted.
        let inserted = self.seen[ws::FLOWS_INSERTED as usize];
        let removed = self.seen[ws::FLOWS_REMOVED as usize] + self.swept;
        let evicted = inserted.saturating_sub(removed).saturating_sub(entries);
        if evicted > self.evicted_seen {
            self.metrics
                .flow_evictions
                .inc_by(evicted - self.evicted_seen);
            self.evicted_seen = evicted;
        }
        // How the walk scales with the table (`bench scale` reads this):
        // a debug line, not a metric, so no series is added for it.
        tracing::debug!(
            entries,
            removed = removed_now,
            evicted,
            micros = started.elapsed().as_micros() as u64,
            "flow table walked"
        );
    }

    /// The table's entries and the keys of flows that are over: by batch
    /// lookups, or key by key where those fail.
    fn walk(&mut self, now: u64) -> (u64, Vec<FlowKey>) {
        let mut done = Vec::new();
        let walked = match &self.walker {
            Some(w) if !self.walk_failed => occupancy::walk(w, |k, v| {
                if let (Some(key), Some(flow)) =
                    (pod_from_bytes::<FlowKey>(k), pod_from_bytes::<Flow>(v))
                    && flow.is_done(now)
                {
                    done.push(key);
                }
            })
            .map_err(|e| {
                tracing::warn!("flow table: batch walk failed ({e}); walking it key by key");
            })
            .ok(),
            _ => None,
        };
        if walked.is_none() && self.walker.is_some() {
            self.walk_failed = true;
        }
        let entries = match walked {
            Some(n) => n,
            None => {
                let mut n = 0u64;
                for (key, flow) in self.flows.iter().filter_map(Result::ok) {
                    n += 1;
                    if flow.is_done(now) {
                        done.push(key);
                    }
                }
                n
            }
        };
        (entries, done)
    }
}

/// A plain-data value from a map's bytes (`None` when the size is wrong).
fn pod_from_bytes<T: aya::Pod>(b: &[u8]) -> Option<T> {
    (b.len() == std::mem::size_of::<T>())
        // SAFETY: T is plain data (aya::Pod: any bit pattern is valid) and
        // b holds exactly size_of::<T>() bytes; read_unaligned needs no
        // alignment.
        .then(|| unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) })
}
