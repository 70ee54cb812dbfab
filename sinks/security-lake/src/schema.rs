//! One fixed Arrow schema per OCSF class the shipper emits, so every object of a custom source
//! has the same columns (a Glue crawler or Athena table sees one schema, not one per file).
//!
//! The columns are the attributes the `ocsf` transform (HTTP Activity 4002, Network Activity
//! 4001) and `reconcile --gap-findings-to` (Detection Finding 2004) write, typed as OCSF types
//! them: `integer_t` as Int32, `long_t` as Int64, `timestamp_t` (ms since the epoch) as a UTC
//! timestamp in milliseconds (zone `+00:00`), objects as structs, arrays as lists. `unmapped` (OCSF `object`,
//! any JSON) is a map of strings: a string value as it is, any other value as its JSON text,
//! as Security Lake's own sources store it. An event with an attribute the schema lacks is
//! refused with the attribute named (dead-lettered), never written with it dropped.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn int(name: &str) -> Field {
    Field::new(name, DataType::Int32, true)
}

fn long(name: &str) -> Field {
    Field::new(name, DataType::Int64, true)
}

fn time(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
        true,
    )
}

fn object(name: &str, fields: Vec<Field>) -> Field {
    Field::new(name, DataType::Struct(Fields::from(fields)), true)
}

fn list(name: &str, item: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("element", item, true))),
        true,
    )
}

/// `unmapped`: string keys to string values.
fn unmapped() -> Field {
    let entries = Field::new(
        "key_value",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, true),
        ])),
        false,
    );
    Field::new("unmapped", DataType::Map(Arc::new(entries), false), true)
}

/// The base event's attributes and the security_control profile's, which every class here has.
fn base(fields: &mut Vec<Field>) {
    fields.extend([
        int("activity_id"),
        utf8("activity_name"),
        int("category_uid"),
        utf8("category_name"),
        int("class_uid"),
        utf8("class_name"),
        long("type_uid"),
        utf8("type_name"),
        int("severity_id"),
        utf8("severity"),
        time("time"),
        int("status_id"),
        utf8("status"),
        utf8("status_code"),
        utf8("status_detail"),
        utf8("message"),
    ]);
}

fn endpoint(name: &str) -> Field {
    object(name, vec![utf8("uid"), utf8("hostname"), utf8("ip"), int("port")])
}

/// The Network Activity category's classes (4001 Network Activity, 4002 HTTP Activity).
fn network(class_uid: u32) -> Schema {
    let mut f = Vec::new();
    base(&mut f);
    f.extend([
        int("action_id"),
        utf8("action"),
        int("disposition_id"),
        utf8("disposition"),
        long("duration"),
        object(
            "metadata",
            vec![
                utf8("version"),
                object(
                    "product",
                    vec![
                        utf8("vendor_name"),
                        utf8("name"),
                        utf8("version"),
                        object("feature", vec![utf8("name")]),
                    ],
                ),
                list("profiles", DataType::Utf8),
                utf8("log_name"),
                utf8("uid"),
                utf8("original_time"),
                time("logged_time"),
                utf8("tenant_uid"),
            ],
        ),
        endpoint("src_endpoint"),
        endpoint("dst_endpoint"),
        object("connection_info", vec![int("direction_id"), utf8("direction")]),
        object(
            "traffic",
            vec![long("bytes_in"), long("bytes_out"), long("bytes")],
        ),
        object("actor", vec![object("user", vec![utf8("uid"), utf8("name")])]),
        object("firewall_rule", vec![utf8("uid"), utf8("name")]),
    ]);
    if class_uid == 4002 {
        f.extend([
            object(
                "http_request",
                vec![
                    utf8("http_method"),
                    object(
                        "url",
                        vec![
                            utf8("hostname"),
                            int("port"),
                            utf8("path"),
                            utf8("query_string"),
                            utf8("url_string"),
                        ],
                    ),
                ],
            ),
            object("http_response", vec![int("code")]),
            int("http_status"),
        ]);
    }
    f.push(unmapped());
    Schema::new(f)
}

/// Detection Finding (2004), as `reconcile --gap-findings-to` writes it.
fn detection_finding() -> Schema {
    let mut f = Vec::new();
    base(&mut f);
    f.extend([
        object(
            "finding_info",
            vec![
                utf8("uid"),
                utf8("title"),
                utf8("desc"),
                list("types", DataType::Utf8),
                time("first_seen_time"),
                time("last_seen_time"),
            ],
        ),
        list(
            "resources",
            DataType::Struct(Fields::from(vec![utf8("uid"), utf8("type")])),
        ),
        object(
            "metadata",
            vec![
                utf8("version"),
                utf8("uid"),
                object(
                    "product",
                    vec![utf8("name"), utf8("vendor_name"), utf8("version")],
                ),
            ],
        ),
        unmapped(),
    ]);
    Schema::new(f)
}

