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
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// Everything reported about one job.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResultDoc {
    /// The merged result object as text (kept as text so key order and number formats
    /// survive exactly; parsed only when merging).
    pub fields: Option<Bytes>,
    /// Console output fragments.
    pub output: LogStream,
    /// Serial console fragments.
    pub serial: LogStream,
    /// How many output fragments the legacy `/output` GET has consumed.
    pub output_read: u64,
}

impl ResultDoc {
    /// The stream of `kind`.
    pub fn log(&self, kind: LogKind) -> &LogStream {
        match kind {
            LogKind::Output => &self.output,
            LogKind::Serial => &self.serial,
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
            Event::ResultMerged { id, fields, .. } => {
                let doc = Arc::make_mut(self.docs.entry(*id).or_default());
                let Ok(Value::Object(new)) = serde_json::from_slice::<Value>(fields) else {
                    return;
                };
                let merged = match doc.fields.take() {
                    None => new,
                    Some(old) => {
                        let mut map: Map<String, Value> =
                            serde_json::from_slice(&old).unwrap_or_default();
                        map.extend(new);
                        map
                    }
                };
                doc.fields = Some(Bytes::from(
                    serde_json::to_vec(&merged).expect("a JSON map always serialises"),
                ));
            }
            Event::LogAppended {
                id,
                kind,
                phase,
                number,
                timestamp,
                data,
            } => {
                let doc = Arc::make_mut(self.docs.entry(*id).or_default());
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
        let text = results.get(id).unwrap().fields.clone().unwrap();
        assert_eq!(
            &text[..],
            br#"{"foo":"test","job_state":"provision","n":{"b":2}}"#
        );
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
        };
        results.apply(&fragment);
        results.apply(&fragment);
        assert_eq!(results.get(id).unwrap().output.fragments.len(), 1);
    }
}
