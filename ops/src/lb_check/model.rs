//! Health-check timing: how long a load balancer needs, in the worst case, to take a
//! backend out of service once its health endpoint turns red, and whether that fits in the
//! server's shutdown delay: the load balancer must take the backend out before the
//! listener closes (detection time < shutdown delay). Pure: no I/O.

use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;
use thiserror::Error;

use crate::duration::{diff_millis, format_duration};

/// A load balancer whose probe semantics are modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// AWS NLB target group (HTTPS /readyz, interval 10s, timeout 10s, unhealthy threshold 2).
    AwsNlb,
    /// GCP health check (check_interval_sec 5, timeout_sec 5, unhealthy_threshold 2).
    Gcp,
    /// Azure Load Balancer probe (interval 5s, 2 probes as cloud-provider-azure sets).
    Azure,
    /// HAProxy `check` (inter 2s, fall 3, no `timeout check`).
    Haproxy,
    /// No defaults: give --interval, --timeout and --unhealthy-threshold.
    Custom,
}

/// When the next probe starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduling {
    /// One probe starts every interval whatever the previous one is doing (AWS, GCP, Azure).
    Fixed,
    /// The next probe starts an interval after the previous one finished (HAProxy).
    AfterPrevious,
}

/// Effective health-check parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeParams {
    /// How probes are scheduled.
    pub scheduling: Scheduling,
    /// Probe interval (AWS interval, GCP check_interval_sec, HAProxy inter).
    #[serde(serialize_with = "ser_secs", rename = "interval_seconds")]
    pub interval: Duration,
    /// How long a probe waits for an answer before it counts as failed.
    #[serde(serialize_with = "ser_secs", rename = "timeout_seconds")]
    pub timeout: Duration,
    /// Consecutive failures before the backend is taken out of service.
    pub unhealthy_threshold: u32,
    /// Interval once a probe has failed (HAProxy `fastinter`); `None` means `interval`.
    #[serde(serialize_with = "ser_opt_secs", rename = "fast_interval_seconds")]
    pub fast_interval: Option<Duration>,
}

/// Values given on the command line; each overrides the preset's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--interval`.
    pub interval: Option<Duration>,
    /// `--timeout`.
    pub timeout: Option<Duration>,
    /// `--unhealthy-threshold`.
    pub unhealthy_threshold: Option<u32>,
    /// `--fast-interval`.
    pub fast_interval: Option<Duration>,
    /// `--scheduling`.
    pub scheduling: Option<Scheduling>,
}

/// Parameters that cannot be modelled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParamsError {
    /// More probes than any platform allows; also bounds the timeline's length.
    #[error("--unhealthy-threshold must be at most {MAX_THRESHOLD}")]
    ThresholdTooLarge,
    /// The custom preset has no defaults to fall back on.
    #[error("--preset custom needs {flag}")]
    Missing {
        /// The flag to give.
        flag: &'static str,
    },
    /// A zero interval or timeout would mean infinitely many probes.
    #[error("{flag} must be greater than 0")]
    Zero {
        /// The offending flag.
        flag: &'static str,
    },
}

/// Largest unhealthy threshold accepted (AWS and GCP allow 10; HAProxy's fall is rarely
/// above a handful).
pub const MAX_THRESHOLD: u32 = 100;

/// Azure HTTP probes give up after the interval, but never wait more than 30s.
const AZURE_MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

