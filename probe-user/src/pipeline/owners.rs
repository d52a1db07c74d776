//! Who opened each connection: the client side's "which of my workloads
//! was hurt". The kernel reports the connecting process and its cgroup v2
//! id once, at the connect attempt (the only moment in that process's
//! context: resets and closes run in softirq); this table keeps that owner
//! per socket, and per 4-tuple for the wire observer's events (which have
//! no socket), and names it through [`Attributor`] (cgroup path -> pod uid
//! and container -> the node's pods). Every later event of the connection
//! carries the owner, and so does its observation, so verdicts list the
//! workloads they hurt.
//!
//! Connections opened before the daemon started have no connect attempt:
//! [`Owners::seed`] takes them from the process table at start
//! (`kernel::procscan::open_connections`), by 4-tuple.
//!
//! Blind spots:
//! - a connection opened before the start by a process that has exited
//!   since (its socket inherited by a child) is named by the holder found;
//! - a process that passes its socket to another (fork, SCM_RIGHTS) is
//!   still named as the one that connected;
//! - a pod the node-pod watcher does not know (yet) is named by its uid;
//!   a process in no pod by its command name;
//! - the table holds [`Owners::capacity`] connections; past that a
//!   connection is not attributed, counted (`table_full`).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use drainwatch_correlate::Workload;
use foldhash::HashMap;

use crate::{
    decode::event::{Event, EventKind, SockId},
    sources::cgroup::Attributor,
};

/// How long a closed connection's owner stays, for its events that come
/// after the close (the wire observer's, another CPU's ring-buffer slot).
const LINGER_NS: u64 = 10_000_000_000;

/// How long a named owner is reused for the same process and cgroup; a pod
/// known only by its uid is looked up again sooner (the pod watcher may
/// not have listed it yet).
const NAME_TTL: Duration = Duration::from_secs(30);
const PARTIAL_NAME_TTL: Duration = Duration::from_secs(2);
const NAME_CACHE: usize = 4096;

/// Distinct namespaces the per-namespace counters name; the rest are `other`.
pub const NAMESPACE_LABELS: usize = 64;

/// The owners of this node's connections.
pub struct Owners {
    socks: HashMap<SockId, Entry>,
    flows: HashMap<(SocketAddr, SocketAddr), SockId>,
    closing: VecDeque<(u64, SockId)>,
    names: HashMap<(u64, u32), (Workload, Instant)>,
    /// Connections found open at start: (pid, comm, cgroup v2 path) by 4-tuple.
    seeded: HashMap<(SocketAddr, SocketAddr), (u32, String, Option<String>)>,
    attributor: Option<Attributor>,
    namespaces: Vec<String>,
    capacity: usize,
}

struct Entry {
    who: Arc<Workload>,
    flow: Option<(SocketAddr, SocketAddr)>,
}

/// What [`Owners::attribute`] did with a connect attempt, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// Named by its pod (name or uid).
    Pod,
    /// In a container outside any pod the node knows.
    Container,
    /// A process in no pod.
    Process,
    /// The table was full: not attributed.
    TableFull,
}

impl Named {
    pub fn as_str(self) -> &'static str {
        match self {
            Named::Pod => "pod",
            Named::Container => "container",
            Named::Process => "process",
            Named::TableFull => "table_full",
        }
    }
}

impl Owners {
    /// An empty table of `capacity` connections; without an attributor,
    /// owners are named by process only.
    pub fn new(capacity: usize, attributor: Option<Attributor>) -> Owners {
        Owners {
            socks: HashMap::default(),
            flows: HashMap::default(),
            closing: VecDeque::new(),
            names: HashMap::default(),
            seeded: HashMap::default(),
            attributor,
            namespaces: Vec::new(),
            capacity,
        }
    }

    /// Takes the connections that were open before the daemon started, up
    /// to the table's capacity; returns how many it took.
    pub fn seed(&mut self, open: Vec<crate::kernel::procscan::OpenConn>) -> usize {
        let room = self.capacity.saturating_sub(self.socks.len());
        let before = self.seeded.len();
        for c in open.into_iter().take(room) {
            self.seeded
                .insert((c.local, c.remote), (c.pid, c.comm, c.cgroup_v2));
        }
        self.seeded.len() - before
    }

