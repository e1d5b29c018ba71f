//! The validator: [`load`] walks a [`Schema`] the way marshmallow loads, coercing values in
//! place, and the value checks it uses (marshmallow's `Integer`, `Boolean`, `URL`, `Email`
//! and upstream's `parse_duration`), each as upstream's code behaves.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

use super::{Field, Invalid, Kind, Schema, Unknown, PROVISION_SCHEMAS};
use Kind::*;

/// Loads `map` through `schema`: checks every field, coerces values in place, adds
/// defaults. The first failure is returned (marshmallow collects them all; one is enough
/// to say what to fix).
pub fn load(schema: &Schema, map: &mut impl Object) -> Result<(), Invalid> {
    // Each declared field's value, from one pass over the map's members (usually a few)
    // against the declared names, instead of a hashed lookup of every field present (a
    // SipHash of the name apiece, in serde_json's map): fields are then loaded in the
    // schema's order, so the first failure reported does not depend on the members'
    // order. No schema declares more fields than the table holds (a test walks them all).
    let mut values: [Option<&mut Value>; MAX_FIELDS] = std::array::from_fn(|_| None);
    let mut unknown = None;
    for (key, value) in map.members_mut() {
        match schema.fields.iter().position(|f| f.name == key.as_str()) {
            Some(i) => values[i] = Some(value),
            None => unknown = unknown.or(Some(key)),
        }
    }
    // Kept only to be reported; with `Unknown::Keep` they are the job's own fields.
    let unknown = (schema.unknown == Unknown::Raise)
        .then(|| unknown.cloned())
        .flatten();
    let mut defaults = Vec::new();
    for (field, value) in schema.fields.iter().zip(values) {
        // Most declared fields are absent, optional and without a default: nothing to
        // load. Skipped here, as `load_field` would: it is not inlined (it recurses through
        // nested schemas), and a call for each of the job's 17 fields cost ~1,400
        // instructions of a small submit.
        if value.is_none() && !field.required && field.default.is_none() {
            continue;
        }
        if let Some(default) = load_field(field, value)? {
            defaults.push((field.name, default));
        }
    }
    for (name, default) in defaults {
        map.set(name.to_owned(), default);
    }
    if let Some(key) = unknown {
        return Err(Invalid::at(&key, "Unknown field."));
    }
    if let Some(reason) = schema.check.and_then(|check| check(map)) {
        return Err(Invalid::at("_schema", reason));
    }
    Ok(())
}

/// Reading a JSON object's members by name: what a whole-object check ([`SchemaCheck`])
/// sees.
///
/// [`SchemaCheck`]: super::SchemaCheck
pub trait Lookup {
    /// The value of the member `name`.
    fn member(&self, name: &str) -> Option<&Value>;
}

/// A JSON object as [`load`] reads and completes it: serde_json's map (a nested object)
/// or a job's top level as `wire::Members` (read without building a map).
pub trait Object: Lookup {
    /// Each member in order, its value writable.
    fn members_mut(&mut self) -> impl Iterator<Item = (&String, &mut Value)>;
    /// Sets the member `name`: one of that name keeps its place, a new one goes last (as
    /// serde_json's `Map::insert` does with `preserve_order`).
    fn set(&mut self, name: String, value: Value);
}

impl Lookup for Map<String, Value> {
    fn member(&self, name: &str) -> Option<&Value> {
        self.get(name)
    }
}

impl Object for Map<String, Value> {
    fn members_mut(&mut self) -> impl Iterator<Item = (&String, &mut Value)> {
        self.iter_mut()
    }

    fn set(&mut self, name: String, value: Value) {
        self.insert(name, value);
    }
}

/// Most fields a [`Schema`] may declare: [`load`]'s table of their values.
pub const MAX_FIELDS: usize = 64;

/// Loads one declared field, `value` being the map's (`None` when absent): checks and
/// coerces it in place, and returns the default to insert for an absent field that has one.
fn load_field(field: &Field, value: Option<&mut Value>) -> Result<Option<Value>, Invalid> {
    match value {
        None if field.required => Err(Invalid::at(field.name, "Missing data for required field.")),
        None => Ok(field.default.map(|default| default())),
        Some(Value::Null) if field.nullable => Ok(None),
        Some(Value::Null) => Err(Invalid::at(field.name, "Field may not be null.")),
        Some(value) => {
            load_value(&field.kind, value).map_err(|e| e.within(field.name))?;
            check_length(field, value).map_err(|e| e.within(field.name))?;
            Ok(None)
        }
    }
}

