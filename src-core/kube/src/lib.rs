//! vipvisor-kube: the Kubernetes parts. The LoadBalancer Service [`controller`] (on
//! kube-runtime's Controller, through the application layer), Lease-based leader election
//! ([`lease`]), pure decisions about one Service ([`decide`]), and the in-cluster speaker
//! ([`speaker`]: facts from Services, Nodes and EndpointSlices for the ownership loop).
//!
//! Owns: everything that reads or writes Kubernetes objects. Must not: hold IPAM rules
//! (ipam does), or build frames (l2 does).

pub mod controller;
pub mod decide;
pub mod lease;
pub mod reflect;
pub mod speaker;

/// A client from `kubeconfig`, else the default chain ($KUBECONFIG, ~/.kube/config,
/// in-cluster). Errors name the file, never its contents: a kubeconfig holds credentials.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("invalid kubeconfig {}: {e}", path.display()))?;
            kube::Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))
        }
        None => kube::Client::try_default().await.map_err(|e| format!("no Kubernetes configuration: {e}")),
    }
}
