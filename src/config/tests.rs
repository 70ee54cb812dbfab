//! The pipeline file's loading and resolution, in unit tests.

use std::path::{Path, PathBuf};

use super::*;
use crate::client::{parse_time, StartAt, Transport};
#[cfg(any(feature = "kafka", feature = "s3"))]
use crate::sinks::AnySink;

const GOOD: &str = r#"
[source]
base_url = "http://127.0.0.1:1/api/v1"
api_key = "${AUDITSHIP_TEST_KEY_GOOD}"
sandboxes = ["sb-1", "sb/2"]
transport = "poll"
start = "2026-11-01T00:00:00Z"

[checkpoint]
path = "state/cp.db"

[sinks.archive]
type = "file"
path = "archive/{resource_id}/{date}.ndjson"
compression = "zstd"
"#;

#[test]
fn a_good_pipeline_resolves() {
    std::env::set_var("AUDITSHIP_TEST_KEY_GOOD", "msk_test_123");
    let p = parse(Path::new("pipes/good.toml"), GOOD, LoadMode::Run).unwrap();
    assert_eq!(p.name, "good");
    assert_eq!(p.api_key.unwrap().expose(), "msk_test_123");
    assert_eq!(p.transport, Transport::Poll);
    assert_eq!(
        p.start,
        StartAt::Time(parse_time("2026-11-01T00:00:00Z").unwrap())
    );
    assert_eq!(p.dead_letter_path, PathBuf::from("state/dead-letter.ndjson"));
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
}

#[test]
fn unknown_keys_name_file_line_and_column() {
    let text = GOOD.replace("transport = \"poll\"", "transprot = \"poll\"");
    let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.starts_with("p.toml:6:1: unknown field `transprot`"),
        "{shown}"
    );
}

#[test]
fn errors_in_one_section_do_not_hide_another_sections() {
    let text = GOOD
        .replace(
            "transport = \"poll\"",
            "transprot = \"poll\"\npoll_interval_ms = \"fast\"",
        )
        .replace("path = \"archive/", "pth = \"archive/");
    let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
    let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("p.toml:6:1: unknown field `transprot`")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("p.toml:7:") && l.contains("invalid type")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("p.toml:15:1: unknown field `pth`")),
        "{lines:#?}"
    );
}

#[test]
fn every_bad_key_of_a_file_is_listed() {
    let text = GOOD
        .replace("transport = \"poll\"", "transprot = \"poll\"")
        .replace(
            "compression = \"zstd\"",
            "compression = \"brotli\"\nrotate_max_byte = 5",
        );
    let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
    let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("p.toml:6:1: unknown field `transprot`"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("p.toml:15:1: unknown variant `brotli`"),
        "{lines:#?}"
    );
    assert!(
        lines[2].starts_with("p.toml:16:1: unknown field `rotate_max_byte`"),
        "{lines:#?}"
    );
}

#[test]
fn bad_values_are_errors_with_lines() {
    let text = GOOD
        .replace("\"2026-11-01T00:00:00Z\"", "\"yesterday\"")
        .replace("{date}", "{day}");
    let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
    assert_eq!(e.0.len(), 2, "{e}");
    assert!(
        e.0[0].to_string().starts_with("p.toml:7:9: start \"yesterday\""),
        "{e}"
    );
    assert!(e.0[1].to_string().contains("unknown placeholder `{day}`"), "{e}");
    let text = GOOD.replace("\"poll\"", "\"carrier-pigeon\"");
    let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
    assert!(e.to_string().starts_with("p.toml:6:13:"), "{e}");
}

#[test]
fn missing_variables_fail_runs_but_only_warn_validation() {
    let text = GOOD.replace("AUDITSHIP_TEST_KEY_GOOD", "AUDITSHIP_TEST_KEY_UNSET");
    let e = parse(Path::new("p.toml"), &text, LoadMode::Run).unwrap_err();
    assert!(
        e.to_string().contains("AUDITSHIP_TEST_KEY_UNSET is not set"),
        "{e}"
    );
    let p = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap();
    assert!(p.warnings[0].contains("needed to run"));
}

