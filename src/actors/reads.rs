//! Reads of the result partition (`GET /v1/result/<id>`, log reads and follows, the
//! dashboard's job page), without the result actor: [`ResultDocs`] copies what a read
//! needs from the [`Shared`] partition in bounded steps (fragment handles, no text) and
//! composes the answer outside any lock; an id whose data lives in the orphan store is
//! read from its file. What a post records is the actor's (`actors::results`).

use std::sync::Arc;

use bytes::Bytes;

use super::orphans::Store;
use super::registry::Jobs;
use super::results::apart;
use super::Shared;
use crate::error::Result;
use crate::model::job::PHASES;
use crate::model::logtail::TailPick;
use crate::model::orphans::OrphanFollow;
use crate::model::results::{Fields, Fragment, LogStream, PhaseLog, ReadMark, ResultDoc, Results};
use crate::model::{JobId, LogKind};

/// How many fragments a reader copies per step before it lets the writer in.
const READ_STEP: usize = 4096;

/// What `GET /v1/result/<id>` needs from this partition.
#[derive(Debug)]
pub struct ResultView {
    /// The merged fields, if any were posted.
    pub fields: Option<Fields>,
    /// `<phase>_output` / `<phase>_serial` texts of the phases that have fragments, in
    /// each stream's newest run: handles to the fragments' texts, in fragment order (an
    /// answer streams them, `http::logbody`).
    pub logs: Vec<(String, Vec<Bytes>)>,
    /// The newest run with fragments in either stream (`None`: no fragments).
    pub run: Option<u32>,
}

/// What the job page shows of a job's results ([`ResultDocs::page`]).
#[derive(Debug)]
pub struct PageParts {
    /// The end of the log asked for: per phase its highest fragment number and its last
    /// fragments ([`TailPick`]).
    pub log: Vec<PhaseLog>,
    /// The length of that run of the log, in bytes.
    pub log_bytes: usize,
    /// The first members of the result fields (`None`: nothing posted).
    pub fields: Option<FieldsHead>,
}

/// The first members of a job's result fields ([`ResultDocs::page`]).
#[derive(Debug, Default)]
pub struct FieldsHead {
    /// Key and value's JSON text, in the fields' order.
    pub members: Vec<(Box<str>, Bytes)>,
    /// Bytes of their text (keys and values).
    pub text: usize,
    /// Whether these are all the members.
    pub whole: bool,
}

impl FieldsHead {
    /// Copies the members of `fields` from the `self.members.len()`th on, at most `step`,
    /// until their text reaches `most`.
    fn take(&mut self, fields: &Fields, step: usize, most: usize) {
        let from = self.members.len();
        for (key, value) in fields.iter_from(from).take(step) {
            if self.text >= most {
                return;
            }
            self.text += key.len() + value.len();
            self.members.push((key.into(), value.clone()));
        }
        self.whole = self.members.len() == fields.len();
    }
}

/// Filters of a log read.
#[derive(Clone, Debug)]
pub struct LogQuery {
    /// Only fragments numbered from here.
    pub from: u64,
    /// Only fragments stamped at or after this (unix microseconds).
    pub since: i64,
    /// Only this phase.
    pub phase: Option<String>,
    /// Only this run of the job; `None`: the newest run with fragments.
    pub run: Option<u32>,
}

/// Which fragments a read copies: those its filters let through (the run shown, the
/// numbers and times asked for, the phase asked for), as the answer is composed from them.
struct Wanted<'a> {
    /// The run; `None`: the stream's newest.
    run: Option<u32>,
    /// Numbered from here.
    from: u64,
    /// Stamped at or after this.
    since: i64,
    /// Only this phase; `None`: any (the answer picks the phases it shows).
    phase: Option<&'a str>,
}

impl Wanted<'_> {
    /// Whether a read of run `run` could show `f`.
    fn shows(&self, f: &Fragment, run: Option<u32>) -> bool {
        Some(f.run) == run
            && f.number >= self.from
            && f.timestamp >= self.since
            && self.phase.is_none_or(|p| *f.phase == *p)
    }
}

