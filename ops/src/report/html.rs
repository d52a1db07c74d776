//! The HTML page and its SVG timeline, written by hand as text: the page
//! must be one self-contained file, and the drawing is a few rectangles,
//! lines and labels that need no charting library. The document is kept
//! well-formed XML (self-closed void elements, escaped text) so tests can
//! parse it with an XML parser.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use drainwatch_correlate::{Obs, Observation, PhaseKind, ResetOrigin, Timeline};

use super::Input;

const W: f64 = 1200.0;
const LEFT: f64 = 190.0;
const RIGHT: f64 = 20.0;
const BUCKETS: usize = 60;

/// Escapes text for XML/HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

fn phase_color(k: PhaseKind) -> &'static str {
    match k {
        PhaseKind::Sigterm => "#f6c26b",
        PhaseKind::ReadyzRed => "#f4a261",
        PhaseKind::HealthzRed => "#e9c46a",
        PhaseKind::PodNotRunning => "#b8b8b8",
        PhaseKind::ListenerClosed => "#e76f51",
        PhaseKind::GoawaySent => "#8ab17d",
        PhaseKind::Drained => "#2a9d8f",
        PhaseKind::RequestsCut => "#d62828",
        PhaseKind::Sigkill => "#6a040f",
        PhaseKind::Exit => "#6c757d",
        PhaseKind::ListeningAgain => "#90be6d",
        PhaseKind::PodRunning => "#a8dadc",
        PhaseKind::Ready => "#43aa8b",
    }
}

const OK_COLOR: &str = "#4caf50";
const FAIL_COLOR: &str = "#e53935";
const MARK_COLOR: &str = "#c62828";
const RATE_COLOR: &str = "#6a1b9a";

/// Maps time (ns) to x.
struct Axis {
    t0: u64,
    t1: u64,
}

impl Axis {
    fn x(&self, t: u64) -> f64 {
        let span = (self.t1 - self.t0).max(1) as f64;
        LEFT + (t.saturating_sub(self.t0).min(self.t1 - self.t0) as f64 / span) * (W - LEFT - RIGHT)
    }

    /// A tick step giving 5 to 12 ticks.
    fn step_ns(&self) -> u64 {
        const STEPS_MS: [u64; 22] = [
            1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 15_000, 30_000, 60_000,
            120_000, 300_000, 600_000, 900_000, 1_800_000, 3_600_000,
        ];
        let span = self.t1 - self.t0;
        STEPS_MS
            .iter()
            .map(|ms| ms * 1_000_000)
            .find(|s| span / s <= 12)
            .unwrap_or(span / 10 + 1)
    }
}

fn fmt_rel(ns: u64) -> String {
    let s = ns as f64 / 1e9;
    if s >= 120.0 {
        format!(
            "{}m{:02}s",
            (s / 60.0).floor(),
            (s % 60.0).round() as u64 % 60
        )
    } else if s == 0.0 || (s >= 1.0 && (s - s.round()).abs() < 0.05) {
        format!("{s:.0}s")
    } else if s >= 1.0 {
        // Half-second ticks (and times between whole seconds) keep their
        // tenth: "1.5s", not a second "2s" beside the real one.
        format!("{s:.1}s")
    } else {
        format!("{:.0}ms", s * 1e3)
    }
}

/// Whether an observation is a success or failure of a connection or
/// request, for the outcome chart.
fn outcome(o: &Observation, probes_only: bool) -> Option<bool> {
    match &o.kind {
        Obs::ProbeResult { outcome, .. } => Some(!outcome.failed()),
        _ if probes_only => None,
        Obs::Accepted { .. } => Some(true),
        Obs::Refused { .. } | Obs::ResetReceived { .. } => Some(false),
        Obs::ResetSent { reason, .. } => reason
            .as_deref()
            .filter(|r| r.starts_with("TCP_ABORT"))
            .map(|_| false),
        // Only a middlebox's reset is a failure here: a peer's RST is
        // usually a client closing abortively (Go, TLS), which the engine
        // ignores too.
        Obs::WireReset {
            origin: ResetOrigin::Middlebox,
            ..
        } => Some(false),
        Obs::ConnClosed {
            pending_request: Some(true),
            by_server: true,
            ..
        } => Some(false),
        _ => None,
    }
}

