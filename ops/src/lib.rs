//! drainwatch operator tools, wired into the `drainwatch` binary as subcommands:
//!
//! - [`lb_check`]: worst-case time for a load balancer to take a backend out of service,
//!   from its health-check parameters and probe semantics, against the server's shutdown
//!   delay, request timeout and grace period.
//! - [`audit`]: graceful-shutdown rules over Kubernetes manifests.
//!
//! Both are pure logic with I/O at the edges (`run`), so the rules are unit-tested.

pub mod audit;
pub mod duration;
pub mod lb_check;
pub mod pcap;
pub mod report;

/// Report format shared by the tools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON document.
    Json,
}