    /// Connections whose owner is held.
    pub fn len(&self) -> usize {
        self.socks.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// Sets `ev.owner` from the table, learning the owner from a connect
    /// attempt and the 4-tuple once the source port is known. Returns what
    /// a connect attempt's owner was named as.
    pub fn attribute(&mut self, ev: &mut Event) -> Option<Named> {
        self.expire(ev.ts_boot_ns);
        let named = self.learn_attempt(ev);
        if named == Some(Named::TableFull) {
            return named;
        }
        let tuple = ev.local.zip(ev.remote);
        let id = ev
            .sock_id
            .or_else(|| tuple.and_then(|f| self.flows.get(&f).copied()));
        if !id.is_some_and(|i| self.socks.contains_key(&i)) {
            // Not learnt from a connect attempt: open before the start?
            let who = self.adopt_seeded(ev.sock_id, tuple);
            if ev.sock_id.is_none() || who.is_none() {
                ev.owner = who;
                return named;
            }
        }
        let Some(id) = id else { return named };
        if self.stale(id, ev) {
            if let Some(f) = self.socks.remove(&id).and_then(|e| e.flow) {
                self.flows.remove(&f);
            }
            return named;
        }
        let Some(e) = self.socks.get_mut(&id) else {
            return named;
        };
        if e.flow.is_none()
            && let (Some(l), Some(r)) = (ev.local, ev.remote)
            && l.port() != 0
        {
            e.flow = Some((l, r));
            self.flows.insert((l, r), id);
        }
        ev.owner = Some(e.who.clone());
        if matches!(
            ev.kind,
            EventKind::Closed
                | EventKind::Refused
                | EventKind::TimedOut
                | EventKind::ConnectError
                | EventKind::ConnectAborted
        ) {
            self.closing.push_back((ev.ts_boot_ns, id));
        }
        named
    }

    /// Learns the owner of a connect attempt; what it was named as.
    fn learn_attempt(&mut self, ev: &Event) -> Option<Named> {
        let id = ev
            .sock_id
            .filter(|_| ev.kind == EventKind::ConnectAttempt)?;
        if self.socks.len() >= self.capacity && !self.socks.contains_key(&id) {
            return Some(Named::TableFull);
        }
        let who = Arc::new(self.name(ev.pid.unwrap_or(0), ev.comm.clone(), ev.cgroup_id));
        let named = if who.pod_uid.is_some() {
            Named::Pod
        } else if who.container_id.is_some() {
            Named::Container
        } else {
            Named::Process
        };
        // A reused socket address: the old connection's flow goes.
        if let Some(old) = self.socks.insert(id, Entry { who, flow: None })
            && let Some(f) = old.flow
        {
            self.flows.remove(&f);
        }
        Some(named)
    }

    /// The owner of a connection found open at start, by its 4-tuple:
    /// adopted by its socket once an event carries one; a wire event (no
    /// socket) is named from the seed each time.
    fn adopt_seeded(
        &mut self,
        sock: Option<SockId>,
        tuple: Option<(SocketAddr, SocketAddr)>,
    ) -> Option<Arc<Workload>> {
        let flow = tuple?;
        let (pid, comm, path) = self.seeded.get(&flow).cloned()?;
        let cgroup = path
            .as_deref()
            .and_then(|p| self.attributor.as_ref().and_then(|a| a.paths.id_of(p)));
        let who = Arc::new(self.name(pid, Some(comm), cgroup));
        if let Some(sid) = sock {
            self.seeded.remove(&flow);
            self.flows.insert(flow, sid);
            let entry = Entry {
                who: who.clone(),
                flow: Some(flow),
            };
            self.socks.insert(sid, entry);
        }
        Some(who)
    }

    /// Whether entry `id` belongs to an earlier socket at the same kernel
    /// address (freed and reused): an entry whose close was never seen (or
    /// is still lingering) must not name a new socket there, an accepted
    /// one above all. Its 4-tuple tells them apart.
    fn stale(&self, id: SockId, ev: &Event) -> bool {
        let Some(e) = self.socks.get(&id) else {
            return false;
        };
        match (e.flow, ev.local.zip(ev.remote)) {
            (Some(f), Some(t)) => f != t && ev.sock_id == Some(id),
            (None, _) => ev.direction == Some(crate::decode::event::ConnDirection::Passive),
            _ => false,
        }
    }

    /// The label for `who`'s namespace in the per-namespace counters:
    /// `host` for a process in no (named) pod, the first
    /// [`NAMESPACE_LABELS`] namespaces by name, `other` after them.
    pub fn namespace_label(&mut self, who: &Workload) -> String {
        let Some(ns) = &who.namespace else {
            return "host".into();
        };
        if self.namespaces.contains(ns) {
            return ns.clone();
        }
        if self.namespaces.len() < NAMESPACE_LABELS {
            self.namespaces.push(ns.clone());
            return ns.clone();
        }
        "other".into()
    }

    /// Drops the owners of connections closed [`LINGER_NS`] before `now`.
    fn expire(&mut self, now: u64) {
        while let Some(&(t, id)) = self.closing.front() {
            if now.saturating_sub(t) < LINGER_NS {
                break;
            }
            self.closing.pop_front();
            if let Some(e) = self.socks.remove(&id)
                && let Some(f) = e.flow
            {
                self.flows.remove(&f);
            }
        }
    }

    /// Names a connecting process: its pod and container from its cgroup,
    /// cached per (cgroup, pid).
    fn name(&mut self, pid: u32, comm: Option<String>, cgroup: Option<u64>) -> Workload {
        let mut w = Workload {
            pid: (pid != 0).then_some(pid),
            comm,
            ..Workload::default()
        };
        let (Some(cg), Some(attr)) = (cgroup, self.attributor.as_mut()) else {
            return w;
        };
        let now = Instant::now();
        if let Some((cached, at)) = self.names.get(&(cg, pid)) {
            let ttl = if cached.pod_uid.is_some() && cached.pod.is_none() {
                PARTIAL_NAME_TTL
            } else {
                NAME_TTL
            };
            if now.duration_since(*at) < ttl {
                return Workload {
                    pid: w.pid,
                    comm: w.comm,
                    ..cached.clone()
                };
            }
        }
        let who = attr.who(pid, cg, now);
        if let Some(p) = who.pod {
            w.pod_uid = Some(p.uid);
            w.namespace = p.namespace;
            w.pod = p.name;
            w.node = p.node;
        }
        if let Some(c) = who.container {
            w.container_id = Some(c.id);
            w.container = c.name;
        }
        if self.names.len() >= NAME_CACHE {
            self.names.clear();
        }
        self.names.insert((cg, pid), (w.clone(), now));
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::event::{DecodeContext, decode};
    use probe_common::{AF_INET, RawEvent, flags, kind};

    fn ev(k: u8, sock: u64, sport: u16, dport: u16, fl: u32, ts_s: u64) -> Event {
        let mut r = RawEvent::zeroed();
        r.ts_ns = ts_s * 1_000_000_000;
        r.kind = k;
        r.family = AF_INET;
        r.sock = sock;
        r.sport = sport;
        r.dport = dport;
        r.flags = fl;
        r.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        r.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        if k == kind::CONNECT_ATTEMPT {
            r.pid = 42;
            r.comm[..4].copy_from_slice(b"curl");
        }
        decode(&r, &DecodeContext::plain()).expect("decode")
    }

    /// An owner learnt at the connect attempt names the connection's later
    /// events, the wire's by 4-tuple; a socket address the kernel reuses
    /// for an accepted connection is not named after the old owner; a
    /// closed connection's owner goes after the linger.
    #[test]
    fn owners_follow_the_socket_and_its_tuple() {
        let mut o = Owners::new(16, None);
        let mut a = ev(kind::CONNECT_ATTEMPT, 7, 0, 6443, flags::ACTIVE, 1);
        assert_eq!(o.attribute(&mut a), Some(Named::Process));
        assert_eq!(a.owner.as_ref().and_then(|w| w.pid), Some(42));
        let mut est = ev(kind::ESTABLISHED, 7, 40000, 6443, flags::ACTIVE, 1);
        o.attribute(&mut est);
        assert_eq!(
            est.owner.as_ref().map(|w| w.name()).as_deref(),
            Some("process curl")
        );
        let mut wire = ev(kind::WIRE_RESET, 0, 40000, 6443, flags::INGRESS, 2);
        o.attribute(&mut wire);
        assert!(wire.owner.is_some(), "the wire's RST by 4-tuple");
        // The same kernel address, now an accepted socket: not curl's.
        let mut acc = ev(kind::ACCEPTED, 7, 6443, 50000, flags::PASSIVE, 3);
        o.attribute(&mut acc);
        assert!(acc.owner.is_none());
        assert!(o.is_empty(), "the stale entry went");
        // A close, then the linger.
        let mut b = ev(kind::CONNECT_ATTEMPT, 9, 0, 6443, flags::ACTIVE, 4);
        o.attribute(&mut b);
        let mut closed = ev(kind::CLOSED, 9, 40001, 6443, flags::ACTIVE, 5);
        o.attribute(&mut closed);
        assert!(closed.owner.is_some());
        assert_eq!(o.len(), 1);
        let mut later = ev(kind::KEEPALIVE, 0, 1, 2, flags::INGRESS, 16);
        o.attribute(&mut later);
        assert!(o.is_empty(), "gone 10 s after its close");
        // A full table names no new connection, and says so.
        let mut small = Owners::new(1, None);
        small.attribute(&mut ev(kind::CONNECT_ATTEMPT, 1, 0, 6443, flags::ACTIVE, 1));
        assert_eq!(
            small.attribute(&mut ev(kind::CONNECT_ATTEMPT, 2, 0, 6443, flags::ACTIVE, 1)),
            Some(Named::TableFull)
        );
    }
}
