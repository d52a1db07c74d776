//! What leaves the daemon besides its event lines: Prometheus metrics, the
//! JSON API (verdicts, timelines, recent events) and the HTTP endpoint that
//! serves both.

pub mod api;
pub mod http;
pub mod kube_events;
pub mod metrics;
