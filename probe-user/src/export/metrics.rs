//! Prometheus metrics, declared as one table grouped by area.
//!
//! Labels are bounded: `port` takes only watched ports, `state` and
//! `reason` only kernel enum names; no per-address labels. The apiserver an
//! observation belongs to is the label `apiserver`, not `instance`:
//! Prometheus sets `instance` to the scrape target and would overwrite it.

use std::sync::OnceLock;

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use drainwatch_correlate::{Direction, ResetOrigin};

use crate::decode::event::{Event, EventKind};

/// Declares [`Metrics`]: one field per row, registered in this order.
macro_rules! metrics_table {
    ($( $field:ident : $ty:ty = ($name:literal, $help:literal, [$($label:literal),*] $(, $buckets:expr)?) ),* $(,)?) => {
        /// Every metric the daemon exports.
        pub struct Metrics {
            /// `events` per kind, resolved once (indexed by `EventKind as
            /// usize`): a label lookup per event is a hash of the label strings.
            events_by_kind: Vec<IntCounter>,
            /// Each watched port's series, resolved once (see [`PortSeries`]).
            ports: Vec<(u16, PortSeries)>,
            /// `correlation_ignored{reason="own_connection"}`, resolved once.
            own_connection: OnceLock<IntCounter>,
            pub registry: Registry,
            $( #[doc = $help] pub $field: $ty, )*
        }

        /// Every metric's name and help, in the table's order.
        pub const DECLARED: &[(&str, &str)] = &[$( ($name, $help), )*];

        impl Metrics {
            fn register(r: Registry) -> prometheus::Result<Metrics> {
                Ok(Metrics {
                    events_by_kind: Vec::new(),
                    ports: Vec::new(),
                    own_connection: OnceLock::new(),
                    $( $field: declare(&r, $name, $help, &[$($label),*], metrics_table!(@buckets $($buckets)?))?, )*
                    registry: r,
                })
            }
        }
    };
    (@buckets) => { &[] };
    (@buckets $b:expr) => { $b };
}

metrics_table! {
    // Connections on watched ports (kernel tracepoints).
    connect_attempts: IntCounterVec = ("drainwatch_connect_attempts_total", "Connect attempts (SYN sent) to or from a watched port.", ["port"]),
    connect_established: IntCounterVec = ("drainwatch_connect_established_total", "Connects that completed the handshake.", ["port"]),
    connect_refused: IntCounterVec = ("drainwatch_connect_refused_total", "Connects refused: the SYN was answered by an RST.", ["port"]),
    connect_timeouts: IntCounterVec = ("drainwatch_connect_timeouts_total", "Connects that timed out after SYN retransmits.", ["port"]),
    connect_failures: IntCounterVec = ("drainwatch_connect_failures_total", "Connects that failed otherwise: `error` (ICMP and other socket errors) or `aborted` (closed by the application during the handshake).", ["port", "cause"]),
    accepted: IntCounterVec = ("drainwatch_connections_accepted_total", "Connections accepted by a local listener on a watched port.", ["port"]),
    closed: IntCounterVec = ("drainwatch_connections_closed_total", "Established connections that reached CLOSE, by the state they left.", ["port", "from_state"]),
    handshake_seconds: HistogramVec = ("drainwatch_handshake_seconds", "Time from SYN sent to ESTABLISHED for connects this host made.", ["port"], &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 7.0, 15.0,]),
    lifetime_seconds: HistogramVec = ("drainwatch_connection_lifetime_seconds", "Lifetime of closed connections, from ESTABLISHED to CLOSE.", ["port"], &[0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 240.0, 600.0, 3600.0, 86400.0,]),
    listeners: IntGaugeVec = ("drainwatch_listeners", "Listening sockets on a watched port.", ["port"]),
    listener_up: IntGaugeVec = ("drainwatch_listener_up", "1 while at least one socket listens on the watched port.", ["port"]),
    // RSTs as the kernel saw them.
    resets: IntCounterVec = ("drainwatch_resets_total", "RSTs sent or received on watched ports, by the TCP state they hit.", ["port", "direction", "state"]),
    reset_reasons: IntCounterVec = ("drainwatch_reset_reasons_total", "RSTs this host sent, by the kernel's reset reason.", ["port", "reason"]),
    // The wire (TC classifier): RST origin and silence, keepalives, GOAWAYs, the flow table.
    wire_resets: IntCounterVec = ("drainwatch_wire_resets_total", "RSTs seen on the wire by the TC classifier, by direction and by who sent them (peer, middlebox, local, unknown).", ["port", "direction", "origin"]),
    reset_idle_seconds: HistogramVec = ("drainwatch_reset_idle_seconds", "Silence before an RST received on the wire, by origin.", ["port", "origin"], &[0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 240.0, 300.0, 600.0, 1800.0, 3600.0,]),
    keepalive_probes: IntCounterVec = ("drainwatch_keepalive_probes_total", "TCP keepalive probes seen on the wire.", ["port", "direction"]),
    goaways: IntCounterVec = ("drainwatch_goaway_total", "HTTP/2 GOAWAY frames sent or received on watched ports, by direction, error code and source: wire (cleartext HTTP/2 seen by the classifier) or uprobe (a Go program's own HTTP/2 code, TLS included).", ["port", "direction", "error_code", "source"]),
    goaway_while_serving: IntCounterVec = ("drainwatch_goaway_while_serving_total", "GOAWAY frames a Go server sent while serving on (no terminating signal, no listener closed in the 3 minutes before): connection rebalancing such as kube-apiserver's --goaway-chance, a rate to watch rather than a disruption.", ["port"]),
    refused_streams: IntCounterVec = ("drainwatch_refused_streams_total", "HTTP/2 streams refused (RST_STREAM REFUSED_STREAM) on watched ports, sent or received by a Go program.", ["port", "direction"]),
    go_rst_streams: IntCounterVec = ("drainwatch_go_rst_streams_total", "HTTP/2 RST_STREAM frames Go programs sent or received, on any connection, by error code (counted in the kernel; only REFUSED_STREAM on watched ports is reported as an event).", ["direction", "error_code"]),
    go_binaries: IntGauge = ("drainwatch_go_binaries_hooked", "Go binaries whose HTTP/2 code has the GOAWAY and RST_STREAM uprobes attached.", []),
    go_h2_unreported: IntCounterVec = ("drainwatch_go_h2_unreported_total", "HTTP/2 frames the Go uprobes saw but could not report as a watched connection's: unconfigured (a position-independent process not yet seen), unattributed (its connection type not followed; reported without addresses), unwatched_port, closed_connection (written to a connection already closed: never on the wire).", ["reason"]),
    inferred_idle_timeout: GaugeVec = ("drainwatch_inferred_idle_timeout_seconds", "Idle timeout inferred from resets that cluster at one silence (0 until three agree).", ["origin"]),
    wire_uninspected: IntCounterVec = ("drainwatch_wire_uninspected_total", "Flows or frames the classifier could not inspect for HTTP/2, by reason.", ["reason"]),
    wire_packets: IntCounter = ("drainwatch_wire_packets_total", "Packets on watched ports the classifier looked at.", []),
    wire_malformed: IntCounter = ("drainwatch_wire_malformed_packets_total", "Packets on watched ports with impossible headers, ignored.", []),
    flow_entries: IntGauge = ("drainwatch_flow_table_entries", "Flows in the wire observer's table.", []),
    flow_evictions: IntCounter = ("drainwatch_flow_evictions_total", "Flows the full table evicted (least recently used) to make room.", []),
    flows_closed_removed: IntCounter = ("drainwatch_flows_closed_removed_total", "Closed flows (FIN both ways and 5 s silent, or one way and 120 s) the daemon removed from the flow table.", []),
    flow_table_size: IntGauge = ("drainwatch_flow_table_size", "Capacity of the wire observer's flow table.", []),
    socket_table_full: IntCounter = ("drainwatch_socket_table_full_total", "Sockets on watched ports the full socket table could not track (no tracked socket is ever evicted): their events lack the handshake's start, direction and close checks. Raise --socket-table.", []),
    socket_table_size: IntGauge = ("drainwatch_socket_table_size", "Capacity of the connection tracepoints' socket table.", []),
    // The client side: connections processes on this node opened, by the namespace of their pod.
    connection_owners: IntCounterVec = ("drainwatch_connection_owners_total", "Connections processes on this node opened to a watched port or endpoint, by how their owner was named: pod (from its cgroup; by uid until the pod watcher knows it), container (in no pod this node runs), process (in no container), table_full (more open connections than the owner table holds: not named).", ["result"]),
    client_events: IntCounterVec = ("drainwatch_client_connection_events_total", "Events on connections processes on this node opened, by the namespace of the pod that opened them (`host`: a process in no named pod; `other`: namespaces past the first 64) and event kind (refused, reset_received, wire_reset, closed, ...). Which pod: the events, verdicts and the API.", ["namespace", "event"]),
    node_pods: IntGauge = ("drainwatch_node_pods", "Pods of this node the pod watcher knows (spec.nodeName), which name the owners of connections.", []),
    // The apiserver from outside: health polls, its pod, probes through the LB, its process.
    apiserver_health: IntGaugeVec = ("drainwatch_apiserver_health", "1 when the local apiserver answers 200 on /readyz or /healthz (polled directly, not through the LB).", ["apiserver", "check"]),
    pod_running: IntGaugeVec = ("drainwatch_apiserver_pod_running", "1 while the apiserver pod's phase is Running, from the Kubernetes API.", ["pod"]),
    pod_ready: IntGaugeVec = ("drainwatch_apiserver_pod_ready", "1 while the apiserver pod's Ready condition is True.", ["pod"]),
    probe_requests: IntCounterVec = ("drainwatch_probe_requests_total", "Active probe requests through the LB, by target, mode, method and HTTP status or error class (refused, reset, timeout, goaway, tls, eof).", ["target", "mode", "method", "code"]),
    process_signals: IntCounterVec = ("drainwatch_process_signals_total", "Signals generated for watched processes (the apiserver, or a watched listener's owner).", ["signal"]),
    process_exits: IntCounter = ("drainwatch_process_exits_total", "Watched processes that exited.", []),
    // Verdicts: the correlation engine's disruptions and rollout phases.
    disruptions: IntCounterVec = ("drainwatch_disruptions_total", "Disruptions (failed connections or requests) the correlation engine attributed to a cause.", ["cause"]),
    disruption_seconds: CounterVec = ("drainwatch_disruption_seconds_total", "Length of the disruption windows, by cause.", ["cause"]),
    lb_detection_seconds: GaugeVec = ("drainwatch_lb_detection_seconds", "Measured LB detection time: from /readyz turning red to the last new connection through the LB (must stay below the apiserver's --shutdown-delay-duration).", ["apiserver"]),
    phase_timestamp: GaugeVec = ("drainwatch_lifecycle_phase_timestamp_seconds", "When the latest rollout of each apiserver reached each phase (sigterm, readyz_red, listener_closed, ...), Unix time in seconds.", ["apiserver", "phase"]),
    phase_current: IntGaugeVec = ("drainwatch_lifecycle_phase", "The furthest phase the latest rollout of each apiserver has reached, by its number in rollout order: 1 sigterm, 2 readyz_red, 3 healthz_red, 4 pod_not_running, 5 listener_closed, 6 goaway_sent, 7 drained, 8 requests_cut, 9 sigkill, 10 exit, 11 listening_again, 12 pod_running, 13 ready (a state timeline maps them back to names).", ["apiserver"]),
    // drainwatch itself: events and losses, hooks, sources, kernel programs, maps, the engine's size.
    events: IntCounterVec = ("drainwatch_events_total", "Events decoded from the kernel, by kind.", ["kind"]),
    events_lost: IntCounterVec = ("drainwatch_events_lost_total", "Events lost: `kernel_ringbuf_full` (ring buffer full), `kernel_layout` (record unreadable with the layout given at load), `decode` (records the daemon could not parse).", ["stage"]),
    events_lost_by_kind: IntCounterVec = ("drainwatch_events_lost_by_kind_total", "Events lost because the kernel ring buffer was full, by event kind (they sum to stage=\"kernel_ringbuf_full\"): received + lost per kind is what happened.", ["kind"]),
    correlation_ignored: IntCounterVec = ("drainwatch_correlation_ignored_total", "Events kept out of the correlation on purpose: `own_connection` (drainwatch's own /readyz poller and prober connections, which would otherwise look like clients).", ["reason"]),
    kube_events: IntCounterVec = ("drainwatch_kube_events_total", "Kubernetes Events (events.k8s.io/v1) about verdicts and the pods they hurt: created, updated (a grown verdict's series patched), failed (a write the API refused or did not answer; retried), dropped (the queue to the writer was full, or more verdicts than it follows), capped (pods of a verdict beyond the 8 told, not told).", ["result"]),
    apiserver_endpoints: IntGaugeVec = ("drainwatch_apiserver_endpoints", "Endpoint mode's watched (address, port) pairs by where they came from: name (--apiserver-endpoint, the kubernetes Service and the kubeconfig's server, as resolved), endpointslice (ready endpoints of the kubernetes Service's EndpointSlices; an address from both counts in each).", ["source"]),
    apiserver_endpoints_skipped: IntGaugeVec = ("drainwatch_apiserver_endpoints_skipped", "Ready endpoints of the kubernetes Service's EndpointSlices not watched, as of the last list: cap (beyond 64), unwatched_port (on a port not watched since start; a restart watches it), slice_limit (slices beyond 16, not read).", ["reason"]),
    endpointslice_reads: IntCounterVec = ("drainwatch_endpointslice_reads_total", "Lists of the kubernetes Service's EndpointSlices (--apiserver-endpoint auto), every 30 s: ok, failed (the API refused or did not answer; the endpoints read before stay watched).", ["result"]),
    hook_attached: IntGaugeVec = ("drainwatch_hook_attached", "1 when the kernel hook is attached, 0 when unavailable on this host.", ["hook"]),
    build_info: IntGaugeVec = ("drainwatch_build_info", "Build and kernel information; always 1.", ["version", "kernel"]),
    ringbuf_bytes: IntGauge = ("drainwatch_ringbuf_bytes", "Size of the kernel event ring buffer.", []),
    source_up: IntGaugeVec = ("drainwatch_source_up", "1 while an input source works, 0 while it fails (the others go on): kernel (the programs' ring buffer), wire (a TC classifier attached), kube (the Kubernetes API watch), readyz (the local apiserver answers its /readyz poll), probe (the last request through the LB got an HTTP answer), go_http2 (the Go uprobes loaded; 0 after a Go binary failed to attach), kube_events (the last write of a Kubernetes Event succeeded), node_pods (the watch of this node's pods works).", ["source"]),
    program_run_seconds: CounterVec = ("drainwatch_program_run_seconds_total", "Kernel time spent in each drainwatch program (only with --bpf-stats).", ["program"]),
    program_runs: IntCounterVec = ("drainwatch_program_runs_total", "Runs of each drainwatch program (only with --bpf-stats).", ["program"]),
    map_entries: IntGaugeVec = ("drainwatch_map_entries", "Entries in each BPF hash or LRU map, counted every 15 s.", ["map"]),
    map_capacity: IntGaugeVec = ("drainwatch_map_capacity", "Capacity (max_entries) of each BPF hash or LRU map.", ["map"]),
    correlation_observations: IntGauge = ("drainwatch_correlation_observations", "Observations the correlation engine holds (the last ten minutes and any rollout in progress; older ones are archived).", []),
    correlation_rollouts: IntGauge = ("drainwatch_correlation_rollouts", "Rollout timelines the correlation engine keeps, archived ones included (one per rollout).", []),
    correlation_verdicts: IntGauge = ("drainwatch_correlation_verdicts", "Verdicts the correlation engine keeps, archived ones included.", []),
}

