//! `auditship validate`: check pipeline files without running them.

use std::path::PathBuf;

use auditship::config::{self, LoadMode};

use super::exit::{Code, CommandResult};

/// `auditship validate`: every error of every file, then [`Code::Fix`] if there was one.
pub fn validate(paths: &[PathBuf]) -> CommandResult {
    let mut failed = false;
    for path in paths {
        match config::load(path, LoadMode::Validate) {
            Ok(p) => {
                for w in &p.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "ok: {} (pipeline {:?}: {}, sinks: {})",
                    path.display(),
                    p.name,
                    match &p.discovery {
                        Some(_) => "every sandbox (discovered)".to_string(),
                        None => format!("{} sandbox(es)", p.sandboxes.len()),
                    },
                    p.sinks.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            Err(errors) => {
                failed = true;
                for e in errors.0 {
                    println!("error: {e}");
                }
            }
        }
    }
    Ok(if failed { Code::Fix } else { Code::Ok })
}
