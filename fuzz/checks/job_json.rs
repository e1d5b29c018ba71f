//! `job_json`: job submission bodies through `flinger::http::wire::parse_job` (upstream's job
//! schema, `flinger::http::schema`). Shared by the fuzz target and the stable seed replay.
//!
//! Properties:
//! - validation never panics, whatever the bytes;
//! - a refused submission says why: a 422 names a field the submission has (or `_schema`);
//! - an accepted job round-trips: the stored body is a JSON object whose `job_id` is the
//!   returned id (in canonical spelling, equal to a client-supplied one), whose `job_queue` is
//!   the queue, and which keeps every key of the input, in order (`exclude_agents` added when
//!   absent, then `job_id`); unknown top-level fields keep their values, the schema's fields
//!   hold their loaded (coerced) values;
//! - the stored body loads through the schema unchanged (loading is idempotent), and is itself
//!   a valid submission that parses to the same job and body;
//! - priority, `exclude_agents` and attachments are read from the stored document;
//! - `flinger::http::wire::pick_members` (how state reports and log fragments are read) finds
//!   the same values, and refuses with the same error, as lookups in `json_object_body`'s map.

use serde_json::{Map, Value};

use flinger::error::Error;
use flinger::http::schema;
use flinger::http::wire::{json_object_body, parse_job, pick_members};
use flinger::model::JobId;

pub fn check(data: &[u8]) {
    check_pick(data);
    let sub = match parse_job(data) {
        Ok(sub) => sub,
        Err(Error::Validation { field, .. }) => {
            let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(data) else {
                panic!("a 422 for something that is not a JSON object");
            };
            assert!(
                field == "_schema" || input.contains_key(&field),
                "the 422 names {field:?}, which the submission does not have"
            );
            return;
        }
        Err(_) => return,
    };
    let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(data) else {
        panic!("parse_job accepted something that is not a JSON object");
    };
    let Ok(Value::Object(stored)) = serde_json::from_slice::<Value>(&sub.body) else {
        panic!("the stored body is not a JSON object");
    };
    assert_eq!(
        stored.get("job_id"),
        Some(&Value::from(sub.id.to_string())),
        "job_id"
    );
    assert_eq!(
        stored.get("job_queue"),
        Some(&Value::from(&*sub.queue)),
        "job_queue"
    );
    match input.get("job_id") {
        Some(Value::String(s)) if !s.is_empty() => {
            assert_eq!(JobId::parse(s), Some(sub.id), "client id kept")
        }
        _ => {}
    }

    check_keys(&input, &stored);

    let mut reloaded = stored.clone();
    schema::load(&schema::JOB, &mut reloaded).expect("the stored body loads");
    assert_eq!(reloaded, stored, "loading the stored body changes it");

    let priority = stored
        .get("job_priority")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    assert_eq!(sub.priority, priority, "job_priority");
    let exclude: Vec<&str> = match stored.get("exclude_agents") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().expect("accepted lists hold strings"))
            .collect(),
        _ => Vec::new(),
    };
    assert_eq!(
        sub.exclude.iter().map(|a| &**a).collect::<Vec<_>>(),
        exclude,
        "exclude_agents"
    );
    let declares = ["provision_data", "firmware_update_data", "test_data"]
        .iter()
        .any(|f| {
            stored
                .get(*f)
                .and_then(|d| d.get("attachments"))
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        });
    assert_eq!(sub.awaits_attachments, declares, "attachments");

    let again = parse_job(&sub.body).expect("the stored body is a valid submission");
    assert_eq!(again.id, sub.id);
    assert_eq!(again.queue, sub.queue);
    assert_eq!(again.priority, sub.priority);
    assert_eq!(again.exclude, sub.exclude);
    assert_eq!(again.awaits_attachments, sub.awaits_attachments);
    assert_eq!(again.body, sub.body, "parsing the stored body changes it");
}

/// Same keys in the same order (plus `exclude_agents`, then `job_id`, at the end when the input
/// had none); unknown fields keep their values, known ones may hold their loaded form.
fn check_keys(input: &Map<String, Value>, stored: &Map<String, Value>) {
    let mut keys: Vec<&str> = input.keys().map(String::as_str).collect();
    if !input.contains_key("exclude_agents") {
        keys.push("exclude_agents");
    }
    if !input.contains_key("job_id") {
        keys.push("job_id");
    }
    assert_eq!(
        stored.keys().map(String::as_str).collect::<Vec<_>>(),
        keys,
        "keys or their order changed"
    );
    for (key, value) in input {
        let known = schema::JOB.fields.iter().find(|f| f.name == key.as_str());
        match known {
            None => assert_eq!(&stored[key], value, "unknown field {key} changed"),
            // Strings are never rewritten, only checked (`job_id` is canonicalised).
            Some(field) if matches!(field.kind, schema::Kind::Str) && key != "job_id" => {
                assert_eq!(&stored[key], value, "{key} changed")
            }
            Some(_) => {}
        }
    }
}

/// `pick_members` against the map it replaces, on the same bytes.
fn check_pick(data: &[u8]) {
    let names = ["job_queue", "job_id", "tags"];
    let fast = pick_members(data, names)
        .map(|p| (p.values, p.other.is_some()))
        .map_err(|e| Error::from(e).to_string());
    let slow = json_object_body(data)
        .map(|mut map| {
            let values = names.map(|name| map.remove(name));
            (values, !map.is_empty())
        })
        .map_err(|e| e.to_string());
    assert_eq!(fast, slow, "pick_members disagrees with the map");
}
