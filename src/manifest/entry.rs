//! An entry: one sealed stretch of a unit, hashed, summarised, linked, perhaps signed.

use super::*;

/// One manifest entry: a sealed stretch of a unit, chained to its sink's previous entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Format version ([`FORMAT_VERSION`]).
    pub v: u32,
    /// The pipeline that wrote the unit.
    pub pipeline: String,
    /// The sink (its `[sinks.NAME]`).
    pub sink: String,
    /// Position in the sink's chain: 1, 2, …
    pub seq: u64,
    /// The unit: the file path as the sink wrote it, or the object key.
    pub unit: String,
    /// Where the stretch starts in the unit, in bytes.
    pub offset: u64,
    /// The stretch's length in bytes.
    pub length: u64,
    /// `none`, `gzip` or `zstd`.
    pub compression: String,
    /// SHA-256 of the stretch's bytes as stored (compressed), lowercase hex.
    pub sha256: String,
    /// Events (lines) in the stretch.
    pub events: u64,
    /// Lines without a top-level string `id` (reshaped by a transform): counted, not listed.
    pub unidentified: u64,
    /// Per sandbox (`resource_id`; empty when the line has none), in order of first appearance.
    pub sandboxes: Vec<SandboxSpan>,
    /// When the entry was made (RFC 3339, UTC).
    pub sealed_at: String,
    /// The unit of the previous entry of the chain (`None` for the first), so a verifier can
    /// name what went missing.
    pub prev_unit: Option<String>,
    /// The previous entry's `hash` ([`GENESIS`] for the first).
    pub prev: String,
    /// SHA-256 of this entry's canonical JSON (see the module docs), lowercase hex.
    #[serde(default)]
    pub hash: String,
    /// HMAC-SHA256 of `hash` (as text) under the manifest key, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<String>,
}

/// One sandbox's events within a stretch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpan {
    /// The sandbox.
    pub resource_id: String,
    /// Its events in the stretch.
    pub events: u64,
    /// Its first event's id (in unit order).
    pub first_id: String,
    /// That event's cursor time as the server spelled it.
    pub first_cursor: Option<String>,
    /// Its last event's id.
    pub last_id: String,
    /// That event's cursor time.
    pub last_cursor: Option<String>,
}

impl Entry {
    /// The row the store keeps of this entry (committed with the checkpoint).
    pub fn row(&self) -> ManifestRow {
        ManifestRow {
            seq: self.seq,
            unit: self.unit.clone(),
            offset: self.offset,
            end: self.offset + self.length,
            hash: self.hash.clone(),
            line: self.to_line(),
        }
    }

    /// The bytes the entry's hash covers.
    pub fn canonical(&self) -> Vec<u8> {
        let mut bare = self.clone();
        bare.hash.clear();
        bare.hmac = None;
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec(&bare).unwrap_or_default()
    }

    /// SHA-256 of [`Entry::canonical`], lowercase hex.
    pub fn compute_hash(&self) -> String {
        hex(&Sha256::digest(self.canonical()))
    }

    /// The entry as one JSON line (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// HMAC-SHA256 of an entry hash under `key`, lowercase hex.
pub fn sign(key: &HmacKey, hash: &str) -> String {
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key.bytes()) {
        Ok(mut mac) => {
            mac.update(hash.as_bytes());
            hex(&mac.finalize().into_bytes())
        }
        // HMAC takes keys of any length.
        Err(_) => String::new(),
    }
}

/// Lowercase hex of `bytes` (`data-encoding`'s, as the S3 sink spells its own).
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}
