//! The correlation stage: observations to the engine (and the recording),
//! verdicts printed once each (again when they grow), totals exported.

use drainwatch_correlate::{PhaseKind, Report};

use std::sync::Arc;

use crate::{
    decode::{event::Event, observe},
    export::{api::Api, metrics::Metrics},
    pipeline::{Output, record::Recorder},
};

/// How long the engine keeps raw observations (a rollout in progress is
/// always kept whole), ns.
const KEEP_NS: u64 = 600_000_000_000;

/// When a connection close outside any rollout is forgotten, ns: late
/// enough that the rollout it could belong to has shown itself (its
/// signal and listener close come through the same ring buffer; the
/// /readyz poller reports within its interval).
const PRUNE_AFTER_NS: u64 = 5_000_000_000;

/// What the reader feeds besides stdout and metrics: the correlation
/// engine, the recording, and which verdicts were already reported.
pub struct Correlation {
    pub engine: drainwatch_correlate::Engine,
    recorder: Option<Recorder>,
    /// drainwatch's own connections (poller, prober), kept out.
    own: observe::OwnConnections,
    next_id: u64,
    /// Verdicts printed so far, by identity, with what was printed: a verdict
    /// that grows (more failed connections, a longer window) is printed again
    /// as an update.
    reported: std::collections::HashMap<String, String>,
    /// Totals already exported (counters never go down even if a late
    /// observation reclassifies a verdict).
    exported: std::collections::HashMap<String, (u64, f64)>,
    /// The JSON API: every event, and the verdicts and timelines of each report.
    api: Arc<Api>,
    /// Kubernetes Events: each verdict printed, new or grown (never blocks).
    pub kube_events: Option<crate::export::kube_events::Sender>,
}

impl Correlation {
    /// The engine with `config`, recording to `record` if given, serving
    /// what it sees and concludes through `api`.
    pub fn new(
        config: drainwatch_correlate::Config,
        record: Option<std::path::PathBuf>,
        api: Arc<Api>,
    ) -> anyhow::Result<Correlation> {
        Ok(Correlation {
            engine: drainwatch_correlate::Engine::new(config.clone())
                .map_err(|e| anyhow::anyhow!("correlation settings: {e}"))?,
            recorder: record.map(|p| Recorder::create(p, &config)).transpose()?,
            own: Default::default(),
            next_id: 0,
            reported: Default::default(),
            exported: Default::default(),
            api,
            kube_events: None,
        })
    }

    /// Feeds `obs`, the observation `ev` maps to, unless `ev` is kept out.
    pub fn push(
        &mut self,
        ev: &Event,
        obs: Option<drainwatch_correlate::Observation>,
        metrics: &Metrics,
        watched: &[u16],
    ) {
        if observe::stray_client_reset(ev, watched) {
            return;
        }
        if self.own.is_own(ev) {
            metrics.ignored_own_connection();
            return;
        }
        if let Some(o) = obs {
            self.push_observation(o);
        }
    }

    /// Keeps `ev` for the HTTP API's event list (every decoded event, as on
    /// stdout with --output json): moved, not copied, as its last use.
    pub fn keep_event(&self, ev: Event) {
        self.api.push_event(ev);
    }

    /// Numbers, records and feeds one observation.
    pub fn push_observation(&mut self, mut o: drainwatch_correlate::Observation) {
        o.id = self.next_id;
        self.next_id += 1;
        if let Some(r) = &mut self.recorder
            && let Err(e) = r.write(&o)
        {
            tracing::warn!(
                "--record {}: write failed ({e}); recording stopped",
                r.path.display()
            );
            self.recorder = None;
        }
        self.engine.push(o);
    }

    /// Prints verdicts not reported yet (or changed since) and exports the
    /// engine's totals; with `last`, also the whole final report (JSON) or a
    /// count (text), as the daemon exits.
    pub fn report(
        &mut self,
        metrics: &Metrics,
        output: Output,
        out: &mut impl std::io::Write,
        last: bool,
        boot_to_unix_ns: i128,
    ) {
        if let Some(r) = &mut self.recorder {
            let _ = r.flush();
        }
        let report = self.engine.report().clone();
        self.print_verdicts(&report, output, out);
        if last {
            print_final(&report, output, out);
        }
        self.export(&report, metrics, boot_to_unix_ns);
        self.api.set_report(&report);
        // Keep memory and the per-second recomputation bounded: closes
        // outside any rollout are forgotten after 5 s, and what is
        // older than ten minutes is archived (its verdicts and totals kept),
        // never splitting a rollout still in progress.
        let now = crate::sources::http::boot_ns();
        self.engine.prune_closes(now.saturating_sub(PRUNE_AFTER_NS));
        self.engine.compact(now.saturating_sub(KEEP_NS));
        metrics.set_engine_sizes(
            self.engine.len(),
            report.timelines.len(),
            report.verdicts.len(),
        );
    }

