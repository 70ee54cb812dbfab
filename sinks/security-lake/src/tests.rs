//! The layout's checks and its Parquet, read back with the parquet crate's reader. (pyarrow and
//! duckdb read the objects of a whole run in the shipper's tests.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use arrow_schema::{DataType, TimeUnit};
use auditship_sink::Event;
use auditship_sink_s3::ObjectLayout;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};

use crate::schema::{schema_for, CLASSES};
use crate::ParquetLayout;

/// The `ocsf` transform's outputs for every action (the shipper's golden files).
const GOLDEN_HTTP: [&str; 4] = [
    include_str!("../../../tests/golden/ocsf/allow.ocsf.json"),
    include_str!("../../../tests/golden/ocsf/reject.ocsf.json"),
    include_str!("../../../tests/golden/ocsf/client_cancel.ocsf.json"),
    include_str!("../../../tests/golden/ocsf/unknown_action.ocsf.json"),
];
const GOLDEN_NETWORK: [&str; 2] = [
    include_str!("../../../tests/golden/ocsf/network_reject.ocsf.json"),
    include_str!("../../../tests/golden/ocsf/minimal.ocsf.json"),
];

fn event(v: &Value, id: &str) -> Event {
    Event {
        raw: bytes::Bytes::from(v.to_string()),
        id: Arc::from(id),
        resource_id: Arc::from("sb-1"),
        cursor_us: Some(1),
        cursor_span: None,
        time_us: None,
        seq: 1,
    }
}

fn layout(class_uid: u32) -> ParquetLayout {
    ParquetLayout::new(class_uid, "ext/miosa-http/", "us-east-1", "123456789012", 3).unwrap()
}

