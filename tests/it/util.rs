//! Helpers shared by the integration tests: a temp workspace with a pipeline file pointing at a
//! simulator, the real binary as a child process, and archive readers that compare what was
//! shipped with what the simulator made.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use auditship::sim::{SimConfig, Simulator};

/// A temporary directory holding a pipeline file, its archive and its state.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub pipeline: PathBuf,
    /// Child output goes to files here (a pipe would fill up and block a chatty child).
    logs: tempfile::TempDir,
}

/// A running `auditship` child and the files its output goes to.
pub struct Proc {
    pub child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// What the child has written to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Workspace {
    /// A workspace whose `pipe.toml` follows `sandboxes` on `sim`. `extra_source` is appended to
    /// `[source]`, `sink_extra` to the file sink.
    pub fn new(sim: &Simulator, sandboxes: &[&str], extra_source: &str, sink_extra: &str) -> Workspace {
        let sinks = format!(
            "[sinks.archive]\ntype = \"file\"\npath = \"{{root}}/archive/{{resource_id}}/{{date}}.ndjson\"\n{sink_extra}\n"
        );
        Workspace::with_sinks(sim, sandboxes, extra_source, &sinks)
    }

    /// A workspace whose pipeline has the sinks in `sinks` (TOML; `{root}` is the workspace).
    pub fn with_sinks(sim: &Simulator, sandboxes: &[&str], extra_source: &str, sinks: &str) -> Workspace {
        Workspace::with_tables(sim, sandboxes, extra_source, 2_000, sinks)
    }

    /// [`Workspace::with_sinks`] with batches of at most `batch_max_events`; `tables` may hold
    /// other top-level tables besides the sinks.
    pub fn with_tables(
        sim: &Simulator,
        sandboxes: &[&str],
        extra_source: &str,
        batch_max_events: usize,
        tables: &str,
    ) -> Workspace {
        let sinks = tables;
        let dir = tempfile::tempdir().unwrap();
        let pipeline = dir.path().join("pipe.toml");
        let list = sandboxes
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let root = dir.path().display().to_string();
        let sinks = sinks.replace("{root}", &root);
        let text = format!(
            r#"
[source]
base_url = "{base}"
api_key = "${{MIOSA_API_KEY}}"
sandboxes = [{list}]
poll_interval_ms = 100
{extra_source}

[checkpoint]
path = "{root}/state/checkpoints.db"
commit_interval_ms = 50

[batch]
timeout_ms = 20
max_events = {batch_max_events}

{sinks}
"#,
            base = sim.base_url()
        );
        std::fs::write(&pipeline, text).unwrap();
        Workspace {
            dir,
            pipeline,
            logs: tempfile::tempdir().unwrap(),
        }
    }

