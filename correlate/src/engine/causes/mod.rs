//! Stage 4, the causes: one module per [`Cause`](crate::Cause) family, each
//! with its rule, the blind spots of that rule, and the sentence its
//! verdict says (what happened, how much, and the fix). Each takes the
//! items [`super::attribute`] sorted for it and pushes its verdict drafts.
//!
//! `tol` is [`Config::tolerance_s`](crate::Config::tolerance_s) (default 1 s).
//!
//! | cause | module |
//! |---|---|
//! | `refused_*` | [`refused`] |
//! | `accept_queue_reset` | [`accept_queue`] |
//! | `lb_detection_slow` (and LB health checks) | [`lb_detection`] |
//! | cuts, sorted among the causes below | [`cuts`] |
//! | `inflight_cut_at_timeout` | [`timeout_cut`] |
//! | `goaway_then_failed` | [`goaway`] |
//! | `hard_close` | [`hard_close`] |
//! | `sigkill_after_grace`, `killed_without_sigterm` | [`sigkill`] |
//! | `idle_reset_by_middlebox` | [`idle_reset`] |
//! | `unexplained` | [`unexplained`] |

use std::collections::BTreeMap;

use crate::config::Config;

use super::cycle::Cycle;

pub(super) mod accept_queue;
pub(super) mod cuts;
pub(super) mod goaway;
pub(super) mod hard_close;
pub(super) mod idle_reset;
pub(super) mod lb_detection;
pub(super) mod refused;
pub(super) mod sigkill;
pub(super) mod timeout_cut;
pub(super) mod unexplained;

/// What every cause reads: the configuration, its tolerance, the rollouts.
pub(super) struct Ctx<'c> {
    pub(super) cfg: &'c Config,
    pub(super) tol: u64,
    pub(super) cycles: &'c BTreeMap<String, Vec<Cycle>>,
}

impl Ctx<'_> {
    /// The rollout an owner names, when it names one.
    pub(super) fn cycle(&self, inst: &Option<String>, cyc: Option<usize>) -> Option<&Cycle> {
        self.cycles.get(inst.as_ref()?)?.get(cyc?)
    }
}
