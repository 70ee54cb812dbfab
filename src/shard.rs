//! Sharding a fleet across processes: `--shard I/N` keeps the sandboxes whose rendezvous hash
//! picks shard `I` of `N`.
//!
//! Rendezvous (highest-random-weight) hashing: each sandbox goes to the shard with the highest
//! `weight(shard, id)`. Every process computes the same answer from the id alone, no
//! coordination is needed, and when `N` changes only about `1/N` of the sandboxes move (those
//! whose best shard changed), instead of most of them as with `hash % N`.
//!
//! The weight is the first 8 bytes (big-endian) of SHA-256 over the shard number (4 bytes,
//! big-endian) followed by the id's UTF-8 bytes: stable across versions and platforms, and easy
//! to reproduce elsewhere.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// One shard of `count`: `index` is 0-based (a StatefulSet's pod ordinal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: u32,
    /// How many shards share the fleet.
    pub count: u32,
}

impl Shard {
    /// The shard a sandbox belongs to among `count`.
    pub fn owner(resource_id: &str, count: u32) -> u32 {
        (0..count.max(1))
            .max_by_key(|s| (weight(*s, resource_id), *s))
            .unwrap_or(0)
    }

    /// Whether this shard follows `resource_id`.
    pub fn owns(&self, resource_id: &str) -> bool {
        Shard::owner(resource_id, self.count) == self.index
    }
}

fn weight(shard: u32, resource_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(shard.to_be_bytes());
    h.update(resource_id.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("--shard {s:?}: write I/N with 0 <= I < N, e.g. 0/3, 1/3, 2/3");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sandbox_has_exactly_one_shard_and_the_split_is_even() {
        let ids: Vec<String> = (0..3000).map(|i| format!("sb-{i}")).collect();
        let shards: Vec<Shard> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        let mut sizes = [0usize; 3];
        for id in &ids {
            let owners: Vec<u32> = shards.iter().filter(|s| s.owns(id)).map(|s| s.index).collect();
            assert_eq!(owners.len(), 1, "{id}: {owners:?}");
            sizes[owners[0] as usize] += 1;
        }
        for s in sizes {
            assert!((850..=1150).contains(&s), "{sizes:?}");
        }
    }

    #[test]
    fn growing_the_fleet_moves_only_the_sandboxes_the_new_shard_takes() {
        let ids: Vec<String> = (0..3000).map(|i| format!("sandbox-{i:05}")).collect();
        let mut moved = 0;
        for id in &ids {
            let (before, after) = (Shard::owner(id, 3), Shard::owner(id, 4));
            if before != after {
                assert_eq!(after, 3, "{id} moved between old shards");
                moved += 1;
            }
        }
        assert!((600..=900).contains(&moved), "about a quarter moves: {moved}");
    }

    #[test]
    fn the_weight_is_reproducible() {
        // sha256(00 00 00 01 || "sb-1"), first 8 bytes, checked with:
        // printf '\x00\x00\x00\x01sb-1' | sha256sum
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(r"printf '\000\000\000\001sb-1' | sha256sum")
            .output()
            .unwrap();
        let hex = String::from_utf8(out.stdout).unwrap()[..16].to_string();
        assert_eq!(format!("{:016x}", weight(1, "sb-1")), hex);
    }

    #[test]
    fn specs_parse_and_mistakes_are_named() {
        assert_eq!("2/3".parse::<Shard>().unwrap(), Shard { index: 2, count: 3 });
        for bad in ["3/3", "1", "a/b", "0/0", "-1/2"] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("write I/N"), "{bad}: {e}");
        }
    }
}