fn golden(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn every_class_has_a_schema_and_others_none() {
    for (uid, _) in CLASSES {
        assert!(schema_for(uid).is_some(), "{uid}");
    }
    assert!(schema_for(3002).is_none());
    let e = ParquetLayout::new(3002, "ext/x/", "r", "a", 3).unwrap_err();
    assert!(e.contains("4002 HTTP Activity"), "{e}");
}

#[test]
fn events_go_to_security_lakes_partitions_by_their_day() {
    let l = layout(4002);
    let v = golden(GOLDEN_HTTP[0]);
    let (prefix, kept) = l.admit(&event(&v, "evt_allow")).unwrap();
    // time 1795600800120 ms is 2026-11-25.
    assert_eq!(
        prefix,
        "ext/miosa-http/region=us-east-1/accountId=123456789012/eventDay=20261125/"
    );
    let kept: Value = serde_json::from_slice(&kept).unwrap();
    // Unmapped values: strings as they are, anything else as its JSON text.
    assert_eq!(kept["unmapped"]["effect"], json!("allow"));
    assert_eq!(
        kept["unmapped"]["mcp"],
        json!(r#"{"server":"github","tool":"search"}"#)
    );
    assert_eq!(kept["metadata"], v["metadata"], "the rest as it was");
}

#[test]
fn what_does_not_fit_is_refused_with_the_reason() {
    let l = layout(4002);
    let http = golden(GOLDEN_HTTP[0]);
    let refused = |v: &Value| l.admit(&event(v, "e")).unwrap_err();

    let net = golden(GOLDEN_NETWORK[0]);
    let e = refused(&net);
    assert!(e.contains("class 4001") && e.contains("class 4002 only"), "{e}");

    let mut extra = http.clone();
    extra["dst_endpoint"]["hostnme"] = json!("x");
    let e = refused(&extra);
    assert!(e.contains("hostnme"), "the attribute is named: {e}");

    let mut top = http.clone();
    top["observables"] = json!([]);
    assert!(refused(&top).contains("observables"));

    let mut typed = http.clone();
    typed["severity_id"] = json!("high");
    assert!(refused(&typed).contains("does not fit"));

    let mut timeless = http.clone();
    timeless.as_object_mut().unwrap().remove("time");
    assert!(refused(&timeless).contains("no `time`"));

    let e = l
        .admit(&Event {
            raw: bytes::Bytes::from_static(br#"{"id":"e1","action":"allow"}"#),
            ..event(&json!({}), "e1")
        })
        .unwrap_err();
    assert!(e.contains("add transforms = [\"ocsf\"]"), "{e}");

    // A refused event leaves the checking decoder clean: the next one fits.
    assert!(l.admit(&event(&http, "e2")).is_ok());
}

#[test]
fn the_parquet_reads_back_with_structs_timestamps_and_every_row() {
    for (class, texts) in [(4002u32, &GOLDEN_HTTP[..]), (4001, &GOLDEN_NETWORK[..])] {
        let l = layout(class);
        let mut kept = Vec::new();
        let mut uids = Vec::new();
        // Many rows: more than one Arrow batch while encoding.
        for i in 0..10_000 {
            let mut v = golden(texts[i % texts.len()]);
            v["metadata"]["uid"] = json!(format!("evt_{class}_{i}"));
            uids.push(format!("evt_{class}_{i}"));
            kept.push(l.admit(&event(&v, &uids[i])).unwrap().1);
        }
        let size = kept.iter().map(|k| k.len() as u64 + 1).sum();
        let body = l.encode(&kept, size).unwrap();
        assert_eq!(&body[..4], b"PAR1");
        assert!((body.len() as u64) < size / 5, "{} of {size}", body.len());

        let read = ParquetRecordBatchReaderBuilder::try_new(body.clone()).unwrap();
        let schema = read.schema().clone();
        assert_eq!(
            schema.field_with_name("time").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
        );
        assert!(matches!(
            schema.field_with_name("metadata").unwrap().data_type(),
            DataType::Struct(_)
        ));
        let mut rows = 0;
        let mut first_time = None;
        for b in read.build().unwrap() {
            let b = b.unwrap();
            rows += b.num_rows();
            let t = b
                .column_by_name("time")
                .unwrap()
                .as_primitive::<TimestampMillisecondType>();
            first_time.get_or_insert(t.value(0));
        }
        assert_eq!(rows, 10_000);
        let expected_time = golden(texts[0])["time"].as_i64().unwrap();
        assert_eq!(first_time, Some(expected_time));
        let got: Vec<String> = crate::uids(&body)
            .unwrap()
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(got, uids, "every row, in order, under its uid");
    }
}

#[test]
fn manifests_and_digests_stay_out_of_the_partitions() {
    let l = layout(4002);
    let unit = "ext/miosa-http/region=us-east-1/accountId=1/eventDay=20261125/x.parquet";
    assert_eq!(
        l.manifest_key(unit, "pipe", "lake", 3),
        "ext/miosa-http/_auditship/region=us-east-1/accountId=1/eventDay=20261125/auditship.manifest/pipe.lake.000000000003.ndjson"
    );
    assert_eq!(
        l.digest_key("pipe/lake/000001-x.json"),
        "ext/miosa-http/_auditship/auditship.digest/pipe/lake/000001-x.json"
    );
}

#[test]
fn the_schema_prints_as_parquet_sees_it() {
    let text = crate::schema::describe(4002).unwrap();
    assert!(text.contains("message arrow_schema"), "{text}");
    assert!(
        text.contains("TIMESTAMP(MILLIS,true)") || text.contains("TIMESTAMP_MILLIS"),
        "{text}"
    );
    assert!(text.contains("http_method"), "{text}");
    assert!(text.contains("MAP"), "{text}");
}

#[test]
fn locations_are_read_as_security_lake_shows_them() {
    let cfg = |loc: &str| crate::SecurityLakeSinkConfig {
        source_location: loc.into(),
        ..serde_json::from_value(json!({
            "source_location": "s3://b/ext/s/",
            "class_uid": 4002,
            "region": "us-east-1",
            "account_id": "123456789012",
        }))
        .unwrap()
    };
    assert_eq!(
        cfg("s3://aws-security-data-lake-us-east-1-abc/ext/miosa-http/")
            .location()
            .unwrap(),
        (
            "aws-security-data-lake-us-east-1-abc".into(),
            "ext/miosa-http/".into()
        )
    );
    assert_eq!(cfg("s3://b/ext/s/1.0").location().unwrap().1, "ext/s/1.0/");
    assert!(cfg("s3://b/").validate().unwrap_err().contains("names no source"));
    assert!(cfg("https://b/ext/s").validate().unwrap_err().contains("s3://"));
    let mut bad = cfg("s3://b/ext/s/");
    bad.class_uid = 1;
    assert!(bad.validate().unwrap_err().contains("class_uid 1"));
    bad.class_uid = 4002;
    bad.account_id = "a/b".into();
    assert!(bad.validate().unwrap_err().contains("account_id"));
}

/// A small deterministic generator (xorshift): the same mutations every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// Replace, add or remove something at a random place of `v`; whether a value was replaced by
/// text or a fraction (what `check` refuses in a number column and arrow-json may read: a
/// timestamp from text, an integer from 1.5).
fn mutate(v: &mut Value, g: &mut Gen, pool: &[Value]) -> bool {
    let Value::Object(obj) = v else { return false };
    let keys: Vec<String> = obj.keys().cloned().collect();
    if keys.is_empty() {
        obj.insert("zz".into(), g.pick(pool).clone());
        return false;
    }
    let key = g.pick(&keys).clone();
    let descend =
        matches!(obj.get(&key), Some(Value::Object(_))) && g.next().is_multiple_of(2) && key != "unmapped";
    if descend {
        return mutate(obj.get_mut(&key).unwrap(), g, pool);
    }
    let value = g.pick(pool).clone();
    match g.next() % 3 {
        0 => {
            let lenient = value.is_string() || value.is_f64();
            obj.insert(key, value);
            lenient
        }
        1 => {
            obj.insert(format!("zz_{}", g.next() % 3), value);
            false
        }
        _ => {
            obj.remove(&key);
            false
        }
    }
}

#[test]
fn the_schema_check_agrees_with_arrow_json() {
    let pool = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(2_147_483_647),
        json!(2_147_483_648i64),
        json!(1_099_511_627_776i64),
        json!(18_446_744_073_709_551_615u64),
        json!(1.5),
        json!("x"),
        json!("2026-11-25T10:00:00Z"),
        json!([]),
        json!([1]),
        json!(["a"]),
        json!([{"uid": "x"}]),
        json!({}),
        json!({"uid": "x"}),
        json!({"a": 1}),
        json!({"name": "n"}),
    ];
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let (mut agreed, mut refused, mut stricter) = (0, 0, 0);
    for (class, texts) in [(4002u32, &GOLDEN_HTTP[..]), (4001, &GOLDEN_NETWORK[..])] {
        let schema = schema_for(class).unwrap();
        for i in 0..4000 {
            let mut v = golden(texts[i % texts.len()]);
            let mut lenient = false;
            if i > 0 {
                for _ in 0..=(g.next() % 3) {
                    lenient |= mutate(&mut v, &mut g, &pool);
                }
            }
            let obj = v.as_object_mut().unwrap();
            crate::layout::unmapped_as_text(obj);
            let ours = crate::schema::check(&schema, obj);
            let theirs = crate::schema::check_with_arrow(&schema, &serde_json::to_vec(&v).unwrap());
            match (&ours, &theirs) {
                (Ok(()), Ok(())) => agreed += 1,
                (Err(_), Err(_)) => {
                    agreed += 1;
                    refused += 1;
                }
                (Err(_), Ok(())) if lenient => stricter += 1,
                _ => panic!("check {ours:?}, arrow-json {theirs:?}, on {v}"),
            }
        }
    }
    // The mutations really reach both verdicts.
    assert!(
        refused > 1000 && agreed - refused > 1000,
        "{agreed} agreed, {refused} refused"
    );
    eprintln!("{agreed} agreed ({refused} refused by both), {stricter} refused by check only");
}
