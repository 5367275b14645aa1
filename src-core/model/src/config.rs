//! The configuration: pools and reservations, as a whole ([`Config`]), and its YAML form,
//! the pools file (`vipvisor apply -f pools.yaml`, `controller --pools`). Unknown keys are
//! errors; a configuration is validated whole ([`check_config`]) before anyone writes it.
//! Reading the file is the caller's business: this module parses text.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{limits, special_use, AddressBlock, AddressRange, InvalidValue, Pool, PoolName, Reservation};

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
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
}

/// Checks a whole configuration: unique names, no block shared by two pools (or twice in
/// one, which [`Pool::new`] already refuses), no overlapping reservations. O(n log n).
pub fn check_config(pools: &[Pool], reservations: &[Reservation]) -> Result<(), ConfigError> {
    check_sizes(pools, reservations)?;
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

/// The input limits ([`limits`]) and the addresses that can never be VIPs ([`special_use`]).
fn check_sizes(pools: &[Pool], reservations: &[Reservation]) -> Result<(), InvalidValue> {
    if pools.len() > limits::POOLS {
        return Err(InvalidValue::new(
            "configuration",
            format!("{} pools", pools.len()),
            format!("at most {} pools", limits::POOLS),
        ));
    }
    if reservations.len() > limits::RESERVATIONS {
        return Err(InvalidValue::new(
            "configuration",
            format!("{} reservations", reservations.len()),
            format!("at most {} reservations", limits::RESERVATIONS),
        ));
    }
    for p in pools {
        if p.addresses.len() > limits::BLOCKS_PER_POOL {
            return Err(InvalidValue::new(
                "pool",
                p.name.as_str(),
                format!("at most {} address blocks (merge adjacent ones into ranges)", limits::BLOCKS_PER_POOL),
            )
            .because(format!("it has {} blocks", p.addresses.len())));
        }
        if p.options.namespaces.len() > limits::NAMESPACES_PER_POOL {
            return Err(InvalidValue::new(
                "pool",
                p.name.as_str(),
                format!("at most {} namespaces", limits::NAMESPACES_PER_POOL),
            )
            .because(format!("it names {} namespaces", p.options.namespaces.len())));
        }
        for b in &p.addresses {
            if let Some(why) = special_use(b) {
                return Err(InvalidValue::new("address block", b.to_string(), "addresses a host can answer as a VIP")
                    .because(format!("pool {:?}: it holds {why}", p.name.as_str())));
            }
        }
    }
    for r in reservations {
        if let Some(why) = special_use(&r.block) {
            return Err(InvalidValue::new("reservation", r.block.to_string(), "addresses a pool could hold")
                .because(format!("it holds {why}, which no pool may hold")));
        }
        check_note(&r.note)?;
    }
    Ok(())
}

/// A reservation's note: at most [`limits::NOTE_BYTES`] bytes.
pub fn check_note(note: &str) -> Result<(), InvalidValue> {
    if note.len() > limits::NOTE_BYTES {
        let shown: String = note.chars().take(32).collect();
        return Err(InvalidValue::new("note", format!("{shown}…"), format!("at most {} bytes", limits::NOTE_BYTES))
            .because(format!("it has {} bytes", note.len())));
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
    #[error("{path}: collections nested {depth} deep; expected at most {} levels", limits::NESTING)]
    TooDeep { path: String, depth: usize },
}

/// The deepest nesting of flow collections (`[`, `{`) in YAML text, outside quotes and
/// comments: one pass, so hostile nesting is refused before the parser sees it.
pub fn flow_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut prev = ' ';
    for c in text.chars() {
        match (quote, c) {
            _ if comment => comment = c != '\n',
            (Some('"'), '\\') if prev == '\\' => {
                prev = ' ';
                continue;
            }
            (Some(q), c) if c == q && !(q == '"' && prev == '\\') => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if prev.is_whitespace() => comment = true,
            (None, '[' | '{') => {
                depth += 1;
                max = max.max(depth);
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    max
}

/// Parses and validates a pools file's text. `path` is only used in messages.
pub fn parse_pools_file(path: &str, text: &str) -> Result<Config, ConfigFileError> {
    let depth = flow_depth(text);
    if depth > limits::NESTING {
        return Err(ConfigFileError::TooDeep { path: path.to_owned(), depth });
    }
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