fn check_length(field: &Field, value: &Value) -> Result<(), Invalid> {
    let len = match value {
        Value::String(s) => s.chars().count(),
        Value::Array(a) => a.len(),
        _ => return Ok(()),
    };
    if let Some(min) = field.min.filter(|&min| len < min) {
        return Err(Invalid::new(format!("Shorter than minimum length {min}.")));
    }
    if let Some(max) = field.max.filter(|&max| len > max) {
        return Err(Invalid::new(format!("Longer than maximum length {max}.")));
    }
    Ok(())
}

fn load_value(kind: &Kind, value: &mut Value) -> Result<(), Invalid> {
    let not_string = || Invalid::new("Not a valid string.");
    match kind {
        Str => value.is_string().then_some(()).ok_or_else(not_string),
        Int => {
            *value = Value::from(to_int(value)?);
            Ok(())
        }
        Bool => {
            *value =
                Value::Bool(to_bool(value).ok_or_else(|| Invalid::new("Not a valid boolean."))?);
            Ok(())
        }
        Url => {
            let text = value.as_str().ok_or_else(not_string)?;
            is_url(text)
                .then_some(())
                .ok_or_else(|| Invalid::new("Not a valid URL."))
        }
        Email => {
            let text = value.as_str().ok_or_else(not_string)?;
            is_email(text)
                .then_some(())
                .ok_or_else(|| Invalid::new("Not a valid email address."))
        }
        Dict => value
            .is_object()
            .then_some(())
            .ok_or_else(|| Invalid::new("Not a valid mapping type.")),
        Duration => {
            if let Some(seconds) = duration(value)
                .map_err(|e| Invalid::new(format!("Invalid duration format: {e}")))?
            {
                *value = Value::from(seconds);
            }
            Ok(())
        }
        List(inner) => {
            let Value::Array(items) = value else {
                return Err(Invalid::new("Not a valid list."));
            };
            for (i, item) in items.iter_mut().enumerate() {
                load_value(inner, item).map_err(|e| e.within(&i.to_string()))?;
            }
            Ok(())
        }
        Nested(schema) => match value {
            Value::Object(map) => load(schema, map),
            _ => Err(Invalid::at("_schema", "Invalid input type.")),
        },
        Matching(pattern) => {
            let text = value.as_str().ok_or_else(not_string)?;
            pattern
                .regex()
                .is_match(text)
                .then_some(())
                .ok_or_else(|| Invalid::new("String does not match expected pattern."))
        }
        OneOf(choices) => {
            let text = value.as_str().ok_or_else(not_string)?;
            choices
                .contains(&text)
                .then_some(())
                .ok_or_else(|| Invalid::new(format!("Must be one of: {}.", choices.join(", "))))
        }
        DictOf(keys, values) => {
            let Value::Object(map) = value else {
                return Err(Invalid::new("Not a valid mapping type."));
            };
            for (key, item) in map.iter() {
                if !keys.regex().is_match(key) {
                    return Err(
                        Invalid::at("key", "String does not match expected pattern.").within(key),
                    );
                }
                let text = item
                    .as_str()
                    .ok_or_else(|| not_string().within("value").within(key))?;
                if !values.regex().is_match(text) {
                    return Err(
                        Invalid::at("value", "String does not match expected pattern.").within(key),
                    );
                }
            }
            Ok(())
        }
        ProvisionData => provision_data(value),
    }
}

/// Upstream's `ProvisionData.get_data_type` + load: the first connector schema that loads
/// the object wins and its loaded value replaces it.
fn provision_data(value: &mut Value) -> Result<(), Invalid> {
    let Value::Object(data) = value else {
        return Err(Invalid::at(
            "_schema",
            format!("Invalid data type: {value}"),
        ));
    };
    let mut failures = Vec::with_capacity(PROVISION_SCHEMAS.len());
    for schema in &PROVISION_SCHEMAS {
        let mut candidate = data.clone();
        match load(schema, &mut candidate) {
            Ok(()) => {
                *data = candidate;
                return Ok(());
            }
            Err(e) => failures.push((schema.name, e)),
        }
    }
    // The closest schema: the first that failed on a value rather than on the set of keys.
    let structural = |e: &Invalid| {
        e.reason == "Unknown field." || e.reason == "Missing data for required field."
    };
    let (name, closest) = failures
        .iter()
        .find(|(_, e)| !structural(e))
        .unwrap_or(&failures[0]);
    let mut invalid = Invalid::new("Invalid provision data schema.");
    invalid.hint = Some(format!(
        "provision_data matches none of the {} device connectors' schemas (closest: {name}: \
         {}: {})",
        PROVISION_SCHEMAS.len(),
        closest.path.join("."),
        closest.reason
    ));
    Err(invalid)
}

