//! Packet capture with the real tcpdump, one pcap per capture point.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::procs::{self, Proc, ProcError};

/// A running tcpdump.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    /// The pcap being written.
    pub file: PathBuf,
}

/// Starts tcpdump on `iface` in namespace `ns`, writing `file`; returns once tcpdump
/// reports it is listening, so no packet of the scenario is missed.
pub async fn start(ns: &str, iface: &str, file: &Path) -> Result<Capture, ProcError> {
    let args: Vec<String> = [
        "-i",
        iface,
        "-n",
        "-U",
        "--immediate-mode",
        "-s",
        "256",
        "-Z",
        "root",
        "-w",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([file.display().to_string(), "tcp".to_string()])
    .collect();
    let mut proc = procs::spawn("tcpdump", ns, Path::new("tcpdump"), &args)?;
    proc.wait_for("listening on", Duration::from_secs(10))
        .await?;
    Ok(Capture {
        proc,
        file: file.to_path_buf(),
    })
}

impl Capture {
    /// The tcpdump pid (for teardown tracking).
    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// Stops tcpdump cleanly so the pcap is complete.
    pub async fn stop(mut self) -> PathBuf {
        // Let the last packets of the scenario reach the file.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.proc.stop(Duration::from_secs(5)).await;
        self.file
    }
}