#[test]
fn a_literal_key_works_but_is_warned_about_without_printing_it() {
    let text = GOOD.replace("${AUDITSHIP_TEST_KEY_GOOD}", "msk_live_literal");
    let p = parse(Path::new("p.toml"), &text, LoadMode::Run).unwrap();
    assert_eq!(p.api_key.unwrap().expose(), "msk_live_literal");
    assert!(p.warnings[0].contains("literally"));
    assert!(!p.warnings[0].contains("msk_live_literal"));
}

#[test]
#[cfg(feature = "kafka")]
fn kafka_sinks_resolve_variables_and_name_their_mistakes() {
    std::env::set_var("AUDITSHIP_TEST_KEY_GOOD", "msk_test_123");
    std::env::set_var("AUDITSHIP_TEST_KAFKA_PW", "kafka-pw-7731");
    let text = format!(
        "{GOOD}\n[sinks.siem]\ntype = \"kafka\"\nbrokers = \"${{AUDITSHIP_TEST_KAFKA_HOST:-127.0.0.1:9092}}\"\ntopic = \"audit.{{action}}\"\noptions = {{ \"sasl.password\" = \"${{AUDITSHIP_TEST_KAFKA_PW}}\", \"linger.ms\" = 10 }}\n"
    );
    let p = parse(Path::new("p.toml"), &text, LoadMode::Run).unwrap();
    let AnySink::Kafka(k) = &p.sinks["siem"] else {
        panic!("a kafka sink")
    };
    assert_eq!(k.brokers, "127.0.0.1:9092");
    assert!(!format!("{p:?}").contains("kafka-pw-7731"));
    assert_eq!(
        crate::secret::redact_all("auth kafka-pw-7731 failed"),
        "auth *** failed"
    );

    let bad = [
        ("compression = \"brotli\"", "unknown variant `brotli`"),
        (
            "options = { \"bootstrap.servers\" = \"x:1\" }",
            "use `brokers` instead",
        ),
        ("options = { \"no.such.thing\" = 1 }", "no.such.thing"),
        ("partitoin = 3", "unknown field `partitoin`"),
    ];
    for (extra, want) in bad {
        let text =
            format!("{GOOD}\n[sinks.siem]\ntype = \"kafka\"\nbrokers = \"h:1\"\ntopic = \"t\"\n{extra}\n");
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        assert!(e.to_string().contains(want), "{extra}: {e}");
        assert!(e.to_string().contains("p.toml:"), "located: {e}");
    }
}

#[test]
#[cfg(feature = "s3")]
fn s3_sinks_resolve_variables_and_refuse_credentials_in_the_file() {
    std::env::set_var("AUDITSHIP_TEST_KEY_GOOD", "msk_test_123");
    std::env::set_var("AUDITSHIP_TEST_BUCKET", "audit-7");
    let text = format!(
        "{GOOD}\n[sinks.cold]\ntype = \"s3\"\nbucket = \"${{AUDITSHIP_TEST_BUCKET}}\"\nobject_lock_mode = \"COMPLIANCE\"\nobject_lock_retain_days = 30\n"
    );
    let p = parse(Path::new("p.toml"), &text, LoadMode::Run).unwrap();
    let AnySink::S3(c) = &p.sinks["cold"] else {
        panic!("an s3 sink")
    };
    assert_eq!(c.bucket, "audit-7");
    assert_eq!(c.key_prefix, "{pipeline}/{date}/{resource_id}/");

    let bad = [
        (
            "aws_access_key_id = \"AKIA\"",
            "unknown field `aws_access_key_id`",
        ),
        ("object_lock_mode = \"GOVERNANCE\"", "go together"),
        ("compression = \"brotli\"", "unknown variant `brotli`"),
        ("key_prefix = \"{sandbox}/\"", "unknown placeholder"),
    ];
    for (extra, want) in bad {
        let text = format!("{GOOD}\n[sinks.cold]\ntype = \"s3\"\nbucket = \"b\"\n{extra}\n");
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        assert!(e.to_string().contains(want), "{extra}: {e}");
    }
}