impl Preset {
    /// Human name of the platform.
    pub fn platform(self) -> &'static str {
        match self {
            Preset::AwsNlb => "AWS Network Load Balancer",
            Preset::Gcp => "GCP load balancer health check",
            Preset::Azure => "Azure Load Balancer",
            Preset::Haproxy => "HAProxy",
            Preset::Custom => "custom",
        }
    }

    /// Resolves the effective parameters: overrides first, then the preset's defaults.
    pub fn resolve(self, o: &Overrides) -> Result<ProbeParams, ParamsError> {
        let secs = Duration::from_secs;
        let (scheduling, interval, threshold) = match self {
            Preset::AwsNlb => (Scheduling::Fixed, secs(10), 2),
            Preset::Gcp => (Scheduling::Fixed, secs(5), 2),
            Preset::Azure => (Scheduling::Fixed, secs(5), 2),
            Preset::Haproxy => (Scheduling::AfterPrevious, secs(2), 3),
            Preset::Custom => {
                let interval = o
                    .interval
                    .ok_or(ParamsError::Missing { flag: "--interval" })?;
                o.timeout
                    .ok_or(ParamsError::Missing { flag: "--timeout" })?;
                let threshold = o.unhealthy_threshold.ok_or(ParamsError::Missing {
                    flag: "--unhealthy-threshold",
                })?;
                (Scheduling::Fixed, interval, threshold)
            }
        };
        let interval = o.interval.unwrap_or(interval);
        // Some platforms derive the timeout from the (possibly overridden) interval.
        let default_timeout = match self {
            Preset::AwsNlb => secs(10),
            Preset::Gcp => secs(5),
            Preset::Azure => interval.min(AZURE_MAX_PROBE_TIMEOUT),
            // Without `timeout check`, HAProxy bounds the whole check by `inter`.
            Preset::Haproxy | Preset::Custom => interval,
        };
        let params = ProbeParams {
            scheduling: o.scheduling.unwrap_or(scheduling),
            interval,
            timeout: o.timeout.unwrap_or(default_timeout),
            unhealthy_threshold: o.unhealthy_threshold.unwrap_or(threshold),
            fast_interval: o.fast_interval,
        };
        if params.interval.is_zero() {
            return Err(ParamsError::Zero { flag: "--interval" });
        }
        if params.timeout.is_zero() {
            return Err(ParamsError::Zero { flag: "--timeout" });
        }
        if params.fast_interval.is_some_and(|d| d.is_zero()) {
            return Err(ParamsError::Zero {
                flag: "--fast-interval",
            });
        }
        if params.unhealthy_threshold == 0 {
            return Err(ParamsError::Zero {
                flag: "--unhealthy-threshold",
            });
        }
        if params.unhealthy_threshold > MAX_THRESHOLD {
            return Err(ParamsError::ThresholdTooLarge);
        }
        Ok(params)
    }

    /// How this platform schedules probes, in one or two sentences for the report.
    pub fn semantics(self, p: &ProbeParams) -> String {
        let formula = worst_case_formula(p);
        let how = match p.scheduling {
            Scheduling::Fixed => {
                "each probe is independent and lasts up to its timeout; the next one starts \
                 on schedule every interval, however long the previous one takes"
            }
            Scheduling::AfterPrevious => {
                "a check starts only an interval after the previous one finished (fastinter \
                 once a check has failed), so a check that hangs until its timeout also \
                 delays the next one"
            }
        };
        match self {
            Preset::Haproxy => format!(
                "HAProxy: {how}. Unlike AWS, the timeouts add up: worst case = {formula}. \
                 The timeout is `timeout check` when set, else `inter` bounds the whole check \
                 (the connect phase is quick: the server still accepts connections until it \
                 stops listening)."
            ),
            Preset::Azure => format!(
                "Azure: {how}; an HTTP(S) probe fails when the endpoint does not answer \
                 within min(interval, 30s). Worst case = {formula}."
            ),
            _ => format!("{}: {how}. Worst case = {formula}.", self.platform()),
        }
    }

    /// Platform behaviour that no health-check setting fixes, stated up front.
    pub fn warnings(self) -> Vec<String> {
        match self {
            Preset::Gcp => vec![
                "GCP internal passthrough Network Load Balancer: traffic that a backend VM sends \
                 to the load balancer's address is always delivered to that same VM, and health \
                 checks are ignored for it (a hairpin). Clients on the node itself \
                 (kubelet, controllers) keep reaching the local server after /readyz turns red \
                 and get `connection refused` once it stops listening, whatever this check says."
                    .to_string(),
            ],
            _ => Vec::new(),
        }
    }
}

/// The worst case in words, e.g. `unhealthy threshold x interval + timeout`.
pub fn worst_case_formula(p: &ProbeParams) -> String {
    match p.scheduling {
        Scheduling::Fixed => "unhealthy threshold x interval + timeout".to_string(),
        Scheduling::AfterPrevious => {
            "interval + threshold x timeout + (threshold - 1) x fast interval".to_string()
        }
    }
}

/// One probe after /readyz turned red, in the worst case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeRun {
    /// `P2`, `P3`, ... (`P1` is the last probe that passed).
    pub name: String,
    /// When it starts, from the instant /readyz turns red (SIGTERM).
    #[serde(serialize_with = "ser_secs", rename = "start_seconds")]
    pub start: Duration,
    /// When it times out.
    #[serde(serialize_with = "ser_secs", rename = "end_seconds")]
    pub end: Duration,
}

