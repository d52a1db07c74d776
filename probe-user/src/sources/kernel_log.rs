//! The kernel programs' own diagnostics (aya-log), forwarded to tracing
//! through the log bridge.

use tokio::{io::unix::AsyncFd, sync::watch, task::JoinSet};

/// Starts the forwarder, if the object has a log ring buffer (it has none
/// when built without kernel-side logging: then nothing to do).
pub fn spawn(
    ebpf: &mut aya::Ebpf,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!("no kernel-side logging: {e}");
            return Ok(());
        }
    };
    // SAFETY: the logger owns its ring-buffer fd for as long as the AsyncFd lives.
    let mut afd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the kernel log ring buffer: {e}"))?;
    tasks.spawn(async move {
        loop {
            tokio::select! {
                r = afd.readable_mut() => match r {
                    Ok(mut g) => { g.get_inner_mut().flush(); g.clear_ready(); }
                    Err(e) => { tracing::warn!("kernel log reader failed: {e}"); break; }
                },
                _ = stop.changed() => break,
            }
        }
        Ok(())
    });
    Ok(())
}
