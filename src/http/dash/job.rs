//! The job page (`GET /jobs/<id>`) and its cancel button.
//!
//! Bounds: a job's log and results may hold up to `--max-job-data-bytes` (1 GiB); the
//! page shows the log's last and the results' first [`LOG_TAIL_BYTES`], and reads no more
//! than those take: the handles of the log's last fragments and the results' first
//! members (`ResultDocs::page`), the latter pretty-printed token by token as they are
//! parsed ([`pretty_head`]) until the page has what it shows. Neither is ever parsed,
//! printed or copied whole in memory; a job whose data lives in an orphan file has that
//! file read and folded once per view.

use std::io::Write;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::ser::{Formatter, PrettyFormatter};
use serde_json::{json, Value};

use super::{page, yaml, LOG_TAIL_BYTES};
use crate::actors::reads::FieldsHead;
use crate::actors::registry::{is_finished, RegistryMsg};
use crate::actors::{ask, Services};
use crate::error::Result;
use crate::http::wire::{iso_z, path_id};
use crate::model::results::{joined_text, PhaseLog};
use crate::model::LogKind;

/// Bytes decoded before the log's last [`LOG_TAIL_BYTES`]: enough for the decoder to be
/// back in step where the shown text starts (see [`log_tail`]).
const TAIL_SLACK: usize = 16;
/// Most bytes of the results' stored text (keys and values) the page reads to show their
/// first [`LOG_TAIL_BYTES`] pretty-printed. Printing only adds to ordinary JSON, so only
/// text that printing shrinks (whitespace between tokens, `\u` escapes of plain
/// characters) reaches this first; such results are cut short of the page's bytes
/// rather than read whole.
const RESULTS_READ_MOST: usize = 4 * LOG_TAIL_BYTES;

/// The last `most` bytes of `text` at most, starting on a character (and, when it can,
/// a line) boundary.
fn tail(text: &str, most: usize) -> &str {
    if text.len() <= most {
        return text;
    }
    let mut start = text.len() - most;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let rest = &text[start..];
    match rest.find('\n') {
        Some(line) if line + 1 < rest.len() => &rest[line + 1..],
        _ => rest,
    }
}

/// The end of a log read as the job page shows it: what [`tail`] keeps of the phases'
/// texts joined, decoding only the last `most` bytes of the fragments (and a few more),
/// walked from the end. `phases` may hold only the last fragments of each phase, as long
/// as they hold those bytes (`ResultDocs::page` keeps no more).
///
/// Exactly `tail` of the whole text: the few bytes before the cut may decode differently
/// (a character cut in two is U+FFFD per byte), but the decoder is back in step at most 3
/// bytes after it, and those (at most 9 bytes decoded) are before what `tail` keeps.
fn log_tail(phases: &[PhaseLog], most: usize) -> String {
    let mut need = most.saturating_add(TAIL_SLACK);
    // Each phase is decoded on its own (as its own text), so per phase, from the end.
    let mut texts = Vec::new();
    for phase in phases.iter().rev() {
        let mut picked = Vec::new();
        for piece in phase.pieces.iter().rev() {
            if need == 0 {
                break;
            }
            let take = piece.len().min(need);
            picked.push(piece.slice(piece.len() - take..));
            need -= take;
        }
        picked.reverse();
        texts.push(joined_text(&picked));
        if need == 0 {
            break;
        }
    }
    texts.reverse();
    let text = texts.concat();
    tail(&text, most).to_owned()
}

