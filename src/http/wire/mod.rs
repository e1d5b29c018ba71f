//! The Testflinger JSON shapes: parsing and validating what clients send (jobs, names,
//! bodies); `query` holds the API's small query and cookie syntax, `timestamps` its times.
//! The only module that knows the wire format of jobs.
//!
//! A job is any JSON object with a non-empty string `job_queue`; the fields Testflinger
//! defines are loaded through upstream's job schema (`super::schema`: 422 naming the field
//! and the reason), every other field is kept verbatim, in its order, for the agent.

use std::io::Write;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::schema;

mod query;
mod timestamps;

pub use query::{agent_cookie, query_number, query_pairs};
pub use timestamps::{iso_z, parse_timestamp};

use crate::error::{Error, Result};
use crate::model::registry::Submission;
use crate::model::{JobId, Name};

/// Longest queue or agent name accepted.
pub const MAX_NAME: usize = 256;
/// Most entries in `exclude_agents` or `tags`.
pub const MAX_LIST: usize = 1024;

/// Testflinger's text for an unusable submission body.
pub const INVALID_JOB: &str = "Invalid data or no job_queue specified";
/// Testflinger's text for a bad `job_id` in a submission.
pub const INVALID_JOB_ID: &str = "Invalid job_id specified";
/// Testflinger's text for a malformed id in a path.
pub const INVALID_ID: &str = "Invalid job id";

/// Parses an id from a path segment (400 when it is not a UUID spelling).
pub fn path_id(text: &str) -> Result<JobId> {
    JobId::parse(text).ok_or_else(|| Error::InvalidInput(INVALID_ID.into()))
}

/// The job phases (owned by the model: log fragments are stored per phase).
pub use crate::model::job::PHASES;

/// Parses a request body as JSON: a 400 naming what is wrong and where when it is not
/// (serde_json's own words, e.g. "lone leading surrogate in hex escape at line 1 column
/// 31": Python's `json` would accept such a string, but it is not Unicode and could not be
/// stored or returned).
pub fn parse_json(body: &[u8]) -> Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::InvalidInput(
            "Invalid JSON body: the body is empty".into(),
        ));
    }
    // A body valid as UTF-8 as a whole (nearly all) is parsed as text: from bytes, serde_json
    // validates every string on its own, whose setup costs more than the check of a small
    // body at once (~450 instructions of a submit). An invalid body is parsed from its
    // bytes, so the error names where the bad sequence is, as before.
    let parsed = match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    };
    parsed.map_err(|e| {
        let text = e.to_string();
        // serde_json's words for `"\ud800"` (no low surrogate after it) do not say why.
        let why = if text.contains("surrogate") || text.contains("end of hex escape") {
            " (a \\u escape of a UTF-16 surrogate, D800-DFFF, must be one of a high-low pair: \
             a lone surrogate is not a Unicode character)"
        } else {
            ""
        };
        Error::InvalidInput(format!("Invalid JSON body: {text}{why}"))
    })
}

/// What kind of JSON value `value` is, for messages ("a JSON array").
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a JSON array",
        Value::Object(_) => "a JSON object",
    }
}

/// A body that must be a JSON object (upstream's schema-validated bodies): invalid JSON is
/// a 400, any other JSON value a 422 `{"_schema": ["Invalid input type."]}` as marshmallow
/// answers, with a message saying what was sent instead.
pub fn json_object_body(body: &[u8]) -> Result<Map<String, Value>> {
    match parse_json(body)? {
        Value::Object(map) => Ok(map),
        other => Err(not_an_object(&other)),
    }
}

/// A body of a route HEAD loads with `@input(Schema, location="json")` and OLD did not
/// have (agents, log fragments, events, tokens, access control): webargs reads an empty
/// body as "no JSON" and the schema then loads `{}`, so HEAD answers an empty post as it
/// answers `{}` (200 from `POST /v1/agents/data/<name>`, 422 naming a required field
/// elsewhere). Blank is read as `{}` here too, instead of the 400 an empty body is on OLD's
/// routes (submit, results, action), where OLD and its tests answer 400.
pub fn empty_as_object(body: Bytes) -> Bytes {
    if body.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        body
    }
}

