//! The layout's promises that a compiler does not check: the client crate stands alone, test
//! helpers stay out of production builds, only the registry names sink kinds, no import circles.

use std::process::Command;

/// Crates a program that only wants audit events must never compile: the shipper's storage,
/// its sinks' heavy clients, a web server, a CLI parser.
const NOT_IN_THE_CLIENT: &[&str] = &[
    "rusqlite",
    "libsqlite3-sys",
    "rdkafka",
    "rdkafka-sys",
    "aws-sdk-s3",
    "aws-config",
    "aws-smithy-runtime",
    "axum",
    "clap",
    "auditship",
    "auditship-sink",
];

/// The package names in `cargo tree`'s output (`name vX.Y.Z …` after the tree drawing).
fn packages(tree: &str) -> Vec<String> {
    tree.lines()
        .filter_map(|line| {
            let start = line.find(|c: char| c.is_ascii_alphanumeric())?;
            let name = line[start..].split_whitespace().next()?;
            Some(name.to_string())
        })
        .collect()
}

#[test]
fn the_client_crate_depends_on_no_storage_sink_server_or_cli_crate() {
    let tree = cargo_tree("auditship-client", "normal");
    let names = packages(&tree);
    assert_eq!(
        names.first().map(String::as_str),
        Some("auditship-client"),
        "cargo tree printed no tree:\n{tree}"
    );
    // The tree really is the client's, with its own dependencies in it (a filter that matched
    // nothing would pass whatever the tree held).
    for expected in ["reqwest", "rustls", "tokio"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from:\n{tree}"
        );
    }
    let forbidden: Vec<&String> = names
        .iter()
        .filter(|n| NOT_IN_THE_CLIENT.contains(&n.as_str()) || n.starts_with("aws-"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "auditship-client pulls in {forbidden:?}; keep them out of crates/auditship-client/Cargo.toml"
    );
}

/// `cargo tree` of `package` with the given edge kinds, one line a node, no tree drawing.
fn cargo_tree(package: &str, edges: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            package,
            "-e",
            edges,
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sinks' test helpers (tansu and moto spawners, in-memory registries) sit behind their
/// crates' `testing` feature, which only the tests turn on: a production build has none of them.
#[test]
fn sink_test_helpers_are_only_in_test_builds() {
    let testing = |tree: &str| -> Vec<String> {
        tree.lines()
            .filter(|l| l.contains("feature \"testing\""))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let production = cargo_tree("auditship", "normal,features");
    assert!(
        production.contains("auditship-sink-s3") && production.contains("auditship-sink-kafka"),
        "the tree lacks the sink crates:\n{production}"
    );
    assert_eq!(
        testing(&production),
        Vec::<String>::new(),
        "a production build turns on test helpers"
    );
    // The same question of the test build finds them, so the check above can fail.
    let tests = testing(&cargo_tree("auditship", "normal,dev,features"));
    for krate in ["auditship-sink", "auditship-sink-kafka", "auditship-sink-s3"] {
        assert!(
            tests.iter().any(|l| l.starts_with(&format!("{krate} feature"))),
            "{krate}'s testing feature is not on for the tests: {tests:?}"
        );
    }
}

/// The sink registry's promise (README, "Adding a sink"): outside `src/sinks.rs`, the shipper's
/// code names no sink kind, so a new kind changes its crate and the registry only. `verify`'s
/// reading of `s3://` archives is the one named exception (its command line names S3).
#[test]
fn only_the_registry_names_sink_kinds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let kinds = [
        "auditship_sink_file",
        "auditship_sink_kafka",
        "auditship_sink_s3",
        "AnySink::File",
        "AnySink::Kafka",
        "AnySink::S3",
    ];
    let allowed = |file: &str, kind: &str| {
        file == "sinks.rs"
            || (kind == "auditship_sink_s3" && matches!(file, "ops/verify/mod.rs" | "cli/archive.rs"))
    };
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "rs") {
                files.push(entry.path());
            }
        }
    }
    assert!(files.len() > 20, "the walk found too few sources: {files:?}");
    let mut named = Vec::new();
    for path in &files {
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(path).unwrap();
        // Unit tests (a `tests.rs`, or what follows `#[cfg(test)]`) may build a kind by hand.
        if rel.ends_with("tests.rs") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for kind in kinds {
                if line.contains(kind) && !allowed(&rel, kind) {
                    named.push(format!("src/{rel}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        named.is_empty(),
        "sink kinds named outside src/sinks.rs (go through auditship_sink::SinkConfig instead):\n{}",
        named.join("\n")
    );
}

/// The library's top-level modules under `src/` form no import circle: each can be read (and
/// one day moved into a crate of its own) after the ones it uses. Comments and unit tests
/// aside, every `crate::NAME` a module's files name is an edge.
#[test]
fn the_library_modules_import_no_circle() {
    use std::collections::{BTreeMap, BTreeSet};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
            // The binary's modules (cli) sit above the library; lib.rs only declares.
            if !rel.ends_with(".rs")
                || rel.ends_with("tests.rs")
                || ["lib", "main", "cli"].contains(&top.as_str())
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for part in line.split("crate::").skip(1) {
                    let name: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        edges.entry(top.clone()).or_default().insert(name);
                    }
                }
            }
        }
    }
    assert!(edges.contains_key("pipeline"), "no edges found: {edges:?}");
    // Depth-first search for a path back to where it started.
    fn circle(
        from: &str,
        at: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        for next in edges.get(at).into_iter().flatten() {
            if next == from {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if !path.contains(next) {
                path.push(next.clone());
                if let Some(c) = circle(from, next, edges, path) {
                    return Some(c);
                }
                path.pop();
            }
        }
        None
    }
    for start in edges.keys() {
        let mut path = vec![start.clone()];
        if let Some(c) = circle(start, start, &edges, &mut path) {
            panic!("an import circle: {}", c.join(" -> "));
        }
    }
}
