//! [`Cause::Unexplained`]: prober failures that no instance's lifecycle
//! explains (no rule in [`super::cuts`] matched, or no rollout to match).
//! Kernel-only cuts without an explanation are ordinary client behaviour
//! and dropped before they get here.

use crate::output::Cause;
use crate::text::{plural, who};

use super::super::draft::{Draft, Group, Owner};

/// The verdict for failures nothing explains.
pub(in crate::engine) fn draft<'a>((inst, cyc): Owner, g: Group<'a>) -> Draft<'a> {
    let (sentence, fix) = sentence(inst.as_deref(), g.attempts.len(), &g.whats());
    Draft::new(Cause::Unexplained, (inst, cyc), g, (sentence, fix))
}

/// What the verdict says, and its fix.
fn sentence(inst: Option<&str>, n: usize, whats: &[String]) -> (String, String) {
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
