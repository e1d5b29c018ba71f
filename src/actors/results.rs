//! The result actor: owns the [`Results`] partition (result documents and logs).
//!
//! Decides what a post records (dropping retried log fragments, numbering legacy output
//! chunks, consuming unread output) and applies it after the journal accepted it.
//!
//! Reads (`GET /v1/result/<id>`, log reads) do not come here: the partition is
//! [`Shared`], and [`ResultDocs`] copies what a read needs in bounded steps (fragment
//! handles, no text) and composes the answer outside any lock.
//!
//! Data for ids no job has (orphans) is accepted, as upstream does, but within the
//! shared [`OrphanQuota`], and removed a retention period after its last write.

use bytes::{Bytes, BytesMut};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::registry::Jobs;
use super::{gone, now, now_micros, reply, OrphanQuota, PendingSnapshot, Recorder, Shared};
use crate::error::Result;
use crate::journal::{Journal, Ticket};
use crate::model::job::PHASES;
use crate::model::results::{Fields, Fragment, LogStream, Results};
use crate::model::{Event, FastMap, JobId, LogKind, Name};
use std::sync::Arc;

/// How many fragments a reader copies per step before it lets the writer in.
const READ_STEP: usize = 4096;

/// One log fragment as posted.
#[derive(Clone, Debug)]
pub struct FragmentPost {
    /// Output or serial.
    pub kind: LogKind,
    /// The agent's fragment number.
    pub number: u64,
    /// The phase.
    pub phase: Name,
    /// Unix microseconds.
    pub timestamp: i64,
    /// The text.
    pub data: Bytes,
    /// The job's run (`JobView::run`; 1 for a job the registry does not know).
    pub run: u32,
}