fn instance_key(o: &Observation, default: &Option<String>) -> String {
    o.instance
        .clone()
        .or_else(|| default.clone())
        .unwrap_or_else(|| "-".into())
}

/// The time axis over every instant drawn, and the wall time of its start.
fn axis_of(input: &Input) -> (Axis, Option<String>) {
    let r = &input.report;
    // Every instant drawn: observations, verdict windows, phases (a report
    // of timelines alone has no observations, so none of them may default
    // the axis to 0).
    let instants = || {
        input
            .observations
            .iter()
            .map(|o| o.t_ns)
            .chain(r.verdicts.iter().flat_map(|v| [v.window.0, v.window.1]))
            .chain(r.timelines.iter().flat_map(|t| &t.phases).map(|p| p.t_ns))
    };
    let t0 = instants().min().unwrap_or(0);
    let mut t1 = instants().max().unwrap_or(0);
    if t1 <= t0 {
        t1 = t0 + 1_000_000_000;
    }
    // A report drawn from timelines alone (`drainwatch cluster report`) has
    // no observations: its phases carry the wall time.
    let first_wall = input
        .observations
        .iter()
        .filter(|o| o.t_ns == t0)
        .find_map(|o| o.wall.clone())
        .or_else(|| {
            r.timelines
                .iter()
                .flat_map(|t| &t.phases)
                .filter(|p| p.t_ns == t0)
                .find_map(|p| p.wall.clone())
        });
    (Axis { t0, t1 }, first_wall)
}

/// The whole page.
pub fn render_html(input: &Input) -> String {
    let r = &input.report;
    let (axis, first_wall) = axis_of(input);
    let t0 = axis.t0;

    let svg = svg(input, &axis);
    let mut h = String::new();
    let title = format!("drainwatch report: {}", input.source);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n\
         <title>{}</title>\n<style>\n{}\n</style>\n</head>\n<body>\n",
        esc(&title),
        CSS
    );
    let _ = writeln!(h, "<h1>{}</h1>", esc(&title));
    let _ = writeln!(
        h,
        "<p class=\"sub\">time axis: seconds from {} (t = {:.3} s on the input's clock)</p>",
        esc(first_wall.as_deref().unwrap_or("the first observation")),
        t0 as f64 / 1e9
    );
    h.push_str(&svg);
    let _ = writeln!(h, "<h2>Verdicts ({})</h2>", r.verdicts.len());
    if r.verdicts.is_empty() {
        h.push_str("<p class=\"ok\">No disruption found.</p>\n");
    } else {
        h.push_str("<ol class=\"verdicts\">\n");
        for (i, v) in r.verdicts.iter().enumerate() {
            let _ = writeln!(
                h,
                "<li id=\"verdict-{}\"><span class=\"cause\">{}</span> <span class=\"inst\">[{}]</span> \
                 <span class=\"when\">{} .. {} ({} affected, {:.1} s)</span><br/>{}</li>",
                i + 1,
                esc(v.cause.label()),
                esc(v.instance.as_deref().unwrap_or("-")),
                esc(&v
                    .window_wall
                    .0
                    .clone()
                    .unwrap_or_else(|| fmt_rel(v.window.0.saturating_sub(t0)))),
                esc(&v
                    .window_wall
                    .1
                    .clone()
                    .unwrap_or_else(|| fmt_rel(v.window.1.saturating_sub(t0)))),
                v.count,
                v.seconds(),
                esc(&v.sentence)
            );
        }
        h.push_str("</ol>\n");
    }
    h.push_str("<h2>Rollouts</h2>\n");
    if r.timelines.is_empty() {
        h.push_str("<p>No rollout was observed.</p>\n");
    } else {
        h.push_str("<table>\n<tr><th>instance</th><th>rollout</th><th>phases</th></tr>\n");
        for tl in &r.timelines {
            let phases: Vec<String> = tl
                .phases
                .iter()
                .map(|p| {
                    format!(
                        "{} {}{}",
                        p.kind.label(),
                        fmt_rel(p.t_ns.saturating_sub(t0)),
                        if p.inferred { " (inferred)" } else { "" }
                    )
                })
                .collect();
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}{}</td><td>{}</td></tr>",
                esc(&tl.instance),
                tl.cycle,
                if tl.complete { "" } else { " (incomplete)" },
                esc(&phases.join(" \u{2192} "))
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2>Input</h2>\n<ul class=\"input\">\n");
    for l in &input.summary {
        let _ = writeln!(h, "<li>{}</li>", esc(l));
    }
    let _ = writeln!(
        h,
        "<li>{} observations, {} duplicates, {} failed probes not attributed</li>",
        r.stats.observations, r.stats.duplicates, r.stats.unattributed
    );
    h.push_str("</ul>\n</body>\n</html>\n");
    h
}

