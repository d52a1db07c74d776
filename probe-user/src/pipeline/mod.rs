//! The pipeline: the one task that owns per-event state. Each kernel
//! record is decoded, counted, printed (the single sink for text and JSON
//! lines), fed to the correlation engine and to the live idle-reset
//! inference; the HTTP side's observations join it here.

pub mod correlation;
pub mod goaway;
pub mod owners;
pub mod record;

use std::sync::Arc;

use drainwatch_correlate::{
    Obs, Observation, ResetOrigin,
    idle::{IdleResets, IdleSample},
};

use crate::{
    decode::{
        event::{DecodeContext, decode, parse_raw},
        observe,
    },
    export::metrics::Metrics,
};
pub use correlation::Correlation;

/// How events are printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
    /// Nothing; metrics only.
    None,
}

/// Everything the per-event path owns.
pub struct Pipeline {
    pub cx: DecodeContext,
    pub metrics: Arc<Metrics>,
    pub watched: Vec<u16>,
    pub output: Output,
    pub idle: IdleResets,
    pub corr: Correlation,
    /// Processes worth a look for Go HTTP/2 hooks (they opened a listener
    /// or a connection on a watched port, or started with a watched name).
    pub go_hints: Option<tokio::sync::mpsc::Sender<crate::sources::goh2::Hint>>,
    /// Shutdown GOAWAYs from those sent while serving.
    pub goaway: goaway::GoawayClassifier,
    /// Who opened each connection (process, pod).
    pub owners: owners::Owners,
    /// Endpoint mode (a client node): every watched connection is to the
    /// apiserver endpoint, so the wire's observations are about it too,
    /// named as the kernel's are (the engine's default instance).
    pub endpoint_instance: Option<String>,
}

impl Pipeline {
    /// Decodes one ring-buffer record, counts it, prints it, correlates it,
    /// and reports an idle-reset cluster when this record completes one.
    pub fn record(&mut self, buf: &[u8], out: &mut impl std::io::Write) {
        let mut ev = match parse_raw(buf).and_then(|raw| decode(&raw, &self.cx)) {
            Ok(ev) => ev,
            Err(e) => {
                self.metrics.lost_counter("decode").inc();
                tracing::warn!("undecodable event ({e}); counted as lost");
                return;
            }
        };
        let goaway_why = self.goaway.classify(&ev);
        if let Some(why) = goaway_why
            && let Some(g) = ev.go.as_mut()
        {
            g.sent = Some(why.as_str());
            if why == goaway::GoawayWhy::WhileServing {
                self.metrics
                    .goaway_while_serving
                    .with_label_values(&[&ev.service_port(&self.watched).to_string()])
                    .inc();
            }
        }
        self.attribute(&mut ev);
        self.metrics.observe(&ev, &self.watched);
        self.hint_go(&ev);
        // One mapping per event, for the engine and the live idle finding.
        // A GOAWAY that only answers the client's says nothing about the
        // server's lifecycle: not a rollout phase.
        let obs = match goaway_why {
            Some(goaway::GoawayWhy::Answer) => None,
            _ => observe::observation(&ev, 0).map(|mut o| {
                observe::orient_goaway(&mut o, &self.watched);
                if o.instance.is_none() {
                    o.instance = self.endpoint_instance.clone();
                }
                o
            }),
        };
        let idle_sample = match obs.as_ref().map(|o| &o.kind) {
            Some(&Obs::WireReset {
                origin,
                silence_s,
                answered_packet,
                keepalive,
                ..
            }) => Some((
                IdleSample {
                    silence_s,
                    answered: answered_packet == Some(true),
                    keepalive,
                },
                origin == ResetOrigin::Middlebox,
            )),
            _ => None,
        };
        self.corr.push(&ev, obs, &self.metrics, &self.watched);
        let line = match self.output {
            Output::Text => Some(ev.human()),
            Output::Json => serde_json::to_string(&ev).ok(),
            Output::None => None,
        };
        if let Some(line) = line
            && writeln!(out, "{line}").is_err()
        {
            tracing::debug!("stdout closed; event not printed");
        }
        if let Some((sample, middlebox)) = idle_sample {
            self.idle_finding(ev.ts_boot_ns, sample, middlebox, out);
        }
        self.corr.keep_event(ev);
    }

    /// Names the connection's owner and counts its events by namespace.
    fn attribute(&mut self, ev: &mut crate::decode::event::Event) {
        if let Some(named) = self.owners.attribute(ev) {
            self.metrics
                .connection_owners
                .with_label_values(&[named.as_str()])
                .inc();
        }
        if let Some(o) = &ev.owner
            && ev.kind != crate::decode::event::EventKind::ConnectAttempt
        {
            let ns = self.owners.namespace_label(o);
            self.metrics
                .client_events
                .with_label_values(&[&ns, ev.kind.as_str()])
                .inc();
        }
    }

    /// Hands the process behind a listener, a connect or an exec to the Go
    /// uprobes' task (which looks at each process once). A full channel
    /// drops the hint: the task's periodic scan finds servers anyway.
    fn hint_go(&self, ev: &crate::decode::event::Event) {
        use crate::decode::event::EventKind;
        let Some(tx) = &self.go_hints else {
            return;
        };
        if matches!(
            ev.kind,
            EventKind::ListenOpen | EventKind::ConnectAttempt | EventKind::ProcessExec
        ) && let Some(pid) = ev.pid
        {
            let _ = tx.try_send(crate::sources::goh2::Hint {
                pid,
                recheck: matches!(ev.kind, EventKind::ProcessExec | EventKind::ListenOpen),
            });
        }
    }

    /// An observation from the HTTP side (poller, prober, pod watch), on the
    /// kernel's time axis.
    pub fn observation(&mut self, mut o: Observation) {
        observe::stamp_wall(&mut o, self.cx.boot_to_unix_ns);
        self.corr.push_observation(o);
    }

    /// New and changed verdicts, and the totals as metrics; with `last`,
    /// the final report.
    pub fn report(&mut self, out: &mut impl std::io::Write, last: bool) {
        self.corr.report(
            &self.metrics,
            self.output,
            out,
            last,
            self.cx.boot_to_unix_ns,
        );
    }

    /// The live idle-reset finding, from the engine's own rule (correlate's
    /// `idle::infer`), fed the same observation as the engine.
    fn idle_finding(
        &mut self,
        t_ns: u64,
        sample: IdleSample,
        middlebox: bool,
        out: &mut impl std::io::Write,
    ) {
        let Some(c) = self.idle.observe(
            t_ns,
            sample,
            middlebox,
            self.corr.engine.config().tolerance_s,
        ) else {
            return;
        };
        tracing::warn!("{c}");
        self.metrics
            .inferred_idle_timeout
            .with_label_values(&[c.origin])
            .set(c.inference.timeout_s);
        let line = match self.output {
            Output::Text => Some(format!("FINDING idle-reset cluster: {c}")),
            Output::Json => serde_json::to_string(&serde_json::json!({
                "finding": "idle_reset_cluster",
                "summary": c.to_string(),
                "cluster": c,
            }))
            .ok(),
            Output::None => None,
        };
        if let Some(line) = line {
            let _ = writeln!(out, "{line}");
        }
    }
}
