//! Result documents and logs: what agents report about a job, kept per job id.
//!
//! A result document is a JSON object merged key by key (Testflinger's shallow merge).
//! Logs are fragments per (job, output|serial), de-duplicated on (phase, fragment number)
//! because agents retry posts. The legacy `/output` endpoint reads the same output stream
//! destructively, through a per-job read cursor.
//!
//! The job's lifecycle state is *not* owned here: the registry's state wins when the two
//! are composed for a client (see `http`). Results may exist for ids no job has.
//!
//! Invariant, once counted: [`Results::held`] is the sum of every document's
//! [`ResultDoc::bytes`], and each of those the sum of its fields' and fragments' charges;
//! [`Results::apply`] keeps both, so the bounds on them (`--max-job-data-bytes`,
//! `--max-results-bytes`) cost no pass over what is held.

use super::cowmap::CowMap;
use super::{FastMap, FastSet};

use std::sync::Arc;

use bytes::Bytes;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::event::{Event, LogKind};
use super::ids::{JobId, Name};
use super::orphans::OrphanEntry;
use super::registry::first_run;

/// What one log fragment or result field costs against `--max-job-data-bytes` besides
/// its text: what is kept beside it (a fragment's number, timestamp, run and retry-index
/// entry; a field's map slot and the headers of its key and value buffers), about what
/// it takes in memory. Without it an empty fragment or a `{"k":0}` field would be
/// nearly free, and a client could store millions.
pub const ENTRY_OVERHEAD: u64 = 128;

/// What a fragment of `text` bytes in `phase` is charged against a job's data bound:
/// the text, the phase name and [`ENTRY_OVERHEAD`].
pub fn fragment_weight(text: usize, phase: &str) -> u64 {
    text as u64 + phase.len() as u64 + ENTRY_OVERHEAD
}

/// At most what merging the result object `post` (JSON text) can add to a job's data:
/// its length, plus [`ENTRY_OVERHEAD`] for each of its top-level members.
pub fn merge_weight(post: &[u8]) -> u64 {
    post.len() as u64 + top_level_members(post) * ENTRY_OVERHEAD
}

/// What one result field is charged: its key's and value's text and [`ENTRY_OVERHEAD`].
fn member_weight(key: &str, value: &[u8]) -> u64 {
    member_weight_of(key.len() as u64, value)
}

fn member_weight_of(key_len: u64, value: &[u8]) -> u64 {
    key_len + value.len() as u64 + ENTRY_OVERHEAD
}

/// How many members the JSON object text `object` has at its top level (its `:`s outside
/// strings and nested values); what a merge of it adds at most to the stored fields. One
/// pass over the bytes: the text was already checked to be a JSON object.
fn top_level_members(object: &[u8]) -> u64 {
    let (mut depth, mut in_string, mut escaped, mut members) = (0u32, false, false, 0u64);
    for &b in object {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b':' if depth == 1 => members += 1,
            _ => {}
        }
    }
    members
}

/// One log fragment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    /// The agent's fragment number (monotonic per job run and kind across phases).
    pub number: u64,
    /// The phase it was produced in.
    pub phase: Name,
    /// Unix microseconds.
    pub timestamp: i64,
    /// The text as posted.
    pub data: Bytes,
    /// The job's run (see `Job::run`). Last, with a default (run 1, as for log records
    /// written before runs were kept apart), so older snapshots still decode.
    #[serde(default = "first_run")]
    pub run: u32,
}

impl Fragment {
    /// What it is charged against its job's data bound ([`fragment_weight`]).
    pub fn weight(&self) -> u64 {
        fragment_weight(self.data.len(), &self.phase)
    }
}