/// What `GET /v1/result/<id>` needs from this partition.
#[derive(Debug)]
pub struct ResultView {
    /// The merged fields, if any were posted.
    pub fields: Option<Fields>,
    /// `<phase>_output` / `<phase>_serial` texts of the phases that have fragments, in
    /// each stream's newest run.
    pub logs: Vec<(String, String)>,
    /// The newest run with fragments in either stream (`None`: no fragments).
    pub run: Option<u32>,
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

/// One log stream read: the run it shows (`None`: no fragments) and, per phase, (phase,
/// last fragment number or -1, text).
pub type LogAnswer = (Option<u32>, Vec<(&'static str, i64, String)>);

/// Messages to the result actor.
pub enum ResultMsg {
    /// Merge top-level fields (a JSON object's text) into the job's result.
    Merge(JobId, Bytes, RpcReplyPort<Result<Ticket>>),
    /// Append a log fragment; `None` when it was a retry of one already stored.
    AppendLog(JobId, FragmentPost, RpcReplyPort<Result<Option<Ticket>>>),
    /// Append a legacy `/output` chunk to the phase and run given (numbered after that
    /// run's highest fragment so far).
    AppendOutput(JobId, Name, u32, Bytes, RpcReplyPort<Result<Ticket>>),
    /// Consume the unread output: the text and the LSN of the read, or `None` when
    /// nothing new arrived.
    ReadOutput(JobId, RpcReplyPort<Result<Option<(Bytes, Ticket)>>>),
    /// Remove these jobs' results.
    Expire(Vec<JobId>, RpcReplyPort<Result<Ticket>>),
    /// Remove one id's results and logs (an operator's deletion); `None`: there were none.
    Delete(JobId, RpcReplyPort<Result<Option<Ticket>>>),
    /// Remove data of ids no job has whose last write is before this (unix seconds):
    /// how many ids, and the ticket.
    ExpireOrphans(u64, RpcReplyPort<Result<Option<(usize, Ticket)>>>),
    /// Serialise the partition for a snapshot.
    Snapshot(RpcReplyPort<PendingSnapshot>),
}

/// The result actor (no configuration).
pub struct ResultActor;

/// Start-up inputs.
pub struct ResultArgs {
    /// The recovered partition, shared with readers.
    pub results: Shared<Results>,
    /// Where events go.
    pub journal: Journal,
    /// To tell whether an id has a job.
    pub jobs: Jobs,
    /// Room for data of ids without a job.
    pub orphans: Arc<OrphanQuota>,
}

/// The result actor's state.
pub struct ResultState {
    /// The partition (this actor is its only writer), shared with readers.
    results: Shared<Results>,
    /// Journal and how far the partition reaches.
    recorder: Recorder,
    /// To tell whether an id has a job.
    jobs: Jobs,
    /// Room for data of ids without a job.
    quota: Arc<OrphanQuota>,
    /// Ids without a job that have data here, and the bytes charged to the quota for it.
    orphans: FastMap<JobId, u64>,
}

impl ResultState {
    fn record(&mut self, event: Event) -> Result<Ticket> {
        let ticket = self.recorder.append(&event)?;
        self.results.write().apply(&event);
        Ok(ticket)
    }

    /// Before recording `bytes` more for `id`: charges them to the orphan quota when no
    /// job has that id (refused when full). Returns whether it was charged.
    fn charge(&mut self, id: JobId, bytes: u64) -> Result<bool> {
        if self.jobs.contains(id) {
            return Ok(false);
        }
        if self.quota.reserve(bytes).is_err() {
            // Ids that have a job since no longer count: settle them and try again.
            self.adopt();
            self.quota.reserve(bytes)?;
        }
        *self.orphans.entry(id).or_default() += bytes;
        Ok(true)
    }

    /// Gives back the quota of `id` (its data is gone, or a job owns it now).
    fn discharge(&mut self, id: JobId) {
        if let Some(bytes) = self.orphans.remove(&id) {
            self.quota.release(bytes);
        }
    }

    /// Orphans that a job has taken since stop counting.
    fn adopt(&mut self) {
        let adopted: Vec<JobId> = self
            .orphans
            .keys()
            .copied()
            .filter(|id| self.jobs.contains(*id))
            .collect();
        for id in adopted {
            self.discharge(id);
        }
    }

    /// Bytes of `id`'s result fields.
    fn fields_bytes(&self, id: JobId) -> u64 {
        self.results
            .read()
            .get(id)
            .and_then(|d| d.fields.as_ref().map(Fields::bytes))
            .unwrap_or(0)
    }

    /// Corrects an orphan's charge once the outcome is known: gives back `give_back`
    /// bytes and takes `take` instead.
    fn settle(&mut self, id: JobId, give_back: u64, take: u64) {
        if let Some(charged) = self.orphans.get_mut(&id) {
            *charged = charged.saturating_sub(give_back) + take;
            self.quota.release(give_back);
            self.quota.charge(take);
        }
    }

    fn remove(&mut self, ids: Vec<JobId>) -> Result<Ticket> {
        let ticket = self.record(Event::ResultsExpired { ids: ids.clone() })?;
        for id in ids {
            self.discharge(id);
        }
        Ok(ticket)
    }
}

/// Reads of the results partition for handlers, without the result actor.
#[derive(Clone)]
pub struct ResultDocs(Shared<Results>);

impl ResultDocs {
    /// Reads of `results`.
    pub fn new(results: Shared<Results>) -> ResultDocs {
        ResultDocs(results)
    }

    /// Copies the fragments of `id`'s `kind` stream in steps of [`READ_STEP`] (handles,
    /// not text), up to the length the stream had when the copy started.
    async fn copy_stream(&self, id: JobId, kind: LogKind) -> Option<LogStream> {
        let mut copied: Vec<Fragment> = Vec::new();
        let mut end = None;
        loop {
            {
                let results = self.0.read();
                let Some(doc) = results.get(id) else {
                    return end.map(|_| LogStream::from_fragments(copied));
                };
                let all = &doc.log(kind).fragments;
                let end = *end.get_or_insert(all.len());
                let upto = (copied.len() + READ_STEP).min(end).min(all.len());
                copied.extend_from_slice(&all[copied.len()..upto]);
                if upto >= end || upto == all.len() {
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
        Some(LogStream::from_fragments(copied))
    }

    /// The job's result fields and its per-phase log texts, each stream's newest run
    /// (`None`: nothing reported).
    pub async fn view(&self, id: JobId) -> Option<ResultView> {
        let fields = {
            let results = self.0.read();
            results.get(id)?.fields.clone()
        };
        let output = self.copy_stream(id, LogKind::Output).await;
        let serial = self.copy_stream(id, LogKind::Serial).await;
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
                    if let Some((_, text)) = stream.phase_text(run, phase, 0, i64::MIN) {
                        logs.push((format!("{phase}_{suffix}"), text));
                    }
                }
            }
            ResultView {
                fields,
                logs,
                run: newest,
            }
        };
        Some(compose_off_runtime(compose, large).await)
    }

    /// One log stream, filtered, per phase: the run shown and (phase, last fragment
    /// number or -1, text) for each phase.
    pub async fn log(&self, id: JobId, kind: LogKind, query: LogQuery) -> LogAnswer {
        let stream = self.copy_stream(id, kind).await;
        let large = stream
            .as_ref()
            .is_some_and(|s| s.fragments.len() > READ_STEP);
        let compose = move || {
            let run = query
                .run
                .or_else(|| stream.as_ref().and_then(LogStream::latest_run));
            let phases = PHASES
                .iter()
                .filter(|p| query.phase.as_deref().is_none_or(|only| only == **p))
                .map(|phase| {
                    let text = stream
                        .as_ref()
                        .zip(run)
                        .and_then(|(s, run)| s.phase_text(run, phase, query.from, query.since));
                    match text {
                        Some((last, text)) => (*phase, last as i64, text),
                        None => (*phase, -1, String::new()),
                    }
                })
                .collect();
            (run, phases)
        };
        compose_off_runtime(compose, large).await
    }
}

/// Runs `f`, on a blocking thread when `large` (composing a long log takes milliseconds
/// that would otherwise stall one of the few runtime threads; a short one is cheaper
/// than the hand-off).
async fn compose_off_runtime<T: Send + 'static>(
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

impl Actor for ResultActor {
    type Msg = ResultMsg;
    type State = ResultState;
    type Arguments = ResultArgs;

    async fn pre_start(
        &self,
        _: ActorRef<ResultMsg>,
        args: ResultArgs,
    ) -> Result<ResultState, ActorProcessingErr> {
        let mut orphans = FastMap::default();
        for (id, doc) in args.results.read().iter() {
            if !args.jobs.contains(id) {
                let bytes = doc.bytes();
                args.orphans.charge(bytes);
                orphans.insert(id, bytes);
            }
        }
        Ok(ResultState {
            results: args.results,
            recorder: Recorder::new(args.journal),
            jobs: args.jobs,
            quota: args.orphans,
            orphans,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<ResultMsg>,
        msg: ResultMsg,
        state: &mut ResultState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ResultMsg::Merge(id, fields, port) => {
                if gone(&port) {
                    return Ok(());
                }
                // An orphan is charged the post's length up front (a merge never grows
                // the document by more), then what the document holds afterwards.
                let reserved = fields.len() as u64;
                let before = state.fields_bytes(id);
                let result = match state.charge(id, reserved) {
                    Err(e) => Err(e),
                    Ok(orphan) => {
                        let result = state.record(Event::ResultMerged {
                            id,
                            fields,
                            at: now(),
                        });
                        if orphan {
                            let after = state.fields_bytes(id);
                            state.settle(id, reserved + before, after);
                        }
                        result
                    }
                };
                reply(port, result);
            }
            ResultMsg::AppendLog(id, f, port) => {
                if gone(&port) {
                    return Ok(());
                }
                let known = state
                    .results
                    .read()
                    .has_fragment(id, f.kind, f.run, &f.phase, f.number);
                let result = if known {
                    Ok(None)
                } else {
                    let bytes = f.data.len() as u64;
                    match state.charge(id, bytes) {
                        Err(e) => Err(e),
                        Ok(orphan) => {
                            let result = state.record(Event::LogAppended {
                                id,
                                kind: f.kind,
                                phase: f.phase,
                                number: f.number,
                                timestamp: f.timestamp,
                                data: f.data,
                                run: f.run,
                                at: now(),
                            });
                            if orphan && result.is_err() {
                                state.settle(id, bytes, 0);
                            }
                            result.map(Some)
                        }
                    }
                };
                reply(port, result);
            }
            ResultMsg::AppendOutput(id, phase, run, data, port) => {
                if gone(&port) {
                    return Ok(());
                }
                let number = state.results.read().next_output_number(id, run);
                let bytes = data.len() as u64;
                let result = match state.charge(id, bytes) {
                    Err(e) => Err(e),
                    Ok(orphan) => {
                        let result = state.record(Event::LogAppended {
                            id,
                            kind: LogKind::Output,
                            phase,
                            number,
                            timestamp: now_micros(),
                            data,
                            run,
                            at: now(),
                        });
                        if orphan && result.is_err() {
                            state.settle(id, bytes, 0);
                        }
                        result
                    }
                };
                reply(port, result);
            }
            ResultMsg::ReadOutput(id, port) => {
                if gone(&port) {
                    return Ok(());
                }
                let unread = state.results.read().get(id).map(|doc| {
                    let (fragments, upto) = doc.unread_output();
                    let mut text = BytesMut::new();
                    for f in fragments {
                        text.extend_from_slice(&f.data);
                    }
                    (text.freeze(), upto)
                });
                let result = match unread {
                    Some((text, upto)) if !text.is_empty() => state
                        .record(Event::OutputRead { id, upto })
                        .map(|lsn| Some((text, lsn))),
                    _ => Ok(None),
                };
                reply(port, result);
            }
            ResultMsg::Expire(ids, port) => {
                let result = state.remove(ids);
                reply(port, result);
            }
            ResultMsg::Delete(id, port) => {
                let exists = state.results.read().get(id).is_some();
                let result = if exists {
                    state.remove(vec![id]).map(Some)
                } else {
                    Ok(None)
                };
                reply(port, result);
            }
            ResultMsg::ExpireOrphans(cutoff, port) => {
                state.adopt();
                let expired: Vec<JobId> = {
                    let results = state.results.read();
                    state
                        .orphans
                        .keys()
                        .copied()
                        .filter(|id| results.get(*id).is_none_or(|d| d.updated_at < cutoff))
                        .collect()
                };
                let result = if expired.is_empty() {
                    Ok(None)
                } else {
                    let count = expired.len();
                    state.remove(expired).map(|t| Some((count, t)))
                };
                reply(port, result);
            }
            ResultMsg::Snapshot(port) => {
                let pending = state.recorder.snapshot(&*state.results.read());
                reply(port, pending);
            }
        }
        Ok(())
    }
}