#[test]
fn transforms_and_routes_compile_and_their_mistakes_are_located() {
    let text = format!(
        "{GOOD}\n[[transforms]]\ntype = \"filter\"\nwhen = {{ action = {{ ne = \"allow\" }} }}\n\n[sinks.siem]\ntype = \"file\"\npath = \"siem/{{date}}.ndjson\"\nwhen = {{ action = \"reject\" }}\ntransforms = [\"ocsf\", {{ type = \"remove\", fields = [\"unmapped\"] }}]\npipeline_transforms = false\n"
    );
    let p = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap();
    assert!(!p.transforms.is_empty());
    assert!(!p.routes["siem"].pipeline_transforms);
    assert!(p.routes["archive"].pipeline_transforms);
    assert!(p.routes["archive"].transforms.is_empty());
    let mut transformer = p.routes["siem"].transforms.start();
    assert_eq!(transformer.label(0), "sinks.siem.when");
    assert_eq!(transformer.label(2), "sinks.siem.transforms[2] (remove)");
    assert!(matches!(
        transformer.apply(&auditship_sink::Event {
            raw: bytes::Bytes::from_static(br#"{"id":"e","action":"allow"}"#),
            id: "e".into(),
            resource_id: "sb".into(),
            cursor_us: None,
            cursor_span: None,
            time_us: None,
            seq: 1,
        }),
        crate::transform::Outcome::Drop { step: 0 }
    ));

    let bad = [
        ("transforms = [\"ocsff\"]", "unknown transform `ocsff`", Some(20)),
        (
            "when = { action = { is = \"x\" } }",
            "sinks.siem.when: `action`: unknown test `is`",
            Some(20),
        ),
        (
            "transforms = [{ type = \"redact\" }]",
            "sinks.siem.transforms[1] (redact): nothing to redact",
            Some(20),
        ),
        ("pipeline_transforms = \"no\"", "invalid type", None),
    ];
    for (line, want, at_line) in bad {
        let text = format!("{GOOD}\n[sinks.siem]\ntype = \"file\"\npath = \"siem.ndjson\"\n{line}\n");
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        assert!(e.to_string().contains(want), "{line}: {e}");
        if let Some(l) = at_line {
            assert!(e.to_string().starts_with(&format!("p.toml:{l}:")), "{line}: {e}");
        }
    }
    let text = format!("{GOOD}\n[[transforms]]\ntype = \"filter\"\nwhen = \"reject\"\n");
    let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("p.toml:19:1: transforms[1] (filter): when: a condition is a table"),
        "{e}"
    );
}

#[test]
fn sandboxes_all_discovers_with_globs_and_mistakes_are_named() {
    let text = GOOD.replace(
        r#"sandboxes = ["sb-1", "sb/2"]"#,
        "sandboxes = \"all\"\ninclude = [\"sb-prod-*\"]\nexclude = [\"*-canary\"]",
    );
    let p = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap();
    let d = p.discovery.expect("discovery");
    assert!(p.sandboxes.is_empty());
    assert!(d.follows("sb-prod-7"));
    assert!(!d.follows("sb-prod-7-canary"));
    assert!(!d.follows("sb-dev-1"));
    for (line, want) in [
        ("sandboxes = \"every\"", "or \"all\" to follow every sandbox"),
        ("sandboxes = []", "write sandboxes = \"all\""),
    ] {
        let text = GOOD.replace(r#"sandboxes = ["sb-1", "sb/2"]"#, line);
        let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
        assert!(e.to_string().contains(want), "{line}: {e}");
    }
    let text = GOOD.replace(
        r#"sandboxes = ["sb-1", "sb/2"]"#,
        "sandboxes = [\"a\"]\ninclude = [\"a*\"]",
    );
    let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
    assert!(e.to_string().contains("need sandboxes = \"all\""), "{e}");
}

#[test]
fn globs() {
    for (g, t, want) in [
        ("*", "", true),
        ("sb-*", "sb-1", true),
        ("sb-?", "sb-12", false),
        ("*-canary", "a-b-canary", true),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ] {
        assert_eq!(glob_match(g, t), want, "{g} ~ {t}");
    }
}

#[test]
fn two_sinks_cannot_share_files() {
    let text = format!(
        "{GOOD}\n[sinks.copy]\ntype = \"file\"\npath = \"archive/{{resource_id}}/{{date}}.ndjson\"\n"
    );
    let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
    assert!(
        e.to_string()
            .contains("sinks.copy writes the same files as sinks.archive"),
        "{e}"
    );
}

#[test]
fn interpolation() {
    std::env::set_var("AUDITSHIP_TEST_X", "x");
    assert_eq!(interpolate("a${AUDITSHIP_TEST_X}b").unwrap(), "axb");
    assert_eq!(interpolate("${AUDITSHIP_TEST_NOPE:-dflt}").unwrap(), "dflt");
    assert!(interpolate("${AUDITSHIP_TEST_NOPE}").is_err());
    assert!(interpolate("${bad name}").is_err());
}

/// Keys inside tables whose `type` picks what they are (transforms, sinks) are found by the
/// path serde failed on, looked up in the parsed file: each error at its own line, whichever
/// table of several it is in. (Read through serde's internally tagged enums, such errors had
/// only the first `[[transforms]]` header's position.)
#[test]
fn keys_of_tagged_tables_are_located_where_written() {
    let text = format!(
        "{GOOD}\n[[transforms]]\ntype = \"set\"\nfields = {{ a = 1 }}\n\n[[transforms]]\ntype = \"rename\"\nfeilds = {{ a = \"b\" }}\n\n[sinks.siem]\ntype = \"file\"\npath = \"siem/{{resource_id}}.ndjson\"\ntransforms = [{{ type = \"remove\", fieldz = [\"x\"] }}]\n\n[sinks.odd]\ntype = \"carrier-pigeon\"\n\n[sinks.none]\npath = \"x\"\n"
    );
    let e = parse(Path::new("p.toml"), &text, LoadMode::Validate).unwrap_err();
    let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .unwrap()
    };
    let expect = [
        (line_of("feilds"), "unknown field `feilds`"),
        (line_of("fieldz"), "unknown field `fieldz`"),
        (line_of("carrier-pigeon"), "unknown sink type `carrier-pigeon`"),
        (line_of("[sinks.none]"), "this sink has no `type`"),
    ];
    for (line, what) in expect {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("p.toml:{line}:")) && l.contains(what)),
            "{what} at line {line}: {lines:#?}"
        );
    }
    assert_eq!(lines.len(), expect.len(), "{lines:#?}");
}

