//! The provider file (`--providers FILE`): which hypervisors to talk to, and optionally
//! which VM each node is. Unknown keys are errors, and the whole file is validated before
//! anything is done. Credentials are never inline (later providers read them from a file,
//! the environment or a Kubernetes Secret).

use std::collections::BTreeSet;

use serde::Deserialize;

/// One hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: Kind,
    /// libvirt: `qemu:///system`, `qemu+ssh://host/system`, `qemu+tls://host/system`.
    pub uri: String,
    /// `vipvisor`: may put vipvisor's filter in place for IPv6 VIPs (not done by default).
    #[serde(default)]
    pub ipv6_filter: Option<Ipv6Filter>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Libvirt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Filter {
    Vipvisor,
}

/// An explicit node → VM mapping (otherwise a node is the VM of the same name).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMapping {
    pub node: String,
    pub provider: String,
    pub vm: String,
    /// The NIC that carries the VIPs (default: every NIC with a filter).
    #[serde(default)]
    pub mac: Option<vipvisor_provider::Mac>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersFile {
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub nodes: Vec<NodeMapping>,
}

/// A provider file that cannot be used, naming the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

const URI_SCHEMES: [&str; 4] = ["qemu:///", "qemu+ssh://", "qemu+tls://", "test:///"];

/// Parses and validates a provider file's text; `path` is only used in messages.
pub fn parse(path: &str, text: &str) -> Result<ProvidersFile, ConfigError> {
    let err = |message: String| ConfigError { path: path.to_owned(), message };
    let depth = vipvisor_model::config::flow_depth(text);
    if depth > vipvisor_model::limits::NESTING {
        return Err(err(format!(
            "collections nested {depth} deep; expected at most {}",
            vipvisor_model::limits::NESTING
        )));
    }
    let f: ProvidersFile = if text.trim().is_empty() {
        ProvidersFile::default()
    } else {
        serde_norway::from_str(text).map_err(|e| err(e.to_string()))?
    };
    if f.providers.is_empty() {
        return Err(err("no providers; expected at least one under `providers:`".into()));
    }
    let mut names = BTreeSet::new();
    for p in &f.providers {
        if p.name.is_empty() || p.name.len() > 63 || !p.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(err(format!("invalid provider name {:?}; expected 1 to 63 letters, digits or '-'", p.name)));
        }
        if !names.insert(p.name.as_str()) {
            return Err(err(format!("duplicate provider {:?}; expected unique names", p.name)));
        }
        if !URI_SCHEMES.iter().any(|s| p.uri.starts_with(s)) {
            return Err(err(format!(
                "provider {:?}: invalid uri {:?}; expected a libvirt URI: {}",
                p.name,
                p.uri,
                URI_SCHEMES.iter().map(|s| format!("{s}…")).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let mut nodes = BTreeSet::new();
    for n in &f.nodes {
        if !names.contains(n.provider.as_str()) {
            return Err(err(format!(
                "node {:?} names provider {:?}, which is not in the file; expected one of: {}",
                n.node,
                n.provider,
                names.iter().copied().collect::<Vec<_>>().join(", ")
            )));
        }
        if !nodes.insert(n.node.as_str()) {
            return Err(err(format!("node {:?} is mapped twice; expected one VM per node", n.node)));
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_parses_and_every_mistake_is_named() {
        let ok = "providers:\n  - name: kvm1\n    kind: libvirt\n    uri: qemu:///system\n    ipv6_filter: vipvisor\nnodes:\n  - node: n1\n    provider: kvm1\n    vm: n1-domain\n";
        let f = parse("p.yaml", ok).unwrap();
        assert_eq!(f.providers[0].ipv6_filter, Some(Ipv6Filter::Vipvisor));
        assert_eq!(f.nodes[0].vm, "n1-domain");
        let cases = [
            ("", "no providers"),
            ("providers: [{name: a, kind: libvirt, uri: qemu:///system, password: x}]", "unknown field `password`"),
            ("providers: [{name: a, kind: vmware, uri: qemu:///system}]", "unknown variant `vmware`"),
            ("providers: [{name: a, kind: libvirt, uri: 'http://h'}]", "invalid uri \"http://h\""),
            ("providers: [{name: a, kind: libvirt, uri: 'qemu:///system'}, {name: a, kind: libvirt, uri: 'qemu:///system'}]", "duplicate provider \"a\""),
            ("providers: [{name: a, kind: libvirt, uri: 'qemu:///system'}]\nnodes: [{node: n1, provider: b, vm: x}]", "names provider \"b\""),
            ("providers: [{name: 'a b', kind: libvirt, uri: 'qemu:///system'}]", "invalid provider name"),
            ("providers: [{name: a, kind: libvirt, uri: 'qemu:///system'}]\nnodes: [{node: n1, provider: a, vm: x, mac: 'zz'}]", "MAC address"),
            (&"[".repeat(1000), "nested 1000 deep"),
        ];
        for (text, needle) in cases {
            let e = parse("p.yaml", text).unwrap_err().to_string();
            assert!(e.starts_with("p.yaml: ") && e.contains(needle), "{text:.60?} gave {e:?}, expected {needle:?}");
        }
    }
}
