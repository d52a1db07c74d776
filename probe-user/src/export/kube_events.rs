//! Verdicts as Kubernetes Events (events.k8s.io/v1), where operators look
//! during an incident (`kubectl get events`). One event per verdict,
//! regarding the apiserver pod when the pod watcher knows it (else this
//! Node); a verdict that grows patches the same event's `series` (count and
//! last time) instead of adding events.
//!
//! The pipeline never waits for the API: it hands each verdict it prints to
//! a bounded queue ([`Sender::send`], dropped and counted when full), and
//! one task writes with kube-rs. Writes are rate-limited per verdict (one
//! per [`PER_VERDICT`]: growth in between is coalesced into the next patch)
//! and globally (a token bucket), so a flapping rollout cannot flood the
//! API. A failed write is counted, logged once until a write succeeds, and
//! retried after the per-verdict interval; it is never fatal.
//!
//! A verdict that names the pods it hurt (client side: `Verdict::affected`)
//! also gets one event per pod, in the pod's namespace and regarding it,
//! where its owners look (`kubectl describe pod`, `kubectl get events -n
//! NS`): its connections, what happened and its own fix
//! ([`Verdict::fix_for`]), `related` to the object of the verdict's event.
//! At most [`PODS_PER_VERDICT`] pods per verdict, the most hurt first (the
//! rest counted as `capped`); each pod's event is written, limited and
//! grown as a verdict's is, keyed by (verdict, pod), and grows when the
//! pod's own count does.
//!
//! events.k8s.io/v1 makes `note` immutable after creation (kube-apiserver's
//! `ValidateEventUpdate`), so the note says what the verdict said when the
//! event was created; the latest count and window end go into the
//! annotations `drainwatch.io/disruptions` and `drainwatch.io/window-end`
//! with each patch.

use std::time::{Duration, Instant};

use drainwatch_correlate::{Affected, Cause, Path, Verdict};
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

use crate::{
    export::metrics::Metrics,
    sources::kubewatch::{self, PodWatch},
};

/// `reportingController` of every event drainwatch writes.
pub const REPORTING_CONTROLLER: &str = "drainwatch.io/drainwatch";
/// `action`: drainwatch observes, it does not act.
pub const ACTION: &str = "Observed";
/// kube-apiserver's limit on `note`, bytes.
pub const NOTE_LIMIT: usize = 1024;
/// kube-apiserver's limit on `reportingInstance`, `action` and `reason`.
const FIELD_LIMIT: usize = 128;
/// At most one write per verdict this often.
pub const PER_VERDICT: Duration = Duration::from_secs(10);
/// The global bucket: this many writes at once, then one per [`REFILL`].
const BURST: f64 = 20.0;
const REFILL: Duration = Duration::from_secs(3);
/// Verdicts waiting for the writer; beyond it they are dropped and counted.
const QUEUE: usize = 256;
/// Verdicts the writer follows (as many as the engine lists).
const TRACKED: usize = drainwatch_correlate::ARCHIVE_VERDICTS;
/// Pods told of one verdict, the most hurt first; the rest are counted
/// (`capped`), so one verdict cannot fan out into a burst of writes.
pub const PODS_PER_VERDICT: usize = 8;
/// Where an event regarding the Node goes: kube-apiserver accepts a
/// cluster-scoped `regarding` only in `default` or `kube-system`.
pub const NODE_EVENT_NAMESPACE: &str = "kube-system";

/// The event `reason` of a cause: CamelCase, one per cause (the route of
/// refused connections is in the note, not the reason).
pub fn reason(cause: Cause) -> &'static str {
    match cause {
        Cause::RefusedWhileNotListening { .. } => "ConnectionsRefused",
        Cause::LbDetectionSlow => "LBDetectionSlow",
        Cause::InflightCutAtTimeout => "InflightCutAtTimeout",
        Cause::HardClose => "HardClose",
        Cause::AcceptQueueReset { .. } => "AcceptQueueReset",
        Cause::GoawayThenFailed => "GoawayThenFailed",
        Cause::IdleResetByMiddlebox => "IdleResetByLB",
        Cause::SigkillAfterGrace => "SigkillAfterGrace",
        Cause::KilledWithoutTerm => "KilledWithoutSigterm",
        Cause::Unexplained => "UnexplainedFailures",
    }
}

