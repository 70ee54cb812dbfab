//! Bad input, generated: the frame decoder, the list-response parser, the pipeline parser and
//! the path templates take arbitrary and mutated input without a panic or a hang, and what they
//! accept is sound. Cases per property: `AUDITSHIP_FUZZ_CASES` (default 512, which CI runs in a
//! few seconds); a failing input is printed shrunk, and proptest keeps it in
//! `tests/proptest-regressions/fuzz.txt` to be tried first next time.

use std::path::Path;

use auditship::client::{AuditEvent, Page};
use auditship::config::{parse, LoadMode};
use auditship_sink_file::{PathTemplate, Values};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("AUDITSHIP_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    }
}

const EVENT: &str = r#"{"id":"evt_01","resource_id":"sb-1","resource_type":"sandbox","host":"api.example.com","action":"allow","method":"GET","path":"/v1/x?q=\"a\\u00e9\"","status":200,"metadata":{"tags":["a",1,2.5e3,true,null]},"inserted_at":"2026-11-25T10:00:00.000001Z","timestamp":"2026-11-25T09:59:59Z"}"#;

/// A valid event, a valid page of each shape, with bytes flipped, cut, or spliced.
fn mutated(base: &'static str) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(move |(flips, cut, truncate)| {
            let mut b = base.as_bytes().to_vec();
            for (at, byte) in flips {
                let i = at.index(b.len());
                b[i] = byte;
            }
            if truncate {
                b.truncate(cut.index(b.len() + 1));
            }
            b
        })
}

