//! [`ParquetLayout`]: a Security Lake custom source's objects. Each event is checked against
//! its class's schema when it arrives ([`crate::schema::check`]; so one event that does not fit
//! is dead-lettered alone, and sealing an object cannot fail), kept as JSON (`unmapped` values
//! as text), and written with the rest of its object as one Parquet file (zstd) under
//! `ext/SOURCE/region=REGION/accountId=ACCOUNT/eventDay=YYYYMMDD/`.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_json::ReaderBuilder;
use arrow_schema::SchemaRef;
use auditship_sink::{Event, UnitCompression};
use auditship_sink_s3::ObjectLayout;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{WriterProperties, WriterVersion};
use serde_json::Value;

/// The directory under the source's location that holds auditship's manifest entries and
/// digests: outside the partitions Security Lake's crawler and Athena read, and named with a
/// leading `_`, which Hive, Glue and Athena take as hidden.
pub use auditship_sink::MIRROR_DIR as OWN_DIR;

/// Rows decoded per Arrow batch while encoding.
const BATCH_ROWS: usize = 8192;

/// A custom source's objects: one OCSF class, Parquet, Security Lake's partitions.
#[derive(Debug)]
pub struct ParquetLayout {
    class_uid: u32,
    schema: SchemaRef,
    /// The source's location in the bucket (`ext/SOURCE/`, ending in `/`).
    root: String,
    /// `region=REGION/accountId=ACCOUNT/`.
    partition: String,
    zstd_level: i32,
}

impl ParquetLayout {
    /// The layout of the source at `root` (`ext/SOURCE/`) for OCSF class `class_uid`, in
    /// `region` and `account_id`'s partitions.
    pub fn new(
        class_uid: u32,
        root: &str,
        region: &str,
        account_id: &str,
        zstd_level: i32,
    ) -> Result<Self, String> {
        let schema = crate::schema::schema_for(class_uid).ok_or_else(|| {
            format!(
                "class_uid {class_uid}: no Parquet schema for that OCSF class (this sink writes {})",
                crate::schema::CLASSES
                    .iter()
                    .map(|(u, n)| format!("{u} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let mut root = root.trim_start_matches('/').to_string();
        if !root.is_empty() && !root.ends_with('/') {
            root.push('/');
        }
        Ok(ParquetLayout {
            class_uid,
            schema,
            root,
            partition: format!("region={region}/accountId={account_id}/"),
            zstd_level,
        })
    }

    fn decoder(&self) -> Result<arrow_json::reader::Decoder, String> {
        ReaderBuilder::new(self.schema.clone())
            .with_strict_mode(true)
            .with_batch_size(BATCH_ROWS)
            .build_decoder()
            .map_err(|e| e.to_string())
    }

    /// The Parquet file of `events` (normalised JSON, each fitting the schema).
    pub fn parquet(&self, events: &[bytes::Bytes]) -> Result<Vec<u8>, String> {
        let props = WriterProperties::builder()
            // Version 1 pages: what every reader (Athena's Hive and Trino, Spark, older Glue)
            // takes.
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(self.zstd_level).map_err(|e| e.to_string())?,
            ))
            .set_created_by(format!("auditship {}", env!("CARGO_PKG_VERSION")))
            .build();
        let mut out =
            ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(props)).map_err(|e| e.to_string())?;
        let mut d = self.decoder()?;
        let write = |batch: Option<RecordBatch>, out: &mut ArrowWriter<Vec<u8>>| -> Result<(), String> {
            match batch {
                Some(b) => out.write(&b).map_err(|e| e.to_string()),
                None => Ok(()),
            }
        };
        for e in events {
            let mut rest: &[u8] = e;
            while !rest.is_empty() {
                let n = d.decode(rest).map_err(|e| e.to_string())?;
                rest = &rest[n..];
                if !rest.is_empty() || d.len() >= BATCH_ROWS {
                    write(d.flush().map_err(|e| e.to_string())?, &mut out)?;
                }
            }
        }
        write(d.flush().map_err(|e| e.to_string())?, &mut out)?;
        out.into_inner().map_err(|e| e.to_string())
    }
}

impl ObjectLayout for ParquetLayout {
    fn admit(&self, e: &Event) -> Result<(String, bytes::Bytes), String> {
        let mut v: Value = serde_json::from_slice(&e.raw)
            .map_err(|err| format!("not JSON ({err}); the security_lake sink takes OCSF events"))?;
        let Some(obj) = v.as_object_mut() else {
            return Err("not a JSON object; the security_lake sink takes OCSF events".into());
        };
        match obj.get("class_uid").and_then(Value::as_u64) {
            Some(c) if c == u64::from(self.class_uid) => {}
            Some(c) => {
                return Err(format!(
                    "an OCSF class {c} event, but this custom source takes class {} only (Security Lake keeps one class per source): give class {c} a security_lake sink of its own, and keep it from this one with a filter after ocsf, {{ type = \"filter\", when = {{ class_uid = {} }} }}",
                    self.class_uid, self.class_uid
                ))
            }
            None => {
                return Err(
                    "no class_uid: not an OCSF event (add transforms = [\"ocsf\"] to the sink)".into(),
                )
            }
        }
        let day = obj
            .get("time")
            .and_then(Value::as_i64)
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y%m%d").to_string())
            .ok_or("no `time` (ms since the epoch): OCSF requires one, and eventDay is its day")?;
        let changed = unmapped_as_text(obj);
        crate::schema::check(&self.schema, obj).map_err(|why| {
            format!(
                "does not fit the Parquet schema of OCSF class {}: {why}; nothing of it was written",
                self.class_uid
            )
        })?;
        // The event's own text when nothing was rewritten: no second serialisation.
        let text = if changed {
            bytes::Bytes::from(serde_json::to_vec(&v).map_err(|err| err.to_string())?)
        } else {
            e.raw.clone()
        };
        Ok((format!("{}{}eventDay={day}/", self.root, self.partition), text))
    }

    fn encode(&self, kept: &[bytes::Bytes], _size: u64) -> std::io::Result<bytes::Bytes> {
        self.parquet(kept)
            .map(bytes::Bytes::from)
            .map_err(|e| std::io::Error::other(format!("writing Parquet: {e}")))
    }

    fn extension(&self) -> &'static str {
        ".parquet"
    }

    fn content_type(&self) -> &'static str {
        "application/vnd.apache.parquet"
    }

