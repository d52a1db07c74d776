//! Who takes a terminating pod out of rotation, and how long that takes: the consumer model
//! behind the drain-window rule. Pure: no I/O.
//!
//! - `service`: clients reach the pod through a Service (kube-proxy with iptables, IPVS or
//!   nftables, ingress controllers, service meshes). These follow the EndpointSlice, whose
//!   endpoint is marked `ready: false, terminating: true` as soon as the pod is deleted, in
//!   parallel with the preStop hook (Kubernetes docs: "Pod Lifecycle", termination of Pods;
//!   "EndpointSlices", conditions). The pod's readiness probe plays no part: only the time
//!   these consumers need to apply the change counts.
//! - `lb-health-check`: a load balancer that health-checks the backend itself (a cloud LB
//!   with `externalTrafficPolicy: Local` checking the nodes, AWS NLB IP targets, HAProxy or
//!   F5 in front of kube-apiserver static pods). It stops routing only once its own check
//!   has failed often enough: its worst-case detection time (lb-check's model) comes first.
//!
//! The model of an object is its `drainwatch.io/consumer` annotation, else `audit
//! --consumer`, else `service`.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::duration::{format_duration, parse_duration};
use crate::lb_check::model::{
    MAX_THRESHOLD, Overrides, ParamsError, Preset, ProbeParams, Scheduling, ser_secs, worst_case,
    worst_case_formula,
};
use crate::lb_check::params_line;

use super::rules::RuleError;

/// Annotation choosing the consumer model of one object: `service` or `lb-health-check`.
pub const CONSUMER_ANNOTATION: &str = "drainwatch.io/consumer";
/// Annotation giving the health check of the load balancer in front of one object:
/// comma-separated `key=value` pairs, keys `preset` (as `lb-check --preset`), `interval`,
/// `timeout`, `unhealthy`, `fast-interval` and `scheduling`, e.g.
/// `interval=10s,timeout=5s,unhealthy=2` or `preset=aws-nlb`. Implies `lb-health-check`.
pub const LB_HEALTH_CHECK_ANNOTATION: &str = "drainwatch.io/lb-health-check";

/// Who takes a terminating pod out of rotation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsumerKind {
    /// Service consumers (kube-proxy, ingress controllers, meshes) follow the EndpointSlice,
    /// which marks the endpoint terminating at pod deletion: only their propagation time
    /// counts.
    #[default]
    Service,
    /// A load balancer that health-checks the backend itself: its worst-case detection
    /// time, then its propagation.
    LbHealthCheck,
}

impl ConsumerKind {
    fn name(self) -> &'static str {
        match self {
            ConsumerKind::Service => "service",
            ConsumerKind::LbHealthCheck => "lb-health-check",
        }
    }
}

/// A load balancer's health check: the preset whose probe semantics apply and the
/// resolved parameters (lb-check's model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LbHealthCheck {
    /// The preset (`custom` when only parameters were given).
    pub preset: Preset,
    /// Effective parameters.
    pub params: ProbeParams,
}

impl LbHealthCheck {
    /// Resolves a preset and overrides as lb-check does; `key` renames lb-check's flag names
    /// in errors to the caller's (audit's flags, or the annotation's keys).
    pub fn resolve(
        preset: Option<Preset>,
        overrides: &Overrides,
        key: fn(&str) -> String,
    ) -> Result<Self, String> {
        let preset = preset.unwrap_or(Preset::Custom);
        let params = preset.resolve(overrides).map_err(|e| match e {
            ParamsError::ThresholdTooLarge => format!(
                "{} must be at most {MAX_THRESHOLD}",
                key("--unhealthy-threshold")
            ),
            ParamsError::Missing { flag } => format!(
                "{}, {} and {} are all needed unless a preset gives defaults ({} is missing)",
                key("--interval"),
                key("--timeout"),
                key("--unhealthy-threshold"),
                key(flag)
            ),
            ParamsError::Zero { flag } => format!("{} must be greater than 0", key(flag)),
        })?;
        Ok(LbHealthCheck { preset, params })
    }

    /// Worst-case time from the backend's health turning red until the load balancer stops
    /// sending it new connections (lb-check's math).
    pub fn detection(&self) -> Duration {
        worst_case(&self.params).0
    }

