//! Tests of the transform transformer and the OCSF golden files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use auditship_sink::{Batch, Event};
use bytes::Bytes;
use serde_json::{json, Value};

use super::*;

fn event(v: &Value) -> Event {
    let raw = serde_json::to_vec(v).unwrap();
    Event {
        raw: Bytes::from(raw),
        id: Arc::from(v["id"].as_str().unwrap_or("")),
        resource_id: Arc::from(v["resource_id"].as_str().unwrap_or("sb-1")),
        cursor_us: None,
        cursor_span: Some((1, 2)),
        time_us: None,
        seq: 1,
    }
}

/// Compile `[[transforms]]` from TOML text: the transformer, or every error.
fn compile(toml_text: &str) -> Result<Transformer, Vec<String>> {
    spec_of(toml_text).map(|spec| spec.start())
}

/// Compile `[[transforms]]` from TOML text: the list, or every error.
fn spec_of(toml_text: &str) -> Result<Transforms, Vec<String>> {
    #[derive(serde::Deserialize)]
    struct F {
        transforms: Vec<TransformConfig>,
    }
    let f: F = toml::from_str(toml_text).map_err(|e| vec![e.to_string()])?;
    let (mut warnings, mut errors) = (Vec::new(), Vec::new());
    let mut spec = Transforms::default();
    spec.extend(
        "transforms",
        &f.transforms,
        &mut Compile {
            validate_only: false,
            warnings: &mut warnings,
            errors: &mut errors,
        },
    );
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

fn transformer(toml_text: &str) -> Transformer {
    compile(toml_text).unwrap()
}

fn errors_of(toml_text: &str) -> Vec<String> {
    compile(toml_text).err().unwrap_or_default()
}

fn kept(o: Outcome) -> Value {
    match o {
        Outcome::Keep(e) => serde_json::from_slice(&e.raw).unwrap(),
        other => panic!("expected a kept event, got {other:?}"),
    }
}

#[test]
fn a_filter_keeps_matches_and_leaves_their_bytes_alone() {
    let mut c = transformer(
        r#"
[[transforms]]
type = "filter"
when = { action = ["reject", "error"] }
"#,
    );
    // Spacing and number spelling the parser would change: a pure filter must not.
    let raw = br#"{"id":"e1","action":"reject","cost":1.50, "x":1e-3}"#;
    let e = Event {
        raw: Bytes::from_static(raw),
        ..event(&json!({"id": "e1"}))
    };
    match c.apply(&e) {
        Outcome::Keep(out) => {
            assert_eq!(&out.raw[..], raw);
            assert_eq!(
                out.cursor_span, e.cursor_span,
                "an untouched event keeps its cursor span"
            );
        }
        other => panic!("{other:?}"),
    }
    let allow = event(&json!({"id": "e2", "action": "allow"}));
    assert!(matches!(c.apply(&allow), Outcome::Drop { step: 0 }));
    assert_eq!(c.label(0), "transforms[1] (filter)");
}

#[test]
fn set_rename_remove_reshape_in_order() {
    let mut c = transformer(
        r#"
[[transforms]]
type = "set"
fields = { "labels.env" = "prod", "labels.tier" = 2 }

[[transforms]]
type = "rename"
fields = { host = "destination.host", "metadata.trace" = "trace_id" }

[[transforms]]
type = "remove"
fields = ["metadata", "effect"]

[[transforms]]
type = "set"
fields = { flagged = true }
when = { action = "reject" }
"#,
    );
    let e = event(
        &json!({"id": "e1", "action": "allow", "effect": "allow", "host": "pypi.org", "metadata": {"trace": "t1", "x": 1}}),
    );
    let out = kept(c.apply(&e));
    assert_eq!(
        serde_json::to_string(&out).unwrap(),
        r#"{"id":"e1","action":"allow","labels":{"env":"prod","tier":2},"destination":{"host":"pypi.org"},"trace_id":"t1"}"#
    );
    let r = event(&json!({"id": "e2", "action": "reject"}));
    assert_eq!(kept(c.apply(&r))["flagged"], json!(true));
}

#[test]
fn a_transform_that_cannot_work_fails_the_event_with_the_reason() {
    let mut c = transformer(
        r#"
[[transforms]]
type = "set"
fields = { "host.name" = "x" }
"#,
    );
    let e = event(&json!({"id": "e1", "host": "pypi.org"}));
    match c.apply(&e) {
        Outcome::Fail(why) => assert_eq!(
            why,
            "transforms[1] (set): cannot set `host.name`: `host` is a string"
        ),
        other => panic!("{other:?}"),
    }
    let not_json = Event {
        raw: Bytes::from_static(b"[1,2]"),
        ..e
    };
    assert!(matches!(c.apply(&not_json), Outcome::Fail(w) if w.contains("not a JSON object")));
}

#[test]
fn dedupe_drops_repeats_within_its_window_only() {
    let mut c = transformer(
        r#"
[[transforms]]
type = "dedupe"
window_events = 2
"#,
    );
    let ids = ["a", "b", "a", "c", "a", "a"];
    let kept: Vec<bool> = ids
        .iter()
        .map(|id| matches!(c.apply(&event(&json!({"id": id}))), Outcome::Keep(_)))
        .collect();
    // "a" is remembered until two newer ids push it out of the window.
    assert_eq!(kept, [true, true, false, true, true, false]);

    let mut by_field = transformer(
        r#"
[[transforms]]
type = "dedupe"
field = "metadata.request_id"
"#,
    );
    let a = event(&json!({"id": "1", "metadata": {"request_id": "r1"}}));
    let b = event(&json!({"id": "2", "metadata": {"request_id": "r1"}}));
    let none = event(&json!({"id": "3"}));
    assert!(matches!(by_field.apply(&a), Outcome::Keep(_)));
    assert!(matches!(by_field.apply(&b), Outcome::Drop { .. }));
    assert!(matches!(by_field.apply(&none), Outcome::Keep(_)));
    assert!(
        matches!(by_field.apply(&none), Outcome::Keep(_)),
        "no value: never a duplicate"
    );
}

#[test]
fn redact_in_a_list_with_hmac_from_the_environment() {
    std::env::set_var(HMAC_KEY_ENV, "a-test-key-of-32-bytes-0123456789");
    let mut c = transformer(
        r#"
[[transforms]]
type = "redact"
fields = ["metadata.authorization", "path"]
mode = "hmac-sha256"
secrets = true
"#,
    );
    let e = event(
        &json!({"id": "e1", "path": "/x?q=1", "metadata": {"authorization": "Bearer sk-live-abcdefghijklmnopqrstuvwx", "note": "key msk_live_abcdef123456"}}),
    );
    let out = kept(c.apply(&e));
    let text = out.to_string();
    for clear in ["/x?q=1", "sk-live-abcdef", "msk_live_abcdef"] {
        assert!(!text.contains(clear), "{clear} in {text}");
    }
    assert!(out["path"].as_str().unwrap().starts_with("hmac-sha256:"));
    let again = kept(c.apply(&e));
    assert_eq!(out, again, "deterministic: a rewritten batch is identical");
}

#[test]
fn hmac_without_a_key_is_an_error_naming_the_variable() {
    let errors = errors_of(
        r#"
[[transforms]]
type = "redact"
fields = ["path"]
mode = "hmac-sha256"
hmac_key = "${AUDITSHIP_TEST_NO_SUCH_KEY}"
"#,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("AUDITSHIP_TEST_NO_SUCH_KEY is not set"),
        "{errors:?}"
    );
    assert!(errors[0].contains("export AUDITSHIP_HMAC_KEY"), "{errors:?}");
}

#[test]
fn a_list_validated_without_its_hmac_key_says_it_cannot_run() {
    #[derive(serde::Deserialize)]
    struct F {
        transforms: Vec<TransformConfig>,
    }
    let f: F = toml::from_str(
        "[[transforms]]\ntype = \"redact\"\nfields = [\"path\"]\nmode = \"hmac-sha256\"\nhmac_key = \"${AUDITSHIP_TEST_UNSET_HMAC}\"\n",
    )
    .unwrap();
    let (mut warnings, mut errors) = (Vec::new(), Vec::new());
    let mut spec = Transforms::default();
    spec.extend(
        "transforms",
        &f.transforms,
        &mut Compile {
            validate_only: true,
            warnings: &mut warnings,
            errors: &mut errors,
        },
    );
    assert!(errors.is_empty(), "{errors:?}");
    assert!(warnings[0].contains("(needed to run)"), "{warnings:?}");
    assert_eq!(spec.not_runnable(), Some("transforms[1] (redact)"));
}

#[test]
fn config_mistakes_are_named() {
    let cases = [
        (
            "type = \"filter\"\nwhen = { action = { is = \"x\" } }",
            "unknown test `is`",
        ),
        ("type = \"redact\"\nmode = \"mask\"", "nothing to redact"),
        (
            "type = \"redact\"\nfields = [\"a\"]\nmode = \"scramble\"",
            "unknown variant `scramble`",
        ),
        ("type = \"redact\"\npatterns = [\"(\"]", "does not compile"),
        ("type = \"remove\"\nfields = []", "fields is empty"),
        ("type = \"dedupe\"\nwindow_events = 0", "at least 1"),
        ("type = \"rename\"\nfields = { a = 1 }", "must be a string"),
        ("type = \"uppercase\"", "unknown variant `uppercase`"),
        ("type = \"ocsf\"\nversion = \"1.0\"", "unknown field `version`"),
    ];
    for (body, want) in cases {
        let errors = errors_of(&format!("[[transforms]]\n{body}\n"));
        assert!(errors.iter().any(|e| e.contains(want)), "{body}: {errors:?}");
    }
}

#[test]
fn a_batch_keeps_its_number_and_reports_failures() {
    let mut c = transformer(
        r#"
[[transforms]]
type = "filter"
when = { action = { ne = "allow" } }

[[transforms]]
type = "ocsf"
"#,
    );
    let batch = Arc::new(Batch {
        number: 7,
        events: vec![
            event(&json!({"id": "1", "action": "allow", "timestamp": "2026-11-25T10:00:00Z"})),
            event(&json!({"id": "2", "action": "reject", "timestamp": "2026-11-25T10:00:00Z"})),
            event(&json!({"id": "3", "action": "reject"})),
        ],
    });
    let applied = c.apply_batch(&batch);
    let (out, failed) = (applied.batch, applied.failed);
    assert_eq!(applied.dropped, 1);
    assert_eq!(out.number, 7);
    assert_eq!(out.events.len(), 1);
    assert_eq!(
        &*out.events[0].id, "2",
        "the pipeline's id stays with the reshaped event"
    );
    assert_eq!(out.events[0].cursor_span, None);
    assert_eq!(failed.len(), 1);
    assert_eq!(&*failed[0].0.id, "3");
    assert!(
        failed[0]
            .1
            .starts_with("transforms[2] (ocsf): ocsf: the event has no `timestamp`"),
        "{}",
        failed[0].1
    );
}

#[test]
fn the_ocsf_counters_count_mapped_unmapped_fields_and_failures_once_per_batch() {
    use std::sync::atomic::Ordering::Relaxed;
    let spec = |text: &str| spec_of(text).unwrap();
    let counters = Arc::new(ocsf::OcsfCounters::default());
    let mut t = spec("[[transforms]]\ntype = \"ocsf\"\n").start_counted(counters.clone());
    assert!(
        counters.active.load(Relaxed),
        "a place with an ocsf step is reported"
    );
    let batch = Arc::new(Batch {
        number: 1,
        events: vec![
            event(
                &json!({"id": "1", "action": "allow", "timestamp": "2026-11-25T10:00:00Z", "policy_id": "p", "x": 1}),
            ),
            event(&json!({"id": "2", "action": "reject", "timestamp": "2026-11-25T10:00:00Z"})),
            event(&json!({"id": "3", "action": "reject"})),
        ],
    });
    let first = t.apply(&batch.events[0]);
    assert!(matches!(first, Outcome::Keep(_)));
    assert_eq!(
        counters.mapped.load(Relaxed),
        0,
        "an event alone is tallied, not yet added"
    );
    let applied = t.apply_batch(&batch);
    assert_eq!(applied.failed.len(), 1);
    assert_eq!(
        counters.mapped.load(Relaxed),
        3,
        "2 in the batch and the one before it"
    );
    assert_eq!(
        counters.unmapped_fields.load(Relaxed),
        4,
        "policy_id and x, twice"
    );
    assert_eq!(counters.failed.load(Relaxed), 1);

    let idle = Arc::new(ocsf::OcsfCounters::default());
    let _ = spec("[[transforms]]\ntype = \"remove\"\nfields = [\"x\"]\n").start_counted(idle.clone());
    assert!(!idle.active.load(Relaxed), "no ocsf step, nothing reported");
}

#[test]
fn a_redacted_id_is_the_ocsf_uid_as_its_keyed_digest() {
    // The same key the other HMAC test sets (tests share the process environment).
    std::env::set_var(HMAC_KEY_ENV, "a-test-key-of-32-bytes-0123456789");
    let mut t = transformer(
        r#"
[[transforms]]
type = "redact"
fields = ["id"]
mode = "hmac-sha256"

[[transforms]]
type = "ocsf"
"#,
    );
    let mut out = |id: &str| {
        kept(t.apply(&event(
            &json!({"id": id, "action": "allow", "timestamp": "2026-11-25T10:00:00Z"}),
        )))
    };
    let (a, b, c) = (out("evt_1"), out("evt_1"), out("evt_2"));
    let uid = a["metadata"]["uid"].as_str().unwrap();
    assert!(uid.starts_with("hmac-sha256:") && uid.len() == 12 + 64, "{uid}");
    assert_eq!(
        a["metadata"]["uid"], b["metadata"]["uid"],
        "equal ids, equal digests"
    );
    assert_ne!(a["metadata"]["uid"], c["metadata"]["uid"]);
    assert!(
        !a.to_string().contains("evt_1"),
        "the id is nowhere in clear: {a}"
    );
}

// ---- OCSF golden files -------------------------------------------------------------------

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ocsf")
}

