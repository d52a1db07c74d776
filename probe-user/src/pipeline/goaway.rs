//! Why a Go server sent a GOAWAY: it is shutting down, or it is serving on
//! and only moving the client elsewhere (kube-apiserver's `--goaway-chance`
//! sends NO_ERROR GOAWAYs to a fraction of requests to rebalance
//! connections across apiservers; a `Connection: close` response does the
//! same). The second is a rate to watch, not a disruption.
//!
//! A third kind answers the client: a Go server that receives a GOAWAY from
//! its client (an HTTP/2 client closing its connection politely, e.g. a
//! health poller) answers with its own; that is neither.
//!
//! Rule: a GOAWAY sent on a connection where the server received the
//! client's GOAWAY within [`ANSWER_WINDOW`] before is an answer; else one
//! sent by a process that, within [`WINDOW`] before it, got a terminating
//! signal (SIGTERM, SIGINT, SIGQUIT) or closed a listener on a watched port
//! is a shutdown GOAWAY; any other is sent while serving.
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

/// How long after a client's GOAWAY the server's on that connection is its
/// answer (Go answers at once; seconds allow for a busy process).
pub const ANSWER_WINDOW: u64 = 5_000_000_000;

/// Why a GOAWAY was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoawayWhy {
    Shutdown,
    WhileServing,
    /// The client sent its GOAWAY first on this connection.
    Answer,
}

impl GoawayWhy {
    pub fn as_str(self) -> &'static str {
        match self {
            GoawayWhy::Shutdown => "shutdown",
            GoawayWhy::WhileServing => "while_serving",
            GoawayWhy::Answer => "answer",
        }
    }
}

/// The processes that started shutting down, and when.
#[derive(Default)]
pub struct GoawayClassifier {
    terminating: HashMap<u32, u64>,
    /// Connections (socket ids) whose client sent a GOAWAY, and when.
    client_goaway: HashMap<u64, u64>,
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
                let go = ev.go.as_ref()?;
                let sock = ev.sock_id.map(|s| s.0);
                if w.direction == drainwatch_correlate::Direction::Received {
                    if go.role == Some("server")
                        && let Some(s) = sock
                    {
                        if self.client_goaway.len() > 4096 {
                            let now = ev.ts_boot_ns;
                            self.client_goaway
                                .retain(|_, t| now.saturating_sub(*t) <= ANSWER_WINDOW);
                        }
                        self.client_goaway.insert(s, ev.ts_boot_ns);
                    }
                    return None;
                }
                if let Some(t) = sock.and_then(|s| self.client_goaway.remove(&s))
                    && ev.ts_boot_ns.saturating_sub(t) <= ANSWER_WINDOW
                {
                    return Some(GoawayWhy::Answer);
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

#[cfg(test)]
mod tests {
    use probe_common::{AF_INET, RawEvent, flags, kind};

    use super::*;
    use crate::decode::event::{DecodeContext, decode};

    fn ev(k: u8, f: u32, sock: u64, pid: u32, t_s: u64, reason: u32) -> Event {
        let mut r = RawEvent::zeroed();
        r.kind = k;
        r.flags = f;
        r.sock = sock;
        r.pid = pid;
        r.ts_ns = t_s * 1_000_000_000;
        r.reason = reason;
        r.comm[..7].copy_from_slice(b"h2probe");
        if k == kind::GOAWAY {
            r.family = AF_INET;
            r.sport = 6443;
            r.dport = 50000;
        }
        decode(&r, &DecodeContext::plain()).expect("decodes")
    }

    const SENT: u32 = flags::FROM_UPROBE;
    const RECEIVED_BY_SERVER: u32 = flags::FROM_UPROBE | flags::INGRESS | flags::GO_SERVER;

    #[test]
    fn shutdown_serving_and_answers() {
        let mut c = GoawayClassifier::default();
        // Serving: a GOAWAY of its own on connection 1.
        assert_eq!(
            c.classify(&ev(kind::GOAWAY, SENT, 1, 10, 100, 0)),
            Some(GoawayWhy::WhileServing)
        );
        // The client of connection 2 says GOAWAY first; the answer.
        assert_eq!(
            c.classify(&ev(kind::GOAWAY, RECEIVED_BY_SERVER, 2, 10, 101, 0)),
            None
        );
        assert_eq!(
            c.classify(&ev(kind::GOAWAY, SENT, 2, 10, 101, 0)),
            Some(GoawayWhy::Answer)
        );
        // SIGTERM to pid 10, then its GOAWAYs are its shutdown's, until it exits.
        assert_eq!(c.classify(&ev(kind::SIGNAL, 0, 0, 10, 200, 15)), None);
        assert_eq!(
            c.classify(&ev(kind::GOAWAY, SENT, 3, 10, 203, 0)),
            Some(GoawayWhy::Shutdown)
        );
        // Another process is not shutting down.
        assert_eq!(
            c.classify(&ev(kind::GOAWAY, SENT, 4, 11, 203, 0)),
            Some(GoawayWhy::WhileServing)
        );
        // Past the window: serving again (it ignored the signal).
        assert_eq!(
            c.classify(&ev(
                kind::GOAWAY,
                SENT,
                5,
                10,
                200 + WINDOW / 1_000_000_000 + 1,
                0
            )),
            Some(GoawayWhy::WhileServing)
        );
        // An answer long after the client's GOAWAY is not one.
        assert_eq!(
            c.classify(&ev(kind::GOAWAY, RECEIVED_BY_SERVER, 6, 11, 300, 0)),
            None
        );
        assert_eq!(
            c.classify(&ev(kind::GOAWAY, SENT, 6, 11, 310, 0)),
            Some(GoawayWhy::WhileServing)
        );
        // Cleartext GOAWAYs from the wire are not classified.
        assert_eq!(c.classify(&ev(kind::GOAWAY, 0, 7, 0, 311, 0)), None);
    }
}
