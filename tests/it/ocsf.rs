//! The OCSF output, validated by an OCSF implementation we did not write: PyPI's
//! `pydantic-ocsf` (pinned, installed by `scripts/services`), through `tests/ocsf/validate.py`,
//! which says what it checks and which of the library's gaps it closes from the same schema.
//!
//! Validated: every golden, a property-generated sample of events (mapped from bytes and from
//! a tree, as the transform does), and the gap findings of `reconcile` (tests/it/reconcile.rs).
//! The validator is shown to refuse wrong enums, a misspelled attribute and a missing one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use auditship::transform::ocsf;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Map, Value};

/// The Python that has the pinned tools, from `scripts/services env`.
pub fn python() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/services"))
        .arg("env")
        .output()
        .map_err(|e| format!("scripts/services env: {e}"))?;
    let env = String::from_utf8_lossy(&out.stdout);
    let path = env
        .lines()
        .find_map(|l| l.strip_prefix("export AUDITSHIP_PYTHON="))
        .map(|p| PathBuf::from(p.trim_matches('\'')))
        .ok_or_else(|| format!("scripts/services env names no AUDITSHIP_PYTHON: {env}"))?;
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "the Python test tools are not installed ({} is missing): run `./scripts/services install`",
            path.display()
        ))
    }
}

/// What the validator said about `events` (one OCSF event each): its exit status and output.
pub fn run_validator(events: &[String]) -> (bool, String) {
    let python = python().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, events.join("\n") + "\n").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ocsf/validate.py");
    let out = Command::new(python).arg(script).arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Fails the test unless the validator passes every one of `events`.
pub fn assert_valid_ocsf(events: &[String]) {
    assert!(!events.is_empty(), "nothing to validate");
    let (ok, text) = run_validator(events);
    assert!(ok, "OCSF validation failed:\n{text}");
    let summary = format!("{n} of {n} events valid", n = events.len());
    assert!(text.contains(&summary), "{text}");
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/ocsf")
}