/// The attributes OCSF requires of every event of these classes, and the class
/// constraints (at least one of src/dst endpoint; HTTP: at least one of request/response).
fn check_required(name: &str, v: &Value) {
    let must = |path: &str| {
        let mut at = v;
        for seg in path.split('.') {
            at = at
                .get(seg)
                .unwrap_or_else(|| panic!("{name}: required `{path}` missing in {v}"));
        }
        assert!(!at.is_null(), "{name}: `{path}` is null");
        at
    };
    for path in [
        "activity_id",
        "category_uid",
        "class_uid",
        "type_uid",
        "severity_id",
        "time",
        "metadata.version",
        "metadata.product.vendor_name",
        "metadata.product.name",
    ] {
        must(path);
    }
    let class = must("class_uid").as_u64().unwrap();
    let activity = must("activity_id").as_u64().unwrap();
    assert!(class == 4001 || class == 4002, "{name}: class {class}");
    assert_eq!(must("category_uid"), &json!(4), "{name}");
    assert_eq!(
        must("type_uid").as_u64().unwrap(),
        class * 100 + activity,
        "{name}: type_uid"
    );
    assert_eq!(must("metadata.version"), &json!(ocsf::OCSF_VERSION));
    let allowed_activities: &[u64] = if class == 4002 {
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 99]
    } else {
        &[0, 1, 2, 3, 4, 5, 6, 7, 99]
    };
    assert!(
        allowed_activities.contains(&activity),
        "{name}: activity {activity}"
    );
    assert!([0, 1, 2, 3, 4, 5, 6, 99].contains(&must("severity_id").as_u64().unwrap()));
    assert!(
        v.get("src_endpoint").is_some() || v.get("dst_endpoint").is_some(),
        "{name}: no endpoint"
    );
    if class == 4002 {
        assert!(
            v.get("http_request").is_some() || v.get("http_response").is_some(),
            "{name}: no http_request/response"
        );
    }
    assert!(v["time"].is_i64(), "{name}: time is ms since the epoch");
    if let Some(url) = v.get("http_request").and_then(|r| r.get("url")) {
        assert!(
            url.get("path").is_some() || url.get("url_string").is_some(),
            "{name}: url needs a path or url_string"
        );
    }
    // Every sibling pair agrees in presence.
    for (id, caption) in [
        ("activity_id", "activity_name"),
        ("severity_id", "severity"),
        ("status_id", "status"),
        ("action_id", "action"),
        ("disposition_id", "disposition"),
    ] {
        assert_eq!(
            v.get(id).is_some(),
            v.get(caption).is_some(),
            "{name}: {id}/{caption}"
        );
    }
}

