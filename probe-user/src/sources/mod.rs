//! Producers, one per file: each reads one source and hands on what it saw
//! (to the pipeline, or straight to the metrics for counters).

pub mod cgroup;
pub mod endpoints;
pub mod goh2;
pub mod http;
pub mod kernel_log;
pub mod kubeconfig;
pub mod kubewatch;
pub mod loss;
pub mod nodepods;
pub mod occupancy;
pub mod program_stats;
pub mod ringbuf;
pub mod wire_stats;
