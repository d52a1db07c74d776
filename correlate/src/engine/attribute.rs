//! Stage 2, attribution: which instance, rollout and path each observation
//! is about. Connection-level observations become [`Item`]s (a refusal, an
//! arrival, a cut, ...); one that names no instance takes the node's own
//! when a node-local source saw it about this node's apiserver, else the
//! one instance whose rollout explains it at that time; then every item is
//! put in its rollout and sorted by the cause that will judge it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::Config;
use crate::model::{Direction, Obs, Observation, Path, ProbeMode, ProbeOutcome};
use crate::output::PhaseKind;
use crate::text;

use super::causes::idle_reset;
use super::cycle::Cycle;
use super::draft::{It, Item, Owner};

/// Kernel reset reasons that mean the server aborted a connection (data
/// left unread, `SO_LINGER 0`, memory): a cut, not a refusal.
const ABORT_REASONS: &[&str] = &[
    "TCP_ABORT_ON_CLOSE",
    "TCP_ABORT_ON_DATA",
    "TCP_ABORT_ON_LINGER",
    "TCP_ABORT_ON_MEMORY",
];

/// The instance an observation names, or the node's own for a node-local
/// source about this node's apiserver.
pub(super) fn instance_of(cfg: &Config, o: &Observation) -> Option<String> {
    if o.instance.is_some() {
        return o.instance.clone();
    }
    if !o.source.is_node_local() {
        return None;
    }
    // A client on this node seeing a refusal from a remote apiserver (via
    // the LB to another master) is not about this node's instance.
    let client_side_server = match &o.kind {
        Obs::Refused { server, .. } | Obs::ResetReceived { server, .. } => Some(server.ip()),
        _ => None,
    };
    match client_side_server {
        Some(s) if !cfg.is_local_server(s) => None,
        _ => cfg.default_instance.clone(),
    }
}

/// The item an observation is, and whether the prober saw it; `None` for
/// lifecycle observations and connection events that say nothing.
fn item_of(cfg: &Config, o: &Observation) -> Option<(Item, bool)> {
    let item = match &o.kind {
        Obs::Refused {
            client,
            server,
            path,
        } => Item::Refusal {
            key: Some(*client),
            path: path.unwrap_or_else(|| cfg.classify(client, server)),
        },
        Obs::Accepted {
            client,
            server,
            path,
        } => Item::Arrival {
            path: path.unwrap_or_else(|| cfg.classify(client, server)),
        },
        Obs::ResetSent {
            client,
            server,
            reason,
            state,
        } => reset_sent(cfg, client, server, reason.as_deref(), state.as_deref())?,
        Obs::StreamCut { client, .. } => Item::Cut {
            key: Some(*client),
            what: "closed by the server while its response was streaming (a watch)".to_string(),
            strong: true,
        },
        Obs::AcceptQueueReset { client, server } => Item::AcceptQueueReset {
            path: cfg.classify(client, server),
        },
        Obs::ResetReceived {
            client,
            server,
            state,
        } => reset_received(cfg, client, server, state.as_deref())?,
        Obs::ConnClosed {
            client,
            by_server: true,
            pending_request: Some(true),
            ..
        } => Item::Cut {
            key: Some(*client),
            what: "closed by the server with a request outstanding".to_string(),
            strong: true,
        },
        Obs::WireReset { .. } => idle_reset::item(cfg, &o.kind)?,
        Obs::ProbeResult {
            target,
            mode,
            method,
            client,
            server,
            outcome,
        } => {
            if matches!(outcome, ProbeOutcome::Ok(c) if *c >= 500) && health_endpoint(target) {
                // A health endpoint answering 5xx is the instance saying
                // it is not ready (kube-apiserver's /readyz during its
                // shutdown delay), reached through an LB that has not taken
                // it out yet: ordinary while the instance still serves,
                // not a failed request. Blind spot: a broken instance's
                // 5xx on its health endpoint is not counted as a failure
                // either (the /readyz poller and refused connects still
                // show it).
                return None;
            }
            probe_result(cfg, *mode, method, *client, *server, *outcome)?
        }
        _ => return None,
    };
    Some((item, matches!(o.kind, Obs::ProbeResult { .. })))
}