/// One log stream of a job, every run's fragments in arrival order.
///
/// An agent numbers a job's fragments from 0 again each time it runs the job, so a
/// fragment is identified by (run, phase, number): a retried post of the same run is
/// stored once, and a resubmitted job's new run starts a log of its own. Reads pick one
/// run (by default the newest); the legacy `/output` cursor counts in arrival order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LogStream {
    /// Fragments in the order they arrived (the legacy cursor counts in this order).
    pub fragments: Vec<Fragment>,
    /// (phase, number) pairs seen in run `run`, to drop retried posts in O(1).
    seen: FastSet<(Name, u64)>,
    /// The newest run any fragment belongs to (the run `seen` covers). Last, with a
    /// default (their fragments' run), so older snapshots still decode.
    #[serde(default = "first_run")]
    run: u32,
    /// Bytes charged for the fragments held ([`fragment_weight`]): counted once when
    /// first asked (after a load), then kept up to date by [`LogStream::push`], so
    /// bounding a job's data costs O(1) a post. Derived: never in a snapshot.
    #[serde(skip)]
    held: std::sync::OnceLock<u64>,
}

impl LogStream {
    /// The newest run with fragments, if any fragment arrived.
    pub fn latest_run(&self) -> Option<u32> {
        (!self.fragments.is_empty()).then_some(self.run)
    }

    /// A stream of these fragments, for a reader's copy: it does not track retries, so
    /// it is for reading ([`LogStream::phase_text`]), not for recording.
    pub fn from_fragments(fragments: Vec<Fragment>) -> LogStream {
        let run = fragments
            .iter()
            .map(|f| f.run)
            .max()
            .unwrap_or_else(first_run);
        LogStream {
            fragments,
            seen: FastSet::default(),
            run,
            held: std::sync::OnceLock::new(),
        }
    }

    /// Bytes charged for the fragments held: each one's [`fragment_weight`].
    pub fn bytes(&self) -> u64 {
        *self
            .held
            .get_or_init(|| self.fragments.iter().map(Fragment::weight).sum())
    }

    /// Whether a fragment (run, phase, number) is stored. A late retry for an older run
    /// (its agent still posting after a resubmission) is looked up by a scan: rare.
    pub fn contains(&self, run: u32, phase: &str, number: u64) -> bool {
        if self.fragments.is_empty() || run > self.run {
            return false;
        }
        if run == self.run {
            return self.seen.contains(&(Name::from(phase), number));
        }
        self.fragments
            .iter()
            .any(|f| f.run == run && f.number == number && &*f.phase == phase)
    }

    /// Stores `fragment` unless the same (run, phase, number) is already stored; whether
    /// it was stored.
    pub fn push(&mut self, fragment: Fragment) -> bool {
        if self.fragments.is_empty() || fragment.run > self.run {
            self.run = fragment.run;
            self.seen.clear();
        }
        if self.contains(fragment.run, &fragment.phase, fragment.number) {
            return false;
        }
        if fragment.run == self.run {
            self.seen.insert((fragment.phase.clone(), fragment.number));
        }
        if let Some(held) = self.held.get_mut() {
            *held += fragment.weight();
        }
        self.fragments.push(fragment);
        true
    }

    /// The highest fragment number of `run`, if that run has any fragment.
    pub fn last_number(&self, run: u32) -> Option<u64> {
        self.fragments
            .iter()
            .filter(|f| f.run == run)
            .map(|f| f.number)
            .max()
    }

    /// The texts of the fragments of `run` and `phase` numbered from `from` and stamped
    /// at or after `since` (unix microseconds), in fragment order (handles to the stored
    /// buffers, not copies); with the highest number among them. `None` when there are
    /// none.
    pub fn phase_pieces(
        &self,
        run: u32,
        phase: &str,
        from: u64,
        since: i64,
    ) -> Option<(u64, Vec<Bytes>)> {
        let mut picked: Vec<&Fragment> = self
            .fragments
            .iter()
            .filter(|f| {
                f.run == run && &*f.phase == phase && f.number >= from && f.timestamp >= since
            })
            .collect();
        if picked.is_empty() {
            return None;
        }
        picked.sort_by_key(|f| f.number);
        let last = picked.last().map_or(0, |f| f.number);
        Some((last, picked.into_iter().map(|f| f.data.clone()).collect()))
    }

