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

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// `leaseDurationSeconds`: how long a silent holder keeps the Lease.
pub const LEASE_DURATION_SECONDS: RangeInclusive<u64> = 2..=300;
/// How long the leader keeps leading without a successful renewal.
pub const RENEW_DEADLINE_SECONDS: RangeInclusive<u64> = 1..=299;
/// Time between two tries (renewals of the leader, attempts of a standby).
pub const RETRY_PERIOD_SECONDS: RangeInclusive<u64> = 1..=60;

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
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Standby(holder)),
            Err(e) => Err(self.api_error(e)),
        }
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