/// Refuses the first key of `map` not in `known`, as upstream's schemas do (marshmallow's
/// default `unknown = RAISE`): 422 naming it.
pub fn only_keys(map: &Map<String, Value>, known: &[&str]) -> Result<()> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(Error::unknown_field(key)),
        None => Ok(()),
    }
}

/// [`json_object_body`]'s refusal of a body that is JSON but not an object.
fn not_an_object(value: &Value) -> Error {
    Error::Validation {
        message: format!(
            "Validation error: expected a JSON object, got {}",
            json_kind(value)
        ),
        field: "_schema".into(),
        reason: "Invalid input type.".into(),
    }
}

/// What [`pick_members`] found: the value of each name asked for, and whether the
/// object has members of other names.
pub struct Picked<const N: usize> {
    /// In the order of the names asked for; the last of a repeated name, as in the map
    /// [`parse_json`] builds.
    pub values: [Option<Value>; N],
    /// The first member whose name was not asked for, if any.
    pub other: Option<String>,
}

impl<const N: usize> Picked<N> {
    /// Nothing found yet.
    fn none() -> Picked<N> {
        Picked {
            values: std::array::from_fn(|_| None),
            other: None,
        }
    }
}

/// Why [`pick_members`] found no object: the body is not JSON ([`parse_json`]'s error),
/// or is JSON of another kind (the value).
pub enum NotAnObject {
    /// Not JSON at all.
    Invalid(Error),
    /// JSON, but not an object.
    Other(Value),
}

impl From<NotAnObject> for Error {
    /// [`json_object_body`]'s errors.
    fn from(e: NotAnObject) -> Error {
        match e {
            NotAnObject::Invalid(e) => e,
            NotAnObject::Other(value) => not_an_object(&value),
        }
    }
}

/// The members `names` of a JSON object body, with the same values and errors as
/// looking them up in [`json_object_body`]'s map, but without building it (a log
/// fragment or a state report is read on every request of an agent's run, and the map
/// with all its members, each name hashed, was most of the cost of reading one).
pub fn pick_members<const N: usize>(
    body: &[u8],
    names: [&str; N],
) -> std::result::Result<Picked<N>, NotAnObject> {
    use serde::de::DeserializeSeed;
    // From text, as `parse_json` reads a body: invalid UTF-8 fails either way, and the
    // general way below names it.
    if let Ok(text) = std::str::from_utf8(body) {
        let mut reader = serde_json::Deserializer::from_str(text);
        let fast = Picker { names }
            .deserialize(&mut reader)
            .and_then(|picked| reader.end().map(|()| picked));
        if let Ok(picked) = fast {
            return Ok(picked);
        }
    }
    // Not UTF-8, not JSON, not an object, a name with an escape sequence (which a
    // borrowed name cannot hold) or the raw-value key: the general way says which, in the
    // same words, or reads the names.
    let mut picked = Picked::none();
    match parse_json(body).map_err(NotAnObject::Invalid)? {
        Value::Object(mut map) => {
            for (i, name) in names.iter().enumerate() {
                picked.values[i] = map.remove(*name);
            }
            picked.other = map.keys().next().cloned();
        }
        other => return Err(NotAnObject::Other(other)),
    }
    Ok(picked)
}

/// [`pick_members`]'s one pass: names borrowed from the text, each value parsed as the
/// map's would be, asked for or not (skipping a value checks less than parsing it: a
/// lone surrogate escape, a number out of range), the last of a repeated name kept.
struct Picker<'n, const N: usize> {
    names: [&'n str; N],
}

impl<'de, const N: usize> serde::de::DeserializeSeed<'de> for Picker<'_, N> {
    type Value = Picked<N>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Picked<N>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, const N: usize> serde::de::Visitor<'de> for Picker<'_, N> {
    type Value = Picked<N>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut members: A,
    ) -> std::result::Result<Picked<N>, A::Error> {
        use serde::de::Error as _;
        let mut picked = Picked::none();
        while let Some(name) = members.next_key::<&'de str>()? {
            if name == RAW_VALUE_KEY {
                // The map reads such an object as the JSON in the key's value: left to it.
                return Err(A::Error::custom("a raw value"));
            }
            let value: Value = members.next_value()?;
            match self.names.iter().position(|n| *n == name) {
                Some(i) => picked.values[i] = Some(value),
                None => {
                    if picked.other.is_none() {
                        picked.other = Some(name.to_owned());
                    }
                }
            }
        }
        Ok(picked)
    }
}

