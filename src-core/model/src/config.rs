//! The configuration: pools and reservations, as a whole ([`Config`]), and its YAML form,
//! the pools file (`vipvisor apply -f pools.yaml`, `controller --pools`). Unknown keys are
//! errors; a configuration is validated whole ([`check_config`]) before anyone writes it.
//! Reading the file is the caller's business: this module parses text.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{AddressBlock, AddressRange, Pool, PoolName, Reservation};

/// Pools and reservations: what a pools file holds, and what the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub pools: Vec<Pool>,
    #[serde(default)]
    pub reservations: Vec<Reservation>,
}

/// A configuration error: overlapping pools or reservations, or a name used twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "pool {pool:?} block {block} overlaps pool {other:?} block {other_block}; expected pools that do not overlap"
    )]
    PoolOverlap { pool: PoolName, block: AddressBlock, other: PoolName, other_block: AddressBlock },
    #[error("reservation {block} overlaps reservation {other}; expected reservations that do not overlap")]
    ReservationOverlap { block: AddressBlock, other: AddressBlock },
    #[error("duplicate pool {0:?}; expected unique names")]
    DuplicatePool(PoolName),
}

/// Checks a whole configuration: unique names, no block shared by two pools (or twice in
/// one, which [`Pool::new`] already refuses), no overlapping reservations. O(n log n).
pub fn check_config(pools: &[Pool], reservations: &[Reservation]) -> Result<(), ConfigError> {
    let mut names = BTreeSet::new();
    let mut blocks: Vec<(AddressRange, &Pool, &AddressBlock)> = Vec::new();
    for p in pools {
        if !names.insert(&p.name) {
            return Err(ConfigError::DuplicatePool(p.name.clone()));
        }
        blocks.extend(p.addresses.iter().map(|b| (b.range(), p, b)));
    }
    blocks.sort_by_key(|(r, _, _)| (r.family(), r.first_raw()));
    for w in blocks.windows(2) {
        let ((r1, p1, b1), (r2, p2, b2)) = (&w[0], &w[1]);
        if r1.overlaps(r2) {
            return Err(ConfigError::PoolOverlap {
                pool: p2.name.clone(),
                block: **b2,
                other: p1.name.clone(),
                other_block: **b1,
            });
        }
    }
    let mut res: Vec<&Reservation> = reservations.iter().collect();
    res.sort_by_key(|r| (r.block.family(), r.block.range().first_raw()));
    for w in res.windows(2) {
        if w[0].block.range().overlaps(&w[1].block.range()) {
            return Err(ConfigError::ReservationOverlap { block: w[1].block, other: w[0].block });
        }
    }
    Ok(())
}

impl Config {
    /// Checks the configuration as a whole ([`check_config`]).
    pub fn check(&self) -> Result<(), ConfigError> {
        check_config(&self.pools, &self.reservations)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{path}: {source}")]
    Yaml { path: String, source: serde_norway::Error },
    #[error("{path}: {source}")]
    Config { path: String, source: ConfigError },
}

/// Parses and validates a pools file's text. `path` is only used in messages.
pub fn parse_pools_file(path: &str, text: &str) -> Result<Config, ConfigFileError> {
    let config: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        serde_norway::from_str(text).map_err(|source| ConfigFileError::Yaml { path: path.to_owned(), source })?
    };
    config.check().map_err(|source| ConfigFileError::Config { path: path.to_owned(), source })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolOptions;

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../examples/pools.yaml");
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
            ("pools: [{addresses: [192.0.2.0/28]}]", "missing field `name`"),
            ("pools: [{name: a, addresses: [192.0.2.0/28], priority: -1}]", "pool \"a\""),
        ];
        for (text, needle) in cases {
            let e = parse_pools_file("t.yaml", text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} gave {e:?}, which should mention {needle:?}");
        }
    }

    #[test]
    fn a_pool_reads_and_writes_one_shape() {
        let text = "name: lab\naddresses: [198.51.100.10-198.51.100.20]\nauto_assign: false\npriority: 3\n";
        let p: Pool = serde_norway::from_str(text).unwrap();
        assert_eq!(p.options, PoolOptions { auto_assign: false, priority: Some(3), ..PoolOptions::default() });
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["name"], "lab");
        assert_eq!(json["auto_assign"], false, "options are flattened into the pool: {json}");
        let back: Pool = serde_json::from_value(json).unwrap();
        assert_eq!(back, p, "JSON round-trips to the same pool");
    }

    #[test]
    fn overlaps_are_found() {
        let pool = |n: &str, b: &[&str]| {
            Pool::new(n.parse().unwrap(), b.iter().map(|b| b.parse().unwrap()).collect(), PoolOptions::default())
                .unwrap()
        };
        let a = pool("a", &["192.0.2.0/28"]);
        let b = pool("b", &["192.0.2.8-192.0.2.30"]);
        let e = check_config(&[a.clone(), b], &[]).unwrap_err();
        assert!(e.to_string().contains("overlaps pool \"a\""), "{e}");
        let c = pool("c", &["192.0.2.16/28", "2001:db8::/64"]);
        check_config(&[a.clone(), c], &[]).unwrap();
        assert!(matches!(check_config(&[a.clone(), a], &[]), Err(ConfigError::DuplicatePool(_))));
    }
}
