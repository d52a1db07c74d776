//! The one rule that infers an idle timeout from resets: used by the
//! engine's `idle_reset_by_middlebox` verdict and by the daemon's live
//! finding ([`IdleResets`]), so the two can never disagree.
//!
//! A middlebox (or a proxying LB) that forgets an idle flow resets the first
//! packet after the silence, or resets on its own at the timeout. A reset
//! sent at the timeout (answering nothing) measures it: the timeout is the
//! shortest such silence. A reset that answered this host's packet ends the
//! silence before that packet, which may be long after the timeout fired:
//! such silences only bound the timeout from above, and are used only when
//! there is nothing else. The cluster is the silences within 10 % (plus a
//! tolerance) of the shortest.
//!
//! Blind spots: a flow that was idle longer than the timeout but sent
//! nothing afterwards is never reset on the wire and is not counted; a
//! middlebox that drops instead of resetting leaves no reset at all; two
//! middleboxes with different timeouts on one path look like one, at the
//! shorter.

use std::{collections::VecDeque, fmt};

/// An RST that arrives within this long of the host's own last packet
/// answers that packet (a middlebox that forgot the flow); one that comes
/// later was sent on its own, at a timer (an LB resetting both ends at its
/// idle timeout). A round trip to any LB is far below it, and idle
/// timeouts are seconds at least. Blind spot: a reset answering a packet
/// over a path slower than this is taken for a timer's.
pub const ANSWER_WINDOW_NS: u64 = 1_000_000_000;

use serde::Serialize;

use crate::model::Keepalive;

/// One reset that ended a silence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdleSample {
    /// Seconds of silence the reset ended.
    pub silence_s: f64,
    /// The reset answered a packet of this host (so the silence is the gap
    /// before that packet, and only bounds the timeout).
    pub answered: bool,
    /// What the flow's keepalive was.
    pub keepalive: Keepalive,
}

/// What a set of resets says about the idle timeout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleInference {
    /// The shortest silence a reset ended (among the resets sent at the
    /// timeout when there are any): the timeout is at most this.
    pub timeout_s: f64,
    /// True when `timeout_s` comes from resets sent at the timeout (it is
    /// the timeout, within the clock's resolution); false when only
    /// answering resets were seen (it is an upper bound).
    pub measured: bool,
    /// The longest silence in the cluster (within 10 % of `timeout_s`).
    pub cluster_max_s: f64,
    /// Resets in the cluster.
    pub resets: usize,
    /// Resets on flows without keepalive.
    pub without_keepalive: u64,
    /// Resets on flows with keepalive seen or configured.
    pub with_keepalive: u64,
    /// The slowest keepalive interval not below the timeout, if any: such
    /// clients have keepalive, but too slow to keep the flow alive.
    pub slow_keepalive_s: Option<f64>,
}

impl IdleInference {
    /// "about 240 s" or "at most 12 s".
    pub fn timeout_words(&self) -> String {
        if self.measured {
            format!("about {:.0} s", self.timeout_s)
        } else {
            format!("at most {:.0} s", self.timeout_s)
        }
    }

    /// The silences, as "3.1 s" or "3.1-3.4 s".
    pub fn range_words(&self) -> String {
        if self.cluster_max_s > self.timeout_s + 0.05 {
            format!("{:.1}-{:.1} s", self.timeout_s, self.cluster_max_s)
        } else {
            format!("{:.1} s", self.timeout_s)
        }
    }
}