#[test]
fn ocsf_golden_files_for_every_action() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut c = transformer("[[transforms]]\ntype = \"ocsf\"\n");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 10, "golden inputs: {inputs:?}");
    let mut actions_seen = std::collections::BTreeSet::new();
    for input in inputs {
        let name = input
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".input.json", "");
        let source: Value = serde_json::from_slice(&std::fs::read(&input).unwrap()).unwrap();
        if let Some(a) = source.get("action").and_then(Value::as_str) {
            actions_seen.insert(a.to_string());
        }
        let out = kept(c.apply(&event(&source)));
        check_required(&name, &out);
        // Nothing is lost: every top-level input field is mapped or kept under `unmapped`.
        for (k, val) in source.as_object().unwrap() {
            let in_unmapped = out.get("unmapped").and_then(|u| u.get(k)) == Some(val);
            let text = out.to_string();
            let mapped = match val {
                // A path keeps its part before `?`, a host its part before `:port`.
                Value::String(s) => {
                    text.contains(&format!("\"{s}\"")) || text.contains(s.split(['?', ':']).next().unwrap())
                }
                other => text.contains(&other.to_string()),
            };
            assert!(
                in_unmapped || mapped || k == "inserted_at" || k == "timestamp",
                "{name}: `{k}` was lost"
            );
        }
        let golden = golden_dir().join(format!("{name}.ocsf.json"));
        let pretty = serde_json::to_string_pretty(&out).unwrap() + "\n";
        if update {
            std::fs::write(&golden, &pretty).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|_| {
            panic!(
                "{} is missing; run with UPDATE_GOLDEN=1 and review it",
                golden.display()
            )
        });
        assert_eq!(pretty, want, "{name}: output differs from {}", golden.display());
    }
    for action in ["allow", "reject", "stub", "error", "client_cancel", "denied"] {
        assert!(actions_seen.contains(action), "no golden for action {action}");
    }
}

#[test]
fn ocsf_reads_a_changed_tree_exactly_as_it_reads_text() {
    // `set` then `remove` leaves the event as it was but as a changed tree, so `ocsf` takes its
    // tree path; the result must equal the text path's.
    let mut via_text = transformer("[[transforms]]\ntype = \"ocsf\"\n");
    let mut via_tree = transformer(
        "[[transforms]]\ntype = \"set\"\nfields = { zz = 1 }\n[[transforms]]\ntype = \"remove\"\nfields = [\"zz\"]\n[[transforms]]\ntype = \"ocsf\"\n",
    );
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".input.json") {
            continue;
        }
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let e = event(&v);
        assert_eq!(
            kept(via_text.apply(&e)),
            kept(via_tree.apply(&e)),
            "{}",
            path.display()
        );
    }
}
