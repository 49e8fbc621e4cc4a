//! One statement in flight per key, with the calls that arrive meanwhile sent together in the
//! next.
//!
//! A shared limit's row on Postgres (a key's rate-limit log, its running slots) is locked by each
//! statement that changes it until that statement commits, so one key's statements run one after
//! another however many connections send them. Sent one per call, a busy session's calls queue
//! on its row in the database, each waiting for a commit and a wake-up before its own. A replica
//! therefore sends at most one statement per key at a time; calls that arrive while it runs wait
//! in the replica and go together in the next (`take_rate_limit_quotas`,
//! `exchange_running_slots`, migration 0007). A key with no statement in flight sends its call at
//! once, alone.
//!
//! The statements run in a task of their own, so a caller that goes away (its request's task
//! cancelled) neither stalls the calls queued behind it nor loses what its statement did: its
//! answer is dropped, which for a running slot gives the slot back.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::PersistenceError;

/// One statement for a batch of one key's calls.
pub(super) trait BatchStatement<K, Q, A>: Send + 'static {
    /// Runs the calls `requests` of `key`, in arrival order, in one statement: one answer per
    /// request, in the same order.
    fn run(
        &self,
        key: &K,
        requests: Vec<Q>,
    ) -> impl Future<Output = Result<Vec<A>, PersistenceError>> + Send;
}

type Answer<A> = oneshot::Sender<Result<A, PersistenceError>>;

/// The calls waiting, by key: a key is present while a statement of it is in flight.
type Waiting<K, Q, A> = Arc<Mutex<HashMap<K, Vec<(Q, Answer<A>)>>>>;

/// One statement in flight per key; see the module's documentation.
pub(super) struct KeyBatches<K, Q, A> {
    waiting: Waiting<K, Q, A>,
}

impl<K, Q, A> Clone for KeyBatches<K, Q, A> {
    fn clone(&self) -> Self {
        Self {
            waiting: Arc::clone(&self.waiting),
        }
    }
}

impl<K, Q, A> Default for KeyBatches<K, Q, A> {
    fn default() -> Self {
        Self {
            waiting: Arc::default(),
        }
    }
}

impl<K, Q, A> fmt::Debug for KeyBatches<K, Q, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = lock(&self.waiting).len();
        f.debug_struct("KeyBatches")
            .field("keys_in_flight", &keys)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K, Q, A> KeyBatches<K, Q, A>
where
    K: Hash + Eq + Clone + Send + 'static,
    Q: Send + 'static,
    A: Send + 'static,
{
    /// Runs `request` in `key`'s next statement, through `statement` if this call starts the
    /// key's batches, and returns its answer.
    pub async fn submit<S>(&self, key: &K, request: Q, statement: S) -> Result<A, PersistenceError>
    where
        S: BatchStatement<K, Q, A>,
    {
        let (answer, answered) = oneshot::channel();
        let first = match lock(&self.waiting).entry(key.clone()) {
            Entry::Occupied(mut queued) => {
                queued.get_mut().push((request, answer));
                None
            }
            Entry::Vacant(idle) => {
                idle.insert(Vec::new());
                Some((request, answer))
            }
        };
        if let Some(first) = first {
            let driver = Driver {
                waiting: Arc::clone(&self.waiting),
                key: Some(key.clone()),
            };
            tokio::spawn(driver.run(vec![first], statement));
        }
        // The sender is dropped unanswered only if the statement panicked.
        answered.await.unwrap_or_else(|_| {
            Err(PersistenceError::Batch(
                "the statement's task panicked".to_owned(),
            ))
        })
    }

    /// Keys with a statement in flight.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        lock(&self.waiting).len()
    }
}

/// Runs one key's statements until no call waits. If a statement panics, dropping the driver
/// takes the key out of the map, so its waiting calls fail instead of waiting forever and the
/// key's next call starts afresh.
struct Driver<K: Hash + Eq, Q, A> {
    waiting: Waiting<K, Q, A>,
    /// Taken when the driver has removed its key itself.
    key: Option<K>,
}

impl<K: Hash + Eq + Clone, Q, A> Driver<K, Q, A> {
    async fn run<S: BatchStatement<K, Q, A>>(
        mut self,
        mut batch: Vec<(Q, Answer<A>)>,
        statement: S,
    ) {
        let Some(key) = self.key.clone() else {
            return;
        };
        loop {
            let (requests, answers): (Vec<Q>, Vec<Answer<A>>) = batch.into_iter().unzip();
            match statement.run(&key, requests).await {
                // A caller that has gone drops its answer.
                Ok(results) => {
                    debug_assert_eq!(results.len(), answers.len(), "one answer per request");
                    for (answer, result) in answers.into_iter().zip(results) {
                        let _ = answer.send(Ok(result));
                    }
                }
                Err(e) => {
                    for answer in answers {
                        let _ = answer.send(Err(e.for_each_caller()));
                    }
                }
            }
            let mut waiting = lock(&self.waiting);
            let Some(queued) = waiting.get_mut(&key).filter(|queued| !queued.is_empty()) else {
                waiting.remove(&key);
                self.key = None;
                return;
            };
            batch = std::mem::take(queued);
        }
    }
}