/// Whether a probe target (`https://host:port/path`, or `host:port/path`)
/// is a health endpoint: `/readyz`, `/healthz` or `/livez` (with or
/// without a trailing slash or query).
fn health_endpoint(target: &str) -> bool {
    let rest = target.split_once("://").map_or(target, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or("");
    matches!(
        path.trim_end_matches('/'),
        "/readyz" | "/healthz" | "/livez"
    )
}

/// An RST the apiserver's kernel sent: a refused SYN, a cut, or nothing.
fn reset_sent(
    cfg: &Config,
    client: &SocketAddr,
    server: &SocketAddr,
    reason: Option<&str>,
    state: Option<&str>,
) -> Option<Item> {
    Some(match reason {
        // No socket: nothing listening (a SYN to a closed port).
        Some("NO_SOCKET") => Item::Refusal {
            key: Some(*client),
            path: cfg.classify(client, server),
        },
        Some(r) if ABORT_REASONS.contains(&r) => Item::Cut {
            key: Some(*client),
            what: format!(
                "server RST {r}{}",
                state.map(|s| format!(" in {s}")).unwrap_or_default()
            ),
            // A deliberate abort of an open connection (SO_LINGER 0) cuts
            // whatever was on it; an RST because of unread data, or in a
            // close already under way, is also what ordinary closes do.
            strong: r == "TCP_ABORT_ON_CLOSE"
                && matches!(state, Some("ESTABLISHED" | "CLOSE_WAIT")),
        },
        _ => return None,
    })
}

/// An RST a client on this node received: refused in SYN_SENT, a weak cut
/// on an open connection.
fn reset_received(
    cfg: &Config,
    client: &SocketAddr,
    server: &SocketAddr,
    state: Option<&str>,
) -> Option<Item> {
    Some(match state {
        Some("SYN_SENT") => Item::Refusal {
            key: Some(*client),
            path: cfg.classify(client, server),
        },
        Some("ESTABLISHED") | Some("CLOSE_WAIT") | Some("FIN_WAIT1") | Some("FIN_WAIT2") => {
            Item::Cut {
                key: Some(*client),
                what: "RST received by a local client".to_string(),
                strong: false,
            }
        }
        _ => return None,
    })
}

/// A prober request: refused, ended by a GOAWAY, another failure (a strong
/// cut), or a success (nothing).
fn probe_result(
    cfg: &Config,
    mode: ProbeMode,
    method: &str,
    client: Option<SocketAddr>,
    server: Option<SocketAddr>,
    outcome: ProbeOutcome,
) -> Option<Item> {
    Some(match outcome {
        ProbeOutcome::Refused => Item::Refusal {
            key: client,
            path: cfg.classify_probe(client.as_ref(), server.as_ref()),
        },
        ProbeOutcome::Goaway => Item::ProbeGoaway,
        o if o.failed() => Item::Cut {
            key: client,
            what: format!("probe {} {method}: {}", text::mode(mode), text::outcome(o)),
            strong: true,
        },
        _ => return None,
    })
}

fn client_of(k: &Obs) -> Option<SocketAddr> {
    match k {
        Obs::Refused { client, .. }
        | Obs::Accepted { client, .. }
        | Obs::ResetSent { client, .. }
        | Obs::ResetReceived { client, .. }
        | Obs::AcceptQueueReset { client, .. }
        | Obs::StreamCut { client, .. }
        | Obs::ConnClosed { client, .. } => Some(*client),
        Obs::WireReset { client, .. } | Obs::ProbeResult { client, .. } => *client,
        _ => None,
    }
}

/// Connection-level items, with the instances their observations name
/// (or the node's own).
pub(super) fn items(cfg: &Config, sorted: &[&Observation]) -> Vec<It> {
    sorted
        .iter()
        .filter_map(|o| {
            let (item, probe) = item_of(cfg, o)?;
            Some(It {
                t: o.t_ns,
                id: o.id,
                client: client_of(&o.kind),
                wall: o.wall.clone(),
                inst: instance_of(cfg, o),
                probe,
                item,
                who: o.who.clone(),
            })
        })
        .collect()
}

/// The instances whose rollout explains something at `t`: not listening,
/// for a refusal; shutting down, for anything else.
fn candidates(
    cycles: &BTreeMap<String, Vec<Cycle>>,
    tol: u64,
    t: u64,
    refusal: bool,
) -> Vec<String> {
    cycles
        .iter()
        .filter(|(_, cs)| {
            cs.iter().any(|c| {
                let from = if refusal {
                    c.not_listening_from()
                } else {
                    Some(c.start)
                };
                from.is_some_and(|f| t.saturating_add(tol) >= f)
                    && t <= c.serving_end().saturating_add(tol)
            })
        })
        .map(|(i, _)| i.clone())
        .collect()
}

/// Attributes what names no instance to the one instance whose rollout
/// explains it at that time (not listening, for refusals; shutting down,
/// for cuts); ambiguous or none stays unattributed. Arrivals and idle
/// resets are not attributed this way.
pub(super) fn unowned_items(items: &mut [It], cycles: &BTreeMap<String, Vec<Cycle>>, tol: u64) {
    for it in items.iter_mut().filter(|i| i.inst.is_none()) {
        let refusal = matches!(it.item, Item::Refusal { .. });
        if matches!(it.item, Item::IdleReset { .. } | Item::Arrival { .. }) {
            continue;
        }
        if let [only] = candidates(cycles, tol, it.t, refusal).as_slice() {
            it.inst = Some(only.clone());
        }
    }
}

/// A GOAWAY sent that names no instance goes to the rollout of the one
/// instance shutting down at that time.
pub(super) fn unowned_goaways(
    goaways: &[&Observation],
    cycles: &mut BTreeMap<String, Vec<Cycle>>,
    tol: u64,
) {
    let goaway_owners: Vec<(&Observation, String)> = goaways
        .iter()
        .filter(|g| {
            matches!(
                g.kind,
                Obs::Goaway {
                    direction: Direction::Sent,
                    ..
                }
            )
        })
        .filter_map(
            |g| match candidates(cycles, tol, g.t_ns, false).as_slice() {
                [only] => Some((*g, only.clone())),
                _ => None,
            },
        )
        .collect();
    for (g, inst) in goaway_owners {
        if let Some(c) = cycles.get_mut(&inst).and_then(|cs| {
            cs.iter_mut()
                .find(|c| g.t_ns.saturating_add(tol) >= c.start && g.t_ns <= c.serving_end())
        }) {
            c.goaways.push(g.id);
            c.observe(PhaseKind::GoawaySent, g);
        }
    }
}

/// The items by rollout, sorted by the cause that judges them.
#[derive(Default)]
pub(super) struct Buckets<'a> {
    /// Refusals, by (instance, rollout, path).
    pub(super) refusals: BTreeMap<(Owner, Path), Vec<&'a It>>,
    pub(super) cuts: BTreeMap<Owner, Vec<&'a It>>,
    pub(super) probe_goaways: BTreeMap<Owner, Vec<&'a It>>,
    pub(super) queue_resets: BTreeMap<(Owner, Path), Vec<&'a It>>,
    pub(super) idle: BTreeMap<Option<String>, Vec<&'a It>>,
    /// New connections via the LB (accepted or refused), per rollout.
    pub(super) arrivals: BTreeMap<(String, usize), Vec<&'a It>>,
    /// Prober items that no instance explains.
    pub(super) unattributed: u64,
}

