//! Ground truth of a scenario run, and what it shows: the findings in plain words and
//! a short human timeline. Pure: no I/O, so recorded runs can be re-read and judged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apiserver::Lifecycle;
use crate::lb::LbEvent;
use crate::loadgen::{Outcome, RequestRecord};
use crate::timer::TimerRecord;

/// Everything a scenario run observed: the ground truth its findings are checked on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Truth {
    /// Scenario name.
    pub scenario: String,
    /// Time scale used.
    pub time_scale: f64,
    /// Run start (ns).
    pub started_ns: u64,
    /// Run end (ns).
    pub ended_ns: u64,
    /// Scaled parameters (seconds) and topology addresses.
    pub params: Value,
    /// Apiserver lifecycle, and what the runner did to each process.
    pub lifecycle: Vec<Lifecycle>,
    /// LB server state changes.
    pub lb: Vec<LbEvent>,
    /// Every client request.
    pub requests: Vec<RequestRecord>,
    /// Timer-server and long-lived client observations.
    pub timer: Vec<TimerRecord>,
    /// Python watcher/updater observations.
    pub watchers: Vec<Value>,
    /// pcap files written.
    pub pcaps: Vec<String>,
    /// The idle-reset box's records: one per flow it reset, and its counters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_resets: Vec<Value>,
    /// Each client's own end result (`azure-idle-reset-client`): reset with the error
    /// it printed, or survived.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_results: Vec<Value>,
}

impl Truth {
    /// Lifecycle events named `event` of `instance`, in order.
    pub fn events(&self, instance: &str, event: &str) -> Vec<&Lifecycle> {
        self.lifecycle
            .iter()
            .filter(|l| l.instance == instance && l.event == event)
            .collect()
    }

    /// Time of the first `event` of `instance`.
    pub fn first(&self, instance: &str, event: &str) -> Option<u64> {
        self.events(instance, event).first().map(|l| l.t_ns)
    }

    /// Requests of one client.
    pub fn requests_of(&self, client: &str) -> Vec<&RequestRecord> {
        self.requests
            .iter()
            .filter(|r| r.client == client)
            .collect()
    }

    /// Failed requests of one client.
    pub fn errors_of(&self, client: &str) -> Vec<&RequestRecord> {
        self.requests
            .iter()
            .filter(|r| r.client == client && r.outcome.is_error())
            .collect()
    }