/// TCP state labels by the kernel's number (`decode::event::state_name`);
/// 0 stands for every number it does not name ("UNKNOWN").
const STATE_LABELS: [&str; 13] = [
    "UNKNOWN",
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
];

/// Where a state label sits in [`STATE_LABELS`].
fn state_index(label: &str) -> Option<usize> {
    STATE_LABELS.iter().position(|s| *s == label)
}

/// One watched port's per-event series, resolved once: `with_label_values`
/// hashes the label strings and takes the vector's lock on every call,
/// which was about 8 % of the daemon's CPU. Series that [`Metrics::new`]
/// does not create up front are resolved at their first use, so the
/// exported series stay exactly those that saw something.
struct PortSeries {
    attempts: IntCounter,
    established: IntCounter,
    refused: IntCounter,
    timeouts: IntCounter,
    accepted: IntCounter,
    failed_error: OnceLock<IntCounter>,
    failed_aborted: OnceLock<IntCounter>,
    handshake: OnceLock<Histogram>,
    lifetime: OnceLock<Histogram>,
    /// `closed` by the state left, indexed as [`STATE_LABELS`].
    closed: [OnceLock<IntCounter>; STATE_LABELS.len()],
    /// `resets` by direction (0 sent, 1 received) and state.
    resets: [[OnceLock<IntCounter>; STATE_LABELS.len()]; 2],
}

