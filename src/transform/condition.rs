//! Conditions (`when = {...}`) over events: what `filter` keeps, what a sink is routed, and which
//! events another transform touches.
//!
//! ```toml
//! when = { action = "reject" }                              # equality
//! when = { action = ["reject", "denied"] }                  # any of
//! when = { status_code = { gte = 500, lt = 600 } }          # comparisons, all must hold
//! when = { host = { regex = "(^|\\.)example\\.com$" } }     # regular expression
//! when = { "metadata.authorization" = { exists = true } }   # presence (not null)
//! when = { any = [{ action = "reject" }, { status_code = { gte = 500 } }] }
//! when = { not = { host = "pypi.org" } }
//! ```
//! Keys of one table must all hold (and). `all`, `any` and `not` combine conditions; a field
//! whose name is one of them is written with a leading dot (`".not" = 1`).

use regex::Regex;
use serde_json::Value;

use super::path::FieldPath;
use super::raw::Lookup;

/// A compiled condition.
#[derive(Clone, Debug)]
pub enum Condition {
    /// Every one holds (an empty list holds).
    All(Vec<Condition>),
    /// At least one holds.
    Any(Vec<Condition>),
    /// The inner one does not hold.
    Not(Box<Condition>),
    /// Every test holds on the value at the path.
    Field(FieldPath, Vec<Test>),
}

/// One test on a field's value.
#[derive(Clone, Debug)]
pub enum Test {
    /// Equal (numbers compare by value: 403 equals 403.0).
    Eq(Value),
    /// Not equal (a missing field is not equal to anything).
    Ne(Value),
    /// Equal to one of these.
    In(Vec<Value>),
    /// Equal to none of these (a missing field is in none).
    NotIn(Vec<Value>),
    /// The string (or the number's or boolean's text) matches.
    Regex(Regex),
    /// Present and not null (`true`), or absent or null (`false`).
    Exists(bool),
    /// Numeric comparisons (numbers, or strings that are numbers).
    Gt(f64),
    /// `>=`.
    Gte(f64),
    /// `<`.
    Lt(f64),
    /// `<=`.
    Lte(f64),
    /// A string holds this text, or an array holds an equal element.
    Contains(Value),
    /// A string starts with this text.
    StartsWith(String),
    /// A string ends with this text.
    EndsWith(String),
}

const TESTS: &str = "eq, ne, in, not_in, regex, exists, gt, gte, lt, lte, contains, starts_with, ends_with";

impl Condition {
    /// Compile a `when` value. Errors name the offending key and what would be accepted.
    pub fn compile(value: &toml::Value) -> Result<Condition, String> {
        match value {
            toml::Value::Table(t) => compile_table(t),
            other => Err(format!(
                "a condition is a table like {{ action = \"reject\" }}, not {}",
                other.type_str()
            )),
        }
    }

    /// Whether the event (a tree, or its raw fields) holds.
    pub fn eval<L: Lookup + ?Sized>(&self, event: &L) -> bool {
        match self {
            Condition::All(cs) => cs.iter().all(|c| c.eval(event)),
            Condition::Any(cs) => cs.iter().any(|c| c.eval(event)),
            Condition::Not(c) => !c.eval(event),
            Condition::Field(path, tests) => {
                let v = event.lookup(path);
                tests.iter().all(|t| t.eval(v.as_deref()))
            }
        }
    }
}

fn compile_table(t: &toml::Table) -> Result<Condition, String> {
    if t.is_empty() {
        return Err("an empty condition; write e.g. { action = \"reject\" }".into());
    }
    let mut all = Vec::with_capacity(t.len());
    for (key, value) in t {
        let c = match key.as_str() {
            "all" | "any" => {
                let toml::Value::Array(items) = value else {
                    return Err(format!(
                        "`{key}` takes a list of conditions, e.g. {key} = [{{ action = \"reject\" }}, {{ status_code = {{ gte = 500 }} }}]"
                    ));
                };
                let inner = items
                    .iter()
                    .map(Condition::compile)
                    .collect::<Result<Vec<_>, _>>()?;
                if key == "all" {
                    Condition::All(inner)
                } else {
                    if inner.is_empty() {
                        return Err("`any = []` never holds; list at least one condition".into());
                    }
                    Condition::Any(inner)
                }
            }
            "not" => Condition::Not(Box::new(
                Condition::compile(value).map_err(|e| format!("in `not`: {e}"))?,
            )),
            field => {
                let path = FieldPath::parse(field)?;
                let tests = compile_tests(&path, value)?;
                Condition::Field(path, tests)
            }
        };
        all.push(c);
    }
    Ok(if all.len() == 1 {
        all.pop().unwrap_or(Condition::All(Vec::new()))
    } else {
        Condition::All(all)
    })
}