fn path_words(cause: Cause) -> Option<&'static str> {
    let path = match cause {
        Cause::RefusedWhileNotListening { path } | Cause::AcceptQueueReset { path } => path,
        _ => return None,
    };
    Some(match path {
        Path::LocalHairpin => "local hairpin",
        Path::ViaLb => "via the load balancer",
        Path::Direct => "direct",
        Path::Unknown => "route unknown",
    })
}

/// The event's note: counts, window, what happened and the fix, cut at a
/// character boundary to kube-apiserver's 1 kB.
pub fn note(v: &Verdict) -> String {
    let start = v
        .window_wall
        .0
        .clone()
        .unwrap_or_else(|| format!("t={:.3}s", v.window.0 as f64 / 1e9));
    let route = path_words(v.cause)
        .map(|p| format!(" ({p})"))
        .unwrap_or_default();
    // The engine's sentences end with their fix; one that does not gets it.
    let fix = if v.sentence.contains(&v.fix) {
        String::new()
    } else {
        format!("; fix: {}", v.fix)
    };
    let text = format!(
        "{} disrupted{route} in {:.1} s from {start} on {}: {}{fix}",
        v.count,
        v.seconds(),
        v.instance.as_deref().unwrap_or("an unknown apiserver"),
        v.sentence,
    );
    bounded(&text, NOTE_LIMIT)
}

/// The note of a pod's event, addressed to its owners: its connections
/// and programs, of how many the verdict counts, the window, what happened
/// (the verdict's sentence without its list of workloads and its fix) and
/// the pod's own fix; bounded like [`note`], cutting what happened before
/// the fix.
pub fn pod_note(v: &Verdict, a: &Affected) -> String {
    let start = v
        .window_wall
        .0
        .clone()
        .unwrap_or_else(|| format!("t={:.3}s", v.window.0 as f64 / 1e9));
    let route = path_words(v.cause)
        .map(|p| format!(" ({p})"))
        .unwrap_or_default();
    let mut how = a.programs.clone();
    match a.without_keepalive {
        Some(n) if n == a.count => how.push("no TCP keepalive".into()),
        Some(0) | None => {}
        Some(n) => how.push(format!("{n} without TCP keepalive")),
    }
    let how = if how.is_empty() {
        String::new()
    } else {
        format!(" ({})", how.join("; "))
    };
    let its = if a.count == 1 {
        "1 connection of this pod".to_string()
    } else {
        format!("{} connections of this pod", a.count)
    };
    // The engine appends the workloads ("; hurt: ...") and the fix
    // ("; fix: ...") to the sentence; the pod's note has its own of both.
    let what = ["; hurt: ", "; fix: "]
        .iter()
        .find_map(|m| v.sentence.find(m))
        .map_or(v.sentence.as_str(), |i| &v.sentence[..i]);
    let head = format!(
        "{its}{how}, of {} disrupted{route} in {:.1} s from {start} on {}: ",
        v.count,
        v.seconds(),
        v.instance.as_deref().unwrap_or("an unknown apiserver"),
    );
    let fix = format!("; fix: {}", v.fix_for(a));
    let room = NOTE_LIMIT.saturating_sub(head.len() + fix.len());
    if room >= 64 {
        format!("{head}{}{fix}", bounded(what, room))
    } else {
        bounded(&format!("{head}{what}{fix}"), NOTE_LIMIT)
    }
}

