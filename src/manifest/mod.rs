//! Tamper-evident manifests of archive units.
//!
//! Every closed stretch of an archive unit (a rotated or closed file, an uploaded object; see
//! [`auditship_sink::Sealed`]) gets an [`Entry`]: the SHA-256 of its bytes, its event count, per
//! sandbox the first and last event id and cursor time, and the hash of the sink's previous entry.
//! The entries of one sink form a hash chain: changing, removing or reordering any entry breaks
//! the link of the one after it. An entry may carry an HMAC-SHA256 of its hash under a key from
//! the environment (`[manifest] hmac_key`), so that without the key nobody can write a chain that
//! verifies, not even for the newest entry.
//!
//! Entries are built by the checkpointer when a sink reports a seal, committed in the same SQLite
//! transaction as the checkpoint that makes the bytes permanent (table `manifest`), and then
//! written next to the data by the sink's [`auditship_sink::ManifestPublisher`]. `auditship
//! verify` ([`crate::ops::verify`]) checks an archive against them.
//!
//! The entry's hash is the SHA-256 of its JSON as serialised by this module with `hash` empty
//! and `hmac` absent, fields in declaration order; a verifier re-serialises the parsed entry to
//! recompute it, so whitespace in the file does not matter but every value does.
//!
//! # Layout
//! - `entry.rs`: an [`Entry`], its hash and HMAC; `chain.rs`: a chain's end ([`ChainHead`]) and
//!   a sealed [`Stretch`] taking its place after it.
//! - `seal.rs`: what a sink's seals become (read back only where the sink did not hash as it
//!   wrote); `read.rs`: reading a unit back, hashed and summarised.
//! - `publish.rs`: writing committed entries next to the data, and digests at its root.
//! - `signing.rs`: the Ed25519 keys that sign digests (`auditship keygen` writes a pair);
//!   `digest.rs`: a period's signed digest of a sink's entries, and its checks; `cutter.rs`:
//!   when a running pipeline cuts one.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::Arc;
use std::time::Duration;

use auditship_sink::{ManifestLine, ManifestPublisher, Sealed, UnitCompression};
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::client::AuditEvent;
use crate::store::{ManifestRow, Store, StoredHead};
use crate::transform::HmacKey;

mod chain;
mod cutter;
mod digest;
mod entry;
mod publish;
mod read;
mod seal;
mod signing;

pub(crate) use chain::ChainWriter;
pub use chain::{ChainHead, Stretch};
pub(crate) use cutter::DigestCutter;
pub use cutter::{CutterError, DigestSettings};
pub use digest::{DigestEntry, DigestProblem, SignedDigest, DIGEST_FORMAT_VERSION};
pub use entry::{hex, sha256_hex, sign, Entry, SandboxSpan};
pub(crate) use publish::{publisher_task, Publish};
pub(crate) use read::Hashing;
pub use read::{read_unit, sniff, Line, Summarizer, Summary};
pub(crate) use seal::Sealer;
pub use signing::{write_key_pair, DigestPublicKey, DigestSigningKey, KeyError, SealProblem};

/// The manifest format version written in every entry.
pub const FORMAT_VERSION: u32 = 1;

