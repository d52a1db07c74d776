//! Stage 5, the report: verdicts in order, a timeline per rollout, the
//! metric totals.

use std::collections::BTreeMap;

use crate::output::{
    CauseTotals, InputStats, LbDetection, Phase, PhaseGauge, Report, Summary, Timeline, Verdict,
};

use super::cycle::Cycle;
use super::draft::Draft;

/// The report of one computation.
pub(super) fn report(
    cycles: &BTreeMap<String, Vec<Cycle>>,
    lb: &BTreeMap<(String, usize), LbDetection>,
    drafts: Vec<Draft>,
    stats: InputStats,
) -> Report {
    let mut verdicts: Vec<Verdict> = drafts.into_iter().filter_map(Draft::finish).collect();
    sort_verdicts(&mut verdicts);
    let timelines = timelines(cycles, lb);
    let summary = summarize(&verdicts, &timelines);
    Report {
        timelines,
        verdicts,
        summary,
        stats,
    }
}

fn timelines(
    cycles: &BTreeMap<String, Vec<Cycle>>,
    lb: &BTreeMap<(String, usize), LbDetection>,
) -> Vec<Timeline> {
    cycles
        .iter()
        .flat_map(|(inst, cs)| {
            cs.iter().enumerate().map(move |(n, c)| {
                let mut phases: Vec<Phase> = c
                    .marks
                    .iter()
                    .map(|(k, m)| Phase {
                        kind: *k,
                        t_ns: m.t,
                        wall: m.wall.clone(),
                        inferred: m.inferred,
                        evidence: m.ids.clone(),
                        note: m.note.clone(),
                    })
                    .collect();
                phases.sort_by_key(|p| (p.t_ns, p.kind));
                Timeline {
                    instance: inst.clone(),
                    cycle: n,
                    phases,
                    complete: c.complete,
                    lb_detection: lb.get(&(inst.clone(), n)).cloned(),
                    goaways: c.goaways.clone(),
                }
            })
        })
        .collect()
}

pub(super) fn sort_verdicts(v: &mut [Verdict]) {
    v.sort_by(|a, b| {
        (a.window, a.cause, &a.instance, &a.evidence).cmp(&(
            b.window,
            b.cause,
            &b.instance,
            &b.evidence,
        ))
    });
}

pub(super) fn summarize(verdicts: &[Verdict], timelines: &[Timeline]) -> Summary {
    let mut s = Summary::default();
    for v in verdicts {
        let e = s
            .by_cause
            .entry(v.cause.label().to_string())
            .or_insert_with(CauseTotals::default);
        e.verdicts += 1;
        e.disruptions += v.count;
        e.seconds += v.seconds();
    }
    for t in timelines {
        if let Some(x) = t.lb_detection.as_ref().and_then(|d| d.t_s) {
            s.lb_detection_seconds.insert(t.instance.clone(), x);
        }
    }
    // Latest rollout per instance (timelines are by instance, then time).
    let mut latest: BTreeMap<&str, &Timeline> = BTreeMap::new();
    for t in timelines {
        latest.insert(&t.instance, t);
    }
    for t in latest.values() {
        for p in &t.phases {
            s.phases.push(PhaseGauge {
                instance: t.instance.clone(),
                phase: p.kind.label().to_string(),
                t_ns: p.t_ns,
                wall: p.wall.clone(),
                inferred: p.inferred,
            });
        }
    }
    s
}
