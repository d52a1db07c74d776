//! Stage 1, timelines: each instance's rollouts (SIGTERM -> /readyz red ->
//! listener closed -> drained or cut -> exit -> listening again -> ready)
//! built from its lifecycle observations, as observed. What was not
//! observed is filled in later ([`super::infer`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::config::Config;
use crate::model::{Direction, Obs, Observation, Signal};
use crate::output::PhaseKind;

use super::attribute::instance_of;

/// How far apart two sources' sightings of one GOAWAY frame can be: the
/// uprobe fires as the frame is written, the classifier as it leaves.
const SAME_FRAME_NS: u64 = 50_000_000;

/// One phase of a rollout: when, on what evidence, and whether inferred.
#[derive(Debug, Clone)]
pub(super) struct Mark {
    pub(super) t: u64,
    pub(super) ids: Vec<u64>,
    pub(super) wall: Option<String>,
    pub(super) inferred: bool,
    pub(super) note: Option<String>,
}

/// One rollout of one instance.
#[derive(Debug, Clone)]
pub(super) struct Cycle {
    pub(super) start: u64,
    pub(super) marks: BTreeMap<PhaseKind, Mark>,
    pub(super) complete: bool,
    pub(super) goaways: Vec<u64>,
    /// When the instance first sent GOAWAY on each connection, by the
    /// connection's client end (when the source knew the connection).
    pub(super) goaway_to: BTreeMap<SocketAddr, u64>,
    /// The latest GOAWAY sent on each connection: when, and which source
    /// saw it (to count a frame seen by two sources once).
    pub(super) goaway_from: BTreeMap<SocketAddr, (u64, crate::model::Source)>,
    pub(super) exit_signal: Option<i32>,
    pub(super) exit_code: Option<i32>,
    /// Who sent the SIGKILL, when the signal was observed: the first thing
    /// to look at for a kill without SIGTERM.
    pub(super) kill_sender: Option<u32>,
    /// Processes this rollout is about (signalled, closing, exiting): their
    /// late events still belong here after the new process listens.
    pub(super) pids: BTreeSet<u32>,
}

impl Cycle {
    fn new(t: u64) -> Cycle {
        Cycle {
            start: t,
            marks: BTreeMap::new(),
            complete: false,
            goaways: Vec::new(),
            goaway_to: BTreeMap::new(),
            goaway_from: BTreeMap::new(),
            exit_signal: None,
            exit_code: None,
            kill_sender: None,
            pids: BTreeSet::new(),
        }
    }

    /// The process really went down, as opposed to a /readyz flap.
    pub(super) fn shut_down(&self) -> bool {
        [
            PhaseKind::ListenerClosed,
            PhaseKind::Exit,
            PhaseKind::Sigkill,
            PhaseKind::PodNotRunning,
        ]
        .iter()
        .any(|k| self.has(*k))
    }

    pub(super) fn t(&self, k: PhaseKind) -> Option<u64> {
        self.marks.get(&k).map(|m| m.t)
    }

    /// Whether the instance had sent GOAWAY on `client`'s connection by `t`.
    pub(super) fn goaway_before(&self, client: &SocketAddr, t: u64) -> bool {
        self.goaway_to.get(client).is_some_and(|&g| g <= t)
    }

    pub(super) fn has(&self, k: PhaseKind) -> bool {
        self.marks.contains_key(&k)
    }

    /// First observation of a phase sets it; later ones add evidence.
    pub(super) fn observe(&mut self, k: PhaseKind, o: &Observation) {
        self.marks
            .entry(k)
            .and_modify(|m| m.ids.push(o.id))
            .or_insert_with(|| Mark {
                t: o.t_ns,
                ids: vec![o.id],
                wall: o.wall.clone(),
                inferred: false,
                note: None,
            });
    }

    pub(super) fn infer(&mut self, k: PhaseKind, from: &Mark, note: String) {
        self.marks.entry(k).or_insert_with(|| Mark {
            t: from.t,
            ids: from.ids.clone(),
            wall: from.wall.clone(),
            inferred: true,
            note: Some(note),
        });
    }

    /// Last moment a connection event can belong to this rollout's old
    /// process: the relisten (a new process serves after it).
    pub(super) fn serving_end(&self) -> u64 {
        self.t(PhaseKind::ListeningAgain)
            .or(self.t(PhaseKind::Ready))
            .unwrap_or(u64::MAX)
    }

    pub(super) fn not_listening_from(&self) -> Option<u64> {
        [
            PhaseKind::ListenerClosed,
            PhaseKind::Sigkill,
            PhaseKind::Exit,
        ]
        .iter()
        .filter_map(|k| self.t(*k))
        .min()
    }
}

/// Each instance's rollouts, and what this stage leaves to attribution.
pub(super) struct Lifecycles<'o> {
    pub(super) cycles: BTreeMap<String, Vec<Cycle>>,
    /// Instances a /readyz poller reported for (it changes how rollouts end).
    pub(super) has_readyz: BTreeSet<String>,
    /// GOAWAYs that name no instance: attributed by time later.
    pub(super) unowned_goaways: Vec<&'o Observation>,
}