/// The worst case: P1 passes just before /readyz turns red, and each later probe times
/// out, so the backend is out of service when the last one needed gives up.
pub fn worst_case(p: &ProbeParams) -> (Duration, Vec<ProbeRun>) {
    let mut runs = Vec::new();
    // P1 ends at T+0 in both models: for fixed scheduling it gets 200 at the very instant
    // /readyz turns red (the worst phase); for after-previous scheduling its answer
    // arrives just before, which is what starts the wait for the next check.
    let mut prev_start = Duration::ZERO;
    let mut prev_end = Duration::ZERO;
    for k in 0..p.unhealthy_threshold {
        let start = match p.scheduling {
            Scheduling::Fixed => prev_start.saturating_add(p.interval),
            Scheduling::AfterPrevious if k == 0 => prev_end.saturating_add(p.interval),
            Scheduling::AfterPrevious => {
                prev_end.saturating_add(p.fast_interval.unwrap_or(p.interval))
            }
        };
        let end = start.saturating_add(p.timeout);
        runs.push(ProbeRun {
            name: format!("P{}", k + 2),
            start,
            end,
        });
        prev_start = start;
        prev_end = end;
    }
    (prev_end, runs)
}

/// What the server does after SIGTERM, and the pod's grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownTimes {
    /// How long the server keeps listening after /readyz turns red.
    pub shutdown_delay: Duration,
    /// How long in-flight requests may run after the listener closed.
    pub request_timeout: Duration,
    /// terminationGracePeriodSeconds, when known.
    pub grace: Option<Duration>,
}

/// One line of the worst-case timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEvent {
    /// `E1`, `E2`, ... in chronological order.
    pub id: String,
    /// Time since SIGTERM.
    #[serde(serialize_with = "ser_secs", rename = "at_seconds")]
    pub at: Duration,
    /// What happens.
    pub what: String,
}

/// The result of comparing one duration with a limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Whether the rule holds.
    pub pass: bool,
    /// Limit minus measured value, in milliseconds (negative when it fails).
    pub margin_ms: i128,
}

/// Full assessment of one health-check configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// Parameters used.
    pub params: ProbeParams,
    /// The server's shutdown timing it was compared with.
    pub times: ShutdownTimes,
    /// Worst-case time from /readyz turning red until the LB stops sending new connections.
    pub detection: Duration,
    /// The probes after P1.
    pub probes: Vec<ProbeRun>,
    /// Detection before the listener closes: detection time < shutdown delay.
    pub detection_check: Comparison,
    /// `grace >= shutdown-delay + request timeout`, when the grace is known.
    pub grace_check: Option<Comparison>,
    /// Chronological timeline.
    pub timeline: Vec<TimelineEvent>,
}

impl Assessment {
    /// When the process is gone at the latest: shutdown delay + request timeout.
    pub fn drain_end(&self) -> Duration {
        self.times
            .shutdown_delay
            .saturating_add(self.times.request_timeout)
    }

    /// True when every rule that could be checked holds.
    pub fn pass(&self) -> bool {
        self.detection_check.pass && self.grace_check.as_ref().is_none_or(|g| g.pass)
    }
}

/// Applies the detection rule and the grace-period rule.
///
/// The detection rule is strict (detection time < shutdown delay): when they are equal
/// the LB removes the backend at the very instant the listener closes, and the LB's own
/// propagation of that verdict to its data plane (never zero, not modelled here) lands
/// after it, so connections routed in between are refused. AWS's 30s worst case against a
/// 30s delay therefore fails with margin 0: it needs a shorter check or a longer delay
/// (70s passes).
pub fn assess(params: ProbeParams, times: &ShutdownTimes) -> Assessment {
    let (detection, probes) = worst_case(&params);
    let detection_margin = diff_millis(times.shutdown_delay, detection);
    let detection_check = Comparison {
        pass: detection_margin > 0,
        margin_ms: detection_margin,
    };
    let drain_end = times.shutdown_delay.saturating_add(times.request_timeout);
    let grace_check = times.grace.map(|g| {
        let margin = diff_millis(g, drain_end);
        Comparison {
            pass: margin >= 0,
            margin_ms: margin,
        }
    });
    let timeline = timeline(&params, &probes, detection, times);
    Assessment {
        params,
        times: times.clone(),
        detection,
        probes,
        detection_check,
        grace_check,
        timeline,
    }
}