/// The `prev` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, rid: &str, at: &str) -> String {
        format!(r#"{{"id":"{id}","resource_id":"{rid}","inserted_at":"{at}","action":"allow"}}"#)
    }

    #[test]
    fn summary_counts_per_sandbox_in_order_across_chunks() {
        let text = [
            line("a", "sb-1", "2026-11-25T10:00:00Z"),
            line("b", "sb-2", "2026-11-25T10:00:01Z"),
            line("c", "sb-1", "2026-11-25T10:00:02Z"),
            r#"{"class_uid":4001}"#.to_string(),
        ]
        .join("\n");
        // Cut the text at every position: the summary must not depend on where chunks end.
        for cut in 0..text.len() {
            let mut seen = Vec::new();
            let mut s = Summarizer::default();
            s.feed(Bytes::copy_from_slice(&text.as_bytes()[..cut]), |l| {
                seen.push((l.number, l.id.map(str::to_string)))
            });
            s.feed(Bytes::copy_from_slice(&text.as_bytes()[cut..]), |l| {
                seen.push((l.number, l.id.map(str::to_string)))
            });
            let s = s.finish_with(|l| seen.push((l.number, l.id.map(str::to_string))));
            assert_eq!((s.events, s.unidentified), (4, 1), "cut at {cut}");
            assert_eq!(s.sandboxes.len(), 2);
            assert_eq!(s.sandboxes[0].resource_id, "sb-1");
            assert_eq!(
                (s.sandboxes[0].first_id.as_str(), s.sandboxes[0].last_id.as_str()),
                ("a", "c")
            );
            assert_eq!(
                s.sandboxes[0].last_cursor.as_deref(),
                Some(
                    crate::client::format_time(crate::client::parse_time("2026-11-25T10:00:02Z").unwrap())
                        .as_str()
                )
            );
            assert_eq!(s.sandboxes[1].events, 1);
            assert_eq!(seen.len(), 4);
            assert_eq!(seen[3], (4, None));
        }
    }

    #[test]
    fn entries_chain_and_hashes_cover_every_field() {
        let mut head = ChainHead::default();
        let key = HmacKey::new(b"0123456789abcdef");
        let bytes = format!("{}\n", line("a", "sb-1", "2026-11-25T10:00:00Z"));
        let s = Stretch::read("a/x.ndjson", 0, bytes.as_bytes(), UnitCompression::None).unwrap();
        assert_eq!(s.sha256, sha256_hex(bytes.as_bytes()));
        assert_eq!(s.length, bytes.len() as u64);
        let first = s.clone().into_entry(&mut head, "p", "archive", Some(&key));
        let second = s.into_entry(&mut head, "p", "archive", Some(&key));
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(first.prev, GENESIS);
        assert_eq!(second.prev, first.hash);
        assert_eq!(second.prev_unit.as_deref(), Some("a/x.ndjson"));
        assert_eq!(first.compute_hash(), first.hash);
        assert_eq!(first.hmac.as_deref(), Some(sign(&key, &first.hash).as_str()));
        // Round trip through the line keeps the hash.
        let back: Entry = serde_json::from_str(&first.to_line()).unwrap();
        assert_eq!(back.compute_hash(), first.hash);
        let mut changed = back.clone();
        changed.events += 1;
        assert_ne!(changed.compute_hash(), first.hash);
        let mut changed = back;
        changed.sandboxes[0].last_id.push('x');
        assert_ne!(changed.compute_hash(), first.hash);
    }

    #[test]
    fn compressed_units_are_hashed_as_stored_and_read_member_by_member() {
        let a = line("a", "sb", "2026-11-25T10:00:00Z");
        let b = line("b", "sb", "2026-11-25T10:00:01Z");
        for (c, fc) in [
            (UnitCompression::Gzip, auditship_sink_file::Compression::Gzip),
            (UnitCompression::Zstd, auditship_sink_file::Compression::Zstd),
        ] {
            let mut bytes = Vec::new();
            for part in [&a, &b] {
                let part = Bytes::from(part.clone());
                bytes.extend(auditship_sink_file::encode_lines(fc, None, &[part]).unwrap());
            }
            assert_eq!(sniff(&bytes), c);
            let mut text = Vec::new();
            let (hash, len) = read_unit(&bytes[..], c, |chunk| text.extend_from_slice(&chunk)).unwrap();
            assert_eq!(text, format!("{a}\n{b}\n").into_bytes());
            assert_eq!((hash, len), (sha256_hex(&bytes), bytes.len() as u64));
            let s = Stretch::read("u", 0, &bytes[..], c).unwrap();
            assert_eq!(
                (s.summary.events, s.summary.sandboxes[0].last_id.as_str()),
                (2, "b")
            );
        }
    }

    /// A unit that is one endless line (a tampered archive) ends the read with an error,
    /// which `verify` reports as the stretch altered, after at most the line limit in memory:
    /// it is never read to its end.
    #[test]
    fn an_endless_line_is_an_error_not_a_read_to_exhaustion() {
        let endless = std::io::repeat(b'x');
        let mut chunks = 0;
        let e = read_unit(endless, UnitCompression::None, |_| chunks += 1).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("a line longer than"), "{e}");
        assert_eq!(chunks, 0, "no part of the line was handed on as a line");
    }
}
