//! The event ring buffer: read in place by the pipeline's task, which also
//! takes the HTTP side's observations and reports once a second. The
//! records are handed to the pipeline without copying through a channel.

use std::{io::Write as _, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use drainwatch_correlate::Observation;
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};

use crate::pipeline::Pipeline;

/// How often the reader drains the ring buffer without being woken: the
/// most a lone event waits before it is printed and correlated.
const DRAIN_INTERVAL: Duration = Duration::from_millis(50);

/// Runs the pipeline until `stop` changes; then delivers what is already in
/// the buffer and the final report.
pub async fn task(
    events: RingBuf<MapData>,
    mut pipeline: Pipeline,
    mut obs_rx: mpsc::Receiver<Observation>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd lives.
    let mut afd = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {e}"))?;
    let stdout = std::io::stdout();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // The programs wake the reader only once a batch is pending (a wakeup
    // per event costs more than the event); this bounds a lone event's wait.
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = afd.readable_mut() => {
                let mut guard = r.context("waiting on the event ring buffer")?;
                let mut out = stdout.lock();
                drain_into(guard.get_inner_mut(), &mut pipeline, &mut out);
                guard.clear_ready();
            }
            _ = drain.tick() => {
                let mut out = stdout.lock();
                drain_into(afd.get_mut(), &mut pipeline, &mut out);
            }
            Some(o) = obs_rx.recv() => pipeline.observation(o),
            _ = tick.tick() => {
                let mut out = stdout.lock();
                pipeline.report(&mut out, false);
                let _ = out.flush();
            }
            _ = stop.changed() => {
                let mut out = stdout.lock();
                drain_into(afd.get_mut(), &mut pipeline, &mut out);
                pipeline.report(&mut out, true);
                let _ = out.flush();
                return Ok(());
            }
        }
    }
}

/// Every record pending in the ring buffer, through the pipeline.
fn drain_into(rb: &mut RingBuf<MapData>, pipeline: &mut Pipeline, out: &mut impl std::io::Write) {
    while let Some(item) = rb.next() {
        pipeline.record(&item, out);
    }
    let _ = out.flush();
}