/// marshmallow's non-strict `Integer` for a field loaded outside a [`Schema`] table (a log
/// fragment's `fragment_number`): the value, or marshmallow's reason.
pub fn integer(value: &Value) -> Result<i64, String> {
    to_int(value).map_err(|invalid| invalid.reason)
}

/// marshmallow's non-strict `Integer`: `int(value)` for numbers (truncating) and numeric
/// strings; booleans are refused.
fn to_int(value: &Value) -> Result<i64, Invalid> {
    let invalid = || Invalid::new("Not a valid integer.");
    let too_large = || Invalid::new("Number too large.");
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if n.is_u64() {
                Err(too_large())
            } else {
                let f = n.as_f64().ok_or_else(invalid)?.trunc();
                if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
                    Ok(f as i64)
                } else {
                    Err(too_large())
                }
            }
        }
        Value::String(s) => match python_int(s) {
            Some(Some(i)) => Ok(i),
            Some(None) => Err(too_large()),
            None => Err(invalid()),
        },
        _ => Err(invalid()),
    }
}

/// Python's `int(text)`: surrounding whitespace, a sign, ASCII digits with single `_`
/// between them. `None`: not an integer; `Some(None)`: one beyond 64 bits.
fn python_int(text: &str) -> Option<Option<i64>> {
    let text = text.trim();
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let mut total: Option<i64> = Some(0);
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let d = i64::from(c.to_digit(10)? as u8);
        total = total.and_then(|t| t.checked_mul(10)).and_then(|t| {
            if negative {
                t.checked_sub(d)
            } else {
                t.checked_add(d)
            }
        });
    }
    Some(total)
}

/// marshmallow's `Boolean`: its truthy and falsy sets (which hold `1` and `0`, so `1.0`
/// and `0.0` too, as Python compares them).
fn to_bool(value: &Value) -> Option<bool> {
    const TRUTHY: &[&str] = &[
        "t", "T", "true", "True", "TRUE", "on", "On", "ON", "y", "Y", "yes", "Yes", "YES", "1",
    ];
    const FALSY: &[&str] = &[
        "f", "F", "false", "False", "FALSE", "off", "Off", "OFF", "n", "N", "no", "No", "NO", "0",
    ];
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) if TRUTHY.contains(&s.as_str()) => Some(true),
        Value::String(s) if FALSY.contains(&s.as_str()) => Some(false),
        _ => None,
    }
}