/// Every golden input, mapped now (the golden test in the library pins them to the files).
fn golden_outputs() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".input.json") {
            let raw = std::fs::read(&path).unwrap();
            let v: Value = serde_json::from_slice(&raw).unwrap();
            let mapped = ocsf::map(v.to_string().as_bytes(), "sb-golden").unwrap();
            out.push((stem.to_string(), serde_json::from_slice(&mapped.json).unwrap()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 10, "{} goldens", out.len());
    out
}

#[test]
fn every_golden_is_valid_ocsf() {
    let outputs = golden_outputs();
    let lines: Vec<String> = outputs.iter().map(|(_, v)| v.to_string()).collect();
    assert_valid_ocsf(&lines);
    // The checked-in files too (the library's golden test keeps them equal to the mapping).
    let files: Vec<String> = outputs
        .iter()
        .map(|(name, _)| {
            let text = std::fs::read_to_string(golden_dir().join(format!("{name}.ocsf.json"))).unwrap();
            serde_json::from_str::<Value>(&text).unwrap().to_string()
        })
        .collect();
    assert_valid_ocsf(&files);
}

/// One mutation of a valid event and the attribute the validator must name.
struct Broken {
    what: &'static str,
    names: &'static str,
    change: fn(&mut Value),
}

#[test]
fn the_validator_refuses_wrong_enums_and_attributes() {
    let outputs = golden_outputs();
    let http = outputs.iter().find(|(n, _)| n == "allow").unwrap().1.clone();
    let net = outputs
        .iter()
        .find(|(n, _)| n == "network_reject")
        .unwrap()
        .1
        .clone();
    assert_eq!(
        (http["class_uid"].as_u64(), net["class_uid"].as_u64()),
        (Some(4002), Some(4001))
    );
    let cases = [
        Broken {
            what: "a severity that does not exist",
            names: "severity_id",
            change: |v| v["severity_id"] = json!(7),
        },
        Broken {
            what: "a connection direction that does not exist",
            names: "connection_info.direction_id",
            change: |v| v["connection_info"]["direction_id"] = json!(9),
        },
        Broken {
            what: "a profile attribute's wrong enum (security_control's action_id)",
            names: "action_id",
            change: |v| v["action_id"] = json!(3),
        },
        Broken {
            what: "a disposition that does not exist",
            names: "disposition_id",
            change: |v| v["disposition_id"] = json!(28),
        },
        Broken {
            what: "an HTTP activity that does not exist, with a type_uid that agrees",
            names: "activity_id",
            change: |v| {
                v["activity_id"] = json!(10);
                v["type_uid"] = json!(400210);
            },
        },
        Broken {
            what: "a type_uid that disagrees with the activity",
            names: "type_uid",
            change: |v| v["type_uid"] = json!(400299),
        },
        Broken {
            what: "a status caption that disagrees with status_id",
            names: "status_id",
            change: |v| v["status"] = json!("Failure"),
        },
        Broken {
            what: "a number where the schema wants a string (http_method)",
            names: "http_request.http_method",
            change: |v| v["http_request"]["http_method"] = json!(3),
        },
        Broken {
            what: "a misspelled attribute",
            names: "dst_endpont",
            change: |v| v["dst_endpont"] = json!({"hostname": "x"}),
        },
        Broken {
            what: "a misspelled attribute inside an object",
            names: "dst_endpoint.hostnme",
            change: |v| v["dst_endpoint"]["hostnme"] = json!("x"),
        },
        Broken {
            what: "a required attribute missing",
            names: "time",
            change: |v| {
                v.as_object_mut().unwrap().remove("time");
            },
        },
        Broken {
            what: "severity_id missing (its caption alone is not enough)",
            names: "severity_id",
            change: |v| {
                v.as_object_mut().unwrap().remove("severity_id");
            },
        },
    ];
    let mut lines = Vec::new();
    for c in &cases {
        let mut v = http.clone();
        (c.change)(&mut v);
        lines.push(v.to_string());
    }
    // Network Activity's own activities: 8 is none of them.
    let mut bad_net = net.clone();
    bad_net["activity_id"] = json!(8);
    bad_net["type_uid"] = json!(400108);
    lines.push(bad_net.to_string());

    let (ok, text) = run_validator(&lines);
    assert!(!ok, "the validator passed broken events:\n{text}");
    assert!(
        text.contains(&format!("0 of {} events valid", lines.len())),
        "{text}"
    );
    for (i, c) in cases.iter().enumerate() {
        let line = format!("line {}: ", i + 1);
        let said: Vec<&str> = text.lines().filter(|l| l.starts_with(&line)).collect();
        assert!(
            said.iter().any(|l| l.contains(c.names)),
            "{}: expected `{}` named, got {said:?}",
            c.what,
            c.names
        );
    }
    let last = format!("line {}: activity_id", lines.len());
    assert!(text.contains(&last), "{text}");
    // The unbroken ones pass (the mutations, not the base events, are what fails).
    assert_valid_ocsf(&[http.to_string(), net.to_string()]);
}

// ---- A property-generated sample ----------------------------------------------------------

/// The fields the mapping places (when of the type it expects); any other goes to `unmapped`.
const MAPPED: &[&str] = &[
    "timestamp",
    "inserted_at",
    "id",
    "tenant_id",
    "resource_id",
    "action",
    "host",
    "method",
    "rule_id",
    "actor_id",
    "rejected_by",
    "path",
    "status_code",
    "duration_ms",
    "bytes_in",
    "bytes_out",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_\"\\\\ é]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for a field the mapping reads: mostly the usual type, sometimes another or null.
fn text_or_odd(usual: BoxedStrategy<String>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        6 => usual.prop_map(|s| Some(Value::from(s))),
        2 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => leaf().prop_map(Some),
    ]
    .boxed()
}

fn time_text() -> BoxedStrategy<String> {
    (1_600_000_000i64..1_900_000_000, 0u32..1_000_000, 0usize..4)
        .prop_map(|(s, us, style)| {
            let t = chrono::DateTime::from_timestamp(s, us * 1000).unwrap();
            match style {
                0 => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                1 => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                2 => t
                    .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
                    .to_rfc3339(),
                _ => t.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string(),
            }
        })
        .boxed()
}

fn audit_event() -> impl Strategy<Value = Value> {
    let action = prop_oneof![
        Just("allow".to_string()),
        Just("stub".to_string()),
        Just("reject".to_string()),
        Just("denied".to_string()),
        Just("deny".to_string()),
        Just("error".to_string()),
        Just("client_cancel".to_string()),
        "[a-z_]{1,10}",
    ]
    .boxed();
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("POST".to_string()),
        Just("PUT".to_string()),
        Just("DELETE".to_string()),
        Just("PATCH".to_string()),
        Just("HEAD".to_string()),
        Just("OPTIONS".to_string()),
        Just("CONNECT".to_string()),
        Just("TRACE".to_string()),
        Just("get".to_string()),
        Just("PROPFIND".to_string()),
        "[A-Za-z]{1,8}",
    ]
    .boxed();
    let host = prop_oneof![
        "[a-z]{1,10}\\.[a-z]{2,4}",
        "[a-z]{1,10}\\.[a-z]{2,4}:[0-9]{1,5}",
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, p)| format!("{}.{}.{}.{}:{p}", ip[0], ip[1], ip[2], ip[3])),
        any::<u16>().prop_map(|p| format!("[2001:db8::1]:{p}")),
        Just("fe80::1".to_string()),
    ]
    .boxed();
    let path = prop_oneof![
        "/[a-z/]{0,12}",
        "/[a-z]{1,6}\\?[a-z]{1,4}=[a-z0-9]{0,6}",
        Just(String::new()),
    ]
    .boxed();
    let id = "[a-z]{2,4}_[A-Za-z0-9]{1,12}".boxed();
    let int = |hi: i64| {
        prop_oneof![
            6 => (0..hi).prop_map(|n| Some(Value::from(n))),
            2 => Just(None),
            1 => Just(Some(Value::Null)),
            1 => "[0-9]{1,3}".prop_map(|s| Some(Value::from(s))),
        ]
    };
    let times = prop_oneof![
        6 => (time_text(), prop::option::of(time_text())).prop_map(|(t, i)| (Some(t), i)),
        2 => time_text().prop_map(|i| (None, Some(i))),
    ];
    let texts = (
        text_or_odd(action),
        text_or_odd(method),
        text_or_odd(host),
        text_or_odd(path),
        text_or_odd(id.clone()),
        text_or_odd(id.clone()),
        text_or_odd(id.clone()),
        text_or_odd(id.clone()),
        text_or_odd(id.clone()),
        text_or_odd(id),
        text_or_odd(prop_oneof![Just("allow".to_string()), Just("deny".to_string())].boxed()),
    );
    let ints = (int(600), int(1 << 40), int(1 << 40), int(10_000_000));
    let extra = prop::collection::btree_map("[a-z_]{1,10}|[A-Z\"\\\\ ]{1,4}", json_value(), 0..4);
    (times, texts, ints, extra).prop_map(|(times, texts, ints, extra)| {
        let mut m = Map::new();
        let (action, method, host, path, id, tenant, resource, actor, rule, rejected, effect) = texts;
        let (status, bytes_in, bytes_out, duration) = ints;
        // Unknown fields first, so the known ones (set after) win any clash of names.
        for (k, v) in extra {
            m.insert(k, v);
        }
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put("timestamp", times.0.map(Value::from));
        put("inserted_at", times.1.map(Value::from));
        put("id", id);
        put("tenant_id", tenant);
        put("resource_id", resource);
        put("action", action);
        put("effect", effect);
        put("method", method);
        put("host", host);
        put("path", path);
        put("actor_id", actor);
        put("rule_id", rule);
        put("rejected_by", rejected);
        put("status_code", status);
        put("bytes_in", bytes_in);
        put("bytes_out", bytes_out);
        put("duration_ms", duration);
        Value::Object(m)
    })
}

