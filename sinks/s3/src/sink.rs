//! [`S3Sink`]: events gathered per object, staged and uploaded under a recorded key (the upload
//! in `upload.rs`, the recovery after a crash in `recover.rs`).

use super::*;

/// Events gathered for one object.
pub(crate) struct Buffer {
    /// The events' raw bytes, shared with the pipeline's batches (no copy until sealing).
    pub(crate) lines: Vec<bytes::Bytes>,
    /// Uncompressed size, newlines included.
    pub(crate) bytes: u64,
    pub(crate) ids: Vec<Arc<str>>,
    /// The events by sandbox, for the manifest.
    pub(crate) spans: Spans,
    pub(crate) events: usize,
    pub(crate) first_batch: u64,
    pub(crate) first_time_us: i64,
    pub(crate) opened_at: Instant,
}

/// An object whose events the pipeline has not yet checkpointed: its ids are recognised if they
/// come again, and its pending entry is deleted once they are checkpointed.
pub(crate) struct Held {
    pub(crate) key: String,
    /// Ids not yet seen again in this run (recovered objects only).
    pub(crate) unseen: usize,
    /// The last batch (this run) holding one of its events.
    pub(crate) last_batch: u64,
    pub(crate) staging: PathBuf,
}

/// The S3 sink. See the crate documentation for its guarantees.
pub struct S3Sink {
    pub(crate) config: S3SinkConfig,
    pub(crate) layout: Arc<dyn ObjectLayout>,
    pub(crate) ctx: SinkContext,
    pub(crate) client: Option<aws_sdk_s3::Client>,
    pub(crate) staging: PathBuf,
    pub(crate) run_id: String,
    pub(crate) counter: u64,
    pub(crate) buffers: HashMap<String, Buffer>,
    pub(crate) written_through: u64,
    pub(crate) held: Vec<Held>,
    /// Event id → index in `held`, and whether it was seen in this run. Ids an object stores
    /// in place of its events' (read from a recovered body) are keyed [`STORED`] + that id.
    pub(crate) known: HashMap<Arc<str>, (usize, bool)>,
    /// Whether `known` holds stored ids (events are then also looked up by theirs).
    pub(crate) stored_known: bool,
    /// Deletions waiting for the checkpoint to pass their objects.
    pub(crate) released: Vec<StateEntry>,
    /// Objects uploaded (or put in place after a crash) not yet handed to the manifest.
    pub(crate) sealed: Vec<Sealed>,
}

pub(crate) const PENDING: &str = "pending:";

/// The key prefix, in `known`, of an id as an object stores it (not an event id).
pub(crate) const STORED: &str = "\u{0}stored:";

/// What an upload failure means.
pub(crate) enum Failure {
    Retry(String),
    Stop(String),
    /// A create-only write found an object under the key (412): whether it is ours is
    /// [`S3Sink::upload`]'s to find out.
    Exists,
}

impl S3Sink {
    /// Build the sink (no network traffic until [`Sink::prepare`]). `default_staging` is used
    /// when the configuration names no staging directory.
    pub fn open(config: S3SinkConfig, ctx: SinkContext, default_staging: PathBuf) -> Result<Self, SinkError> {
        let layout = NdjsonLayout::new(&config, &ctx.pipeline)
            .map_err(|m| SinkError::Config(format!("sinks.{}: {m}", ctx.sink)))?;
        Self::with_layout(config, Arc::new(layout), ctx, default_staging)
    }

    /// [`S3Sink::open`] with objects laid out by `layout` instead of the configuration's
    /// NDJSON (the Security Lake sink's Parquet); `config.key_prefix` and `config.compression`
    /// are then unused.
    pub fn with_layout(
        config: S3SinkConfig,
        layout: Arc<dyn ObjectLayout>,
        ctx: SinkContext,
        default_staging: PathBuf,
    ) -> Result<Self, SinkError> {
        config
            .validate()
            .map_err(|m| SinkError::Config(format!("sinks.{}: {m}", ctx.sink)))?;
        let staging = config
            .staging_dir
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or(default_staging);
        auditship_sink::create_dir_all_durable(&staging, 0o750)
            .map_err(|e| SinkError::io(format!("creating staging directory {}", staging.display()), e))?;
        let seed = format!(
            "{}:{}:{}:{:?}",
            ctx.pipeline,
            ctx.sink,
            std::process::id(),
            std::time::SystemTime::now()
        );
        let run_id = hex(&Sha256::digest(seed.as_bytes())[..4]);
        Ok(S3Sink {
            config,
            layout,
            ctx,
            client: None,
            staging,
            run_id,
            counter: 0,
            buffers: HashMap::new(),
            written_through: 0,
            held: Vec::new(),
            known: HashMap::new(),
            stored_known: false,
            released: Vec::new(),
            sealed: Vec::new(),
        })
    }