/// Upstream's `parse_duration` (`testflinger_common/duration.py`) as its `DurationField`
/// calls it: the seconds to store, `None` to keep the value as it is (a boolean: Python
/// takes `True` for the integer 1 and stores it unchanged), or why it is not a duration
/// (the reason alone: the caller puts "Invalid duration format: " before it).
pub fn duration(value: &Value) -> Result<Option<u64>, String> {
    // The caller says "Invalid duration format: " before every reason.
    let invalid = |text: &str| format!("'{text}' is not seconds nor like 1h30m");
    let text = match value {
        Value::Bool(_) => return Ok(None),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            return match n.as_u64() {
                Some(seconds) => Ok(Some(seconds)),
                None => Err("Duration cannot be negative".into()),
            };
        }
        Value::Number(_) => {
            return Err("Duration must be string or int, got <class 'float'>".into())
        }
        Value::String(s) => s.trim().to_lowercase(),
        Value::Array(_) => return Err("Duration must be string or int, got <class 'list'>".into()),
        Value::Object(_) => return Err("Duration must be string or int, got <class 'dict'>".into()),
        Value::Null => return Err("Duration must be string or int, got <class 'NoneType'>".into()),
    };
    if text.is_empty() {
        return Err("Duration cannot be empty".into());
    }
    if text.starts_with('-') {
        return Err("Duration cannot be negative".into());
    }
    match python_int(&text) {
        Some(Some(seconds)) => return Ok(Some(seconds.unsigned_abs())),
        Some(None) => return Err(invalid(&text)),
        None => {}
    }
    // `(\d+)\s*(secs?|mins?|hours?|days?|[smhd])`, and nothing else but whitespace.
    static UNIT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(\d+)\s*(secs?|mins?|hours?|days?|[smhd])").expect("a valid pattern")
    });
    let mut rebuilt = String::with_capacity(text.len());
    let mut total: u64 = 0;
    for caps in UNIT.captures_iter(&text) {
        let (number, unit) = (&caps[1], &caps[2]);
        rebuilt.push_str(number);
        rebuilt.push_str(unit);
        let multiplier = match unit.as_bytes()[0] {
            b's' => 1,
            b'm' => 60,
            b'h' => 3600,
            _ => 86_400,
        };
        let count: u64 = number
            .chars()
            .map(|c| c.to_digit(10))
            .try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d?)))
            .ok_or_else(|| invalid(&text))?;
        total = count
            .checked_mul(multiplier)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| invalid(&text))?;
    }
    let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if rebuilt.is_empty() || rebuilt != squeezed {
        return Err(invalid(&text));
    }
    Ok(Some(total))
}

/// marshmallow's `validate.URL()` (absolute, schemes http/https/ftp/ftps, a top-level
/// domain required).
pub fn is_url(value: &str) -> bool {
    static URL: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(concat!(
            r"(?i)^(?:[a-z0-9\.\-\+]*)://",
            r"(?:(?:[a-z0-9\-._~!$&'()*+,;=:]|%[0-9a-f]{2})*@)?",
            r"(?:(?:[A-Z0-9](?:[A-Z0-9-]{0,61}[A-Z0-9])?\.)+(?:[A-Z]{2,6}\.?|[A-Z0-9-]{2,}\.?)",
            r"|localhost",
            r"|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}",
            r"|\[[A-F0-9]*:[A-F0-9:]+\])",
            r"(?::\d+)?",
            r"(?:/?|[/?]\S+)\z",
        ))
        .expect("a valid pattern")
    });
    if value.is_empty() {
        return false;
    }
    if let Some((scheme, _)) = value.split_once("://") {
        if !["http", "https", "ftp", "ftps"].contains(&scheme.to_lowercase().as_str()) {
            return false;
        }
    }
    URL.is_match(value)
}

/// marshmallow's `validate.Email()`.
pub fn is_email(value: &str) -> bool {
    static USER: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(concat!(
            r"(?i)(?:^[-!#$%&'*+/=?^`{}|~\w]+(?:\.[-!#$%&'*+/=?^`{}|~\w]+)*\z",
            r#"|^"(?:[\x01-\x08\x0b\x0c\x0e-\x1f!#-\[\]-\x7f]|\\[\x01-\x09\x0b\x0c\x0e-\x7f])*"\z)"#,
        ))
        .expect("a valid pattern")
    });
    static DOMAIN: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(concat!(
            r"(?i)^(?:(?:[A-Z0-9](?:[A-Z0-9-]{0,61}[A-Z0-9])?\.)+(?:[A-Z]{2,6}|[A-Z0-9-]{2,})\z",
            r"|\[(?:25[0-5]|2[0-4]\d|[0-1]?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|[0-1]?\d?\d)){3}\]\z)",
        ))
        .expect("a valid pattern")
    });
    let Some((user, domain)) = value.rsplit_once('@') else {
        return false;
    };
    USER.is_match(user) && (domain == "localhost" || DOMAIN.is_match(domain))
}

#[cfg(test)]
mod tests {
    use super::super::JOB;
    use super::*;
    use serde_json::json;

    fn load_job(job: Value) -> Result<Value, Invalid> {
        let Value::Object(mut map) = job else {
            panic!("test jobs are objects")
        };
        load(&JOB, &mut map).map(|()| Value::Object(map))
    }

