//! Helpers shared by the lab's integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How often a wait re-checks its condition: short next to the events waited on, long
/// enough not to compete with them for the CPU.
pub const POLL: Duration = Duration::from_millis(20);

/// Waits until `cond` returns `Ok`. Tests order their steps on the event itself (a
/// lifecycle record, a socket state, a process in a namespace), never on a sleep: on two
/// busy cores a sleep is not an order. `within` only bounds a hang. `cond` returns
/// `Err(what it saw)` while the event is missing; the failure names what was awaited
/// and what was last seen.
pub fn wait_for<T>(within: Duration, what: &str, mut cond: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + within;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// [`wait_for`] for async code: the poll interval yields to the runtime, so tasks on
/// the same thread (an h2 connection driver, say) keep running while we wait.
pub async fn wait_for_async<T>(
    within: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
