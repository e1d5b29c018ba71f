//! Result documents and logs: what agents report about a job, kept per job id.
//!
//! A result document is a JSON object merged key by key (Testflinger's shallow merge).
//! Logs are fragments per (job, output|serial), de-duplicated on (phase, fragment number)
//! because agents retry posts. The legacy `/output` endpoint reads the same output stream
//! destructively, through a per-job read cursor.
//!
//! The job's lifecycle state is *not* owned here: the registry's state wins when the two
//! are composed for a client (see `http`). Results may exist for ids no job has.

use super::{FastMap, FastSet};

use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::event::{Event, LogKind};
use super::ids::{JobId, Name};

/// One log fragment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    /// The agent's fragment number (monotonic per job and kind across phases).
    pub number: u64,
    /// The phase it was produced in.
    pub phase: Name,
    /// Unix microseconds.
    pub timestamp: i64,
    /// The text as posted.
    pub data: Bytes,
}

/// One log stream in arrival order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LogStream {
    /// Fragments in the order they arrived (the legacy cursor counts in this order).
    pub fragments: Vec<Fragment>,
    /// (phase, number) pairs seen, to drop retried posts.
    seen: FastSet<(Name, u64)>,
}

impl LogStream {
    /// A stream of these fragments, for a reader's copy: it does not track retries, so
    /// it is for reading ([`LogStream::phase_text`]), not for recording.
    pub fn from_fragments(fragments: Vec<Fragment>) -> LogStream {
        LogStream {
            fragments,
            seen: FastSet::default(),
        }
    }

    /// Bytes of log text held.
    pub fn bytes(&self) -> u64 {
        self.fragments.iter().map(|f| f.data.len() as u64).sum()
    }

    /// The highest fragment number, if any fragment arrived.
    pub fn last_number(&self) -> Option<u64> {
        self.fragments.iter().map(|f| f.number).max()
    }

    /// The fragments of `phase` numbered from `from` and stamped at or after `since`
    /// (unix microseconds), in fragment order, joined; with the highest number among
    /// them. `None` when there are none.
    pub fn phase_text(&self, phase: &str, from: u64, since: i64) -> Option<(u64, String)> {
        let mut picked: Vec<&Fragment> = self
            .fragments
            .iter()
            .filter(|f| &*f.phase == phase && f.number >= from && f.timestamp >= since)
            .collect();
        if picked.is_empty() {
            return None;
        }
        picked.sort_by_key(|f| f.number);
        let mut text = Vec::new();
        for f in &picked {
            text.extend_from_slice(&f.data);
        }
        let last = picked.last().map_or(0, |f| f.number);
        Some((last, String::from_utf8_lossy(&text).into_owned()))
    }
}

/// A result object kept as its top-level members: key → the value's JSON text as posted,
/// in the order keys were first posted (a later post of a key replaces the value in
/// place, as Testflinger's shallow merge does).
///
/// Kept split so a merge parses only the post, never the stored document (a 15 MiB
/// result would otherwise be re-parsed and re-serialised by every tiny merge). Values
/// are copied out of the post, so a later post does not pin an earlier one's buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(IndexMap<Box<str>, Bytes, foldhash::fast::RandomState>);

impl Fields {
    /// The members of a JSON object's text; `None` when it is not a JSON object.
    pub fn parse(text: &[u8]) -> Option<Fields> {
        let members: Vec<(String, &RawValue)> = serde_json::from_slice::<RawObject>(text).ok()?.0;
        let mut map = IndexMap::with_capacity_and_hasher(members.len(), Default::default());
        for (key, value) in members {
            map.insert(
                key.into_boxed_str(),
                Bytes::copy_from_slice(value.get().as_bytes()),
            );
        }
        Some(Fields(map))
    }

    /// Shallow merge: each key of `newer` replaces (in place) or appends.
    pub fn merge(&mut self, newer: Fields) {
        self.0.extend(newer.0);
    }