    #[test]
    fn provision_data_loads_through_the_first_connector_schema_that_fits() {
        for (data, ok) in [
            (json!({"url": "http://example.com/image.img.xz"}), true),
            (json!({"url": "invalid"}), false),
            (json!({"url": "http://example/img.xz"}), false),
            (json!({"url": "ftp://localhost:21/x"}), true),
            (json!({"url": "file:///tmp/x"}), false),
            (json!({}), true),
            (json!({"distro": "noble", "ephemeral": "yes"}), true),
            (json!({"skip": true}), true),
            (json!({"jobs": []}), false),
            (json!({"jobs": [{"job_queue": "a"}]}), true),
            (json!({"use_attachment": "img", "media": "sd"}), true),
            (json!({"use_attachment": "img", "media": "floppy"}), false),
            (
                json!({"preset": "p", "urls": ["http://a.example.com/x"]}),
                true,
            ),
            (
                json!({"preset": "p", "url": "http://a.example.com", "urls": ["http://b.example.com"]}),
                false,
            ),
            (
                json!({"provision_plan": {}, "url": "http://a.example.com", "ubuntu_sso_email": "me@example.com"}),
                true,
            ),
            (
                json!({"url": "http://a.example.com", "robot_tasks": ["t"], "live_image": true, "wait_until_ssh": "no"}),
                true,
            ),
            (
                json!({"alloem_url": "https://x.example.com/a.iso", "robot_tasks": []}),
                true,
            ),
            (json!({"what": 1}), false),
        ] {
            let result = load_job(json!({"job_queue": "q", "provision_data": data.clone()}));
            assert_eq!(result.is_ok(), ok, "{data}: {result:?}");
            if let Err(e) = result {
                assert_eq!(e.field(), "provision_data");
            }
        }
        let loaded = load_job(
            json!({"job_queue": "q", "provision_data": {"distro": "x", "ephemeral": "yes"}}),
        )
        .unwrap();
        assert_eq!(loaded["provision_data"]["ephemeral"], true);
        assert!(load_job(json!({"job_queue": "q", "provision_data": null})).is_ok());
    }

    #[test]
    fn reserve_data_takes_launchpad_or_github_keys_and_durations_only() {
        let e =
            load_job(json!({"job_queue": "q", "reserve_data": {"ssh_keys": ["lp:me", "who:me"]}}))
                .unwrap_err();
        assert_eq!(
            (e.field(), e.detail().as_str()),
            (
                "reserve_data",
                "ssh_keys.1: String does not match expected pattern."
            )
        );
        let e = load_job(json!({"job_queue": "q", "reserve_data": {"timeout": 5, "extra": 1}}))
            .unwrap_err();
        assert_eq!(e.detail(), "extra: Unknown field.");
        let loaded = load_job(json!({"job_queue": "q", "reserve_data": {"timeout": "1h 30min", "ssh_keys": ["gh:me"]}})).unwrap();
        assert_eq!(loaded["reserve_data"]["timeout"], 5400);
        assert_eq!(loaded["exclude_agents"], json!([]));
    }

    #[test]
    fn durations_parse_as_upstream_parse_duration() {
        for (value, expected) in [
            (json!("1800"), Ok(Some(1800))),
            (json!("+5"), Ok(Some(5))),
            (json!("1_000"), Ok(Some(1000))),
            (json!("0"), Ok(Some(0))),
            (json!(0), Ok(Some(0))),
            (json!("30m"), Ok(Some(1800))),
            (json!("1h30m"), Ok(Some(5400))),
            (json!("2d5h30m"), Ok(Some(192_600))),
            (json!("5 Hours"), Ok(Some(18_000))),
            (json!("10secs 2mins"), Ok(Some(130))),
            (json!(true), Ok(None)),
        ] {
            assert_eq!(duration(&value), expected, "{value}");
        }
        for value in [
            json!(""),
            json!("-5"),
            json!(-5),
            json!("5x"),
            json!("h"),
            json!("1w"),
            json!(1.5),
            json!("1h30"),
            json!([]),
        ] {
            assert!(duration(&value).is_err(), "{value}");
        }
    }

