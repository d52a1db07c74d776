//! Pure: every node's timelines and verdicts on one wall-clock axis.
//!
//! Each daemon's engine times everything on its own node's boot clock, which
//! means nothing on another node; the phases and verdict windows also carry
//! the wall time the daemon stamped them with. The merge places each on the
//! Unix axis by that wall time, or, where a phase has none, by the node's
//! offset between the two clocks taken from one that has both. Blind spot:
//! the nodes' wall clocks are trusted as they are; skew between nodes (NTP
//! keeps it to milliseconds) shifts their rows against each other.

use drainwatch_correlate::{Phase, PhaseKind, Timeline, Verdict, parse_rfc3339, rfc3339};
use serde::{Deserialize, Serialize};

/// What one drainwatch pod's API answered, or why it could not be read.
#[derive(Debug, Clone)]
pub struct NodeAnswer {
    /// The drainwatch pod.
    pub pod: String,
    /// The node it runs on (`spec.nodeName`).
    pub node: String,
    /// Its `/api/v1/timelines` and `/api/v1/verdicts`, or the error.
    pub result: Result<NodeData, String>,
}

/// One node's API answers.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeData {
    /// `/api/v1/timelines`.
    pub timelines: Vec<Timeline>,
    /// `/api/v1/verdicts`.
    pub verdicts: Vec<Verdict>,
}

/// The cluster's picture: `drainwatch cluster ... -o json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterView {
    /// The wall time of offset 0 (the earliest phase or verdict), if any.
    pub origin: Option<String>,
    /// Every drainwatch pod asked, with what it gave or why not.
    pub nodes: Vec<NodeStatus>,
    /// Every rollout of every apiserver, by start time.
    pub timelines: Vec<ClusterTimeline>,
    /// Every verdict of every node, by start time.
    pub verdicts: Vec<ClusterVerdict>,
}

/// One drainwatch pod asked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    /// The drainwatch pod.
    pub pod: String,
    /// Its node.
    pub node: String,
    /// Rollouts it reported.
    pub timelines: usize,
    /// Verdicts it reported.
    pub verdicts: usize,
    /// Phases and verdicts left out: no wall time on that node to place them.
    pub unplaced: usize,
    /// Why it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One rollout of one apiserver, as its node's drainwatch saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterTimeline {
    /// The apiserver (the daemon's instance name).
    pub apiserver: String,
    /// The node whose drainwatch reported it.
    pub node: String,
    /// That drainwatch pod.
    pub pod: String,
    /// The rollout's index among the apiserver's rollouts on that node.
    pub cycle: usize,
    /// Ended with the apiserver ready again.
    pub complete: bool,
    /// Its phases on the cluster's axis.
    pub phases: Vec<ClusterPhase>,
}

/// One phase on the cluster's axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterPhase {
    /// Which phase.
    pub kind: PhaseKind,
    /// Wall time, RFC 3339.
    pub wall: String,
    /// Nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// Seconds since the view's origin.
    pub offset_s: f64,
    /// Not observed but inferred (see the node's own timeline for how).
    pub inferred: bool,
}

/// One verdict of one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterVerdict {
    /// The node whose drainwatch decided it.
    pub node: String,
    /// That drainwatch pod.
    pub pod: String,
    /// Its window's start and end, nanoseconds since the Unix epoch.
    pub window_unix_ns: (u64, u64),
    /// Seconds from the view's origin to the window's start.
    pub offset_s: f64,
    /// The verdict as the node reported it (its times on the node's clock).
    pub verdict: Verdict,
}

/// The node's offset from its boot clock to Unix time, from the first phase
/// or verdict window that has both.
fn boot_to_unix(d: &NodeData) -> Option<i128> {
    let phases = d.timelines.iter().flat_map(|t| &t.phases);
    let from_phases = phases.filter_map(|p| Some((p.t_ns, p.wall.as_deref()?)));
    let from_verdicts = d
        .verdicts
        .iter()
        .filter_map(|v| Some((v.window.0, v.window_wall.0.as_deref()?)));
    from_phases
        .chain(from_verdicts)
        .find_map(|(t, wall)| parse_rfc3339(wall).map(|u| i128::from(u) - i128::from(t)))
}

fn place(t_ns: u64, wall: Option<&str>, offset: Option<i128>) -> Option<u64> {
    wall.and_then(parse_rfc3339)
        .or_else(|| u64::try_from(i128::from(t_ns) + offset?).ok())
}

