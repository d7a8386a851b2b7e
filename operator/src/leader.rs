//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator
//! replicas are safe: only the holder of the Lease runs the controller
//! (docs/adr/0016).
//!
//! The algorithm is client-go's: a candidate takes the Lease when it has no
//! holder, or when its record has not changed for `leaseDurationSeconds` as
//! measured on the candidate's own clock (no comparison of clocks across
//! machines). Every write carries the `resourceVersion` that was read, so of
//! two candidates writing at once the API server accepts one and answers
//! 409 Conflict to the other. The leader renews every `retry_period`; when it
//! has not renewed for `renew_deadline` it stops leading before anybody else
//! may take over (`renew_deadline < lease_duration`). On a graceful shutdown
//! the leader releases the Lease (no holder, duration 1 s) so that a standby
//! takes over at its next try instead of waiting for the expiry.
//!
//! No overlap ([`Elector::lead`]): the renew deadline runs from the *start*
//! of the last successful try (a standby cannot have seen that record
//! earlier), every try gets only the time that remains of it, and at the
//! deadline the leader's work is dropped, not asked to finish, so nothing
//! of it runs once a standby may lead. A graceful stop is bounded too
//! ([`SHUTDOWN_GRACE`]), and the Lease is kept renewed while it drains.
//!
//! [`lead`] is a replica's whole life with the Lease: standby, one term,
//! release. `main.rs` only hands it the controllers to run.

use crate::metrics::Metrics;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `leaseDurationSeconds`: how long a silent holder keeps the Lease.
pub const LEASE_DURATION_SECONDS: RangeInclusive<u64> = 2..=300;
/// How long the leader keeps leading without a successful renewal.
pub const RENEW_DEADLINE_SECONDS: RangeInclusive<u64> = 1..=299;
/// Time between two tries (renewals of the leader, attempts of a standby).
pub const RETRY_PERIOD_SECONDS: RangeInclusive<u64> = 1..=60;
/// How long the leader's work may take to finish after a stop signal before
/// it is dropped: below the pod's default terminationGracePeriodSeconds
/// (30 s), so that the Lease is still released before the SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "leader election needs retry period ({retry}s) < renew deadline ({renew}s) < lease duration ({lease}s)"
    )]
    Timings { lease: u64, renew: u64, retry: u64 },
    #[error("lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "lost the leader Lease {namespace}/{name} ({ended:?}): exiting so that this replica restarts as a standby"
    )]
    Lost {
        namespace: String,
        name: String,
        ended: Ended,
    },
}

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This candidate's identity (the pod name in a cluster).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Checks the timings' order (each range is checked by the CLI).
    pub fn new(
        namespace: String,
        name: String,
        identity: String,
        lease_seconds: u64,
        renew_seconds: u64,
        retry_seconds: u64,
    ) -> Result<Self, LeaderError> {
        if !(retry_seconds < renew_seconds && renew_seconds < lease_seconds) {
            return Err(LeaderError::Timings {
                lease: lease_seconds,
                renew: renew_seconds,
                retry: retry_seconds,
            });
        }
        Ok(LeaseConfig {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(lease_seconds),
            renew_deadline: Duration::from_secs(renew_seconds),
            retry_period: Duration::from_secs(retry_seconds),
        })
    }
}

/// The outcome of one try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This candidate holds the Lease (acquired or renewed).
    Leading,
    /// Another candidate holds it (its identity, when the Lease names one).
    Standby(Option<String>),
}

/// How a term of [`Elector::lead`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The work returned (after the stop signal, or on its own).
    Finished,
    /// The stop signal came and the work had not returned within
    /// [`SHUTDOWN_GRACE`]: it was dropped.
    ShutdownTimedOut,
    /// No successful renewal within the renew deadline: the work was dropped
    /// at the deadline.
    RenewDeadlinePassed,
    /// Another candidate holds the Lease (its identity, when known): the
    /// work was dropped at once.
    Taken(Option<String>),
}

