//! Leader election among controller replicas with a `coordination.k8s.io/v1` Lease.
//!
//! Optimistic concurrency on `resourceVersion` (a 409 means someone else wrote first), a
//! `watch` channel of "am I the leader", stepping down on our own before the lease could
//! expire for others when renewals fail, and a vacate on shutdown (after kubert's lease.rs).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub duration: Duration,
    /// How often the holder renews, and others retry.
    pub renew_every: Duration,
}

impl LeaseConfig {
    fn seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Is the lease free for us to take: no holder, ours, or expired.
fn claimable(spec: &LeaseSpec, me: &str, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == me {
        return true;
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(t) => t.0.as_second().saturating_add(secs) < now.as_second(),
        None => true,
    }
}

/// One attempt to acquire or renew. `Ok(true)`: we hold the lease now.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(cfg.seconds()),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if !claimable(spec, &cfg.identity, Timestamp::now()) {
        return Ok(false);
    }
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(cfg.identity.clone());
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(cfg.seconds());
    // `replace` carries our resourceVersion: a concurrent writer makes it fail with 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up if we hold it, so a standby takes over at once.
pub async fn vacate(api: &Api<Lease>, cfg: &LeaseConfig) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
        if let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(cfg.identity.as_str()))
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            if let Err(e) = api.replace(&cfg.name, &PostParams::default(), &lease).await {
                warn!(error = %e, "could not vacate the lease");
            }
        }
    }
}

/// Keeps trying to hold the lease until `stop` turns true; publishes leadership on `tx`.
pub async fn run(client: Client, cfg: LeaseConfig, tx: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        let leader = match try_acquire(&api, &cfg).await {
            Ok(true) => {
                last_renewed = Some(tokio::time::Instant::now());
                true
            }
            Ok(false) => {
                last_renewed = None;
                false
            }
            Err(e) => {
                warn!(error = %e, "lease renewal failed");
                // Step down before the lease can expire for the others.
                last_renewed.is_some_and(|t| t.elapsed() + cfg.renew_every < cfg.duration)
            }
        };
        if *tx.borrow() != leader {
            info!(identity = %cfg.identity, leader, "leadership changed");
            let _ = tx.send(leader);
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew_every) => {}
            _ = stop.changed() => {
                if leader {
                    let _ = tx.send(false);
                    vacate(&api, &cfg).await;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let t = Timestamp::now().checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(renewed_secs_ago)).unwrap();
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(t)),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn who_may_claim() {
        let now = Timestamp::now();
        assert!(claimable(&spec(None, 0, 15), "a", now), "a free lease");
        assert!(claimable(&spec(Some("a"), 0, 15), "a", now), "our own lease");
        assert!(!claimable(&spec(Some("b"), 5, 15), "a", now), "b's fresh lease");
        assert!(claimable(&spec(Some("b"), 20, 15), "a", now), "b's expired lease");
    }
}