    pub(crate) fn name(&self) -> String {
        format!("sinks.{}", self.ctx.sink)
    }

    pub(crate) fn client(&self) -> Result<&aws_sdk_s3::Client, SinkError> {
        self.client
            .as_ref()
            .ok_or_else(|| SinkError::Config(format!("{}: not prepared", self.name())))
    }

    pub(crate) async fn connect(&mut self) {
        let c = &self.config;
        let attempt = Duration::from_millis(c.request_timeout_ms);
        self.client = Some(
            connect(
                c.region.as_deref(),
                c.endpoint.as_deref(),
                c.force_path_style,
                Some(attempt),
            )
            .await,
        );
    }

    pub(crate) fn staging_path(&self, key: &str) -> PathBuf {
        self.staging
            .join(format!("{}.obj", hex(&Sha256::digest(key.as_bytes())[..16])))
    }

    pub(crate) fn due(&self, b: &Buffer) -> bool {
        b.events >= self.config.batch_max_events
            || b.bytes >= self.config.batch_max_bytes
            || b.opened_at.elapsed() >= Duration::from_millis(self.config.batch_timeout_ms)
    }

    /// Seal, stage, register and upload one buffer; its events are then durable.
    pub(crate) async fn ship(&mut self, prefix: &str, buffer: &Buffer) -> Result<(), SinkError> {
        let time = chrono::DateTime::from_timestamp_micros(buffer.first_time_us)
            .map(|d| d.format("%Y%m%dT%H%M%S%.6fZ").to_string())
            .unwrap_or_else(|| "00000000T000000.000000Z".into());
        self.counter += 1;
        let key = format!(
            "{prefix}{time}-{}-{:06}{}",
            self.run_id,
            self.counter,
            self.layout.extension()
        );
        let staging = self.staging_path(&key);
        // Compressing megabytes and fsync'ing them are blocking work: off the async workers.
        let (layout, lines, size, path) = (
            self.layout.clone(),
            buffer.lines.clone(),
            buffer.bytes,
            staging.clone(),
        );
        // A layout whose bodies do not hold the event ids keeps them beside the staged object,
        // durably before the object is registered, for the recovery after a crash.
        let ids_file = (!self.layout.ids_in_body()).then(|| ids_path(&staging));
        let ids_text = ids_file.as_ref().map(|_| {
            let mut t = String::with_capacity(buffer.ids.len() * 24);
            for id in &buffer.ids {
                t.push_str(id);
                t.push('\n');
            }
            t
        });
        let name = self.name();
        // The body's SHA-256 is taken once, here: the upload's checksum and the manifest use it.
        let (body, sha256) =
            tokio::task::spawn_blocking(move || -> Result<(bytes::Bytes, [u8; 32]), SinkError> {
                let body = layout
                    .encode(&lines, size)
                    .map_err(|e| SinkError::io(format!("{name}: encoding an object"), e))?;
                if let (Some(f), Some(t)) = (&ids_file, &ids_text) {
                    stage(f, t.as_bytes())
                        .map_err(|e| SinkError::io(format!("{name}: writing {}", f.display()), e))?;
                }
                stage(&path, &body)
                    .map_err(|e| SinkError::io(format!("{name}: writing {}", path.display()), e))?;
                let sha256: [u8; 32] = Sha256::digest(&body).into();
                Ok((body, sha256))
            })
            .await
            .map_err(|e| SinkError::io("staging", std::io::Error::other(e.to_string())))??;
        let entry = StateEntry {
            key: format!("{PENDING}{key}"),
            value: chrono::Utc::now().timestamp_micros(),
        };
        if let Err(e) = self.ctx.registry.register(vec![entry]).await {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
        let newest_us = buffer.spans.spans.iter().filter_map(|s| s.last_cursor_us).max();
        self.upload_until_done(&key, body.clone(), &sha256, newest_us)
            .await?;
        // What the object holds is known: the manifest needs neither its bytes nor a read-back.
        let precomputed = Precomputed {
            start: 0,
            sha256,
            events: buffer.spans.events,
            sandboxes: buffer.spans.spans.clone(),
        };
        self.sealed.push(Sealed {
            unit: key.clone(),
            end: body.len() as u64,
            compression: self.layout.unit(),
            // Kept for the read-back the pipeline falls back to if the precomputed part does
            // not fit (it always starts at 0 for a new key).
            content: Some(body),
            precomputed: Some(precomputed),
        });
        let idx = self.held.len();
        for id in &buffer.ids {
            self.known.insert(id.clone(), (idx, true));
        }
        self.held.push(Held {
            key,
            unseen: 0,
            // An upper bound: the object holds nothing written after this batch.
            last_batch: self.written_through,
            staging,
        });
        Ok(())
    }

    /// Ship the buffer of `prefix`; on failure it stays (a reset then drops it, and the pipeline
    /// writes its batches again).
    pub(crate) async fn ship_buffer(&mut self, prefix: String) -> Result<(), SinkError> {
        let Some(b) = self.buffers.remove(&prefix) else {
            return Ok(());
        };
        match self.ship(&prefix, &b).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.buffers.insert(prefix, b);
                Err(e)
            }
        }
    }

    /// The last batch whose every event is in an uploaded object.
    pub(crate) fn through(&self) -> u64 {
        self.buffers
            .values()
            .map(|b| b.first_batch.saturating_sub(1))
            .min()
            .unwrap_or(self.written_through)
            .min(self.written_through)
    }

    /// Pending entries whose objects' events are all durable and seen: delete them with the
    /// checkpoint that covers them.
    pub(crate) fn release(&mut self) {
        let through = self.through();
        let mut keep = Vec::new();
        let mut remap = HashMap::new();
        for (i, h) in std::mem::take(&mut self.held).into_iter().enumerate() {
            if h.unseen == 0 && h.last_batch <= through {
                self.released
                    .push(StateEntry::deleted(format!("{PENDING}{}", h.key)));
                let _ = std::fs::remove_file(&h.staging);
                let _ = std::fs::remove_file(ids_path(&h.staging));
            } else {
                remap.insert(i, keep.len());
                keep.push(h);
            }
        }
        self.known.retain(|_, (idx, _)| match remap.get(idx) {
            Some(n) => {
                *idx = *n;
                true
            }
            None => false,
        });
        self.held = keep;
        self.stored_known = self.known.keys().any(|k| k.starts_with(STORED));
    }
}