    /// The JSON text of `key`'s value.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.0.get(key)
    }

    /// Sets `key` to the JSON text `value`: in place when present, else last.
    pub fn insert(&mut self, key: &str, value: Bytes) {
        self.0.insert(key.into(), value);
    }

    /// Sets `key` to the JSON text `value`: in place when present, else first.
    pub fn insert_first(&mut self, key: &str, value: Bytes) {
        match self.0.get_mut(key) {
            Some(slot) => *slot = value,
            None => {
                self.0.shift_insert(0, key.into(), value);
            }
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes of JSON text held (keys and values).
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    /// The object as JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes() as usize + 4 * self.0.len() + 2);
        out.push(b'{');
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &**key).expect("strings serialise");
            out.push(b':');
            out.extend_from_slice(value);
        }
        out.push(b'}');
        out
    }
}

/// A JSON object's members in document order, values unparsed.
struct RawObject<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Members<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = access.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(RawObject(members))
            }
        }
        d.deserialize_map(Members(std::marker::PhantomData))
    }
}

/// Snapshot layout: a sequence of (key, JSON text) pairs. Snapshots written before this
/// layout (version 2) hold the whole object as one JSON text; both decode.
impl Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            seq.serialize_element(&(&**key, value))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("result fields: (key, JSON text) pairs, or a JSON object's text")
            }
            fn visit_bytes<E: serde::de::Error>(self, text: &[u8]) -> Result<Fields, E> {
                Fields::parse(text).ok_or_else(|| E::custom("result fields are not a JSON object"))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Fields, E> {
                self.visit_bytes(text.as_bytes())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<Fields, A::Error> {
                let hint = access.size_hint().unwrap_or(0).min(1 << 16);
                let mut map = IndexMap::with_capacity_and_hasher(hint, Default::default());
                while let Some((key, value)) = access.next_element::<(Box<str>, Bytes)>()? {
                    map.insert(key, value);
                }
                Ok(Fields(map))
            }
        }
        d.deserialize_any(Either)
    }
}

/// Everything reported about one job.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResultDoc {
    /// The merged result object: top-level key → the value's JSON text, in the order
    /// keys were first posted. A merge parses only what it posts.
    pub fields: Option<Fields>,
    /// Console output fragments.
    pub output: LogStream,
    /// Serial console fragments.
    pub serial: LogStream,
    /// How many output fragments the legacy `/output` GET has consumed.
    pub output_read: u64,
    /// Unix seconds of the latest result merge or log fragment: data for an id no job
    /// has expires a retention period after it. (Last in the snapshot layout: older
    /// snapshots decode with 0.)
    #[serde(default)]
    pub updated_at: u64,
}

impl ResultDoc {
    /// The stream of `kind`.
    pub fn log(&self, kind: LogKind) -> &LogStream {
        match kind {
            LogKind::Output => &self.output,
            LogKind::Serial => &self.serial,
        }
    }

    /// Bytes of data held: result fields (keys and values) and log fragments.
    pub fn bytes(&self) -> u64 {
        self.fields.as_ref().map_or(0, Fields::bytes) + self.output.bytes() + self.serial.bytes()
    }

    /// Output fragments the legacy reader has not consumed yet, and the new cursor.
    pub fn unread_output(&self) -> (Vec<&Fragment>, u64) {
        let from = (self.output_read as usize).min(self.output.fragments.len());
        let unread = self.output.fragments[from..].iter().collect();
        (unread, self.output.fragments.len() as u64)
    }
}

/// All result documents.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    /// Per job.
    /// Behind an `Arc` so a snapshot copy shares the documents (see `Registry::jobs`).
    docs: FastMap<JobId, Arc<ResultDoc>>,
}