/// `s` cut to at most `limit` bytes at a character boundary, with an
/// ellipsis when cut.
fn bounded(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let mut end = limit - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The object an event is about, and the namespace it goes in: the pod
/// named for the verdict's instance (`kube-apiserver-NODE`, as kubeadm and
/// OpenShift name the static pods, or the instance itself); else the one
/// pod the watch sees when it is limited to this node; else the Node.
/// Blind spots: an instance named unlike its pod (`--instance` set to
/// something else) on a watch not limited to the node regards the Node;
/// without `--node-name` the Node is named by the hostname, which may not
/// be the Node object's name (the event is still listed, about a Node
/// that does not exist).
pub fn regarding(
    instance: Option<&str>,
    pods: &[ObjectReference],
    node_only: bool,
    node: &str,
) -> (ObjectReference, String) {
    let named = instance.and_then(|i| {
        pods.iter().find(|p| {
            p.name
                .as_deref()
                .is_some_and(|n| n == i || n.strip_suffix(i).is_some_and(|h| h.ends_with('-')))
        })
    });
    let pod = named.or(if node_only && pods.len() == 1 {
        pods.first()
    } else {
        None
    });
    match pod {
        Some(p) => (p.clone(), p.namespace.clone().unwrap_or_default()),
        None => (
            ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
            NODE_EVENT_NAMESPACE.to_string(),
        ),
    }
}

/// Writes limited per verdict and by a global token bucket.
#[derive(Debug)]
pub struct Limiter {
    per_key: Duration,
    burst: f64,
    refill: Duration,
    tokens: f64,
    at: Instant,
}

impl Limiter {
    /// One write per key per `per_key`, and `burst` writes at once
    /// overall, refilled one per `refill`.
    pub fn new(per_key: Duration, burst: f64, refill: Duration, now: Instant) -> Limiter {
        Limiter {
            per_key,
            burst,
            refill,
            tokens: burst,
            at: now,
        }
    }

    /// Whether a key whose last write (or attempt) was `last` may be
    /// written `now`; takes a token when it may.
    pub fn allow(&mut self, last: Option<Instant>, now: Instant) -> bool {
        if last.is_some_and(|l| now < l + self.per_key) {
            return false;
        }
        let earned =
            now.saturating_duration_since(self.at).as_secs_f64() / self.refill.as_secs_f64();
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A verdict printed (new or grown), on its way to the writer.
#[derive(Debug)]
pub struct Sighting {
    /// The verdict's identity (the pipeline's key for it).
    pub key: String,
    /// The verdict as printed.
    pub verdict: Verdict,
    /// When it was printed.
    pub at: MicroTime,
}

/// The pipeline's end of the queue: never blocks.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Sighting>,
    metrics: Arc<Metrics>,
}

impl Sender {
    /// Queues a printed verdict; a full queue drops it (counted).
    pub fn send(&self, key: &str, v: &Verdict) {
        let s = Sighting {
            key: key.to_string(),
            verdict: v.clone(),
            at: MicroTime(k8s_openapi::jiff::Timestamp::now()),
        };
        if self.tx.try_send(s).is_err() {
            self.metrics
                .kube_events
                .with_label_values(&["dropped"])
                .inc();
        }
    }
}

/// Where and as whom the events are written.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pod watcher's credentials, namespace and known pods.
    pub pods: PodWatch,
    /// This node's name: `reportingInstance`, and the Node regarded when
    /// no pod is.
    pub node: String,
}

/// The queue between the pipeline and [`task`].
pub fn channel(metrics: Arc<Metrics>) -> (Sender, mpsc::Receiver<Sighting>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Sender { tx, metrics }, rx)
}

/// One verdict's event, or one pod's event about a verdict.
struct Series {
    key: String,
    verdict: Verdict,
    /// The pod told (its `namespace` and `pod` set), for a pod's event.
    pod: Option<Affected>,
    /// Pods of the verdict beyond [`PODS_PER_VERDICT`], as last counted.
    capped: usize,
    /// Times the verdict was printed (1 when new, +1 per growth).
    seen: i32,
    /// `seen` as last written (0: no event yet).
    written: i32,
    first_at: MicroTime,
    last_at: MicroTime,
    /// The event, once created: (namespace, name).
    event: Option<(String, String)>,
    last_attempt: Option<Instant>,
}