fn compile_tests(path: &FieldPath, value: &toml::Value) -> Result<Vec<Test>, String> {
    match value {
        toml::Value::Array(items) => Ok(vec![Test::In(scalars(path, items)?)]),
        toml::Value::Table(ops) => {
            if ops.is_empty() {
                return Err(format!(
                    "`{path}` = {{}} tests nothing; use e.g. {{ exists = true }}"
                ));
            }
            ops.iter().map(|(op, v)| compile_test(path, op, v)).collect()
        }
        scalar => Ok(vec![Test::Eq(to_json(scalar))]),
    }
}

fn compile_test(path: &FieldPath, op: &str, v: &toml::Value) -> Result<Test, String> {
    let number = |v: &toml::Value| match v {
        toml::Value::Integer(i) => Ok(*i as f64),
        toml::Value::Float(f) => Ok(*f),
        other => Err(format!(
            "`{path}`: `{op}` takes a number, not {}",
            other.type_str()
        )),
    };
    let text = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        other => Err(format!(
            "`{path}`: `{op}` takes a string, not {}",
            other.type_str()
        )),
    };
    let list = |v: &toml::Value| match v {
        toml::Value::Array(items) => scalars(path, items),
        other => Err(format!("`{path}`: `{op}` takes a list, not {}", other.type_str())),
    };
    Ok(match op {
        "eq" => Test::Eq(to_json(v)),
        "ne" => Test::Ne(to_json(v)),
        "in" => Test::In(list(v)?),
        "not_in" => Test::NotIn(list(v)?),
        "regex" => {
            let pattern = text(v)?;
            Test::Regex(
                Regex::new(&pattern)
                    .map_err(|e| format!("`{path}`: regex {pattern:?} does not compile: {e}"))?,
            )
        }
        "exists" => match v {
            toml::Value::Boolean(b) => Test::Exists(*b),
            other => {
                return Err(format!(
                    "`{path}`: `exists` takes true or false, not {}",
                    other.type_str()
                ))
            }
        },
        "gt" => Test::Gt(number(v)?),
        "gte" => Test::Gte(number(v)?),
        "lt" => Test::Lt(number(v)?),
        "lte" => Test::Lte(number(v)?),
        "contains" => Test::Contains(to_json(v)),
        "starts_with" => Test::StartsWith(text(v)?),
        "ends_with" => Test::EndsWith(text(v)?),
        other => {
            return Err(format!(
                "`{path}`: unknown test `{other}` (use one of {TESTS}; to compare with a table, write eq = {{ ... }})"
            ))
        }
    })
}

fn scalars(path: &FieldPath, items: &[toml::Value]) -> Result<Vec<Value>, String> {
    if items.is_empty() {
        return Err(format!("`{path}` = [] matches nothing; list at least one value"));
    }
    Ok(items.iter().map(to_json).collect())
}

/// A TOML value as JSON (dates become their RFC 3339 text).
pub fn to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