/// `GET /jobs/<id>`: definition, timeline, log, results, artifact, cancel (the button
/// only for an unfinished job the viewer may cancel).
pub async fn job_page(
    State(svc): State<Services>,
    caller: crate::access::Caller,
    Path(id): Path<String>,
) -> Result<Response> {
    let id = path_id(&id)?;
    let Some(detail) = svc.jobs.detail(id) else {
        return Err(crate::error::Error::NotFound(format!(
            "Job {id} does not exist."
        )));
    };
    let timeline = timeline(&detail);
    let lost = detail.view.lost.as_ref().map(|lost| {
        json!({
            "action": lost.action(),
            "agent": lost.agent.as_deref(),
            "phase": &*lost.phase,
            "last_heard": iso_z(lost.last_heard),
            "at": iso_z(lost.at),
            "reason": lost.reason(),
            "took": lost.took.map(|t| t.to_string()),
        })
    });
    // The page shows the log's end: a job's log may hold up to --max-job-data-bytes (1 GiB),
    // and escaped into HTML up to six times that, in one response per page view. The
    // job's current run: a resubmitted job's page shows its new run. As the log: results
    // may hold up to --max-job-data-bytes; the page shows their start, reading no more of
    // them than that takes (both from one read, when they are in an orphan file).
    let parts = svc
        .result_docs
        .page(
            id,
            LogKind::Output,
            detail.view.run,
            LOG_TAIL_BYTES + TAIL_SLACK,
            RESULTS_READ_MOST,
        )
        .await?;
    let (phases, log_bytes) = (parts.log, parts.log_bytes);
    // Past the newest fragment; as u64, for an agent may number one i64::MAX.
    let next = phases
        .iter()
        .map(|p| p.last)
        .max()
        .and_then(|last| u64::try_from(last).ok())
        .map_or(0, |last| last + 1);
    let log = log_tail(&phases, LOG_TAIL_BYTES);
    let log = log.as_str();
    let results = parts.fields.map(|mut head| {
        // As `GET /v1/result/<id>` answers: the job's state is the registry's, first (the
        // stored document keeps what the agent posted: `complete` after a cancel).
        head.members.retain(|(key, _)| &**key != "job_state");
        let state = serde_json::to_vec(&detail.view.state).unwrap_or_default();
        head.members.insert(0, ("job_state".into(), state.into()));
        pretty_head(&head, LOG_TAIL_BYTES)
    });
    let (results, results_cut) = results.map_or((None, false), |(text, cut)| (Some(text), cut));
    let cancellable = !is_finished(&detail.view)
        && crate::access::may_act_on_job(&svc, &caller, "POST", "/jobs/{id}/cancel", id).await;
    let has_artifact = ask(&svc.files, |p| {
        crate::actors::files::FileMsg::Get(id, crate::model::FileKind::Artifact, p)
    })
    .await?
    .is_some();
    // The definition's two views, each its first LOG_TAIL_BYTES at most: printed, a job
    // document nested a hundred deep grows by twice its depth a line (a 200 KB one made a
    // 49 MB page). Built after the last await, so one parsed definition is held at a
    // time per request thread, however many pages are asked for at once.
    let (json, json_cut) = pretty_json(&detail.view.body, LOG_TAIL_BYTES);
    let definition: Value = serde_json::from_slice(&detail.view.body).unwrap_or(Value::Null);
    let (yaml, yaml_cut) = yaml(&definition, LOG_TAIL_BYTES);
    drop(definition);
    page(
        "job.html",
        json!({
            "id": id.to_string(),
            "queue": &*detail.view.queue,
            "state": detail.view.state,
            "priority": detail.priority,
            "agent": detail.agent.as_deref(),
            "lost": lost,
            "cancellable": cancellable,
            "has_artifact": has_artifact,
            "timeline": timeline,
            "yaml_shown": yaml.len(),
            "yaml": yaml,
            "yaml_cut": yaml_cut,
            "json_shown": json.len(),
            "json": json,
            "json_cut": json_cut,
            "log": log,
            "log_bytes": log_bytes,
            "log_shown": log.len(),
            "log_next": next,
            "results_shown": results.as_ref().map_or(0, String::len),
            "results": results,
            "results_cut": results_cut,
        }),
    )
}