/// Writes the events until stopped; never returns an error (failures are
/// counted and the health of the source exported instead).
pub async fn task(
    o: Options,
    mut rx: mpsc::Receiver<Sighting>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    for r in ["created", "updated", "failed", "dropped", "capped"] {
        metrics.kube_events.with_label_values(&[r]).inc_by(0);
    }
    // Up until a write fails.
    metrics.source_up.with_label_values(&["kube_events"]).set(1);
    let mut series: Vec<Series> = Vec::new();
    let mut pod_series: Vec<Series> = Vec::new();
    let mut limiter = Limiter::new(PER_VERDICT, BURST, REFILL, Instant::now());
    let mut client: Option<kube::Client> = None;
    let mut client_tried: Option<Instant> = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            s = rx.recv() => match s {
                Some(s) => take(&mut series, &mut pod_series, s, &metrics),
                None => return Ok(()),
            },
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        while let Ok(s) = rx.try_recv() {
            take(&mut series, &mut pod_series, s, &metrics);
        }
        let c = match &client {
            Some(c) => c.clone(),
            None if series
                .iter()
                .chain(&pod_series)
                .any(|s| s.seen != s.written) =>
            {
                // A client that cannot be built (a kubeconfig wrong or not
                // mounted yet) is tried again as often as a write.
                if client_tried.is_some_and(|t| t.elapsed() < PER_VERDICT) {
                    continue;
                }
                client_tried = Some(Instant::now());
                match kubewatch::client(&o.pods).await {
                    Ok(c) => {
                        client = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        fail(&format!("{e:#}"), &metrics, &mut warned);
                        continue;
                    }
                }
            }
            None => continue,
        };
        let pods = o.pods.known.list();
        for s in series
            .iter_mut()
            .chain(pod_series.iter_mut())
            .filter(|s| s.seen != s.written)
        {
            let now = Instant::now();
            if !limiter.allow(s.last_attempt, now) {
                continue;
            }
            s.last_attempt = Some(now);
            let result = tokio::select! {
                r = write(&c, s, &o, &pods) => r,
                _ = stop.changed() => return Ok(()),
            };
            match result {
                Ok(what) => {
                    metrics.kube_events.with_label_values(&[what]).inc();
                    metrics.source_up.with_label_values(&["kube_events"]).set(1);
                    warned = false;
                }
                Err(e) => fail(&e, &metrics, &mut warned),
            }
        }
    }
}

/// A failed write: counted, the source down, said once until one succeeds.
fn fail(e: &str, metrics: &Metrics, warned: &mut bool) {
    metrics.kube_events.with_label_values(&["failed"]).inc();
    metrics.source_up.with_label_values(&["kube_events"]).set(0);
    if !*warned {
        tracing::warn!("Kubernetes Events: {e}; retrying every {PER_VERDICT:?}");
        *warned = true;
    }
}

