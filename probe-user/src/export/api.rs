//! The HTTP API beside `/metrics`: what the correlation engine concluded
//! (verdicts, rollout timelines) and a bounded buffer of recent events, as
//! JSON, for tools that want more than counters.
//!
//! - `GET /api/v1/verdicts`: `{"verdicts": [Verdict...]}`, the engine's
//!   verdicts (archived ones included), as of its last report (once a second).
//! - `GET /api/v1/timelines`: `{"timelines": [Timeline...]}`, one per rollout.
//! - `GET /api/v1/events?since=N`: `{"events": [{"seq", "event"}...], "next",
//!   "oldest", "missed"}`: decoded kernel events with a sequence number
//!   above `N` (all held without `since`); poll again with `since=next`.
//!   Only the last [`EVENT_BUFFER`] events are held: `missed` counts those
//!   after `N` already dropped, so a slow reader knows it lost some.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard},
};

use drainwatch_correlate::{Report, Timeline, Verdict};
use serde::Serialize;

use crate::decode::event::Event;

/// Events the API holds: about 1 MiB of decoded events at most. On a host
/// with a thousand watched connections a second that is four seconds:
/// readers poll with `since`, and `missed` tells them when they were too
/// slow (stdout's JSON lines lose nothing).
pub const EVENT_BUFFER: usize = 4096;

/// What the API serves; the pipeline writes it, the HTTP endpoint reads it.
pub struct Api {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    verdicts: Vec<Verdict>,
    timelines: Vec<Timeline>,
    events: VecDeque<(u64, Event)>,
    /// The sequence number the next event gets (the first is 1, so that
    /// `since=0` means "from the start").
    next: u64,
}

/// One event with its sequence number.
#[derive(Serialize)]
struct Numbered<'a> {
    seq: u64,
    event: &'a Event,
}

/// The body of `/api/v1/events`.
#[derive(Serialize)]
struct Events<'a> {
    events: Vec<Numbered<'a>>,
    /// Pass as `since` to get only what comes after this answer.
    next: u64,
    /// The oldest sequence number still held (`next` when none is).
    oldest: u64,
    /// Events after `since` that the buffer had already dropped.
    missed: u64,
}

impl Api {
    /// An API holding up to `capacity` recent events.
    pub fn new(capacity: usize) -> Api {
        Api {
            capacity,
            inner: Mutex::new(Inner {
                next: 1,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind: serve it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `ev` in the bounded buffer, dropping the oldest when full.
    pub fn push_event(&self, ev: Event) {
        let mut g = self.lock();
        if g.events.len() >= self.capacity {
            g.events.pop_front();
        }
        let seq = g.next;
        g.next += 1;
        g.events.push_back((seq, ev));
    }

    /// The engine's latest verdicts and timelines.
    pub fn set_report(&self, report: &Report) {
        let mut g = self.lock();
        g.verdicts.clone_from(&report.verdicts);
        g.timelines.clone_from(&report.timelines);
    }

    /// The answer to `GET path?query` under `/api/v1/`: (status, JSON body).
    pub fn respond(&self, path: &str, query: Option<&str>) -> (u16, Vec<u8>) {
        let g = self.lock();
        let body = match path {
            "/api/v1/verdicts" => {
                serde_json::to_vec(&serde_json::json!({ "verdicts": g.verdicts }))
            }
            "/api/v1/timelines" => {
                serde_json::to_vec(&serde_json::json!({ "timelines": g.timelines }))
            }
            "/api/v1/events" => match since(query) {
                Ok(since) => serde_json::to_vec(&events(&g, since)),
                Err(e) => return (400, error_body(&e)),
            },
            _ => {
                return (
                    404,
                    error_body(&format!(
                        "no {path}; the API serves /api/v1/verdicts, /api/v1/timelines and /api/v1/events?since=N"
                    )),
                );
            }
        };
        match body {
            Ok(b) => (200, b),
            Err(e) => (500, error_body(&format!("encoding the answer failed: {e}"))),
        }
    }
}

/// The events after `since`, with the cursor for the next poll.
fn events(g: &Inner, since: u64) -> Events<'_> {
    let oldest = g.events.front().map_or(g.next, |(s, _)| *s);
    Events {
        events: g
            .events
            .iter()
            .filter(|(s, _)| *s > since)
            .map(|(seq, event)| Numbered { seq: *seq, event })
            .collect(),
        next: g.next - 1,
        oldest,
        missed: oldest.saturating_sub(since.saturating_add(1)),
    }
}

/// `since` from the query string: a sequence number, 0 when absent.
fn since(query: Option<&str>) -> Result<u64, String> {
    let Some(q) = query else { return Ok(0) };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "since" => {
                return v.parse().map_err(|_| {
                    format!("since={v:?}: expected an event sequence number (the `next` of the last answer)")
                });
            }
            "" => {}
            other => return Err(format!("unknown parameter {other:?}; only since=N")),
        }
    }
    Ok(0)
}

fn error_body(msg: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": msg })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::event::{DecodeContext, decode};
    use probe_common::{AF_INET, RawEvent, flags, kind, tcp_state};

    fn event() -> Event {
        let mut r = RawEvent::zeroed();
        r.kind = kind::REFUSED;
        r.family = AF_INET;
        r.sport = 40000;
        r.dport = 6443;
        r.old_state = tcp_state::SYN_SENT;
        r.state = tcp_state::CLOSE;
        r.flags = flags::ACTIVE;
        decode(&r, &DecodeContext::plain()).expect("decode")
    }

    fn get(api: &Api, path: &str, query: Option<&str>) -> (u16, serde_json::Value) {
        let (code, body) = api.respond(path, query);
        (code, serde_json::from_slice(&body).expect("JSON"))
    }

    #[test]
    fn events_are_bounded_and_paged_by_sequence_number() {
        let api = Api::new(3);
        let (_, v) = get(&api, "/api/v1/events", None);
        assert_eq!(v["events"].as_array().map(Vec::len), Some(0));
        assert_eq!(
            (v["next"].as_u64(), v["missed"].as_u64()),
            (Some(0), Some(0))
        );
        for _ in 0..5 {
            api.push_event(event());
        }
        // 5 pushed, 3 held (seq 3, 4, 5): a reader from the start missed 2.
        let (code, v) = get(&api, "/api/v1/events", Some("since=0"));
        assert_eq!(code, 200);
        let seqs: Vec<u64> = v["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert_eq!(v["events"][0]["event"]["kind"], "refused");
        assert_eq!(
            (v["next"].as_u64(), v["oldest"].as_u64()),
            (Some(5), Some(3))
        );
        assert_eq!(v["missed"], 2);
        let (_, v) = get(&api, "/api/v1/events", Some("since=4"));
        assert_eq!(v["events"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["missed"], 0);
        let (_, v) = get(&api, "/api/v1/events", Some("since=5"));
        assert_eq!(v["events"].as_array().map(Vec::len), Some(0));
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        let api = Api::new(3);
        let (code, v) = get(&api, "/api/v1/events", Some("since=yesterday"));
        assert_eq!(code, 400);
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("since=\"yesterday\""))
        );
        let (code, v) = get(&api, "/api/v1/events", Some("limit=3"));
        assert_eq!(code, 400);
        assert!(v["error"].as_str().is_some_and(|e| e.contains("\"limit\"")));
        let (code, _) = get(&api, "/api/v1/nothing", None);
        assert_eq!(code, 404);
        let (code, v) = get(&api, "/api/v1/verdicts", None);
        assert_eq!(
            (code, v["verdicts"].as_array().map(Vec::len)),
            (200, Some(0))
        );
    }
}
