//! Processes the lab starts inside its namespaces, each tracked by pid so teardown
//! ends exactly what the lab started.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::clock::now_ns;

/// Starting or waiting on a lab process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process could not be started.
    #[error("cannot start {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        source: std::io::Error,
    },
    /// The process did not print its marker in time (or exited first).
    #[error("{cmd}: no {marker:?} within {secs:.1}s; last output: {last}")]
    NoMarker {
        /// The command line.
        cmd: String,
        /// The line prefix that was expected.
        marker: String,
        /// The wait.
        secs: f64,
        /// The last lines it printed.
        last: String,
    },
}

/// A line a process printed, with the wall-clock time it was read.
#[derive(Debug, Clone)]
pub struct Line {
    /// When it was read (ns).
    pub t_ns: u64,
    /// The text.
    pub text: String,
}

/// A running lab process.
#[derive(Debug)]
pub struct Proc {
    /// Short label.
    pub label: String,
    /// Command line, for messages.
    pub cmd: String,
    /// Its pid (the same as the program's: `ip netns exec` execs in place).
    pub pid: u32,
    /// The child handle.
    pub child: Child,
    /// stdout and stderr lines as they arrive.
    pub lines: mpsc::UnboundedReceiver<Line>,
    seen: Vec<String>,
}

/// Starts `prog args` in namespace `ns`, reading its output line by line.
pub fn spawn(label: &str, ns: &str, prog: &Path, args: &[String]) -> Result<Proc, ProcError> {
    let cmd = format!("ip netns exec {ns} {} {}", prog.display(), args.join(" "));
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ProcError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    let pid = child.id().unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut l = BufReader::new(out).lines();
            while let Ok(Some(text)) = l.next_line().await {
                let _ = tx.send(Line {
                    t_ns: now_ns(),
                    text,
                });
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut l = BufReader::new(err).lines();
            while let Ok(Some(text)) = l.next_line().await {
                let _ = tx.send(Line {
                    t_ns: now_ns(),
                    text,
                });
            }
        });
    }
    Ok(Proc {
        label: label.to_string(),
        cmd,
        pid,
        child,
        lines: rx,
        seen: Vec::new(),
    })
}

impl Proc {
    /// Waits until a line containing `marker` appears.
    pub async fn wait_for(&mut self, marker: &str, within: Duration) -> Result<Line, ProcError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    let hit = line.text.contains(marker);
                    self.remember(&line.text);
                    if hit {
                        return Ok(line);
                    }
                }
                Ok(None) | Err(_) => {
                    return Err(ProcError::NoMarker {
                        cmd: self.cmd.clone(),
                        marker: marker.to_string(),
                        secs: within.as_secs_f64(),
                        last: self.seen.join(" | "),
                    });
                }
            }
        }
    }

    fn remember(&mut self, text: &str) {
        self.seen.push(text.to_string());
        if self.seen.len() > 5 {
            self.seen.remove(0);
        }
    }

    /// Waits for exit up to `within`; None if it is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Sends SIGTERM and waits up to `within`, then SIGKILL.
    pub async fn stop(&mut self, within: Duration) {
        crate::cmd::kill(self.pid, libc::SIGTERM);
        if self.wait_exit(within).await.is_none() {
            crate::cmd::kill(self.pid, libc::SIGKILL);
            let _ = self.wait_exit(Duration::from_secs(5)).await;
        }
    }
}
