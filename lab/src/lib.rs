//! drainwatch lab: apiserver rollout failure scenarios reproduced on one machine.
//!
//! Every host is a network namespace named `dwlab-<run id>-<host>`, joined by veth pairs
//! (through a bridge namespace where a LAN is needed). Load balancers are real (HAProxy,
//! a conntrack router), the apiserver is a stand-in that follows kube-apiserver's shutdown
//! sequence, and every process writes its ground truth as JSON lines that the scenario
//! runner gathers into one `truth.json` per run.

pub mod apiserver;
pub mod benchload;
pub mod capture;
pub mod clock;
pub mod cmd;
pub mod idlereset;
pub mod k8s;
pub mod lb;
pub mod loadgen;
pub mod procs;
pub mod record;
pub mod scenario;
pub mod timer;
pub mod tls;
pub mod topo;
pub mod truth;
