//! What leaves the daemon besides its event lines: Prometheus metrics and
//! the HTTP endpoint that serves them.

pub mod http;
pub mod metrics;
