//! `drainwatch cluster` (also `kubectl drainwatch`): one picture of a
//! rollout across every master. Finds the drainwatch DaemonSet's pods with
//! the user's kubeconfig, reads each one's HTTP API through the Kubernetes
//! API's port-forward (`fetch`), puts every node's timelines and verdicts on
//! one wall-clock axis (`merge`) and prints them as kubectl prints
//! resources (a table, `wide`, `json`, `yaml`) or writes the HTML report
//! with one row per master (`html`).

pub mod fetch;
mod html;
pub mod merge;

use std::fmt::Write as _;

pub use html::render;
pub use merge::{ClusterView, NodeAnswer, merge};

/// How `timeline` and `verdicts` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table, as `kubectl get` prints one.
    Text,
    /// The table with more columns.
    Wide,
    /// The whole view as JSON.
    Json,
    /// The whole view as YAML.
    Yaml,
}

/// Columns aligned as kubectl aligns them: each as wide as its widest
/// cell, three spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}   ", w = width[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn structured(view: &ClusterView, format: Format) -> Result<Option<String>, String> {
    match format {
        Format::Json => serde_json::to_string_pretty(view)
            .map(|s| Some(s + "\n"))
            .map_err(|e| e.to_string()),
        Format::Yaml => serde_yaml_ng::to_string(view)
            .map(Some)
            .map_err(|e| e.to_string()),
        Format::Text | Format::Wide => Ok(None),
    }
}

/// `cluster timeline`: every phase of every master, in time order, on one
/// axis (seconds from the earliest).
pub fn timeline_text(view: &ClusterView, format: Format) -> Result<String, String> {
    if let Some(s) = structured(view, format)? {
        return Ok(s);
    }
    let wide = format == Format::Wide;
    let mut rows: Vec<(u64, Vec<String>)> = Vec::new();
    for t in &view.timelines {
        for p in &t.phases {
            let mut r = vec![
                format!("{:.3}", p.offset_s),
                p.wall.clone(),
                t.apiserver.clone(),
                t.node.clone(),
                t.cycle.to_string(),
                format!(
                    "{}{}",
                    p.kind.label(),
                    if p.inferred { " (inferred)" } else { "" }
                ),
            ];
            if wide {
                r.push(t.pod.clone());
                r.push(if t.complete { "yes" } else { "no" }.into());
            }
            rows.push((p.unix_ns, r));
        }
    }
    // Stable: phases at the same instant keep their rollout's order.
    rows.sort_by_key(|(t, _)| *t);
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
    let mut header = vec!["+SECONDS", "TIME", "APISERVER", "NODE", "ROLLOUT", "PHASE"];
    if wide {
        header.extend(["POD", "COMPLETE"]);
    }
    if rows.is_empty() {
        return Ok("No rollout observed by any drainwatch pod.\n".into());
    }
    Ok(table(&header, &rows))
}

/// `cluster verdicts`: every node's verdicts with the node's name.
pub fn verdicts_text(view: &ClusterView, format: Format) -> Result<String, String> {
    if let Some(s) = structured(view, format)? {
        return Ok(s);
    }
    let wide = format == Format::Wide;
    let rows: Vec<Vec<String>> = view
        .verdicts
        .iter()
        .map(|v| {
            let mut r = vec![
                v.node.clone(),
                v.verdict.instance.clone().unwrap_or_else(|| "-".into()),
                v.verdict.cause.label().to_string(),
                v.verdict.count.to_string(),
                format!("{:.3}", v.offset_s),
                format!("{:.1}", v.verdict.seconds()),
            ];
            if wide {
                r.push(v.pod.clone());
                r.push(v.verdict.sentence.clone());
            }
            r
        })
        .collect();
    if rows.is_empty() {
        return Ok("No disruption found by any drainwatch pod.\n".into());
    }
    let mut header = vec![
        "NODE",
        "APISERVER",
        "CAUSE",
        "COUNT",
        "+SECONDS",
        "DURATION",
    ];
    if wide {
        header.extend(["POD", "VERDICT"]);
    }
    Ok(table(&header, &rows))
}

/// One line per pod that could not be read, for stderr.
pub fn failures(view: &ClusterView) -> Vec<String> {
    view.nodes
        .iter()
        .filter_map(|n| {
            n.error
                .as_ref()
                .map(|e| format!("pod {} on node {}: {e}", n.pod, n.node))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ClusterView {
        let data: merge::NodeData = serde_json::from_value(serde_json::json!({
            "timelines": [],
            "verdicts": [{"cause": "refused_while_not_listening", "path": "unknown",
                "instance": "m1", "cycle": 0, "window": [1_000_000_000u64, 3_500_000_000u64],
                "window_wall": ["2026-12-07T14:00:00.000000Z", null], "count": 22,
                "evidence": [1], "sentence": "apiserver m1 refused connections", "fix": "f",
                "measured": null}]
        }))
        .expect("node data");
        merge(&[NodeAnswer {
            pod: "dw-a".into(),
            node: "n1".into(),
            result: Ok(data),
        }])
    }

    #[test]
    fn verdicts_print_with_their_node_in_every_format() {
        let v = view();
        assert_eq!(
            verdicts_text(&v, Format::Text).expect("text"),
            "NODE   APISERVER   CAUSE                  COUNT   +SECONDS   DURATION\n\
             n1     m1          refused_unknown_path   22      0.000      2.5\n"
        );
        let wide = verdicts_text(&v, Format::Wide).expect("wide");
        assert!(
            wide.lines()
                .nth(1)
                .is_some_and(|l| l.ends_with("dw-a   apiserver m1 refused connections")),
            "{wide}"
        );
        let yaml: serde_json::Value =
            serde_yaml_ng::from_str(&verdicts_text(&v, Format::Yaml).expect("yaml")).expect("YAML");
        let json: serde_json::Value =
            serde_json::from_str(&verdicts_text(&v, Format::Json).expect("json")).expect("JSON");
        assert_eq!(yaml, json);
        // The end had no wall time: placed by the node's offset.
        assert_eq!(
            json["verdicts"][0]["window_unix_ns"],
            serde_json::json!([1_796_652_000_000_000_000u64, 1_796_652_002_500_000_000u64])
        );
    }

    #[test]
    fn tables_align_like_kubectl() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A     LONGER\nxyz   1\nq     22\n");
    }
}
