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
        checked >= 5,
        "pipelines/ holds the demo, the compliance archives (files, S3) and the SIEM pipelines (Kafka, OCSF)"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditship"))
        .arg("validate")
        .args(std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // Each one's transforms run on sample events of every action (offline, no key but the HMAC's).
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ocsf");
    let mut sample = String::new();
    for entry in std::fs::read_dir(&golden).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with(".input.json") {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            sample.push_str(&v.to_string());
            sample.push('\n');
        }
    }
    let samples = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(samples.path(), &sample).unwrap();
    let mut with_ocsf = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditship"))
            .arg("transform")
            .arg(&path)
            .arg("--input")
            .arg(samples.path())
            .env("AUDITSHIP_HMAC_KEY", "pipelines-test-key-0123456789abcdef")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("== sinks."), "{}: {stdout}", path.display());
        if stdout.contains("\"class_uid\":4002") {
            with_ocsf += 1;
        }
    }
    assert!(with_ocsf >= 1, "the SIEM example reshapes to OCSF");
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