const CSS: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:20px;color:#222;background:#fff}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}\
.sub{color:#666;margin:0 0 10px;font-size:13px}\
svg{border:1px solid #ddd;background:#fcfcfc;display:block}\
svg text{font-size:11px;fill:#333}svg .lane{font-size:12px;font-weight:600}\
svg .title{font-size:12px;font-weight:600;fill:#444}\
.verdicts li{margin:6px 0;font-size:14px}.cause{font-family:monospace;color:#c62828;font-weight:600}\
.inst{font-family:monospace}.when{color:#666;font-size:12px}.ok{color:#2e7d32}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}\
.input{font-size:13px;color:#444}";

// Long (about 240 lines) and not split all the way yet: its sections
// (lifecycle lanes, one row per verdict; the outcome buckets and error rate
// are `outcome_sections`) share the running `y` cursor and the legend state
// the lanes collect (`present`, `gauges`). The split owed is one function
// per section over a small layout struct.
fn svg(input: &Input, axis: &Axis) -> String {
    let r = &input.report;
    let mut body = String::new();
    let mut y = 10.0;

    // Time axis with grid lines (drawn after the height is known).
    let axis_y = y + 14.0;
    y += 24.0;

    // Lifecycle bands, one lane per instance.
    let mut by_inst: BTreeMap<&str, Vec<&Timeline>> = BTreeMap::new();
    for tl in &r.timelines {
        by_inst.entry(tl.instance.as_str()).or_default().push(tl);
    }
    let mut present: Vec<PhaseKind> = Vec::new();
    let mut gauges = 0;
    let _ = writeln!(body, "<g id=\"phases\">");
    for (inst, tls) in &by_inst {
        let lane_h = 26.0;
        let _ = writeln!(
            body,
            "<text class=\"lane\" x=\"8\" y=\"{:.1}\">{} lifecycle</text>",
            y + 17.0,
            esc(inst)
        );
        let _ = writeln!(
            body,
            "<rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{lane_h}\" fill=\"#eef6ee\"/>",
            W - LEFT - RIGHT
        );
        for tl in tls {
            for (i, p) in tl.phases.iter().enumerate() {
                let x0 = axis.x(p.t_ns);
                let end = tl.phases.get(i + 1).map(|n| n.t_ns);
                let x1 = match end {
                    Some(e) => axis.x(e),
                    None => x0 + 4.0,
                }
                .max(x0 + 2.0);
                if !present.contains(&p.kind) {
                    present.push(p.kind);
                }
                let _ = writeln!(
                    body,
                    "<rect class=\"band\" data-phase=\"{}\" data-instance=\"{}\" x=\"{x0:.1}\" y=\"{y:.1}\" \
                     width=\"{:.1}\" height=\"{lane_h}\" fill=\"{}\" stroke=\"#fff\" stroke-width=\"0.5\"\
                     {}><title>{} {}: {}{}</title></rect>",
                    p.kind.label(),
                    esc(inst),
                    x1 - x0,
                    phase_color(p.kind),
                    if p.inferred {
                        " fill-opacity=\"0.55\""
                    } else {
                        ""
                    },
                    esc(inst),
                    tl.cycle,
                    p.kind.label(),
                    if p.inferred { " (inferred)" } else { "" }
                );
            }
        }
        y += lane_h + 8.0;

        // Serving gauge: 1 when /readyz (or, without a poller, the pod) says
        // so, as a Grafana panel of readiness under the request graph would.
        let gauge = gauge_points(input, inst);
        if !gauge.is_empty() {
            gauges += 1;
            let gh = 22.0;
            let _ = writeln!(
                body,
                "<text x=\"8\" y=\"{:.1}\">{} ready (1/0)</text>",
                y + 15.0,
                esc(inst)
            );
            let mut pts = String::new();
            let mut prev: Option<bool> = None;
            for (t, up) in &gauge {
                let x = axis.x(*t);
                let yy = if *up { y + 2.0 } else { y + gh - 2.0 };
                if let Some(p) = prev {
                    let py = if p { y + 2.0 } else { y + gh - 2.0 };
                    let _ = write!(pts, "{x:.1},{py:.1} ");
                }
                let _ = write!(pts, "{x:.1},{yy:.1} ");
                prev = Some(*up);
            }
            if let Some(p) = prev {
                let py = if p { y + 2.0 } else { y + gh - 2.0 };
                let _ = write!(pts, "{:.1},{py:.1}", W - RIGHT);
            }
            let _ = writeln!(
                body,
                "<polyline class=\"gauge\" points=\"{}\" fill=\"none\" stroke=\"#1565c0\" stroke-width=\"2\"/>",
                pts.trim()
            );
            y += gh + 8.0;
        }
    }
    let _ = writeln!(body, "</g>");

    // Disruptions: one row per verdict, its window as a mark and its
    // evidence as ticks.
    let _ = writeln!(body, "<g id=\"disruptions\">");
    let _ = writeln!(
        body,
        "<text class=\"title\" x=\"8\" y=\"{:.1}\">disruptions</text>",
        y + 12.0
    );
    if r.verdicts.is_empty() {
        let _ = writeln!(body, "<text x=\"{LEFT}\" y=\"{:.1}\">none</text>", y + 12.0);
    }
    y += 20.0;
    let times: BTreeMap<u64, u64> = input.observations.iter().map(|o| (o.id, o.t_ns)).collect();
    for (i, v) in r.verdicts.iter().enumerate() {
        let row_h = 16.0;
        let x0 = axis.x(v.window.0);
        let x1 = axis.x(v.window.1).max(x0 + 3.0);
        let _ = writeln!(
            body,
            "<text x=\"20\" y=\"{:.1}\">{}. {}</text>",
            y + 12.0,
            i + 1,
            esc(v.cause.label())
        );
        let _ = writeln!(
            body,
            "<rect class=\"mark\" data-verdict=\"{}\" x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{row_h}\" \
             fill=\"{MARK_COLOR}\" fill-opacity=\"0.35\" stroke=\"{MARK_COLOR}\"><title>{}</title></rect>",
            i + 1,
            x1 - x0,
            esc(&v.line())
        );
        for e in &v.evidence {
            if let Some(t) = times.get(e) {
                let x = axis.x(*t);
                let _ = writeln!(
                    body,
                    "<line class=\"evidence\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{MARK_COLOR}\"/>",
                    y + 2.0,
                    y + row_h - 2.0
                );
            }
        }
        let _ = writeln!(
            body,
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            (x1 + 4.0).min(W - RIGHT - 40.0),
            y + 12.0,
            v.count
        );
        y += row_h + 4.0;
    }
    let _ = writeln!(body, "</g>");

    // Outcomes and the error rate, of what was observed (a report drawn
    // from timelines alone, `drainwatch cluster report`'s, has nothing
    // to chart there).
    let observed = !input.observations.is_empty();
    if observed {
        y = outcome_sections(&mut body, input, axis, y);
    }

    // Legend.
    let _ = writeln!(body, "<g id=\"legend\">");
    let mut lx = 8.0;
    let mut ly = y + 6.0;
    let mut item = |body: &mut String, color: &str, label: &str, line: bool| {
        let width = 26.0 + label.len() as f64 * 6.5;
        if lx + width > W - RIGHT {
            lx = 8.0;
            ly += 18.0;
        }
        if line {
            let _ = writeln!(
                body,
                "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"2\"/>",
                lx + 14.0,
                ly + 6.0,
                ly + 6.0
            );
        } else {
            let _ = writeln!(
                body,
                "<rect x=\"{lx:.1}\" y=\"{ly:.1}\" width=\"14\" height=\"12\" fill=\"{color}\"/>"
            );
        }
        let _ = writeln!(
            body,
            "<text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 18.0,
            ly + 10.0,
            esc(label)
        );
        lx += width;
    };
    present.sort();
    for k in &present {
        item(&mut body, phase_color(*k), k.label(), false);
    }
    item(&mut body, MARK_COLOR, "disruption (verdict window)", false);
    if observed {
        item(&mut body, OK_COLOR, "ok", false);
        item(&mut body, FAIL_COLOR, "failed", false);
        item(&mut body, RATE_COLOR, "error rate", true);
    }
    if gauges > 0 {
        item(&mut body, "#1565c0", "ready", true);
    }
    let _ = writeln!(body, "</g>");
    let height = ly + 24.0;

    // Axis and grid, now that the height is known.
    let mut grid = String::new();
    let _ = writeln!(grid, "<g id=\"axis\">");
    let step = axis.step_ns();
    let mut t = 0u64;
    while axis.t0 + t <= axis.t1 {
        let x = axis.x(axis.t0 + t);
        let _ = writeln!(
            grid,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#e3e3e3\"/>\
             <text x=\"{x:.1}\" y=\"{axis_y:.1}\" text-anchor=\"middle\">{}</text>",
            axis_y + 4.0,
            height - 30.0,
            fmt_rel(t)
        );
        t += step;
    }
    let _ = writeln!(grid, "</g>");

    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"timeline\" width=\"{W}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {W} {height:.0}\" role=\"img\" aria-label=\"rollout timeline\">\n{grid}{body}</svg>\n"
    )
}

/// Outcomes per time bucket (stacked bars) and the error rate, from `y`
/// down; returns the `y` below them.
fn outcome_sections(body: &mut String, input: &Input, axis: &Axis, mut y: f64) -> f64 {
    let probes_only = input
        .observations
        .iter()
        .any(|o| matches!(o.kind, Obs::ProbeResult { .. }));
    let span = axis.t1 - axis.t0;
    // Round the bucket up so BUCKETS of them cover the axis exactly.
    let bucket = span.div_ceil(BUCKETS as u64).max(1);
    let mut ok = [0u64; BUCKETS];
    let mut bad = [0u64; BUCKETS];
    for o in &input.observations {
        if let Some(good) = outcome(o, probes_only) {
            let b = (o.t_ns.saturating_sub(axis.t0) / bucket).min(BUCKETS as u64 - 1) as usize;
            if good {
                ok[b] += 1;
            } else {
                bad[b] += 1;
            }
        }
    }
    let what = if probes_only {
        "probe requests"
    } else {
        "connections"
    };
    let max = (0..BUCKETS)
        .map(|i| ok[i] + bad[i])
        .max()
        .unwrap_or(0)
        .max(1);
    let ch = 100.0;
    y += 8.0;
    let _ = writeln!(body, "<g id=\"outcomes\">");
    let _ = writeln!(
        body,
        "<text class=\"title\" x=\"8\" y=\"{:.1}\">{what}</text><text x=\"8\" y=\"{:.1}\">ok / failed per {}</text>",
        y + 12.0,
        y + 26.0,
        fmt_rel(bucket)
    );
    let _ = writeln!(
        body,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{max}</text>",
        LEFT - 4.0,
        y + 10.0
    );
    let bw = (axis.x(axis.t0 + bucket) - LEFT).max(1.0);
    for i in 0..BUCKETS {
        let total = ok[i] + bad[i];
        if total == 0 {
            continue;
        }
        let x = axis.x(axis.t0 + i as u64 * bucket);
        let h_ok = ch * ok[i] as f64 / max as f64;
        let h_bad = ch * bad[i] as f64 / max as f64;
        let base = y + ch;
        if ok[i] > 0 {
            let _ = writeln!(
                body,
                "<rect class=\"bar-ok\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h_ok:.1}\" fill=\"{OK_COLOR}\"><title>{} ok</title></rect>",
                base - h_ok,
                bw - 1.0,
                ok[i]
            );
        }
        if bad[i] > 0 {
            let _ = writeln!(
                body,
                "<rect class=\"bar-failed\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h_bad:.1}\" fill=\"{FAIL_COLOR}\"><title>{} failed</title></rect>",
                base - h_ok - h_bad,
                bw - 1.0,
                bad[i]
            );
        }
    }
    y += ch + 10.0;
    let _ = writeln!(body, "</g>");

    // Error rate: failed / all per bucket, 0-100 %.
    let rh = 60.0;
    let _ = writeln!(body, "<g id=\"error-rate\">");
    let _ = writeln!(
        body,
        "<text class=\"title\" x=\"8\" y=\"{:.1}\">error rate</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">100%</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">0%</text>",
        y + 12.0,
        LEFT - 4.0,
        y + 10.0,
        LEFT - 4.0,
        y + rh
    );
    let _ = writeln!(
        body,
        "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ccc\"/>",
        W - RIGHT,
        y + rh,
        y + rh
    );
    let mut pts = Vec::new();
    for i in 0..BUCKETS {
        let total = ok[i] + bad[i];
        if total == 0 {
            continue;
        }
        let x = axis.x(axis.t0 + i as u64 * bucket) + bw / 2.0;
        let rate = bad[i] as f64 / total as f64;
        pts.push(format!("{x:.1},{:.1}", y + rh - rate * (rh - 4.0)));
    }
    if !pts.is_empty() {
        let _ = writeln!(
            body,
            "<polyline class=\"rate\" points=\"{}\" fill=\"none\" stroke=\"{RATE_COLOR}\" stroke-width=\"2\"/>",
            pts.join(" ")
        );
    }
    y += rh + 10.0;
    let _ = writeln!(body, "</g>");

    y
}

/// Ready (1/0) over time for an instance: /readyz when polled, else the pod phase.
fn gauge_points(input: &Input, inst: &str) -> Vec<(u64, bool)> {
    let mine = |o: &&Observation| instance_key(o, &input.default_instance) == inst;
    let readyz: Vec<(u64, bool)> = input
        .observations
        .iter()
        .filter(mine)
        .filter_map(|o| match o.kind {
            Obs::ReadyzChanged { ready } => Some((o.t_ns, ready)),
            _ => None,
        })
        .collect();
    if !readyz.is_empty() {
        return readyz;
    }
    input
        .observations
        .iter()
        .filter(mine)
        .filter_map(|o| match o.kind {
            Obs::PodPhase { running } => Some((o.t_ns, running)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod fmt_tests {
    use super::fmt_rel;

    #[test]
    fn relative_times_keep_half_seconds() {
        assert_eq!(fmt_rel(0), "0s");
        assert_eq!(fmt_rel(500_000_000), "500ms");
        assert_eq!(fmt_rel(1_500_000_000), "1.5s");
        assert_eq!(fmt_rel(2_000_000_000), "2s");
        assert_eq!(fmt_rel(2_020_000_000), "2s");
        assert_eq!(fmt_rel(150_000_000_000), "2m30s");
    }
}
