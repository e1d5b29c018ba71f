//! Data posted for job ids that no job has ("orphans"), as the seed's own examples post to
//! `00000000-0000-0000-0000-000000000000`: the quota it counts against, the one piece of
//! bookkeeping the result and artifact actors both keep of it ([`Ledger`]), and the orphan
//! store's byte format.
//!
//! **Where the data lives.** Artifacts are files already (see `files`). Results and log
//! fragments of an id no job has go to a file of their own, one per id, appended to: the
//! log records only how long that file's valid prefix is ([`OrphanEntry`], via
//! `Event::OrphanAppended`), so neither the live state, nor replay, nor a snapshot holds
//! any of their content, only an index entry per id. A read folds the file back into a
//! [`ResultDoc`] ([`read_doc`]) with the same code that records job results, so an id
//! reads the same wherever its data lives. An id keeps its data where its first write
//! put it: a job that later takes an orphan id (a submission naming that `job_id`) owns
//! the file from then on (it stops counting against the quota, and goes with the job).
//!
//! **Byte format of an orphan file**: records back to back, each
//! `len u32 LE | crc32c(payload) u32 LE | payload[len]`, the payload a msgpack [`Record`]
//! (named fields). The file is written only at its recorded length, fsynced before the
//! length is logged; bytes past the recorded length (an append whose record did not
//! reach the log) are ignored and overwritten by the next append.
//!
//! **Following one.** A log follow of such an id reads only the records appended since
//! its last read ([`OrphanFollow`]), keeping what it needs of the earlier ones.
//!
//! Nothing here does I/O: the shell (`actors::orphans`) reads and writes the files.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::event::LogKind;
use super::ids::{JobId, Name};
use super::job::PHASES;
use super::results::{Fragment, LogStream, ResultDoc};
use super::{FastMap, FastSet};
use crate::error::{Error, Result};

/// The bytes kept for ids no job has (results, logs and files posted for such ids),
/// shared by the result and artifact actors and bounded by `--orphan-quota-bytes`.
/// Derived: recomputed from the partitions at start-up.
pub struct OrphanQuota {
    /// The quota.
    limit: u64,
    /// Bytes held now.
    used: AtomicU64,
    /// Retention, for the refusal message.
    retention_secs: u64,
}

impl OrphanQuota {
    /// An empty account with room for `limit` bytes.
    pub fn new(limit: u64, retention_secs: u64) -> OrphanQuota {
        OrphanQuota {
            limit,
            used: AtomicU64::new(0),
            retention_secs,
        }
    }

