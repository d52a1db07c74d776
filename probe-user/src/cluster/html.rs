//! `cluster report -o cluster.html`: the merged view drawn by the same
//! renderer as `drainwatch report` (ops), one lane per master on one SVG
//! time axis. The renderer takes an engine report; the view becomes one
//! whose times are Unix nanoseconds (the cluster's common axis) and whose
//! instances are the apiservers.

use drainwatch_correlate::{Phase, Report, Timeline, rfc3339};
use drainwatch_ops::report::{Input, render_html};

use super::merge::ClusterView;

/// The self-contained HTML page for `view`, read from `source` (named in
/// the title).
pub fn render(view: &ClusterView, source: &str) -> String {
    let timelines = view
        .timelines
        .iter()
        .map(|t| Timeline {
            instance: t.apiserver.clone(),
            cycle: t.cycle,
            phases: t
                .phases
                .iter()
                .map(|p| Phase {
                    kind: p.kind,
                    t_ns: p.unix_ns,
                    wall: Some(p.wall.clone()),
                    inferred: p.inferred,
                    evidence: Vec::new(),
                    note: None,
                })
                .collect(),
            complete: t.complete,
            lb_detection: None,
            goaways: Vec::new(),
        })
        .collect();
    let verdicts = view
        .verdicts
        .iter()
        .map(|v| {
            let mut verdict = v.verdict.clone();
            // On the cluster's axis; the evidence ids are the node's own
            // observations, which the page does not have.
            verdict.window = v.window_unix_ns;
            verdict.window_wall = (
                Some(rfc3339(v.window_unix_ns.0)),
                Some(rfc3339(v.window_unix_ns.1)),
            );
            verdict.evidence.clear();
            verdict.sentence = format!("[node {}] {}", v.node, verdict.sentence);
            verdict
        })
        .collect();
    let summary = view
        .nodes
        .iter()
        .map(|n| match &n.error {
            Some(e) => format!("node {} (pod {}): not read: {e}", n.node, n.pod),
            None => format!(
                "node {} (pod {}): {} rollout(s), {} verdict(s){}",
                n.node,
                n.pod,
                n.timelines,
                n.verdicts,
                if n.unplaced > 0 {
                    format!(", {} without a wall time (not drawn)", n.unplaced)
                } else {
                    String::new()
                }
            ),
        })
        .collect();
    render_html(&Input {
        source: source.to_string(),
        observations: Vec::new(),
        report: Report {
            timelines,
            verdicts,
            ..Report::default()
        },
        summary,
        default_instance: None,
    })
}
