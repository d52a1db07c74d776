//! The engine's input: one [`Observation`] per thing some source saw, on one
//! monotonic time axis. The daemon's adapter turns kernel events, poller
//! results, pod phases and prober results into these; a recording is a JSON
//! line per observation (see [`crate::parse_jsonl`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One thing that was observed, with the time it was observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Evidence id, unique per input: verdicts cite it. Two observations
    /// with the same id are the same observation (duplicates are dropped).
    pub id: u64,
    /// Nanoseconds on one monotonic axis (the daemon uses the kernel's boot
    /// clock). Only differences and order matter.
    pub t_ns: u64,
    /// Wall-clock time of the same instant (RFC 3339), carried through to
    /// the output for people; never used for ordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall: Option<String>,
    /// The apiserver instance this is about, when the source knows it
    /// (kernel events on a node know their local instance; a prober going
    /// through the LB does not). Missing instances fall back to
    /// [`crate::Config::default_instance`] for node-local sources and are
    /// otherwise attributed by time (see the crate docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Who produced it.
    pub source: Source,
    /// What was observed.
    pub kind: Obs,
    /// The process (and pod) on this node that owned the connection, when
    /// the source knows it: the kernel names the process that connected,
    /// the daemon its pod. Verdicts list the workloads they hurt from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<std::sync::Arc<Workload>>,
}

/// Who owned a connection on this node: the process that opened it and,
/// when it runs in a pod, the pod and its container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Workload {
    /// The pod's namespace, when the pod is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's uid (from its cgroup), also when its name is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The container's name in its pod, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The container's id (the runtime's, 64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The node the pod runs on, as the API names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The process that opened the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its command name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

impl Workload {
    /// What a person calls it, and what verdicts group by: the pod
    /// (`pod NS/NAME`), else the pod by uid, else the container, else the
    /// program (`process COMM`: a program's processes are one workload).
    pub fn name(&self) -> String {
        match (
            &self.namespace,
            &self.pod,
            &self.pod_uid,
            &self.container_id,
        ) {
            (Some(ns), Some(pod), _, _) => format!("pod {ns}/{pod}"),
            (_, _, Some(uid), _) => format!("pod uid {uid}"),
            (_, _, _, Some(id)) => format!("container {}", &id[..id.len().min(12)]),
            _ => match (&self.comm, self.pid) {
                (Some(c), _) => format!("process {c}"),
                (None, Some(p)) => format!("pid {p}"),
                (None, None) => "unknown process".into(),
            },
        }
    }
}

/// The producer of an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// eBPF tracepoints and kprobes on this node.
    Kernel,
    /// The TC classifier (what only the wire shows).
    Wire,
    /// The local `/readyz` and `/healthz` poller.
    Poller,
    /// The Kubernetes API (pod phase).
    Kube,
    /// The active prober (requests through the LB).
    Prober,
    /// Anything else (tests, imported captures).
    Other,
}

impl Source {
    /// Sources that only see this node, whose observations belong to the
    /// node's own instance when they do not name one.
    pub fn is_node_local(self) -> bool {
        matches!(self, Source::Kernel | Source::Poller | Source::Kube)
    }
}

/// A signal delivered to the apiserver process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// SIGTERM (15): start of the graceful shutdown.
    Term,
    /// SIGKILL (9): the grace period ended, or something killed it.
    Kill,
    /// Any other signal number; recorded, not interpreted.
    Other(i32),
}

/// How a connection reached the apiserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// The client is this node and it dialled a VIP that the node itself
    /// holds, so the traffic never left it (GCP's internal LB):
    /// no health check can take this node out for its own clients.
    LocalHairpin,
    /// Through a load balancer: the destination is a VIP and the client is
    /// elsewhere, or the source is a proxying LB's address.
    ViaLb,
    /// Straight to the instance's own address.
    Direct,
    /// Not enough configuration to tell.
    Unknown,
}

impl Path {
    /// Bounded label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Path::LocalHairpin => "local_hairpin",
            Path::ViaLb => "via_lb",
            Path::Direct => "direct",
            Path::Unknown => "unknown",
        }
    }
}