    /// Outcome counts per client.
    pub fn summary(&self) -> BTreeMap<String, BTreeMap<String, usize>> {
        let mut m: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for r in &self.requests {
            let o = serde_json::to_value(r.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            *m.entry(r.client.clone()).or_default().entry(o).or_default() += 1;
        }
        m
    }

    /// Timer observations of one connection owner (`server` or a client name).
    pub fn timer_of(&self, who: &str) -> Vec<&TimerRecord> {
        self.timer.iter().filter(|t| t.who == who).collect()
    }

    /// What the run shows, one line per fact: for each master rolled, whether the LB took
    /// it out before its listener closed (its detection time, from /readyz turning red,
    /// shorter than the shutdown delay), and what was cut.
    pub fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut rolled: Vec<&str> = self
            .lifecycle
            .iter()
            .filter(|l| l.event == "sigterm_sent")
            .map(|l| l.instance.as_str())
            .collect();
        rolled.dedup();
        for m in rolled {
            let Some(e1) = self.first(m, "sigterm_sent") else {
                continue;
            };
            let after = |ev: &str| {
                self.lifecycle
                    .iter()
                    .find(|l| l.instance == m && l.event == ev && l.t_ns >= e1)
            };
            let rel = |t: u64| (t as f64 - e1 as f64) / 1e9;
            if after("sigterm_ignored").is_some() {
                if let Some(k) = after("sigkill_sent") {
                    out.push(format!(
                        "{m}: ignored SIGTERM and was SIGKILLed when the grace period ended (+{:.2}s)",
                        rel(k.t_ns)
                    ));
                }
                continue;
            }
            let red = after("readyz_red").map(|l| l.t_ns);
            let closed = after("listener_closed").map(|l| l.t_ns);
            let down = red.and_then(|r| {
                self.lb
                    .iter()
                    .find(|e| e.server == m && e.state == "DOWN" && e.t_ns >= r)
                    .map(|e| e.t_ns)
            });
            match (red, closed, down) {
                (Some(r), Some(c), Some(d)) if d < c => out.push(format!(
                    "{m}: LB out in time: the LB took it out {:.2}s after readyz turned red, {:.2}s before the listener closed",
                    (d - r) as f64 / 1e9,
                    (c - d) as f64 / 1e9
                )),
                (Some(r), Some(c), Some(d)) => out.push(format!(
                    "{m}: LB out too late: the LB took it out {:.2}s after readyz turned red, {:.2}s after the listener closed",
                    (d - r) as f64 / 1e9,
                    (d - c) as f64 / 1e9
                )),
                (Some(_), Some(_), None) if !self.lb.is_empty() => {
                    out.push(format!("{m}: the LB never took it out"));
                }
                _ => {}
            }
            if let Some(l) = after("connections_closed") {
                out.push(format!(
                    "{m}: closed every connection at once (hard close), cutting {} in-flight request(s)",
                    l.detail["inflight_cut"]
                ));
            }
            if let Some(l) = after("requests_cut") {
                // The Go stand-in exits when Shutdown's own deadline passes,
                // after its GOAWAY; the Rust one cuts at the request timeout.
                let when = match l.detail["deadline_s"].as_f64() {
                    Some(d) => format!("when the process exited {d:.1}s after its GOAWAY"),
                    None => "at the request timeout".to_string(),
                };
                out.push(format!(
                    "{m}: {} request(s) still in flight were cut {when}",
                    l.detail["inflight"]
                ));
            }
            if after("drained").is_some() {
                out.push(format!("{m}: in-flight requests drained before exit"));
            }
        }
        for (client, m) in self.summary() {
            let errors: Vec<String> = m
                .iter()
                .filter(|(k, _)| k.as_str() != "ok")
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            if !errors.is_empty() {
                out.push(format!("client {client}: {}", errors.join(", ")));
            }
        }
        for t in self
            .timer
            .iter()
            .filter(|t| t.event == "closed" && t.outcome == Some(Outcome::Reset))
        {
            let prev = self
                .timer
                .iter()
                .filter(|p| p.who == t.who && p.conn == t.conn && p.t_ns + 500_000_000 < t.t_ns)
                .map(|p| p.t_ns)
                .max();
            if let Some(p) = prev {
                out.push(format!(
                    "{} conn {}: reset after {:.2}s idle",
                    t.who,
                    t.conn,
                    (t.t_ns - p) as f64 / 1e9
                ));
            }
        }
        for t in self.timer.iter().filter(|t| t.event == "alive_at_end") {
            let server_reset = self.timer.iter().any(|r| {
                r.who == "server" && r.conn == t.conn && r.outcome == Some(Outcome::Reset)
            });
            if server_reset {
                out.push(format!(
                    "{} conn {}: stale: the server's side was reset, the client was never told",
                    t.who, t.conn
                ));
            } else {
                out.push(format!("{} conn {}: still open at the end", t.who, t.conn));
            }
        }
        let updates = self
            .watchers
            .iter()
            .filter(|w| w["event"] == "updated")
            .count();
        let mut watchers: Vec<&str> = self
            .watchers
            .iter()
            .filter(|w| w["event"] == "watch_start")
            .filter_map(|w| w["who"].as_str())
            .collect();
        watchers.sort_unstable();
        for w in watchers {
            let seen = self
                .watchers
                .iter()
                .filter(|r| r["who"] == w && r["event"] == "event")
                .count();
            out.push(format!(
                "watcher {w}: received {seen} of {updates} update(s)"
            ));
        }
        out
    }