/// Infers the idle timeout from `samples` (see the module docs); `None`
/// when no sample has a usable silence. `tolerance_s` widens the cluster.
pub fn infer(samples: &[IdleSample], tolerance_s: f64) -> Option<IdleInference> {
    let usable = |s: &&IdleSample| s.silence_s.is_finite() && s.silence_s >= 0.0;
    let measured = samples.iter().filter(usable).any(|s| !s.answered);
    let min = samples
        .iter()
        .filter(usable)
        .filter(|s| s.answered != measured)
        .map(|s| s.silence_s)
        .fold(f64::INFINITY, f64::min);
    if !min.is_finite() {
        return None;
    }
    let limit = min * 1.1 + tolerance_s;
    let cluster: Vec<&IdleSample> = samples
        .iter()
        .filter(usable)
        .filter(|s| s.silence_s <= limit)
        .collect();
    let cluster_max = cluster.iter().map(|s| s.silence_s).fold(min, f64::max);
    Some(IdleInference {
        timeout_s: min,
        measured,
        cluster_max_s: cluster_max,
        resets: cluster.len(),
        without_keepalive: samples
            .iter()
            .filter(|s| s.keepalive == Keepalive::None)
            .count() as u64,
        with_keepalive: samples
            .iter()
            .filter(|s| matches!(s.keepalive, Keepalive::Seen | Keepalive::Interval(_)))
            .count() as u64,
        slow_keepalive_s: samples
            .iter()
            .filter_map(|s| match s.keepalive {
                Keepalive::Interval(k) if k >= min => Some(k),
                _ => None,
            })
            .fold(None, |a: Option<f64>, k| Some(a.map_or(k, |a| a.max(k)))),
    })
}

/// Resets after less silence than this are not idle-timeout resets.
pub const MIN_SILENCE_S: f64 = 1.0;
/// How many resets make a live finding worth reporting.
pub const MIN_CLUSTER: usize = 3;
/// How long a reset stays in the live window.
const WINDOW_NS: u64 = 30 * 60 * 1_000_000_000;
/// The most resets the live window keeps.
const MAX_KEPT: usize = 1024;

/// A live finding: resets that cluster at one silence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleCluster {
    /// "middlebox" when most resets were forged on the path, else "peer".
    pub origin: &'static str,
    /// The inference, by [`infer`].
    #[serde(flatten)]
    pub inference: IdleInference,
}

impl fmt::Display for IdleCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inference;
        write!(
            f,
            "{} resets after {} of silence, from {}: its idle timeout is {}; {} of these connections had no keepalive",
            i.resets,
            i.range_words(),
            if self.origin == "middlebox" {
                "a middlebox"
            } else {
                "the peer"
            },
            i.timeout_words(),
            i.without_keepalive
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    ts_ns: u64,
    sample: IdleSample,
    middlebox: bool,
}

/// Keeps recent idle resets (30 minutes, at most 1024) and reports a
/// cluster, by [`infer`] over the resets from the same kind of origin, when
/// it forms or grows.
#[derive(Debug, Default)]
pub struct IdleResets {
    seen: VecDeque<Seen>,
    /// (origin, timeout, size) of clusters already reported.
    reported: Vec<(bool, f64, usize)>,
}