    /// Takes `bytes` from the quota, or refuses (507) leaving it unchanged: [`Self::full`]
    /// when nothing is left, else [`Self::short_of`] what is.
    pub fn reserve(&self, bytes: u64) -> Result<()> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .map(|_| ())
            .map_err(|used| match self.limit.saturating_sub(used) {
                0 => self.full(),
                room => self.short_of(room),
            })
    }

    /// Counts `bytes` already kept (start-up accounting; may exceed the quota).
    pub fn charge(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives `bytes` back.
    pub fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Bytes left.
    pub fn room(&self) -> u64 {
        self.limit.saturating_sub(self.used.load(Ordering::Acquire))
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The refusal: 507, since the request itself is acceptable but the room the server
    /// keeps for such data is used up (it frees itself as that data expires).
    pub fn full(&self) -> Error {
        Error::NoSpace(format!(
            "no room for more data about job ids that no job has: their quota of {} bytes (--orphan-quota-bytes) is used up; such data expires {} s after its last write",
            self.limit, self.retention_secs
        ))
    }

    /// The refusal of one write larger than the `room` left (507, as [`Self::full`]):
    /// the quota is not used up, this write does not fit in what is left of it.
    pub fn short_of(&self, room: u64) -> Error {
        Error::NoSpace(format!(
            "no room for this data about a job id that no job has: it is larger than the {room} bytes left of their quota of {} bytes (--orphan-quota-bytes); such data expires {} s after its last write",
            self.limit, self.retention_secs
        ))
    }
}

/// One partition's account of its orphans: per id no job has, the bytes it holds that are
/// charged to the shared [`OrphanQuota`]. The result actor and the artifact actor each
/// keep one; both settle with the same quota.
///
/// Invariant: the sum of `charged` is what this ledger has taken from the quota.
pub struct Ledger {
    /// The shared account.
    quota: Arc<OrphanQuota>,
    /// Ids without a job that hold data here, and the bytes charged for them.
    charged: FastMap<JobId, u64>,
}

impl Ledger {
    /// An empty ledger charging `quota`.
    pub fn new(quota: Arc<OrphanQuota>) -> Ledger {
        Ledger {
            quota,
            charged: FastMap::default(),
        }
    }

    /// Start-up: `id` (no job has it) already holds `bytes` (may exceed the quota).
    pub fn count(&mut self, id: JobId, bytes: u64) {
        self.quota.charge(bytes);
        *self.charged.entry(id).or_default() += bytes;
    }

    /// Before recording `bytes` more for `id`: charges them when no job has that id
    /// (`has_job`), refused (507) when the quota is full even after ids that a job has
    /// taken since stopped counting. Returns whether it was charged.
    pub fn reserve(
        &mut self,
        id: JobId,
        bytes: u64,
        has_job: impl Fn(JobId) -> bool,
    ) -> Result<bool> {
        if has_job(id) {
            return Ok(false);
        }
        if self.quota.reserve(bytes).is_err() {
            self.adopt(&has_job);
            self.quota.reserve(bytes)?;
        }
        *self.charged.entry(id).or_default() += bytes;
        Ok(true)
    }

    /// Corrects `id`'s charge once an outcome is known: gives back `give_back` bytes (at
    /// most what it holds) and takes `take` instead. Nothing when `id` is not charged (a
    /// job owns it, or its data went meanwhile).
    pub fn settle(&mut self, id: JobId, give_back: u64, take: u64) {
        if let Some(charged) = self.charged.get_mut(&id) {
            let give = give_back.min(*charged);
            *charged = *charged - give + take;
            self.quota.release(give);
            self.quota.charge(take);
        }
    }

    /// Gives back all of `id`'s charge (its data is gone, or a job owns it now).
    pub fn discharge(&mut self, id: JobId) {
        if let Some(bytes) = self.charged.remove(&id) {
            self.quota.release(bytes);
        }
    }

    /// Ids that a job has taken since stop counting.
    pub fn adopt(&mut self, has_job: impl Fn(JobId) -> bool) {
        let adopted: Vec<JobId> = self
            .charged
            .keys()
            .copied()
            .filter(|id| has_job(*id))
            .collect();
        for id in adopted {
            self.discharge(id);
        }
    }

    /// The ids still without a job whose last write (`last_write`, unix seconds; `None`:
    /// nothing left) is before `cutoff`: what expiry removes.
    pub fn stale(
        &mut self,
        cutoff: u64,
        has_job: impl Fn(JobId) -> bool,
        last_write: impl Fn(JobId) -> Option<u64>,
    ) -> Vec<JobId> {
        self.adopt(has_job);
        self.charged
            .keys()
            .copied()
            .filter(|id| last_write(*id).is_none_or(|at| at < cutoff))
            .collect()
    }

    /// Whether `id` is charged here.
    pub fn contains(&self, id: JobId) -> bool {
        self.charged.contains_key(&id)
    }
}

/// The index entry of one id whose results and logs live in the orphan store: all the
/// memory such an id costs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanEntry {
    /// File name inside the `files/` folder (server-chosen, never from the client).
    pub file: Box<str>,
    /// Bytes of the file that hold recorded data (its valid prefix).
    pub len: u64,
    /// Unix seconds of the latest append: the data expires a retention period after it.
    pub at: u64,
    /// How many output fragments the legacy `/output` GET has consumed.
    pub output_read: u64,
}

/// One post kept in an orphan file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Top-level result fields to merge (a JSON object's text, as posted).
    Merged {
        /// The post.
        fields: Bytes,
    },
    /// A log fragment (`/log/<kind>`), shown once per (run, phase, number) as in memory.
    Logged {
        /// Output or serial.
        kind: LogKind,
        /// The fragment as posted.
        fragment: Fragment,
    },
    /// A legacy `/output` chunk: numbered when read, one past its run's highest output
    /// fragment before it (what the live numbering gives).
    Output {
        /// The phase.
        phase: Name,
        /// Unix microseconds.
        timestamp: i64,
        /// The text.
        data: Bytes,
        /// The run.
        run: u32,
    },
}

/// Bytes of a record's frame before its payload.
const HEADER: usize = 8;