/// Checks a queue name wherever one enters (submission, `queue=` parameters, paths,
/// advertisements, images, agent records): 1 to [`MAX_NAME`] bytes, not only whitespace,
/// no control characters (NUL, C0, DEL, C1) and no bidirectional-text controls (which
/// make a name display as another). Returns a 400 naming the problem.
pub fn check_queue_name(name: &str) -> Result<()> {
    if plain_name(name) {
        return Ok(());
    }
    check_name_rules(name)
}

/// Whether `name` is 1 to [`MAX_NAME`] bytes of printable ASCII without spaces: the names
/// labs use, which pass every rule of [`check_queue_name`] without looking at characters.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.bytes().all(|b| b.is_ascii_graphic())
}

/// [`check_queue_name`]'s rules, one by one.
fn check_name_rules(name: &str) -> Result<()> {
    let bad = |why: String| {
        Err(Error::InvalidInput(format!(
            "Invalid queue name {}: {why}",
            serde_json::Value::from(name.chars().take(64).collect::<String>())
        )))
    };
    if name.is_empty() {
        return bad("it is empty".into());
    }
    if name.len() > MAX_NAME {
        return bad(format!("it is longer than {MAX_NAME} bytes"));
    }
    if name.trim().is_empty() {
        return bad("it is only whitespace".into());
    }
    match unshowable(name) {
        Some(what) => bad(format!("it contains {what}")),
        None => Ok(()),
    }
}

/// The first character of `text` that must not be shown as a name or state (a control
/// character, or a bidirectional control that would reorder what follows it on a page or
/// a terminal), described for an error message: `the control character U+0000`.
pub fn unshowable(text: &str) -> Option<String> {
    text.chars().find_map(|c| {
        if c.is_control() {
            Some(format!("the control character U+{:04X}", c as u32))
        } else if is_bidi_control(c) {
            Some(format!("the bidirectional text control U+{:04X}", c as u32))
        } else {
            None
        }
    })
}