    fn describe(&self) -> String {
        let name = match self.preset {
            Preset::Custom => String::new(),
            p => format!("{} ", p.platform()),
        };
        format!("{name}{}", params_line(&self.params))
    }
}

/// The consumer model applied to one object, with its numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsumerModel {
    /// The model.
    pub model: ConsumerKind,
    /// Where it came from: the annotation, `--consumer`, or the default.
    pub source: &'static str,
    /// The load balancer's health check (lb-health-check only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lb_health_check: Option<LbHealthCheck>,
    /// Where the health check came from (lb-health-check only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lb_health_check_source: Option<&'static str>,
    /// Worst-case detection by the load balancer (0 for service).
    #[serde(serialize_with = "ser_secs", rename = "detection_seconds")]
    pub detection: Duration,
    /// Time consumers need to apply the change (`--propagation-budget`).
    #[serde(serialize_with = "ser_secs", rename = "propagation_budget_seconds")]
    pub propagation: Duration,
    /// How long after deletion a serving container must keep accepting connections.
    #[serde(serialize_with = "ser_secs", rename = "required_serving_seconds")]
    pub required: Duration,
}

/// Source of a model given by neither annotation nor flag.
pub const DEFAULT_SOURCE: &str = "default: --consumer not given";
const FLAG_SOURCE: &str = "--consumer";
const LB_FLAGS_SOURCE: &str = "--lb-preset/--lb-interval/--lb-timeout/--lb-unhealthy-threshold";

impl ConsumerModel {
    /// `service` or `lb-health-check`.
    pub fn model_name(&self) -> &'static str {
        self.model.name()
    }

    /// One phrase naming the model, where it came from and its numbers, for findings.
    pub fn describe(&self) -> String {
        let src = |s: &str| {
            if s.starts_with("drainwatch.io/") {
                format!("annotation {s}")
            } else {
                s.to_string()
            }
        };
        match &self.lb_health_check {
            Some(lb) => format!(
                "consumer model lb-health-check ({}; health check {} from {})",
                src(self.source),
                lb.describe(),
                src(self.lb_health_check_source.unwrap_or(LB_FLAGS_SOURCE))
            ),
            None => format!(
                "consumer model {} ({})",
                self.model.name(),
                src(self.source)
            ),
        }
    }

    /// Why the container must keep serving for `required`, in the operator's words.
    pub fn explain(&self) -> String {
        match &self.lb_health_check {
            Some(lb) => format!(
                "{}: the load balancer health-checks the backend itself, so it must take the \
                 backend out before the listener closes: worst-case detection {} ({}) + {} for \
                 it to apply its verdict (--propagation-budget) = {}",
                self.describe(),
                format_duration(self.detection),
                worst_case_formula(&lb.params),
                format_duration(self.propagation),
                format_duration(self.required)
            ),
            None => format!(
                "{}: the endpoint is marked terminating (EndpointSlice ready: false, \
                 terminating: true) as soon as the pod is deleted, in parallel with the preStop \
                 hook, and kube-proxy, ingress controllers and service meshes need up to {} \
                 (--propagation-budget) to stop sending it new connections; the readiness \
                 probe does not delay this (Kubernetes docs: Pod Lifecycle, termination of Pods; \
                 EndpointSlices, conditions)",
                self.describe(),
                format_duration(self.propagation)
            ),
        }
    }
}

/// The model-wide settings from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// `--consumer`; `None` when not given (then `service`).
    pub default: Option<ConsumerKind>,
    /// The health check from `--lb-*`, used by lb-health-check objects without their own.
    pub lb_health_check: Option<LbHealthCheck>,
}

fn annotation_err(key: &'static str, value: &str, reason: String) -> RuleError {
    RuleError::AnnotationValue {
        key,
        value: value.to_string(),
        reason,
    }
}

/// Annotation keys in lb-check's flag names' place.
fn annotation_key(flag: &str) -> String {
    match flag {
        "--unhealthy-threshold" => "unhealthy".to_string(),
        f => f.trim_start_matches('-').to_string(),
    }
}