/// Who sent a reset seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetOrigin {
    /// The other end of the connection.
    Peer,
    /// Something in between (TTL or sequence numbers say so).
    Middlebox,
    /// This host.
    Local,
    /// Not known.
    Unknown,
}

impl ResetOrigin {
    /// Bounded label value, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetOrigin::Peer => "peer",
            ResetOrigin::Middlebox => "middlebox",
            ResetOrigin::Local => "local",
            ResetOrigin::Unknown => "unknown",
        }
    }
}

/// TCP keepalive on a flow, as far as it is known.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keepalive {
    /// No keepalive: an idle flow stays silent.
    None,
    /// Keepalive probes were seen, interval unknown.
    Seen,
    /// Keepalive with this interval, in seconds.
    Interval(f64),
    /// Not known.
    Unknown,
}

/// Direction of a frame relative to the apiserver instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Sent by the apiserver (what a graceful shutdown does).
    Sent,
    /// Received by the apiserver (a client going away).
    Received,
}

impl Direction {
    /// Bounded label value, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// How the prober used its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// One new connection per request: sees refusals and LB routing.
    NewConn,
    /// One long-lived connection: sees GOAWAY, resets and cuts.
    Reused,
}

/// What a probe request ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeOutcome {
    /// An HTTP response with this status. 5xx counts as a failure (the
    /// apiserver answers 504 to a request cut at the request timeout).
    Ok(u16),
    /// `connect: connection refused`.
    Refused,
    /// Connection reset.
    Reset,
    /// No answer in time.
    Timeout,
    /// Failed because of an HTTP/2 GOAWAY (stream above last-stream-id).
    Goaway,
    /// TLS handshake failed.
    Tls,
    /// The connection ended before the response.
    Eof,
}

impl ProbeOutcome {
    /// Whether the request failed.
    pub fn failed(self) -> bool {
        !matches!(self, ProbeOutcome::Ok(c) if c < 500)
    }
}