/// Merges the answers: every timeline and verdict of every node that
/// answered, placed on one axis (union, nothing dropped but what has no
/// time to place it by, counted per node as `unplaced`).
pub fn merge(answers: &[NodeAnswer]) -> ClusterView {
    let mut nodes = Vec::new();
    let mut timelines = Vec::new();
    let mut verdicts = Vec::new();
    for a in answers {
        let mut status = NodeStatus {
            pod: a.pod.clone(),
            node: a.node.clone(),
            timelines: 0,
            verdicts: 0,
            unplaced: 0,
            error: None,
        };
        let d = match &a.result {
            Ok(d) => d,
            Err(e) => {
                status.error = Some(e.clone());
                nodes.push(status);
                continue;
            }
        };
        status.timelines = d.timelines.len();
        status.verdicts = d.verdicts.len();
        let offset = boot_to_unix(d);
        for tl in &d.timelines {
            let phases: Vec<ClusterPhase> = tl
                .phases
                .iter()
                .filter_map(|p: &Phase| {
                    let Some(unix_ns) = place(p.t_ns, p.wall.as_deref(), offset) else {
                        status.unplaced += 1;
                        return None;
                    };
                    Some(ClusterPhase {
                        kind: p.kind,
                        wall: rfc3339(unix_ns),
                        unix_ns,
                        offset_s: 0.0,
                        inferred: p.inferred,
                    })
                })
                .collect();
            timelines.push(ClusterTimeline {
                apiserver: tl.instance.clone(),
                node: a.node.clone(),
                pod: a.pod.clone(),
                cycle: tl.cycle,
                complete: tl.complete,
                phases,
            });
        }
        for v in &d.verdicts {
            let start = place(v.window.0, v.window_wall.0.as_deref(), offset);
            let end = place(v.window.1, v.window_wall.1.as_deref(), offset);
            let (Some(s), Some(e)) = (start, end) else {
                status.unplaced += 1;
                continue;
            };
            verdicts.push(ClusterVerdict {
                node: a.node.clone(),
                pod: a.pod.clone(),
                window_unix_ns: (s, e.max(s)),
                offset_s: 0.0,
                verdict: v.clone(),
            });
        }
        nodes.push(status);
    }
    let origin = timelines
        .iter()
        .flat_map(|t| t.phases.iter().map(|p| p.unix_ns))
        .chain(verdicts.iter().map(|v| v.window_unix_ns.0))
        .min();
    let rel = |u: u64| origin.map_or(0.0, |o| u.saturating_sub(o) as f64 / 1e9);
    for t in &mut timelines {
        for p in &mut t.phases {
            p.offset_s = rel(p.unix_ns);
        }
    }
    for v in &mut verdicts {
        v.offset_s = rel(v.window_unix_ns.0);
    }
    let start = |t: &ClusterTimeline| t.phases.first().map_or(u64::MAX, |p| p.unix_ns);
    timelines.sort_by(|a, b| {
        (start(a), &a.apiserver, &a.node, a.cycle).cmp(&(start(b), &b.apiserver, &b.node, b.cycle))
    });
    verdicts.sort_by(|a, b| (a.window_unix_ns, &a.node).cmp(&(b.window_unix_ns, &b.node)));
    ClusterView {
        origin: origin.map(rfc3339),
        nodes,
        timelines,
        verdicts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn phase(kind: &str, t_ns: u64, wall: Option<&str>) -> serde_json::Value {
        json!({"kind": kind, "t_ns": t_ns, "wall": wall, "inferred": false, "evidence": [1]})
    }

    fn node(instance: &str, phases: Vec<serde_json::Value>) -> NodeData {
        serde_json::from_value(json!({
            "timelines": [{"instance": instance, "cycle": 0, "phases": phases,
                "complete": true, "lb_detection": null, "goaways": []}],
            "verdicts": []
        }))
        .expect("node data")
    }

    #[test]
    fn nodes_with_different_boot_clocks_meet_on_wall_time() {
        // m1's node booted long before m2's: their boot clocks disagree, the
        // wall times put m2's rollout 30 s after m1's.
        let m1 = node(
            "m1",
            vec![
                phase(
                    "sigterm",
                    9_000_000_000_000,
                    Some("2026-12-07T14:00:00.000000Z"),
                ),
                phase("exit", 9_002_000_000_000, None),
            ],
        );
        let m2 = node(
            "m2",
            vec![phase(
                "sigterm",
                5_000_000_000,
                Some("2026-12-07T14:00:30.000000Z"),
            )],
        );
        let view = merge(&[
            NodeAnswer {
                pod: "dw-b".into(),
                node: "n2".into(),
                result: Ok(m2),
            },
            NodeAnswer {
                pod: "dw-a".into(),
                node: "n1".into(),
                result: Ok(m1),
            },
            NodeAnswer {
                pod: "dw-c".into(),
                node: "n3".into(),
                result: Err("connection refused".into()),
            },
        ]);
        assert_eq!(view.origin.as_deref(), Some("2026-12-07T14:00:00.000000Z"));
        let rows: Vec<(&str, &str, PhaseKind, f64, &str)> = view
            .timelines
            .iter()
            .flat_map(|t| {
                t.phases.iter().map(|p| {
                    (
                        t.apiserver.as_str(),
                        t.node.as_str(),
                        p.kind,
                        p.offset_s,
                        p.wall.as_str(),
                    )
                })
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    "m1",
                    "n1",
                    PhaseKind::Sigterm,
                    0.0,
                    "2026-12-07T14:00:00.000000Z"
                ),
                // No wall time of its own: placed by the node's clock offset.
                (
                    "m1",
                    "n1",
                    PhaseKind::Exit,
                    2.0,
                    "2026-12-07T14:00:02.000000Z"
                ),
                (
                    "m2",
                    "n2",
                    PhaseKind::Sigterm,
                    30.0,
                    "2026-12-07T14:00:30.000000Z"
                ),
            ]
        );
        assert_eq!(view.nodes.len(), 3);
        assert_eq!(view.nodes[2].error.as_deref(), Some("connection refused"));
        assert!(view.nodes.iter().all(|n| n.unplaced == 0));
    }

    #[test]
    fn a_node_without_any_wall_time_counts_what_it_cannot_place() {
        let d = node("m1", vec![phase("sigterm", 1_000, None)]);
        let view = merge(&[NodeAnswer {
            pod: "p".into(),
            node: "n".into(),
            result: Ok(d),
        }]);
        assert_eq!(view.nodes[0].unplaced, 1);
        assert!(view.timelines[0].phases.is_empty());
        assert_eq!(view.origin, None);
    }
}
