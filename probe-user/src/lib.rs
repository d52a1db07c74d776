//! drainwatch, the daemon and its command line, grouped by data flow:
//!
//! - [`cli`]: one module per subcommand; `main` only dispatches.
//! - [`kernel`]: the program table, loading and attaching, the layouts read
//!   from tracefs and BTF, TC filters and their leftovers, map access.
//! - [`sources`]: producers, one per file: the ring buffer, kernel-side
//!   counters, map occupancy, the HTTP poller and prober, the pod watch.
//! - [`decode`]: pure: kernel records to events, events to the correlation
//!   engine's observations (fuzzed).
//! - [`pipeline`]: the one task that owns per-event state: idle inference,
//!   correlation, the single sink that writes text or JSON, the recording.
//! - [`export`]: the metrics, declared by area, and the HTTP endpoint.
//! - [`gobin`]: pure: where to hook a Go binary's HTTP/2 code (fuzzed).
//!
//! [`daemon`] wires them together for `drainwatch run`.

pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod decode;
pub mod export;
pub mod gobin;
pub mod kernel;
pub mod pipeline;
pub mod sources;
