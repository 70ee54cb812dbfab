//! The performance suite: `cargo bench --bench suite`.
//!
//! Builds in release mode (the bench profile), then runs every case on loopback against the
//! bundled simulator, each beside a baseline measured in the same run, and prints a table
//! (also written to `target/bench-suite.md`). Nothing here is a pass/fail test: the figures are
//! compared with the targets in BENCHMARKS.md by a person.
//!
//! Environment:
//! - `SUITE_CASES`: comma list of `live`, `backfill`, `scale`, `latency` (default: all). The
//!   live case includes zstd, gzip, rare checkpoints and transforms.
//! - `SUITE_EVENTS` (default 1,000,000), `SUITE_SANDBOXES` (100), `SUITE_IDLE` (10,000),
//!   `SUITE_RATE` (20,000 events/s for the latency case), `SUITE_LATENCY_SECS` (15).
//! - `SUITE_REPEAT` (default 3): runs of each live variant; the table shows the median run and
//!   the spread. Even rounds run the variants in reverse order.
//! - `SUITE_WARMUP` (default 1): `0` skips the uncounted warm-up run that precedes the live
//!   rounds.
//! - `SUITE_FLOORS` (default 1): `0` skips the write-through floors of the live and backfill
//!   cases.
//! - `SUITE_LIVE`: `;`-separated live variants to run (`plain`, `zstd`, `gzip`,
//!   `plain, rare checkpoints`, `plain, redact + OCSF`; default: all).
//!
//! Every `auditship` and simulator runs as its own process (the release binary), so each one's
//! CPU time and memory are its own; the no-op baselines (and the backfill's write-through
//! floors) run in this process.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const KEY: &str = "msk_bench_suite_key";
const SUBPROTOCOL: &str = "miosa-egress-audit-v1";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_auditship")
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn free_port() -> Res<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process, killed when dropped.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, dir: &Path, args: &[String], log: &str) -> Res<Proc> {
        let log = std::fs::File::create(dir.join(log))?;
        let child = Command::new(bin())
            .args(args)
            .current_dir(dir)
            .env("MIOSA_SIM_API_KEY", KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        Ok(Proc { child, name })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds so far.
    fn cpu_secs(&self) -> f64 {
        let (user, system) = self.cpu_split();
        user + system
    }

    /// User and system CPU seconds so far, apart: the slow runs of this machine are mostly
    /// system time, so the per-run lines show it.
    fn cpu_split(&self) -> (f64, f64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start at ") ".
        let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
        (ticks(11) / clock_ticks(), ticks(12) / clock_ticks())
    }

    /// CPU seconds so far of this process's threads named `name` (the kernel keeps 15 bytes of
    /// a thread's name, so `name` is cut to that). Read from `schedstat` in nanoseconds: a
    /// thread that works for milliseconds shows as 0 in `stat`'s 10 ms ticks.
    fn thread_cpu_secs(&self, name: &str) -> f64 {
        let name = &name[..name.len().min(15)];
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0.0;
        };
        let mut total = 0.0;
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            let ns = schedstat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok());
            total += ns.unwrap_or(0.0) / 1e9;
        }
        total
    }

    /// A `/proc/PID/status` size in MiB (`VmRSS` now, `VmHWM` the peak).
    fn mem_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// SIGTERM, then wait (killing after `grace`). Returns the exit code if it exited.
    fn stop(mut self, grace: Duration) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.name);
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// A GET on loopback with plain HTTP/1.0: the body, if the status is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    // hyper answers an HTTP/1.0 request as HTTP/1.0 or 1.1: look at the code only.
    (status.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

/// The sum of every sample of metric `name` in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A simulator process, ready to serve.
struct Sim {
    proc: Proc,
    port: u16,
}

impl Sim {
    fn start(dir: &Path, args: &[&str]) -> Res<Sim> {
        let port = free_port()?;
        let mut all = vec!["sim".to_string(), "--port".into(), port.to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let proc = Proc::spawn("the simulator", dir, &all, "sim.log")?;
        // Fast mode renders every event before it listens: allow time for a million.
        let deadline = Instant::now() + Duration::from_secs(300);
        while http_get(port, "/api/v1/sandboxes").is_none() {
            if Instant::now() > deadline {
                return Err("the simulator did not answer within 300 s (see sim.log)".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Sim { proc, port })
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.port)
    }
}

fn sandbox_ids(n: u64) -> Vec<String> {
    (1..=n).map(|i| format!("sb-{i}")).collect()
}

/// A pipeline file for `sandboxes` of `sim`, with one file sink described by `sink` (TOML lines
/// after `[sinks.archive]`) and, if given, its checkpoint commit interval.
fn pipeline(sim: &Sim, sandboxes: u64, start: &str, sink: &str, commit_interval_ms: Option<u64>) -> String {
    let commit = commit_interval_ms.map_or(String::new(), |ms| format!("commit_interval_ms = {ms}\n"));
    // SUITE_MANIFEST=off measures without the tamper-evident manifest (on by default, as in use).
    let manifest = if std::env::var("SUITE_MANIFEST").is_ok_and(|v| v == "off") {
        "[manifest]\nenabled = false\n"
    } else {
        ""
    };
    let list: Vec<String> = sandbox_ids(sandboxes)
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect();
    format!(
        "[source]\nbase_url = \"{}\"\napi_key = \"{KEY}\"\nsandboxes = [{}]\nrequests_per_minute = 10000000\nstart = \"{start}\"\n\
         [checkpoint]\npath = \"state/cp.db\"\n{commit}{manifest}[sinks.archive]\ntype = \"file\"\n{sink}\n",
        sim.base_url(),
        list.join(",")
    )
}

/// Write `toml` as `dir/p.toml` and start `auditship run` on it, serving metrics on a free
/// port (returned with the process).
fn spawn_run(dir: &Path, toml: &str) -> Res<(Proc, u16)> {
    std::fs::write(dir.join("p.toml"), toml)?;
    let port = free_port()?;
    let args = [
        "run".into(),
        "p.toml".into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{port}"),
    ];
    Ok((Proc::spawn("auditship run", dir, &args, "run.log")?, port))
}

/// Poll metric `name` every `every` until it reaches `at_least`; an error names `what` after
/// `limit`.
fn wait_for_metric(
    port: u16,
    name: &str,
    at_least: f64,
    every: Duration,
    limit: Duration,
    what: &str,
) -> Res<()> {
    let start = Instant::now();
    let mut value = 0.0;
    while value < at_least {
        if start.elapsed() > limit {
            return Err(format!(
                "only {value} of {at_least} {what} after {} s (see run.log)",
                limit.as_secs()
            )
            .into());
        }
        std::thread::sleep(every);
        if let Some(text) = http_get(port, "/metrics") {
            value = metric(&text, name);
        }
    }
    Ok(())
}

fn workdir(name: &str) -> Res<PathBuf> {
    let dir = std::env::temp_dir().join(format!("auditship-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One row of the table.
struct Row {
    case: String,
    rate: String,
    baseline: String,
    ratio: String,
    target: String,
    cost: String,
}

/// What a throughput run measured.
#[derive(Clone)]
struct Throughput {
    events: u64,
    secs: f64,
    bytes: u64,
    cpu: f64,
    /// The system part of `cpu` (0 where not measured).
    sys_cpu: f64,
    sim_cpu: f64,
    peak_mib: f64,
    /// CPU seconds of the checkpoint store's thread (`auditship-sqlite`, every SQLite call of
    /// a run), where measured: the direct cost of checkpointing, which timing alone cannot
    /// separate from this machine's noise.
    store_cpu: f64,
}

impl Throughput {
    fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / self.secs / (1024.0 * 1024.0)
    }
    fn describe(&self) -> String {
        format!("{} ev/s, {:.0} MiB/s", fmt_n(self.rate()), self.mib_s())
    }
}

fn fmt_n(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The live clients: one socket per sandbox, frames read until `target` have arrived in all.
/// `keep` says what becomes of each frame: dropped (the wire baseline), or appended with a
/// newline to one file per sandbox through a 64 KiB buffer, each file synced once at the end
/// (and hashed with SHA-256): the write-through floors, what writing the events durably costs
/// any shipper before its own work.
fn noop_live(sim: &Sim, sandboxes: u64, target: u64, keep: Keep, dir: &Path) -> Res<Throughput> {
    use sha2::Digest as _;
    let rt = runtime()?;
    let out = dir.join("write-through");
    if keep != Keep::Nothing {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
    }
    let events = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let enough = tokio_util::sync::CancellationToken::new();
    let cpu0 = sim.proc.cpu_secs();
    let own_cpu0 = own_cpu_secs();
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for id in sandbox_ids(sandboxes) {
            let url = format!(
                "ws://127.0.0.1:{}/api/v1/egress/audit/resource/{id}?token={KEY}",
                sim.port
            );
            let (events, bytes, enough) = (events.clone(), bytes.clone(), enough.clone());
            let mut file = match keep {
                Keep::Nothing => None,
                _ => Some(std::io::BufWriter::with_capacity(
                    64 << 10,
                    std::fs::File::create(out.join(format!("{id}.ndjson")))?,
                )),
            };
            tasks.spawn(async move {
                let mut req = url.into_client_request()?;
                req.headers_mut()
                    .insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL));
                let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
                let mut hash = sha2::Sha256::new();
                loop {
                    let msg = tokio::select! {
                        m = ws.next() => m,
                        () = enough.cancelled() => None,
                    };
                    let Some(msg) = msg else { break };
                    if let Message::Text(t) = msg? {
                        let line = t.as_str().as_bytes();
                        if let Some(file) = file.as_mut() {
                            // Page-cache writes, 64 KiB at a time: brief enough for the
                            // runtime's thread.
                            file.write_all(line)?;
                            file.write_all(b"\n")?;
                            if keep == Keep::WriteHashed {
                                hash.update(line);
                                hash.update(b"\n");
                            }
                        }
                        bytes.fetch_add(line.len() as u64, Ordering::Relaxed);
                        if events.fetch_add(1, Ordering::Relaxed) + 1 >= target {
                            enough.cancel();
                        }
                    }
                }
                if let Some(file) = file {
                    let file = file.into_inner().map_err(|e| e.into_error())?;
                    tokio::task::spawn_blocking(move || file.sync_data()).await??;
                    std::hint::black_box(hash.finalize());
                }
                Res::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Res::Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    Ok(Throughput {
        events: events.load(Ordering::Relaxed),
        secs,
        bytes: bytes.load(Ordering::Relaxed),
        cpu: own_cpu_secs() - own_cpu0,
        sys_cpu: 0.0,
        sim_cpu: sim.proc.cpu_secs() - cpu0,
        peak_mib: 0.0,
        store_cpu: 0.0,
    })
}

/// This process's CPU seconds (the no-op clients'), for reference.
fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// `auditship run` on `pipeline` until its sinks report `target` events durable.
fn auditship_live(dir: &Path, sim: &Sim, toml: &str, target: u64) -> Res<Throughput> {
    let cpu0 = sim.proc.cpu_secs();
    let start = Instant::now();
    let (run, mport) = spawn_run(dir, toml)?;
    wait_for_metric(
        mport,
        "auditship_events_shipped_total",
        target as f64,
        Duration::from_millis(10),
        Duration::from_secs(600),
        "events durable",
    )?;
    let secs = start.elapsed().as_secs_f64();
    let ((user, sys_cpu), peak_mib, sim_cpu) =
        (run.cpu_split(), run.mem_mib("VmHWM"), sim.proc.cpu_secs() - cpu0);
    let store_cpu = run.thread_cpu_secs("auditship-sqlite");
    if let Some(text) = http_get(mport, "/metrics") {
        eprintln!(
            "  (API responses {}, socket drops {}, frames {})",
            metric(&text, "auditship_api_responses_total"),
            metric(&text, "auditship_socket_drops_total"),
            metric(&text, "auditship_frames_received_total")
        );
    }
    run.stop(Duration::from_secs(20));
    Ok(Throughput {
        events: target,
        secs,
        bytes: 0,
        cpu: user + sys_cpu,
        sys_cpu,
        sim_cpu,
        peak_mib,
        store_cpu,
    })
}

/// Lines in every file under `dir` (decompressing .gz and .zst).
fn count_lines(dir: &Path) -> Res<u64> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let file = std::fs::File::open(&path)?;
            let mut reader: Box<dyn Read> = match path.extension().and_then(|e| e.to_str()) {
                Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(file)),
                Some("zst") => Box::new(zstd::Decoder::new(file)?),
                _ => Box::new(file),
            };
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let k = reader.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                n += memchr::memchr_iter(b'\n', &buf[..k]).count() as u64;
            }
        }
    }
    Ok(n)
}

fn live_case(rows: &mut Vec<Row>) -> Res<()> {
    let sandboxes = env_num("SUITE_SANDBOXES", 100);
    let events = env_num("SUITE_EVENTS", 1_000_000);
    let per = events.div_ceil(sandboxes);
    let per_s = per.to_string();
    let sb_s = sandboxes.to_string();
    let sim_args = [
        "--sandboxes",
        &sb_s,
        "--backlog",
        "0",
        "--rate",
        "0",
        "--live-events",
        &per_s,
        "--fast",
        "--plain-frames",
    ];
    let dir = workdir("live")?;
    eprintln!("live: baseline (no-op client, {sandboxes} sockets, {events} events)");
    let base = {
        let sim = Sim::start(&dir, &sim_args)?;
        noop_live(&sim, sandboxes, events, Keep::Nothing, &dir)?
    };
    eprintln!(
        "  {} ({:.2} CPU s in the client, simulator {:.2} CPU s)",
        base.describe(),
        base.cpu,
        base.sim_cpu
    );
    let avg_bytes = base.bytes as f64 / base.events as f64;
    rows.push(Row {
        case: format!("1. live wire baseline (no-op client, {sandboxes} sockets)"),
        rate: base.describe(),
        baseline: "-".into(),
        ratio: "1.00".into(),
        target: "simulator >= 1,000,000 ev/s".into(),
        cost: format!("simulator {:.2} CPU s", base.sim_cpu),
    });
    floors(rows, "live", "frames", &dir, &sim_args, &base, |sim, keep| {
        noop_live(sim, sandboxes, events, keep, &dir)
    })?;
    let redact = r#"{ type = "redact", fields = ["metadata.authorization", "path"], mode = "hmac-sha256", hmac_key = "bench-key-0123456789abcdef" }"#;
    // (name, sink lines, commit interval, target): the rare-checkpoint variant commits as
    // rarely as the pipeline allows, once an hour (and at the end).
    let variants: [(&str, String, Option<u64>, &str); 5] = [
        (
            "plain",
            "path = \"archive/{resource_id}.ndjson\"".into(),
            None,
            ">= 300,000 ev/s, >= 25% of wire",
        ),
        (
            "zstd",
            "path = \"archive/{resource_id}.ndjson.zst\"\ncompression = \"zstd\"".into(),
            None,
            ">= 200,000 ev/s",
        ),
        (
            "gzip",
            "path = \"archive/{resource_id}.ndjson.gz\"\ncompression = \"gzip\"".into(),
            None,
            "-",
        ),
        (
            "plain, rare checkpoints",
            "path = \"archive/{resource_id}.ndjson\"".into(),
            Some(3_600_000),
            "checkpoint cost <= 5%",
        ),
        (
            "plain, redact + OCSF",
            format!("path = \"archive/{{resource_id}}.ndjson\"\ntransforms = [{redact}, \"ocsf\"]"),
            None,
            "-",
        ),
    ];
    let repeat = env_num("SUITE_REPEAT", 3).max(1) as usize;
    let only = std::env::var("SUITE_LIVE").unwrap_or_default();
    let selected: Vec<_> = variants
        .into_iter()
        .filter(|(name, ..)| only.is_empty() || only.split(';').any(|o| o.trim() == *name))
        .collect();
    // The first auditship run after the no-op baseline is often slow on this machine (two to
    // three times the usual system CPU; the cause is not pinned down, see BENCHMARKS.md), and
    // it always fell on round 1 of the first variant. A warm-up run, shown but not counted,
    // takes that place.
    if let Some((name, sink, commit_interval_ms, _)) =
        selected.first().filter(|_| env_num("SUITE_WARMUP", 1) > 0)
    {
        let dir = workdir("live-warmup")?;
        let sim = Sim::start(&dir, &sim_args)?;
        let toml = pipeline(&sim, sandboxes, "earliest", sink, *commit_interval_ms);
        eprintln!("live: auditship, {name} (warm-up, not counted)");
        let t = auditship_live(&dir, &sim, &toml, events)?;
        eprintln!(
            "  {} ({:.2} CPU s, {:.2} of it system)",
            t.describe(),
            t.cpu,
            t.sys_cpu
        );
        drop(sim);
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Round after round of every variant, not every run of one variant and then the next: this
    // machine drifts over minutes, and a drift must not read as a difference between variants.
    // Even rounds run the variants in reverse order (A B B A): a run tends to gain from the one
    // before it, and no variant should always run first, or always right after another.
    let mut all: Vec<Vec<Throughput>> = selected.iter().map(|_| Vec::new()).collect();
    for run in 1..=repeat {
        let mut order: Vec<usize> = (0..selected.len()).collect();
        if run % 2 == 0 {
            order.reverse();
        }
        for &k in &order {
            let ((name, sink, commit_interval_ms, _), runs) = (&selected[k], &mut all[k]);
            let dir = workdir(&format!("live-{}", name.replace([' ', ',', '+'], "")))?;
            let sim = Sim::start(&dir, &sim_args)?;
            let toml = pipeline(&sim, sandboxes, "earliest", sink, *commit_interval_ms);
            eprintln!("live: auditship, {name} (round {run} of {repeat})");
            let mut t = auditship_live(&dir, &sim, &toml, events)?;
            t.bytes = (avg_bytes * t.events as f64) as u64;
            let lines = count_lines(&dir.join("archive"))?;
            eprintln!(
                "  {} ({:.2} CPU s, {:.2} of it system, {:.4} in the checkpoint store, peak {:.0} MiB, simulator {:.2} CPU s; {lines} lines on disk)",
                t.describe(),
                t.cpu,
                t.sys_cpu,
                t.store_cpu,
                t.peak_mib,
                t.sim_cpu
            );
            if lines < events {
                return Err(format!("{name}: only {lines} of {events} events on disk").into());
            }
            drop(sim);
            let _ = std::fs::remove_dir_all(&dir);
            runs.push(t);
        }
    }
    let plain_runs: Option<Vec<Throughput>> = selected
        .iter()
        .position(|(name, ..)| *name == "plain")
        .map(|i| all[i].clone());
    for ((name, _, _, target), mut runs) in selected.into_iter().zip(all) {
        let by_round = runs.clone();
        // The run with the median rate stands for the variant; the spread is shown beside it.
        runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        let spread = match (runs.first(), runs.last()) {
            (Some(lo), Some(hi)) if runs.len() > 1 => format!(
                " (median of {}: {}–{} ev/s)",
                runs.len(),
                fmt_n(lo.rate()),
                fmt_n(hi.rate())
            ),
            _ => String::new(),
        };
        let t = runs.swap_remove(runs.len() / 2);
        let (baseline, ratio) = match (&plain_runs, name.contains("rare")) {
            (Some(plain), true) => {
                // Each round's rare-checkpoint run against that round's plain run; the median
                // of those differences, by wall-clock rate and by CPU per event (on a shared
                // 2-core machine either alone moves by several per cent from run to run).
                let per_event = |t: &Throughput| t.cpu / t.events as f64;
                let median = |mut v: Vec<f64>| {
                    v.sort_by(f64::total_cmp);
                    let range = (v[0], v[v.len() - 1]);
                    (v[v.len() / 2], range)
                };
                let (cost, (lo, hi)) = median(
                    plain
                        .iter()
                        .zip(&by_round)
                        .map(|(p, r)| 100.0 * (1.0 - p.rate() / r.rate()))
                        .collect(),
                );
                let (cpu_cost, _) = median(
                    plain
                        .iter()
                        .zip(&by_round)
                        .map(|(p, r)| 100.0 * (1.0 - per_event(r) / per_event(p)))
                        .collect(),
                );
                // The direct cost: the store thread's CPU (every SQLite call) as a share of
                // the process's, in the plain runs that commit every `commit_interval_ms`.
                let (store_share, _) = median(
                    plain
                        .iter()
                        .map(|p| 100.0 * p.store_cpu / p.cpu.max(1e-9))
                        .collect(),
                );
                (
                    format!("plain, same rounds: {} ev/s median", fmt_n(median(plain.iter().map(Throughput::rate).collect()).0)),
                    format!(
                        "checkpoint cost {cost:+.1}% by rate ({lo:+.1}% to {hi:+.1}% over {} rounds), {cpu_cost:+.1}% by CPU/event; checkpoint store thread {store_share:.2}% of the plain runs' CPU",
                        by_round.len()
                    ),
                )
            }
            (None, true) => ("- (run plain too)".into(), "-".into()),
            (_, false) => (base.describe(), format!("{:.2}", t.rate() / base.rate())),
        };
        rows.push(Row {
            case: format!("1. live -> file, {name}"),
            rate: format!("{}{spread}", t.describe()),
            baseline,
            ratio,
            target: target.into(),
            cost: format!(
                "{:.2} CPU s, {:.2} system ({:.1} us/event), peak {:.0} MiB",
                t.cpu,
                t.sys_cpu,
                t.cpu * 1e6 / t.events as f64,
                t.peak_mib
            ),
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What the backfill clients do with a page's body.
#[derive(Clone, Copy, PartialEq)]
enum Keep {
    /// Count the events and drop the body: the no-op baseline.
    Nothing,
    /// Also append the body as it is to one file per sandbox, and `fdatasync` each file once
    /// at the end: no parsing, no per-event work, the fewest syncs durability allows.
    Write,
    /// [`Keep::Write`], hashing every byte written with SHA-256 as auditship's manifest does.
    WriteHashed,
}

/// The backfill clients: the same list requests (cursor paging, same page size, every sandbox
/// at once); `keep` says what becomes of each body. The write-through ones are floors, not
/// baselines: what any shipper that writes the bytes durably (and hashes them) must at least
/// spend, with none of a shipper's other work.
fn noop_backfill(sim: &Sim, sandboxes: u64, page: u32, keep: Keep, dir: &Path) -> Res<Throughput> {
    use sha2::Digest as _;
    let rt = runtime()?;
    let out = dir.join("write-through");
    if keep != Keep::Nothing {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
    }
    let own_cpu0 = own_cpu_secs();
    let events = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let cpu0 = sim.proc.cpu_secs();
    let start = Instant::now();
    let since = chrono::Utc::now() - chrono::Duration::days(7);
    let since = since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut tasks = tokio::task::JoinSet::new();
        for id in sandbox_ids(sandboxes) {
            let (client, events, bytes, base, since) = (
                client.clone(),
                events.clone(),
                bytes.clone(),
                sim.base_url(),
                since.clone(),
            );
            let mut file = match keep {
                Keep::Nothing => None,
                _ => Some(std::fs::File::create(out.join(format!("{id}.json")))?),
            };
            tasks.spawn(async move {
                let mut hash = sha2::Sha256::new();
                let mut cursor: Option<String> = None;
                loop {
                    let mut q = vec![
                        ("resource_id", id.clone()),
                        ("resource_type", "sandbox".into()),
                        ("limit", page.to_string()),
                        ("since", since.clone()),
                    ];
                    if let Some(c) = &cursor {
                        q.push(("cursor", c.clone()));
                    }
                    let body = client
                        .get(format!("{base}/egress/audit"))
                        .bearer_auth(KEY)
                        .query(&q)
                        .send()
                        .await?
                        .error_for_status()?
                        .bytes()
                        .await?;
                    bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    if let Some(file) = file.as_mut() {
                        // A page-cache write: brief enough to make on the runtime's thread.
                        file.write_all(&body)?;
                        if keep == Keep::WriteHashed {
                            hash.update(&body);
                        }
                    }
                    // Count events by their ids; find the cursor at the end of the body.
                    let n = memchr::memmem::find_iter(&body, b"\"id\":\"evt_").count();
                    events.fetch_add(n as u64, Ordering::Relaxed);
                    let tail = &body[body.len().saturating_sub(200)..];
                    let tail = String::from_utf8_lossy(tail);
                    cursor = tail
                        .split_once("\"next_cursor\":\"")
                        .and_then(|(_, rest)| rest.split_once('"'))
                        .map(|(c, _)| c.to_string());
                    if cursor.is_none() {
                        break;
                    }
                }
                if let Some(file) = file {
                    tokio::task::spawn_blocking(move || file.sync_data()).await??;
                    std::hint::black_box(hash.finalize());
                }
                Res::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Res::Ok(())
    })?;
    Ok(Throughput {
        events: events.load(Ordering::Relaxed),
        secs: start.elapsed().as_secs_f64(),
        bytes: bytes.load(Ordering::Relaxed),
        cpu: own_cpu_secs() - own_cpu0,
        sys_cpu: 0.0,
        sim_cpu: sim.proc.cpu_secs() - cpu0,
        peak_mib: 0.0,
        store_cpu: 0.0,
    })
}

/// Wait for a child and get its resource usage.
fn wait_rusage(child: &mut Child) -> Res<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: wait4 on our own child, filling structs we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok((libc::WEXITSTATUS(status), usage))
}

/// The write-through floors of a case (unless `SUITE_FLOORS=0`): `run` with each kind of
/// [`Keep`] that writes, each against a fresh simulator, set against the case's no-op `base`.
fn floors(
    rows: &mut Vec<Row>,
    case: &str,
    what: &str,
    dir: &Path,
    sim_args: &[&str],
    base: &Throughput,
    run: impl Fn(&Sim, Keep) -> Res<Throughput>,
) -> Res<()> {
    if env_num("SUITE_FLOORS", 1) == 0 {
        return Ok(());
    }
    let number = if case == "live" { 1 } else { 2 };
    for (keep, how) in [
        (
            Keep::Write,
            format!("{what} appended to one file per sandbox, one fdatasync each at the end"),
        ),
        (
            Keep::WriteHashed,
            "the same, and SHA-256 over every byte written".to_string(),
        ),
    ] {
        eprintln!("{case}: write-through floor ({how})");
        let sim = Sim::start(dir, sim_args)?;
        let t = run(&sim, keep)?;
        drop(sim);
        let _ = std::fs::remove_dir_all(dir.join("write-through"));
        eprintln!(
            "  {} ({:.2} CPU s in the client, simulator {:.2} CPU s)",
            t.describe(),
            t.cpu,
            t.sim_cpu
        );
        rows.push(Row {
            case: format!("{number}. {case} floor, no parsing: {how}"),
            rate: t.describe(),
            baseline: base.describe(),
            ratio: format!("{:.2}", t.rate() / base.rate()),
            target: "- (a floor: what writing costs any shipper)".into(),
            cost: format!(
                "{:.2} CPU s in the client ({:.1} us/event), simulator {:.2} CPU s",
                t.cpu,
                t.cpu * 1e6 / t.events.max(1) as f64,
                t.sim_cpu
            ),
        });
    }
    Ok(())
}

fn backfill_case(rows: &mut Vec<Row>) -> Res<()> {
    let sandboxes = env_num("SUITE_SANDBOXES", 100);
    let events = env_num("SUITE_EVENTS", 1_000_000);
    let per = events.div_ceil(sandboxes).to_string();
    let sb_s = sandboxes.to_string();
    let sim_args = [
        "--sandboxes",
        &sb_s,
        "--backlog",
        &per,
        "--rate",
        "0",
        "--list-shape",
        "cursor",
        "--plain-frames",
    ];
    let dir = workdir("backfill")?;
    eprintln!("backfill: baseline (no-op client, same list requests)");
    let base = {
        let sim = Sim::start(&dir, &sim_args)?;
        noop_backfill(&sim, sandboxes, 100, Keep::Nothing, &dir)?
    };
    eprintln!(
        "  {} ({:.2} CPU s in the client, simulator {:.2} CPU s)",
        base.describe(),
        base.cpu,
        base.sim_cpu
    );
    floors(rows, "backfill", "bodies", &dir, &sim_args, &base, |sim, keep| {
        noop_backfill(sim, sandboxes, 100, keep, &dir)
    })?;
    let sim = Sim::start(&dir, &sim_args)?;
    std::fs::write(
        dir.join("p.toml"),
        pipeline(
            &sim,
            sandboxes,
            "earliest",
            "path = \"archive/{resource_id}.ndjson\"",
            None,
        ),
    )?;
    eprintln!("backfill: auditship backfill --since 7d");
    let cpu0 = sim.proc.cpu_secs();
    let start = Instant::now();
    let mut child = Command::new(bin())
        .args(["backfill", "p.toml", "--since", "7d"])
        .current_dir(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("backfill.log"))?)
        .spawn()?;
    let (code, usage) = wait_rusage(&mut child)?;
    let secs = start.elapsed().as_secs_f64();
    if code != 0 {
        return Err(format!(
            "auditship backfill exited {code} (see {})",
            dir.join("backfill.log").display()
        )
        .into());
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    let lines = count_lines(&dir.join("archive"))?;
    let run = Throughput {
        events: lines,
        secs,
        bytes: base.bytes * lines / base.events.max(1),
        cpu: t(usage.ru_utime) + t(usage.ru_stime),
        sys_cpu: t(usage.ru_stime),
        sim_cpu: sim.proc.cpu_secs() - cpu0,
        peak_mib: usage.ru_maxrss as f64 / 1024.0,
        store_cpu: 0.0,
    };
    eprintln!(
        "  {} ({:.2} CPU s, {:.2} of it system, peak {:.0} MiB, simulator {:.2} CPU s)",
        run.describe(),
        run.cpu,
        run.sys_cpu,
        run.peak_mib,
        run.sim_cpu
    );
    if lines < base.events {
        return Err(format!("backfill shipped {lines} of {} events", base.events).into());
    }
    rows.push(Row {
        case: format!("2. backfill -> file, plain ({sandboxes} sandboxes, list endpoint)"),
        rate: run.describe(),
        baseline: base.describe(),
        ratio: format!("{:.2}", run.rate() / base.rate()),
        target: ">= 0.70 of no-op".into(),
        cost: format!(
            "{:.2} CPU s, {:.2} system ({:.1} us/event), peak {:.0} MiB",
            run.cpu,
            run.sys_cpu,
            run.cpu * 1e6 / run.events as f64,
            run.peak_mib
        ),
    });
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn scale_case(rows: &mut Vec<Row>) -> Res<()> {
    let n = env_num("SUITE_IDLE", 10_000);
    let dir = workdir("scale")?;
    let n_s = n.to_string();
    let sim = Sim::start(
        &dir,
        &[
            "--sandboxes",
            &n_s,
            "--backlog",
            "0",
            "--rate",
            "0",
            "--plain-frames",
        ],
    )?;
    eprintln!("scale: {n} idle sandboxes");
    let start = Instant::now();
    let (run, mport) = spawn_run(
        &dir,
        &pipeline(&sim, n, "now", "path = \"archive/{resource_id}.ndjson\"", None),
    )?;
    wait_for_metric(
        mport,
        "auditship_sockets_open",
        n as f64,
        Duration::from_millis(200),
        Duration::from_secs(600),
        "sockets open",
    )?;
    let connect_secs = start.elapsed().as_secs_f64();
    // Let the one-time sweeps (2 s into each socket) pass before measuring idleness.
    std::thread::sleep(Duration::from_secs(5));
    let cpu0 = run.cpu_secs();
    let idle = Duration::from_secs(10);
    std::thread::sleep(idle);
    let idle_cpu = (run.cpu_secs() - cpu0) / idle.as_secs_f64();
    let rss = run.mem_mib("VmRSS");
    let per_kib = rss * 1024.0 / n as f64;
    eprintln!(
        "  {n} sockets in {connect_secs:.1} s; {rss:.0} MiB resident ({per_kib:.1} KiB each); idle CPU {:.2}%",
        idle_cpu * 100.0
    );
    run.stop(Duration::from_secs(30));
    rows.push(Row {
        case: format!("3. scale: {n} idle sockets"),
        rate: format!("{rss:.0} MiB resident, {per_kib:.1} KiB/sandbox"),
        baseline: format!("all open in {connect_secs:.1} s"),
        ratio: format!("idle CPU {:.2}% of a core", idle_cpu * 100.0),
        target: "<= 256 MiB (26 KiB each), ~0 idle CPU".into(),
        cost: "-".into(),
    });
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Parse `"inserted_at":"…"` out of an NDJSON line, in microseconds.
fn inserted_us(line: &[u8]) -> Option<i64> {
    let key = b"\"inserted_at\":\"";
    let at = memchr::memmem::find(line, key)? + key.len();
    let end = at + memchr::memchr(b'"', &line[at..])?;
    let text = std::str::from_utf8(&line[at..end]).ok()?;
    Some(
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()?
            .timestamp_micros(),
    )
}

fn latency_case(rows: &mut Vec<Row>) -> Res<()> {
    let rate = env_num("SUITE_RATE", 20_000);
    let secs = env_num("SUITE_LATENCY_SECS", 15);
    let sandboxes = env_num("SUITE_SANDBOXES", 100);
    let per_rate = (rate as f64 / sandboxes as f64).to_string();
    // Events generated before every socket is open are listed, not pushed: generate enough
    // for the measured window plus a margin for start-up.
    let per_events = (rate * (secs + 10) / sandboxes).to_string();
    let sb_s = sandboxes.to_string();
    let dir = workdir("latency")?;
    let sim = Sim::start(
        &dir,
        &[
            "--sandboxes",
            &sb_s,
            "--backlog",
            "0",
            "--rate",
            &per_rate,
            "--live-events",
            &per_events,
            "--plain-frames",
        ],
    )?;
    eprintln!("latency: {rate} events/s for {secs} s");
    let (run, mport) = spawn_run(
        &dir,
        &pipeline(&sim, sandboxes, "now", "path = \"out/all.ndjson\"", None),
    )?;
    wait_for_metric(
        mport,
        "auditship_sockets_open",
        sandboxes as f64,
        Duration::from_millis(50),
        Duration::from_secs(120),
        "sockets open",
    )?;
    // Measure events generated from 3 s after every socket is open (past the sweeps).
    let from_us = chrono::Utc::now().timestamp_micros() + 3_000_000;
    let until_us = from_us + secs as i64 * 1_000_000;
    let path = dir.join("out/all.ndjson");
    let mut offset = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    let mut latencies: Vec<i64> = Vec::new();
    let cpu0 = run.cpu_secs();
    let wall0 = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    while chrono::Utc::now().timestamp_micros() < until_us + 2_000_000 {
        std::thread::sleep(Duration::from_millis(1));
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(offset))?;
        loop {
            let k = f.read(&mut buf)?;
            if k == 0 {
                break;
            }
            let now = chrono::Utc::now().timestamp_micros();
            offset += k as u64;
            carry.extend_from_slice(&buf[..k]);
            let mut consumed = 0;
            for nl in memchr::memchr_iter(b'\n', &carry) {
                if let Some(t) = inserted_us(&carry[consumed..nl]) {
                    if t >= from_us && t < until_us {
                        latencies.push(now - t);
                    }
                }
                consumed = nl + 1;
            }
            carry.drain(..consumed);
        }
    }
    let cpu = run.cpu_secs() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    run.stop(Duration::from_secs(20));
    if latencies.is_empty() {
        return Err("no event of the measured window reached the file".into());
    }
    latencies.sort_unstable();
    let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    let (p50, p99, max) = (q(0.50), q(0.99), q(1.0));
    let expected = rate * secs;
    eprintln!(
        "  {} events measured (~{expected} expected): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; {:.1}% CPU",
        latencies.len(),
        cpu / wall * 100.0
    );
    rows.push(Row {
        case: format!(
            "4. latency at {} ev/s, simulator send -> in the file",
            fmt_n(rate as f64)
        ),
        rate: format!("p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms"),
        baseline: format!("{} events over {secs} s", fmt_n(latencies.len() as f64)),
        ratio: "-".into(),
        target: "p99 <= 250 ms".into(),
        cost: format!("{:.0}% of a core", cpu / wall * 100.0),
    });
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024 / 1024);
    format!("{cpu}, {cores} cores, {mem} GiB, {}", std::env::consts::OS)
}

fn main() -> Res<()> {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let cases = std::env::var("SUITE_CASES").unwrap_or_else(|_| "live,backfill,scale,latency".into());
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    type Case = fn(&mut Vec<Row>) -> Res<()>;
    let runs: HashMap<&str, Case> = HashMap::from([
        ("live", live_case as Case),
        ("backfill", backfill_case),
        ("scale", scale_case),
        ("latency", latency_case),
    ]);
    for case in cases.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let Some(run) = runs.get(case) else {
            return Err(
                format!("unknown case {case:?} in SUITE_CASES (use live, backfill, scale, latency)").into(),
            );
        };
        if let Err(e) = run(&mut rows) {
            eprintln!("case {case} failed: {e}");
            failures.push(format!("{case}: {e}"));
        }
    }
    let mut table = format!(
        "Machine: {}\nCommand: `cargo bench --bench suite` ({})\n\n| case | result | baseline (same run) | ratio | target | auditship cost |\n|---|---|---|---|---|---|\n",
        machine(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.case, r.rate, r.baseline, r.ratio, r.target, r.cost
        ));
    }
    println!("\n{table}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-suite.md");
    if std::fs::write(&out, &table).is_ok() {
        println!("(also written to {})", out.display());
    }
    if !failures.is_empty() {
        return Err(format!("{} case(s) failed: {}", failures.len(), failures.join("; ")).into());
    }
    Ok(())
}
