//! What the stages pass each other: connection-level items, the attempts
//! they group into, and the verdict drafts the causes make of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::model::{Keepalive, Path, Workload};
use crate::output::{AFFECTED_MAX, Affected, Cause, Measured, Verdict};

/// Instance and rollout an item belongs to, as far as known.
pub(super) type Owner = (Option<String>, Option<usize>);

/// A connection-level fact, normalised from the observation kinds.
#[derive(Debug, Clone)]
pub(super) enum Item {
    /// A refused SYN; key identifies the attempt across observers.
    Refusal { key: Option<SocketAddr>, path: Path },
    /// A new connection accepted by the instance.
    Arrival { path: Path },
    /// A connection or request cut; `what` says how it was seen. `strong`
    /// when a request is known to have been cut (a server close with a
    /// request outstanding, a failed probe); an abortive RST alone is weak:
    /// after a GOAWAY it is the graceful close of a connection the client
    /// still wrote to.
    Cut {
        key: Option<SocketAddr>,
        what: String,
        strong: bool,
    },
    /// A queued, never-accepted connection reset at listener close.
    AcceptQueueReset { path: Path },
    /// A probe request failed because of a GOAWAY.
    ProbeGoaway,
    /// A middlebox reset an idle flow; `answered` when it answered a
    /// packet after the silence.
    IdleReset {
        silence_s: f64,
        keepalive: Keepalive,
        answered: bool,
    },
}

/// An item with where and when it was seen.
#[derive(Debug, Clone)]
pub(super) struct It {
    pub(super) t: u64,
    pub(super) id: u64,
    pub(super) client: Option<SocketAddr>,
    pub(super) wall: Option<String>,
    pub(super) inst: Option<String>,
    pub(super) probe: bool,
    pub(super) item: Item,
    /// The workload on this node that owned the connection, when known.
    pub(super) who: Option<std::sync::Arc<Workload>>,
}

/// How far apart kernel sightings of one connection attempt can be (ns).
const SAME_ATTEMPT_NS: u64 = 10_000_000;

/// Merges items that are one attempt seen twice (kernel and prober, or
/// both ends of a local connection): same client address within the tolerance.
pub(super) fn dedupe(items: Vec<&It>, tol: u64) -> Vec<Vec<&It>> {
    let mut groups: Vec<Vec<&It>> = Vec::new();
    let mut last_by_key: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for it in items {
        let key = match &it.item {
            Item::Refusal { key, .. } | Item::Cut { key, .. } => *key,
            _ => None,
        };
        if let Some(k) = key {
            // The same attempt seen twice: by the prober and the kernel
            // (within `tol`), or by several kernel hooks (the RST sent, the
            // RST received, the refused connect: microseconds apart). Two
            // kernel sightings further apart are two attempts that reused a
            // source port.
            if let Some(&g) = last_by_key.get(&k)
                && groups[g].last().is_some_and(|p| {
                    let window = if p.probe || it.probe {
                        tol
                    } else {
                        tol.min(SAME_ATTEMPT_NS)
                    };
                    it.t.saturating_sub(p.t) <= window
                })
            {
                groups[g].push(it);
                continue;
            }
            last_by_key.insert(k, groups.len());
        }
        groups.push(vec![it]);
    }
    groups
}

/// The attempts a verdict counts, and further evidence it cites.
pub(super) struct Group<'a> {
    pub(super) attempts: Vec<Vec<&'a It>>,
    pub(super) extra_ids: Vec<u64>,
}

impl<'a> Group<'a> {
    pub(super) fn new(attempts: Vec<Vec<&'a It>>) -> Group<'a> {
        Group {
            attempts,
            extra_ids: Vec::new(),
        }
    }

    pub(super) fn first(&self) -> Option<&'a It> {
        self.attempts
            .iter()
            .flatten()
            .min_by_key(|i| (i.t, i.id))
            .copied()
    }