    /// Each verdict new or changed since the last report, once.
    fn print_verdicts(&mut self, report: &Report, output: Output, out: &mut impl std::io::Write) {
        let mut listed = std::collections::HashSet::with_capacity(report.verdicts.len());
        for v in &report.verdicts {
            // Identity: cause (with its path), instance, rollout and the first
            // evidence, which later evidence does not change.
            let key = format!(
                "{}/{:?}/{:?}/{:?}/{:?}",
                v.cause.label(),
                serde_json::to_string(&v.cause).unwrap_or_default(),
                v.instance,
                v.cycle,
                v.evidence.first()
            );
            let seen = serde_json::to_string(v).unwrap_or_default();
            listed.insert(key.clone());
            let update = match self.reported.get(&key) {
                Some(prev) if *prev == seen => continue,
                Some(_) => true,
                None => false,
            };
            if let Some(k) = &self.kube_events {
                k.send(&key, v);
            }
            self.reported.insert(key, seen);
            tracing::warn!("{}{}", if update { "(update) " } else { "" }, v.line());
            let line = match output {
                Output::Text if update => Some(format!("VERDICT (update) {}", v.line())),
                Output::Text => Some(format!("VERDICT {}", v.line())),
                Output::Json if update => {
                    serde_json::to_string(&serde_json::json!({ "verdict": v, "update": true })).ok()
                }
                Output::Json => serde_json::to_string(&serde_json::json!({ "verdict": v })).ok(),
                Output::None => None,
            };
            if let Some(line) = line {
                let _ = writeln!(out, "{line}");
            }
        }
        // Verdicts the engine no longer lists (beyond its archive's limit)
        // cannot change again: forget them too.
        self.reported.retain(|k, _| listed.contains(k));
    }

    /// The engine's totals as metrics: counters only grow, even if a late
    /// observation reclassifies a verdict. Phase times go out as Unix
    /// seconds (`boot_to_unix_ns` is the offset the events' wall times use),
    /// which is what Grafana and PromQL's `time()` compare against.
    fn export(&mut self, report: &Report, metrics: &Metrics, boot_to_unix_ns: i128) {
        for (cause, t) in &report.summary.by_cause {
            let prev = self.exported.entry(cause.clone()).or_insert((0, 0.0));
            if t.disruptions > prev.0 {
                metrics
                    .disruptions
                    .with_label_values(&[cause])
                    .inc_by(t.disruptions - prev.0);
                prev.0 = t.disruptions;
            }
            if t.seconds > prev.1 {
                metrics
                    .disruption_seconds
                    .with_label_values(&[cause])
                    .inc_by(t.seconds - prev.1);
                prev.1 = t.seconds;
            }
        }
        for (instance, t) in &report.summary.lb_detection_seconds {
            metrics
                .lb_detection_seconds
                .with_label_values(&[instance])
                .set(*t);
        }
        // The furthest phase in rollout order, not the latest in time: the
        // /healthz poll can report red after the exit, which would move a
        // state timeline backwards.
        let mut furthest: std::collections::BTreeMap<&str, usize> = Default::default();
        for p in &report.summary.phases {
            metrics
                .phase_timestamp
                .with_label_values(&[&p.instance, &p.phase])
                .set(unix_seconds(p.t_ns, boot_to_unix_ns));
            let number = PhaseKind::ALL
                .iter()
                .find(|k| k.label() == p.phase)
                .map_or(0, |k| k.number());
            let e = furthest.entry(&p.instance).or_default();
            *e = (*e).max(number);
        }
        for (instance, number) in furthest {
            metrics
                .phase_current
                .with_label_values(&[instance])
                .set(i64::try_from(number).unwrap_or(0));
        }
    }
}

/// A boot-clock instant as Unix time in seconds.
fn unix_seconds(boot_ns: u64, boot_to_unix_ns: i128) -> f64 {
    (i128::from(boot_ns) + boot_to_unix_ns) as f64 / 1e9
}

/// The whole final report (JSON) or a count (text), as the daemon exits.
fn print_final(report: &Report, output: Output, out: &mut impl std::io::Write) {
    let line = match output {
        Output::Json => serde_json::to_string(&serde_json::json!({ "report": report })).ok(),
        Output::Text => Some(format!(
            "SUMMARY {} verdict(s), {} rollout(s), from {} observation(s)",
            report.verdicts.len(),
            report.timelines.len(),
            report.stats.observations
        )),
        Output::None => None,
    };
    if let Some(line) = line {
        let _ = writeln!(out, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::unix_seconds;

    #[test]
    fn phase_times_are_unix_seconds() {
        // 100 s after boot, on a host that booted at 2026-12-07T00:00:00Z.
        let booted = 1_796_601_600_000_000_000_i128;
        assert_eq!(unix_seconds(100_000_000_000, booted), 1_796_601_700.0);
        assert_eq!(unix_seconds(1_500_000_000, booted), 1_796_601_601.5);
    }
}
