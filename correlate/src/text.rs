//! The sentences verdicts say. Kept apart so wording changes do not touch
//! the logic; every sentence names what happened, how much, and the fix.

use crate::config::Config;
use crate::model::{Path, ProbeMode, ProbeOutcome};
use crate::output::LbDetection;

pub(crate) fn mode(m: ProbeMode) -> &'static str {
    match m {
        ProbeMode::NewConn => "new-connection",
        ProbeMode::Reused => "reused-connection",
    }
}

pub(crate) fn outcome(o: ProbeOutcome) -> String {
    match o {
        ProbeOutcome::Ok(c) => format!("HTTP {c}"),
        ProbeOutcome::Refused => "refused".into(),
        ProbeOutcome::Reset => "reset".into(),
        ProbeOutcome::Timeout => "timeout".into(),
        ProbeOutcome::Goaway => "goaway".into(),
        ProbeOutcome::Tls => "TLS error".into(),
        ProbeOutcome::Eof => "EOF".into(),
    }
}

fn who(inst: Option<&str>) -> String {
    inst.map_or_else(|| "an apiserver".to_string(), |i| format!("apiserver {i}"))
}

/// "for 8.9 s after it stopped listening", or "as it stopped listening"
/// when there is no measurable span.
fn after_close(seconds: f64) -> String {
    if seconds < 0.05 {
        "as it stopped listening".to_string()
    } else {
        format!("for {seconds:.1} s after it stopped listening")
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

pub(crate) fn refused(
    inst: Option<&str>,
    path: Path,
    n: usize,
    seconds: f64,
    cfg: &Config,
) -> (String, String) {
    let conns = plural(n, "connection was", "connections were");
    match path {
        Path::LocalHairpin => {
            let vip = cfg
                .local_vips
                .first()
                .map(|v| format!(" {v}"))
                .unwrap_or_default();
            (
                format!(
                    "the LB kept routing this master's own traffic to {} {} (local hairpin through the VIP{vip}, which ignores health checks); {conns} refused",
                    who(inst),
                    after_close(seconds)
                ),
                "take the VIP off this node (or send local clients to another master) when /readyz fails".into(),
            )
        }
        Path::ViaLb => (
            format!(
                "the load balancer kept sending new connections to {} {}; {conns} refused",
                who(inst),
                after_close(seconds)
            ),
            "the LB must take the instance out before its listener closes: health-check /readyz with interval x unhealthy threshold + timeout below shutdown-delay-duration".into(),
        ),
        Path::Direct => (
            format!(
                "clients dialled {} directly while it was not listening ({seconds:.1} s); {conns} refused",
                who(inst)
            ),
            "point clients at the load balancer rather than one apiserver's address, or make them retry refused connections".into(),
        ),
        Path::Unknown => (
            format!(
                "{} refused connections for {seconds:.1} s while it was not listening; {conns} refused (route unknown)",
                who(inst)
            ),
            "tell drainwatch how clients reach the apiserver: --vip for a load balancer's VIP, --local-vip for a VIP this node holds itself, --lb-addr for a proxying LB's source address; this node's own addresses come from its interfaces (drainwatch analyze, of a recording or --pcap capture: --local)".into(),
        ),
    }
}

pub(crate) fn lb_slow(inst: &str, late: usize, d: &LbDetection, past_e3: f64) -> (String, String) {
    let t = d.t_s.unwrap_or_default();
    let delay = d
        .shutdown_delay_s
        .map_or_else(|| "unknown".to_string(), |s| format!("{s:.1} s"));
    let hc = d
        .hc_worst_case_s
        .map(|w| format!("; its health check can take up to {w:.1} s"))
        .unwrap_or_default();
    (
        format!(
            "the LB took at least {t:.1} s to notice /readyz on apiserver {inst} had turned red, not less than the shutdown delay ({delay}), and it still sent {} at or after the listener close{}{hc}",
            plural(late, "new connection", "new connections"),
            if past_e3 >= 0.05 {
                format!(" (the last {past_e3:.1} s after it)")
            } else {
                String::new()
            }
        ),
        "make the LB's /readyz health check take the instance out within the shutdown delay (interval x unhealthy threshold + timeout < shutdown-delay-duration), or raise shutdown-delay-duration above t".into(),
    )
}

pub(crate) fn timeout_cut(
    inst: Option<&str>,
    n: usize,
    seconds: f64,
    configured: Option<f64>,
    whats: &[String],
) -> (String, String) {
    let cfgd = configured
        .map(|c| format!(" (request timeout {c:.0} s)"))
        .unwrap_or_default();
    (
        format!(
            "{} still in flight on {} were cut {seconds:.1} s after it stopped listening, at the request timeout{cfgd}: {}",
            plural(n, "request", "requests"),
            who(inst),
            whats.join(", ")
        ),
        "requests and watches must finish or be re-established within the request timeout: make clients retry or resume watches, and keep long requests below it".into(),
    )
}

pub(crate) fn goaway_failed(inst: Option<&str>, n: usize) -> (String, String) {
    (
        format!(
            "{} sent HTTP/2 GOAWAY while shutting down, and {} still failed after it",
            who(inst),
            plural(n, "request", "requests")
        ),
        "clients must retry requests above the GOAWAY's last-stream-id on a new connection (client-go does for idempotent requests); keep the listener's shutdown delay long enough for the LB to stop sending".into(),
    )
}

pub(crate) fn hard_close(inst: Option<&str>, n: usize, whats: &[String]) -> (String, String) {
    (
        format!(
            "{} closed {} hard while shutting down instead of draining them ({})",
            who(inst),
            plural(n, "connection", "connections"),
            whats.join(", ")
        ),
        "shut down gracefully (Go: http.Server.Shutdown(ctx), not Close()): send GOAWAY and let in-flight requests finish".into(),
    )
}

pub(crate) fn accept_queue_reset(
    inst: Option<&str>,
    path: Path,
    n: usize,
    seconds: f64,
) -> (String, String) {
    let how = match path {
        Path::ViaLb => " (through the load balancer: its clients typically got a 502 or 503)",
        Path::LocalHairpin => " (this master's own clients, through the VIP)",
        Path::Direct => " (clients connected directly)",
        Path::Unknown => "",
    };
    let conns = plural(n, "connection", "connections");
    (
        format!(
            "{} closed its listener with {conns} still waiting in the accept queue: the kernel had completed {} but the server never accepted {}, so each was reset{how}{}",
            who(inst),
            if n == 1 { "its handshake" } else { "their handshakes" },
            if n == 1 { "it" } else { "them" },
            if seconds >= 0.05 {
                format!(", over {seconds:.1} s")
            } else {
                String::new()
            }
        ),
        "new connections must stop arriving before the listener closes: let the LB take the instance out first (health-check /readyz faster than the shutdown delay, or lengthen shutdown-delay-duration), and have the server accept and serve what is queued before closing its listener".into(),
    )
}

pub(crate) fn unexplained(inst: Option<&str>, n: usize, whats: &[String]) -> (String, String) {
    (
        format!(
            "{} failed without a rollout of {} to explain {} ({})",
            plural(n, "request", "requests"),
            who(inst),
            if n == 1 { "it" } else { "them" },
            whats.join(", ")
        ),
        "look at the LB and network path: no lifecycle event of a watched apiserver matches".into(),
    )
}

/// A SIGKILL after a SIGTERM: the grace period ran out. `inferred_from`
/// names the evidence when the SIGTERM itself was not seen (the grace is
/// then at least `grace`).
pub(crate) fn sigkill(
    inst: &str,
    n: usize,
    grace: f64,
    configured: Option<f64>,
    inferred_from: Option<&str>,
) -> (String, String) {
    let how = match inferred_from {
        None => format!("was SIGKILLed {grace:.1} s after SIGTERM"),
        Some(from) => format!(
            "was SIGKILLed at least {grace:.1} s after SIGTERM (SIGTERM not seen; {from} then)"
        ),
    };
    let cfgd = configured
        .map(|c| format!(" (terminationGracePeriodSeconds {c:.0})"))
        .unwrap_or_default();
    (
        format!(
            "apiserver {inst} {how}{cfgd} before it exited cleanly, cutting {}",
            plural(n, "connection or request", "connections or requests")
        ),
        "make the process shut down within the grace period (shutdown-delay + request-timeout < terminationGracePeriodSeconds) and handle SIGTERM, or raise the grace period".into(),
    )
}

/// A SIGKILL with no evidence of a SIGTERM before it: there was no graceful
/// shutdown to run out of time. `sender` is the signalling process when the
/// kill was observed; `inferred` when only the exit on signal 9 says so.
pub(crate) fn killed_without_term(
    inst: &str,
    n: usize,
    sender: Option<u32>,
    inferred: bool,
    configured: Option<f64>,
) -> (String, String) {
    let how = match (sender, inferred) {
        (Some(p), _) => format!("was SIGKILLed by pid {p}"),
        (None, true) => "exited on SIGKILL (the signal itself was not seen)".to_string(),
        (None, false) => "was SIGKILLed".to_string(),
    };
    let cfgd = configured
        .map(|c| format!(": its grace period ({c:.0} s) never started"))
        .unwrap_or_default();
    (
        format!(
            "apiserver {inst} {how} with no SIGTERM before it, so it had no graceful shutdown at all{cfgd}, cutting {}",
            plural(n, "connection or request", "connections or requests")
        ),
        format!(
            "find who sent the SIGKILL ({}): the OOM killer (the kernel log says \"Killed process\"; raise the memory limit), a force delete with --grace-period=0, a liveness probe killing a crash-looping apiserver, or the container runtime; whoever it is must send SIGTERM and wait the grace period first",
            match sender {
                Some(p) => format!("pid {p}, from the signal event"),
                None =>
                    "the signal event names the sender's pid when drainwatch watches the process"
                        .to_string(),
            }
        ),
    )
}

pub(crate) fn idle(
    inst: Option<&str>,
    n: usize,
    inf: &crate::idle::IdleInference,
) -> (String, String) {
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
