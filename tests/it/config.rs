//! Pipeline files: the shipped ones validate, broken ones are named by file:line:column.

use std::path::Path;

use auditship::config::{self, LoadMode};

#[test]
fn every_shipped_pipeline_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let p = config::load(&path, LoadMode::Validate).unwrap_or_else(|e| panic!("{e}"));
        assert!(!p.sinks.is_empty());
        checked += 1;
    }
    assert!(
        checked >= 4,
        "pipelines/ holds the demo, the compliance archives (files, S3) and the SIEM pipeline"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditship"))
        .arg("validate")
        .args(std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn validate_names_file_line_and_column_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[source]\napi_key = \"${X}\"\nsandboxes = [\"a\"]\n\n[sinks.archive]\ntype = \"file\"\npath = \"a/{nope}.log\"\n",
    )
    .unwrap();
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[source]\nsandboxes = [\"a\"]\npoll_intervall_ms = 5\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditship"))
        .args(["validate"])
        .arg(&bad)
        .arg(&unknown)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{}:5:1: sinks.archive: unknown placeholder `{{nope}}`",
            bad.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "{}:3:1: unknown field `poll_intervall_ms`",
            unknown.display()
        )),
        "{stdout}"
    );
}