/// Files a sighting under its verdict, and under each pod it names (the
/// first [`PODS_PER_VERDICT`]), keeping at most [`TRACKED`] verdicts and
/// as many times [`PODS_PER_VERDICT`] pods.
fn take(series: &mut Vec<Series>, pods: &mut Vec<Series>, s: Sighting, metrics: &Metrics) {
    let named: Vec<&Affected> = s
        .verdict
        .affected
        .iter()
        .filter(|a| a.namespace.is_some() && a.pod.is_some())
        .collect();
    let capped = named.len().saturating_sub(PODS_PER_VERDICT);
    for a in named.into_iter().take(PODS_PER_VERDICT) {
        match pods
            .iter_mut()
            .find(|x| x.key == s.key && same_pod(x.pod.as_ref(), a))
        {
            // The pod's event grows when its own count does.
            Some(x) => {
                if x.pod.as_ref().is_some_and(|p| p.count != a.count) {
                    x.seen = x.seen.saturating_add(1);
                    x.last_at = s.at.clone();
                }
                x.verdict = s.verdict.clone();
                x.pod = Some(a.clone());
            }
            None => file(
                pods,
                TRACKED * PODS_PER_VERDICT,
                Series::new(&s, Some(a.clone())),
                metrics,
            ),
        }
    }
    let earlier = match series.iter_mut().find(|x| x.key == s.key) {
        Some(x) => {
            x.verdict = s.verdict;
            x.seen = x.seen.saturating_add(1);
            x.last_at = s.at;
            let earlier = x.capped;
            x.capped = capped.max(earlier);
            earlier
        }
        None => {
            file(series, TRACKED, Series::new(&s, None), metrics);
            if let Some(x) = series.last_mut() {
                x.capped = capped;
            }
            0
        }
    };
    if capped > earlier {
        metrics
            .kube_events
            .with_label_values(&["capped"])
            .inc_by((capped - earlier) as u64);
    }
}

fn same_pod(p: Option<&Affected>, a: &Affected) -> bool {
    p.is_some_and(|p| p.namespace == a.namespace && p.pod == a.pod)
}

/// Adds a new series, making room beyond `limit`: the oldest already
/// written goes first; else the oldest, unwritten (counted as dropped).
fn file(list: &mut Vec<Series>, limit: usize, new: Series, metrics: &Metrics) {
    if list.len() >= limit {
        let i = list.iter().position(|x| x.seen == x.written).unwrap_or(0);
        if list[i].seen != list[i].written {
            metrics.kube_events.with_label_values(&["dropped"]).inc();
        }
        list.remove(i);
    }
    list.push(new);
}

impl Series {
    fn new(s: &Sighting, pod: Option<Affected>) -> Series {
        Series {
            key: s.key.clone(),
            verdict: s.verdict.clone(),
            pod,
            capped: 0,
            seen: 1,
            written: 0,
            first_at: s.at.clone(),
            last_at: s.at.clone(),
            event: None,
            last_attempt: None,
        }
    }

    /// The event's annotations: the cause, the disruptions it counts (the
    /// pod's own for a pod's event) and the window's end.
    fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        let count = self.pod.as_ref().map_or(self.verdict.count, |a| a.count);
        annotations(&self.verdict, count, &self.last_at)
    }
}