    #[test]
    fn integers_and_booleans_coerce_as_marshmallow() {
        let loaded = load_job(
            json!({"job_queue": "q", "job_priority": " 7 ", "global_timeout": 9.9, "debug": "on"}),
        )
        .unwrap();
        assert_eq!(
            (
                loaded["job_priority"].clone(),
                loaded["global_timeout"].clone(),
                loaded["debug"].clone()
            ),
            (json!(7), json!(9), json!(true))
        );
        for bad in [
            json!({"job_queue": "q", "job_priority": true}),
            json!({"job_queue": "q", "job_priority": "1.5"}),
            json!({"job_queue": "q", "debug": "maybe"}),
            json!({"job_queue": "q", "name": null}),
        ] {
            assert!(load_job(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_follow_marshmallow() {
        for (text, ok) in [
            ("me@example.com", true),
            ("me@localhost", true),
            ("me@[10.0.0.1]", true),
            ("\"a.b c\"@example.com", false),
            ("\"a!b\"@example.com", true),
            ("me", false),
            ("me@host", false),
            ("a@@example.com", false),
        ] {
            assert_eq!(is_email(text), ok, "{text}");
        }
    }

    /// Every schema `load` can be given, through any nesting.
    fn every_schema() -> Vec<&'static Schema> {
        fn kind_schemas(kind: &'static Kind, out: &mut Vec<&'static Schema>) {
            match kind {
                Nested(schema) => walk(schema, out),
                List(inner) => kind_schemas(inner, out),
                ProvisionData => PROVISION_SCHEMAS.iter().for_each(|s| walk(s, out)),
                _ => {}
            }
        }
        fn walk(schema: &'static Schema, out: &mut Vec<&'static Schema>) {
            if out.iter().any(|s| std::ptr::eq(*s, schema)) {
                return;
            }
            out.push(schema);
            schema
                .fields
                .iter()
                .for_each(|f| kind_schemas(&f.kind, out));
        }
        let mut out = Vec::new();
        walk(&JOB, &mut out);
        out
    }

    #[test]
    fn every_schema_fits_the_table_of_values() {
        let schemas = every_schema();
        assert!(schemas.len() > 10, "the walk reaches the nested schemas");
        for schema in schemas {
            assert!(
                schema.fields.len() <= MAX_FIELDS,
                "{} declares {} fields; `load`'s table holds {MAX_FIELDS}",
                schema.name,
                schema.fields.len()
            );
        }
    }

    /// `load` as marshmallow's order reads: a hashed lookup of every declared field in the
    /// schema's order, then the first undeclared key in the map's order (what `load`'s one
    /// pass over the members must match).
    fn load_by_lookup(schema: &Schema, map: &mut Map<String, Value>) -> Result<(), Invalid> {
        for field in schema.fields {
            if let Some(default) = load_field(field, map.get_mut(field.name))? {
                map.insert(field.name.to_owned(), default);
            }
        }
        if schema.unknown == Unknown::Raise {
            if let Some(key) = map
                .keys()
                .find(|k| !schema.fields.iter().any(|f| f.name == k.as_str()))
            {
                return Err(Invalid::at(key, "Unknown field."));
            }
        }
        if let Some(reason) = schema.check.and_then(|check| check(map)) {
            return Err(Invalid::at("_schema", reason));
        }
        Ok(())
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        proptest::sample::select(vec![
            Value::Null,
            json!(1),
            json!(-3),
            json!("2"),
            json!("text"),
            json!(true),
            json!("http://example.com/x.img"),
            json!([]),
            json!(["a", "b"]),
            json!({}),
            json!({"url": "http://example.com/x.img"}),
        ])
    }

    proptest::proptest! {
        #[test]
        fn one_pass_over_the_members_loads_as_looking_up_every_field(
            schema in proptest::sample::select(every_schema()),
            members in proptest::collection::vec((0usize..40, any_value()), 0..8),
        ) {
            let mut map = Map::new();
            for (i, value) in members {
                let name = schema
                    .fields
                    .get(i)
                    .map_or_else(|| format!("undeclared{}", i % 3), |f| f.name.to_owned());
                map.insert(name, value);
            }
            let (mut fast, mut slow) = (map.clone(), map);
            let fast_result = load(schema, &mut fast);
            let slow_result = load_by_lookup(schema, &mut slow);
            proptest::prop_assert_eq!(&fast_result, &slow_result);
            if fast_result.is_ok() {
                // As text: the members' order (defaults appended in the schema's order) counts.
                proptest::prop_assert_eq!(
                    serde_json::to_string(&fast).unwrap(),
                    serde_json::to_string(&slow).unwrap()
                );
            }
        }
    }
}