impl Ended {
    /// Whether leadership was lost (rather than given up).
    pub fn lost(&self) -> bool {
        matches!(self, Ended::RenewDeadlinePassed | Ended::Taken(_))
    }
}

/// The last record seen and when it was first seen (local clock).
struct Observed {
    resource_version: Option<String>,
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    at: Instant,
}

/// One candidate for the Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
    /// When the last try that returned [`Attempt::Leading`] started: the
    /// renew deadline runs from here.
    leading_since_try: Option<Instant>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            leading_since_try: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn api_error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    /// Acquires or renews the Lease once. A write that loses a race (409)
    /// is a standby answer, not an error.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, LeaderError> {
        let started = Instant::now();
        let attempt = self.try_once().await;
        match &attempt {
            Ok(Attempt::Leading) => self.leading_since_try = Some(started),
            Ok(Attempt::Standby(_)) => self.leading_since_try = None,
            Err(_) => {}
        }
        attempt
    }

    async fn try_once(&mut self) -> Result<Attempt, LeaderError> {
        let me = self.config.identity.clone();
        let current = match self.api.get_opt(&self.config.name).await {
            Ok(current) => current,
            Err(e) => return Err(self.api_error(e)),
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(seconds(self.config.lease_duration)),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Standby(None)),
                Err(e) => Err(self.api_error(e)),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_by_other = holder.as_ref().is_some_and(|h| *h != me);
        if held_by_other {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(self.config.lease_duration);
            let seen_at = self
                .observed
                .as_ref()
                .map(|o| o.at)
                .unwrap_or_else(Instant::now);
            if seen_at.elapsed() < duration {
                return Ok(Attempt::Standby(holder));
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(seconds(self.config.lease_duration)),
            acquire_time: if holder.as_ref() == Some(&me) {
                spec.acquire_time
            } else {
                Some(now())
            },
            renew_time: Some(now()),
            lease_transitions: Some(if holder.as_ref() == Some(&me) {
                transitions
            } else {
                transitions + 1
            }),
            ..spec
        });
        // `replace` sends the resourceVersion read above: optimistic concurrency.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(Attempt::Leading)
            }
            // Lost a race: the holder read is not the winner when it was us.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                Ok(Attempt::Standby(holder.filter(|h| *h != me)))
            }
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Runs `work` while this candidate leads, renewing the Lease every retry
    /// period, after a try that returned [`Attempt::Leading`]. `work` gets a
    /// token that is cancelled on `stop`: it should then finish; it is
    /// dropped when it has not within [`SHUTDOWN_GRACE`], and at once when
    /// leadership is lost (no renewal within the renew deadline, counted from
    /// the start of the last successful try, or another holder). The Lease is
    /// renewed until the work has ended, and left held: call
    /// [`Elector::release`] after a stop.
    pub async fn lead<W, F>(&mut self, stop: &CancellationToken, work: W) -> Ended
    where
        W: FnOnce(CancellationToken) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let renew_deadline = self.config.renew_deadline;
        let retry = self.config.retry_period;
        let deadline_of =
            |since: Option<Instant>| since.map_or_else(Instant::now, |s| s + renew_deadline);
        let mut deadline = deadline_of(self.leading_since_try);
        let mut next_try = self
            .leading_since_try
            .map_or_else(Instant::now, |s| s + retry);
        let mut task = tokio::spawn(work(stop.child_token()));
        let mut shutdown_by: Option<Instant> = None;
        let mut returned = None;
        let ended = loop {
            // The work ends, at the latest, here.
            let stop_by = shutdown_by.map_or(deadline, |s| s.min(deadline));
            let ended_at = |at: Instant| {
                if at >= deadline {
                    Ended::RenewDeadlinePassed
                } else {
                    Ended::ShutdownTimedOut
                }
            };
            tokio::select! {
                biased;
                result = &mut task => {
                    returned = Some(result);
                    break Ended::Finished;
                }
                _ = tokio::time::sleep_until(stop_by) => break ended_at(stop_by),
                _ = stop.cancelled(), if shutdown_by.is_none() => {
                    shutdown_by = Some(Instant::now() + SHUTDOWN_GRACE);
                    continue;
                }
                _ = tokio::time::sleep_until(next_try) => {}
            }
            let started = Instant::now();
            // Only the time that remains: a hanging request ends at the deadline.
            let attempt = tokio::select! {
                biased;
                result = &mut task => {
                    returned = Some(result);
                    break Ended::Finished;
                }
                attempt = tokio::time::timeout_at(stop_by, self.try_acquire_or_renew()) => attempt,
            };
            match attempt {
                Ok(Ok(Attempt::Leading)) => deadline = deadline_of(self.leading_since_try),
                Ok(Ok(Attempt::Standby(holder))) => {
                    tracing::error!(holder = ?holder, "another replica holds the leader Lease");
                    break Ended::Taken(holder);
                }
                Ok(Err(error)) => tracing::warn!(
                    error = %telemetry::ErrorChain(&error),
                    left = ?deadline.saturating_duration_since(Instant::now()),
                    "renewing the leader Lease"
                ),
                Err(_) => break ended_at(stop_by),
            }
            next_try = (started + retry).max(Instant::now());
        };
        if ended == Ended::RenewDeadlinePassed {
            tracing::error!("no renewal of the leader Lease within the renew deadline");
        }
        let result = match returned {
            Some(result) => result,
            None => {
                // Dropped, not asked: nothing of it runs past this point
                // (the controller's spawned reconciles are aborted with it).
                task.abort();
                task.await
            }
        };
        if let Err(e) = result {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        ended
    }

    /// Gives the Lease up (no holder, 1 s) if this candidate still holds it.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(now()),
            ..spec
        });
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Remembers when the record last changed, on this machine's clock.
    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.as_ref();
        let holder = spec.and_then(|s| s.holder_identity.clone());
        let renew_time = spec.and_then(|s| s.renew_time.clone());
        let resource_version = lease.metadata.resource_version.clone();
        let unchanged = self.observed.as_ref().is_some_and(|o| {
            o.holder == holder
                && o.renew_time == renew_time
                && o.resource_version == resource_version
        });
        if !unchanged {
            self.observed = Some(Observed {
                resource_version,
                holder,
                renew_time,
                at: Instant::now(),
            });
        }
    }
}