fn annotations(
    v: &Verdict,
    count: u64,
    last_at: &MicroTime,
) -> std::collections::BTreeMap<String, String> {
    let end = v
        .window_wall
        .1
        .clone()
        .unwrap_or_else(|| last_at.0.to_string());
    [
        ("drainwatch.io/cause", v.cause.label().to_string()),
        ("drainwatch.io/disruptions", count.to_string()),
        ("drainwatch.io/window-end", end),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Creates the verdict's event, or patches its series; an event gone (the
/// API's event TTL, an hour by default) is created again.
async fn write(
    c: &kube::Client,
    s: &mut Series,
    o: &Options,
    pods: &[ObjectReference],
) -> Result<&'static str, String> {
    if let Some((ns, name)) = &s.event {
        let api: Api<Event> = Api::namespaced(c.clone(), ns);
        let patch = serde_json::json!({
            "metadata": {"annotations": s.annotations()},
            "series": {"count": s.seen, "lastObservedTime": s.last_at},
        });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                s.written = s.seen;
                return Ok("updated");
            }
            Err(kube::Error::Api(st)) if st.code == 404 => s.event = None,
            Err(e) => return Err(format!("patching event {ns}/{name}: {e}")),
        }
    }
    let (verdict_about, verdict_ns) = regarding(
        s.verdict.instance.as_deref(),
        pods,
        o.pods.node.is_some(),
        &o.node,
    );
    // A pod's event regards the pod, in its namespace, related to what the
    // verdict's event regards.
    let (about, ns, related, note) = match &s.pod {
        Some(a) => {
            let ns = a.namespace.clone().unwrap_or_default();
            let pod = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: a.pod.clone(),
                namespace: Some(ns.clone()),
                uid: a.pod_uid.clone(),
                ..Default::default()
            };
            (pod, ns, Some(verdict_about), pod_note(&s.verdict, a))
        }
        None => (verdict_about, verdict_ns, None, note(&s.verdict)),
    };
    let unix_ns = s.first_at.0.as_nanosecond();
    // As client-go names events: the object's name and the time in hex.
    let name = format!(
        "{}.{:x}",
        bounded(about.name.as_deref().unwrap_or("drainwatch"), 200),
        unix_ns
    );
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            annotations: Some(s.annotations()),
            ..Default::default()
        },
        event_time: Some(s.first_at.clone()),
        action: Some(ACTION.into()),
        reason: Some(reason(s.verdict.cause).into()),
        note: Some(note),
        type_: Some("Warning".into()),
        regarding: Some(about),
        related,
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(bounded(&o.node, FIELD_LIMIT)),
        series: (s.seen >= 2).then(|| k8s_openapi::api::events::v1::EventSeries {
            count: s.seen,
            last_observed_time: s.last_at.clone(),
        }),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(c.clone(), &ns);
    match api.create(&PostParams::default(), &ev).await {
        Ok(_) => {
            s.event = Some((ns, name));
            s.written = s.seen;
            Ok("created")
        }
        // Ours already (the name carries the verdict's first time): an
        // earlier create whose answer was lost. A series still owed is
        // patched next time.
        Err(kube::Error::Api(st)) if st.code == 409 => {
            s.event = Some((ns, name));
            if s.seen < 2 {
                s.written = s.seen;
            }
            Ok("created")
        }
        Err(e) => Err(format!("creating event {ns}/{name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(cause: Cause) -> Verdict {
        Verdict {
            cause,
            instance: Some("m1".into()),
            cycle: Some(0),
            window: (1_000_000_000, 3_500_000_000),
            window_wall: (Some("2026-12-07T14:00:01.000000Z".into()), None),
            count: 7,
            evidence: vec![1, 2],
            sentence: "the load balancer kept sending new connections".into(),
            fix: "health-check /readyz".into(),
            measured: None,
            affected: Vec::new(),
            affected_more: 0,
        }
    }

    #[test]
    fn every_cause_has_a_camel_case_reason() {
        let causes = [
            Cause::RefusedWhileNotListening {
                path: Path::LocalHairpin,
            },
            Cause::RefusedWhileNotListening { path: Path::ViaLb },
            Cause::RefusedWhileNotListening { path: Path::Direct },
            Cause::RefusedWhileNotListening {
                path: Path::Unknown,
            },
            Cause::LbDetectionSlow,
            Cause::InflightCutAtTimeout,
            Cause::HardClose,
            Cause::AcceptQueueReset { path: Path::ViaLb },
            Cause::GoawayThenFailed,
            Cause::IdleResetByMiddlebox,
            Cause::SigkillAfterGrace,
            Cause::KilledWithoutTerm,
            Cause::Unexplained,
        ];
        // Every label the engine exports is covered.
        let labels: std::collections::BTreeSet<&str> = causes.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), Cause::LABELS.len());
        let expected = [
            "ConnectionsRefused",
            "ConnectionsRefused",
            "ConnectionsRefused",
            "ConnectionsRefused",
            "LBDetectionSlow",
            "InflightCutAtTimeout",
            "HardClose",
            "AcceptQueueReset",
            "GoawayThenFailed",
            "IdleResetByLB",
            "SigkillAfterGrace",
            "KilledWithoutSigterm",
            "UnexplainedFailures",
        ];
        for (c, want) in causes.iter().zip(expected) {
            let r = reason(*c);
            assert_eq!(r, want, "{c:?}");
            assert!(
                r.len() <= FIELD_LIMIT
                    && r.starts_with(|ch: char| ch.is_ascii_uppercase())
                    && r.chars().all(|ch| ch.is_ascii_alphanumeric()),
                "{r}"
            );
        }
    }

    #[test]
    fn note_has_counts_window_and_fix_and_is_bounded() {
        let v = verdict(Cause::RefusedWhileNotListening { path: Path::ViaLb });
        assert_eq!(
            note(&v),
            "7 disrupted (via the load balancer) in 2.5 s from 2026-12-07T14:00:01.000000Z on m1: the load balancer kept sending new connections; fix: health-check /readyz"
        );
        // The fix once, when the sentence already ends with it.
        let mut v = v;
        v.sentence.push_str("; fix: health-check /readyz");
        assert!(note(&v).ends_with("connections; fix: health-check /readyz"));
        let mut long = verdict(Cause::HardClose);
        long.sentence = "é".repeat(800);
        let n = note(&long);
        assert!(n.len() <= NOTE_LIMIT && n.ends_with('…'), "{}", n.len());
        assert!(n.starts_with("7 disrupted in 2.5 s"), "{n}");
    }

    fn idle_verdict(pods: usize) -> Verdict {
        let mut v = verdict(Cause::IdleResetByMiddlebox);
        v.sentence = "a middlebox reset 2 idle connections to m1 after 4.0 s of silence: its idle timeout is 4.0 s; 2 had no TCP keepalive; hurt: pod default/py-watcher (1; python3; no TCP keepalive), process curl (1; no TCP keepalive); fix: ...".into();
        v.affected = (0..pods)
            .map(|i| Affected {
                workload: format!("pod team-{i}/web-{i}"),
                namespace: Some(format!("team-{i}")),
                pod: Some(format!("web-{i}")),
                pod_uid: Some(format!("uid-{i}")),
                programs: vec!["python3".into()],
                count: 1,
                without_keepalive: Some(1),
            })
            .chain(std::iter::once(Affected {
                workload: "process curl".into(),
                namespace: None,
                pod: None,
                pod_uid: None,
                programs: vec!["curl".into()],
                count: 1,
                without_keepalive: Some(1),
            }))
            .collect();
        v
    }

    #[test]
    fn pod_note_names_its_connections_what_happened_and_its_fix() {
        let mut v = idle_verdict(1);
        v.affected[0].count = 2;
        v.affected[0].without_keepalive = Some(1);
        let a = &v.affected[0];
        assert_eq!(
            pod_note(&v, a),
            format!(
                "2 connections of this pod (python3; 1 without TCP keepalive), of 7 disrupted in 2.5 s from 2026-12-07T14:00:01.000000Z on m1: a middlebox reset 2 idle connections to m1 after 4.0 s of silence: its idle timeout is 4.0 s; 2 had no TCP keepalive; fix: {}",
                v.fix_for(a)
            )
        );
        assert!(
            v.fix_for(a)
                .starts_with("pod team-0/web-0: the Python client")
        );
        // A long sentence is cut, the fix never.
        v.sentence = "é".repeat(800);
        let n = pod_note(&v, a);
        assert!(n.len() <= NOTE_LIMIT, "{}", n.len());
        assert!(n.ends_with(&format!("…; fix: {}", v.fix_for(a))), "{n}");
    }

    #[test]
    fn pods_are_told_up_to_the_cap_and_grow_with_their_own_count() {
        let metrics = Metrics::new(&[]).expect("metrics");
        let capped = || metrics.kube_events.with_label_values(&["capped"]).get();
        let (mut series, mut pods) = (Vec::new(), Vec::new());
        let at = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let sight = |v: &Verdict| Sighting {
            key: "idle|m1".into(),
            verdict: v.clone(),
            at: at.clone(),
        };
        let mut v = idle_verdict(PODS_PER_VERDICT + 2);
        take(&mut series, &mut pods, sight(&v), &metrics);
        assert_eq!(series.len(), 1);
        // The host process has no pod: no event of its own.
        let told: Vec<&str> = pods
            .iter()
            .filter_map(|p| p.pod.as_ref().and_then(|a| a.pod.as_deref()))
            .collect();
        let want: Vec<String> = (0..PODS_PER_VERDICT).map(|i| format!("web-{i}")).collect();
        assert_eq!(told, want);
        assert_eq!(capped(), 2);
        // Printed again, one pod hurt more: only its event grows, and the
        // same pods beyond the cap are not counted twice.
        v.affected[1].count = 2;
        v.count += 1;
        take(&mut series, &mut pods, sight(&v), &metrics);
        assert_eq!(series[0].seen, 2);
        let seen: Vec<i32> = pods.iter().map(|p| p.seen).collect();
        let mut want = vec![1; PODS_PER_VERDICT];
        want[1] = 2;
        assert_eq!(seen, want);
        assert_eq!(capped(), 2);
        assert_eq!(
            pods[1].annotations()["drainwatch.io/disruptions"],
            "2",
            "a pod's event counts its own connections"
        );
        assert_eq!(series[0].annotations()["drainwatch.io/disruptions"], "8");
        // One more pod named beyond the cap: counted once.
        v.affected.insert(
            0,
            Affected {
                pod: Some("extra".into()),
                ..v.affected[0].clone()
            },
        );
        take(&mut series, &mut pods, sight(&v), &metrics);
        assert_eq!(capped(), 3);
    }

    #[test]
    fn regarding_the_instance_pod_else_the_node() {
        let pod = |name: &str| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.into()),
            namespace: Some("kube-system".into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        };
        let pods = [pod("kube-apiserver-m1"), pod("kube-apiserver-m2")];
        let (r, ns) = regarding(Some("m2"), &pods, false, "node-a");
        assert_eq!(
            (r.name.as_deref(), ns.as_str()),
            (Some("kube-apiserver-m2"), "kube-system")
        );
        // "m1" is not a suffix match of "xm1".
        let (r, ns) = regarding(Some("m1"), &[pod("kube-apiserver-xm1")], false, "node-a");
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), ns.as_str()),
            (Some("Node"), Some("node-a"), NODE_EVENT_NAMESPACE)
        );
        // A watch limited to this node: its one pod, whatever its name.
        let (r, _) = regarding(Some("10.0.0.1"), &pods[..1], true, "node-a");
        assert_eq!(r.name.as_deref(), Some("kube-apiserver-m1"));
        // Several pods and no name match: the Node.
        let (r, _) = regarding(None, &pods, true, "node-a");
        assert_eq!(r.kind.as_deref(), Some("Node"));
    }

    #[test]
    fn limiter_one_write_per_verdict_interval_and_a_global_bucket() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(10), 3.0, Duration::from_secs(2), t0);
        // New verdicts: the burst, then nothing until a token is earned.
        assert!(l.allow(None, t0));
        assert!(l.allow(None, t0));
        assert!(l.allow(None, t0));
        assert!(!l.allow(None, t0));
        assert!(!l.allow(None, t0 + Duration::from_millis(1900)));
        assert!(l.allow(None, t0 + Duration::from_secs(2)));
        // One written at t0: not again before t0 + 10 s, tokens or not.
        let later = t0 + Duration::from_secs(9);
        assert!(!l.allow(Some(t0), later));
        assert!(l.allow(Some(t0), t0 + Duration::from_secs(10)));
        // The bucket never holds more than its burst.
        let idle = t0 + Duration::from_secs(600);
        assert!((0..3).all(|_| l.allow(None, idle)));
        assert!(!l.allow(None, idle));
    }
}
