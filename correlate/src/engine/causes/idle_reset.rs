//! [`Cause::IdleResetByMiddlebox`]: wire resets with origin middlebox,
//! and unprovoked peer resets from a proxying LB (`lb_addrs`: HAProxy,
//! Azure SLB with TCP reset; after at least [`LB_IDLE_MIN_S`] of silence),
//! per instance. The rule is [`crate::idle::infer`]'s: the inferred idle
//! timeout is the shortest silence ended by a reset sent at the timeout
//! (resets answering a later packet only bound it from above and are used
//! only when there is nothing else); the cluster is the silences within
//! 10 % (+`tol`) of it; flows without keepalive, and keepalives slower than
//! the timeout, are named.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::idle::{IdleInference, IdleSample};
use crate::model::{Obs, ResetOrigin};
use crate::output::{Affected, Cause, Measured, Verdict};
use crate::text::plural;

use super::super::draft::{Draft, Group, It, Item};

/// Shortest silence after which an unprovoked RST from a proxying LB counts
/// as its idle timeout (LB idle timeouts are seconds to hours).
const LB_IDLE_MIN_S: f64 = 1.0;

/// The idle reset a wire reset is, if it is one.
pub(in crate::engine) fn item(cfg: &Config, kind: &Obs) -> Option<Item> {
    match kind {
        Obs::WireReset {
            origin: ResetOrigin::Middlebox,
            silence_s,
            keepalive,
            answered_packet,
            ..
        } => Some(Item::IdleReset {
            silence_s: *silence_s,
            keepalive: *keepalive,
            answered: *answered_packet == Some(true),
        }),
        // A proxying LB (HAProxy, Azure's SLB with TCP reset) is the TCP peer
        // of the server's connection: an RST it sends on its own after a
        // silence, answering nothing, is its idle timeout firing.
        Obs::WireReset {
            client,
            server,
            origin: ResetOrigin::Peer,
            silence_s,
            keepalive,
            answered_packet: Some(false),
        } if *silence_s >= LB_IDLE_MIN_S
            && [client, server]
                .into_iter()
                .flatten()
                .any(|a| cfg.lb_addrs.contains(&a.ip())) =>
        {
            Some(Item::IdleReset {
                silence_s: *silence_s,
                keepalive: *keepalive,
                answered: false,
            })
        }
        _ => None,
    }
}

/// Idle resets by a middlebox, per instance: the one rule in `idle::infer`.
pub(in crate::engine) fn verdicts<'a>(
    cfg: &Config,
    idle: BTreeMap<Option<String>, Vec<&'a It>>,
    drafts: &mut Vec<Draft<'a>>,
) {
    for (inst, its) in idle {
        let samples: Vec<IdleSample> = its
            .iter()
            .filter_map(|i| match i.item {
                Item::IdleReset {
                    silence_s,
                    keepalive,
                    answered,
                } => Some(IdleSample {
                    silence_s,
                    answered,
                    keepalive,
                }),
                _ => None,
            })
            .collect();
        let Some(inf) = crate::idle::infer(&samples, cfg.tolerance_s) else {
            continue;
        };
        let g = Group::new(its.into_iter().map(|i| vec![i]).collect());
        let (sentence, fix) = sentence(inst.as_deref(), g.attempts.len(), &inf);
        drafts.push(Draft {
            cause: Cause::IdleResetByMiddlebox,
            instance: inst,
            cycle: None,
            group: g,
            window: None,
            sentence,
            fix,
            measured: Some(Measured::IdleTimeout {
                inferred_s: inf.timeout_s,
                max_silence_s: inf.cluster_max_s,
                without_keepalive: inf.without_keepalive,
                with_keepalive: inf.with_keepalive,
            }),
        });
    }
}

/// What the verdict says, and its fix.
fn sentence(inst: Option<&str>, n: usize, inf: &IdleInference) -> (String, String) {
    let on = inst.map(|i| format!(" to {i}")).unwrap_or_default();
    let without = inf.without_keepalive;
    let ka = match inf.slow_keepalive_s {
        Some(k) => format!(
            "; {without} had no TCP keepalive and some had keepalive every {k:.0} s, too slow"
        ),
        None => format!("; {without} had no TCP keepalive"),
    };
    (
        format!(
            "a middlebox reset {}{on} after {} of silence: its idle timeout is {}{ka}",
            plural(n, "idle connection", "idle connections"),
            inf.range_words(),
            inf.timeout_words(),
        ),
        format!(
            "enable TCP keepalive on clients with an interval well below {:.0} s (client-go uses 30 s), or raise the LB's idle timeout",
            inf.timeout_s
        ),
    )
}

/// The idle-reset fix addressed to the workloads it hurt: each program's
/// way to turn TCP keepalive on, below the timeout the verdict's sentence
/// states. The program is told by its command name: a heuristic (a
/// renamed interpreter, a Go program without "go" in its name are given
/// the generic advice, which is still right, only less specific).
pub(in crate::engine) fn workload_fix(cause: Cause, affected: &[Affected]) -> Option<String> {
    if cause != Cause::IdleResetByMiddlebox {
        return None;
    }
    let advice: Vec<String> = affected
        .iter()
        .filter(|a| a.without_keepalive.is_some_and(|n| n > 0))
        .map(advice)
        .collect();
    if advice.is_empty() {
        return None;
    }
    Some(format!("{}; {FIX_TAIL}", advice.join("; ")))
}

/// What every keepalive advice ends with (`N` is the interval to choose).
const FIX_TAIL: &str = "N well below the LB's idle timeout, or raise that timeout";

/// One workload's part of [`workload_fix`]: `WORKLOAD: how`.
fn advice(a: &Affected) -> String {
    let python = a.programs.iter().any(|p| p.starts_with("python"));
    let how = if python {
        "the Python client has no TCP keepalive: add (SOL_SOCKET, SO_KEEPALIVE, 1), (IPPROTO_TCP, TCP_KEEPIDLE, N) and (IPPROTO_TCP, TCP_KEEPINTVL, N) to urllib3's HTTPConnection.default_socket_options before the client is created"
    } else {
        "turn on SO_KEEPALIVE with TCP_KEEPIDLE and TCP_KEEPINTVL of N s (client-go's dialer does, every 30 s; a custom net.Dialer must keep KeepAlive)"
    };
    format!("{}: {how}", a.workload)
}

impl Verdict {
    /// The fix for one of the workloads the verdict hurt, addressed to it:
    /// for an idle reset, its own part of the verdict's fix (a workload
    /// without keepalive), or that its keepalive was too slow (one with
    /// keepalive); for every other cause the verdict's fix, which is the
    /// apiserver's or the LB's operators' to make.
    pub fn fix_for(&self, a: &Affected) -> String {
        if self.cause != Cause::IdleResetByMiddlebox {
            return self.fix.clone();
        }
        if a.without_keepalive.is_some_and(|n| n > 0) {
            return format!("{}; {FIX_TAIL}", advice(a));
        }
        format!(
            "{}: its connections had TCP keepalive and were still reset idle: keep the keepalive interval well below the LB's idle timeout, or raise that timeout",
            a.workload
        )
    }
}