/// Runs `work` while this replica holds the Lease: waits as a standby until
/// it acquires it (ready meanwhile, so that it takes over when the leader
/// goes), leads one term ([`Elector::lead`]) and, after a stop, releases the
/// Lease for a quick takeover. `metrics` shows the role. `Ok` after a stop
/// (while standby or leading); [`LeaderError::Lost`] when leadership was
/// lost, so that the process exits and restarts as a standby.
pub async fn lead<W, F>(
    client: Client,
    lease: LeaseConfig,
    metrics: &Metrics,
    stop: &CancellationToken,
    work: W,
) -> Result<(), LeaderError>
where
    W: FnOnce(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    // A standby is ready: it takes over when the leader goes.
    let mut elector = Elector::new(client, lease.clone());
    tracing::info!(
        lease = %format!("{}/{}", lease.namespace, lease.name),
        identity = %lease.identity,
        "waiting for the leader Lease"
    );
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(Attempt::Leading) => break,
            Ok(Attempt::Standby(holder)) => {
                let holder = holder.unwrap_or_else(|| "none".into());
                metrics.set_role(false, &format!("standby; leader: {holder}"));
                metrics.ready.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(error = %telemetry::ErrorChain(&error), "leader election");
                metrics.set_role(false, "standby; the Lease cannot be read");
                metrics.set_not_ready(&format!("leader election: {error}"));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(lease.retry_period) => {}
            _ = stop.cancelled() => return Ok(()),
        }
    }
    tracing::info!(identity = %lease.identity, "acquired the leader Lease; starting the controller");
    metrics.set_role(true, "leader");
    metrics.set_not_ready("leader: waiting for the PostgresWriter watch to sync");
    let ended = elector.lead(stop, work).await;
    metrics.set_role(false, "stopped");
    if ended.lost() {
        return Err(LeaderError::Lost {
            namespace: lease.namespace,
            name: lease.name,
            ended,
        });
    }
    if ended == Ended::ShutdownTimedOut {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "the controller did not stop within the grace period; dropped it");
    }
    // Released for a quick takeover by a standby.
    match elector.release().await {
        Ok(()) => tracing::info!("released the leader Lease"),
        Err(error) => tracing::warn!(error = %telemetry::ErrorChain(&error), "releasing the Lease"),
    }
    Ok(())
}

