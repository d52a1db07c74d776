//! Why a Go server sent a GOAWAY: it is shutting down, or it is serving on
//! and only moving the client elsewhere (kube-apiserver's `--goaway-chance`
//! sends NO_ERROR GOAWAYs to a fraction of requests to rebalance
//! connections across apiservers; a `Connection: close` response does the
//! same). The second is a rate to watch, not a disruption.
//!
//! Rule: a GOAWAY sent by a process that, within [`WINDOW`] before it, got a
//! terminating signal (SIGTERM, SIGINT, SIGQUIT) or closed a listener on a
//! watched port is a shutdown GOAWAY; any other is sent while serving.
//! Blind spots: a server that shuts down without a signal and without
//! closing its listener first (a program calling only `Shutdown` on a
//! listener it keeps) is counted as serving; a rebalancing GOAWAY sent in
//! the window after a signal the process then ignores counts as shutdown.

use std::collections::HashMap;

use crate::decode::event::{Event, EventKind};

/// How long after a terminating signal or a listener close GOAWAYs of that
/// process count as its shutdown (kube-apiserver's default shutdown delay
/// is up to 70 s on managed clusters; graceful termination 60 s after).
pub const WINDOW: u64 = 180_000_000_000;

/// Why a GOAWAY was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoawayWhy {
    Shutdown,
    WhileServing,
}

impl GoawayWhy {
    pub fn as_str(self) -> &'static str {
        match self {
            GoawayWhy::Shutdown => "shutdown",
            GoawayWhy::WhileServing => "while_serving",
        }
    }
}

/// The processes that started shutting down, and when.
#[derive(Default)]
pub struct GoawayClassifier {
    terminating: HashMap<u32, u64>,
}

impl GoawayClassifier {
    /// Learns from every event; classifies the GOAWAYs a process sent.
    pub fn classify(&mut self, ev: &Event) -> Option<GoawayWhy> {
        match ev.kind {
            EventKind::Signal => {
                if let (Some(pid), Some(sig)) = (ev.pid, &ev.signal)
                    && matches!(sig.name, "SIGTERM" | "SIGINT" | "SIGQUIT")
                {
                    self.terminating.insert(pid, ev.ts_boot_ns);
                }
                None
            }
            EventKind::ListenClose => {
                if let Some(pid) = ev.pid {
                    self.terminating.insert(pid, ev.ts_boot_ns);
                }
                None
            }
            EventKind::ProcessExit => {
                if let Some(pid) = ev.pid {
                    self.terminating.remove(&pid);
                }
                None
            }
            EventKind::Goaway => {
                let w = ev.wire.as_ref()?;
                if ev.go.is_none() || w.direction != drainwatch_correlate::Direction::Sent {
                    return None;
                }
                let pid = ev.pid?;
                let shutting = self
                    .terminating
                    .get(&pid)
                    .is_some_and(|&t| ev.ts_boot_ns.saturating_sub(t) <= WINDOW);
                if self.terminating.len() > 4096 {
                    let now = ev.ts_boot_ns;
                    self.terminating
                        .retain(|_, t| now.saturating_sub(*t) <= WINDOW);
                }
                Some(if shutting {
                    GoawayWhy::Shutdown
                } else {
                    GoawayWhy::WhileServing
                })
            }
            _ => None,
        }
    }
}