    /// [`LogStream::phase_pieces`] joined into one text (invalid UTF-8 replaced).
    pub fn phase_text(
        &self,
        run: u32,
        phase: &str,
        from: u64,
        since: i64,
    ) -> Option<(u64, String)> {
        let (last, pieces) = self.phase_pieces(run, phase, from, since)?;
        Some((last, joined_text(&pieces)))
    }
}

/// Texts joined into one, invalid UTF-8 (also across their boundaries) replaced as
/// `String::from_utf8_lossy` replaces it in the concatenation.
pub fn joined_text(pieces: &[Bytes]) -> String {
    let text: Vec<u8> = pieces.concat();
    String::from_utf8_lossy(&text).into_owned()
}

/// How far a reader that reads one stream again and again (a log follow) has copied it,
/// so that its next read copies only the fragments after these: a stream only grows
/// while its document lives. The last fragment copied tells the stream it copied from
/// one removed and begun again (the results deleted or expired), which is read whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadMark {
    /// Fragments copied, from the stream's first.
    upto: usize,
    /// The last of them: run, number, timestamp and where its text is stored.
    last: Option<(u32, u64, i64, usize)>,
}

impl ReadMark {
    /// Where in `fragments` (a stream as it is now) a reader at this mark resumes: after
    /// the fragments it copied, or at the start when those are not the stream's first
    /// ones any more.
    pub fn resume(&self, fragments: &[Fragment]) -> usize {
        let last = self.upto.checked_sub(1).and_then(|i| fragments.get(i));
        match (last, self.last) {
            (Some(f), Some(mark)) if mark_of(f) == mark => self.upto,
            _ => 0,
        }
    }

    /// The mark of a reader that has copied `fragments[..upto]`.
    pub fn at(fragments: &[Fragment], upto: usize) -> ReadMark {
        ReadMark {
            upto,
            last: upto.checked_sub(1).map(|i| mark_of(&fragments[i])),
        }
    }
}

fn mark_of(f: &Fragment) -> (u32, u64, i64, usize) {
    (f.run, f.number, f.timestamp, f.data.as_ptr() as usize)
}

/// One phase of a log read.
#[derive(Debug)]
pub struct PhaseLog {
    /// The phase.
    pub phase: &'static str,
    /// The highest fragment number read, -1 when none.
    pub last: i64,
    /// The fragments' texts in fragment order: handles to the stored buffers, so a read
    /// copies no text (an answer streams them).
    pub pieces: Vec<Bytes>,
}

impl PhaseLog {
    /// The text joined (invalid UTF-8 replaced), for callers that need it whole.
    pub fn text(&self) -> String {
        joined_text(&self.pieces)
    }

    /// Shows nothing (`last` -1, no text).
    pub fn clear(&mut self) {
        self.last = -1;
        self.pieces.clear();
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
pub struct Fields {
    /// Key → the value's JSON text, in the order keys were first posted.
    map: IndexMap<Box<str>, Bytes, foldhash::fast::RandomState>,
    /// Bytes charged for the members ([`Fields::bytes`]): counted when the map is built,
    /// then kept by every change, so bounding a job's data (and the server's) costs O(1)
    /// a post instead of a pass over the members.
    held: u64,
}

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
        Some(Fields::from_map(map))
    }

    /// These members, their charge counted once.
    fn from_map(map: IndexMap<Box<str>, Bytes, foldhash::fast::RandomState>) -> Fields {
        let held = map.iter().map(|(k, v)| member_weight(k, v)).sum();
        Fields { map, held }
    }

    /// Shallow merge: each key of `newer` replaces (in place) or appends.
    pub fn merge(&mut self, newer: Fields) {
        for (key, value) in newer.map {
            self.put(key, value);
        }
    }

    /// Sets `key` to `value` in place (or last), keeping the charge.
    fn put(&mut self, key: Box<str>, value: Bytes) {
        let weight = member_weight(&key, &value);
        let key_len = key.len() as u64;
        match self.map.insert(key, value) {
            Some(old) => self.held = self.held - member_weight_of(key_len, &old) + weight,
            None => self.held += weight,
        }
    }

