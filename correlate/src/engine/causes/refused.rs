//! [`Cause::RefusedWhileNotListening`]: every refused SYN (kernel
//! `refused`, server `NO_SOCKET` RST, client RST in SYN_SENT, prober
//! `refused`), one attempt per client address within `tol` (the kernel
//! and the prober, or both ends of a local connection, count once),
//! grouped by instance, rollout and path. Window: listener close to
//! the last refusal. LB health checks ([`super::lb_detection`]) are not
//! clients and not counted.
//!
//! The path is the observation's own, else [`Config::classify`]'s (see
//! there for what it cannot tell apart).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::model::Path;
use crate::output::{Cause, Measured, PhaseKind};
use crate::text::{after_close, plural, who};

use super::super::draft::{Draft, Group, It, Owner, dedupe, dsecs};
use super::Ctx;

/// One verdict per (instance, rollout, path) with refusals.
pub(in crate::engine) fn verdicts<'a>(
    ctx: &Ctx,
    refusals: BTreeMap<(Owner, Path), Vec<&'a It>>,
    health_checks: &BTreeSet<u64>,
    drafts: &mut Vec<Draft<'a>>,
) {
    for (((inst, cyc), path), mut its) in refusals {
        its.retain(|i| !health_checks.contains(&i.id));
        let group = Group::new(dedupe(its, ctx.tol));
        let c = ctx.cycle(&inst, cyc);
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let closed_at = c
            .and_then(|c| c.marks.get(&PhaseKind::ListenerClosed))
            .filter(|m| m.t <= first.t);
        let (from, from_wall) = match closed_at {
            Some(m) => (m.t, m.wall.clone()),
            None => (first.t, first.wall.clone()),
        };
        let window = Some((from, last.t, from_wall, last.wall.clone()));
        let seconds = dsecs(from, last.t);
        let (sentence, fix) = sentence(
            inst.as_deref(),
            path,
            group.attempts.len(),
            seconds,
            ctx.cfg,
        );
        let mut g = group;
        if let Some(c) = c {
            g.extra_ids.extend(
                c.marks
                    .get(&PhaseKind::ListenerClosed)
                    .map(|m| m.ids.clone())
                    .unwrap_or_default(),
            );
        }
        drafts.push(Draft {
            cause: Cause::RefusedWhileNotListening { path },
            instance: inst,
            cycle: cyc,
            group: g,
            window,
            sentence,
            fix,
            measured: Some(Measured::NotListening { seconds }),
        });
    }
}

/// What the verdict says, by path, and its fix.
fn sentence(
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
