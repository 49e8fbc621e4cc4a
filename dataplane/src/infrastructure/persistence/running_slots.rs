//! Where a capability's `max_concurrent` slots are counted. A gateway on SQLite runs alone (one
//! process per file), so it counts in its own memory. Replicas on Postgres count in
//! `running_slots` (migration 0006), so a session's calls running on every replica count against
//! one limit. Such a call then takes its slot in one statement and gives it back in another,
//! before its answer is sent; calls without a `max_concurrent` take none. A key's takes and
//! give-backs that arrive while its statement is in flight go together in its next
//! (`exchange_running_slots`, migration 0007; see [`super::key_batches`]). A call under a
//! `rate_limit` too takes its slot and its quota in one statement (`admit_limited_calls`,
//! migration 0008; see [`super::CallLimits`]).
//!
//! A slot is a lease: the replica renews the leases of its running calls every
//! [`LEASE_RENEWAL`], and a slot left by a replica that died stops counting [`LEASE`] after its
//! last renewal.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aegis_seal_crds::RateLimit;
use sqlx::postgres::PgPool;

use super::key_batches::{BatchStatement, KeyBatches};
use super::replay::delete_in_batches;
use super::{Database, PersistenceError};
use crate::domain::policy::{Admission, ConcurrencyLimiter, RunningPermit, Slots};

/// How long a slot counts after its last renewal: how long a dead replica's calls keep their
/// slots.
pub const LEASE: Duration = Duration::from_secs(30);

/// How often a replica renews the leases of its running calls: a third of [`LEASE`], so that two
/// renewals in a row may fail (a database restarting) before a running call's slot lapses.
pub const LEASE_RENEWAL: Duration = Duration::from_secs(10);

/// The gateway's `max_concurrent` counter, chosen by its database.
#[derive(Debug, Clone)]
pub enum RunningSlots {
    /// SQLite: this process is the only one serving the database's sessions.
    InProcess(ConcurrencyLimiter),
    /// Postgres: shared by every replica on the database.
    Shared(SharedSlots),
}

/// The slots this replica holds in `running_slots`. Cloning shares them.
#[derive(Debug, Clone)]
pub struct SharedSlots {
    pool: PgPool,
    /// The slots of this replica's running calls, by id, with their keys: those it renews.
    held: Arc<Mutex<HashMap<i64, String>>>,
    /// Each key's takes and give-backs waiting for its statement in flight.
    changes: KeyBatches<String, SlotChange, Option<SharedSlot>>,
    /// Each key's takes of a slot and quota together, and the give-backs of the slots taken so,
    /// waiting for their statement in flight, by key and `rate_limit` (a key's slot limits may
    /// differ call by call, its quota may not). `None` answers a give-back.
    admissions: KeyBatches<(String, RateLimit), SlotChange, Option<Admission<SharedSlot>>>,
}

/// What a call asks of its key's slots.
#[derive(Debug)]
enum SlotChange {
    /// A slot, when fewer than `limit` calls hold one.
    Take { limit: u32 },
    /// Give back slot `id`.
    GiveBack { id: i64 },
}

/// A running call's slot, held until [`Slots::release`] (or, failing that, its drop) gives it
/// back.
#[derive(Debug)]
pub enum SlotPermit {
    InProcess(RunningPermit),
    Shared(SharedSlot),
}

/// One slot in `running_slots`, held by a call running on this replica.
#[derive(Debug)]
pub struct SharedSlot {
    id: i64,
    key: String,
    /// The `rate_limit` it was taken with, quota and all: its give-back goes in that key's
    /// admissions.
    rate_limit: Option<RateLimit>,
    slots: SharedSlots,
    released: bool,
}

impl RunningSlots {
    pub fn for_database(db: &Database) -> Self {
        match db {
            Database::Sqlite(_) => Self::InProcess(ConcurrencyLimiter::new()),
            Database::Postgres(pool) => Self::Shared(SharedSlots {
                pool: pool.clone(),
                held: Arc::default(),
                changes: KeyBatches::default(),
                admissions: KeyBatches::default(),
            }),
        }
    }

    /// How many slots this replica's running calls hold.
    pub fn held(&self) -> usize {
        match self {
            Self::InProcess(limiter) => limiter.calls(),
            Self::Shared(shared) => shared.lock().len(),
        }
    }