impl IdleResets {
    /// Adds one reset (boot-clock `ts_ns`; `middlebox` when forged on the
    /// path); returns the cluster when this reset makes one form or grow.
    pub fn observe(
        &mut self,
        ts_ns: u64,
        sample: IdleSample,
        middlebox: bool,
        tolerance_s: f64,
    ) -> Option<IdleCluster> {
        if sample.silence_s < MIN_SILENCE_S || !sample.silence_s.is_finite() {
            return None;
        }
        while self
            .seen
            .front()
            .is_some_and(|s| ts_ns.saturating_sub(s.ts_ns) > WINDOW_NS)
            || self.seen.len() >= MAX_KEPT
        {
            self.seen.pop_front();
        }
        self.seen.push_back(Seen {
            ts_ns,
            sample,
            middlebox,
        });
        let same: Vec<IdleSample> = self
            .seen
            .iter()
            .filter(|s| s.middlebox == middlebox)
            .map(|s| s.sample)
            .collect();
        let inference = infer(&same, tolerance_s)?;
        if inference.resets < MIN_CLUSTER || sample.silence_s > inference.cluster_max_s {
            // Too few, or this reset is not part of the cluster.
            return None;
        }
        let key = inference.timeout_s;
        let near = |t: f64| (t - key).abs() <= (0.05 * key).max(0.5);
        match self
            .reported
            .iter_mut()
            .find(|(m, t, _)| *m == middlebox && near(*t))
        {
            Some(entry) if entry.2 >= inference.resets => return None,
            Some(entry) => *entry = (middlebox, key, inference.resets),
            None => self.reported.push((middlebox, key, inference.resets)),
        }
        Some(IdleCluster {
            origin: if middlebox { "middlebox" } else { "peer" },
            inference,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn at(silence_s: f64, answered: bool, keepalive: Keepalive) -> IdleSample {
        IdleSample {
            silence_s,
            answered,
            keepalive,
        }
    }

    #[test]
    fn resets_at_the_timeout_measure_it() {
        let s = [
            at(240.2, false, Keepalive::None),
            at(239.8, false, Keepalive::None),
            at(241.0, false, Keepalive::Interval(300.0)),
            at(600.0, true, Keepalive::None),
        ];
        let i = infer(&s, 1.0).expect("inference");
        assert!(i.measured);
        assert_eq!((i.timeout_s, i.cluster_max_s, i.resets), (239.8, 241.0, 3));
        assert_eq!((i.without_keepalive, i.with_keepalive), (3, 1));
        assert_eq!(i.slow_keepalive_s, Some(300.0));
        assert_eq!(i.timeout_words(), "about 240 s");
    }

    /// One reset that answered a packet sent 12 s after the last one: the
    /// timeout is at most 12 s, not "about 12 s".
    #[test]
    fn answering_resets_only_bound_the_timeout() {
        let i = infer(&[at(12.0, true, Keepalive::None)], 1.0).expect("inference");
        assert!(!i.measured);
        assert_eq!(i.timeout_words(), "at most 12 s");
        assert_eq!(infer(&[at(f64::NAN, false, Keepalive::None)], 1.0), None);
    }

    /// The finding's numbers are the inference's: the range is the
    /// cluster's silences and the timeout is its shortest, never a median
    /// that reads higher than the timeout it states.
    #[test]
    fn live_cluster_reports_what_infer_says() {
        let mut d = IdleResets::default();
        let mut last = None;
        for (i, s) in [8.4, 7.9, 8.2].iter().enumerate() {
            if let Some(c) = d.observe(i as u64 * S, at(*s, false, Keepalive::None), true, 0.5) {
                last = Some(c);
            }
        }
        let c = last.expect("cluster");
        assert_eq!(
            c.to_string(),
            "3 resets after 7.9-8.4 s of silence, from a middlebox: its idle timeout is about 8 s; 3 of these connections had no keepalive"
        );
        assert_eq!(
            Some(c.inference),
            infer(
                &[
                    at(8.4, false, Keepalive::None),
                    at(7.9, false, Keepalive::None),
                    at(8.2, false, Keepalive::None)
                ],
                0.5
            )
        );
    }

    #[test]
    fn scattered_and_short_resets_make_no_cluster() {
        let mut d = IdleResets::default();
        for (i, s) in [0.01, 0.2, 5.0, 60.0, 300.0, 0.5].iter().enumerate() {
            assert_eq!(
                d.observe(i as u64 * S, at(*s, false, Keepalive::None), true, 0.5),
                None
            );
        }
    }

    #[test]
    fn reported_once_per_size_and_window_expires() {
        let mut d = IdleResets::default();
        let r = |s: f64| at(s, false, Keepalive::None);
        assert!(d.observe(0, r(3.1), true, 0.5).is_none());
        assert!(d.observe(S, r(3.2), true, 0.5).is_none());
        assert_eq!(
            d.observe(2 * S, r(3.3), true, 0.5)
                .map(|c| c.inference.resets),
            Some(3)
        );
        assert_eq!(
            d.observe(3 * S, r(3.15), true, 0.5)
                .map(|c| c.inference.resets),
            Some(4)
        );
        // Resets of the other origin are a cluster of their own.
        assert!(d.observe(3 * S, r(3.15), false, 0.5).is_none());
        // Long after, the old ones are gone.
        assert!(
            d.observe(3 * S + WINDOW_NS + S, r(3.2), true, 0.5)
                .is_none()
        );
    }
}
