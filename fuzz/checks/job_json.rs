//! `job_json`: job submission bodies through `flinger::http::wire::parse_job`. Shared by the
//! fuzz target and the stable seed replay.
//!
//! Properties:
//! - validation never panics, whatever the bytes;
//! - an accepted job round-trips: the stored body is a JSON object whose `job_id` is the
//!   returned id (in canonical spelling, equal to a client-supplied one), whose `job_queue` is
//!   the queue, and which keeps every other key of the input, in order, with equal values
//!   (`reserve_data.timeout` is normalised to seconds, the one documented rewrite);
//! - priority, `exclude_agents` and attachments are read from the same document;
//! - the stored body is itself a valid submission that parses to the same job and body.

use serde_json::{Map, Value};

use flinger::http::wire::parse_job;
use flinger::model::JobId;

pub fn check(data: &[u8]) {
    let Ok(sub) = parse_job(data) else {
        return;
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

    let priority = input
        .get("job_priority")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    assert_eq!(sub.priority, priority, "job_priority");
    let exclude: Vec<&str> = match input.get("exclude_agents") {
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
            input
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

/// Same keys in the same order (plus `job_id` at the end when the input had none), same values
/// except the ones `parse_job` defines a rewrite for.
fn check_keys(input: &Map<String, Value>, stored: &Map<String, Value>) {
    let mut keys: Vec<&str> = input.keys().map(String::as_str).collect();
    if !input.contains_key("job_id") {
        keys.push("job_id");
    }
    assert_eq!(
        stored.keys().map(String::as_str).collect::<Vec<_>>(),
        keys,
        "keys or their order changed"
    );
    for (key, value) in input {
        let kept = &stored[key];
        match key.as_str() {
            "job_id" => {}
            "reserve_data" => {
                let (Value::Object(before), Value::Object(after)) = (value, kept) else {
                    assert_eq!(kept, value, "reserve_data");
                    continue;
                };
                assert_eq!(
                    before.keys().collect::<Vec<_>>(),
                    after.keys().collect::<Vec<_>>(),
                    "reserve_data keys"
                );
                for (k, v) in before {
                    if k == "timeout" && !v.is_null() {
                        assert!(
                            after[k].as_u64().is_some_and(|s| s > 0),
                            "timeout is normalised to seconds"
                        );
                    } else {
                        assert_eq!(&after[k], v, "reserve_data.{k}");
                    }
                }
            }
            _ => assert_eq!(kept, value, "{key} changed"),
        }
    }
}