/// `record` framed for appending to an orphan file.
pub fn encode(record: &Record) -> Vec<u8> {
    let payload = rmp_serde::to_vec_named(record).expect("records serialise");
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The records in `bytes` (an orphan file's valid prefix), in order; refused, naming the
/// offset, when a frame is cut short, fails its checksum or does not decode.
pub fn decode(bytes: &[u8]) -> Result<Vec<Record>> {
    decode_from(bytes, 0)
}

/// The records in `bytes`, the part of an orphan file's valid prefix from byte `base` (a
/// record's start) on; as [`decode`], naming offsets in the file.
pub fn decode_from(mut bytes: &[u8], base: u64) -> Result<Vec<Record>> {
    let total = bytes.len();
    let damaged = |at: u64, what: &str| {
        Error::Internal(format!(
            "an orphan data file is damaged at byte {at}: {what}"
        ))
    };
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let at = base + (total - bytes.len()) as u64;
        if bytes.len() < HEADER {
            return Err(damaged(at, "a record header is cut short"));
        }
        let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(HEADER..HEADER + len) else {
            return Err(damaged(at, "a record is cut short"));
        };
        if crc32c::crc32c(payload) != crc {
            return Err(damaged(at, "a record fails its checksum"));
        }
        let record = rmp_serde::from_slice(payload)
            .map_err(|e| damaged(at, &format!("a record does not decode: {e}")))?;
        records.push(record);
        bytes = &bytes[HEADER + len..];
    }
    Ok(records)
}

/// The document an orphan file's valid prefix `bytes` holds, as `Results` would hold it
/// had the same posts been recorded there: fields merged in order, fragments
/// de-duplicated per (run, phase, number), legacy chunks numbered after their run's
/// highest output fragment so far.
pub fn read_doc(bytes: &[u8], entry: &OrphanEntry) -> Result<ResultDoc> {
    let mut doc = ResultDoc {
        output_read: entry.output_read,
        updated_at: entry.at,
        ..ResultDoc::default()
    };
    // Highest output fragment number per run so far (the legacy numbering).
    let mut highest: FastMap<u32, u64> = FastMap::default();
    for record in decode(bytes)? {
        match record {
            Record::Merged { fields } => doc.merge_fields(&fields),
            Record::Logged { kind, fragment } => {
                let (run, number) = (fragment.run, fragment.number);
                if doc.push_fragment(kind, fragment) && kind == LogKind::Output {
                    let top = highest.entry(run).or_insert(number);
                    *top = (*top).max(number);
                }
            }
            Record::Output {
                phase,
                timestamp,
                data,
                run,
            } => {
                let number = highest.get(&run).map_or(0, |n| n + 1);
                highest.insert(run, number);
                doc.output.push(Fragment {
                    number,
                    phase,
                    timestamp,
                    data,
                    run,
                });
            }
        }
    }
    Ok(doc)
}

/// What a reader that reads one orphan file's log again and again (a log follow) keeps
/// between reads, so that folding only the records appended since gives the answer a
/// fold of the whole file ([`read_doc`]) would.
///
/// A follow reads from a fragment number `from` that never goes down, and a read shows
/// one run's fragments numbered from `from` on, in the known phases. So of the records
/// already read it needs only: those fragments (`kept`: the last read's, until the
/// reader moves past them, and empty ones it never moves past), whose keys also drop
/// retries; the run's highest output number (legacy chunks are numbered after it); and
/// the newest run (shown when none is asked for). Nothing here grows with the file.
#[derive(Clone, Debug)]
pub struct OrphanFollow {
    /// The file read (another one, once the id's data went and came again: read anew).
    file: Box<str>,
    /// Where the records not read yet start.
    offset: u64,
    /// The stream followed.
    kind: LogKind,
    /// The run asked for; `None`: the newest.
    asked: Option<u32>,
    /// The newest run among the stream's fragments read so far.
    newest: Option<u32>,
    /// The highest output fragment number of the run shown so far.
    highest: Option<u64>,
    /// The fragments of the run shown, in a known phase, numbered from the reader's
    /// `from` on, the first of each (phase, number), in file order.
    kept: Vec<Fragment>,
    /// Their (phase, number).
    keys: FastSet<(Name, u64)>,
}

impl OrphanFollow {
    /// A follow of `entry`'s file, its `kind` stream, run `asked` (`None`: the newest),
    /// that has read nothing yet.
    pub fn new(entry: &OrphanEntry, kind: LogKind, asked: Option<u32>) -> OrphanFollow {
        OrphanFollow {
            file: entry.file.clone(),
            offset: 0,
            kind,
            asked,
            newest: None,
            highest: None,
            kept: Vec::new(),
            keys: FastSet::default(),
        }
    }

    /// Whether this follows `entry`'s file (no more of it read than it holds), its `kind`
    /// stream and run `asked`: else a reader starts again with [`OrphanFollow::new`].
    pub fn follows(&self, entry: &OrphanEntry, kind: LogKind, asked: Option<u32>) -> bool {
        self.file == entry.file
            && self.offset <= entry.len
            && self.kind == kind
            && self.asked == asked
    }

    /// Where the records not read yet start (a record's start).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The newest run among the stream's fragments read so far.
    pub fn newest(&self) -> Option<u32> {
        self.newest
    }

    /// The run a read shows: the one asked for, else the newest.
    pub fn run(&self) -> Option<u32> {
        self.asked.or(self.newest)
    }

    /// Forgets the fragments kept that are numbered below `from` (a read from there does
    /// not show them, nor their retries).
    pub fn pass(&mut self, from: u64) {
        self.kept.retain(|f| f.number >= from);
        self.keys.retain(|(_, number)| *number >= from);
    }

    /// Folds `records`, the file's from [`OrphanFollow::offset`] up to `to`, for a reader
    /// at `from` (after [`OrphanFollow::pass`]).
    pub fn read(&mut self, records: Vec<Record>, to: u64, from: u64) {
        for record in records {
            match record {
                Record::Logged { kind, fragment } if kind == self.kind => {
                    if !self.shows(fragment.run) {
                        continue;
                    }
                    if kind == LogKind::Output {
                        self.highest = self.highest.max(Some(fragment.number));
                    }
                    self.keep(fragment, from);
                }
                Record::Output {
                    phase,
                    timestamp,
                    data,
                    run,
                } if self.kind == LogKind::Output => {
                    if !self.shows(run) {
                        continue;
                    }
                    // Numbered as `read_doc` numbers it: after the run's highest so far.
                    let number = self.highest.map_or(0, |n| n + 1);
                    self.highest = Some(number);
                    self.keep(
                        Fragment {
                            number,
                            phase,
                            timestamp,
                            data,
                            run,
                        },
                        from,
                    );
                }
                _ => {}
            }
        }
        self.offset = to;
    }

    /// Counts a fragment of `run` among the stream's; whether it is of the run shown.
    /// A newer run shown (none asked for) starts from nothing: no earlier record of the
    /// stream was of that run.
    fn shows(&mut self, run: u32) -> bool {
        let before = self.run();
        self.newest = self.newest.max(Some(run));
        if self.run() != before {
            self.highest = None;
            self.kept.clear();
            self.keys.clear();
        }
        self.run() == Some(run)
    }

    /// Keeps `fragment` of the run shown if a read from `from` shows it and it is the
    /// first of its (phase, number).
    fn keep(&mut self, fragment: Fragment, from: u64) {
        if fragment.number < from || !PHASES.contains(&&*fragment.phase) {
            return;
        }
        if self.keys.insert((fragment.phase.clone(), fragment.number)) {
            self.kept.push(fragment);
        }
    }

    /// What a read shows of the stream: the fragments kept, as a stream to read from.
    pub fn stream(&self) -> LogStream {
        LogStream::from_fragments(self.kept.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> OrphanEntry {
        OrphanEntry {
            file: "f".into(),
            len: 0,
            at: 7,
            output_read: 0,
        }
    }

    fn logged(number: u64, data: &'static str) -> Record {
        Record::Logged {
            kind: LogKind::Output,
            fragment: Fragment {
                phase: "test".into(),
                number,
                timestamp: 0,
                data: Bytes::from_static(data.as_bytes()),
                run: 1,
            },
        }
    }

    #[test]
    fn a_file_reads_back_as_the_same_posts_recorded_in_memory_would() {
        let mut bytes = Vec::new();
        for record in [
            Record::Merged {
                fields: Bytes::from_static(br#"{"a":1,"b":[2]}"#),
            },
            logged(0, "zero\n"),
            logged(0, "zero\n"),
            Record::Merged {
                fields: Bytes::from_static(br#"{"a":{"x":null}}"#),
            },
            Record::Output {
                phase: "test".into(),
                timestamp: 0,
                data: Bytes::from_static(b"legacy\n"),
                run: 1,
            },
            logged(5, "five\n"),
        ] {
            bytes.extend(encode(&record));
        }
        let doc = read_doc(&bytes, &entry()).unwrap();
        assert_eq!(
            &doc.fields.unwrap().to_json()[..],
            br#"{"a":{"x":null},"b":[2]}"#
        );
        let numbers: Vec<u64> = doc.output.fragments.iter().map(|f| f.number).collect();
        assert_eq!(numbers, [0, 1, 5], "retry dropped, legacy chunk numbered 1");
        assert_eq!(doc.updated_at, 7);
    }

    #[test]
    fn damage_is_refused_naming_where() {
        let mut bytes = encode(&logged(0, "x"));
        bytes.extend(encode(&logged(1, "y")));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let e = decode(&bytes).unwrap_err();
        assert!(e.message().contains("checksum"), "{}", e.message());
        assert!(decode(&bytes[..bytes.len() - 3]).is_err());
        assert_eq!(
            decode(&bytes[..encode(&logged(0, "x")).len()])
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn the_ledger_charges_only_ids_without_a_job_and_adopts_taken_ones() {
        let quota = Arc::new(OrphanQuota::new(100, 1));
        let mut ledger = Ledger::new(quota.clone());
        let (a, b) = (JobId::random(), JobId::random());
        assert!(ledger.reserve(a, 60, |_| false).unwrap());
        assert!(!ledger.reserve(b, 60, |id| id == b).unwrap());
        assert!(ledger.reserve(b, 60, |_| false).is_err());
        // Once a job has `a`, its bytes stop counting and make room.
        assert!(ledger.reserve(b, 60, |id| id == a).unwrap());
        assert_eq!(quota.used(), 60);
        ledger.settle(b, 100, 10);
        assert_eq!(quota.used(), 10);
        assert_eq!(ledger.stale(5, |_| false, |_| Some(4)), vec![b]);
        ledger.discharge(b);
        assert_eq!(quota.used(), 0);
    }

    /// Reading a growing file piece by piece, from a number that goes up, shows at each
    /// read what a fold of the whole file so far shows from that number: retries dropped
    /// (also across reads), legacy chunks numbered after the run's highest, empty
    /// fragments and late ones, other runs and kinds, and the newest run when none is
    /// asked for.
    #[test]
    fn a_follow_reading_only_what_is_new_shows_what_a_whole_read_shows() {
        let mut seed: u64 = 0x1234_5678_9abc_def1;
        let mut below = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let phases = ["setup", "test", "nonsense"];
        for round in 0..1_000 {
            let kind = [LogKind::Output, LogKind::Serial][below(2) as usize];
            let asked = [None, Some(1), Some(2)][below(3) as usize];
            let mut bytes = Vec::new();
            let mut ends = Vec::new();
            for _ in 0..below(30) {
                let run = 1 + below(3) as u32;
                let phase: Name = phases[below(3) as usize].into();
                let data = Bytes::from(["", "a", "bc\n"][below(3) as usize]);
                let record = match below(5) {
                    0 => Record::Merged {
                        fields: Bytes::from_static(b"{\"k\":1}"),
                    },
                    1 => Record::Output {
                        phase,
                        timestamp: 0,
                        data,
                        run,
                    },
                    _ => Record::Logged {
                        kind: [LogKind::Output, LogKind::Serial][below(2) as usize],
                        fragment: Fragment {
                            number: below(12),
                            phase,
                            timestamp: 0,
                            data,
                            run,
                        },
                    },
                };
                bytes.extend(encode(&record));
                ends.push(bytes.len());
            }
            let mut e = entry();
            let mut follow = OrphanFollow::new(&e, kind, asked);
            let mut from = 0;
            let mut at = 0;
            while at < ends.len() {
                at = (at + 1 + below(4) as usize).min(ends.len());
                e.len = ends[at - 1] as u64;
                from += below(3);
                assert!(follow.follows(&e, kind, asked));
                follow.pass(from);
                let new = decode_from(
                    &bytes[follow.offset() as usize..e.len as usize],
                    follow.offset(),
                )
                .unwrap();
                follow.read(new, e.len, from);
                let doc = read_doc(&bytes[..e.len as usize], &e).unwrap();
                let whole = doc.log(kind);
                let run = asked.or(whole.latest_run());
                assert_eq!(follow.run(), run, "round {round}");
                assert_eq!(follow.newest(), whole.latest_run(), "round {round}");
                let part = follow.stream();
                for phase in PHASES {
                    let read =
                        |s: &LogStream| run.and_then(|r| s.phase_pieces(r, phase, from, i64::MIN));
                    assert_eq!(
                        read(&part),
                        read(whole),
                        "round {round}, {phase} from {from}"
                    );
                }
            }
        }
    }
}
