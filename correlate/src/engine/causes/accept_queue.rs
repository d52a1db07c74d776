//! [`Cause::AcceptQueueReset`]: every connection the apiserver's kernel
//! reset while it was still in the listener's accept queue (completed by
//! the kernel, never accepted by the application: the RST's socket has
//! no `struct socket` and is ESTABLISHED or CLOSE_WAIT), one per
//! connection (the kernel reports each once), grouped by instance, rollout
//! and path: each is a client whose connection was completed by the kernel
//! and then reset without an answer. Window: listener close to the last
//! reset.
//!
//! Blind spots: kernels whose BTF lacks `sock.sk_socket` give no such
//! evidence, and a pcap cannot tell a queued connection from an accepted
//! one.

use std::collections::BTreeMap;

use crate::model::Path;
use crate::output::{Cause, PhaseKind};
use crate::text::{plural, who};

use super::super::draft::{Draft, Group, It, Owner, dsecs};
use super::Ctx;

/// One verdict per (instance, rollout, path) with queued connections reset.
pub(in crate::engine) fn verdicts<'a>(
    ctx: &Ctx,
    queue_resets: BTreeMap<(Owner, Path), Vec<&'a It>>,
    drafts: &mut Vec<Draft<'a>>,
) {
    for (((inst, cyc), path), its) in queue_resets {
        let group = Group::new(its.into_iter().map(|i| vec![i]).collect());
        let c = ctx.cycle(&inst, cyc);
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let closed_at = c
            .and_then(|c| c.marks.get(&PhaseKind::ListenerClosed))
            .filter(|m| m.t <= first.t.saturating_add(ctx.tol));
        let (from, from_wall) = match closed_at {
            Some(m) => (m.t.min(first.t), m.wall.clone()),
            None => (first.t, first.wall.clone()),
        };
        let seconds = dsecs(from, last.t);
        let (sentence, fix) = sentence(inst.as_deref(), path, group.attempts.len(), seconds);
        let mut g = group;
        if let Some(m) = closed_at {
            g.extra_ids.extend(m.ids.iter().copied());
        }
        drafts.push(Draft {
            cause: Cause::AcceptQueueReset { path },
            instance: inst,
            cycle: cyc,
            group: g,
            window: Some((from, last.t, from_wall, last.wall.clone())),
            sentence,
            fix,
            measured: None,
        });
    }
}

/// What the verdict says, and its fix.
fn sentence(inst: Option<&str>, path: Path, n: usize, seconds: f64) -> (String, String) {
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