impl Results {
    /// The job's document, if anything was reported.
    pub fn get(&self, id: JobId) -> Option<&ResultDoc> {
        self.docs.get(&id).map(|doc| &**doc)
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Every document's id, with its bytes held and last write (to find data of ids no
    /// job has at start-up).
    pub fn iter(&self) -> impl Iterator<Item = (JobId, &ResultDoc)> {
        self.docs.iter().map(|(id, doc)| (*id, &**doc))
    }

    /// Whether a fragment with this (phase, number) is already stored.
    pub fn has_fragment(&self, id: JobId, kind: LogKind, phase: &str, number: u64) -> bool {
        self.docs
            .get(&id)
            .is_some_and(|d| d.log(kind).seen.contains(&(Name::from(phase), number)))
    }

    /// The number a legacy `/output` chunk gets: one past the highest so far.
    pub fn next_output_number(&self, id: JobId) -> u64 {
        self.docs
            .get(&id)
            .and_then(|d| d.output.last_number())
            .map_or(0, |n| n + 1)
    }

    /// Folds one results event in.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::ResultMerged { id, fields, at } => {
                let Some(new) = Fields::parse(fields) else {
                    return;
                };
                let doc = Arc::make_mut(self.docs.entry(*id).or_default());
                doc.updated_at = doc.updated_at.max(*at);
                match &mut doc.fields {
                    None => doc.fields = Some(new),
                    Some(old) => old.merge(new),
                }
            }
            Event::LogAppended {
                id,
                kind,
                phase,
                number,
                timestamp,
                data,
                at,
            } => {
                let doc = Arc::make_mut(self.docs.entry(*id).or_default());
                doc.updated_at = doc.updated_at.max(*at);
                let stream = match kind {
                    LogKind::Output => &mut doc.output,
                    LogKind::Serial => &mut doc.serial,
                };
                if stream.seen.insert((phase.clone(), *number)) {
                    stream.fragments.push(Fragment {
                        number: *number,
                        phase: phase.clone(),
                        timestamp: *timestamp,
                        data: data.clone(),
                    });
                }
            }
            Event::OutputRead { id, upto } => {
                if let Some(doc) = self.docs.get_mut(id).map(Arc::make_mut) {
                    doc.output_read = doc.output_read.max(*upto);
                }
            }
            Event::ResultsExpired { ids } => {
                for id in ids {
                    self.docs.remove(id);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merge(results: &mut Results, id: JobId, json: &str) {
        results.apply(&Event::ResultMerged {
            id,
            fields: Bytes::from(json.to_owned()),
            at: 0,
        });
    }

    #[test]
    fn merges_are_shallow_and_keep_key_order() {
        let id = JobId::random();
        let mut results = Results::default();
        merge(
            &mut results,
            id,
            r#"{"foo":"test","job_state":"waiting","n":{"a":1}}"#,
        );
        merge(&mut results, id, r#"{"job_state":"provision","n":{"b":2}}"#);
        let text = results.get(id).unwrap().fields.as_ref().unwrap().to_json();
        assert_eq!(
            &text[..],
            br#"{"foo":"test","job_state":"provision","n":{"b":2}}"#
        );
    }

    #[test]
    fn snapshots_of_the_text_layout_decode_into_members() {
        // The layout of snapshot version 2: the merged object as one JSON text.
        #[derive(Serialize)]
        struct OldDoc {
            fields: Option<Bytes>,
            output: LogStream,
            serial: LogStream,
            output_read: u64,
        }
        let old = OldDoc {
            fields: Some(Bytes::from_static(br#"{"b":[1, 2],"a":{"x":null}}"#)),
            output: LogStream::default(),
            serial: LogStream::default(),
            output_read: 3,
        };
        let doc: ResultDoc = rmp_serde::from_slice(&rmp_serde::to_vec(&old).unwrap()).unwrap();
        let fields = doc.fields.clone().unwrap();
        assert_eq!(&fields.to_json()[..], br#"{"b":[1, 2],"a":{"x":null}}"#);
        assert_eq!((doc.output_read, doc.updated_at), (3, 0));
        // And the new layout round-trips.
        let again: ResultDoc = rmp_serde::from_slice(&rmp_serde::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(again.fields, Some(fields));
    }

    #[test]
    fn retried_fragments_are_stored_once() {
        let id = JobId::random();
        let mut results = Results::default();
        let fragment = Event::LogAppended {
            id,
            kind: LogKind::Output,
            phase: "test".into(),
            number: 0,
            timestamp: 0,
            data: Bytes::from_static(b"x"),
            at: 0,
        };
        results.apply(&fragment);
        results.apply(&fragment);
        assert_eq!(results.get(id).unwrap().output.fragments.len(), 1);
    }
}
