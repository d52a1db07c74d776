//! Finding resets that cluster at one idle duration: the signature of a
//! load balancer or NAT with an idle timeout (seed 002: Azure's LB resets
//! flows idle for about 4 minutes). Pure logic, fed with wire resets.

use std::{collections::VecDeque, fmt};

use serde::Serialize;

/// Resets after less silence than this are not idle-timeout resets.
const MIN_SILENCE_S: f64 = 1.0;
/// How many resets make a cluster worth reporting.
const MIN_CLUSTER: usize = 3;
/// How long a reset stays in the window.
const WINDOW_NS: u64 = 30 * 60 * 1_000_000_000;
const MAX_KEPT: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Seen {
    ts_ns: u64,
    silence: f64,
    middlebox: bool,
    keepalive: bool,
}

/// A cluster of resets at one idle duration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IdleCluster {
    pub resets: usize,
    /// Median silence before the resets, seconds.
    pub idle_seconds: f64,
    /// Largest distance from the median, seconds.
    pub spread_seconds: f64,
    /// "middlebox" when most resets were forged on the path, else "peer".
    pub origin: &'static str,
    /// The shortest silence in the cluster: the timeout is at most this.
    pub inferred_timeout_seconds: f64,
    pub without_keepalive: usize,
}

impl fmt::Display for IdleCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} resets after {:.0} +/- {:.0} s idle, from {}: inferred idle timeout {:.0} s; {} of these connections had no keepalive",
            self.resets,
            self.idle_seconds,
            self.spread_seconds
                .max(if self.idle_seconds < 10.0 { 0.0 } else { 1.0 }),
            if self.origin == "middlebox" {
                "a middlebox"
            } else {
                "the peer"
            },
            self.inferred_timeout_seconds,
            self.without_keepalive
        )
    }
}

/// Keeps recent idle resets and reports clusters as they form or grow.
#[derive(Default)]
pub struct IdleResets {
    seen: VecDeque<Seen>,
    /// Inferred timeouts already reported, with the cluster size then.
    reported: Vec<(f64, usize)>,
}

fn tolerance(x: f64) -> f64 {
    (0.05 * x).max(0.5)
}

impl IdleResets {
    /// Adds one reset; returns a cluster when one forms or grows.
    pub fn observe(
        &mut self,
        ts_ns: u64,
        silence: f64,
        middlebox: bool,
        keepalive: bool,
    ) -> Option<IdleCluster> {
        if silence < MIN_SILENCE_S || !silence.is_finite() {
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
            silence,
            middlebox,
            keepalive,
        });
        let tol = tolerance(silence);
        let mut members: Vec<Seen> = self
            .seen
            .iter()
            .copied()
            .filter(|s| (s.silence - silence).abs() <= tol)
            .collect();
        if members.len() < MIN_CLUSTER {
            return None;
        }
        members.sort_by(|a, b| a.silence.total_cmp(&b.silence));
        let median = members[members.len() / 2].silence;
        let spread = members
            .iter()
            .map(|s| (s.silence - median).abs())
            .fold(0.0, f64::max);
        let middle = members.iter().filter(|s| s.middlebox).count();
        let cluster = IdleCluster {
            resets: members.len(),
            idle_seconds: median,
            spread_seconds: spread,
            origin: if middle * 2 > members.len() {
                "middlebox"
            } else {
                "peer"
            },
            inferred_timeout_seconds: members[0].silence,
            without_keepalive: members.iter().filter(|s| !s.keepalive).count(),
        };
        // Report a cluster once per size, keyed by where it sits.
        let key = cluster.inferred_timeout_seconds;
        match self
            .reported
            .iter_mut()
            .find(|(t, _)| (t - key).abs() <= tolerance(key))
        {
            Some(entry) if entry.1 >= cluster.resets => None,
            Some(entry) => {
                *entry = (key, cluster.resets);
                Some(cluster)
            }
            None => {
                self.reported.push((key, cluster.resets));
                Some(cluster)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn azure_like_cluster_at_240s() {
        let mut d = IdleResets::default();
        let silences = [240.2, 240.9, 239.8, 241.0, 240.4, 240.1, 240.6];
        let mut last = None;
        for (i, s) in silences.iter().enumerate() {
            let keepalive = i >= 5;
            if let Some(c) = d.observe(i as u64 * 10 * S, *s, true, keepalive) {
                last = Some(c);
            }
        }
        let c = last.expect("cluster");
        assert_eq!(c.resets, 7);
        assert_eq!(c.origin, "middlebox");
        assert_eq!(c.without_keepalive, 5);
        assert!((c.inferred_timeout_seconds - 239.8).abs() < 1e-9);
        assert_eq!(
            c.to_string(),
            "7 resets after 240 +/- 1 s idle, from a middlebox: inferred idle timeout 240 s; 5 of these connections had no keepalive"
        );
    }

    #[test]
    fn scattered_and_short_resets_make_no_cluster() {
        let mut d = IdleResets::default();
        for (i, s) in [0.01, 0.2, 5.0, 60.0, 300.0, 0.5].iter().enumerate() {
            assert_eq!(d.observe(i as u64 * S, *s, true, false), None);
        }
    }

    #[test]
    fn reported_once_per_size_and_window_expires() {
        let mut d = IdleResets::default();
        assert!(d.observe(0, 3.1, true, false).is_none());
        assert!(d.observe(S, 3.2, true, false).is_none());
        assert_eq!(
            d.observe(2 * S, 3.3, true, false).map(|c| c.resets),
            Some(3)
        );
        // A fourth grows it; the same size again is not repeated.
        assert_eq!(
            d.observe(3 * S, 3.15, false, false).map(|c| c.resets),
            Some(4)
        );
        // Long after, the old ones are gone.
        assert!(d.observe(3 * S + WINDOW_NS + S, 3.2, true, false).is_none());
    }
}