impl<K: Hash + Eq, Q, A> Drop for Driver<K, Q, A> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.waiting).remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::*;

    /// Answers each request with itself doubled, records each batch, and runs only as its
    /// semaphore allows.
    #[derive(Clone, Default)]
    struct Doubler {
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
        gate: Option<Arc<Semaphore>>,
    }

    impl BatchStatement<&'static str, u32, u32> for Doubler {
        async fn run(
            &self,
            _key: &&'static str,
            requests: Vec<u32>,
        ) -> Result<Vec<u32>, PersistenceError> {
            if let Some(gate) = &self.gate {
                gate.acquire().await.unwrap().forget();
            }
            if requests.contains(&0) {
                panic!("a statement that panics");
            }
            if requests.contains(&1) {
                return Err(PersistenceError::InvalidUrl("a failed statement".into()));
            }
            lock(&self.batches).push(requests.clone());
            Ok(requests.into_iter().map(|r| r * 2).collect())
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn calls_that_arrive_while_a_statement_runs_go_together_in_the_next() {
        let gate = Arc::new(Semaphore::new(0));
        let statement = Doubler {
            gate: Some(Arc::clone(&gate)),
            ..Doubler::default()
        };
        let batches = KeyBatches::default();
        let call = |key, n| {
            let (batches, statement) = (batches.clone(), statement.clone());
            tokio::spawn(async move { batches.submit(&key, n, statement).await.unwrap() })
        };
        let first = call("a", 10);
        settle().await;
        let queued: Vec<_> = (11..16).map(|n| call("a", n)).collect();
        // Another key does not wait for this one's statement.
        let other = call("b", 20);
        settle().await;
        assert_eq!(batches.in_flight(), 2);
        gate.add_permits(3);
        assert_eq!(first.await.unwrap(), 20);
        assert_eq!(other.await.unwrap(), 40);
        for (n, call) in (11..16).zip(queued) {
            assert_eq!(call.await.unwrap(), n * 2);
        }
        let mut batches_run = lock(&statement.batches).clone();
        batches_run.sort();
        assert_eq!(batches_run, [vec![10], vec![11, 12, 13, 14, 15], vec![20]]);
        settle().await;
        assert_eq!(batches.in_flight(), 0, "an idle key is forgotten");
    }

    #[tokio::test]
    async fn an_idle_keys_call_goes_at_once_alone() {
        let statement = Doubler::default();
        let batches = KeyBatches::default();
        for n in [3, 4] {
            assert_eq!(
                batches.submit(&"a", n, statement.clone()).await.unwrap(),
                n * 2
            );
        }
        assert_eq!(*lock(&statement.batches), [vec![3], vec![4]]);
    }

    /// The answer of a caller that went away is dropped, not lost in a channel nobody reads.
    #[tokio::test]
    async fn a_caller_that_went_away_has_its_answer_dropped_and_the_queue_goes_on() {
        static DROPPED: AtomicUsize = AtomicUsize::new(0);
        struct Slot;
        impl Drop for Slot {
            fn drop(&mut self) {
                DROPPED.fetch_add(1, Ordering::SeqCst);
            }
        }
        struct Slots(Arc<Semaphore>);
        impl BatchStatement<u8, (), Slot> for Slots {
            async fn run(&self, _: &u8, requests: Vec<()>) -> Result<Vec<Slot>, PersistenceError> {
                self.0.acquire().await.unwrap().forget();
                Ok(requests.into_iter().map(|()| Slot).collect())
            }
        }
        let gate = Arc::new(Semaphore::new(0));
        let batches = KeyBatches::default();
        let gone = {
            let (batches, gate) = (batches.clone(), Arc::clone(&gate));
            tokio::spawn(async move { batches.submit(&7, (), Slots(gate)).await })
        };
        settle().await;
        let next = {
            let (batches, gate) = (batches.clone(), Arc::clone(&gate));
            tokio::spawn(async move { batches.submit(&7, (), Slots(gate)).await })
        };
        settle().await;
        gone.abort();
        gate.add_permits(2);
        let kept = next.await.unwrap().unwrap();
        assert_eq!(DROPPED.load(Ordering::SeqCst), 1);
        drop(kept);
        assert_eq!(DROPPED.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_statement_fails_each_of_its_calls_and_the_next_runs() {
        let gate = Arc::new(Semaphore::new(0));
        let statement = Doubler {
            gate: Some(Arc::clone(&gate)),
            ..Doubler::default()
        };
        let batches = KeyBatches::default();
        let call = |n| {
            let (batches, statement) = (batches.clone(), statement.clone());
            tokio::spawn(async move { batches.submit(&"k", n, statement).await })
        };
        let first = call(5);
        settle().await;
        let failing = [call(1), call(6)];
        settle().await;
        let after = call(7);
        settle().await;
        gate.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap(), 10);
        settle().await;
        // 7 arrived while 5 ran, so it went with 1 and 6.
        gate.add_permits(1);
        for call in failing {
            let error = call.await.unwrap().unwrap_err();
            assert_eq!(
                error.to_string(),
                "invalid database URL: a failed statement"
            );
        }
        assert!(after.await.unwrap().is_err());
        gate.add_permits(1);
        assert_eq!(
            batches.submit(&"k", 8, statement.clone()).await.unwrap(),
            16
        );
    }

    #[tokio::test]
    async fn a_statement_that_panics_fails_its_calls_and_frees_the_key() {
        let batches = KeyBatches::default();
        let error = batches
            .submit(&"k", 0, Doubler::default())
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "the statement's task panicked");
        settle().await;
        assert_eq!(batches.in_flight(), 0);
        assert_eq!(
            batches.submit(&"k", 2, Doubler::default()).await.unwrap(),
            4
        );
    }
}
