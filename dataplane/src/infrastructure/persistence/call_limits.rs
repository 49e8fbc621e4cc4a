//! A capability's two counted limits, `max_concurrent` and `rate_limit`, taken for a call.
//!
//! On SQLite both are counted in this process, one after the other. On Postgres a call under
//! both takes its slot and its quota in one statement (`admit_limited_calls`, migration 0008)
//! instead of one statement for each, so it makes two round trips in all, the other giving the
//! slot back; a call under one of them takes only that one.

use std::time::Instant;

use aegis_seal_crds::RateLimit;

use super::{Database, PersistenceError, RateLimits, RunningSlots, SlotPermit};
use crate::domain::policy::{Admission, InTurn, Limits};

/// The gateway's counters of `max_concurrent` slots and `rate_limit` quota, chosen by its
/// database.
#[derive(Debug)]
pub struct CallLimits {
    pub rate_limits: RateLimits,
    pub running: RunningSlots,
}

impl CallLimits {
    pub fn for_database(db: &Database) -> Self {
        Self {
            rate_limits: RateLimits::for_database(db),
            running: RunningSlots::for_database(db),
        }
    }
}

impl Limits for CallLimits {
    type Error = PersistenceError;
    type Permit = SlotPermit;

    async fn admit(
        &self,
        key: &str,
        max_concurrent: Option<u32>,
        rate_limit: Option<&RateLimit>,
        now: Instant,
    ) -> Result<Admission<SlotPermit>, PersistenceError> {
        if let (RunningSlots::Shared(slots), RateLimits::Shared(_), Some(limit), Some(rate)) =
            (&self.running, &self.rate_limits, max_concurrent, rate_limit)
        {
            let admission = slots.admit(key, limit, rate).await?;
            return Ok(admission.map(SlotPermit::Shared));
        }
        let in_turn = InTurn {
            running: &self.running,
            quota: &self.rate_limits,
        };
        in_turn.admit(key, max_concurrent, rate_limit, now).await
    }
}