    /// A short human timeline, relative to the first SIGTERM sent.
    pub fn timeline(&self) -> String {
        let t0 = self
            .lifecycle
            .iter()
            .find(|l| l.event == "sigterm_sent")
            .map_or(self.started_ns, |l| l.t_ns);
        let rel = |t: u64| (t as f64 - t0 as f64) / 1e9;
        let end = self
            .lifecycle
            .iter()
            .find(|l| l.event == "teardown")
            .map_or(u64::MAX, |l| l.t_ns);
        let mut rows: Vec<(u64, String)> = Vec::new();
        for l in self.lifecycle.iter().filter(|l| l.t_ns < end) {
            if matches!(
                l.event.as_str(),
                "conn_error" | "watch_started" | "watch_ended"
            ) {
                continue;
            }
            let d = if l.detail.is_null() {
                String::new()
            } else {
                format!(" {}", l.detail)
            };
            rows.push((l.t_ns, format!("{:<8} {}{d}", l.instance, l.event)));
        }
        for e in &self.lb {
            rows.push((
                e.t_ns,
                format!("{:<8} LB {} marks {} {}", e.lb, e.lb, e.server, e.state),
            ));
        }
        // Errors grouped per client and outcome into bursts (gaps under a second), so a
        // burst is one line even when successes through other backends interleave.
        let mut errors: Vec<&RequestRecord> = self
            .requests
            .iter()
            .filter(|r| r.outcome.is_error())
            .collect();
        errors.sort_by_key(|r| (r.client.clone(), r.start_ns));
        let mut i = 0;
        while i < errors.len() {
            let first = errors[i];
            let mut j = i;
            while j + 1 < errors.len()
                && errors[j + 1].client == first.client
                && errors[j + 1].outcome == first.outcome
                && errors[j + 1].start_ns < errors[j].end_ns + 1_000_000_000
            {
                j += 1;
            }
            rows.push((
                first.start_ns,
                format!(
                    "{:<8} {} x {:?} until {:+.3}s: {}",
                    first.client,
                    j - i + 1,
                    first.outcome,
                    rel(errors[j].end_ns),
                    first.error.clone().unwrap_or_default()
                ),
            ));
            i = j + 1;
        }
        for t in &self.timer {
            if t.event == "closed" || t.event == "alive_at_end" {
                let o = t.outcome.map(|o| format!(" {o:?}")).unwrap_or_default();
                rows.push((t.t_ns, format!("{:<8} {} {}{o}", t.who, t.conn, t.event)));
            }
        }
        for r in self.idle_resets.iter().filter(|r| r["event"] == "reset") {
            if let (Some(t), Some(idle)) = (r["t_ns"].as_u64(), r["idle_s"].as_f64()) {
                rows.push((
                    t,
                    format!(
                        "{:<8} idle {idle:.2}s: RST to {} and {}",
                        "slb",
                        r["a"].as_str().unwrap_or("?"),
                        r["b"].as_str().unwrap_or("?")
                    ),
                ));
            }
        }
        for w in &self.watchers {
            if let (Some(t), Some(who), Some(ev)) =
                (w["t_ns"].as_u64(), w["who"].as_str(), w["event"].as_str())
            {
                rows.push((t, format!("{who:<8} {ev} {}", w["detail"])));
            }
        }
        rows.retain(|r| r.0 <= end);
        rows.sort_by_key(|r| r.0);
        let mut s = format!(
            "scenario {} (time scale {:.4}; T+0 = first SIGTERM)\n",
            self.scenario, self.time_scale
        );
        for (t, text) in rows {
            s.push_str(&format!("{:>+9.3}s  {text}\n", rel(t)));
        }
        s.push_str("findings:\n");
        for f in self.findings() {
            s.push_str(&format!("  {f}\n"));
        }
        s.push_str("client outcomes:\n");
        for (c, m) in self.summary() {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("  {c:<14} {}\n", parts.join(" ")));
        }
        s
    }
}