/// The job page's timeline: submitted; each run's dispatch (with its agent) and reported
/// phases, a run its agent was lost in ending with that loss (when, what the server did,
/// why); the end. A job requeued for a lost agent shows both runs: the requeue took the
/// first run's dispatch and phases into its `Lost` record.
fn timeline(detail: &crate::actors::registry::JobDetail) -> Vec<Value> {
    let mut timeline = vec![json!({"what": "submitted", "at": iso_z(detail.view.created_at)})];
    let dispatched = |at: u64, agent: Option<&str>| json!({"what": "dispatched", "at": iso_z(at), "agent": agent});
    let lost_entry = |lost: &crate::model::registry::Lost| {
        json!({
            "what": format!("agent lost: {}", lost.action()),
            "at": iso_z(lost.at),
            "agent": lost.agent.as_deref(),
            "note": lost.reason(),
            "lost": true,
        })
    };
    let lost = detail.view.lost.as_ref();
    // Runs that ended in a requeue, oldest first (the one that requeued it before the
    // latest loss, then the latest if it requeued too).
    let requeues = lost
        .map(|l| [l.earlier.as_deref(), Some(l)])
        .into_iter()
        .flatten()
        .flatten()
        .filter(|l| l.requeued);
    for run in requeues {
        if let Some(at) = run.dispatched_at {
            timeline.push(dispatched(at, run.agent.as_deref()));
        }
        for (phase, at) in &run.phases {
            timeline.push(json!({"what": &**phase, "at": iso_z(*at)}));
        }
        timeline.push(lost_entry(run));
    }
    // The current run: its agent, or the one it was lost on when that ended it.
    let ended = lost.filter(|l| !l.requeued);
    if let Some(t) = detail.view.started_at {
        let agent = detail
            .agent
            .as_deref()
            .or(ended.and_then(|l| l.agent.as_deref()));
        timeline.push(dispatched(t, agent));
    }
    // Each phase the agent reported, when it reported it.
    for (phase, at) in &detail.phases {
        timeline.push(json!({"what": &**phase, "at": iso_z(*at)}));
    }
    if let Some(lost) = ended {
        timeline.push(lost_entry(lost));
    }
    // The end, unless the agent's own last report was it (a cancel), or a loss ended it
    // (just shown).
    if let Some(t) = detail.finished_at {
        let shown = ended.is_some()
            || detail
                .phases
                .last()
                .is_some_and(|(p, _)| **p == *detail.view.state);
        if !shown {
            timeline.push(json!({"what": detail.view.state, "at": iso_z(t)}));
        }
    }
    timeline
}

/// `POST /jobs/<id>/cancel`: the cancel button (a form, so it works without JavaScript);
/// answers 303 to the job page.
pub async fn cancel_form(State(svc): State<Services>, Path(id): Path<String>) -> Result<Response> {
    let id = path_id(&id)?;
    let ticket = ask(&svc.registry, |p| RegistryMsg::Cancel(id, p)).await??;
    svc.journal.durable(ticket).await?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    response.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/jobs/{id}")).expect("ids are ASCII"),
    );
    Ok(response)
}

/// The results' start as the page shows it: the object of `head`'s members printed as
/// `serde_json::to_string_pretty` prints it parsed (two-space indent, `": "`), its first
/// `most` bytes at most, ending on a character boundary; and whether it is cut (there is
/// more than what is shown). Each value is parsed and printed a token at a time
/// ([`Emit`]), and printing stops at `most`: what it costs is what the page shows.
fn pretty_head(head: &FieldsHead, most: usize) -> (String, bool) {
    let mut out = Capped {
        bytes: Vec::with_capacity(most.min(64 << 10)),
        most,
        full: false,
    };
    let mut fmt = PrettyFormatter::new();
    let printed = (|| -> std::io::Result<()> {
        fmt.begin_object(&mut out)?;
        for (i, (key, value)) in head.members.iter().enumerate() {
            fmt.begin_object_key(&mut out, i == 0)?;
            serde_json::to_writer(&mut out, &**key)?;
            fmt.end_object_key(&mut out)?;
            fmt.begin_object_value(&mut out)?;
            let mut de = serde_json::Deserializer::from_slice(value);
            Emit {
                out: &mut out,
                fmt: &mut fmt,
            }
            .deserialize(&mut de)?;
            fmt.end_object_value(&mut out)?;
        }
        if head.whole {
            fmt.end_object(&mut out)?;
        }
        Ok(())
    })();
    // Stopped at `most`, or (stored text nested deeper than serde_json reads: never
    // stored, as posts are parsed the same way) a value that does not parse: cut there.
    let cut = printed.is_err() || !head.whole;
    let (text, full) = out.text();
    (text, cut || full)
}

/// A job's definition as the page shows it: `body` (its stored JSON) printed as
/// `serde_json::to_string_pretty` prints it parsed, its first `most` bytes at most (on a
/// character boundary), and whether it is cut. Printed a token at a time ([`Emit`]),
/// stopping at `most`, without building the document.
fn pretty_json(body: &[u8], most: usize) -> (String, bool) {
    let mut out = Capped {
        bytes: Vec::with_capacity(most.min(64 << 10)),
        most,
        full: false,
    };
    let mut fmt = PrettyFormatter::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let printed = Emit {
        out: &mut out,
        fmt: &mut fmt,
    }
    .deserialize(&mut de);
    let (text, full) = out.text();
    (text, full || printed.is_err())
}