/// Unicode's bidirectional formatting characters (UAX #9): marks, embeddings, overrides,
/// isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Validates a submission body and builds what the registry needs.
///
/// The body must be a JSON object with a non-empty `job_queue` (else 400, as the original
/// server answered and as the current CLI expects: it maps 400 to "did not specify a
/// job_queue"); then it is loaded through upstream's job schema (`schema::JOB`: 422 naming
/// the field, values coerced as upstream stores them, `exclude_agents` defaulting to
/// `[]`). Unknown top-level fields are kept, in order, for the agent.
pub fn parse_job(body: &[u8]) -> Result<Submission> {
    let mut job = Members::parse(body)?;
    // The two members checked before the schema, found by comparing names rather than by
    // two hashed lookups.
    let (mut queue_value, mut id_value) = (None, None);
    for (key, value) in job.iter() {
        match key.as_str() {
            "job_queue" => queue_value = Some(value),
            "job_id" => id_value = Some(value),
            _ => {}
        }
    }
    match queue_value {
        None | Some(Value::Null) => {
            return Err(Error::InvalidInput(format!(
                "{INVALID_JOB}: the job has no job_queue"
            )))
        }
        Some(Value::String(q)) if q.is_empty() => {
            return Err(Error::InvalidInput(format!(
                "{INVALID_JOB}: job_queue is empty"
            )))
        }
        Some(Value::String(q)) => check_queue_name(q)?,
        _ => {}
    }
    if id_value.is_some_and(|id| !id.is_string() && !id.is_null()) {
        return Err(Error::InvalidInput(INVALID_JOB_ID.into()));
    }
    schema::load(&schema::JOB, &mut job).map_err(invalid)?;
    // Secrets (upstream `v1.py` `validate_secrets`: a store, an authenticated submitter,
    // paths it may read) are checked with the caller known: `access::check_submission`.
    // What the registry needs, in one pass over the members (a job has a few; looking
    // each name up hashes it with serde_json's SipHash, a fifth of a small submit's cost).
    let mut queue: Option<Name> = None;
    let mut id = None;
    // Upstream accepts a priority other than 0 only from a client whose token grants it
    // (`max_priority`): checked with the caller known, in `access::check_submission`.
    let mut priority = 0;
    let mut exclude: Vec<Name> = Vec::new();
    let mut awaits_attachments = false;
    for (key, value) in job.iter_mut() {
        match key.as_str() {
            "job_queue" => queue = value.as_str().map(Name::from),
            "job_id" => {
                let parsed = match value {
                    Value::String(s) if !s.is_empty() => {
                        JobId::parse(s).ok_or_else(|| Error::InvalidInput(INVALID_JOB_ID.into()))?
                    }
                    _ => JobId::random(),
                };
                *value = Value::String(parsed.to_string());
                id = Some(parsed);
            }
            "job_priority" => priority = value.as_i64().unwrap_or(0),
            "exclude_agents" => {
                exclude = value
                    .as_array()
                    .map(|names| {
                        names
                            .iter()
                            .filter_map(Value::as_str)
                            .map(Name::from)
                            .collect()
                    })
                    .unwrap_or_default()
            }
            "provision_data" | "firmware_update_data" | "test_data" => {
                awaits_attachments |= value
                    .get("attachments")
                    .is_some_and(|a| a.as_array().is_some_and(|a| !a.is_empty()))
            }
            _ => {}
        }
    }
    let queue = queue.ok_or_else(|| Error::InvalidInput(INVALID_JOB.into()))?;
    // Sized for the document as sent plus the members the server adds (a `job_id` of 47
    // bytes, `"exclude_agents":[]`): no regrowth (a copy of all written) as it is written.
    let mut text = Vec::with_capacity(body.len() + 128);
    serde_json::to_writer(&mut text, &job).expect("JSON maps serialise");
    let id = match id {
        Some(id) => id,
        None => {
            // A new id goes last, as an insert into the map would put it, but written
            // straight after the map's text: inserting it grew the map's index (a
            // rehash of every member) for nearly every submit.
            let id = JobId::random();
            debug_assert_eq!(text.last(), Some(&b'}'));
            text.pop();
            if text.len() > 1 {
                text.push(b',');
            }
            write!(text, r#""job_id":"{id}"}}"#).expect("writing to a Vec");
            id
        }
    };
    // A document sent with much whitespace must not keep its size for the job's life.
    if text.capacity() - text.len() > 1024 {
        text.shrink_to_fit();
    }
    let body = Bytes::from(text);
    Ok(Submission {
        id,
        queue,
        body,
        priority,
        exclude: exclude.into(),
        awaits_attachments,
    })
}

/// A job's top-level members in order, as a submit reads them: a list rather than
/// serde_json's map, whose index hashes every name (SipHash) and was built for every
/// submit (~870 instructions of a small one). Nested objects stay maps.
#[derive(Debug, Default, PartialEq)]
pub struct Members(Vec<(String, Value)>);

/// Most members [`Members`] reads as a list: a repeated name is found by looking through
/// the names so far, whose cost grows with their square; an object with more is read
/// through a map.
const MAX_MEMBERS: usize = 32;

/// The key serde_json's `Value` reads, when it is an object's first, as a raw JSON value
/// in a string rather than as a member (`raw_value` feature): an object with it anywhere
/// is left to the map's reading ([`Members`], [`pick_members`]), which reads it the same.
const RAW_VALUE_KEY: &str = "$serde_json::private::RawValue";

impl Members {
    /// The members of the JSON object `body`, with the same values, order and errors as
    /// reading it into serde_json's map (a repeated name keeps its first place and its
    /// last value): 400 when it is not JSON or not an object.
    pub fn parse(body: &[u8]) -> Result<Members> {
        if let Ok(text) = std::str::from_utf8(body) {
            if let Ok(members) = serde_json::from_str::<Members>(text) {
                return Ok(members);
            }
        }
        // Not UTF-8, not JSON, not an object, more members than read as a list, or the
        // raw-value key: the map's reading reads the members or says what is wrong (a
        // second parse only for such bodies, linear in their size).
        Members::parse_as_map(body)
    }

    /// [`Members::parse`] through serde_json's map.
    fn parse_as_map(body: &[u8]) -> Result<Members> {
        match parse_json(body)
            .map_err(|e| Error::InvalidInput(format!("{INVALID_JOB}: {}", e.message())))?
        {
            Value::Object(map) => Ok(Members(map.into_iter().collect())),
            other => Err(Error::InvalidInput(format!(
                "{INVALID_JOB}: the body is {}, not a JSON object",
                json_kind(&other)
            ))),
        }
    }

    /// Each member in order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(name, value)| (name, value))
    }

    /// Each member in order, its value writable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Value)> {
        self.0.iter_mut().map(|(name, value)| (&*name, value))
    }

    /// The value of the member `name`, writable.
    fn slot(&mut self, name: &str) -> Option<&mut Value> {
        self.iter_mut()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value)
    }
}