/// One log stream read.
#[derive(Debug)]
pub struct LogAnswer {
    /// The run it shows (`None`: no fragments and no run asked for).
    pub run: Option<u32>,
    /// The newest run with fragments in the stream (`None`: no fragments).
    pub latest: Option<u32>,
    /// Per phase asked for, in phase order.
    pub phases: Vec<PhaseLog>,
}

/// How far a log follow has read a stream (see [`ResultDocs::log`]).
#[derive(Debug, Default)]
pub struct FollowMark {
    /// The run it asked for (0, no run, at first) of a stream in memory.
    run: u32,
    /// The fragments of that stream it copied.
    copied: ReadMark,
    /// Where it is in the orphan file, when the id's data lives there.
    orphan: Option<OrphanFollow>,
}

/// Reads of the results partition for handlers, without the result actor; an id whose
/// data lives in the orphan store is read from its file.
#[derive(Clone)]
pub struct ResultDocs(Shared<Results>, Arc<Store>);

impl ResultDocs {
    /// Reads of `results` and of the orphan `store`.
    pub fn new(results: Shared<Results>, store: Arc<Store>) -> ResultDocs {
        ResultDocs(results, store)
    }

    /// The orphan store.
    pub fn store(&self) -> &Store {
        &self.1
    }

    /// Whether `id`'s data lives in the orphan store (as the result actor decides it,
    /// see `ResultState::apart`; the actor has the last word).
    pub fn apart(&self, id: JobId, jobs: &Jobs) -> bool {
        apart(&self.0.read(), id, jobs)
    }

    /// The document in `id`'s orphan file, if its data lives there.
    pub(super) async fn orphan_doc(&self, id: JobId) -> Result<Option<ResultDoc>> {
        let entry = self.0.read().orphan(id).cloned();
        match entry {
            Some(entry) => self.1.read(entry).await.map(Some),
            None => Ok(None),
        }
    }

    /// Shows `visit` the fragments of `id`'s `kind` stream (with the stream) in steps of
    /// [`READ_STEP`] (a read lock each), up to the length the stream had when the walk started; with
    /// `mark`, only those after the ones it says were read before, and moves it on.
    /// Whether the document was there.
    async fn walk_stream(
        &self,
        id: JobId,
        kind: LogKind,
        mut mark: Option<&mut ReadMark>,
        mut visit: impl FnMut(&LogStream, &[Fragment]),
    ) -> bool {
        let (mut start, mut end, mut seen) = (None, None, 0);
        loop {
            {
                let results = self.0.read();
                let Some(doc) = results.get(id) else {
                    return end.is_some();
                };
                let stream = doc.log(kind);
                let all = &stream.fragments;
                let start =
                    *start.get_or_insert_with(|| mark.as_ref().map_or(0, |m| m.resume(all)));
                let end = *end.get_or_insert(all.len());
                // At most `all.len()`: the document may have been removed and begun again.
                let at = (start + seen).min(all.len());
                let upto = (at + READ_STEP).min(end).min(all.len());
                visit(stream, &all[at..upto]);
                seen += upto - at;
                if upto >= end || upto == all.len() {
                    if let Some(mark) = mark.as_mut() {
                        **mark = ReadMark::at(all, upto);
                    }
                    return true;
                }
            }
            tokio::task::yield_now().await;
        }
    }

    /// Copies the fragments of `id`'s `kind` stream that a read filtered by `wanted`
    /// could show (handles, not text) as [`ResultDocs::walk_stream`] walks them, and
    /// the stream's newest run as the walk began: a read costs what it may answer, not
    /// every fragment of every run (a client polling a long log from its last number).
    async fn copy_stream(
        &self,
        id: JobId,
        kind: LogKind,
        mark: Option<&mut ReadMark>,
        wanted: &Wanted<'_>,
    ) -> Option<(LogStream, Option<u32>)> {
        let mut copied: Vec<Fragment> = Vec::new();
        let mut latest = None;
        let mut first = true;
        let found = self
            .walk_stream(id, kind, mark, |stream, step| {
                // The run as the walk began: fragments past its end are not copied.
                if std::mem::take(&mut first) {
                    latest = stream.latest_run();
                }
                let run = wanted.run.or(latest);
                copied.extend(step.iter().filter(|f| wanted.shows(f, run)).cloned());
            })
            .await;
        found.then(|| (LogStream::from_fragments(copied), latest))
    }