    fn unit(&self) -> UnitCompression {
        UnitCompression::Parquet
    }

    fn ids_in_body(&self) -> bool {
        // metadata.uid is the event id, unless a transform redacted it.
        false
    }

    fn event_ids(&self, key: &str, body: &[u8]) -> Result<Vec<Arc<str>>, String> {
        uids(body).map_err(|e| format!("{key}: {e}"))
    }

    fn stored_id(&self, kept: &[u8]) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Stored {
            metadata: Metadata,
        }
        #[derive(serde::Deserialize)]
        struct Metadata {
            uid: Option<String>,
        }
        serde_json::from_slice::<Stored>(kept).ok()?.metadata.uid
    }

    fn manifest_key(&self, unit: &str, pipeline: &str, sink: &str, seq: u64) -> String {
        // Beside the unit, mirrored under OWN_DIR: `verify` maps it back.
        let rel = unit.strip_prefix(&self.root).unwrap_or(unit);
        let mirrored = format!("{}{OWN_DIR}/{rel}", self.root);
        auditship_sink_s3::manifest_key(&mirrored, pipeline, sink, seq)
    }

    fn digest_key(&self, name: &str) -> String {
        format!("{}{OWN_DIR}/{}/{name}", self.root, auditship_sink::DIGEST_DIR)
    }
}

/// `unmapped`'s values as the schema holds them: text as it is, anything else as its JSON text.
/// Whether anything changed.
pub(crate) fn unmapped_as_text(event: &mut serde_json::Map<String, Value>) -> bool {
    let mut changed = false;
    if let Some(Value::Object(u)) = event.get_mut("unmapped") {
        for value in u.values_mut() {
            if !(value.is_string() || value.is_null()) {
                *value = Value::String(value.to_string());
                changed = true;
            }
        }
    }
    changed
}

/// The `metadata.uid` of every row of a Parquet file this sink wrote.
pub fn uids(body: &[u8]) -> Result<Vec<Arc<str>>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(body))
        .and_then(|b| b.build())
        .map_err(|e| format!("not a readable Parquet file: {e}"))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let metadata = batch
            .column_by_name("metadata")
            .and_then(|c| c.as_struct_opt())
            .ok_or("no metadata column")?;
        let uid = metadata
            .column_by_name("uid")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or("no metadata.uid column")?;
        for i in 0..uid.len() {
            if uid.is_valid(i) {
                out.push(Arc::from(uid.value(i)));
            }
        }
    }
    Ok(out)
}