/// This process's identity: `POD_NAME` in a cluster, else host and pid.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_string());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{json, Value};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/pgw";

    /// One Lease with the API server's optimistic concurrency: a write with
    /// another resourceVersion is a 409. `interfere` makes another
    /// candidate's write land between the next read and write; `fail`
    /// answers the next requests with 500, and `hang` then never answers.
    #[derive(Default)]
    struct LeaseServer {
        lease: Mutex<Option<Value>>,
        version: Mutex<u64>,
        interfere: AtomicBool,
        fail: AtomicUsize,
        hang: AtomicBool,
        requests: AtomicUsize,
    }

    impl LeaseServer {
        fn start() -> (Client, Arc<LeaseServer>) {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let server = Arc::new(LeaseServer::default());
            let s = server.clone();
            tokio::spawn(async move {
                while let Some((request, send)) = handle.next_request().await {
                    let (status, body) = s.handle(request).await;
                    send.send_response(
                        Response::builder()
                            .status(status)
                            .body(Body::from(body.to_string().into_bytes()))
                            .unwrap(),
                    );
                }
            });
            (Client::new(service, "default"), server)
        }

        fn store(&self, mut lease: Value) -> Value {
            let mut version = self.version.lock().unwrap();
            *version += 1;
            lease["metadata"]["resourceVersion"] = json!(version.to_string());
            *self.lease.lock().unwrap() = Some(lease.clone());
            lease
        }

        fn holder(&self) -> Option<String> {
            let lease = self.lease.lock().unwrap().clone()?;
            lease["spec"]["holderIdentity"].as_str().map(str::to_string)
        }

        async fn handle(&self, request: Request<Body>) -> (u16, Value) {
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let body = request.into_body().collect_bytes().await.unwrap();
            let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "reason": "Conflict", "code": 409, "message": "conflict"});
            let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": "NotFound", "code": 404, "message": "not found"});
            self.requests.fetch_add(1, Ordering::SeqCst);
            let failing = self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                let error = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": "InternalError", "code": 500, "message": "etcd is down"});
                return (500, error);
            }
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let current = self.lease.lock().unwrap().clone();
            match (method.as_str(), path == PATH) {
                ("GET", true) => {
                    let interfere = self.interfere.swap(false, Ordering::SeqCst);
                    let Some(lease) = current else {
                        if interfere {
                            self.store(json!({"metadata": {"name": "pgw", "namespace": "ops"},
                                              "spec": {"holderIdentity": "intruder"}}));
                        }
                        return (404, not_found);
                    };
                    if interfere {
                        let mut other = lease.clone();
                        other["spec"]["holderIdentity"] = json!("intruder");
                        self.store(other);
                    }
                    (200, lease)
                }
                ("POST", false) if current.is_none() => {
                    let lease: Value = serde_json::from_slice(&body).unwrap();
                    (201, self.store(lease))
                }
                ("POST", false) => (409, conflict),
                ("PUT", true) => {
                    let lease: Value = serde_json::from_slice(&body).unwrap();
                    let stored = current.map(|c| c["metadata"]["resourceVersion"].clone());
                    if stored != Some(lease["metadata"]["resourceVersion"].clone()) {
                        return (409, conflict);
                    }
                    (200, self.store(lease))
                }
                other => panic!("unexpected request {other:?} {path}"),
            }
        }
    }

    fn elector(client: &Client, identity: &str) -> Elector {
        let config =
            LeaseConfig::new("ops".into(), "pgw".into(), identity.into(), 15, 10, 2).unwrap();
        Elector::new(client.clone(), config)
    }

    #[tokio::test]
    async fn one_leader_standbys_wait_and_a_release_hands_over() {
        let (client, server) = LeaseServer::start();
        let mut a = elector(&client, "a");
        let mut b = elector(&client, "b");
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
        assert_eq!(
            b.try_acquire_or_renew().await.unwrap(),
            Attempt::Standby(Some("a".into()))
        );
        // Renewals keep it; the standby keeps waiting (the record changes,
        // so its expiry clock restarts).
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
        assert_eq!(
            b.try_acquire_or_renew().await.unwrap(),
            Attempt::Standby(Some("a".into()))
        );
        assert_eq!(server.holder().as_deref(), Some("a"));
        // Only the holder releases.
        b.release().await.unwrap();
        assert_eq!(server.holder().as_deref(), Some("a"));
        a.release().await.unwrap();
        assert_eq!(server.holder(), None);
        assert_eq!(b.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
        let lease = server.lease.lock().unwrap().clone().unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "b");
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(
            a.try_acquire_or_renew().await.unwrap(),
            Attempt::Standby(Some("b".into()))
        );
    }

    #[tokio::test]
    async fn a_write_that_loses_the_race_is_a_standby_answer() {
        let (client, server) = LeaseServer::start();
        let mut a = elector(&client, "a");
        a.try_acquire_or_renew().await.unwrap();
        a.release().await.unwrap();
        // Another candidate writes between b's read and b's write: 409.
        let mut b = elector(&client, "b");
        server.interfere.store(true, Ordering::SeqCst);
        assert_eq!(
            b.try_acquire_or_renew().await.unwrap(),
            Attempt::Standby(None)
        );
        assert_eq!(server.holder().as_deref(), Some("intruder"));
        // Two creates at once: the second gets 409, a standby answer too.
        let (client, server) = LeaseServer::start();
        let mut c = elector(&client, "c");
        server.interfere.store(true, Ordering::SeqCst);
        assert_eq!(
            c.try_acquire_or_renew().await.unwrap(),
            Attempt::Standby(None)
        );
        assert_eq!(server.holder().as_deref(), Some("intruder"));
        // The next try sees the intruder's fresh Lease: standby, no write.
        assert_eq!(
            c.try_acquire_or_renew().await.unwrap(),
            Attempt::Standby(Some("intruder".into()))
        );
    }

    /// What the leader's work did, on the test's (paused) clock.
    #[derive(Default)]
    struct Trace {
        last_tick: Mutex<Option<Instant>>,
        ended: Mutex<Option<Instant>>,
    }

    impl Trace {
        fn last_tick(&self) -> Instant {
            self.last_tick.lock().unwrap().expect("the work ran")
        }
        fn ended(&self) -> Instant {
            self.ended.lock().unwrap().expect("the work ended")
        }
    }

    /// Records when the work ended, returned or dropped.
    struct EndGuard(Arc<Trace>);

    impl Drop for EndGuard {
        fn drop(&mut self) {
            *self.0.ended.lock().unwrap() = Some(Instant::now());
        }
    }

    /// A controller stand-in that "reconciles" every 100 ms. With
    /// `finish_in`, it takes that long to finish after its token is
    /// cancelled; without, it ignores the token (a reconcile that hangs).
    fn work(
        trace: &Arc<Trace>,
        finish_in: Option<Duration>,
    ) -> impl FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let trace = trace.clone();
        move |halt| {
            Box::pin(async move {
                let _guard = EndGuard(trace.clone());
                loop {
                    *trace.last_tick.lock().unwrap() = Some(Instant::now());
                    tokio::select! {
                        _ = halt.cancelled(), if finish_in.is_some() => {
                            tokio::time::sleep(finish_in.unwrap_or_default()).await;
                            return;
                        }
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            })
        }
    }

    fn stop_after(after: Duration) -> CancellationToken {
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            token.cancel();
        });
        stop
    }

    const RENEW_DEADLINE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn failures_then_a_hang_stop_the_work_within_the_renew_deadline() {
        let (client, server) = LeaseServer::start();
        let mut a = elector(&client, "a");
        let acquired = Instant::now();
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
        let before = server.requests.load(Ordering::SeqCst);
        // Tries at +2 s and +4 s fail, the one at +6 s never gets an answer.
        server.fail.store(2, Ordering::SeqCst);
        server.hang.store(true, Ordering::SeqCst);
        let trace = Arc::new(Trace::default());
        let ended = a.lead(&CancellationToken::new(), work(&trace, None)).await;
        assert_eq!(ended, Ended::RenewDeadlinePassed);
        assert!(ended.lost());
        // A fresh timeout for the hanging try would have ended it at +16 s,
        // after a standby may take over (+15 s).
        let deadline = acquired + RENEW_DEADLINE;
        assert!(trace.ended() <= deadline, "work dropped at the deadline");
        assert!(trace.last_tick() < deadline);
        assert!(
            trace.last_tick() >= acquired + Duration::from_secs(6),
            "failed tries alone do not end the term"
        );
        assert_eq!(server.requests.load(Ordering::SeqCst) - before, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_after_failures_keeps_leading_and_a_stop_lets_the_work_finish() {
        let (client, server) = LeaseServer::start();
        let mut a = elector(&client, "a");
        let started = Instant::now();
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
        // Tries at +2 s and +4 s fail, +6 s renews: the term goes on.
        server.fail.store(2, Ordering::SeqCst);
        let trace = Arc::new(Trace::default());
        let stop = stop_after(Duration::from_secs(30));
        let drain = Duration::from_secs(5);
        let ended = a.lead(&stop, work(&trace, Some(drain))).await;
        assert_eq!(ended, Ended::Finished);
        let stopped = started + Duration::from_secs(30);
        assert_eq!(trace.ended(), stopped + drain, "it finished on its own");
        // Renewed while draining, so nobody else could take over meanwhile.
        let lease = server.lease.lock().unwrap().clone().unwrap();
        let renewed: k8s_openapi::jiff::Timestamp = lease["spec"]["renewTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let acquired: k8s_openapi::jiff::Timestamp = lease["spec"]["acquireTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(renewed > acquired);
        assert_eq!(server.holder().as_deref(), Some("a"));
        a.release().await.unwrap();
        assert_eq!(server.holder(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_drops_work_that_does_not_finish_within_the_grace() {
        let (client, server) = LeaseServer::start();
        let mut a = elector(&client, "a");
        let started = Instant::now();
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
        let trace = Arc::new(Trace::default());
        let stop = stop_after(Duration::from_secs(3));
        let ended = a.lead(&stop, work(&trace, None)).await;
        assert_eq!(ended, Ended::ShutdownTimedOut);
        assert!(!ended.lost());
        let bound = started + Duration::from_secs(3) + SHUTDOWN_GRACE;
        assert!(trace.ended() <= bound);
        assert!(trace.last_tick() >= bound - Duration::from_millis(100));
        assert_eq!(server.holder().as_deref(), Some("a"), "still held");
    }

    #[tokio::test(start_paused = true)]
    async fn another_holder_ends_the_term_at_once() {
        let (client, server) = LeaseServer::start();
        let mut a = elector(&client, "a");
        let started = Instant::now();
        assert_eq!(a.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
        server.interfere.store(true, Ordering::SeqCst);
        let trace = Arc::new(Trace::default());
        let ended = a.lead(&CancellationToken::new(), work(&trace, None)).await;
        assert_eq!(ended, Ended::Taken(None), "the winner is not known");
        assert!(ended.lost());
        assert_eq!(trace.ended(), started + Duration::from_secs(2));
        assert_eq!(server.holder().as_deref(), Some("intruder"));
    }

    fn role(metrics: &Metrics) -> String {
        metrics.role.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_waits_ready_takes_over_a_silent_lease_and_releases_it_on_stop() {
        let (client, server) = LeaseServer::start();
        let mut b = elector(&client, "b");
        let acquired = Instant::now();
        assert_eq!(b.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
        // b never renews: a takes over once the record is 15 s old on its clock.
        let metrics = Arc::new(Metrics::new());
        let stop = stop_after(Duration::from_secs(30));
        let trace = Arc::new(Trace::default());
        let config = elector(&client, "a").config().clone();
        let candidate = {
            let (metrics, stop, trace) = (metrics.clone(), stop.clone(), trace.clone());
            tokio::spawn(async move {
                lead(
                    client,
                    config,
                    &metrics,
                    &stop,
                    work(&trace, Some(Duration::ZERO)),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(role(&metrics), "standby; leader: b");
        assert!(metrics.ready.load(Ordering::SeqCst), "a standby is ready");
        assert_eq!(metrics.leader.get(), 0);
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(role(&metrics), "leader");
        assert_eq!(metrics.leader.get(), 1);
        assert_eq!(server.holder().as_deref(), Some("a"));
        assert!(trace.last_tick() >= acquired + Duration::from_secs(15));
        candidate.await.unwrap().expect("a stop is not an error");
        assert_eq!(role(&metrics), "stopped");
        assert_eq!(trace.ended(), acquired + Duration::from_secs(30));
        assert_eq!(server.holder(), None, "released for a quick takeover");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_while_standby_leaves_the_lease_alone() {
        let (client, server) = LeaseServer::start();
        let mut b = elector(&client, "b");
        assert_eq!(b.try_acquire_or_renew().await.unwrap(), Attempt::Leading);
        let metrics = Metrics::new();
        let stop = stop_after(Duration::from_secs(5));
        let trace = Arc::new(Trace::default());
        let config = elector(&client, "a").config().clone();
        lead(client, config, &metrics, &stop, work(&trace, None))
            .await
            .expect("a stop is not an error");
        assert!(trace.last_tick.lock().unwrap().is_none(), "never led");
        assert_eq!(server.holder().as_deref(), Some("b"));
        assert_eq!(role(&metrics), "standby; leader: b");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_term_is_an_error_that_names_the_lease() {
        let (client, server) = LeaseServer::start();
        let metrics = Arc::new(Metrics::new());
        let trace = Arc::new(Trace::default());
        let config = elector(&client, "a").config().clone();
        let candidate = {
            let (metrics, trace) = (metrics.clone(), trace.clone());
            tokio::spawn(async move {
                lead(
                    client,
                    config,
                    &metrics,
                    &CancellationToken::new(),
                    work(&trace, None),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(role(&metrics), "leader");
        // Another candidate's write lands before the renewal at +2 s.
        server.interfere.store(true, Ordering::SeqCst);
        let error = candidate.await.unwrap().expect_err("lost");
        assert!(matches!(
            error,
            LeaderError::Lost {
                ended: Ended::Taken(None),
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            "lost the leader Lease ops/pgw (Taken(None)): exiting so that this replica restarts as a standby"
        );
        assert_eq!(role(&metrics), "stopped");
        assert_eq!(metrics.leader.get(), 0);
        assert_eq!(server.holder().as_deref(), Some("intruder"), "not released");
    }

    #[test]
    fn timings_must_be_ordered() {
        let ok = LeaseConfig::new("ns".into(), "l".into(), "me".into(), 15, 10, 2).unwrap();
        assert_eq!(ok.lease_duration, Duration::from_secs(15));
        for (lease, renew, retry) in [(15, 15, 2), (15, 10, 10), (10, 15, 2), (3, 2, 2)] {
            let err = LeaseConfig::new("ns".into(), "l".into(), "me".into(), lease, renew, retry)
                .unwrap_err();
            assert!(err.to_string().contains("retry period"), "{err}");
        }
    }

    #[test]
    fn default_ranges_contain_the_chart_defaults() {
        assert!(LEASE_DURATION_SECONDS.contains(&15));
        assert!(RENEW_DEADLINE_SECONDS.contains(&10));
        assert!(RETRY_PERIOD_SECONDS.contains(&2));
    }
}