    /// Point the pipeline at another API: `from` (a base URL in `pipe.toml`) becomes `to`.
    pub fn point_at(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.pipeline).unwrap();
        assert!(text.contains(from), "{from} is not in the pipeline");
        std::fs::write(&self.pipeline, text.replace(from, to)).unwrap();
    }

    /// Events committed by the checkpoint, all sandboxes of the live stream.
    pub fn committed_events(&self) -> i64 {
        // Before the first start there is nothing to read, and that is 0. Any other failure
        // fails the test: a reader that answered 0 on an error would let "the checkpoint held
        // still" pass with the database unreadable.
        let db = self.path().join("state/checkpoints.db");
        if !db.exists() {
            return 0;
        }
        let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("opening {}: {e}", db.display()));
        conn.busy_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{}: {e}", db.display()));
        match conn.query_row(
            "SELECT COALESCE(SUM(events_shipped), 0) FROM checkpoints WHERE stream = 'live'",
            [],
            |r| r.get(0),
        ) {
            Ok(n) => n,
            // Created, not yet migrated: the process is starting.
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => 0,
            Err(e) => panic!("reading the checkpoints in {}: {e}", db.display()),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Start `auditship ARGS` in the workspace with the key in the environment.
    pub fn spawn(&self, key: &str, args: &[&str]) -> Proc {
        self.spawn_env(key, args, &[])
    }

    /// [`Workspace::spawn`] with more environment variables.
    pub fn spawn_env(&self, key: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let n = std::fs::read_dir(self.logs.path()).unwrap().count();
        let stdout = self.logs.path().join(format!("{n}.out"));
        let stderr = self.logs.path().join(format!("{n}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_auditship"))
            .args(args)
            .current_dir(self.path())
            .env("MIOSA_API_KEY", key)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("the auditship binary runs");
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    /// Run `auditship ARGS` to completion.
    pub fn run(&self, key: &str, args: &[&str]) -> Output {
        let child = self.spawn(key, args);
        finish(child, Duration::from_secs(120))
    }

    /// Every archived line, across all files (decompressing .gz/.zst), read strictly: for a
    /// pipeline that has stopped (or never started). A unit that does not decode to its end, a
    /// file that ends inside a line, or text that is not UTF-8 fails the test, naming the file:
    /// none of them may be left by a pipeline that stopped, and a lenient reader would show
    /// them only as lines missing.
    pub fn archive_lines(&self) -> Vec<String> {
        self.read_archive(true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Workspace::archive_lines`] for a pipeline still writing, or killed: what decodes
    /// counts, up to its last complete line (a file may end in a unit being written, or one a
    /// kill tore).
    pub fn archive_lines_so_far(&self) -> Vec<String> {
        self.read_archive(false).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Workspace::archive_lines`], returning what is wrong instead of failing the test.
    pub fn archive_lines_checked(&self) -> Result<Vec<String>, String> {
        self.read_archive(true)
    }

    fn read_archive(&self, strict: bool) -> Result<Vec<String>, String> {
        let mut files = Vec::new();
        walk(&self.path().join("archive"), &mut files);
        let mut lines = Vec::new();
        for f in files {
            let raw = std::fs::read(&f).map_err(|e| format!("reading {}: {e}", f.display()))?;
            let mut bytes = Vec::new();
            let decoded = match raw.get(..4) {
                Some([0x1f, 0x8b, _, _]) => {
                    flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut bytes)
                }
                Some([0x28, 0xb5, 0x2f, 0xfd]) => {
                    zstd::stream::read::Decoder::new(&raw[..]).and_then(|mut d| d.read_to_end(&mut bytes))
                }
                _ => {
                    bytes = raw;
                    Ok(0)
                }
            };
            if let (true, Err(e)) = (strict, decoded) {
                return Err(format!("{} does not decode to its end: {e}", f.display()));
            }
            let complete = match bytes.iter().rposition(|&b| b == b'\n') {
                Some(end) => &bytes[..=end],
                None => &bytes[..0],
            };
            if strict && complete.len() != bytes.len() {
                return Err(format!(
                    "{} ends inside a line: {} bytes after its last line break",
                    f.display(),
                    bytes.len() - complete.len()
                ));
            }
            let text =
                std::str::from_utf8(complete).map_err(|e| format!("{} is not UTF-8: {e}", f.display()))?;
            lines.extend(text.lines().map(str::to_string));
        }
        Ok(lines)
    }

    /// Every file below the workspace (manifests included), relative.
    pub fn all_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        walk_all(self.path(), &mut files);
        files
            .into_iter()
            .map(|f| f.strip_prefix(self.path()).unwrap().to_path_buf())
            .collect()
    }
}

/// Every data file below `dir`: auditship's own files (manifests, archive locks, digests: names
/// that start `auditship.`, and what lies in such a directory) are left out.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut all = Vec::new();
    walk_all(dir, &mut all);
    out.extend(all.into_iter().filter(|p| {
        let own = |c: std::path::Component<'_>| {
            c.as_os_str()
                .to_string_lossy()
                .starts_with(auditship_sink::RESERVED_PREFIX)
        };
        !p.strip_prefix(dir).unwrap_or(p).components().any(own)
    }));
}