/// The `id` of every event in an object body.
pub(crate) fn event_ids(key: &str, body: &[u8]) -> Result<Vec<Arc<str>>, String> {
    #[derive(Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let lines = archive::lines(key, body)?;
    lines
        .iter()
        .map(|l| {
            serde_json::from_str::<Id<'_>>(l)
                .map(|i| Arc::from(i.id.as_ref()))
                .map_err(|e| format!("a line without an id: {e}"))
        })
        .collect()
}

#[async_trait]
impl Sink for S3Sink {
    async fn prepare(&mut self) -> Result<(), SinkError> {
        self.connect().await;
        let client = self.client()?.clone();
        let bucket = self.config.bucket.clone();
        if let Err(e) = client.head_bucket().bucket(&bucket).send().await {
            let status = e.raw_response().map(|r| r.status().as_u16());
            let message = match status {
                Some(404) => format!("{}: bucket {bucket:?} does not exist; create it or fix `bucket`", self.name()),
                Some(403) => format!(
                    "{}: access to bucket {bucket:?} is denied; grant the AWS chain's credentials s3:ListBucket and s3:PutObject on it",
                    self.name()
                ),
                _ => format!(
                    "{}: cannot reach bucket {bucket:?} ({}); check `endpoint`, `region` and the network",
                    self.name(),
                    DisplayErrorContext(&e)
                ),
            };
            return Err(SinkError::Remote {
                message,
                retryable: !matches!(status, Some(404 | 403)),
            });
        }
        if self.config.object_lock_mode.is_some() {
            let lock = client
                .get_object_lock_configuration()
                .bucket(&bucket)
                .send()
                .await;
            let enabled = lock
                .as_ref()
                .ok()
                .and_then(|l| l.object_lock_configuration())
                .is_some_and(|c| c.object_lock_enabled().is_some_and(|e| e.as_str() == "Enabled"));
            if !enabled {
                return Err(SinkError::Config(format!(
                    "{}: bucket {bucket:?} has no Object Lock; create the bucket with Object Lock enabled (it turns versioning on), or remove object_lock_mode",
                    self.name()
                )));
            }
        }
        let recovered = self.ctx.recovered.clone();
        let mut referenced = std::collections::HashSet::new();
        for entry in &recovered {
            if let Some(key) = entry.key.strip_prefix(PENDING) {
                let staged = self.staging_path(key);
                referenced.insert(ids_path(&staged));
                referenced.insert(staged);
            }
            self.recover(entry).await?;
        }
        // Staged objects no pending entry names were never registered: their events come again.
        if let Ok(dir) = std::fs::read_dir(&self.staging) {
            for f in dir.flatten() {
                if !referenced.contains(&f.path()) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        tracing::info!(sink = %self.ctx.sink, bucket = %bucket, recovered = self.held.len(), "S3 bucket reachable");
        Ok(())
    }

    async fn write(&mut self, batch: Arc<Batch>) -> Result<(), SinkError> {
        for e in &batch.events {
            // Already in an uploaded object: written again after a reset or a crash.
            if self.recognise(&e.id, batch.number) {
                continue;
            }
            let (prefix, kept) = match self.layout.admit(e) {
                Ok(admitted) => admitted,
                Err(why) => {
                    self.ctx.dead_letters.reject(e, &why).await?;
                    continue;
                }
            };
            if self.stored_known {
                if let Some(stored) = self.layout.stored_id(&kept) {
                    if self.recognise(&format!("{STORED}{stored}"), batch.number) {
                        continue;
                    }
                }
            }
            // A key S3 refuses would fail every upload and stall the pipeline: the event is
            // dead-lettered with the reason instead.
            if prefix.len() > MAX_PREFIX_BYTES {
                let why = format!(
                    "its object key would pass S3's {MAX_KEY_BYTES} bytes: the rendered key_prefix alone is {} bytes (is the sandbox id that long?)",
                    prefix.len()
                );
                self.ctx.dead_letters.reject(e, &why).await?;
                continue;
            }
            let b = self.buffers.entry(prefix).or_insert_with(|| Buffer {
                lines: Vec::new(),
                bytes: 0,
                ids: Vec::new(),
                spans: Spans::default(),
                events: 0,
                first_batch: batch.number,
                first_time_us: e.cursor_us.or(e.time_us).unwrap_or(0),
                opened_at: Instant::now(),
            });
            b.bytes += kept.len() as u64 + 1;
            b.lines.push(kept);
            b.ids.push(e.id.clone());
            b.spans.add(e);
            b.events += 1;
        }
        self.written_through = self.written_through.max(batch.number);
        Ok(())
    }

    async fn flush(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        let due: Vec<String> = self
            .buffers
            .iter()
            .filter(|(_, b)| self.due(b))
            .map(|(k, _)| k.clone())
            .collect();
        for prefix in due {
            self.ship_buffer(prefix).await?;
        }
        self.release();
        Ok(std::mem::take(&mut self.released))
    }

    fn durable_through(&self) -> Option<u64> {
        Some(self.through())
    }

    fn flush_deadline(&self) -> Option<tokio::time::Instant> {
        let timeout = Duration::from_millis(self.config.batch_timeout_ms);
        self.buffers
            .values()
            .map(|b| tokio::time::Instant::from_std(b.opened_at + timeout))
            .min()
    }

    async fn reset(&mut self) -> Result<(), SinkError> {
        // Uploaded objects stay (their ids are recognised when written again); open buffers go.
        self.buffers.clear();
        Ok(())
    }

    async fn close(&mut self) -> Result<Vec<StateEntry>, SinkError> {
        let prefixes: Vec<String> = self.buffers.keys().cloned().collect();
        for prefix in prefixes {
            self.ship_buffer(prefix).await?;
        }
        self.release();
        Ok(std::mem::take(&mut self.released))
    }

    fn take_sealed(&mut self) -> Vec<Sealed> {
        std::mem::take(&mut self.sealed)
    }

    fn manifest_publisher(&self) -> Option<Arc<dyn ManifestPublisher>> {
        Some(Arc::new(S3Manifests {
            client: self.client.clone()?,
            config: self.config.clone(),
            pipeline: self.ctx.pipeline.clone(),
            sink: self.ctx.sink.clone(),
            layout: self.layout.clone(),
        }))
    }
}

/// Where the event ids of a staged object are kept, when its body does not hold them.
pub(crate) fn ids_path(staging: &Path) -> PathBuf {
    staging.with_extension("ids")
}

/// S3's longest object key.
const MAX_KEY_BYTES: usize = 1024;

/// The longest rendered prefix: what follows it in a key (a time, the run id, a counter, the
/// extension) takes under 64 bytes.
const MAX_PREFIX_BYTES: usize = MAX_KEY_BYTES - 64;