fn timeline(
    p: &ProbeParams,
    probes: &[ProbeRun],
    detection: Duration,
    times: &ShutdownTimes,
) -> Vec<TimelineEvent> {
    // (time, rank, text): rank orders events that share a time so that the sequence reads
    // naturally (a probe times out before the next one kicks off), and the listener
    // closing is listed before an LB removal at the same instant, since that tie fails.
    let drain_end = times.shutdown_delay.saturating_add(times.request_timeout);
    let mut ev: Vec<(Duration, u8, String)> = Vec::new();
    let p1 = match p.scheduling {
        Scheduling::Fixed => "P1 kicks off and immediately gets 200 from /readyz",
        Scheduling::AfterPrevious => "P1 gets 200 from /readyz and finishes",
    };
    ev.push((Duration::ZERO, 0, p1.to_string()));
    ev.push((
        Duration::ZERO,
        1,
        "SIGTERM: /readyz starts reporting failure, immediately after P1; the server keeps \
         accepting requests"
            .to_string(),
    ));
    let mut prev: Option<&ProbeRun> = None;
    for run in probes {
        let why = match (p.scheduling, prev) {
            (Scheduling::Fixed, None) => format!("one interval ({}) after P1", fmt(p.interval)),
            (Scheduling::Fixed, Some(_)) => format!(
                "each probe is independent and starts every {}",
                fmt(p.interval)
            ),
            (Scheduling::AfterPrevious, None) => {
                format!("inter ({}) after P1 finished", fmt(p.interval))
            }
            (Scheduling::AfterPrevious, Some(prev)) => format!(
                "{} after {} gave up",
                fmt(p.fast_interval.unwrap_or(p.interval)),
                prev.name
            ),
        };
        ev.push((run.start, 3, format!("{} kicks off, {why}", run.name)));
        ev.push((
            run.end,
            2,
            format!(
                "{} times out after {} (worst case)",
                run.name,
                fmt(p.timeout)
            ),
        ));
        prev = Some(run);
    }
    ev.push((
        times.shutdown_delay,
        4,
        format!(
            "server stops listening (shutdown-delay {}): new connections are refused",
            fmt(times.shutdown_delay)
        ),
    ));
    ev.push((
        detection,
        5,
        format!(
            "unhealthy threshold ({}) is met: the LB takes the backend out of service",
            p.unhealthy_threshold
        ),
    ));
    ev.push((
        drain_end,
        6,
        format!(
            "request timeout ({}) after the listener closed: requests still in flight are \
             cut and the process exits",
            fmt(times.request_timeout)
        ),
    ));
    if let Some(grace) = times.grace {
        ev.push((
            grace,
            7,
            format!(
                "termination grace period ({}) ends: kubelet sends SIGKILL",
                fmt(grace)
            ),
        ));
    }
    ev.sort_by_key(|(at, rank, _)| (*at, *rank));
    ev.into_iter()
        .enumerate()
        .map(|(i, (at, _, what))| TimelineEvent {
            id: format!("E{}", i + 1),
            at,
            what,
        })
        .collect()
}

fn fmt(d: Duration) -> String {
    format_duration(d)
}