/// Sorts the lifecycle observations by instance and builds each instance's
/// rollouts from them.
pub(super) fn lifecycles<'o>(
    cfg: &Config,
    sorted: &[&'o Observation],
    readyz_seen: &BTreeSet<String>,
) -> Lifecycles<'o> {
    let mut life: BTreeMap<String, Vec<&Observation>> = BTreeMap::new();
    let mut has_readyz: BTreeSet<String> = readyz_seen.clone();
    let mut unowned_goaways: Vec<&Observation> = Vec::new();
    for o in sorted {
        let lifecycle = matches!(
            o.kind,
            Obs::Signal { .. }
                | Obs::ProcessExit { .. }
                | Obs::ReadyzChanged { .. }
                | Obs::HealthzChanged { .. }
                | Obs::PodPhase { .. }
                | Obs::ListenerOpened { .. }
                | Obs::ListenerClosed { .. }
                | Obs::Goaway { .. }
        );
        if !lifecycle {
            continue;
        }
        match instance_of(cfg, o) {
            Some(i) => {
                if matches!(o.kind, Obs::ReadyzChanged { .. }) {
                    has_readyz.insert(i.clone());
                }
                life.entry(i).or_default().push(o);
            }
            None if matches!(o.kind, Obs::Goaway { .. }) => unowned_goaways.push(o),
            None => {}
        }
    }
    let cycles = life
        .iter()
        .map(|(i, obs)| (i.clone(), build_cycles(obs, has_readyz.contains(i))))
        .collect();
    Lifecycles {
        cycles,
        has_readyz,
        unowned_goaways,
    }
}

/// A shutdown event after the previous rollout already relistened starts
/// the next rollout, unless it is about the old process.
fn begin<'c>(
    cur: &'c mut Option<Cycle>,
    out: &mut Vec<Cycle>,
    t: u64,
    pid: Option<u32>,
) -> &'c mut Cycle {
    let next = cur.as_ref().is_some_and(|c| {
        c.has(PhaseKind::ListeningAgain) && !pid.is_some_and(|p| c.pids.contains(&p))
    });
    if next && let Some(c) = cur.take() {
        out.push(c);
    }
    let c = cur.get_or_insert_with(|| Cycle::new(t));
    c.pids.extend(pid);
    c
}

/// Builds the rollouts of one instance from its lifecycle observations.
fn build_cycles(obs: &[&Observation], has_readyz: bool) -> Vec<Cycle> {
    let mut out = Vec::new();
    let mut cur: Option<Cycle> = None;
    let mut listeners: BTreeSet<Option<SocketAddr>> = BTreeSet::new();

    for o in obs {
        match &o.kind {
            Obs::Signal {
                signal,
                pid,
                sender,
            } => {
                let k = match signal {
                    Signal::Term => PhaseKind::Sigterm,
                    Signal::Kill => PhaseKind::Sigkill,
                    Signal::Other(_) => continue,
                };
                let c = begin(&mut cur, &mut out, o.t_ns, *pid);
                if k == PhaseKind::Sigkill && !c.has(k) {
                    c.kill_sender = *sender;
                }
                c.observe(k, o);
            }
            Obs::ReadyzChanged { ready: false } => {
                begin(&mut cur, &mut out, o.t_ns, None).observe(PhaseKind::ReadyzRed, o);
            }
            Obs::ReadyzChanged { ready: true } => {
                if let Some(mut c) = cur.take() {
                    c.observe(PhaseKind::Ready, o);
                    c.complete = true;
                    out.push(c);
                }
            }
            Obs::HealthzChanged { healthy: false } => {
                if let Some(c) = cur.as_mut() {
                    c.observe(PhaseKind::HealthzRed, o);
                }
            }
            Obs::PodPhase { running: false } => {
                begin(&mut cur, &mut out, o.t_ns, None).observe(PhaseKind::PodNotRunning, o);
            }
            Obs::PodPhase { running: true } => {
                if let Some(c) = cur.as_mut().filter(|c| c.not_listening_from().is_some()) {
                    c.observe(PhaseKind::PodRunning, o);
                }
            }
            Obs::ListenerClosed { addr, pid } => {
                // An address we never saw open (the engine started late)
                // means we cannot tell which are left: take it as the last.
                if addr.is_none() || !listeners.remove(addr) {
                    listeners.clear();
                }
                if listeners.is_empty() {
                    begin(&mut cur, &mut out, o.t_ns, *pid).observe(PhaseKind::ListenerClosed, o);
                }
            }
            Obs::ListenerOpened { addr, .. } => {
                listeners.insert(*addr);
                let reopened = cur.as_ref().is_some_and(|c| {
                    c.not_listening_from().is_some() && !c.has(PhaseKind::ListeningAgain)
                });
                if reopened {
                    if let Some(c) = cur.as_mut() {
                        c.observe(PhaseKind::ListeningAgain, o);
                    }
                    // Without a poller, listening again is as ready as we can see.
                    if !has_readyz && let Some(mut c) = cur.take() {
                        c.complete = true;
                        out.push(c);
                    }
                }
            }
            Obs::ProcessExit { signal, code, pid } => {
                let c = begin(&mut cur, &mut out, o.t_ns, *pid);
                if !c.has(PhaseKind::Exit) {
                    c.exit_signal = *signal;
                    c.exit_code = *code;
                }
                c.observe(PhaseKind::Exit, o);
            }
            Obs::Goaway {
                direction: Direction::Sent,
                client,
                ..
            } => {
                if let Some(c) = cur.as_mut() {
                    // A Go server speaking cleartext HTTP/2 is seen twice per
                    // frame, by its uprobes and on the wire: one frame in the
                    // rollout's list (the phase keeps both as evidence).
                    let twice = client.is_some_and(|k| {
                        c.goaway_from.get(&k).is_some_and(|&(t, s)| {
                            s != o.source && o.t_ns.abs_diff(t) < SAME_FRAME_NS
                        })
                    });
                    if !twice {
                        c.goaways.push(o.id);
                    }
                    if let Some(client) = client {
                        c.goaway_to.entry(*client).or_insert(o.t_ns);
                        c.goaway_from.insert(*client, (o.t_ns, o.source));
                    }
                    c.observe(PhaseKind::GoawaySent, o);
                }
            }
            _ => {}
        }
    }
    out.extend(cur);
    out
}
