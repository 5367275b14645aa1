//! Leader election among controller replicas with a `coordination.k8s.io/v1` Lease.
//!
//! Optimistic concurrency on `resourceVersion` (a 409 means someone else wrote first), a
//! `watch` channel of the current leadership, stepping down on our own before the lease
//! could expire for others when renewals fail, and a vacate on shutdown (after kubert's
//! lease.rs). Expiry is judged as client-go does: by when *this* replica last saw the
//! holder's record change, on its own monotonic clock, never by comparing the holder's
//! `renewTime` with the local wall clock (hosts' clocks differ).
//!
//! The holder also keeps a small state of its own in the Lease's annotations (the
//! controller's quarantine), written with every renewal and handed to the next holder.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};
use vipvisor_health::Beat;

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
    /// How long one lease request may take: an apiserver that accepts connections and
    /// never answers must not hold the loop past the lease (client-go's renew deadline).
    pub fn request_timeout(&self) -> Duration {
        self.duration.saturating_sub(self.renew_every).clamp(Duration::from_millis(500), Duration::from_secs(5))
    }
}

/// Annotations the holder keeps on the Lease (its own state, for the next holder).
pub type Notes = BTreeMap<String, String>;

/// How long a change of the notes waits for more before it is written.
const NOTES_SETTLE: Duration = Duration::from_millis(200);

/// Who leads, as this replica knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    pub leading: bool,
    /// Counts the terms this replica has led; a new term means "start over".
    pub term: u64,
    /// The notes the Lease carried when this term began (the previous holder's).
    pub inherited: Notes,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// What identifies one renewal of a holder's record: any change means the holder is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    renew: Option<String>,
    acquire: Option<String>,
    transitions: Option<i32>,
    duration: Option<i32>,
}

fn record(spec: &LeaseSpec) -> Record {
    Record {
        holder: spec.holder_identity.clone().unwrap_or_default(),
        renew: spec.renew_time.as_ref().map(|t| t.0.to_string()),
        acquire: spec.acquire_time.as_ref().map(|t| t.0.to_string()),
        transitions: spec.lease_transitions,
        duration: spec.lease_duration_seconds,
    }
}

/// The last record seen of another holder, and when (local monotonic time).
#[derive(Debug, Clone, Default)]
pub struct Observer {
    seen: Option<(Record, Instant)>,
}

impl Observer {
    /// Is the lease free for us to take at `now`: no holder, ours, or another holder's
    /// record unchanged for its whole duration since we first saw it so.
    pub fn claimable(&mut self, spec: &LeaseSpec, me: &str, now: Instant) -> bool {
        let rec = record(spec);
        if rec.holder.is_empty() || rec.holder == me {
            self.seen = None;
            return true;
        }
        let at = match &self.seen {
            Some((r, at)) if *r == rec => *at,
            _ => {
                self.seen = Some((rec.clone(), now));
                now
            }
        };
        let secs = u64::try_from(spec.lease_duration_seconds.unwrap_or(15).max(1)).unwrap_or(15);
        now.saturating_duration_since(at) >= Duration::from_secs(secs)
    }
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the lease; `inherited`: the notes it carried before this write.
    Held {
        inherited: Notes,
    },
    NotHeld,
}

/// One attempt to acquire or renew, writing `notes` on the Lease when we hold it.
pub async fn try_acquire(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observer: &mut Observer,
    notes: &Notes,
) -> Result<Attempt, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                annotations: Some(notes.clone()),
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
            Ok(_) => Ok(Attempt::Held { inherited: Notes::new() }),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::NotHeld),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if !observer.claimable(spec, &cfg.identity, Instant::now()) {
        return Ok(Attempt::NotHeld);
    }
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(cfg.identity.clone());
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(cfg.seconds());
    let inherited = lease.metadata.annotations.clone().unwrap_or_default();
    let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
    for (k, v) in notes {
        annotations.insert(k.clone(), v.clone());
    }
    // `replace` carries our resourceVersion: a concurrent writer makes it fail with 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Attempt::Held { inherited }),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::NotHeld),
        Err(e) => Err(e),
    }
}

/// Gives the lease up if we hold it, so a standby takes over at once; the notes stay for
/// the next holder.
pub async fn vacate(api: &Api<Lease>, cfg: &LeaseConfig, notes: &Notes) {
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
        if let Some(spec) = lease.spec.as_mut().filter(|s| s.holder_identity.as_deref() == Some(cfg.identity.as_str()))
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            let annotations = lease.metadata.annotations.get_or_insert_with(Default::default);
            for (k, v) in notes {
                annotations.insert(k.clone(), v.clone());
            }
            if let Err(e) = api.replace(&cfg.name, &PostParams::default(), &lease).await {
                warn!(error = %crate::Safe(&e), "could not vacate the lease");
            }
        }
    }
}