    /// Extends the leases of this replica's running calls by [`LEASE`]; a no-op without any, and
    /// on SQLite. A slot found expired or gone while its call runs has lapsed (the database was
    /// unreachable for longer than a lease), and another call may have taken its place: it is not
    /// revived, the lapse is logged, and the call runs on uncounted.
    pub async fn renew(&self) -> Result<(), PersistenceError> {
        let Self::Shared(shared) = self else {
            return Ok(());
        };
        let (ids, keys): (Vec<i64>, Vec<String>) = shared
            .lock()
            .iter()
            .map(|(id, key)| (*id, key.clone()))
            .unzip();
        if ids.is_empty() {
            return Ok(());
        }
        let renewed: Vec<i64> = sqlx::query_scalar("SELECT renew_running_slots($1, $2, $3)")
            .bind(&keys)
            .bind(&ids)
            .bind(lease_secs())
            .fetch_all(&shared.pool)
            .await?;
        if renewed.len() < ids.len() {
            let renewed: HashSet<i64> = renewed.into_iter().collect();
            // A call's slot leaves `held` before it is given back, so a slot still held here
            // was not released: its lease lapsed.
            let held = shared.lock();
            let lapsed = ids
                .iter()
                .filter(|id| !renewed.contains(id) && held.contains_key(id))
                .count();
            if lapsed > 0 {
                tracing::warn!(
                    lapsed,
                    "Running slots lapsed before their calls ended; max_concurrent may be exceeded until they end"
                );
            }
        }
        Ok(())
    }
}

impl SharedSlots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, String>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot under `key` when fewer than `limit` calls hold one and, with it, a call of
    /// `rate_limit`'s quota, counted in the same `rate_limit_logs` as [`super::RateLimits`]: in
    /// one statement. A call the quota refuses keeps no slot.
    pub(super) async fn admit(
        &self,
        key: &str,
        limit: u32,
        rate_limit: &RateLimit,
    ) -> Result<Admission<SharedSlot>, PersistenceError> {
        let key = (key.to_owned(), *rate_limit);
        let admission = self
            .admissions
            .submit(&key, SlotChange::Take { limit }, self.clone())
            .await?;
        // Only a give-back is answered `None`.
        Ok(admission.unwrap_or(Admission::SlotsFull))
    }

    /// Slot `id` of `key`, just taken (with `rate_limit`'s quota, if any): held, and renewed,
    /// from here. A call that has gone away drops it, which gives it back.
    fn hold(&self, id: i64, key: &str, rate_limit: Option<RateLimit>) -> SharedSlot {
        self.lock().insert(id, key.to_owned());
        SharedSlot {
            id,
            key: key.to_owned(),
            rate_limit,
            slots: self.clone(),
            released: false,
        }
    }

    /// Gives the slot back in the batches of the statement that took it: a slot taken with its
    /// quota in its key's admissions, any other in its key's exchanges. On failure the slot, no
    /// longer renewed, stops counting when its lease expires, so the call's answer does not wait
    /// for the database to come back.
    async fn give_back(&self, key: String, id: i64, rate_limit: Option<RateLimit>) {
        let change = SlotChange::GiveBack { id };
        let given_back = match rate_limit {
            None => self
                .changes
                .submit(&key, change, self.clone())
                .await
                .map(drop),
            Some(rate_limit) => {
                let key = (key, rate_limit);
                self.admissions
                    .submit(&key, change, self.clone())
                    .await
                    .map(drop)
            }
        };
        if let Err(e) = given_back {
            tracing::warn!(
                error = %e,
                lease_secs = LEASE.as_secs(),
                "Running slot release failed; the slot frees when its lease expires"
            );
        }
    }
}

/// One `exchange_running_slots` for a batch of one key's changes.
impl BatchStatement<String, SlotChange, Option<SharedSlot>> for SharedSlots {
    async fn run(
        &self,
        key: &String,
        changes: Vec<SlotChange>,
    ) -> Result<Vec<Option<SharedSlot>>, PersistenceError> {
        let (given_back, limits) = split(&changes);
        let taken: Vec<Option<i64>> =
            sqlx::query_scalar("SELECT exchange_running_slots($1, $2, $3, $4)")
                .bind(key)
                .bind(&given_back)
                .bind(&limits)
                .bind(lease_secs())
                .fetch_one(&self.pool)
                .await?;
        let mut taken = taken.into_iter();
        let answers = changes
            .into_iter()
            .map(|change| match change {
                SlotChange::GiveBack { .. } => None,
                SlotChange::Take { .. } => {
                    taken.next().flatten().map(|id| self.hold(id, key, None))
                }
            })
            .collect();
        Ok(answers)
    }
}