/// Parses `drainwatch.io/lb-health-check`.
pub fn parse_lb_annotation(value: &str) -> Result<LbHealthCheck, RuleError> {
    let key = LB_HEALTH_CHECK_ANNOTATION;
    let err = |reason: String| annotation_err(key, value, reason);
    let mut preset = None;
    let mut o = Overrides::default();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .ok_or_else(|| err(format!("{pair:?} is not key=value")))?;
        let dur = || parse_duration(v).map_err(|e| err(format!("{k}: {e}")));
        match k {
            "preset" => {
                preset = Some(Preset::from_str(v, true).map_err(|_| {
                    err(format!(
                        "preset {v:?} is not one of aws-nlb, gcp, azure, haproxy, custom"
                    ))
                })?);
            }
            "interval" => o.interval = Some(dur()?),
            "timeout" => o.timeout = Some(dur()?),
            "fast-interval" => o.fast_interval = Some(dur()?),
            "unhealthy" => {
                o.unhealthy_threshold =
                    Some(v.parse().map_err(|_| {
                        err(format!("unhealthy {v:?} is not a whole number above 0"))
                    })?);
            }
            "scheduling" => {
                o.scheduling = Some(Scheduling::from_str(v, true).map_err(|_| {
                    err(format!(
                        "scheduling {v:?} is not one of fixed, after-previous"
                    ))
                })?);
            }
            _ => {
                return Err(err(format!(
                    "unknown key {k:?} (keys: preset, interval, timeout, unhealthy, \
                     fast-interval, scheduling)"
                )));
            }
        }
    }
    LbHealthCheck::resolve(preset, &o, annotation_key).map_err(err)
}