impl PortSeries {
    fn new(m: &Metrics, port: &str) -> PortSeries {
        let l = [port];
        PortSeries {
            attempts: m.connect_attempts.with_label_values(&l),
            established: m.connect_established.with_label_values(&l),
            refused: m.connect_refused.with_label_values(&l),
            timeouts: m.connect_timeouts.with_label_values(&l),
            accepted: m.accepted.with_label_values(&l),
            failed_error: OnceLock::new(),
            failed_aborted: OnceLock::new(),
            handshake: OnceLock::new(),
            lifetime: OnceLock::new(),
            closed: std::array::from_fn(|_| OnceLock::new()),
            resets: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        }
    }
}

/// A metric type the table can declare.
trait Declare: prometheus::core::Collector + Clone + Sized + 'static {
    fn make(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> prometheus::Result<Self>;
}

impl Declare for IntCounterVec {
    fn make(name: &str, help: &str, labels: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        IntCounterVec::new(Opts::new(name, help), labels)
    }
}

impl Declare for IntGaugeVec {
    fn make(name: &str, help: &str, labels: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        IntGaugeVec::new(Opts::new(name, help), labels)
    }
}

impl Declare for GaugeVec {
    fn make(name: &str, help: &str, labels: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        GaugeVec::new(Opts::new(name, help), labels)
    }
}

