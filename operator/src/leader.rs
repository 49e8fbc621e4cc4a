//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one runs the controllers. kube-runtime has no elector; this is the client-go protocol
//! reduced to what one Lease needs: read it, then take it over (when free or expired) or renew it
//! (when ours) with an optimistic-concurrency `replace`, so two candidates never both win.
//!
//! Expiry is judged as client-go does, by this replica's monotonic clock: another holder's Lease
//! has expired once it has not been written (its resourceVersion has not changed) for
//! `leaseDurationSeconds` since we first read it. Its `renewTime` was written by the holder's wall
//! clock, and comparing that with ours would let clock skew between nodes make two leaders (ours
//! ahead) or a late takeover (ours behind).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

use crate::metrics::Metrics;

/// What one attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Held,
    /// Someone else holds it and it has not expired.
    HeldBy(String),
    /// Another writer got there first; try again later.
    Conflict,
}

/// One Lease and who we are. Clones share what was observed of the Lease.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    observed: Arc<Mutex<Option<Observed>>>,
}

/// A version of the Lease, and when this process first read it.
struct Observed {
    /// Every write to the Lease, a renewal included, gives it a new one.
    resource_version: Option<String>,
    since: Instant,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseLock {
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        identity: impl Into<String>,
        duration: Duration,
    ) -> Self {
        Self {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
            observed: Arc::default(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// How long, by our monotonic clock, the Lease has been read at `resource_version`: zero
    /// when that version is new to us.
    fn unchanged_for(&self, resource_version: Option<&str>) -> Duration {
        let mut observed = self.observed.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match &*observed {
            Some(o) if o.resource_version.as_deref() == resource_version => now - o.since,
            _ => {
                *observed = Some(Observed {
                    resource_version: resource_version.map(str::to_owned),
                    since: now,
                });
                Duration::ZERO
            }
        }
    }

    /// Acquires the Lease when it is free, expired or ours, and renews it when ours. Another
    /// holder's Lease has expired once it has stayed unchanged, across our attempts, for its
    /// `leaseDurationSeconds` of our monotonic time; so a candidate that has just started waits a
    /// full lease duration before taking over from a holder that stopped renewing long ago.
    /// `now` is written as `renewTime` (and `acquireTime`) for people reading the Lease, and never
    /// compared with the times in it.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<Attempt, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let unchanged_for = self.unchanged_for(lease.metadata.resource_version.as_deref());
        let mut spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours {
            let lease_duration = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            );
            if let Some(holder) = holder
                && unchanged_for < lease_duration
            {
                return Ok(Attempt::HeldBy(holder));
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(self.duration_seconds());
        lease.spec = Some(spec);
        // `replace` carries the resourceVersion read above: a concurrent writer makes it fail.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up, if ours, so a standby takes over at once rather than after expiry.
    pub async fn release(&self, now: Timestamp) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(now));
        lease.spec = Some(spec);
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

/// Runs the election loop for one [`LeaseLock`].
pub struct LeaderElector {
    pub lock: LeaseLock,
    /// How often the leader renews, and a candidate retries.
    pub retry_every: Duration,
    pub metrics: Arc<Metrics>,
}

impl LeaderElector {
    pub fn new(lock: LeaseLock, metrics: Arc<Metrics>) -> Self {
        // client-go's proportions: renew three times per lease duration.
        let retry_every = lock.duration / 3;
        Self {
            lock,
            retry_every,
            metrics,
        }
    }

    /// Returns once this replica holds the Lease, with when the request that won it was sent:
    /// a standby reads what that request wrote no earlier, so it counts the lease duration, by
    /// its own clock, from no earlier.
    pub async fn acquire(&self) -> Instant {
        let mut last_holder = None;
        loop {
            let sent = Instant::now();
            match self.lock.try_acquire_or_renew(Timestamp::now()).await {
                Ok(Attempt::Held) => {
                    tracing::info!(identity = %self.lock.identity, lease = %self.lock.name, "became the leader");
                    self.metrics.set_leader(true);
                    return sent;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if last_holder.as_ref() != Some(&holder) {
                        tracing::info!(leader = %holder, "standing by: another replica leads");
                        last_holder = Some(holder);
                    }
                }
                Ok(Attempt::Conflict) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read or write the leader Lease"),
            }
            tokio::time::sleep(self.retry_every).await;
        }
    }

    /// Renews the Lease acquired at `acquired` until it is lost: held by another, or not renewed
    /// in time. Returns half a retry interval before the last renewal can run out, and so before
    /// a standby may take over: a renewal that hangs is given up at that point too, since the
    /// client has no deadline of its own.
    pub async fn hold(&self, acquired: Instant) {
        let margin = self.retry_every / 2;
        let good_until = |renewed: Instant| renewed + self.lock.duration.saturating_sub(margin);
        // When the newest successful renewal was sent: a standby first read it no earlier.
        let mut renewed = acquired;
        loop {
            tokio::time::sleep_until(Instant::min(
                Instant::now() + self.retry_every,
                good_until(renewed),
            ))
            .await;
            let sent = Instant::now();
            let attempt = self.lock.try_acquire_or_renew(Timestamp::now());
            match tokio::time::timeout_at(good_until(renewed), attempt).await {
                Ok(Ok(Attempt::Held)) => renewed = sent,
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    tracing::error!(leader = %holder, "leadership lost to another replica");
                    break;
                }
                Ok(Ok(Attempt::Conflict)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
                Err(_) => tracing::warn!("renewing the leader Lease got no answer in time"),
            }
            if Instant::now() >= good_until(renewed) {
                tracing::error!("leadership lost: the Lease could not be renewed in time");
                break;
            }
        }
        self.metrics.set_leader(false);
    }

    /// Leads while `work` runs. Renews the Lease until `stop` completes; then tells `work` to
    /// finish and goes on renewing while it does, for at most `drain`, and releases the Lease once
    /// `work` has ended. A Lease left to run out during the drain would let a standby lead while
    /// this replica still writes. Leadership lost at any point aborts `work` at once, mid-write
    /// if need be: every write is an idempotent apply the next leader repeats. Returns whether
    /// leadership was lost.
    pub async fn lead(
        &self,
        acquired: Instant,
        mut work: JoinHandle<()>,
        finish: oneshot::Sender<()>,
        stop: impl Future<Output = ()>,
        drain: Duration,
    ) -> bool {
        let hold = self.hold(acquired);
        tokio::pin!(hold);
        let stopped = tokio::select! {
            () = &mut hold => false,
            () = stop => true,
        };
        let ended = stopped
            && {
                let _ = finish.send(());
                tokio::select! {
                    finished = tokio::time::timeout(drain, &mut work) => {
                        if finished.is_err() {
                            tracing::warn!("reconciles did not finish in {}s; stopping them", drain.as_secs());
                        }
                        true
                    }
                    () = &mut hold => false,
                }
            };
        if !work.is_finished() {
            work.abort();
            let _ = work.await;
        }
        if ended {
            self.release().await;
        }
        !ended
    }

    /// Releases the Lease (on shutdown).
    pub async fn release(&self) {
        self.metrics.set_leader(false);
        match self.lock.release(Timestamp::now()).await {
            Ok(()) => tracing::info!("leader Lease released"),
            Err(e) => tracing::warn!(error = %e, "cannot release the leader Lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use k8s_openapi::jiff::SignedDuration;
    use kube::Client;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tokio::time::timeout;

    use super::*;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/aegis-seal-operator";
    const LIST: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

    /// Answers each expected `(method, path)` in order with `(status, body)`; returns the bodies sent.
    async fn scripted<F, Fut, T>(
        script: Vec<(&'static str, &'static str, u16, Value)>,
        f: F,
    ) -> (T, Vec<Value>)
    where
        F: FnOnce(LeaseLock) -> Fut,
        Fut: Future<Output = T>,
    {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for (method, path, status, answer) in script {
                let (req, send) = handle.next_request().await.expect("a request");
                assert_eq!(req.method().as_str(), method);
                assert_eq!(req.uri().path(), path);
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                bodies.push(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
                send.send_response(
                    Response::builder()
                        .status(StatusCode::from_u16(status).unwrap())
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
            assert!(
                handle.next_request().await.is_none(),
                "an unexpected request"
            );
            bodies
        });
        let api = Api::namespaced(Client::new(svc, "default"), "ops");
        let lock = LeaseLock::new(api, "aegis-seal-operator", "pod-a", Duration::from_secs(15));
        // Longer than the lease durations that tests wait out on paused time.
        let out = timeout(Duration::from_secs(60), f(lock))
            .await
            .expect("hung");
        let bodies = timeout(Duration::from_secs(5), server)
            .await
            .expect("hung")
            .unwrap();
        (out, bodies)
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
        lease_at(
            holder,
            now() - SignedDuration::from_secs(renewed_secs_ago),
            41,
        )
    }

    /// The Lease at `resource_version`, renewed at `renewed` by its holder's clock.
    fn lease_at(holder: &str, renewed: Timestamp, resource_version: u64) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "aegis-seal-operator", "namespace": "ops",
                         "resourceVersion": resource_version.to_string()},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 4,
                     "renewTime": renewed.to_string()}
        })
    }

    fn not_found() -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_held_by_us() {
        let (out, bodies) = scripted(
            vec![
                ("GET", PATH, 404, not_found()),
                ("POST", LIST, 201, lease("pod-a", 0)),
            ],
            |l| async move { l.try_acquire_or_renew(now()).await.unwrap() },
        )
        .await;
        assert_eq!(out, Attempt::Held);
        let spec = &bodies[1]["spec"];
        assert_eq!(spec["holderIdentity"], "pod-a");
        assert_eq!(spec["leaseDurationSeconds"], 15);
        assert_eq!(spec["leaseTransitions"], 0);
    }

    #[tokio::test]
    async fn a_live_lease_of_another_is_left_alone() {
        let (out, _) = scripted(
            vec![("GET", PATH, 200, lease("pod-b", 5))],
            |l| async move { l.try_acquire_or_renew(now()).await.unwrap() },
        )
        .await;
        assert_eq!(out, Attempt::HeldBy("pod-b".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_taken_over_with_its_resource_version() {
        let (out, bodies) = scripted(
            vec![
                ("GET", PATH, 200, lease("pod-b", 20)),
                ("GET", PATH, 200, lease("pod-b", 20)),
                ("PUT", PATH, 200, lease("pod-a", 0)),
            ],
            |l| async move {
                // However old its renewTime, a Lease first seen now has a lease duration to go.
                let first = l.try_acquire_or_renew(now()).await.unwrap();
                tokio::time::advance(Duration::from_secs(15)).await;
                (first, l.try_acquire_or_renew(now()).await.unwrap())
            },
        )
        .await;
        assert_eq!(out, (Attempt::HeldBy("pod-b".into()), Attempt::Held));
        let put = &bodies[2];
        assert_eq!(put["metadata"]["resourceVersion"], "41");
        assert_eq!(put["spec"]["holderIdentity"], "pod-a");
        assert_eq!(put["spec"]["leaseTransitions"], 5);
    }

    /// The holder's clock is 27 years behind ours: its renewTime looks long expired, but it
    /// renews between our reads, so it leads.
    #[tokio::test(start_paused = true)]
    async fn a_lease_renewed_by_a_clock_far_behind_is_left_alone() {
        let behind = |secs: i64| Timestamp::from_second(946_684_800 + secs).unwrap();
        let (out, _) = scripted(
            vec![
                ("GET", PATH, 200, lease_at("pod-b", behind(0), 41)),
                ("GET", PATH, 200, lease_at("pod-b", behind(10), 42)),
                ("GET", PATH, 200, lease_at("pod-b", behind(20), 43)),
            ],
            |l| async move {
                let mut seen = Vec::new();
                for _ in 0..3 {
                    seen.push(l.try_acquire_or_renew(now()).await.unwrap());
                    tokio::time::advance(Duration::from_secs(10)).await;
                }
                seen
            },
        )
        .await;
        assert_eq!(out, vec![Attempt::HeldBy("pod-b".into()); 3]);
    }

    /// The holder's clock is 73 years ahead of ours: its renewTime looks valid for long, but it
    /// has stopped renewing, so it is taken over after a lease duration of our time, not before.
    #[tokio::test(start_paused = true)]
    async fn a_lease_left_by_a_clock_far_ahead_runs_out_on_our_clock() {
        let ahead = lease_at("pod-b", Timestamp::from_second(4_102_444_800).unwrap(), 41);
        let (out, bodies) = scripted(
            vec![
                ("GET", PATH, 200, ahead.clone()),
                ("GET", PATH, 200, ahead.clone()),
                ("GET", PATH, 200, ahead),
                ("PUT", PATH, 200, lease("pod-a", 0)),
            ],
            |l| async move {
                let mut seen = vec![l.try_acquire_or_renew(now()).await.unwrap()];
                tokio::time::advance(Duration::from_millis(14_999)).await;
                seen.push(l.try_acquire_or_renew(now()).await.unwrap());
                tokio::time::advance(Duration::from_millis(1)).await;
                seen.push(l.try_acquire_or_renew(now()).await.unwrap());
                seen
            },
        )
        .await;
        assert_eq!(
            out,
            [
                Attempt::HeldBy("pod-b".into()),
                Attempt::HeldBy("pod-b".into()),
                Attempt::Held
            ]
        );
        assert_eq!(bodies[3]["spec"]["holderIdentity"], "pod-a");
        let renewed: Timestamp = bodies[3]["spec"]["renewTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(renewed, now(), "renewTime is written by our clock");
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_at_once() {
        let mut released = lease("", 0);
        released["spec"]
            .as_object_mut()
            .unwrap()
            .remove("holderIdentity");
        let (out, bodies) = scripted(
            vec![
                ("GET", PATH, 200, released),
                ("PUT", PATH, 200, lease("pod-a", 0)),
            ],
            |l| async move { l.try_acquire_or_renew(now()).await.unwrap() },
        )
        .await;
        assert_eq!(out, Attempt::Held);
        assert_eq!(bodies[1]["spec"]["holderIdentity"], "pod-a");
        assert_eq!(bodies[1]["spec"]["leaseTransitions"], 5);
    }

    #[tokio::test]
    async fn our_lease_is_renewed_and_a_lost_race_is_a_conflict() {
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "changed"});
        let (out, bodies) = scripted(
            vec![
                ("GET", PATH, 200, lease("pod-a", 5)),
                ("PUT", PATH, 409, conflict),
            ],
            |l| async move { l.try_acquire_or_renew(now()).await.unwrap() },
        )
        .await;
        assert_eq!(out, Attempt::Conflict);
        assert_eq!(
            bodies[1]["spec"]["leaseTransitions"], 4,
            "a renewal is no transition"
        );
    }

    #[tokio::test]
    async fn release_clears_the_holder() {
        let (_, bodies) = scripted(
            vec![
                ("GET", PATH, 200, lease("pod-a", 1)),
                ("PUT", PATH, 200, lease("", 0)),
            ],
            |l| async move { l.release(now()).await.unwrap() },
        )
        .await;
        assert!(bodies[1]["spec"].get("holderIdentity").is_none());
        assert_eq!(bodies[1]["spec"]["leaseDurationSeconds"], 1);

        // Someone else's Lease is not ours to release.
        let (_, bodies) = scripted(
            vec![("GET", PATH, 200, lease("pod-b", 1))],
            |l| async move { l.release(now()).await.unwrap() },
        )
        .await;
        assert_eq!(bodies.len(), 1);
    }

    /// pod-a's elector for the Lease, on the mock API `svc`.
    fn elector_on(svc: tower_test::mock::Mock<Request<Body>, Response<Body>>) -> LeaderElector {
        let lock = LeaseLock::new(
            Api::namespaced(Client::new(svc, "ops"), "ops"),
            "aegis-seal-operator",
            "pod-a",
            Duration::from_secs(15),
        );
        LeaderElector::new(lock, Arc::default())
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_is_given_up_before_the_lease_can_run_out() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let elector = elector_on(svc);
        let acquired = Instant::now();
        let holding = tokio::spawn(async move { elector.hold(acquired).await });
        // The first renewal, after a retry interval, reads the Lease and gets no answer.
        let (request, _unanswered) = handle.next_request().await.expect("a renewal");
        assert_eq!(request.uri().path(), PATH);
        assert_eq!(acquired.elapsed(), Duration::from_secs(5));
        holding.await.unwrap();
        // Leadership ends half a retry interval before the Lease, renewed when acquired, runs
        // out, and not a moment later however long the request hangs.
        assert_eq!(acquired.elapsed(), Duration::from_millis(12_500));
    }

    /// On shutdown the leader goes on renewing while its reconciles finish, here for longer than
    /// the Lease lasts, and releases the Lease only after they ended: never a moment when a
    /// standby may lead while this replica still writes.
    #[tokio::test(start_paused = true)]
    async fn the_lease_is_renewed_until_the_drained_work_ends_then_released() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let started = Instant::now();
        // (seconds since start, method, holder written) for every request.
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().as_str().to_owned();
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let holder = body["spec"]["holderIdentity"].as_str().map(str::to_owned);
                seen.push((started.elapsed().as_secs(), method, holder));
                let answer = if body.is_null() {
                    lease("pod-a", 0)
                } else {
                    body
                };
                send.send_response(
                    Response::builder()
                        .status(StatusCode::OK)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
            seen
        });
        let elector = elector_on(svc);
        let (finish, finishing) = oneshot::channel();
        let work = tokio::spawn(async move {
            let _ = finishing.await;
            // Reconciles still running for 20 s after the stop, longer than the Lease's 15 s.
            tokio::time::sleep(Duration::from_secs(20)).await;
        });
        let stop = tokio::time::sleep(Duration::from_secs(1));
        let lost = elector
            .lead(started, work, finish, stop, Duration::from_secs(30))
            .await;
        assert!(!lost);
        assert_eq!(started.elapsed(), Duration::from_secs(21));
        drop(elector);
        let seen = server.await.unwrap();
        let renewals: Vec<u64> = seen
            .iter()
            .filter(|(_, method, holder)| method == "PUT" && holder.as_deref() == Some("pod-a"))
            .map(|(at, ..)| *at)
            .collect();
        assert_eq!(renewals, [5, 10, 15, 20], "{seen:?}");
        let (at, method, holder) = seen.last().unwrap();
        assert_eq!(
            (*at, method.as_str(), holder),
            (21, "PUT", &None),
            "{seen:?}"
        );
    }
}