/// `n` events from a fixed seed (the same sample every run).
fn sample(n: usize) -> Vec<Value> {
    let mut runner = TestRunner::deterministic();
    let strategy = audit_event();
    (0..n)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

#[test]
fn a_generated_sample_maps_to_valid_ocsf_and_keeps_every_unknown_field() {
    let events = sample(3000);
    let mut lines = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, e) in events.iter().enumerate() {
        // The transform maps text, or a tree an earlier transform changed: both are checked.
        let mapped = if i % 3 == 0 {
            ocsf::map_value(e, "sb-gen")
        } else {
            ocsf::map(e.to_string().as_bytes(), "sb-gen")
        };
        let mapped = match mapped {
            Ok(m) => m,
            Err(why) => panic!("event {i} was not mapped ({why}): {e}"),
        };
        let out: Value = serde_json::from_slice(&mapped.json).unwrap();
        // Never dropped: a field the mapping does not know is under `unmapped`, as it was.
        // Read back from text like the output is (serde_json's float reading is not exact:
        // the same text gives the same number, the original tree may differ in the last bit).
        let input: Value = serde_json::from_str(&e.to_string()).unwrap();
        let input = input.as_object().unwrap();
        let unmapped = out.get("unmapped").and_then(Value::as_object);
        for (k, v) in input {
            if !MAPPED.contains(&k.as_str()) {
                assert_eq!(
                    unmapped.and_then(|u| u.get(k)),
                    Some(v),
                    "event {i}: {k} dropped: {out}"
                );
            }
        }
        assert_eq!(
            unmapped.map_or(0, Map::len),
            mapped.unmapped_fields,
            "event {i}: the count"
        );
        seen.insert(format!("class {}", out["class_uid"]));
        seen.insert(format!("activity {}/{}", out["class_uid"], out["activity_id"]));
        seen.insert(format!("severity {}", out["severity_id"]));
        seen.insert(format!("action {}", out["action_id"]));
        for part in [
            "http_response",
            "dst_endpoint",
            "traffic",
            "actor",
            "firewall_rule",
            "unmapped",
        ] {
            if out.get(part).is_some() {
                seen.insert(part.to_string());
            }
        }
        if out["dst_endpoint"].get("ip").is_some() {
            seen.insert("ip".into());
        }
        if out["http_request"]["url"].get("query_string").is_some() {
            seen.insert("query".into());
        }
        lines.push(out.to_string());
    }
    // The generator really produces the cases: both classes, every HTTP activity (PATCH and
    // an unknown method's Other included), Network Activity's Unknown, every severity the
    // mapping uses, and every optional object.
    let mut wanted: Vec<String> = vec!["class 4001".into(), "class 4002".into()];
    wanted.extend((1..=9).chain([99]).map(|a| format!("activity 4002/{a}")));
    wanted.extend([0, 2, 4, 5, 6, 99].map(|a| format!("activity 4001/{a}")));
    wanted.extend([0, 1, 2, 3, 99].map(|s| format!("severity {s}")));
    wanted.extend([0, 1, 2, 99].map(|a| format!("action {a}")));
    wanted.extend(
        [
            "http_response",
            "dst_endpoint",
            "traffic",
            "actor",
            "firewall_rule",
            "unmapped",
            "ip",
            "query",
        ]
        .map(String::from),
    );
    let missing: Vec<&String> = wanted.iter().filter(|w| !seen.contains(*w)).collect();
    assert!(missing.is_empty(), "the sample lacks {missing:?} (has {seen:?})");

    assert_valid_ocsf(&lines);
}