/// The consumer model of one object: its annotations first, then the flags.
pub fn resolve(
    annotations: &BTreeMap<String, String>,
    cfg: &ConsumerConfig,
    propagation: Duration,
) -> Result<ConsumerModel, RuleError> {
    let declared = annotations
        .get(CONSUMER_ANNOTATION)
        .map(|v| {
            ConsumerKind::from_str(v.trim(), true).map_err(|_| {
                annotation_err(
                    CONSUMER_ANNOTATION,
                    v,
                    "expected service or lb-health-check".to_string(),
                )
            })
        })
        .transpose()?;
    let own_lb = annotations
        .get(LB_HEALTH_CHECK_ANNOTATION)
        .map(|v| parse_lb_annotation(v))
        .transpose()?;
    let (model, source) = match (declared, &own_lb, cfg.default) {
        (Some(ConsumerKind::Service), Some(_), _) => {
            return Err(RuleError::Contradiction {
                first: CONSUMER_ANNOTATION,
                second: LB_HEALTH_CHECK_ANNOTATION,
            });
        }
        (Some(k), _, _) => (k, CONSUMER_ANNOTATION),
        // A health check given for the object says what consumes it.
        (None, Some(_), _) => (ConsumerKind::LbHealthCheck, LB_HEALTH_CHECK_ANNOTATION),
        (None, None, Some(k)) => (k, FLAG_SOURCE),
        (None, None, None) => (ConsumerKind::Service, DEFAULT_SOURCE),
    };
    let (lb, lb_source) = match model {
        ConsumerKind::Service => (None, None),
        ConsumerKind::LbHealthCheck => match (own_lb, &cfg.lb_health_check) {
            (Some(lb), _) => (Some(lb), Some(LB_HEALTH_CHECK_ANNOTATION)),
            (None, Some(lb)) => (Some(lb.clone()), Some(LB_FLAGS_SOURCE)),
            (None, None) => return Err(RuleError::NoLbHealthCheck { from: source }),
        },
    };
    let detection = lb
        .as_ref()
        .map(LbHealthCheck::detection)
        .unwrap_or_default();
    Ok(ConsumerModel {
        model,
        source,
        lb_health_check: lb,
        lb_health_check_source: lb_source,
        detection,
        propagation,
        required: detection.saturating_add(propagation),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn flags_aws() -> ConsumerConfig {
        ConsumerConfig {
            default: Some(ConsumerKind::LbHealthCheck),
            lb_health_check: Some(
                LbHealthCheck::resolve(Some(Preset::AwsNlb), &Overrides::default(), |f| {
                    f.to_string()
                })
                .unwrap(),
            ),
        }
    }

    #[test]
    fn default_is_service_with_only_propagation() {
        let m = resolve(&BTreeMap::new(), &ConsumerConfig::default(), secs(10)).unwrap();
        assert_eq!(m.model, ConsumerKind::Service);
        assert_eq!(m.source, DEFAULT_SOURCE);
        assert_eq!(m.required, secs(10));
        assert_eq!(
            m.describe(),
            "consumer model service (default: --consumer not given)"
        );
    }

    #[test]
    fn annotation_beats_flag_and_flag_beats_default() {
        // The flag: every object without an annotation gets the AWS check, 30s + 10s.
        let m = resolve(&BTreeMap::new(), &flags_aws(), secs(10)).unwrap();
        assert_eq!(m.model, ConsumerKind::LbHealthCheck);
        assert_eq!(m.source, "--consumer");
        assert_eq!(m.required, secs(40));
        assert!(
            m.describe().contains(
                "health check AWS Network Load Balancer interval 10s, timeout 10s, unhealthy \
                 threshold 2 from --lb-preset"
            ),
            "{}",
            m.describe()
        );
        // The object says it sits behind a Service.
        let m = resolve(
            &ann(&[(CONSUMER_ANNOTATION, "service")]),
            &flags_aws(),
            secs(10),
        )
        .unwrap();
        assert_eq!(m.model, ConsumerKind::Service);
        assert_eq!(m.source, CONSUMER_ANNOTATION);
        assert_eq!(m.required, secs(10));
        // The object's own health check replaces the flags': 3 x 5 + 1 = 16s.
        let m = resolve(
            &ann(&[(
                LB_HEALTH_CHECK_ANNOTATION,
                "interval=5s, timeout=1s, unhealthy=3",
            )]),
            &flags_aws(),
            secs(10),
        )
        .unwrap();
        assert_eq!(m.source, LB_HEALTH_CHECK_ANNOTATION);
        assert_eq!(m.lb_health_check_source, Some(LB_HEALTH_CHECK_ANNOTATION));
        assert_eq!(m.detection, secs(16));
        assert_eq!(m.required, secs(26));
        // lb-health-check by annotation, health check from the flags.
        let cfg = ConsumerConfig {
            default: None,
            ..flags_aws()
        };
        let m = resolve(
            &ann(&[(CONSUMER_ANNOTATION, "lb-health-check")]),
            &cfg,
            secs(10),
        )
        .unwrap();
        assert_eq!(m.detection, secs(30));
        // ... and without the flags there is nothing to check it with.
        let e = resolve(
            &ann(&[(CONSUMER_ANNOTATION, "lb-health-check")]),
            &ConsumerConfig::default(),
            secs(10),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "consumer model lb-health-check (from drainwatch.io/consumer) needs the load \
                 balancer's health check"
            ),
            "{e}"
        );
    }

    #[test]
    fn lb_annotation_presets_and_errors() {
        let lb = parse_lb_annotation("preset=haproxy").unwrap();
        assert_eq!(lb.params.scheduling, Scheduling::AfterPrevious);
        assert_eq!(lb.detection(), secs(12));
        let lb = parse_lb_annotation("preset=aws-nlb,interval=5s").unwrap();
        assert_eq!(lb.detection(), secs(20));
        for (bad, want) in [
            ("interval=10s,timeout=5s", "unhealthy is missing"),
            ("interval=10s,timeout=5s,unhealthy=two", "unhealthy \"two\""),
            ("interval=soon", "interval: invalid duration \"soon\""),
            ("preset=f5", "preset \"f5\" is not one of"),
            ("interval", "\"interval\" is not key=value"),
            ("retries=3", "unknown key \"retries\""),
            ("preset=gcp,unhealthy=0", "unhealthy must be greater than 0"),
        ] {
            let e = parse_lb_annotation(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "annotation drainwatch.io/lb-health-check: {bad:?}: "
                )),
                "{e}"
            );
            assert!(e.contains(want), "{bad}: {e}");
        }
        let e = resolve(
            &ann(&[(CONSUMER_ANNOTATION, "nlb")]),
            &ConsumerConfig::default(),
            secs(10),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation drainwatch.io/consumer: \"nlb\": expected service or lb-health-check"
        );
        let e = resolve(
            &ann(&[
                (CONSUMER_ANNOTATION, "service"),
                (LB_HEALTH_CHECK_ANNOTATION, "preset=gcp"),
            ]),
            &ConsumerConfig::default(),
            secs(10),
        )
        .unwrap_err();
        assert!(e.to_string().contains("contradict"), "{e}");
    }
}