fn pages() -> Vec<String> {
    let two = format!("[{EVENT},{}]", EVENT.replace("evt_01", "evt_02"));
    vec![
        two.clone(),
        format!(r#"{{"data":{two},"next_cursor":"c_2","has_more":true}}"#),
        format!(r#"{{"events":{two},"has_more":false}}"#),
        format!(r#"{{"audit":{two},"next_cursor":null}}"#),
        format!(r#"{{"items":{two},"page":{{"page":1,"page_size":2,"total":2}}}}"#),
    ]
}

/// What serde_json says of `raw`: a JSON object.
fn is_object(raw: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(raw).is_ok()
}

/// A path template: literal pieces, separators and placeholders in any order, so that most
/// generated templates hold one or more placeholders (a character class alone almost never
/// spells one).
fn template() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => Just("{resource_id}".to_string()),
        2 => Just("{date}".to_string()),
        1 => Just("{pipeline}".to_string()),
        3 => Just("/".to_string()),
        1 => Just("..".to_string()),
        1 => Just(".".to_string()),
        3 => "[a-z_.-]{1,6}",
        1 => "[a-z{}]{1,3}",
    ];
    prop::collection::vec(piece, 1..8).prop_map(|pieces| pieces.concat())
}

/// Sandbox ids as a hostile server might send them: traversal, separators, NUL, empty, 300
/// bytes, text that looks like our own escapes, the manifest's name, and anything at all.
fn hostile_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("\0".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("/".to_string()),
        Just("auditship.manifest".to_string()),
        Just("%empty".to_string()),
        Just("%00".to_string()),
        Just("x".repeat(300)),
        "(\\.\\.|/|\\\\|%[0-9A-Fa-f]{0,2}|\\x00|[a-z]|auditship\\.){0,6}",
        "\\PC{0,20}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes: no panic; an accepted frame is a JSON object with the id it reports.
    #[test]
    fn frame_decoder_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(e) = AuditEvent::from_json(bytes) {
            prop_assert!(is_object(e.raw()));
        }
    }

    /// A mutated event: no panic; accepted only if serde_json agrees it is an object, and then
    /// its id is the object's `id`.
    #[test]
    fn frame_decoder_takes_mutated_events(bytes in mutated(EVENT)) {
        match AuditEvent::from_json(bytes.clone()) {
            Ok(e) => {
                prop_assert!(is_object(e.raw()), "accepted {:?}", String::from_utf8_lossy(&bytes));
                let v: serde_json::Value = serde_json::from_slice(e.raw()).unwrap();
                match &v["id"] {
                    serde_json::Value::String(s) => prop_assert_eq!(s.as_str(), e.id()),
                    other => prop_assert_eq!(other.to_string(), e.id()),
                }
            }
            Err(err) => {
                // The reason is said, and the raw bytes are kept for the dead-letter file.
                prop_assert!(!err.to_string().is_empty());
            }
        }
    }

    /// A mutated page of any shape: no panic; every event taken from it is a JSON object, and an
    /// untouched page gives its two events.
    #[test]
    fn list_parser_takes_mutated_pages(shape in 0usize..5, flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
        let mut b = pages()[shape].clone().into_bytes();
        for (at, byte) in flips {
            let i = at.index(b.len());
            b[i] = byte;
        }
        if truncate {
            b.truncate(cut.index(b.len() + 1));
        }
        if let Ok(p) = Page::from_json(b.clone()) {
            for e in &p.events {
                prop_assert!(is_object(e.raw()), "event {:?} from {:?}", String::from_utf8_lossy(e.raw()), String::from_utf8_lossy(&b));
            }
            if b == pages()[shape].as_bytes() {
                prop_assert_eq!((p.events.len(), p.invalid.len()), (2, 0));
            }
        }
    }

    /// Any bytes as a page: no panic.
    #[test]
    fn list_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Page::from_json(bytes);
    }

    /// A pipeline file with a line removed, repeated or garbled: no panic, and every error
    /// names the file and the line.
    #[test]
    fn pipeline_parser_takes_broken_files(edit in 0usize..3, line in any::<prop::sample::Index>(), junk in "[ -~]{0,20}") {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/compliance-archive.toml")).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let i = line.index(lines.len());
        match edit {
            0 => { lines.remove(i); }
            1 => { let l = lines[i].clone(); lines.insert(i, l); }
            _ => lines[i] = junk,
        }
        let broken = lines.join("\n");
        if let Err(errors) = parse(Path::new("broken.toml"), &broken, LoadMode::Validate) {
            for e in &errors.0 {
                prop_assert!(e.to_string().contains("broken.toml"), "{e}");
                prop_assert!(e.location.is_some(), "no line: {e}");
            }
        }
    }

    /// Any TOML-ish text: no panic.
    #[test]
    fn pipeline_parser_takes_any_text(text in "[\\[\\]a-z_=\" .{}0-9\n#-]{0,300}") {
        let _ = parse(Path::new("any.toml"), &text, LoadMode::Validate);
    }

    /// Templates built of placeholders, separators and odd literals, rendered with hostile
    /// values: no panic, a rendered path never leaves the template's base directory, and when
    /// the template holds `{resource_id}`, two different ids never share a path.
    #[test]
    fn path_templates_stay_inside_their_base(
        template in template(),
        rid in hostile_id(),
        other in hostile_id(),
        pipeline in hostile_id(),
    ) {
        // A refused template (stray braces, `..` after the base, a directory) is an error, not
        // a panic; the rest is checked on the templates that parse.
        let Ok(t) = PathTemplate::parse(&template) else {
            return Ok(());
        };
        let render = |id: &str| t.render(&Values { resource_id: id, date: "2026-11-25", pipeline: &pipeline });
        let out = render(&rid);
        let path = Path::new(&out);
        // A base of `.` holds every relative path.
        let inside = path.starts_with(t.base()) || (t.base() == Path::new(".") && path.is_relative());
        prop_assert!(inside, "{out:?} outside {:?}", t.base());
        // A `..` the template's own text holds is the operator's choice; no value may add one.
        let rest = path.strip_prefix(t.base()).unwrap_or(path);
        prop_assert!(!rest.components().any(|c| matches!(c, std::path::Component::ParentDir)), "{out:?}");
        prop_assert!(!out.contains('\0'), "{out:?}");
        if t.uses(auditship_sink::template::Placeholder::ResourceId) && rid != other {
            prop_assert_ne!(out, render(&other), "{:?} and {:?} share a path", rid, other);
        }
    }

    /// Every value encodes to one safe component and back, and different values apart.
    #[test]
    fn components_round_trip_and_stay_apart(a in hostile_id(), b in hostile_id()) {
        let enc = |v: &str| { let mut out = String::new(); auditship_sink::encode_component(&mut out, v); out };
        let (ea, eb) = (enc(&a), enc(&b));
        prop_assert_eq!(auditship_sink::decode_component(&ea), Some(a.clone()));
        prop_assert!(!ea.contains(['/', '\\', '\0']) && ea != "." && ea != "..", "{:?} -> {:?}", a, ea);
        prop_assert!(!ea.to_ascii_lowercase().starts_with(auditship_sink::RESERVED_PREFIX), "{:?} -> {:?}", a, ea);
        if a != b {
            prop_assert_ne!(ea, eb);
        }
    }
}