/// A writer that keeps the first `most` bytes written and fails past them (which stops
/// the printing).
struct Capped {
    bytes: Vec<u8>,
    most: usize,
    /// Whether more than `most` bytes were offered.
    full: bool,
}

impl Capped {
    /// What was kept, ending on a character boundary, and whether more was offered.
    fn text(self) -> (String, bool) {
        let mut bytes = self.bytes;
        let valid = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            Err(e) => e.valid_up_to(),
        };
        bytes.truncate(valid);
        let text = String::from_utf8(bytes).expect("cut at a character boundary");
        (text, self.full)
    }
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.most - self.bytes.len();
        if buf.len() > room {
            self.bytes.extend_from_slice(&buf[..room]);
            self.full = true;
            return Err(std::io::Error::other("the page shows no more"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Prints the value a deserializer reads to `out`, as serde_json prints a parsed
/// `Value` with `fmt`, without building it: scalars as they are read, arrays and objects
/// element by element (serde_json's own nesting limit bounds the recursion).
struct Emit<'a> {
    out: &'a mut Capped,
    fmt: &'a mut PrettyFormatter<'static>,
}

/// An element of an array or a key or value of an object, printed with what goes
/// before and after it. Its `deserialize` runs only when there is one, so an empty
/// array or object prints as `[]` or `{}`, as serde_json prints them.
struct Inner<'a> {
    out: &'a mut Capped,
    fmt: &'a mut PrettyFormatter<'static>,
    role: Role,
    /// Whether it is the first of its array or object.
    first: bool,
}

/// What an [`Inner`] is.
#[derive(Clone, Copy)]
enum Role {
    Element,
    Key,
    Value,
}

impl<'de> DeserializeSeed<'de> for Emit<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> DeserializeSeed<'de> for Inner<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        let (out, fmt) = (self.out, self.fmt);
        match self.role {
            Role::Element => fmt.begin_array_value(out, self.first),
            Role::Key => fmt.begin_object_key(out, self.first),
            Role::Value => fmt.begin_object_value(out),
        }
        .map_err(D::Error::custom)?;
        d.deserialize_any(Emit {
            out: &mut *out,
            fmt: &mut *fmt,
        })?;
        match self.role {
            Role::Element => fmt.end_array_value(out),
            Role::Key => fmt.end_object_key(out),
            Role::Value => fmt.end_object_value(out),
        }
        .map_err(D::Error::custom)
    }
}