/// Equality where numbers compare by value.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Test {
    fn eval(&self, v: Option<&Value>) -> bool {
        let present = v.filter(|v| !v.is_null());
        match self {
            Test::Exists(want) => present.is_some() == *want,
            Test::Eq(x) => v.is_some_and(|v| json_eq(v, x)),
            Test::Ne(x) => !v.is_some_and(|v| json_eq(v, x)),
            Test::In(xs) => v.is_some_and(|v| xs.iter().any(|x| json_eq(v, x))),
            Test::NotIn(xs) => !v.is_some_and(|v| xs.iter().any(|x| json_eq(v, x))),
            Test::Regex(re) => match present {
                Some(Value::String(s)) => re.is_match(s),
                Some(v @ (Value::Number(_) | Value::Bool(_))) => re.is_match(&v.to_string()),
                _ => false,
            },
            Test::Gt(x) => present.and_then(as_number).is_some_and(|n| n > *x),
            Test::Gte(x) => present.and_then(as_number).is_some_and(|n| n >= *x),
            Test::Lt(x) => present.and_then(as_number).is_some_and(|n| n < *x),
            Test::Lte(x) => present.and_then(as_number).is_some_and(|n| n <= *x),
            Test::Contains(x) => match (present, x) {
                (Some(Value::String(s)), Value::String(needle)) => s.contains(needle.as_str()),
                (Some(Value::Array(items)), x) => items.iter().any(|i| json_eq(i, x)),
                _ => false,
            },
            Test::StartsWith(p) => matches!(present, Some(Value::String(s)) if s.starts_with(p.as_str())),
            Test::EndsWith(p) => matches!(present, Some(Value::String(s)) if s.ends_with(p.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn when(text: &str) -> Result<Condition, String> {
        let doc: toml::Table = toml::from_str(&format!("when = {text}")).unwrap();
        Condition::compile(&doc["when"])
    }

    fn holds(cond: &str, event: Value) -> bool {
        when(cond).unwrap().eval(&event)
    }

    #[test]
    fn equality_any_of_and_numbers() {
        let e = json!({"action": "reject", "status_code": 403, "ratio": 0.5});
        assert!(holds(r#"{ action = "reject" }"#, e.clone()));
        assert!(!holds(r#"{ action = "allow" }"#, e.clone()));
        assert!(holds(r#"{ action = ["allow", "reject"] }"#, e.clone()));
        assert!(!holds(r#"{ action = ["allow", "stub"] }"#, e.clone()));
        assert!(holds(r#"{ status_code = 403.0 }"#, e.clone()));
        assert!(holds(r#"{ status_code = { gte = 400, lt = 500 } }"#, e.clone()));
        assert!(!holds(r#"{ status_code = { gt = 403 } }"#, e.clone()));
        assert!(holds(
            r#"{ status_code = { lte = 403 }, ratio = { lt = 1 } }"#,
            e.clone()
        ));
        assert!(holds(r#"{ status_code = { ne = 200 } }"#, e.clone()));
        assert!(holds(r#"{ missing = { ne = 200 } }"#, e.clone()));
        assert!(!holds(r#"{ missing = { lt = 200 } }"#, e.clone()));
        assert!(holds(r#"{ action = { not_in = ["allow"] } }"#, e));
        assert!(holds(r#"{ code = { gt = 10 } }"#, json!({"code": "42"})));
    }

    #[test]
    fn regex_exists_and_strings() {
        let e = json!({"host": "api.evil.example", "metadata": {"authorization": "Bearer x", "none": null}, "status_code": 502, "tags": ["a", "b"]});
        assert!(holds(
            r#"{ host = { regex = "(^|\\.)evil\\.example$" } }"#,
            e.clone()
        ));
        assert!(!holds(r#"{ host = { regex = "^pypi" } }"#, e.clone()));
        assert!(holds(r#"{ status_code = { regex = "^5" } }"#, e.clone()));
        assert!(holds(
            r#"{ "metadata.authorization" = { exists = true } }"#,
            e.clone()
        ));
        assert!(holds(r#"{ "metadata.none" = { exists = false } }"#, e.clone()));
        assert!(holds(r#"{ "metadata.gone" = { exists = false } }"#, e.clone()));
        assert!(holds(
            r#"{ host = { starts_with = "api.", ends_with = ".example", contains = "evil" } }"#,
            e.clone()
        ));
        assert!(holds(r#"{ tags = { contains = "b" } }"#, e.clone()));
        assert!(!holds(r#"{ tags = { contains = "c" } }"#, e));
    }

    #[test]
    fn and_or_not_nest() {
        let e = json!({"action": "allow", "status_code": 503, "not": 1});
        assert!(holds(
            r#"{ any = [{ action = "reject" }, { status_code = { gte = 500 } }] }"#,
            e.clone()
        ));
        assert!(!holds(
            r#"{ all = [{ action = "reject" }, { status_code = { gte = 500 } }] }"#,
            e.clone()
        ));
        assert!(holds(r#"{ not = { action = "reject" } }"#, e.clone()));
        assert!(holds(
            r#"{ not = { any = [{ action = "reject" }, { action = "error" }] } }"#,
            e.clone()
        ));
        assert!(holds(r#"{ ".not" = 1 }"#, e.clone()));
        assert!(holds(r#"{ all = [] }"#, e));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (r#""reject""#, "a condition is a table"),
            ("{}", "an empty condition"),
            (r#"{ action = { equals = "x" } }"#, "unknown test `equals`"),
            (r#"{ host = { regex = "(" } }"#, "does not compile"),
            (r#"{ status_code = { gt = "five" } }"#, "takes a number"),
            (r#"{ any = { action = "x" } }"#, "takes a list of conditions"),
            (r#"{ any = [] }"#, "never holds"),
            (r#"{ action = [] }"#, "matches nothing"),
            (r#"{ "a..b" = 1 }"#, "empty segment"),
            (r#"{ x = { exists = "yes" } }"#, "true or false"),
        ];
        for (text, want) in cases {
            let e = when(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
