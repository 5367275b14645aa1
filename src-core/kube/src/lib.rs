//! vipvisor-kube: the Kubernetes parts. The LoadBalancer Service [`controller`] (on
//! kube-runtime's Controller, through the application layer), Lease-based leader election
//! ([`lease`]), pure decisions about one Service ([`decide`]), and the in-cluster speaker
//! ([`speaker`]: facts from Services, Nodes and EndpointSlices for the ownership loop).
//!
//! Owns: everything that reads or writes Kubernetes objects. Must not: hold IPAM rules
//! (ipam does), or build frames (l2 does).

pub mod auth;
pub mod controller;
pub mod decide;
pub mod grants;
pub mod l2status;
pub mod lease;
pub mod reflect;
pub mod speaker;

/// A client from `kubeconfig`, else the default chain ($KUBECONFIG, ~/.kube/config,
/// in-cluster). Errors name the file, never its contents: a kubeconfig holds credentials.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read kubeconfig {}: {}", path.display(), kubeconfig_error_text(&e)))?;
            let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("invalid kubeconfig {}: {}", path.display(), kubeconfig_error_text(&e)))?;
            kube::Client::try_from(config)
                .map_err(|e| format!("cannot build a Kubernetes client from {}: {}", path.display(), safe_text(&e)))
        }
        None => {
            kube::Client::try_default().await.map_err(|e| format!("no Kubernetes configuration: {}", safe_text(&e)))
        }
    }
}

/// A kubeconfig error without the file's contents: the YAML parser quotes the lines
/// around a syntax error (a token, a client key), so only the position is kept.
pub fn kubeconfig_error_text(e: &kube::config::KubeconfigError) -> String {
    use kube::config::KubeconfigError as K;
    match e {
        K::Parse(p) => match p.location() {
            Some(l) => format!(
                "invalid YAML at line {}, column {} (the text is not shown: it may hold credentials)",
                l.line(),
                l.column()
            ),
            None => "invalid YAML (the text is not shown: it may hold credentials)".into(),
        },
        K::ReadConfig(io, _) => io.to_string(),
        K::CurrentContextNotSet
        | K::KindMismatch
        | K::ApiVersionMismatch
        | K::FindPath
        | K::MissingClusterUrl
        | K::LoadContext(_)
        | K::LoadClusterOfContext(_) => e.to_string(),
        K::ParseClusterUrl(_) => "the cluster's server is not a valid URL".into(),
        K::LoadClientKey(_) => "cannot load the client key (not shown)".into(),
        K::LoadClientCertificate(_) => "cannot load the client certificate".into(),
        K::LoadCertificateAuthority(_) => "cannot load the certificate authority".into(),
        _ => "the kubeconfig is invalid (details not shown: they may quote credentials)".into(),
    }
}

/// An authentication error without credentials: a failed exec plugin's arguments and
/// output (which may carry tokens) are left out, its program and exit status kept.
pub fn auth_error_text(e: &kube::client::AuthError) -> String {
    use kube::client::AuthError as A;
    match e {
        A::AuthExecRun { cmd, out } => {
            // `cmd` is the Command's Debug form: `ENV="…" "program" "arg" …`.
            let program =
                cmd.split_whitespace().find(|t| t.starts_with('"')).map(|t| t.trim_matches('"')).unwrap_or("(unknown)");
            format!(
                "the exec credential plugin {program} failed with {} (its arguments and output are not shown)",
                out.status
            )
        }
        A::AuthExecStart(io) => format!("cannot start the exec credential plugin: {io}"),
        A::AuthExecParse(_) | A::AuthExec(_) => {
            "the exec credential plugin's answer is invalid (not shown: it may hold credentials)".into()
        }
        A::InvalidBasicAuth(_) | A::InvalidBearerToken(_) => {
            "the credentials are not valid header values (not shown)".into()
        }
        A::ReadTokenFile(io, path) => format!("cannot read the token file {}: {io}", path.display()),
        A::ParseTokenKey(_) => "the token is invalid (not shown)".into(),
        _ => e.to_string(),
    }
}

/// The text of any error from the Kubernetes client (watch and request errors included),
/// with credentials left out: the source chain is searched for authentication and
/// kubeconfig errors, which are rendered by [`auth_error_text`] and
/// [`kubeconfig_error_text`].
pub fn safe_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(a) = err.downcast_ref::<kube::client::AuthError>() {
            return format!("authentication failed: {}", auth_error_text(a));
        }
        if let Some(k) = err.downcast_ref::<kube::config::KubeconfigError>() {
            return format!("invalid kubeconfig: {}", kubeconfig_error_text(k));
        }
        cur = err.source();
    }
    e.to_string()
}

/// `Display` through [`safe_text`], for logging: `warn!(error = %Safe(&e), …)`.
#[derive(Debug)]
pub struct Safe<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&safe_text(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "vipvisor-fake-token-6b1f0c";
    const KEY: &str = "LS0tLS1CRUdJTiBGQUtFIEtFWS0tLS0t";

    #[tokio::test]
    async fn kubeconfig_errors_never_quote_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.yaml");
        let text = format!(
            "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n    token: {TOKEN}\n    client-key-data: {KEY}\n   bad: [indent\nclusters: []\n"
        );
        std::fs::write(&path, text).unwrap();
        let e = client(Some(&path)).await.err().expect("a bad kubeconfig is refused");
        assert!(!e.contains(TOKEN) && !e.contains(KEY), "{e}");
        assert!(e.contains("k.yaml") && e.contains("invalid YAML"), "{e}");
    }

    #[tokio::test]
    async fn a_failing_exec_plugin_is_named_without_its_arguments_or_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.yaml");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {{cluster: k, user: u}}\nclusters:\n- name: k\n  cluster: {{server: 'https://127.0.0.1:1'}}\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: sh\n      args: ['-c', 'echo {TOKEN}; echo {TOKEN} >&2; exit 3', '--secret={KEY}']\n      interactiveMode: Never\n"
        );
        std::fs::write(&path, text).unwrap();
        let e = client(Some(&path)).await.err().unwrap_or_default();
        assert!(!e.contains(TOKEN) && !e.contains(KEY), "{e}");
        assert!(e.contains("exec credential plugin sh failed"), "{e}");
    }
}
