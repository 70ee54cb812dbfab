//! `${VAR}` and `${VAR:-default}` in pipeline files: the environment, and variables the process
//! defines itself. Below the pipeline file's loader and the transforms, which both resolve
//! values with it.

use std::collections::BTreeMap;

/// Variables the process defines itself (`AUDITSHIP_SHARD` and `AUDITSHIP_SHARDS` under
/// `--shard`); `${VAR}` sees them before the environment.
static DEFINED: std::sync::Mutex<BTreeMap<String, String>> = std::sync::Mutex::new(BTreeMap::new());

/// Define `${name}` for pipeline files loaded from now on (it wins over the environment).
pub fn define_var(name: &str, value: &str) {
    let mut vars = DEFINED.lock().unwrap_or_else(|e| e.into_inner());
    vars.insert(name.to_string(), value.to_string());
}

fn lookup_var(name: &str) -> Option<String> {
    let defined = DEFINED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned();
    defined.or_else(|| std::env::var(name).ok())
}

/// Replace `${VAR}` and `${VAR:-default}` with the environment's values.
pub fn interpolate(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            return Err("unclosed `${` (write ${VAR})".into());
        };
        let expr = &rest[start + 2..start + end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{expr}}}` is not a variable name"));
        }
        match (lookup_var(name), default) {
            (Some(v), _) if !v.is_empty() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            _ => return Err(format!("environment variable {name} is not set")),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