/// One `admit_limited_calls` for a batch of one key's calls under one `rate_limit`.
impl BatchStatement<(String, RateLimit), SlotChange, Option<Admission<SharedSlot>>>
    for SharedSlots
{
    async fn run(
        &self,
        (key, rate_limit): &(String, RateLimit),
        changes: Vec<SlotChange>,
    ) -> Result<Vec<Option<Admission<SharedSlot>>>, PersistenceError> {
        let (given_back, limits) = split(&changes);
        // Per call: its new slot's id; NULL when the slots are all held; 0 when its quota is
        // spent (slot ids start at 1).
        let answers: Vec<Option<i64>> =
            sqlx::query_scalar("SELECT admit_limited_calls($1, $2, $3, $4, $5, $6)")
                .bind(key)
                .bind(&given_back)
                .bind(&limits)
                .bind(lease_secs())
                .bind(i32::try_from(rate_limit.calls).unwrap_or(i32::MAX))
                .bind(i32::try_from(rate_limit.per_seconds).unwrap_or(i32::MAX))
                .fetch_one(&self.pool)
                .await?;
        let mut answers = answers.into_iter();
        Ok(changes
            .into_iter()
            .map(|change| match change {
                SlotChange::GiveBack { .. } => None,
                SlotChange::Take { .. } => Some(match answers.next().flatten() {
                    None => Admission::SlotsFull,
                    Some(0) => Admission::QuotaSpent,
                    Some(id) => Admission::Admitted(Some(self.hold(id, key, Some(*rate_limit)))),
                }),
            })
            .collect())
    }
}

/// A batch's give-backs (slot ids) and takes (slot limits), each in arrival order.
fn split(changes: &[SlotChange]) -> (Vec<i64>, Vec<i32>) {
    let mut given_back = Vec::new();
    let mut limits = Vec::new();
    for change in changes {
        match change {
            SlotChange::Take { limit } => limits.push(i32::try_from(*limit).unwrap_or(i32::MAX)),
            SlotChange::GiveBack { id } => given_back.push(*id),
        }
    }
    (given_back, limits)
}

fn lease_secs() -> i32 {
    i32::try_from(LEASE.as_secs()).unwrap_or(i32::MAX)
}

impl Slots for RunningSlots {
    type Error = PersistenceError;
    type Permit = SlotPermit;

    async fn try_acquire(&self, key: &str, limit: u32) -> Result<Option<SlotPermit>, Self::Error> {
        match self {
            Self::InProcess(limiter) => Ok(limiter
                .try_acquire(key.to_owned(), limit)
                .map(SlotPermit::InProcess)),
            Self::Shared(shared) => Ok(shared
                .changes
                .submit(&key.to_owned(), SlotChange::Take { limit }, shared.clone())
                .await?
                .map(SlotPermit::Shared)),
        }
    }

    async fn release(&self, permit: SlotPermit) {
        let SlotPermit::Shared(mut slot) = permit else {
            return;
        };
        slot.released = true;
        slot.slots.lock().remove(&slot.id);
        let key = std::mem::take(&mut slot.key);
        slot.slots.give_back(key, slot.id, slot.rate_limit).await;
    }
}

/// A slot dropped without [`Slots::release`] (its call's task was cancelled) is given back in the
/// background: nobody waits for it.
impl Drop for SharedSlot {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.slots.lock().remove(&self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (slots, key) = (self.slots.clone(), std::mem::take(&mut self.key));
            let (id, rate_limit) = (self.id, self.rate_limit);
            runtime.spawn(async move { slots.give_back(key, id, rate_limit).await });
        }
    }
}

impl Database {
    /// Deletes the shared running-slot rows of keys with no unexpired slot, in batches of
    /// [`SWEEP_BATCH`](super::replay::SWEEP_BATCH): such a row allows the next take exactly as no
    /// row does. Returns the rows deleted (none on SQLite, which keeps no such table).
    pub async fn sweep_running_slots(&self) -> Result<u64, PersistenceError> {
        let Self::Postgres(pool) = self else {
            return Ok(0);
        };
        // The outer condition is checked again on a row that a take or a renewal updated
        // meanwhile, so a key given a live slot since the inner select is kept.
        delete_in_batches(
            pool,
            "DELETE FROM running_slots WHERE NOT (clock_timestamp() < ANY(slot_expires)) \
             AND key IN (SELECT key FROM running_slots \
                         WHERE NOT (clock_timestamp() < ANY(slot_expires)) LIMIT $1)",
        )
        .await
    }
}
