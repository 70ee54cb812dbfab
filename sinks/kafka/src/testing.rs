//! A throwaway Kafka-protocol broker and a topic reader, for tests and benchmarks.
//!
//! [`Broker::start`] runs a `tansu` broker (Kafka wire protocol, in-memory storage) on a free
//! loopback port. The binary is found through `AUDITSHIP_TANSU`, else in the cache that
//! `./scripts/services install` fills, else on `PATH`; when there is none the error says how to
//! get it. [`read_topic`] reads a topic back with `assign()` (consumer groups are slow to join).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The port clients are told to connect to (the broker's, or a [`StallProxy`]'s).
    advertised: u16,
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
        let port = free_port()?;
        let mut b = Broker {
            child: None,
            port,
            advertised: port,
            bin: tansu_binary()?,
        };
        b.spawn()?;
        Ok(b)
    }

    /// Start a broker that every client reaches through a [`StallProxy`] (it advertises the
    /// proxy's address): connect to [`StallProxy::address`].
    pub fn start_behind_proxy() -> Result<(Broker, StallProxy), String> {
        let port = free_port()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy: {e}"))?;
        let advertised = listener.local_addr().map_err(|e| e.to_string())?.port();
        let mut b = Broker {
            child: None,
            port,
            advertised,
            bin: tansu_binary()?,
        };
        b.spawn()?;
        let proxy = StallProxy::serve(listener, port)?;
        Ok((b, proxy))
    }

    fn spawn(&mut self) -> Result<(), String> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
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

/// A TCP proxy in front of a broker that can stall the way a broker does when it takes
/// messages but its answers never arrive: after [`StallProxy::stall`], the answers to produce
/// requests on the connections open then are withheld (the requests still reach the broker,
/// which appends the messages); every other answer, and every later connection, goes through.
/// A producer then hears nothing of messages the broker holds, so it stalls and is rebuilt.
pub struct StallProxy {
    port: u16,
    /// Connections numbered below this have their produce answers withheld.
    stalled_below: Arc<AtomicU64>,
    next_conn: Arc<AtomicU64>,
    withheld: Arc<AtomicU64>,
}

/// Kafka's API key of a produce request.
const PRODUCE: i16 = 0;

impl StallProxy {
    fn serve(listener: std::net::TcpListener, upstream: u16) -> Result<StallProxy, String> {
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let proxy = StallProxy {
            port,
            stalled_below: Arc::new(AtomicU64::new(0)),
            next_conn: Arc::new(AtomicU64::new(0)),
            withheld: Arc::new(AtomicU64::new(0)),
        };
        let (stalled_below, next_conn, withheld) = (
            proxy.stalled_below.clone(),
            proxy.next_conn.clone(),
            proxy.withheld.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(broker) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let id = next_conn.fetch_add(1, Ordering::SeqCst);
                let produce: Arc<Mutex<HashSet<i32>>> = Arc::default();
                let (c2, b2) = match (client.try_clone(), broker.try_clone()) {
                    (Ok(c), Ok(b)) => (c, b),
                    _ => continue,
                };
                let requests = produce.clone();
                std::thread::spawn(move || {
                    pump(client, broker, |frame| {
                        // Request header: api key (i16), api version (i16), correlation id (i32).
                        if frame.len() >= 8 && i16::from_be_bytes([frame[0], frame[1]]) == PRODUCE {
                            let corr = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                            requests.lock().unwrap_or_else(|e| e.into_inner()).insert(corr);
                        }
                        true
                    })
                });
                let (stalled_below, withheld) = (stalled_below.clone(), withheld.clone());
                std::thread::spawn(move || {
                    pump(b2, c2, |frame| {
                        // Response header: correlation id (i32).
                        if frame.len() < 4 || id >= stalled_below.load(Ordering::SeqCst) {
                            return true;
                        }
                        let corr = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                        let is_produce = produce.lock().unwrap_or_else(|e| e.into_inner()).contains(&corr);
                        if is_produce {
                            withheld.fetch_add(1, Ordering::SeqCst);
                        }
                        !is_produce
                    })
                });
            }
        });
        Ok(proxy)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// From now on, withhold the answers to produce requests on every connection open now.
    pub fn stall(&self) {
        self.stalled_below
            .store(self.next_conn.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Produce answers withheld so far.
    pub fn withheld(&self) -> u64 {
        self.withheld.load(Ordering::SeqCst)
    }
}

/// Copy Kafka frames (a big-endian i32 length, then that many bytes) from `from` to `to`,
/// dropping those `keep` refuses, until either side closes.
fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, mut keep: impl FnMut(&[u8]) -> bool) {
    use std::io::{Read, Write};
    let mut len = [0u8; 4];
    loop {
        if from.read_exact(&mut len).is_err() {
            break;
        }
        let n = i32::from_be_bytes(len).max(0) as usize;
        let mut frame = vec![0u8; n];
        if from.read_exact(&mut frame).is_err() {
            break;
        }
        if keep(&frame) && (to.write_all(&len).is_err() || to.write_all(&frame).is_err()) {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
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