#[test]
fn gap_findings_are_valid_ocsf_beside_the_other_classes() {
    use auditship::ops::completeness::{CompletenessReport, ReportHour};
    let hour = |resource_id: &str, gap: u64, reshipped: u64| ReportHour {
        resource_id: resource_id.into(),
        hour: "2026-11-25T10:00:00Z".into(),
        api: 100,
        ledger: 100 - gap,
        gap,
        reshipped,
        ..Default::default()
    };
    let report = CompletenessReport {
        pipeline: "pipe".into(),
        hours: vec![hour("sb-1", 3, 3), hour("sb-2", 5, 0), hour("sb-3", 0, 0)],
        hash: "ab".repeat(32),
        ..Default::default()
    };
    let findings = auditship::ops::gap_findings::findings(&report);
    assert_eq!(findings.len(), 2, "one per hour with a gap");
    let mut lines: Vec<String> = findings
        .iter()
        .map(|e| String::from_utf8(e.raw.to_vec()).unwrap())
        .collect();
    let statuses: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["status_id"].clone())
        .collect();
    assert_eq!(statuses, [json!(4), json!(1)], "Resolved, then New");
    // HTTP and Network Activity first, in the same validator process, as a SIEM sink holding
    // both would be checked (the finding's Resolved is 4, which Network Activity's status_id
    // does not have).
    let mut all: Vec<String> = golden_outputs().iter().map(|(_, v)| v.to_string()).collect();
    all.append(&mut lines);
    assert_valid_ocsf(&all);
}