impl schema::Lookup for Members {
    fn member(&self, name: &str) -> Option<&Value> {
        self.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value)
    }
}

impl schema::Object for Members {
    fn members_mut(&mut self) -> impl Iterator<Item = (&String, &mut Value)> {
        self.iter_mut()
    }

    fn set(&mut self, name: String, value: Value) {
        match self.slot(&name) {
            Some(slot) => *slot = value,
            None => self.0.push((name, value)),
        }
    }
}

/// As an object, the members in order (the text serde_json writes for the same map).
impl serde::Serialize for Members {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Reads a JSON object of at most `MAX_MEMBERS` members (without `RAW_VALUE_KEY`);
/// anything else is an error, after which [`Members::parse`] reads the map.
impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Members, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Members, A::Error> {
                use serde::de::Error as _;
                let mut members = Members(Vec::with_capacity(8));
                while let Some(name) = map.next_key::<String>()? {
                    if name == RAW_VALUE_KEY {
                        return Err(A::Error::custom("a raw value"));
                    }
                    let value: Value = map.next_value()?;
                    if let Some(slot) = members.slot(&name) {
                        *slot = value;
                    } else if members.0.len() == MAX_MEMBERS {
                        return Err(A::Error::custom("too many members"));
                    } else {
                        members.0.push((name, value));
                    }
                }
                Ok(members)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// A schema failure as the 422 clients read: `{"message", "detail": {"json": {field:
/// [reason]}}}`, the reason carrying the path below the field.
pub fn invalid(invalid: schema::Invalid) -> Error {
    Error::Validation {
        message: match &invalid.hint {
            Some(hint) => format!("Validation error: {hint}"),
            None if invalid.reason == "Unknown field." => {
                format!(
                    "Validation error: unknown field {:?}",
                    invalid.path.join(".")
                )
            }
            None => "Validation error".into(),
        },
        field: invalid.field().to_owned(),
        reason: invalid.detail(),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    /// What `pick_members` must agree with: lookups in `json_object_body`'s map.
    fn picked_from_map(body: &[u8], names: [&str; 3]) -> Result<([Option<Value>; 3], bool)> {
        let mut map = json_object_body(body)?;
        let values = names.map(|name| map.remove(name));
        Ok((values, !map.is_empty()))
    }

    fn check_pick(body: &str) {
        check_pick_bytes(body.as_bytes());
    }

    /// The text of a JSON object with `members` (names and values as JSON text) and `tail`
    /// after it.
    fn object_text<K: std::fmt::Display, V: std::fmt::Display>(
        members: impl IntoIterator<Item = (K, V)>,
        tail: &str,
    ) -> String {
        let members: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}{tail}", members.join(","))
    }

    fn check_pick_bytes(body: &[u8]) {
        let names = ["a", "b\"q", "c"];
        let fast = pick_members(body, names)
            .map(|p| (p.values, p.other.is_some()))
            .map_err(|e| Error::from(e).to_string());
        let slow = picked_from_map(body, names).map_err(|e| e.to_string());
        assert_eq!(fast, slow, "{}", String::from_utf8_lossy(body));
    }

    #[test]
    fn picking_members_agrees_with_the_map() {
        for body in [
            r#"{"a":1,"c":"x"}"#,
            r#"{"a":1,"a":{"n":[1,2]},"z":null}"#,
            r#"{"b\"q":true,"\u0061":2}"#,
            r#"{"c":1.5e3,"c":-0,"d":"\ud83d\ude00"}"#,
            r#"{}"#,
            r#" {"a" : [ ] } "#,
            r#"[1]"#,
            r#""a""#,
            r#"{"a":1"#,
            r#"{"a":1} x"#,
            "",
            "  ",
            r#"{"a":"\ud800"}"#,
            r#"{"z":"\udc00","a":1}"#,
            r#"{"z":1e400,"a":1}"#,
            r#"{"a":1e400}"#,
            "{\"z\":\"\u{1}\",\"a\":1}",
            r#"{"a":1,"z":[1,{"y":"\ud800"}]}"#,
            r#"{"a":18446744073709551616}"#,
            r#"{"$serde_json::private::RawValue":"{\"a\":\"x\"}"}"#,
            r#"{"a":1,"$serde_json::private::RawValue":"{\"a\":\"x\"}"}"#,
        ] {
            check_pick(body);
        }
        check_pick_bytes(b"{\"z\":\"\xff\",\"a\":1}");
        check_pick_bytes(b"{\"\xc3\":1}");
    }

    proptest::proptest! {
        #[test]
        fn picking_members_agrees_with_the_map_on_any_object(
            members in proptest::collection::vec(("[abc\"\\\\]{1,2}|\\\\u0061", "[0-9]|\"[a-c]*\"|null|\\[\\]|\\{\\}"), 0..6),
        ) {
            check_pick(&object_text(members, ""));
        }
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// `parse_json` reads a body valid as UTF-8 as text: the same value, or the same
        /// error at the same place, as serde_json reading the bytes, for valid and broken
        /// JSON, escapes (surrogates included) and invalid UTF-8 alike.
        #[test]
        fn parse_json_agrees_with_reading_the_bytes(
            parts in proptest::collection::vec(proptest::prop_oneof![
                proptest::sample::select(vec![
                    "{", "}", "[", "]", ":", ",", "\"", "\\", "\\u00e9", "\\ud800",
                    "\\udc00", "\\n", "1", "-0.5e3", "null", "true", " ", "é", "\u{1f600}",
                ]).prop_map(|p: &str| p.as_bytes().to_vec()),
                proptest::sample::select(vec![0xffu8, 0xc3, 0x80, 0xed, 0xa0, 0x00, b'a'])
                    .prop_map(|b| vec![b]),
            ], 0..24),
        ) {
            let body: Vec<u8> = parts.concat();
            let expected = if body.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                Some(serde_json::from_slice::<Value>(&body).map_err(|e| e.to_string()))
            };
            match (parse_json(&body), expected) {
                (Ok(value), Some(Ok(expected))) => proptest::prop_assert_eq!(value, expected),
                (Err(e), Some(Err(expected))) => proptest::prop_assert!(
                    e.message().starts_with(&format!("Invalid JSON body: {expected}")),
                    "{} / {expected}", e.message()
                ),
                (Err(_), None) => {}
                (got, expected) => proptest::prop_assert!(false, "{got:?} / {expected:?}"),
            }
        }
    }

    /// `Members::parse` against reading the map: the same members in the same order (as
    /// text too), or the same error.
    fn check_members(body: &[u8]) -> std::result::Result<(), proptest::test_runner::TestCaseError> {
        let (list, map) = (Members::parse(body), Members::parse_as_map(body));
        match (&list, &map) {
            (Ok(list), Ok(map)) => {
                proptest::prop_assert_eq!(list, map);
                proptest::prop_assert_eq!(
                    serde_json::to_string(list).unwrap(),
                    serde_json::to_string(&serde_json::from_slice::<Value>(body).unwrap()).unwrap()
                );
            }
            (Err(a), Err(b)) => proptest::prop_assert_eq!(a.message(), b.message()),
            _ => proptest::prop_assert!(false, "{list:?} / {map:?}"),
        }
        Ok(())
    }

    #[test]
    fn members_read_as_the_map_reads_them() {
        let many = object_text((0..MAX_MEMBERS + 2).map(|i| (format!("m{i}"), i)), "");
        let repeated_many = object_text(
            (0..MAX_MEMBERS * 3).map(|i| (format!("m{}", i % (MAX_MEMBERS + 1)), i)),
            "",
        );
        for body in [
            &br#"{"a":1,"b":2,"a":3}"#[..],
            br#"{"$serde_json::private::RawValue":"[1]"}"#,
            br#"{"$serde_json::private::RawValue":"{\"job_queue\":\"q\"}"}"#,
            br#"[1]"#,
            br#"{"a":1} x"#,
            b"{\"a\":\"\xff\"}",
            b"",
            many.as_bytes(),
            repeated_many.as_bytes(),
        ] {
            check_members(body).unwrap();
        }
        assert_eq!(
            Members::parse(many.as_bytes()).unwrap().0.len(),
            MAX_MEMBERS + 2
        );
    }

    proptest::proptest! {
        #[test]
        fn members_read_as_the_map_reads_any_object(
            members in proptest::collection::vec(("[abc]{1,2}|\\\\u0061|job_queue", "[0-9]|\"[a-c]*\"|null|\\[1,\\{\"a\":2,\"a\":3\\}\\]|\\{\"b\":\\{\\}\\}"), 0..40),
            tail in proptest::sample::select(vec!["", " ", ",", "}"]),
        ) {
            check_members(object_text(members, tail).as_bytes())?;
        }
    }

    #[test]
    fn plain_name_shortcut_stops_at_spaces_length_and_non_ascii() {
        let long = "x".repeat(MAX_NAME);
        let too_long = "x".repeat(MAX_NAME + 1);
        for (name, plain, valid) in [
            ("maas-x86", true, true),
            (long.as_str(), true, true),
            (too_long.as_str(), false, false),
            ("", false, false),
            (" ", false, false),
            ("a b", false, true),
            ("caf\u{e9}", false, true),
            ("a\u{7f}", false, false),
            ("a\u{202e}b", false, false),
        ] {
            assert_eq!(plain_name(name), plain, "{name:?}");
            assert_eq!(check_queue_name(name).is_ok(), valid, "{name:?}");
        }
    }

    proptest::proptest! {
        /// The shortcut for plain names never lets through a name the rules refuse.
        #[test]
        fn plain_names_pass_every_queue_name_rule(
            name in proptest::prop_oneof![
                "[ a]{0,4}",
                "[ -~]{0,300}",
                "[ -~\\t\\n\u{80}-\u{3000}]{0,300}",
            ],
        ) {
            if plain_name(&name) {
                proptest::prop_assert!(check_name_rules(&name).is_ok(), "{name:?}");
            }
            proptest::prop_assert_eq!(
                check_queue_name(&name).map_err(|e| e.message().to_owned()),
                check_name_rules(&name).map_err(|e| e.message().to_owned())
            );
        }
    }

    #[test]
    fn job_id_is_normalised_in_place_and_fields_kept_in_order() {
        let sub = parse_job(
            br#"{"b":1,"job_id":"{0123ABCD-4567-89AB-CDEF-0123456789AB}","job_queue":"q","a":[1]}"#,
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&sub.body).unwrap(),
            r#"{"b":1,"job_id":"0123abcd-4567-89ab-cdef-0123456789ab","job_queue":"q","a":[1],"exclude_agents":[]}"#
        );
    }

    #[test]
    fn a_new_job_id_is_the_last_member_as_a_map_insert_would_place_it() {
        for (body, expected) in [
            (
                &br#"{"job_queue":"q"}"#[..],
                r#"{"job_queue":"q","exclude_agents":[],"job_id":"ID"}"#,
            ),
            (
                br#"{"b":{"c":"x\u0041"}, "job_queue":"q","exclude_agents":["a"]}"#,
                r#"{"b":{"c":"xA"},"job_queue":"q","exclude_agents":["a"],"job_id":"ID"}"#,
            ),
            // Asked for with "" or null: the new id takes the member's place.
            (
                br#"{"job_queue":"q","job_id":null,"z":0}"#,
                r#"{"job_queue":"q","job_id":"ID","z":0,"exclude_agents":[]}"#,
            ),
        ] {
            let sub = parse_job(body).unwrap();
            let text = std::str::from_utf8(&sub.body).unwrap();
            assert_eq!(text, expected.replace("ID", &sub.id.to_string()));
        }
    }
}