impl<'de> Visitor<'de> for Emit<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: Error>(self) -> std::result::Result<(), E> {
        self.fmt.write_null(self.out).map_err(E::custom)
    }

    fn visit_bool<E: Error>(self, v: bool) -> std::result::Result<(), E> {
        self.fmt.write_bool(self.out, v).map_err(E::custom)
    }

    fn visit_i64<E: Error>(self, v: i64) -> std::result::Result<(), E> {
        self.fmt.write_i64(self.out, v).map_err(E::custom)
    }

    fn visit_u64<E: Error>(self, v: u64) -> std::result::Result<(), E> {
        self.fmt.write_u64(self.out, v).map_err(E::custom)
    }

    fn visit_f64<E: Error>(self, v: f64) -> std::result::Result<(), E> {
        // As serde_json prints a float: `null` when not finite (never parsed from JSON).
        match v.is_finite() {
            true => self.fmt.write_f64(self.out, v),
            false => self.fmt.write_null(self.out),
        }
        .map_err(E::custom)
    }

    fn visit_str<E: Error>(self, v: &str) -> std::result::Result<(), E> {
        // A string prints the same whatever the formatter (both escape as the default).
        serde_json::to_writer(self.out, v).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        self.fmt.begin_array(self.out).map_err(A::Error::custom)?;
        let mut first = true;
        while seq
            .next_element_seed(Inner {
                out: &mut *self.out,
                fmt: &mut *self.fmt,
                role: Role::Element,
                first,
            })?
            .is_some()
        {
            first = false;
        }
        self.fmt.end_array(self.out).map_err(A::Error::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        self.fmt.begin_object(self.out).map_err(A::Error::custom)?;
        let mut first = true;
        while map
            .next_key_seed(Inner {
                out: &mut *self.out,
                fmt: &mut *self.fmt,
                role: Role::Key,
                first,
            })?
            .is_some()
        {
            first = false;
            map.next_value_seed(Inner {
                out: &mut *self.out,
                fmt: &mut *self.fmt,
                role: Role::Value,
                first,
            })?;
        }
        self.fmt.end_object(self.out).map_err(A::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn log_tail_is_the_tail_of_the_whole_text_whatever_the_pieces() {
        let atoms: [&[u8]; 9] = [
            b"a",
            b"\n",
            "\u{e9}".as_bytes(),
            "\u{20ac}".as_bytes(),
            "\u{1f600}".as_bytes(),
            b"\xe2\x82",
            b"\xff",
            b"\x80",
            b"<line>\n",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut below = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..3_000 {
            let phases: Vec<PhaseLog> = ["setup", "provision", "test"][..1 + below(3)]
                .iter()
                .map(|phase| {
                    let mut text = Vec::new();
                    for _ in 0..below(120) {
                        text.extend_from_slice(atoms[below(atoms.len())]);
                    }
                    let mut pieces = Vec::new();
                    let mut at = 0;
                    while at < text.len() {
                        let end = (at + 1 + below(9)).min(text.len());
                        pieces.push(Bytes::copy_from_slice(&text[at..end]));
                        at = end;
                    }
                    PhaseLog {
                        phase,
                        last: 0,
                        pieces,
                    }
                })
                .collect();
            let whole: String = phases.iter().map(PhaseLog::text).collect();
            let most = below(200);
            assert_eq!(log_tail(&phases, most), tail(&whole, most), "round {round}");
        }
    }

    fn head_of(doc: &str) -> FieldsHead {
        let fields = crate::model::results::Fields::parse(doc.as_bytes()).unwrap();
        FieldsHead {
            members: fields.iter().map(|(k, v)| (k.into(), v.clone())).collect(),
            text: doc.len(),
            whole: true,
        }
    }

    /// Whole, the printed results are serde_json's pretty print of them parsed; cut,
    /// their first bytes, said to be cut.
    #[test]
    fn results_print_as_serde_json_prints_them_parsed_up_to_the_cut() {
        let docs = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"{"a": [ ], "b" : { }, "c":[1, -2, 3.50, 1e2, -0.0, 18446744073709551615, 184467440737095516150]}"#,
            r#"{"s":"\u00e9\n\"\\\/\ud83d\ude00 <x> \u0001","k\"ey":null,"t":true,"f":false}"#,
            "{\"n\":{\"a\":{\"b\":[{\"c\":[[],[{}]]}]}},\"e\u{e9}\":\"\u{20ac}\u{1f600}\"}",
        ];
        for doc in docs {
            let value: Value = serde_json::from_str(doc).unwrap();
            let whole = serde_json::to_string_pretty(&value).unwrap();
            let head = head_of(doc);
            assert_eq!(pretty_head(&head, 1 << 20), (whole.clone(), false), "{doc}");
            assert_eq!(pretty_head(&head, whole.len()), (whole.clone(), false));
            for most in 0..whole.len() {
                let (text, cut) = pretty_head(&head, most);
                let mut end = most;
                while !whole.is_char_boundary(end) {
                    end -= 1;
                }
                assert_eq!(
                    (text.as_str(), cut),
                    (&whole[..end], true),
                    "{doc} at {most}"
                );
            }
        }
    }

    /// A key repeated in a nested object is printed as stored (a parsed `Value` kept
    /// one of them), as the results' own answer (`GET /v1/result/<id>`) shows it.
    #[test]
    fn results_print_nested_objects_as_stored() {
        let head = head_of(r#"{"dup":{"a":1,"a":2},"z":0}"#);
        assert_eq!(
            pretty_head(&head, 1 << 20).0,
            "{\n  \"dup\": {\n    \"a\": 1,\n    \"a\": 2\n  },\n  \"z\": 0\n}"
        );
    }

    /// Members left unread are said to be there: the text is cut.
    #[test]
    fn results_read_in_part_are_cut() {
        let mut head = head_of(r#"{"a":1,"b":2}"#);
        head.members.pop();
        head.whole = false;
        assert_eq!(
            pretty_head(&head, 1 << 20),
            ("{\n  \"a\": 1".to_owned(), true)
        );
    }
}
