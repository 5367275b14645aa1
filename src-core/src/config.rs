//! The pools file (`vipvisor apply -f pools.yaml`, and later `controller --pools`):
//! YAML → validated [`Desired`] configuration. Unknown keys are errors.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::ipam::{check_config, ConfigError};
use crate::model::{AddressBlock, InvalidValue, Labels, Pool, PoolName, PoolOptions, Reservation};
use crate::store::Desired;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Yaml { path: String, source: serde_norway::Error },
    #[error("{path}: pool {pool:?}: {source}")]
    Pool { path: String, pool: String, source: InvalidValue },
    #[error("{path}: {source}")]
    Config { path: String, source: ConfigError },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    #[serde(default)]
    pools: Vec<PoolV1>,
    #[serde(default)]
    reservations: Vec<ReservationV1>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolV1 {
    name: PoolName,
    addresses: Vec<AddressBlock>,
    #[serde(default = "yes")]
    auto_assign: bool,
    #[serde(default)]
    avoid_buggy_ips: bool,
    #[serde(default)]
    namespaces: BTreeSet<String>,
    #[serde(default)]
    namespace_selector: Labels,
    #[serde(default)]
    service_selector: Labels,
    #[serde(default)]
    priority: Option<u32>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservationV1 {
    block: AddressBlock,
    #[serde(default)]
    note: String,
}

/// Parses and validates a pools file's text. `path` is only used in messages.
pub fn parse_pools_file(path: &str, text: &str) -> Result<Desired, ConfigFileError> {
    let file: FileV1 = if text.trim().is_empty() {
        FileV1 { pools: vec![], reservations: vec![] }
    } else {
        serde_norway::from_str(text).map_err(|source| ConfigFileError::Yaml { path: path.to_owned(), source })?
    };
    let mut pools = Vec::new();
    for p in file.pools {
        let name = p.name.to_string();
        let opts = PoolOptions {
            auto_assign: p.auto_assign,
            avoid_buggy_ips: p.avoid_buggy_ips,
            namespaces: p.namespaces,
            namespace_selector: p.namespace_selector,
            service_selector: p.service_selector,
            priority: p.priority,
        };
        pools.push(Pool::new(p.name, p.addresses, opts).map_err(|source| ConfigFileError::Pool {
            path: path.to_owned(),
            pool: name,
            source,
        })?);
    }
    let reservations: Vec<Reservation> =
        file.reservations.into_iter().map(|r| Reservation { block: r.block, note: r.note }).collect();
    check_config(&pools, &reservations).map_err(|source| ConfigFileError::Config { path: path.to_owned(), source })?;
    Ok(Desired { pools, reservations })
}

/// Reads and parses a pools file.
pub fn read_pools_file(path: &str) -> Result<Desired, ConfigFileError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read { path: path.to_owned(), source })?;
    parse_pools_file(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../examples/pools.yaml");
        let d = parse_pools_file("examples/pools.yaml", text).unwrap();
        assert!(d.pools.len() >= 2, "the example shows several pools");
        assert!(!d.reservations.is_empty(), "the example shows a reservation");
    }

    #[test]
    fn errors_name_the_bad_value() {
        let cases = [
            ("pools: [{name: a, addresses: [192.0.2.0/28], auto_asign: true}]", "unknown field `auto_asign`"),
            ("pools: [{name: a, addresses: [192.0.2.5/28]}]", "192.0.2.5/28"),
            ("pools: [{name: a, addresses: []}]", "empty"),
            ("pools: [{name: A, addresses: [192.0.2.0/28]}]", "invalid pool name \"A\""),
            (
                "pools: [{name: a, addresses: [192.0.2.0/28]}, {name: b, addresses: [192.0.2.8/29]}]",
                "overlaps pool \"a\"",
            ),
            ("reservations: [{block: nope}]", "invalid address block \"nope\""),
            ("pool: []", "unknown field `pool`"),
        ];
        for (text, needle) in cases {
            let e = parse_pools_file("t.yaml", text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} gave {e:?}, which should mention {needle:?}");
        }
    }
}