    pub(super) fn last(&self) -> Option<&'a It> {
        self.attempts
            .iter()
            .flatten()
            .max_by_key(|i| (i.t, i.id))
            .copied()
    }

    pub(super) fn evidence(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .attempts
            .iter()
            .flatten()
            .map(|i| i.id)
            .chain(self.extra_ids.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// How the cuts among the attempts were seen, each once.
    pub(super) fn whats(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .attempts
            .iter()
            .flatten()
            .filter_map(|i| match &i.item {
                Item::Cut { what, .. } => Some(what.clone()),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// A verdict before its window and count are settled.
pub(super) struct Draft<'a> {
    pub(super) cause: Cause,
    pub(super) instance: Option<String>,
    pub(super) cycle: Option<usize>,
    pub(super) group: Group<'a>,
    /// Start, end and their wall-clock times; `None`: the group's first and
    /// last item.
    pub(super) window: Option<(u64, u64, Option<String>, Option<String>)>,
    pub(super) sentence: String,
    pub(super) fix: String,
    pub(super) measured: Option<Measured>,
}

impl<'a> Draft<'a> {
    /// A verdict whose window is its group's first and last item, with
    /// nothing measured.
    pub(super) fn new(
        cause: Cause,
        (instance, cycle): Owner,
        group: Group<'a>,
        (sentence, fix): (String, String),
    ) -> Draft<'a> {
        Draft {
            cause,
            instance,
            cycle,
            group,
            window: None,
            sentence,
            fix,
            measured: None,
        }
    }
}

impl Draft<'_> {
    pub(super) fn finish(self) -> Option<Verdict> {
        let (start, end, ws, we) = match self.window {
            Some(w) => w,
            None => {
                let (f, l) = (self.group.first()?, self.group.last()?);
                (f.t, l.t, f.wall.clone(), l.wall.clone())
            }
        };
        let (affected, more) = affected(&self.group);
        let mut sentence = self.sentence;
        let mut fix = self.fix;
        if !affected.is_empty() {
            sentence.push_str(&format!("; hurt: {}", hurt_words(&affected, more)));
            if let Some(f) = super::causes::idle_reset::workload_fix(self.cause, &affected) {
                fix = f;
            }
        }
        Some(Verdict {
            cause: self.cause,
            instance: self.instance,
            cycle: self.cycle,
            window: (start, end),
            window_wall: (ws, we),
            count: self.group.attempts.len() as u64,
            evidence: self.group.evidence(),
            sentence: format!("{sentence}; fix: {fix}"),
            fix,
            measured: self.measured,
            affected,
            affected_more: more,
        })
    }
}

/// The workloads a group's attempts belong to, by [`Workload::name`]: each
/// attempt counts once, for the first of its sightings that names its
/// owner; most hurt first (then by name), at most [`AFFECTED_MAX`], and
/// how many more there were.
fn affected(g: &Group<'_>) -> (Vec<Affected>, u64) {
    let mut by: BTreeMap<String, Affected> = BTreeMap::new();
    for attempt in &g.attempts {
        let Some(it) = attempt.iter().find(|i| i.who.is_some()) else {
            continue;
        };
        let Some(w) = &it.who else { continue };
        let a = by.entry(w.name()).or_insert_with(|| Affected {
            workload: w.name(),
            namespace: w.namespace.clone(),
            pod: w.pod.clone().filter(|_| w.namespace.is_some()),
            pod_uid: w.pod_uid.clone(),
            programs: Vec::new(),
            count: 0,
            without_keepalive: None,
        });
        a.count += 1;
        if let Some(c) = &w.comm
            && !a.programs.contains(c)
            && a.programs.len() < 4
        {
            a.programs.push(c.clone());
        }
        let idle = attempt.iter().find_map(|i| match i.item {
            Item::IdleReset { keepalive, .. } => Some(keepalive),
            _ => None,
        });
        if let Some(k) = idle {
            let n = a.without_keepalive.get_or_insert(0);
            if k == Keepalive::None {
                *n += 1;
            }
        }
    }
    let mut v: Vec<Affected> = by.into_values().collect();
    v.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.workload.cmp(&b.workload))
    });
    let more = v.len().saturating_sub(AFFECTED_MAX) as u64;
    v.truncate(AFFECTED_MAX);
    (v, more)
}

/// "pod default/web (3; python3; no TCP keepalive), process curl (1)":
/// each workload with its count, a pod's programs, and for idle resets
/// its connections without keepalive.
fn hurt_words(affected: &[Affected], more: u64) -> String {
    let mut parts: Vec<String> = affected
        .iter()
        .map(|a| {
            let mut d = vec![a.count.to_string()];
            if !a.programs.is_empty() && !a.workload.starts_with("process ") {
                d.push(a.programs.join(", "));
            }
            match a.without_keepalive {
                Some(n) if n == a.count => d.push("no TCP keepalive".into()),
                Some(0) | None => {}
                Some(n) => d.push(format!("{n} without TCP keepalive")),
            }
            format!("{} ({})", a.workload, d.join("; "))
        })
        .collect();
    if more > 0 {
        parts.push(format!("and {more} more"));
    }
    parts.join(", ")
}

/// Seconds from `a` to `b` (negative when `b` is earlier).
pub(super) fn dsecs(a: u64, b: u64) -> f64 {
    (b as f64 - a as f64) / 1e9
}