/// `http://` keeps the key off the network only on loopback: to another host it is refused at
/// load unless `allow_insecure_http = true` says the network is trusted.
#[test]
fn http_to_another_machine_is_refused_unless_allowed() {
    std::env::set_var("AUDITSHIP_TEST_KEY_GOOD", "msk_test_123");
    for (url, allow, refused) in [
        ("http://127.0.0.1:1/api/v1", false, false),
        ("http://localhost:8080/api/v1", false, false),
        ("http://[::1]:8080/api/v1", false, false),
        ("https://api.example.com/api/v1", false, false),
        ("http://api.example.com/api/v1", false, true),
        ("http://10.0.0.7/api/v1", false, true),
        ("http://api.example.com/api/v1", true, false),
    ] {
        let mut text = GOOD.replace("http://127.0.0.1:1/api/v1", url);
        if allow {
            text = text.replace("[source]\n", "[source]\nallow_insecure_http = true\n");
        }
        let got = parse(Path::new("p.toml"), &text, LoadMode::Run);
        match (refused, got) {
            (false, Ok(p)) => assert_eq!(p.allow_insecure_http, allow),
            (true, Err(e)) => {
                let shown = e.to_string();
                assert!(shown.starts_with("p.toml:3:12: base_url"), "{shown}");
                assert!(
                    shown.contains("cleartext") && shown.contains("allow_insecure_http = true"),
                    "{shown}"
                );
            }
            (refused, got) => panic!("{url} (allow {allow}): refused should be {refused}, got {got:?}"),
        }
    }
    // The client refuses it too, for programs that build one without a pipeline file.
    let built = crate::client::Client::builder()
        .base_url("http://api.example.com/api/v1")
        .api_key(crate::secret::ApiKey::new("msk_test_123"))
        .build();
    assert!(matches!(built, Err(crate::client::Error::Config(m)) if m.contains("cleartext")));
}

/// A key under 8 characters is a placeholder or a cut-off variable: refused, without printing it.
#[test]
fn a_short_key_is_refused_without_being_shown() {
    std::env::set_var("AUDITSHIP_TEST_KEY_SHORT", "abc1234");
    let text = GOOD.replace("AUDITSHIP_TEST_KEY_GOOD", "AUDITSHIP_TEST_KEY_SHORT");
    let e = parse(Path::new("p.toml"), &text, LoadMode::Run).unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.starts_with("p.toml:4:11: the API key is 7 characters long"),
        "{shown}"
    );
    assert!(!shown.contains("abc1234"), "{shown}");
    std::env::set_var("AUDITSHIP_TEST_KEY_SHORT", "abcd1234");
    assert!(parse(Path::new("p.toml"), &text, LoadMode::Run).is_ok());
}