impl Declare for CounterVec {
    fn make(name: &str, help: &str, labels: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        CounterVec::new(Opts::new(name, help), labels)
    }
}

impl Declare for HistogramVec {
    fn make(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> prometheus::Result<Self> {
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
    }
}

impl Declare for IntCounter {
    fn make(name: &str, help: &str, _: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        IntCounter::new(name, help)
    }
}

impl Declare for IntGauge {
    fn make(name: &str, help: &str, _: &[&str], _: &[f64]) -> prometheus::Result<Self> {
        IntGauge::new(name, help)
    }
}

/// Creates one metric and registers it.
fn declare<T: Declare>(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<T> {
    let m = T::make(name, help, labels, buckets)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

impl Metrics {
    pub fn new(watched: &[u16]) -> prometheus::Result<Metrics> {
        let mut m = Metrics::register(Registry::new())?;
        // The daemon's own CPU, memory and file descriptors (process_*), from
        // /proc/self: the usual exporter metrics, for its resource limits.
        m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for p in watched {
            let port = p.to_string();
            let l = [port.as_str()];
            // Create the series up front so dashboards see zeros, not gaps
            // (resolving a handle creates its series at 0).
            let series = PortSeries::new(&m, &port);
            m.ports.push((*p, series));
            m.listeners.with_label_values(&l).set(0);
            m.listener_up.with_label_values(&l).set(0);
        }
        // Every cause the correlation engine can give, so alerts see zeros.
        for cause in drainwatch_correlate::Cause::LABELS {
            m.disruptions.with_label_values(&[cause]).inc_by(0);
            m.disruption_seconds.with_label_values(&[cause]).inc_by(0.0);
        }
        for sig in ["SIGTERM", "SIGKILL"] {
            m.process_signals.with_label_values(&[sig]).inc_by(0);
        }
        for stage in ["kernel_ringbuf_full", "kernel_layout", "decode"] {
            m.events_lost.with_label_values(&[stage]).inc_by(0);
        }
        m.own_connection
            .get_or_init(|| m.correlation_ignored.with_label_values(&["own_connection"]));
        let mut kinds: Vec<EventKind> = (0..probe_common::event::kind::MAX)
            .filter_map(EventKind::from_raw)
            .collect();
        kinds.sort_by_key(|k| *k as usize);
        m.events_by_kind = kinds
            .iter()
            .map(|k| m.events.with_label_values(&[k.as_str()]))
            .collect();
        Ok(m)
    }

    /// Counts one decoded event.
    pub fn observe(&self, e: &Event, watched: &[u16]) {
        match self.events_by_kind.get(e.kind as usize) {
            Some(c) => c.inc(),
            None => self.events.with_label_values(&[e.kind.as_str()]).inc(),
        }
        let port = e.service_port(watched);
        match self.ports.iter().find(|(p, _)| *p == port) {
            Some((p, series)) => self.observe_watched(e, *p, series),
            None => self.observe_labelled(e, &port.to_string()),
        }
    }

    /// An event of a watched port: through its handles where there are.
    fn observe_watched(&self, e: &Event, port: u16, s: &PortSeries) {
        let lazy = |cell: &OnceLock<IntCounter>, v: &IntCounterVec, labels: &[&str]| {
            cell.get_or_init(|| v.with_label_values(labels)).inc();
        };
        let p = || port.to_string();
        match e.kind {
            EventKind::ConnectAttempt => s.attempts.inc(),
            EventKind::Established => {
                s.established.inc();
                if let Some(d) = e.duration_seconds {
                    s.handshake
                        .get_or_init(|| self.handshake_seconds.with_label_values(&[&p()]))
                        .observe(d);
                }
            }
            EventKind::Refused => s.refused.inc(),
            EventKind::TimedOut => s.timeouts.inc(),
            EventKind::ConnectError => {
                lazy(&s.failed_error, &self.connect_failures, &[&p(), "error"])
            }
            EventKind::ConnectAborted => lazy(
                &s.failed_aborted,
                &self.connect_failures,
                &[&p(), "aborted"],
            ),
            EventKind::Accepted => s.accepted.inc(),
            EventKind::Closed => {
                let from = e.old_state.unwrap_or("UNKNOWN");
                match state_index(from) {
                    Some(i) => lazy(&s.closed[i], &self.closed, &[&p(), from]),
                    None => self.closed.with_label_values(&[&p(), from]).inc(),
                }
                if let Some(d) = e.duration_seconds {
                    s.lifetime
                        .get_or_init(|| self.lifetime_seconds.with_label_values(&[&p()]))
                        .observe(d);
                }
            }
            EventKind::ResetSent | EventKind::ResetReceived => {
                let (dir, name) = if e.kind == EventKind::ResetSent {
                    (0, "sent")
                } else {
                    (1, "received")
                };
                match state_index(e.state) {
                    Some(i) => lazy(&s.resets[dir][i], &self.resets, &[&p(), name, e.state]),
                    None => self.resets.with_label_values(&[&p(), name, e.state]).inc(),
                }
                if let Some(r) = &e.reset_reason {
                    self.reset_reasons.with_label_values(&[&p(), r]).inc();
                }
            }
            _ => self.observe_labelled(e, &p()),
        }
    }

    /// An event counted by label lookups: the rarer kinds, and ports that
    /// are not watched (a connection matched on its other end).
    fn observe_labelled(&self, e: &Event, p: &str) {
        match e.kind {
            EventKind::ConnectAttempt => self.connect_attempts.with_label_values(&[p]).inc(),
            EventKind::Established => {
                self.connect_established.with_label_values(&[p]).inc();
                if let Some(d) = e.duration_seconds {
                    self.handshake_seconds.with_label_values(&[p]).observe(d);
                }
            }
            EventKind::Refused => self.connect_refused.with_label_values(&[p]).inc(),
            EventKind::TimedOut => self.connect_timeouts.with_label_values(&[p]).inc(),
            EventKind::ConnectError => self.connect_failures.with_label_values(&[p, "error"]).inc(),
            EventKind::ConnectAborted => self
                .connect_failures
                .with_label_values(&[p, "aborted"])
                .inc(),
            EventKind::Accepted => self.accepted.with_label_values(&[p]).inc(),
            EventKind::Closed => {
                let from = e.old_state.unwrap_or("UNKNOWN");
                self.closed.with_label_values(&[p, from]).inc();
                if let Some(d) = e.duration_seconds {
                    self.lifetime_seconds.with_label_values(&[p]).observe(d);
                }
            }
            EventKind::ListenOpen => self.listener_delta(p, 1),
            EventKind::ListenClose => self.listener_delta(p, -1),
            EventKind::WireReset => {
                if let Some(w) = &e.wire {
                    let origin = w.origin.unwrap_or(ResetOrigin::Unknown).as_str();
                    self.wire_resets
                        .with_label_values(&[p, w.direction.as_str(), origin])
                        .inc();
                    if w.direction == Direction::Received
                        && let Some(s) = w.silence_seconds
                    {
                        self.reset_idle_seconds
                            .with_label_values(&[p, origin])
                            .observe(s);
                    }
                }
            }
            EventKind::Keepalive => {
                if let Some(w) = &e.wire {
                    self.keepalive_probes
                        .with_label_values(&[p, w.direction.as_str()])
                        .inc();
                }
            }
            EventKind::Goaway => {
                if let Some(w) = &e.wire {
                    let code = w.error_code.unwrap_or("UNKNOWN");
                    let source = if e.go.is_some() { "uprobe" } else { "wire" };
                    self.goaways
                        .with_label_values(&[p, w.direction.as_str(), code, source])
                        .inc();
                }
            }
            EventKind::RefusedStream => {
                if let Some(w) = &e.wire {
                    self.refused_streams
                        .with_label_values(&[p, w.direction.as_str()])
                        .inc();
                }
            }
            EventKind::Signal => {
                if let Some(sig) = &e.signal {
                    self.process_signals.with_label_values(&[sig.name]).inc();
                }
            }
            EventKind::ProcessExit => self.process_exits.inc(),
            EventKind::ProcessExec => {}
            EventKind::ResetSent | EventKind::ResetReceived => {
                let dir = if e.kind == EventKind::ResetSent {
                    "sent"
                } else {
                    "received"
                };
                self.resets.with_label_values(&[p, dir, e.state]).inc();
                if let Some(r) = &e.reset_reason {
                    self.reset_reasons.with_label_values(&[p, r]).inc();
                }
            }
        }
    }

    /// Sets the listener count from a scan of the host's sockets.
    pub fn set_listeners(&self, port: u16, count: i64) {
        let p = port.to_string();
        self.listeners.with_label_values(&[&p]).set(count);
        self.listener_up
            .with_label_values(&[&p])
            .set(i64::from(count > 0));
    }

    fn listener_delta(&self, port: &str, delta: i64) {
        let g = self.listeners.with_label_values(&[port]);
        let n = (g.get() + delta).max(0);
        g.set(n);
        self.listener_up
            .with_label_values(&[port])
            .set(i64::from(n > 0));
    }

    /// What the correlation engine holds: observations not yet archived,
    /// rollout timelines and verdicts.
    pub fn set_engine_sizes(&self, observations: usize, rollouts: usize, verdicts: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.correlation_observations.set(n(observations));
        self.correlation_rollouts.set(n(rollouts));
        self.correlation_verdicts.set(n(verdicts));
    }

    /// Counts an event of drainwatch's own connections, kept out of the
    /// correlation.
    pub fn ignored_own_connection(&self) {
        self.own_connection
            .get_or_init(|| {
                self.correlation_ignored
                    .with_label_values(&["own_connection"])
            })
            .inc();
    }

    pub fn lost_counter(&self, stage: &str) -> IntCounter {
        self.events_lost.with_label_values(&[stage])
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("encoding metrics failed: {e}");
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached handles count exactly what label lookups count, on a
    /// watched port, and unwatched ports still go through labels.
    #[test]
    fn cached_handles_count_as_label_lookups() {
        use crate::decode::event::{DecodeContext, decode};
        use probe_common::{RawEvent, event::kind, flags, tcp_state};
        let ev = |k: u8, old: u8, state: u8, sport: u16, dport: u16| {
            let mut r = RawEvent::zeroed();
            r.ts_ns = 5_000_000_000;
            r.kind = k;
            r.family = probe_common::AF_INET;
            r.sport = sport;
            r.dport = dport;
            r.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
            r.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
            r.old_state = old;
            r.state = state;
            r.flags = flags::ACTIVE;
            r.duration_ns = 2_000_000;
            decode(&r, &DecodeContext::plain()).expect("decode")
        };
        let m = Metrics::new(&[6443]).expect("metrics");
        let events = [
            ev(kind::CONNECT_ATTEMPT, 7, tcp_state::SYN_SENT, 40000, 6443),
            ev(
                kind::ESTABLISHED,
                tcp_state::SYN_SENT,
                tcp_state::ESTABLISHED,
                40000,
                6443,
            ),
            ev(
                kind::CLOSED,
                tcp_state::LAST_ACK,
                tcp_state::CLOSE,
                40000,
                6443,
            ),
            ev(
                kind::CLOSED,
                tcp_state::LAST_ACK,
                tcp_state::CLOSE,
                40001,
                6443,
            ),
            ev(
                kind::CLOSED,
                tcp_state::FIN_WAIT2,
                tcp_state::CLOSE,
                40002,
                8080,
            ),
            ev(
                kind::RESET_SENT,
                tcp_state::ESTABLISHED,
                tcp_state::ESTABLISHED,
                40003,
                6443,
            ),
        ];
        for e in &events {
            m.observe(e, &[6443]);
        }
        m.ignored_own_connection();
        let text = String::from_utf8(m.render()).expect("utf8");
        for line in [
            "drainwatch_connect_attempts_total{port=\"6443\"} 1",
            "drainwatch_connect_established_total{port=\"6443\"} 1",
            "drainwatch_connections_closed_total{from_state=\"LAST_ACK\",port=\"6443\"} 2",
            "drainwatch_connections_closed_total{from_state=\"FIN_WAIT2\",port=\"8080\"} 1",
            "drainwatch_handshake_seconds_count{port=\"6443\"} 1",
            "drainwatch_connection_lifetime_seconds_count{port=\"6443\"} 2",
            "drainwatch_correlation_ignored_total{reason=\"own_connection\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        let resets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("drainwatch_resets_total{"))
            .collect();
        assert_eq!(resets.len(), 1, "{resets:?}");
        assert!(resets[0].ends_with(" 1"), "{resets:?}");
        // Series that saw nothing are not created by the handles.
        assert!(
            !text.contains("drainwatch_connect_failures_total{"),
            "{text}"
        );
    }

    #[test]
    fn the_table_registers_every_metric_once_with_zeros_for_watched_ports() {
        let m = Metrics::new(&[6443]).expect("metrics");
        let mut names: Vec<&str> = DECLARED.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DECLARED.len(), "a name declared twice");
        assert!(
            DECLARED
                .iter()
                .all(|(n, h)| n.starts_with("drainwatch_") && !h.is_empty())
        );
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(
            text.contains("drainwatch_connect_refused_total{port=\"6443\"} 0"),
            "{text}"
        );
        assert!(text.contains("drainwatch_disruptions_total{cause=\"accept_queue_reset\"} 0"));
        // The process collector: the daemon's own resources.
        for family in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}: {text}"
            );
        }
        // Histograms keep their buckets.
        m.handshake_seconds
            .with_label_values(&["6443"])
            .observe(0.0003);
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(
            text.contains("drainwatch_handshake_seconds_bucket{port=\"6443\",le=\"0.0005\"} 1"),
            "{text}"
        );
    }
}