/// Puts each item in its rollout (the one of its instance whose span holds
/// it) and its cause's bucket.
pub(super) fn by_owner<'a>(
    items: &'a [It],
    cycles: &BTreeMap<String, Vec<Cycle>>,
    tol: u64,
) -> Buckets<'a> {
    let cycle_of = |inst: &Option<String>, t: u64| -> Option<usize> {
        let cs = cycles.get(inst.as_ref()?)?;
        cs.iter().position(|c| {
            t.saturating_add(tol) >= c.start && t <= c.serving_end().saturating_add(tol)
        })
    };
    let mut b = Buckets::default();
    for it in items {
        if it.probe && it.inst.is_none() {
            b.unattributed += 1;
        }
        let cyc = cycle_of(&it.inst, it.t);
        match &it.item {
            Item::Refusal { path, .. } => {
                b.refusals
                    .entry(((it.inst.clone(), cyc), *path))
                    .or_default()
                    .push(it);
                if *path == Path::ViaLb
                    && let (Some(i), Some(c)) = (&it.inst, cyc)
                {
                    b.arrivals.entry((i.clone(), c)).or_default().push(it);
                }
            }
            Item::Arrival { path: Path::ViaLb } => {
                if let (Some(i), Some(c)) = (&it.inst, cyc) {
                    b.arrivals.entry((i.clone(), c)).or_default().push(it);
                }
            }
            Item::Arrival { .. } => {}
            Item::Cut { .. } => b.cuts.entry((it.inst.clone(), cyc)).or_default().push(it),
            Item::ProbeGoaway => b
                .probe_goaways
                .entry((it.inst.clone(), cyc))
                .or_default()
                .push(it),
            Item::IdleReset { .. } => b.idle.entry(it.inst.clone()).or_default().push(it),
            Item::AcceptQueueReset { path } => b
                .queue_resets
                .entry(((it.inst.clone(), cyc), *path))
                .or_default()
                .push(it),
        }
    }
    b
}