    /// The job's result fields and its per-phase log texts, each stream's newest run
    /// (`None`: nothing reported). Fails only when an orphan file cannot be read.
    pub async fn view(&self, id: JobId) -> Result<Option<ResultView>> {
        let (fields, output, serial) = match self.orphan_doc(id).await? {
            Some(doc) => (doc.fields, Some(doc.output), Some(doc.serial)),
            None => {
                let fields = {
                    let results = self.0.read();
                    match results.get(id) {
                        Some(doc) => doc.fields.clone(),
                        None => return Ok(None),
                    }
                };
                // Each stream's newest run, which is all it shows.
                let newest = Wanted {
                    run: None,
                    from: 0,
                    since: i64::MIN,
                    phase: None,
                };
                let output = self.copy_stream(id, LogKind::Output, None, &newest).await;
                let serial = self.copy_stream(id, LogKind::Serial, None, &newest).await;
                (fields, output.map(|s| s.0), serial.map(|s| s.0))
            }
        };
        let large = [&output, &serial]
            .iter()
            .map(|s| s.as_ref().map_or(0, |s| s.fragments.len()))
            .sum::<usize>()
            > READ_STEP;
        let compose = move || {
            let mut logs = Vec::new();
            let mut newest = None;
            for (stream, suffix) in [(output, "output"), (serial, "serial")] {
                let Some(stream) = stream else { continue };
                let Some(run) = stream.latest_run() else {
                    continue;
                };
                newest = newest.max(Some(run));
                for phase in PHASES {
                    if let Some((_, pieces)) = stream.phase_pieces(run, phase, 0, i64::MIN) {
                        logs.push((format!("{phase}_{suffix}"), pieces));
                    }
                }
            }
            ResultView {
                fields,
                logs,
                run: newest,
            }
        };
        Ok(Some(compose_off_runtime(compose, large).await))
    }

    /// What the job page shows of `id`'s results: the end of its `kind` log's run `run`
    /// ([`TailPick`]: per phase its highest fragment number and its last fragments,
    /// holding at least `log_most` bytes of text in all) with the run's length, and the
    /// first members of its result fields, as few as hold at least `fields_most` bytes of
    /// text. In memory, each is copied in bounded steps (handles, not text); an id whose
    /// data lives in the orphan store has its file read and folded once for both. Fails
    /// only when an orphan file cannot be read.
    pub async fn page(
        &self,
        id: JobId,
        kind: LogKind,
        run: u32,
        log_most: usize,
        fields_most: usize,
    ) -> Result<PageParts> {
        let mut pick = TailPick::new(run, log_most);
        if let Some(doc) = self.orphan_doc(id).await? {
            pick.feed(&doc.log(kind).fragments);
            let (log, log_bytes) = pick.finish();
            let fields = doc.fields.map(|fields| {
                let mut head = FieldsHead::default();
                head.take(&fields, usize::MAX, fields_most);
                head
            });
            return Ok(PageParts {
                log,
                log_bytes,
                fields,
            });
        }
        self.walk_stream(id, kind, None, |_, step| pick.feed(step))
            .await;
        let (log, log_bytes) = pick.finish();
        Ok(PageParts {
            log,
            log_bytes,
            fields: self.fields_head(id, fields_most).await,
        })
    }