/// Keeps trying to hold the lease until `stop` turns true; publishes leadership on `tx`.
/// While leading, every renewal writes the current `notes`, and a change of the notes is
/// written at once.
pub async fn run(
    client: Client,
    cfg: LeaseConfig,
    tx: watch::Sender<Leadership>,
    mut notes: watch::Receiver<Notes>,
    mut stop: watch::Receiver<bool>,
    beat: Beat,
    answered: Beat,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let timeout = cfg.request_timeout();
    let mut last_renewed: Option<Instant> = None;
    let mut observer = Observer::default();
    loop {
        beat.beat();
        let current_notes = notes.borrow_and_update().clone();
        let was = tx.borrow().leading;
        let attempt = tokio::time::timeout(timeout, try_acquire(&api, &cfg, &mut observer, &current_notes)).await;
        if matches!(attempt, Ok(Ok(_)) | Ok(Err(kube::Error::Api(_)))) {
            answered.beat();
        }
        let (leader, inherited) = match attempt.unwrap_or(Err(kube::Error::Service(
            format!("the apiserver did not answer the lease request within {} ms", timeout.as_millis()).into(),
        ))) {
            Ok(Attempt::Held { inherited }) => {
                last_renewed = Some(Instant::now());
                (true, inherited)
            }
            Ok(Attempt::NotHeld) => {
                last_renewed = None;
                (false, Notes::new())
            }
            Err(e) => {
                warn!(error = %crate::Safe(&e), "lease renewal failed");
                // Step down before the lease can expire for the others.
                (last_renewed.is_some_and(|t| t.elapsed() + cfg.renew_every < cfg.duration), Notes::new())
            }
        };
        if was != leader {
            info!(identity = %cfg.identity, leader, "leadership changed");
            tx.send_modify(|l| {
                l.leading = leader;
                if leader {
                    l.term += 1;
                    l.inherited = inherited;
                }
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew_every) => {}
            r = notes.changed(), if leader => {
                // Coalesce a burst of changes (say, many releases) into one write.
                let settle = if r.is_err() { cfg.renew_every } else { NOTES_SETTLE.min(cfg.renew_every) };
                tokio::time::sleep(settle).await;
            }
            _ = stop.changed() => {
                if leader {
                    tx.send_modify(|l| l.leading = false);
                    let last = notes.borrow().clone();
                    vacate(&api, &cfg, &last).await;
                }
                beat.done();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn spec(holder: Option<&str>, renewed: Timestamp, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn who_may_claim() {
        let t = Instant::now();
        let mut o = Observer::default();
        assert!(o.claimable(&spec(None, Timestamp::now(), 15), "a", t), "a free lease");
        assert!(o.claimable(&spec(Some("a"), Timestamp::now(), 15), "a", t), "our own lease");
        let b = spec(Some("b"), Timestamp::now(), 15);
        assert!(!o.claimable(&b, "a", t), "b's lease, just seen");
        assert!(!o.claimable(&b, "a", t + Duration::from_secs(14)), "unchanged for 14 of its 15 s");
        assert!(o.claimable(&b, "a", t + Duration::from_secs(15)), "unchanged for its whole duration: expired");
    }

    /// The holder's clock runs an hour behind ours, and it renews every 2 s: comparing its
    /// renewTime with our clock (as before) calls its lease expired at once, and two
    /// replicas lead. Watching the record change on our own clock keeps it valid.
    #[test]
    fn a_holder_with_a_slow_clock_keeps_its_lease() {
        let hour = SignedDuration::from_secs(3600);
        let t = Instant::now();
        let mut o = Observer::default();
        for i in 0..20i64 {
            let renewed = Timestamp::now().checked_sub(hour).unwrap() + SignedDuration::from_secs(2 * i);
            let s = spec(Some("b"), renewed, 15);
            let at = t + Duration::from_secs(u64::try_from(2 * i).unwrap());
            assert!(!o.claimable(&s, "a", at), "b renews every 2 s; its lease is valid at {i}");
        }
    }

    /// The holder's clock runs an hour ahead and then it dies: its last renewTime lies in
    /// our future, so comparing clocks (as before) keeps the lease for an hour. Watching the
    /// record frees it one duration after it stopped changing.
    #[test]
    fn a_dead_holder_with_a_fast_clock_loses_its_lease_on_time() {
        let ahead = Timestamp::now().checked_add(SignedDuration::from_secs(3600)).unwrap();
        let s = spec(Some("b"), ahead, 15);
        let t = Instant::now();
        let mut o = Observer::default();
        assert!(!o.claimable(&s, "a", t));
        assert!(!o.claimable(&s, "a", t + Duration::from_secs(10)));
        assert!(o.claimable(&s, "a", t + Duration::from_secs(16)), "free 15 s after the last change we saw");
    }
}