#[test]
fn signing_keys_resolve_from_a_file_or_a_variable_and_their_mistakes_are_named() {
    std::env::set_var("AUDITSHIP_TEST_KEY_GOOD", "msk_test_123");
    let dir = tempfile::tempdir().unwrap();
    let (private, _, _) = crate::manifest::write_key_pair(&dir.path().join("sign")).unwrap();
    let with = |manifest: &str| format!("{GOOD}\n[manifest]\n{manifest}\n");
    let load = |manifest: &str, mode| parse(Path::new("p.toml"), &with(manifest), mode);

    // From a file, with the default period.
    let p = load(
        &format!("signing_key_file = {:?}", private.display().to_string()),
        LoadMode::Run,
    )
    .unwrap();
    let d = p.digests.unwrap();
    assert_eq!(d.interval, std::time::Duration::from_secs(3600));
    // From a variable holding the PEM text; the text is scrubbed from logs.
    let pem = std::fs::read_to_string(&private).unwrap();
    std::env::set_var("AUDITSHIP_TEST_SIGNING_KEY", &pem);
    let p = load(
        "signing_key = \"${AUDITSHIP_TEST_SIGNING_KEY}\"\ndigest_interval_ms = 60000",
        LoadMode::Run,
    )
    .unwrap();
    let d2 = p.digests.unwrap();
    assert_eq!(d2.key.fingerprint(), d.key.fingerprint());
    assert_eq!(d2.interval, std::time::Duration::from_secs(60));
    assert!(!crate::secret::redact_all(&format!("x {pem} y")).contains(pem.trim()));

    let error = |manifest: &str, mode| load(manifest, mode).unwrap_err().to_string();
    // A missing file: an error to run, a warning to validate.
    let missing = "signing_key_file = \"/nonexistent/sign.key\"";
    let e = error(missing, LoadMode::Run);
    assert!(
        e.contains("p.toml:") && e.contains("does not exist") && e.contains("auditship keygen"),
        "{e}"
    );
    let p = load(missing, LoadMode::Validate).unwrap();
    assert!(p.digests.is_none());
    assert!(
        p.warnings.iter().any(|w| w.contains("needed to run")),
        "{:?}",
        p.warnings
    );
    // A key others may read is refused, as ssh refuses one.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = error(
        &format!("signing_key_file = {:?}", private.display().to_string()),
        LoadMode::Validate,
    );
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The key itself in the file, both ways at once, no manifests, a period out of range.
    let e = error(
        "signing_key = \"-----BEGIN PRIVATE KEY-----\"",
        LoadMode::Validate,
    );
    assert!(e.contains("must name an environment variable"), "{e}");
    assert!(!e.contains("BEGIN PRIVATE KEY"), "the text is not echoed: {e}");
    let both = format!(
        "signing_key_file = {:?}\nsigning_key = \"${{AUDITSHIP_TEST_SIGNING_KEY}}\"",
        private.display().to_string()
    );
    assert!(error(&both, LoadMode::Run).contains("keep one"));
    let off = format!(
        "enabled = false\nsigning_key_file = {:?}",
        private.display().to_string()
    );
    assert!(error(&off, LoadMode::Run).contains("manifests are off"));
    let fast = format!(
        "signing_key_file = {:?}\ndigest_interval_ms = 10",
        private.display().to_string()
    );
    let e = error(&fast, LoadMode::Run);
    assert!(
        e.contains("p.toml:") && e.contains("digest_interval_ms = 10"),
        "{e}"
    );
    // Not a key.
    std::env::set_var("AUDITSHIP_TEST_SIGNING_KEY_BAD", "not a pem");
    let e = error(
        "signing_key = \"${AUDITSHIP_TEST_SIGNING_KEY_BAD}\"",
        LoadMode::Run,
    );
    assert!(e.contains("PKCS#8 Ed25519 private key"), "{e}");
}
