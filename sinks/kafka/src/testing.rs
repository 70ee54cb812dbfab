//! A throwaway Kafka-protocol broker and a topic reader, for tests and benchmarks.
//!
//! [`Broker::start`] runs a `tansu` broker (Kafka wire protocol, in-memory storage) on a free
//! loopback port. The binary is found through `AUDITSHIP_TANSU`, else in the cache that
//! `./scripts/services install` fills, else on `PATH`; when there is none the error says how to
//! get it. [`read_topic`] reads a topic back with `assign()` (consumer groups are slow to join).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use auditship_sink::testing::{free_port, service_binary, wait_listening};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

/// The tansu version the tests are written against.
pub const TANSU_VERSION: &str = "0.6.0";

/// A running tansu broker, killed on drop.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
}

/// Where `./scripts/services install` puts the test services.
pub fn cache_dir() -> PathBuf {
    auditship_sink::testing::service_cache_dir()
}

/// Find the tansu binary, or say how to install it.
pub fn tansu_binary() -> Result<PathBuf, String> {
    let cached = cache_dir().join("tansu").join("bin").join("tansu");
    if let Some(p) = service_binary("AUDITSHIP_TANSU", &cached)? {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("tansu");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "no tansu broker found (looked at $AUDITSHIP_TANSU, {}, and PATH): run `./scripts/services install`, \
         or `cargo install tansu --version {TANSU_VERSION} --locked --features dynostore`, then run the tests again",
        cached.display()
    ))
}

impl Broker {
    /// Start a broker on a free loopback port and wait until it accepts connections.
    pub fn start() -> Result<Broker, String> {
        let mut b = Broker {
            child: None,
            port: free_port()?,
            bin: tansu_binary()?,
        };
        b.spawn()?;
        Ok(b)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        wait_listening(self.port, "tansu", Duration::from_secs(20))
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kill the broker (SIGKILL): its in-memory topics are gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the broker again on the same port (empty, as a fresh in-memory broker is).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Vec<u8>,
    /// Headers as (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Read every message of `topic` from the beginning of every partition until `want` messages
/// were read, or nothing new arrived for `idle`. Records come in partition order per partition.
pub fn read_topic(brokers: &str, topic: &str, want: usize, idle: Duration) -> Result<Vec<Record>, String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "auditship-test-reader")
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut last = Instant::now();
    while out.len() < want && last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_string(), x.value.map(<[u8]>::to_vec).unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers,
                });
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None => {}
        }
    }
    Ok(out)
}