/// A duration as seconds (JSON reports give `*_seconds` numbers).
pub(crate) fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ser_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn times(delay: u64) -> ShutdownTimes {
        ShutdownTimes {
            shutdown_delay: secs(delay),
            request_timeout: secs(60),
            grace: None,
        }
    }

    fn aws() -> ProbeParams {
        Preset::AwsNlb.resolve(&Overrides::default()).unwrap()
    }

    #[test]
    fn aws_worst_case_is_30s_with_p1_p2_p3() {
        let (t, runs) = worst_case(&aws());
        assert_eq!(t, secs(30));
        let got: Vec<_> = runs
            .iter()
            .map(|r| (r.name.as_str(), r.start.as_secs(), r.end.as_secs()))
            .collect();
        assert_eq!(got, vec![("P2", 10, 20), ("P3", 20, 30)]);
    }

    #[test]
    fn aws_fails_20s_and_equal_30s_passes_70s() {
        let a = assess(aws(), &times(20));
        assert!(!a.pass());
        assert_eq!(a.detection_check.margin_ms, -10_000);
        // Strict rule: equality is a failure with margin 0 (see `assess`).
        let a = assess(aws(), &times(30));
        assert!(!a.detection_check.pass);
        assert_eq!(a.detection_check.margin_ms, 0);
        let a = assess(aws(), &times(70));
        assert!(a.pass());
        assert_eq!(a.detection_check.margin_ms, 40_000);
    }

    #[test]
    fn timeline_orders_probes_listener_and_removal() {
        let a = assess(aws(), &times(30));
        let lines: Vec<_> = a
            .timeline
            .iter()
            .map(|e| format!("{} {} {}", e.id, e.at.as_secs(), e.what))
            .collect();
        let starts = |i: usize, prefix: &str| {
            assert!(lines[i].starts_with(prefix), "{i}: {}", lines[i]);
        };
        starts(0, "E1 0 P1 kicks off");
        starts(1, "E2 0 SIGTERM");
        starts(2, "E3 10 P2 kicks off");
        starts(3, "E4 20 P2 times out");
        starts(4, "E5 20 P3 kicks off");
        starts(5, "E6 30 P3 times out");
        starts(6, "E7 30 server stops listening");
        starts(7, "E8 30 unhealthy threshold (2)");
        starts(8, "E9 90 request timeout");
    }

    #[test]
    fn haproxy_timeouts_add_up() {
        // inter 2s, fall 3, no timeout check: 2 + 3*2 + 2*2 = 12s.
        let p = Preset::Haproxy.resolve(&Overrides::default()).unwrap();
        assert_eq!(worst_case(&p).0, secs(12));
        // Same numbers as the aws-nlb preset, but sequential: 10 + 2*10 + 10 = 40s,
        // where AWS needs 30s.
        let o = Overrides {
            interval: Some(secs(10)),
            timeout: Some(secs(10)),
            unhealthy_threshold: Some(2),
            ..Overrides::default()
        };
        let p = Preset::Haproxy.resolve(&o).unwrap();
        assert_eq!(worst_case(&p).0, secs(40));
        // fastinter shortens the gaps after the first failure: 10 + 10 + 1 + 10 = 31s.
        let o = Overrides {
            fast_interval: Some(secs(1)),
            ..o
        };
        let p = Preset::Haproxy.resolve(&o).unwrap();
        assert_eq!(worst_case(&p).0, secs(31));
    }

    #[test]
    fn haproxy_timeout_follows_overridden_inter() {
        let o = Overrides {
            interval: Some(secs(5)),
            ..Overrides::default()
        };
        assert_eq!(Preset::Haproxy.resolve(&o).unwrap().timeout, secs(5));
    }

    #[test]
    fn gcp_and_azure_defaults() {
        let gcp = Preset::Gcp.resolve(&Overrides::default()).unwrap();
        assert_eq!(worst_case(&gcp).0, secs(15));
        assert!(!Preset::Gcp.warnings().is_empty());
        let az = Preset::Azure.resolve(&Overrides::default()).unwrap();
        assert_eq!(worst_case(&az).0, secs(15));
        let o = Overrides {
            interval: Some(secs(60)),
            ..Overrides::default()
        };
        // Azure caps the probe timeout at 30s: 2*60 + 30.
        let az = Preset::Azure.resolve(&o).unwrap();
        assert_eq!(az.timeout, secs(30));
        assert_eq!(worst_case(&az).0, secs(150));
    }

    #[test]
    fn custom_requires_its_parameters() {
        let e = Preset::Custom.resolve(&Overrides::default()).unwrap_err();
        assert_eq!(e.to_string(), "--preset custom needs --interval");
        let o = Overrides {
            interval: Some(secs(3)),
            timeout: Some(secs(1)),
            unhealthy_threshold: Some(4),
            ..Overrides::default()
        };
        let p = Preset::Custom.resolve(&o).unwrap();
        assert_eq!(worst_case(&p).0, secs(13));
        let zero = Overrides {
            timeout: Some(Duration::ZERO),
            ..o
        };
        assert_eq!(
            Preset::Custom.resolve(&zero).unwrap_err(),
            ParamsError::Zero { flag: "--timeout" }
        );
    }

    #[test]
    fn absurd_values_saturate_instead_of_panicking() {
        let o = Overrides {
            interval: Some(Duration::MAX),
            unhealthy_threshold: Some(MAX_THRESHOLD),
            ..Overrides::default()
        };
        let p = Preset::Haproxy.resolve(&o).unwrap();
        let a = assess(p, &times(30));
        assert_eq!(a.detection, Duration::MAX);
        assert!(!a.pass());
        let o = Overrides {
            unhealthy_threshold: Some(MAX_THRESHOLD + 1),
            ..Overrides::default()
        };
        assert_eq!(
            Preset::AwsNlb.resolve(&o).unwrap_err(),
            ParamsError::ThresholdTooLarge
        );
    }

    #[test]
    fn grace_covers_delay_plus_request_timeout() {
        // A kube-apiserver static pod: 135 >= 70 + 60.
        let t = ShutdownTimes {
            shutdown_delay: secs(70),
            request_timeout: secs(60),
            grace: Some(secs(135)),
        };
        let a = assess(aws(), &t);
        assert_eq!(
            a.grace_check,
            Some(Comparison {
                pass: true,
                margin_ms: 5_000
            })
        );
        assert!(a.pass());
        let t = ShutdownTimes {
            grace: Some(secs(120)),
            ..t
        };
        let a = assess(aws(), &t);
        assert!(!a.pass());
        assert_eq!(a.timeline.last().unwrap().at, secs(130));
    }
}