    /// The first members of the in-memory result fields of `id` in order, as few as hold
    /// at least `most` bytes of text (keys and values; all of them when they hold fewer),
    /// copied in steps of `READ_STEP` members (handles to the values, not their text)
    /// (`None`: nothing posted). Members copied in different steps may come from
    /// different merges, each value as one merge left it.
    async fn fields_head(&self, id: JobId, most: usize) -> Option<FieldsHead> {
        let mut head = FieldsHead::default();
        loop {
            {
                let results = self.0.read();
                let Some(fields) = results.get(id).and_then(|doc| doc.fields.as_ref()) else {
                    // Removed meanwhile: what was copied, if anything.
                    return (!head.members.is_empty()).then_some(head);
                };
                head.take(fields, READ_STEP, most);
                if head.whole || head.text >= most {
                    return Some(head);
                }
            }
            tokio::task::yield_now().await;
        }
    }

    /// One log stream, filtered, per phase: the run shown and (phase, last fragment
    /// number or -1, text) for each phase. Fails only when an orphan file cannot be read.
    ///
    /// `mark` is for a reader that reads again and again with a `query.from` that never
    /// goes down (a log follow): asking for the run it marks, only the fragments after
    /// those it marks are copied (an earlier read filtered them already), and it moves
    /// on. Of an orphan file,
    /// it reads only the bytes appended since ([`OrphanFollow`]: the answer is the one a
    /// read of the whole file gives).
    pub async fn log(
        &self,
        id: JobId,
        kind: LogKind,
        query: LogQuery,
        mark: Option<&mut FollowMark>,
    ) -> Result<LogAnswer> {
        let entry = self.0.read().orphan(id).cloned();
        let (stream, latest) = match (entry, mark) {
            // A follow of a file reads only what was appended since it last read.
            (Some(entry), Some(mark)) => {
                let follow = match mark.orphan.take() {
                    Some(f) if f.follows(&entry, kind, query.run) => f,
                    _ => OrphanFollow::new(&entry, kind, query.run),
                };
                let follow = self.1.follow(follow, &entry, query.from).await?;
                let read = (Some(follow.stream()), follow.newest());
                mark.orphan = Some(follow);
                read
            }
            (Some(entry), None) => {
                let doc = self.1.read(entry).await?;
                let stream = match kind {
                    LogKind::Output => doc.output,
                    LogKind::Serial => doc.serial,
                };
                let latest = stream.latest_run();
                (Some(stream), latest)
            }
            (None, mark) => {
                let wanted = Wanted {
                    run: query.run,
                    from: query.from,
                    since: query.since,
                    phase: query.phase.as_deref(),
                };
                let copied = match (mark, query.run) {
                    (Some(mark), Some(run)) => {
                        if mark.run != run {
                            (mark.run, mark.copied) = (run, ReadMark::default());
                        }
                        let mark = Some(&mut mark.copied);
                        self.copy_stream(id, kind, mark, &wanted).await
                    }
                    _ => self.copy_stream(id, kind, None, &wanted).await,
                };
                match copied {
                    Some((stream, latest)) => (Some(stream), latest),
                    None => (None, None),
                }
            }
        };
        let large = stream
            .as_ref()
            .is_some_and(|s| s.fragments.len() > READ_STEP);
        let compose = move || {
            let run = query.run.or(latest);
            let phases = PHASES
                .iter()
                .filter(|p| query.phase.as_deref().is_none_or(|only| only == **p))
                .map(|phase| {
                    let read = stream
                        .as_ref()
                        .zip(run)
                        .and_then(|(s, run)| s.phase_pieces(run, phase, query.from, query.since));
                    let (last, pieces) = match read {
                        Some((last, pieces)) => (last as i64, pieces),
                        None => (-1, Vec::new()),
                    };
                    PhaseLog {
                        phase,
                        last,
                        pieces,
                    }
                })
                .collect();
            LogAnswer {
                run,
                latest,
                phases,
            }
        };
        Ok(compose_off_runtime(compose, large).await)
    }
}

/// Runs `f`, on a blocking thread when `large` (composing a long log takes milliseconds
/// that would otherwise stall one of the few runtime threads; a short one is cheaper
/// than the hand-off).
pub(crate) async fn compose_off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
    large: bool,
) -> T {
    if !large {
        return f();
    }
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
