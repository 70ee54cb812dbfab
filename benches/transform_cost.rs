//! Nanoseconds per event of transform chains on one simulator-shaped event, on one core:
//! `cargo bench --bench transform_cost`. The pipeline-level cost is measured by
//! `TRANSFORMS=ocsf benches/loopback.sh`.

use std::sync::Arc;
use std::time::Instant;

use auditship::transform::{Compile, TransformConfig, Transforms};
use auditship_sink::Event;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let raw = r#"{"id":"evt_0123456789abcdef","tenant_id":"tn_demo","resource_id":"sb-1","resource_type":"sandbox","action":"reject","effect":"deny","host":"api.openai.com","method":"POST","path":"/v1/items?q=[REDACTED]","status_code":0,"duration_ms":123,"bytes_in":4567,"bytes_out":890,"policy_id":"pol_default","rule_id":"rule_3","actor_id":"agent-7","request_transforms":[{"type":"secret_placeholder","name":"OPENAI_KEY"}],"metadata":{"seq":42,"cost_usd":1.50,"ratio":1e-3,"note":"caf\u00e9 \"quoted\""},"inserted_at":"2026-11-25T10:00:00.123456Z","timestamp":"2026-11-25T10:00:00.121956Z"}"#;
    let event = Event {
        raw: bytes::Bytes::from_static(raw.as_bytes()),
        id: Arc::from("evt_0123456789abcdef"),
        resource_id: Arc::from("sb-1"),
        cursor_us: None,
        cursor_span: None,
        time_us: None,
        seq: 1,
    };
    for (name, text) in [
        (
            "filter",
            "[[transforms]]\ntype = \"filter\"\nwhen = { action = \"reject\" }\n",
        ),
        ("ocsf", "[[transforms]]\ntype = \"ocsf\"\n"),
        ("set", "[[transforms]]\ntype = \"set\"\nfields = { x = 1 }\n"),
        ("secrets", "[[transforms]]\ntype = \"redact\"\nsecrets = true\n"),
        (
            "redact+ocsf",
            "[[transforms]]\ntype = \"redact\"\nfields = [\"metadata.note\", \"path\"]\nmode = \"hmac-sha256\"\nhmac_key = \"k-0123456789abcdef\"\n[[transforms]]\ntype = \"ocsf\"\n",
        ),
    ] {
        #[derive(serde::Deserialize)]
        struct F {
            transforms: Vec<TransformConfig>,
        }
        let f: F = toml::from_str(text)?;
        let (mut w, mut e) = (Vec::new(), Vec::new());
        let mut spec = Transforms::default();
        spec.extend(
            "t",
            &f.transforms,
            &mut Compile {
                validate_only: false,
                warnings: &mut w,
                errors: &mut e,
            },
        );
        let mut chain = spec.start();
        let n = 200_000;
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(chain.apply(&event));
        }
        let per = start.elapsed().as_nanos() as f64 / n as f64;
        println!("{name}: {per:.0} ns/event");
    }
    let start = Instant::now();
    for _ in 0..200_000 {
        std::hint::black_box(serde_json::from_str::<serde_json::Value>(raw)?);
    }
    println!(
        "parse only: {:.0} ns/event",
        start.elapsed().as_nanos() as f64 / 200_000.0
    );
    Ok(())
}
