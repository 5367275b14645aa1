//! One way to keep a cache of Kubernetes objects, shared by the controller and the
//! speaker: watch with backoff, drop `managedFields` (most of a cached object, never read
//! here), log watch errors, and tell a callback about every event after the cache has
//! applied it.

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use tracing::warn;

/// Keeps `writer`'s cache of every `K` up to date (without managedFields: most of a cached
/// object, never read here), logs watch errors, and calls `on_event` for every event after
/// the cache has applied it. Shared by the controller and the speaker.
pub fn reflect<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    what: &'static str,
    mut on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o: &mut K| o.meta_mut().managed_fields = None)
            .reflect(writer);
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => on_event(&ev),
                Err(e) => warn!(error = %crate::Safe(&e), "{what} watch error"),
            }
        }
    })
}
