//! Criterion micro-benchmarks of the per-event hot paths: `cargo bench --bench hot_paths`.
//!
//! - `decode`: a socket frame to an event (the validating scan, id, cursor and time), a list
//!   page of 100 events, and a full `serde_json::Value` parse of the same frame for scale;
//! - `encode`: NDJSON for a batch of 1,000 events, plain and as one zstd frame / gzip member;
//! - `template`: rendering a file path template (the sink caches it per sandbox and day);
//! - `security_lake`: an OCSF event admitted by the Security Lake sink (parsed, checked against
//!   its class's schema), the same check through arrow-json's decoder (the reference the
//!   sink's check replaces), and Parquet for 1,000 events.
//!
//! Throughput is per event (criterion prints "elem/s").

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]
// A benchmark that cannot set up has nothing to measure: it stops, saying why.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use auditship::client::{AuditEvent, Page};
use auditship_sink_file::{encode_lines, Compression, PathTemplate, Values};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A simulator-shaped event (560 bytes, the size the suite ships).
fn event(n: u64) -> String {
    format!(
        concat!(
            r#"{{"id":"evt_{n:016x}","tenant_id":"tn_demo","resource_id":"sb-1","resource_type":"sandbox","#,
            r#""action":"reject","effect":"deny","host":"api.openai.com","method":"POST","path":"/v1/items?q=[REDACTED]","#,
            r#""status_code":0,"duration_ms":123,"bytes_in":4567,"bytes_out":890,"policy_id":"pol_default","#,
            r#""rule_id":"rule_3","actor_id":"agent-7","request_transforms":[{{"type":"secret_placeholder","name":"OPENAI_KEY"}}],"#,
            r#""metadata":{{"seq":{n},"cost_usd":1.50,"ratio":1e-3,"note":"caf\u00e9 \"quoted\""}},"#,
            r#""inserted_at":"2026-11-25T10:00:00.{us:06}Z","timestamp":"2026-11-25T09:59:59.{us:06}Z"}}"#
        ),
        n = n,
        us = n % 1_000_000
    )
}

fn decode(c: &mut Criterion) {
    let frame = bytes::Bytes::from(event(42));
    let page = bytes::Bytes::from(format!(
        r#"{{"data":[{}],"next_cursor":"c_64","has_more":true}}"#,
        (0..100).map(event).collect::<Vec<_>>().join(",")
    ));
    // Measure only inputs that decode: a broken fixture would time the error path.
    if AuditEvent::from_json(frame.clone()).is_err()
        || Page::from_json(page.clone()).map_or(true, |p| p.events.len() != 100)
    {
        eprintln!("the benchmark's event or page does not decode");
        return;
    }
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("frame", |b| {
        b.iter(|| {
            let e = AuditEvent::from_json(black_box(frame.clone()));
            black_box(e.map(|e| (e.cursor_us(), e.time_us(), e.id_arc().len())).ok());
        })
    });
    g.bench_function("frame as serde_json::Value (reference)", |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(black_box(&frame)).ok()))
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("list page of 100", |b| {
        b.iter(|| {
            let p = Page::from_json(black_box(page.clone()));
            black_box(p.map(|p| p.events.len()).ok());
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let events: Vec<bytes::Bytes> = (0..1_000).map(|n| bytes::Bytes::from(event(n))).collect();
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(events.len() as u64));
    for (name, compression) in [
        ("ndjson", Compression::None),
        ("ndjson + zstd", Compression::Zstd),
        ("ndjson + gzip", Compression::Gzip),
    ] {
        g.bench_function(name, |b| {
            // What the file sink does for a compressed unit; the plain variant joins the lines
            // into one buffer, which the sink itself skips (it writes the events' own buffers).
            b.iter(|| {
                black_box(
                    encode_lines(compression, None, black_box(&events))
                        .map(|b| b.len())
                        .ok(),
                )
            })
        });
    }
    g.finish();
}

fn template(c: &mut Criterion) {
    let Ok(t) = PathTemplate::parse("archive/{pipeline}/{resource_id}/{date}.ndjson.zst") else {
        eprintln!("the benchmark's template does not parse");
        return;
    };
    let values = Values {
        resource_id: "sb/odd id",
        date: "2026-11-25",
        pipeline: "compliance",
    };
    let mut g = c.benchmark_group("template");
    g.throughput(Throughput::Elements(1));
    g.bench_function("render", |b| b.iter(|| black_box(t.render(black_box(&values)))));
    g.finish();
}

#[cfg(feature = "security-lake")]
fn security_lake(c: &mut Criterion) {
    use auditship_sink_s3::ObjectLayout;
    let layout = auditship_sink_security_lake::ParquetLayout::new(4002, "ext/b/", "us-east-1", "1", 3)
        .expect("a class with a schema");
    let schema = auditship_sink_security_lake::schema::schema_for(4002).expect("a class with a schema");
    let events: Vec<auditship_sink::Event> = (0..1000)
        .map(|n| {
            let ocsf =
                auditship::transform::ocsf::map(event(n).as_bytes(), "sb-1").expect("an event with a time");
            auditship_sink::Event {
                raw: bytes::Bytes::from(ocsf.json),
                id: std::sync::Arc::from(format!("evt_{n}")),
                resource_id: std::sync::Arc::from("sb-1"),
                cursor_us: Some(1),
                cursor_span: None,
                time_us: None,
                seq: n,
            }
        })
        .collect();
    let mut g = c.benchmark_group("security_lake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("admit (parse, check, unmapped as text)", |b| {
        b.iter(|| layout.admit(black_box(&events[7])).expect("fits"))
    });
    let kept = layout.admit(&events[7]).expect("fits").1;
    g.bench_function("check by arrow-json (the reference)", |b| {
        b.iter(|| {
            auditship_sink_security_lake::schema::check_with_arrow(&schema, black_box(&kept)).expect("fits")
        })
    });
    let all: Vec<bytes::Bytes> = events.iter().map(|e| layout.admit(e).expect("fits").1).collect();
    g.throughput(Throughput::Elements(all.len() as u64));
    g.bench_function("parquet of 1,000", |b| {
        b.iter(|| layout.encode(black_box(&all), 0).expect("encodes"))
    });
    g.finish();
}

#[cfg(not(feature = "security-lake"))]
fn security_lake(_: &mut Criterion) {}

criterion_group!(benches, decode, encode, template, security_lake);
criterion_main!(benches);
