//! `auditship demo`: the embedded default, end to end: simulator, demo pipeline, file sink, checks.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use auditship::config::{self, LoadMode};
use auditship::ops::verify::Archive as _;
use auditship::pipeline::{self, Mode, RunOptions};
use auditship::sim::{SimConfig, Simulator};
use auditship_sink::UnitCompression;

use super::exit::{fail, Code, CommandResult};

/// The sandboxes of `pipelines/demo.toml`, which `auditship sim` serves by default.
pub const DEMO_SANDBOXES: [&str; 5] = ["sb-alpha", "sb-beta", "sb/gamma", "sb-delta", "sb-epsilon"];

/// The embedded default: simulator + demo pipeline + file sink, end to end.
pub async fn demo(dir: &Path) -> CommandResult {
    const MARKER: &str = ".auditship-demo";
    if dir.exists() {
        if !dir.join(MARKER).exists() && std::fs::read_dir(dir)?.next().is_some() {
            return Err(fail(
                Code::Fix,
                format!(
                    "{} exists and was not made by `auditship demo`; pass --dir with a new directory",
                    dir.display()
                ),
            ));
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "made by auditship demo; deleted and rebuilt on each run\n",
    )?;

    let sandboxes: Vec<String> = DEMO_SANDBOXES.iter().map(|s| s.to_string()).collect();
    let sim = Simulator::start(SimConfig {
        sandboxes: sandboxes.clone(),
        backlog_per_sandbox: 400,
        live_rate_per_sec: 150.0,
        live_events_per_sandbox: Some(300),
        no_socket: vec!["sb-delta".into()],
        drop_every_frames: Some(250),
        garbage_ratio: 0.005,
        ties: 3,
        ratio_429: 0.03,
        ratio_5xx: 0.03,
        retry_after_secs: 0.05,
        ..SimConfig::default()
    })
    .await
    .context("starting the bundled simulator")?;

    let text = include_str!("../../pipelines/demo.toml");
    // The pipeline puts its checkpoints and archive under ${AUDITSHIP_DEMO_DIR}.
    config::define_var("AUDITSHIP_DEMO_DIR", &dir.to_string_lossy());
    let mut p = config::parse(Path::new("pipelines/demo.toml"), text, LoadMode::Validate)?;
    p.base_url = sim.base_url();
    p.api_key = Some(auditship::secret::ApiKey::new(sim.api_key()));
    p.poll_interval = Duration::from_millis(250);

    println!(
        "auditship demo: a simulated Miosa API with {} sandboxes on {}",
        sandboxes.len(),
        sim.base_url()
    );
    println!("  (one sandbox has no socket, sockets drop every 250 frames, some requests fail with 429/5xx, a few frames are garbage)");
    let started = Instant::now();
    let opts = RunOptions::new(Mode::Live);
    let stop = opts.shutdown.clone();
    let progress = opts.progress.clone();
    let runner = tokio::spawn(async move {
        let r = pipeline::run(&p, opts).await;
        (p, r)
    });
    // Ship until every event the simulator made is checkpointed, or a minute passes.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done =
            sim.live_done() && progress.committed.load(Ordering::Relaxed) as usize >= sim.total_events();
        if done || Instant::now() >= deadline || runner.is_finished() {
            break;
        }
    }
    stop.cancel();
    let (p, result) = runner.await.context("the demo pipeline task failed")?;
    let report = result?;
    let elapsed = started.elapsed();
    sim.stop();

    let archive_root = dir.join("archive");
    // Every unit of the archive (manifests aside), as `verify` and `reconcile` see it.
    let files: Vec<PathBuf> = auditship::ops::verify::DirArchive::new(&archive_root)
        .list()?
        .into_iter()
        .filter(|(rel, _)| UnitCompression::from_extension(rel).is_some())
        .map(|(rel, _)| archive_root.join(rel))
        .collect();
    // Check the archive against what the simulator made: every event once, byte for byte.
    let mut archived: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for f in &files {
        for line in std::fs::read_to_string(f)?.lines() {
            *archived.entry(line.to_string()).or_default() += 1;
        }
    }
    let lines: usize = archived.values().map(|n| *n as usize).sum();
    let made: Vec<String> = sandboxes
        .iter()
        .flat_map(|s| sim.events(s))
        .map(|e| e.json.to_string())
        .collect();
    let expected = made.len();
    let missing = made.iter().filter(|j| !archived.contains_key(*j)).count();
    let duplicated = archived.values().filter(|n| **n > 1).count();
    println!();
    println!("{:<12} {:>8}  TRANSPORT AT THE END", "SANDBOX", "EVENTS");
    for sb in &sandboxes {
        let t = report
            .transports
            .get(sb)
            .map(|t| format!("{t:?}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:>8}  {}",
            sb,
            report.shipped.get(sb).copied().unwrap_or(0),
            t
        );
    }
    println!();
    println!(
        "shipped {lines} of {expected} events in {:.1}s into {} files under {}:",
        elapsed.as_secs_f64(),
        files.len(),
        archive_root.display()
    );
    for f in files.iter().take(8) {
        println!("  {}", f.display());
    }
    if files.len() > 8 {
        println!("  … and {} more", files.len() - 8);
    }
    println!(
        "dead-lettered {} garbage frames into {}",
        report.dead_lettered,
        report.dead_letter_path.display()
    );
    println!(
        "checkpoints in {} (see: auditship checkpoints pipelines/demo.toml)",
        p.checkpoint_path.display()
    );
    if lines != expected || missing > 0 || duplicated > 0 {
        return Err(fail(
            Code::Again,
            format!("the archive holds {lines} lines for {expected} events: {missing} missing, {duplicated} duplicated"),
        ));
    }
    println!("every event archived exactly once, byte for byte as the API sent it.");
    let archive = auditship::ops::verify::DirArchive::new(&archive_root);
    let verified = auditship::ops::verify::verify(&archive, &Default::default())?;
    if !verified.clean {
        eprint!("{}", verified.to_text());
        return Ok(Code::Again);
    }
    println!(
        "every file sealed in a hash-chained manifest ({} entries); check it any time: auditship verify {}",
        verified.entries,
        archive_root.display()
    );
    Ok(Code::Ok)
}
