//! Sharding: `--shard I/N` processes together follow every sandbox exactly once, and a fleet
//! resharded from 2 to 3 processes resumes every sandbox where it was (export, import).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use auditship::shard::Shard;
use auditship::sim::SimConfig;

use crate::util::{assert_exactly_once, finish, signal, sim, sim_lines, wait_for, walk, Proc, Workspace};

/// A workspace whose pipeline keeps each shard's state and archive apart.
fn sharded_workspace(sim: &auditship::sim::Simulator, ids: &[&str]) -> Workspace {
    let sinks = "[sinks.archive]\ntype = \"file\"\npath = \"{root}/archive/shard-${AUDITSHIP_SHARD}/{resource_id}/{date}.ndjson\"\n";
    let ws = Workspace::with_sinks(sim, ids, "", sinks);
    let text = std::fs::read_to_string(&ws.pipeline).unwrap();
    let text = text.replace(
        "/state/checkpoints.db",
        "/state/shard-${AUDITSHIP_SHARD}/checkpoints.db",
    );
    std::fs::write(&ws.pipeline, text).unwrap();
    ws
}

/// Which shard directory holds each sandbox's files.
fn placement(root: &Path) -> BTreeMap<String, BTreeSet<u32>> {
    let mut files = Vec::new();
    walk(&root.join("archive"), &mut files);
    let mut out: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(root.join("archive")).unwrap();
        let mut parts = rel.iter().map(|p| p.to_string_lossy().into_owned());
        let shard = parts
            .next()
            .unwrap()
            .trim_start_matches("shard-")
            .parse()
            .unwrap();
        let sandbox = parts.next().unwrap();
        out.entry(sandbox).or_default().insert(shard);
    }
    out
}

fn start_shards(ws: &Workspace, key: &str, count: u32) -> Vec<Proc> {
    (0..count)
        .map(|i| ws.spawn(key, &["run", "pipe.toml", "--shard", &format!("{i}/{count}")]))
        .collect()
}

async fn stop_all(procs: Vec<Proc>) {
    // Let the last batches commit before the drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in &procs {
        signal(p, libc::SIGTERM);
    }
    for p in procs {
        let out = finish(p, Duration::from_secs(30));
        assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_shards_together_follow_every_sandbox_exactly_once() {
    let ids: Vec<String> = (0..12).map(|i| format!("sb-shard-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let sim = sim(
        &refs,
        SimConfig {
            backlog_per_sandbox: 60,
            live_rate_per_sec: 50.0,
            live_events_per_sandbox: Some(40),
            ..SimConfig::default()
        },
    )
    .await;
    let ws = sharded_workspace(&sim, &refs);
    let procs = start_shards(&ws, sim.api_key(), 2);
    wait_for("every event archived", Duration::from_secs(60), || {
        sim.live_done() && ws.archive_lines_so_far().len() >= sim.total_events()
    })
    .await;
    stop_all(procs).await;
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &refs));
    let placed = placement(ws.path());
    assert_eq!(placed.len(), ids.len(), "every sandbox is followed");
    for (sandbox, shards) in &placed {
        assert_eq!(shards.len(), 1, "{sandbox} is in one shard: {shards:?}");
        assert_eq!(
            *shards.iter().next().unwrap(),
            Shard::owner(sandbox, 2),
            "{sandbox}"
        );
    }
    assert!(
        placed.values().any(|s| s.contains(&0)) && placed.values().any(|s| s.contains(&1)),
        "both shards work"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resharding_from_2_to_3_with_export_and_import_resumes_every_sandbox() {
    let ids: Vec<String> = (0..12).map(|i| format!("sb-move-{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let sim = sim(
        &refs,
        SimConfig {
            backlog_per_sandbox: 80,
            ..SimConfig::default()
        },
    )
    .await;
    let ws = sharded_workspace(&sim, &refs);
    let key = sim.api_key().to_string();
    let procs = start_shards(&ws, &key, 2);
    wait_for("the backlog archived", Duration::from_secs(60), || {
        ws.archive_lines_so_far().len() >= sim.total_events()
    })
    .await;
    stop_all(procs).await;

    // Reshard: export every old shard, import every export into every new shard.
    let moving: Vec<&str> = refs
        .iter()
        .copied()
        .filter(|id| Shard::owner(id, 3) == 2)
        .collect();
    assert!(!moving.is_empty(), "some sandboxes move to the new shard");
    // The pipeline file's paths use ${AUDITSHIP_SHARD}: name the shard whose database to use.
    let checkpoints = |shard: u32, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditship"))
            .arg("checkpoints")
            .arg("pipe.toml")
            .args(args)
            .current_dir(ws.path())
            .env("AUDITSHIP_SHARD", shard.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stderr).unwrap()
    };
    for i in 0..2 {
        checkpoints(i, &["--export", &format!("export-{i}.ndjson")]);
    }
    for i in 0..3 {
        for file in ["export-0.ndjson", "export-1.ndjson"] {
            checkpoints(i, &["--import", file]);
        }
    }
    for id in &refs {
        sim.append(id, 9);
    }
    let procs = start_shards(&ws, &key, 3);
    wait_for("the new events archived", Duration::from_secs(60), || {
        ws.archive_lines_so_far().len() >= sim.total_events()
    })
    .await;
    stop_all(procs).await;
    // No sandbox started over in its new shard: every event exactly once across all shards.
    assert_exactly_once(&ws.archive_lines(), &sim_lines(&sim, &refs));
    let placed = placement(ws.path());
    for id in &moving {
        assert_eq!(
            placed[*id],
            BTreeSet::from([Shard::owner(id, 2), 2]),
            "{id}: history in its old shard, new events in shard 2"
        );
    }
}