/// The OCSF classes this sink has a schema for: uid and name.
pub const CLASSES: [(u32, &str); 3] = [
    (4001, "Network Activity"),
    (4002, "HTTP Activity"),
    (2004, "Detection Finding"),
];

/// The Arrow schema of OCSF class `class_uid`, if this sink has one.
pub fn schema_for(class_uid: u32) -> Option<SchemaRef> {
    match class_uid {
        4001 | 4002 => Some(Arc::new(network(class_uid))),
        2004 => Some(Arc::new(detection_finding())),
        _ => None,
    }
}

/// The schema of `class_uid` as the Parquet files have it, one column per line (`auditship
/// transform --parquet-schema CLASS` prints it).
pub fn describe(class_uid: u32) -> Option<String> {
    let schema = schema_for(class_uid)?;
    let parquet = parquet::arrow::ArrowSchemaConverter::new()
        .convert(&schema)
        .ok()?;
    let mut out = Vec::new();
    parquet::schema::printer::print_schema(&mut out, parquet.root_schema());
    String::from_utf8(out).ok()
}

/// Whether `event` fits `schema` as arrow-json's strict decoder reads it into these columns:
/// every attribute a column, every value of the column's type (`null` fits any). An error
/// names the attribute and what is wrong.
///
/// Hand-written, beside the crate, for speed: asking arrow-json ([`check_with_arrow`]: the
/// event decoded alone and a one-row batch flushed) cost 33 µs per event with a decoder kept
/// between events, 39 µs building one each time, more than the rest of the sink's work; with
/// this walk the sink admits an event (parse, check, `unmapped` as text, written back) in
/// 14 µs, and writes its share of the Parquet in 5.5 µs (`cargo bench --bench hot_paths
/// security_lake`, 2026-12-07). `tests.rs` checks it against
/// arrow-json on golden events and thousands of mutations of them: whatever it passes the
/// decoder takes (so sealing an object cannot fail), whatever the decoder refuses it refuses;
/// it is stricter only on numbers (a timestamp written as text, a fraction where OCSF has an
/// integer, which the decoder would parse or truncate).
pub fn check(schema: &Schema, event: &serde_json::Map<String, serde_json::Value>) -> Result<(), String> {
    check_struct(event, schema.fields()).map_err(|e| e.to_string())
}

/// Where a value does not fit, innermost first (paths are built only on the way out).
struct Misfit {
    path: Vec<String>,
    what: String,
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path: Vec<&str> = self.path.iter().rev().map(String::as_str).collect();
        write!(f, "`{}` {}", path.join("."), self.what)
    }
}

fn check_struct(obj: &serde_json::Map<String, serde_json::Value>, fields: &Fields) -> Result<(), Misfit> {
    for (k, v) in obj {
        let Some(field) = fields.iter().find(|f| f.name() == k) else {
            return Err(Misfit {
                path: vec![k.clone()],
                what: "is not a column of the class's schema".into(),
            });
        };
        check_value(v, field.data_type()).map_err(|mut m| {
            m.path.push(k.clone());
            m
        })?;
    }
    Ok(())
}

fn check_value(v: &serde_json::Value, t: &DataType) -> Result<(), Misfit> {
    use serde_json::Value;
    let fits = match (t, v) {
        (_, Value::Null) => true,
        (DataType::Utf8, Value::String(_)) => true,
        (DataType::Int32, Value::Number(n)) => n.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
        (DataType::Int64 | DataType::Timestamp(..), Value::Number(n)) => n.as_i64().is_some(),
        (DataType::Struct(fields), Value::Object(o)) => return check_struct(o, fields),
        (DataType::List(item), Value::Array(a)) => {
            for (i, x) in a.iter().enumerate() {
                check_value(x, item.data_type()).map_err(|mut m| {
                    m.path.push(format!("[{i}]"));
                    m
                })?;
            }
            return Ok(());
        }
        (DataType::Map(..), Value::Object(o)) => o.values().all(|x| x.is_string() || x.is_null()),
        _ => false,
    };
    if fits {
        return Ok(());
    }
    let got = match v {
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number out of range or not whole",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
        Value::Null => "null",
    };
    Err(Misfit {
        path: Vec::new(),
        what: format!("is {got} where the schema has {t}"),
    })
}

/// The reference [`check`] stands in for: `text` (one event) decoded alone by arrow-json's
/// strict decoder into `schema`, and flushed.
pub fn check_with_arrow(schema: &SchemaRef, text: &[u8]) -> Result<(), String> {
    let mut d = arrow_json::ReaderBuilder::new(schema.clone())
        .with_strict_mode(true)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    d.decode(text)
        .and_then(|_| d.flush())
        .map(|_| ())
        .map_err(|e| e.to_string())
}