/// Every file below `dir`.
pub fn walk_all(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk_all(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// What a finished child printed.
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Wait for the child (SIGKILL after `timeout`) and read what it printed.
pub fn finish(mut proc: Proc, timeout: Duration) -> Output {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > timeout {
            signal(&proc, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status.code(),
        stdout: std::fs::read_to_string(&proc.stdout).unwrap_or_default(),
        stderr: std::fs::read_to_string(&proc.stderr).unwrap_or_default(),
    }
}

pub fn signal(proc: &Proc, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(proc.child.id() as i32, sig) };
}

/// Wait until `f` holds, or panic with `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON lines the simulator made, all sandboxes.
pub fn sim_lines(sim: &Simulator, sandboxes: &[&str]) -> Vec<String> {
    sandboxes
        .iter()
        .flat_map(|s| sim.events(s))
        .map(|e| e.json.to_string())
        .collect()
}

/// Assert `archived` holds every expected line exactly once and nothing else.
pub fn assert_exactly_once(archived: &[String], expected: &[String]) {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for l in archived {
        *counts.entry(l.as_str()).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let expected_set: std::collections::HashSet<&str> = expected.iter().map(String::as_str).collect();
    let missing = expected
        .iter()
        .filter(|l| !counts.contains_key(l.as_str()))
        .count();
    let unexpected = counts.keys().filter(|l| !expected_set.contains(*l)).count();
    assert!(
        duplicated.is_empty() && missing == 0 && unexpected == 0,
        "archive vs simulator: {} lines archived, {} expected; {} duplicated, {} missing, {} unexpected (first duplicate: {:?})",
        archived.len(),
        expected.len(),
        duplicated.len(),
        missing,
        unexpected,
        duplicated.first()
    );
}

/// A simulator with `sandboxes` and the rest from `config`.
///
/// Each simulator gets its own key unless the test names one: the client shares one rate
/// limiter per key across the process, and tests running in parallel must not share a budget.
pub async fn sim(sandboxes: &[&str], config: SimConfig) -> Simulator {
    let api_key = if config.api_key == SimConfig::default().api_key {
        format!("msk_sim_{:016x}", rand::random::<u64>())
    } else {
        config.api_key.clone()
    };
    Simulator::start(SimConfig {
        sandboxes: sandboxes.iter().map(|s| s.to_string()).collect(),
        retry_after_secs: 0.05,
        api_key,
        ..config
    })
    .await
    .unwrap()
}

/// Wait until the checkpoint holds every event the simulator made, then SIGTERM: exit 0.
pub async fn stop_when_all_committed(ws: &Workspace, sim: &Simulator, child: Proc) -> Output {
    wait_for("every event to be committed", Duration::from_secs(120), || {
        sim.live_done() && ws.committed_events() >= sim.total_events() as i64
    })
    .await;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    out
}

/// Start `auditship run pipe.toml` and kill -9 it `rounds` times, at moments spread over 0.3–1 s
/// after each start.
pub async fn kill_9_rounds(ws: &Workspace, key: &str, rounds: u64) {
    for round in 0..rounds {
        let child = ws.spawn(key, &["run", "pipe.toml"]);
        let pause = 300 + (round * 337) % 700;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        signal(&child, libc::SIGKILL);
        let out = finish(child, Duration::from_secs(10));
        assert_eq!(out.code, None, "killed by a signal");
    }
}

/// The simulator's rejected events (`"action":"reject"`) of `sandboxes`, as JSON lines.
pub fn sim_rejects(sim: &Simulator, sandboxes: &[&str]) -> Vec<String> {
    sim_lines(sim, sandboxes)
        .into_iter()
        .filter(|l| l.contains(r#""action":"reject""#))
        .collect()
}

/// Sinks for `Workspace::with_sinks`: an archive of every event, and `siem.ndjson` routed the
/// rejected events only.
pub const ARCHIVE_AND_REJECTS: &str = r#"
[sinks.archive]
type = "file"
path = "{root}/archive/{resource_id}/{date}.ndjson"

[sinks.siem]
type = "file"
path = "{root}/siem.ndjson"
when = { action = "reject" }
"#;

/// An HTTP server whose every response is a list page cut off mid-way (broken JSON): a list
/// response that does not decode, for the paths that must not take it as the end of a listing.
pub struct BrokenListServer {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BrokenListServer {
    pub async fn start() -> BrokenListServer {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let body = r#"{"data":[{"id":"evt_1","inserted_at":"2026-11-25T00:00:00Z"},{"id":"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        BrokenListServer { addr, requests, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for BrokenListServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until `auditship` serving `--metrics-addr addr` answers `/health` with 200: every
/// pipeline running and every sandbox past its catch-up. Fails the test after `timeout`.
pub async fn wait_ready(addr: &str, timeout: Duration) {
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/health");
    let start = Instant::now();
    loop {
        let last = match http.get(&url).send().await {
            Ok(r) if r.status() == 200 => return,
            Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        assert!(start.elapsed() < timeout, "never ready in {timeout:?}: {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The strict reader fails on what a stopped pipeline must never leave, and the lenient one
/// reads past it.
#[test]
fn the_strict_archive_reader_names_torn_and_undecodable_files() {
    use std::io::Write as _;
    let ws = Workspace {
        dir: tempfile::tempdir().unwrap(),
        pipeline: PathBuf::new(),
        logs: tempfile::tempdir().unwrap(),
    };
    let dir = ws.path().join("archive/sb");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.ndjson"), "{\"id\":1}\n").unwrap();
    assert_eq!(ws.archive_lines(), ["{\"id\":1}"]);

    std::fs::write(dir.join("b.ndjson"), "{\"id\":2}\n{\"id\":").unwrap();
    let e = ws.archive_lines_checked().unwrap_err();
    assert!(e.contains("b.ndjson ends inside a line"), "{e}");
    assert_eq!(ws.archive_lines_so_far().len(), 2);
    std::fs::remove_file(dir.join("b.ndjson")).unwrap();

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"{\"id\":3}\n{\"id\":4}\n").unwrap();
    let mut member = gz.finish().unwrap();
    member.truncate(member.len() - 6);
    std::fs::write(dir.join("c.ndjson.gz"), &member).unwrap();
    let e = ws.archive_lines_checked().unwrap_err();
    assert!(e.contains("c.ndjson.gz does not decode to its end"), "{e}");
}