/// What was observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Obs {
    /// A signal was generated for the apiserver process.
    Signal {
        /// Which signal.
        signal: Signal,
        /// The target process.
        #[serde(default)]
        pid: Option<u32>,
        /// The process that sent it (its thread-group id): for a SIGKILL
        /// without SIGTERM, who to ask.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<u32>,
    },
    /// The apiserver process started (exec).
    ProcessStart {
        /// The new process.
        #[serde(default)]
        pid: Option<u32>,
    },
    /// The apiserver process exited.
    ProcessExit {
        /// The process.
        #[serde(default)]
        pid: Option<u32>,
        /// The signal that killed it, if any.
        #[serde(default)]
        signal: Option<i32>,
        /// The exit code, if it exited on its own.
        #[serde(default)]
        code: Option<i32>,
    },
    /// `/readyz` changed (polled on the instance directly, not via the LB).
    ReadyzChanged {
        /// Now answering 200.
        ready: bool,
    },
    /// `/healthz` changed.
    HealthzChanged {
        /// Now answering 200.
        healthy: bool,
    },
    /// The apiserver pod's phase changed.
    PodPhase {
        /// Phase is `Running`.
        running: bool,
    },
    /// A listening socket opened on the apiserver port.
    ListenerOpened {
        /// The listening address (tells IPv4 and IPv6 listeners apart).
        #[serde(default)]
        addr: Option<SocketAddr>,
        /// The process that listens.
        #[serde(default)]
        pid: Option<u32>,
    },
    /// A listening socket closed.
    ListenerClosed {
        /// The listening address.
        #[serde(default)]
        addr: Option<SocketAddr>,
        /// The process that closed it.
        #[serde(default)]
        pid: Option<u32>,
    },
    /// A SYN was refused (answered by RST: nothing listening), seen from
    /// either end.
    Refused {
        /// The connecting end.
        client: SocketAddr,
        /// The address dialled.
        server: SocketAddr,
        /// How it was routed, when the adapter knows; otherwise the engine
        /// classifies from [`crate::Config`].
        #[serde(default)]
        path: Option<Path>,
    },
    /// A new connection was accepted by the apiserver.
    Accepted {
        /// The connecting end (an LB's address for proxying LBs).
        client: SocketAddr,
        /// The local end.
        server: SocketAddr,
        /// How it was routed, when known.
        #[serde(default)]
        path: Option<Path>,
    },
    /// The apiserver's kernel sent an RST.
    ResetSent {
        /// The other end.
        client: SocketAddr,
        /// The apiserver's end.
        server: SocketAddr,
        /// The kernel's reset reason name (`NO_SOCKET`, `TCP_ABORT_ON_CLOSE`, ...).
        #[serde(default)]
        reason: Option<String>,
        /// The TCP state the RST was sent in.
        #[serde(default)]
        state: Option<String>,
    },
    /// The apiserver's kernel reset a connection it had completed but the
    /// application never accepted: the listener closed with it still in
    /// the accept queue (kernel `reset_sent` on a socket with no `struct
    /// socket`).
    AcceptQueueReset {
        /// The other end.
        client: SocketAddr,
        /// The apiserver's end.
        server: SocketAddr,
    },
    /// A client on this node received an RST from the apiserver.
    ResetReceived {
        /// This node's end.
        client: SocketAddr,
        /// The apiserver end.
        server: SocketAddr,
        /// The TCP state it hit (`SYN_SENT` means refused).
        #[serde(default)]
        state: Option<String>,
    },
    /// An established connection of the apiserver ended.
    ConnClosed {
        /// The other end.
        client: SocketAddr,
        /// The apiserver's end.
        server: SocketAddr,
        /// The apiserver closed first (FIN_WAIT path), not the client.
        by_server: bool,
        /// A request was outstanding (data received after the last data
        /// sent) when the server closed: a cut, not an idle close.
        #[serde(default)]
        pending_request: Option<bool>,
    },
    /// The apiserver closed a connection first while its response was
    /// still streaming (it kept sending for over a second after the
    /// client's last request: a watch): the stream was cut.
    StreamCut {
        /// The other end.
        client: SocketAddr,
        /// The apiserver's end.
        server: SocketAddr,
    },
    /// An RST seen on the wire by the TC classifier.
    WireReset {
        /// Client end, when known.
        #[serde(default)]
        client: Option<SocketAddr>,
        /// Server end, when known.
        #[serde(default)]
        server: Option<SocketAddr>,
        /// Who sent it.
        origin: ResetOrigin,
        /// Seconds of silence the reset ended.
        silence_s: f64,
        /// The reset answered a packet sent after the silence (a middlebox
        /// that forgot the flow), rather than arriving on its own at the
        /// timeout: its silence only bounds the timeout from above.
        #[serde(default)]
        answered_packet: Option<bool>,
        /// Keepalive on the flow.
        keepalive: Keepalive,
    },
    /// An HTTP/2 GOAWAY frame.
    Goaway {
        /// Relative to the apiserver.
        direction: Direction,
        /// The last stream the sender will process.
        last_stream_id: u32,
        /// The error code's name (`NO_ERROR` for a graceful shutdown).
        error_code: String,
        /// The connection's client end, when the source knows it (the
        /// kernel's uprobes, the wire observer, a capture): a cut of that
        /// connection after the GOAWAY is a failure after the GOAWAY.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<SocketAddr>,
        /// The connection's server end, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<SocketAddr>,
    },
    /// One active prober request.
    ProbeResult {
        /// The URL or name of the target (LB URL, external URL).
        target: String,
        /// New connection or reused.
        mode: ProbeMode,
        /// HTTP method.
        method: String,
        /// The prober's own address for the request's connection, used to
        /// not count a refusal twice when the kernel saw it too.
        #[serde(default)]
        client: Option<SocketAddr>,
        /// The address dialled (for path classification).
        #[serde(default)]
        server: Option<SocketAddr>,
        /// How it ended.
        outcome: ProbeOutcome,
    },
}