    /// The JSON text of `key`'s value.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.map.get(key)
    }

    /// Sets `key` to the JSON text `value`: in place when present, else last.
    pub fn insert(&mut self, key: &str, value: Bytes) {
        self.put(key.into(), value);
    }

    /// Sets `key` to the JSON text `value`: in place when present, else first.
    pub fn insert_first(&mut self, key: &str, value: Bytes) {
        let weight = member_weight(key, &value);
        match self.map.get_mut(key) {
            Some(slot) => {
                let old = std::mem::replace(slot, value);
                self.held = self.held - member_weight(key, &old) + weight;
            }
            None => {
                self.map.shift_insert(0, key.into(), value);
                self.held += weight;
            }
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes charged for the members: each one's key and value text plus
    /// [`ENTRY_OVERHEAD`]. O(1): kept by every change.
    pub fn bytes(&self) -> u64 {
        self.held
    }

    /// Bytes of JSON text held (keys and values).
    fn text_bytes(&self) -> u64 {
        self.held - self.map.len() as u64 * ENTRY_OVERHEAD
    }

    /// The members in order: key, value's JSON text.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.map.iter().map(|(k, v)| (&**k, v))
    }

    /// The members from the `from`th on, in order (none past the last).
    pub fn iter_from(&self, from: usize) -> impl Iterator<Item = (&str, &Bytes)> {
        let rest = &self.map.as_slice()[from.min(self.map.len())..];
        rest.iter().map(|(k, v)| (&**k, v))
    }

    /// The object as JSON text.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text_bytes() as usize + 4 * self.map.len() + 2);
        out.push(b'{');
        for (i, (key, value)) in self.map.iter().enumerate() {
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
        let mut seq = s.serialize_seq(Some(self.map.len()))?;
        for (key, value) in &self.map {
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
                Ok(Fields::from_map(map))
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

    /// Shallow-merges the JSON object `text` into the fields (ignored when not one: the
    /// handler checked it).
    pub fn merge_fields(&mut self, text: &[u8]) {
        let Some(new) = Fields::parse(text) else {
            return;
        };
        match &mut self.fields {
            None => self.fields = Some(new),
            Some(old) => old.merge(new),
        }
    }

    /// Stores `fragment` in the stream of `kind` unless it is a retry; whether it was
    /// stored.
    pub fn push_fragment(&mut self, kind: LogKind, fragment: Fragment) -> bool {
        match kind {
            LogKind::Output => self.output.push(fragment),
            LogKind::Serial => self.serial.push(fragment),
        }
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
    /// Behind an `Arc` so a snapshot copy shares the documents (see `Registry::jobs`), in a
    /// [`CowMap`] so the copy in the results actor's turn clones shard pointers, not one
    /// reference per document (encoded as the map it replaces).
    docs: CowMap<JobId, Arc<ResultDoc>>,
    /// Ids whose results and logs live in the orphan store (a file each, see
    /// `model::orphans`): only their index entries are here. An id is in `docs` or here,
    /// never both. Last in the snapshot layout: older snapshots decode with none.
    #[serde(default)]
    orphans: FastMap<JobId, OrphanEntry>,
    /// Bytes charged for every document in `docs` ([`ResultDoc::bytes`] summed): the
    /// results and logs this partition holds in memory, which `--max-results-bytes`
    /// bounds. Summed once when first asked after a load (a snapshot, then replay), then
    /// kept by [`Results::apply`], so the bound costs a counter update a post. The orphan
    /// store's data is on disk and not counted. Derived: never in a snapshot.
    #[serde(skip)]
    held: std::sync::OnceLock<u64>,
}

impl Results {
    /// The job's document, if anything was reported.
    pub fn get(&self, id: JobId) -> Option<&ResultDoc> {
        self.docs.get(&id).map(|doc| &**doc)
    }

    /// Bytes charged for the results and logs held in memory: every document's
    /// [`ResultDoc::bytes`], whether or not a job has its id (data of ids no job has that
    /// lives in the orphan store is on disk and not counted).
    pub fn held(&self) -> u64 {
        *self
            .held
            .get_or_init(|| self.docs.iter().map(|(_, doc)| doc.bytes()).sum())
    }

    /// Keeps [`Results::held`] when a document's charge went from `before` to `after`
    /// (a merge may shrink it). Nothing to keep until it was first counted.
    fn recount(held: &mut std::sync::OnceLock<u64>, before: u64, after: u64) {
        if let Some(held) = held.get_mut() {
            *held = *held - before + after;
        }
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

    /// The orphan store's index entry of `id`, when its data lives there.
    pub fn orphan(&self, id: JobId) -> Option<&OrphanEntry> {
        self.orphans.get(&id)
    }

    /// Every id whose data lives in the orphan store, with its entry.
    pub fn orphans(&self) -> impl Iterator<Item = (JobId, &OrphanEntry)> {
        self.orphans.iter().map(|(id, e)| (*id, e))
    }

    /// Whether anything is kept for `id`, in memory or in the orphan store.
    pub fn has(&self, id: JobId) -> bool {
        self.docs.contains_key(&id) || self.orphans.contains_key(&id)
    }

    /// Whether a fragment with this (run, phase, number) is already stored.
    pub fn has_fragment(
        &self,
        id: JobId,
        kind: LogKind,
        run: u32,
        phase: &str,
        number: u64,
    ) -> bool {
        self.docs
            .get(&id)
            .is_some_and(|d| d.log(kind).contains(run, phase, number))
    }

    /// The number a legacy `/output` chunk of `run` gets: one past that run's highest, at
    /// most `i64::MAX` (reads answer numbers as signed, and an agent may post that one).
    pub fn next_output_number(&self, id: JobId, run: u32) -> u64 {
        self.docs
            .get(&id)
            .and_then(|d| d.output.last_number(run))
            .map_or(0, |n| n.saturating_add(1).min(i64::MAX as u64))
    }

    /// Folds one results event in.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::ResultMerged { id, fields, at } => {
                if Fields::parse(fields).is_none() {
                    return;
                }
                let doc = Arc::make_mut(self.docs.get_or_insert_with(*id, Default::default));
                doc.updated_at = doc.updated_at.max(*at);
                let before = doc.bytes();
                doc.merge_fields(fields);
                Self::recount(&mut self.held, before, doc.bytes());
            }
            Event::LogAppended {
                id,
                kind,
                phase,
                number,
                timestamp,
                data,
                run,
                at,
            } => {
                let doc = Arc::make_mut(self.docs.get_or_insert_with(*id, Default::default));
                doc.updated_at = doc.updated_at.max(*at);
                let fragment = Fragment {
                    number: *number,
                    phase: phase.clone(),
                    timestamp: *timestamp,
                    data: data.clone(),
                    run: *run,
                };
                let weight = fragment.weight();
                if doc.push_fragment(*kind, fragment) {
                    Self::recount(&mut self.held, 0, weight);
                }
            }
            Event::OutputRead { id, upto } => {
                if let Some(doc) = self.docs.get_mut(id).map(Arc::make_mut) {
                    doc.output_read = doc.output_read.max(*upto);
                } else if let Some(entry) = self.orphans.get_mut(id) {
                    entry.output_read = entry.output_read.max(*upto);
                }
            }
            Event::ResultsExpired { ids } => {
                for id in ids {
                    if let Some(doc) = self.docs.remove(id) {
                        Self::recount(&mut self.held, doc.bytes(), 0);
                    }
                    self.orphans.remove(id);
                }
            }
            Event::OrphanAppended {
                id,
                file,
                offset,
                len,
                at,
            } => match self.orphans.get_mut(id) {
                // Appends extend the valid prefix in order; one that does not continue
                // it (never recorded so: the actor checks first) changes nothing.
                Some(entry) if entry.file == *file && entry.len == *offset => {
                    entry.len += len;
                    entry.at = entry.at.max(*at);
                }
                None if *offset == 0 && !self.docs.contains_key(id) => {
                    self.orphans.insert(
                        *id,
                        OrphanEntry {
                            file: file.clone(),
                            len: *len,
                            at: *at,
                            output_read: 0,
                        },
                    );
                }
                _ => {}
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
