//! The result actor: owns the [`Results`] partition (result documents and logs).
//!
//! Decides what a post records (dropping retried log fragments, numbering legacy output
//! chunks, consuming unread output) and applies it after the journal accepted it. A post
//! that adds data is bounded before anything is recorded: per job (`--max-job-data-bytes`,
//! 413) and for everything the partition holds in memory (`--max-results-bytes`, 507,
//! [`Results::held`]); both counts are kept by the fold, so bounding costs no scan.
//!
//! Reads (`GET /v1/result/<id>`, log reads) do not come here: the partition is
//! [`Shared`], and `actors::reads` reads it.
//!
//! Data for ids no job has (orphans) is accepted, as upstream does, but within the
//! shared [`OrphanQuota`], and removed a retention period after its last write. Such an
//! id's results and logs do not live in this partition's memory but in the orphan store
//! (a file per id, `actors::orphans`); the partition keeps its index entry. Posts reach
//! them through [`record`]: the actor answers [`Placed::Apart`] for such an id, and the
//! handler appends in the id's turn (slot from the actor, write and fsync, then the actor
//! logs the new length).

use bytes::{Bytes, BytesMut};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::inbox::{Inbox, Receiver};
use super::orphans::{Slot, Store};
use super::registry::Jobs;
use super::{
    ask, ask_admitted, gone, now, now_micros, reply, Callee, OrphanQuota, PendingSnapshot,
    Recorder, Services, Shared,
};
use crate::error::{Error, Result};
use crate::journal::{Journal, Ticket};
use crate::model::orphans::{encode, Ledger, Record};
use crate::model::results::{fragment_weight, merge_weight, Fields, Fragment, ResultDoc, Results};
use crate::model::{Event, FastMap, JobId, LogKind, Name};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

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

/// Where a post went: recorded by the actor, or (the id's data lives in the orphan store)
/// to be appended there instead.
#[derive(Debug)]
pub enum Placed<T> {
    /// Recorded in the partition.
    Done(T),
    /// Nothing done: the id's data lives in the orphan store (see [`record`]).
    Apart,
}

/// A legacy output read: the text not read before, and the ticket of marking it read.
pub type OutputRead = (Bytes, Ticket);

/// Messages to the result actor.
pub enum ResultMsg {
    /// Merge top-level fields (a JSON object's text) into the job's result.
    Merge(JobId, Bytes, RpcReplyPort<Result<Placed<Ticket>>>),
    /// Append a log fragment; `None` when it was a retry of one already stored.
    AppendLog(
        JobId,
        FragmentPost,
        RpcReplyPort<Result<Placed<Option<Ticket>>>>,
    ),
    /// Append a legacy `/output` chunk to the phase and run given (numbered after that
    /// run's highest fragment so far).
    AppendOutput(
        JobId,
        Name,
        u32,
        Bytes,
        RpcReplyPort<Result<Placed<Ticket>>>,
    ),
    /// Consume the unread output: the text and the LSN of the read, or `None` when
    /// nothing new arrived.
    ReadOutput(JobId, RpcReplyPort<Result<Placed<Option<OutputRead>>>>),
    /// In the id's turn: a slot to append this many bytes to its orphan file (charged to
    /// the orphan quota while no job has the id), or `None` when the id's data lives in
    /// the partition (post it with the messages above).
    Begin(JobId, u64, RpcReplyPort<Result<Option<Slot>>>),
    /// The slot's bytes are durable in the file: log its new length.
    Commit(JobId, u64, RpcReplyPort<Result<Ticket>>),
    /// The slot was not written (or its request went away): give back its charge.
    Abort(JobId, u64),
    /// In the id's turn: the legacy reader consumed the id's orphan output up to this
    /// many fragments; `None` when the id has no orphan file.
    ReadApart(JobId, u64, RpcReplyPort<Result<Option<Ticket>>>),
    /// Remove these jobs' results.
    Expire(Vec<JobId>, RpcReplyPort<Result<Ticket>>),
    /// Remove one id's results and logs (an operator's deletion); `None`: there were none.
    Delete(JobId, RpcReplyPort<Result<Option<Ticket>>>),
    /// Remove data of ids no job has whose last write is before this (unix seconds):
    /// how many ids, and the ticket.
    ExpireOrphans(u64, RpcReplyPort<Result<Option<(usize, Ticket)>>>),
    /// Serialise the partition for a snapshot.
    Snapshot(RpcReplyPort<PendingSnapshot>),
    /// Messages were put in the actor's inbox (handlers' posts; see [`super::Post`]).
    Inbox,
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
    /// The orphan store's files.
    pub store: Arc<Store>,
    /// `--max-job-data-bytes`.
    pub max_job_data: u64,
    /// `--max-results-bytes`.
    pub max_results: u64,
    /// `--retention-secs`, to say in a refusal when room comes back.
    pub retention_secs: u64,
    /// Where handlers' posts wait for the actor's next turn, which takes them all first
    /// (see [`super::Post`]): the posts of many agents cost the actor one turn.
    pub inbox: Arc<Inbox<ResultMsg>>,
}

/// An append handed out and not committed or aborted yet.
struct Open {
    /// Matches the slot's token.
    token: u64,
    /// The file.
    file: Box<str>,
    /// Where the append starts.
    offset: u64,
    /// Its length (charged to the quota when the id has no job).
    len: u64,
    /// Whether the file is new.
    new: bool,
}

/// The result actor's state.
pub struct ResultState {
    /// The partition (this actor is its only writer), shared with readers.
    results: Shared<Results>,
    /// Journal and how far the partition reaches.
    recorder: Recorder,
    /// To tell whether an id has a job.
    jobs: Jobs,
    /// Ids without a job that have data here, charged to the orphan quota.
    ledger: Ledger,
    /// The orphan store's files.
    store: Arc<Store>,
    /// Appends handed out, per id (at most one each: appenders take turns).
    open: FastMap<JobId, Open>,
    /// The next slot's token.
    next_token: u64,
    /// `--max-job-data-bytes`: most bytes of results and logs one id's document holds.
    max_job_data: u64,
    /// `--max-results-bytes`: most bytes of results and logs all documents hold together
    /// ([`Results::held`]): jobs are many and waiting ones never expire, so the per-job
    /// bound alone does not bound the server's memory.
    max_results: u64,
    /// `--retention-secs`.
    retention_secs: u64,
    /// See [`ResultArgs::inbox`]. Closed when the actor stops: what waits in it is
    /// dropped, and its askers see the server shutting down.
    inbox: Receiver<ResultMsg>,
}

impl ResultState {
    /// Before recording up to `adding` more bytes for `id` in the partition: 413 when they
    /// would take its results and logs past `--max-job-data-bytes` (a merge adds at most
    /// its text: replaced keys count whole), 507 when they would take everything held in
    /// memory past `--max-results-bytes`, else [`ResultState::charge`]s them. Whether
    /// they were charged to the orphan quota. O(1): both totals are kept as counters.
    fn make_room(&mut self, id: JobId, adding: u64) -> Result<bool> {
        let (held, total) = {
            let results = self.results.read();
            (results.get(id).map_or(0, |doc| doc.bytes()), results.held())
        };
        self.within_job_bound(id, held, adding)?;
        if total.saturating_add(adding) > self.max_results {
            return Err(results_full(
                total,
                adding,
                self.max_results,
                self.retention_secs,
            ));
        }
        self.charge(id, adding)
    }

    /// 413 when `adding` bytes to job `id`'s `held` would pass `--max-job-data-bytes`.
    fn within_job_bound(&self, id: JobId, held: u64, adding: u64) -> Result<()> {
        if held.saturating_add(adding) > self.max_job_data {
            return Err(Error::TooLarge(format!(
                "job {id}'s results and logs hold {held} bytes; this post would add up to \
                 {adding}, past the limit of {} bytes (--max-job-data-bytes)",
                self.max_job_data
            )));
        }
        Ok(())
    }

    fn record(&mut self, event: Event) -> Result<Ticket> {
        let ticket = self.recorder.append(&event)?;
        self.results.write().apply(&event);
        Ok(ticket)
    }

    /// Whether `id`'s data lives in the orphan store: it has a file there, or nothing is
    /// kept for it and no job has it.
    fn apart(&self, id: JobId) -> bool {
        apart(&self.results.read(), id, &self.jobs)
    }

    /// Before recording `bytes` more for `id` in the partition: charges them to the
    /// orphan quota when no job has that id (refused when full). Whether it was charged.
    fn charge(&mut self, id: JobId, bytes: u64) -> Result<bool> {
        let jobs = &self.jobs;
        self.ledger.reserve(id, bytes, |id| jobs.contains(id))
    }

    /// Bytes of `id`'s result fields.
    fn fields_bytes(&self, id: JobId) -> u64 {
        self.results
            .read()
            .get(id)
            .and_then(|d| d.fields.as_ref().map(Fields::bytes))
            .unwrap_or(0)
    }

    fn remove(&mut self, ids: Vec<JobId>) -> Result<Ticket> {
        let files: Vec<Box<str>> = {
            let results = self.results.read();
            ids.iter()
                .filter_map(|id| results.orphan(*id).map(|e| e.file.clone()))
                .collect()
        };
        let ticket = self.record(Event::ResultsExpired { ids: ids.clone() })?;
        super::delete_when_durable(
            self.recorder.journal(),
            ticket.lsn(),
            self.store.files(),
            files,
        );
        for id in ids {
            self.ledger.discharge(id);
        }
        Ok(ticket)
    }

    /// A slot for appending `len` bytes to `id`'s orphan file, charged to the quota while
    /// no job has the id; `None` when the id's data lives in the partition.
    fn begin(&mut self, id: JobId, len: u64) -> Result<Option<Slot>> {
        if !self.apart(id) {
            return Ok(None);
        }
        // Nothing is written for an append the log could not record anyway.
        self.recorder.journal().writable()?;
        if let Some(stale) = self.open.remove(&id) {
            self.drop_open(id, stale);
        }
        // Data of an id a job has since taken stays in the orphan store and no longer
        // counts against the orphan quota (the job owns it): its job's own bound holds
        // it, as it holds the data kept in the partition.
        if self.jobs.contains(id) {
            let held = self.results.read().orphan(id).map_or(0, |entry| entry.len);
            self.within_job_bound(id, held, len)?;
        }
        self.charge(id, len)?;
        let (file, offset, new) = match self.results.read().orphan(id) {
            Some(entry) => (entry.file.clone(), entry.len, false),
            None => (
                format!("{id}.orphan.{}", uuid::Uuid::new_v4().simple()).into_boxed_str(),
                0,
                true,
            ),
        };
        self.next_token += 1;
        let token = self.next_token;
        self.open.insert(
            id,
            Open {
                token,
                file: file.clone(),
                offset,
                len,
                new,
            },
        );
        Ok(Some(Slot {
            id,
            token,
            file,
            offset,
            new,
        }))
    }

    /// Gives back an abandoned append's charge (and its new file, which nothing refers to).
    fn drop_open(&mut self, id: JobId, open: Open) {
        self.ledger.settle(id, open.len, 0);
        if open.new {
            self.store.discard(vec![open.file]);
        }
    }

    /// Logs the append of slot `token` as done.
    fn commit(&mut self, id: JobId, token: u64) -> Result<Ticket> {
        let open = match self.open.remove(&id) {
            Some(open) if open.token == token => open,
            other => {
                if let Some(other) = other {
                    self.open.insert(id, other);
                }
                return Err(Error::Unavailable(
                    "the append to this id's data was abandoned; nothing was recorded, try again"
                        .into(),
                ));
            }
        };
        let continues = {
            let results = self.results.read();
            match results.orphan(id) {
                Some(entry) => entry.file == open.file && entry.len == open.offset,
                None => open.offset == 0 && results.get(id).is_none(),
            }
        };
        if !continues {
            self.drop_open(id, open);
            return Err(Error::Unavailable(
                "this id's data was removed while the post was written; nothing was recorded, try again"
                    .into(),
            ));
        }
        let result = self.record(Event::OrphanAppended {
            id,
            file: open.file.clone(),
            offset: open.offset,
            len: open.len,
            at: now(),
        });
        match &result {
            Ok(_) => {
                // Its charge went meanwhile (the id's data expired before this landed):
                // the bytes are kept, so they count again.
                if !self.ledger.contains(id) && !self.jobs.contains(id) {
                    self.ledger.count(id, open.len);
                }
            }
            Err(_) => self.drop_open(id, open),
        }
        result
    }
}

/// The refusal of a post past `--max-results-bytes`: 507, since the post itself is
/// acceptable but the room the server keeps for results and logs is used up. Only
/// removing documents gives room back: retention's removal of finished jobs (their
/// results and logs go with them), an operator's deletion of a job, and the expiry of
/// data of ids no job has; waiting and running jobs keep theirs.
fn results_full(held: u64, adding: u64, limit: u64, retention_secs: u64) -> Error {
    Error::NoSpace(format!(
        "The server holds as many results and logs as it may: all jobs' result fields and \
         log fragments in memory take {held} bytes, and this post would add up to {adding}, \
         past the limit of {limit} bytes (--max-results-bytes); nothing was recorded. Room \
         comes back as finished jobs are removed with their results and logs, \
         {retention_secs} s after they finish (--retention-secs), or deleted by an \
         operator (DELETE /v1/job/<id>); waiting and running jobs keep theirs"
    ))
}

/// What a handler posts to a job's results.
pub enum Post {
    /// Top-level fields to merge (a JSON object's text).
    Merge(Bytes),
    /// A log fragment.
    Log(FragmentPost),
    /// A legacy output chunk: phase, run, text.
    Output(Name, u32, Bytes),
}

impl Post {
    /// The post as an orphan file record.
    fn record(&self) -> Record {
        match self {
            Post::Merge(fields) => Record::Merged {
                fields: fields.clone(),
            },
            Post::Log(f) => Record::Logged {
                kind: f.kind,
                fragment: Fragment {
                    number: f.number,
                    phase: f.phase.clone(),
                    timestamp: f.timestamp,
                    data: f.data.clone(),
                    run: f.run,
                },
            },
            Post::Output(phase, run, data) => Record::Output {
                phase: phase.clone(),
                timestamp: now_micros(),
                data: data.clone(),
                run: *run,
            },
        }
    }
}

/// Gives back a slot's charge if its request ends before the commit was answered (sent
/// the way the slot's `Begin` went, so the actor sees it after it).
struct Abandon<'a> {
    actor: &'a super::Door<ResultMsg>,
    slot: Option<(JobId, u64)>,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some((id, token)) = self.slot.take() {
            self.actor.send(ResultMsg::Abort(id, token));
        }
    }
}

/// Records `post` for `id` where its data lives: in the result partition, or appended to
/// its orphan file (durably, in the id's turn). Returns the ticket to wait for (`None`: a
/// retried fragment already stored). `pass`: admission already taken for this request
/// (see [`ask_admitted`]).
pub async fn record(
    svc: &Services,
    id: JobId,
    post: Post,
    pass: Option<OwnedSemaphorePermit>,
) -> Result<Option<Ticket>> {
    let mut pass = Some(pass);
    let store = svc.result_docs.store();
    // The id's place changes only when a job takes or leaves it: a few tries settle it.
    for _ in 0..3 {
        let admitted = match pass.take() {
            Some(pass) => pass,
            None => svc.results.admit()?,
        };
        if svc.result_docs.apart(id, &svc.jobs) {
            let _turn = store.turn(id).await;
            let bytes = encode(&post.record());
            let len = bytes.len() as u64;
            match ask_admitted(&svc.results, admitted, |p| ResultMsg::Begin(id, len, p)).await?? {
                Some(slot) => {
                    let mut abandon = Abandon {
                        actor: &svc.results,
                        slot: Some((id, slot.token)),
                    };
                    store.append(&slot, bytes).await?;
                    // Not refused at the door: the slot's charge is settled only here.
                    let ticket =
                        ask_admitted(&svc.results, None, |p| ResultMsg::Commit(id, slot.token, p))
                            .await;
                    // Answered: the actor settled the slot either way.
                    abandon.slot = None;
                    return ticket?.map(Some);
                }
                None => continue,
            }
        }
        let placed = match &post {
            Post::Merge(fields) => ask_admitted(&svc.results, admitted, |p| {
                ResultMsg::Merge(id, fields.clone(), p)
            })
            .await??
            .map(Some),
            Post::Log(f) => {
                ask_admitted(&svc.results, admitted, |p| {
                    ResultMsg::AppendLog(id, f.clone(), p)
                })
                .await??
            }
            Post::Output(phase, run, data) => ask_admitted(&svc.results, admitted, |p| {
                ResultMsg::AppendOutput(id, phase.clone(), *run, data.clone(), p)
            })
            .await??
            .map(Some),
        };
        if let Placed::Done(ticket) = placed {
            return Ok(ticket);
        }
    }
    Err(Error::Unavailable(
        "this id's data moved while it was posted (a job took or left the id); nothing was recorded, try again"
            .into(),
    ))
}

impl<T> Placed<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Placed<U> {
        match self {
            Placed::Done(t) => Placed::Done(f(t)),
            Placed::Apart => Placed::Apart,
        }
    }
}

/// The legacy `/output` read: the output of `id` not read yet, marked read (the text and
/// the ticket of the read), or `None` when nothing new arrived.
pub async fn read_output(svc: &Services, id: JobId) -> Result<Option<OutputRead>> {
    if let Placed::Done(read) = ask(&svc.results, |p| ResultMsg::ReadOutput(id, p)).await?? {
        return Ok(read);
    }
    let store = svc.result_docs.store();
    let _turn = store.turn(id).await;
    let Some(doc) = svc.result_docs.orphan_doc(id).await? else {
        return Ok(None);
    };
    let (text, upto) = unread_text(&doc);
    if text.is_empty() {
        return Ok(None);
    }
    Ok(ask(&svc.results, |p| ResultMsg::ReadApart(id, upto, p))
        .await??
        .map(|ticket| (text, ticket)))
}

/// The output a legacy reader has not consumed in `doc`, and the new cursor.
fn unread_text(doc: &ResultDoc) -> (Bytes, u64) {
    let (fragments, upto) = doc.unread_output();
    let mut text = BytesMut::new();
    for f in fragments {
        text.extend_from_slice(&f.data);
    }
    (text.freeze(), upto)
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
        let mut ledger = Ledger::new(args.orphans);
        {
            let results = args.results.read();
            // Counted here, once, rather than by the first post.
            results.held();
            for (id, doc) in results.iter() {
                if !args.jobs.contains(id) {
                    ledger.count(id, doc.bytes());
                }
            }
            for (id, entry) in results.orphans() {
                if !args.jobs.contains(id) {
                    ledger.count(id, entry.len);
                }
            }
        }
        Ok(ResultState {
            results: args.results,
            recorder: Recorder::new(args.journal),
            jobs: args.jobs,
            ledger,
            store: args.store,
            open: FastMap::default(),
            next_token: 0,
            max_job_data: args.max_job_data,
            max_results: args.max_results,
            retention_secs: args.retention_secs,
            inbox: Receiver::new(args.inbox),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<ResultMsg>,
        msg: ResultMsg,
        state: &mut ResultState,
    ) -> Result<(), ActorProcessingErr> {
        // What waits in the inbox came before this message (see `actors::inbox`).
        let mut taken = state.inbox.take();
        for waiting in taken.drain(..) {
            handle_message(state, waiting);
        }
        state.inbox.reuse(taken);
        handle_message(state, msg);
        Ok(())
    }
}

/// Whether `id`'s data lives in the orphan store: it has a file there, or `results` keeps
/// nothing for it and no job has it.
pub(super) fn apart(results: &Results, id: JobId, jobs: &Jobs) -> bool {
    results.orphan(id).is_some() || (results.get(id).is_none() && !jobs.contains(id))
}

/// The port of a post the partition is to record, or `None` when the post is done with:
/// its client went away (skipped, unapplied), or the id's data lives in the orphan store
/// (answered [`Placed::Apart`]: the handler appends it there, see [`record`]).
fn placed_here<T: Send + 'static>(
    state: &ResultState,
    id: JobId,
    port: RpcReplyPort<Result<Placed<T>>>,
) -> Option<RpcReplyPort<Result<Placed<T>>>> {
    if gone(&port) {
        return None;
    }
    if state.apart(id) {
        reply(port, Ok(Placed::Apart));
        return None;
    }
    Some(port)
}

/// One message's handling, from the mailbox or the inbox.
fn handle_message(state: &mut ResultState, msg: ResultMsg) {
    match msg {
        ResultMsg::Merge(id, fields, port) => {
            let Some(port) = placed_here(state, id, port) else {
                return;
            };
            // An id without a job (its data kept here since before it lost its job)
            // is charged the post's weight up front (a merge never grows the
            // document by more), then what the document holds afterwards.
            let reserved = merge_weight(&fields);
            let before = state.fields_bytes(id);
            let result = match state.make_room(id, reserved) {
                Err(e) => Err(e),
                Ok(orphan) => {
                    let result = state.record(Event::ResultMerged {
                        id,
                        fields,
                        at: now(),
                    });
                    if orphan {
                        let after = state.fields_bytes(id);
                        state.ledger.settle(id, reserved + before, after);
                    }
                    result
                }
            };
            reply(port, result.map(Placed::Done));
        }
        ResultMsg::AppendLog(id, f, port) => {
            let Some(port) = placed_here(state, id, port) else {
                return;
            };
            let known = state
                .results
                .read()
                .has_fragment(id, f.kind, f.run, &f.phase, f.number);
            let result = if known {
                Ok(None)
            } else {
                let bytes = fragment_weight(f.data.len(), &f.phase);
                match state.make_room(id, bytes) {
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
                            state.ledger.settle(id, bytes, 0);
                        }
                        result.map(Some)
                    }
                }
            };
            reply(port, result.map(Placed::Done));
        }
        ResultMsg::AppendOutput(id, phase, run, data, port) => {
            let Some(port) = placed_here(state, id, port) else {
                return;
            };
            let number = state.results.read().next_output_number(id, run);
            let bytes = fragment_weight(data.len(), &phase);
            let result = match state.make_room(id, bytes) {
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
                        state.ledger.settle(id, bytes, 0);
                    }
                    result
                }
            };
            reply(port, result.map(Placed::Done));
        }
        ResultMsg::ReadOutput(id, port) => {
            if gone(&port) {
                return;
            }
            if state.results.read().orphan(id).is_some() {
                reply(port, Ok(Placed::Apart));
                return;
            }
            let unread = state.results.read().get(id).map(unread_text);
            let result = match unread {
                Some((text, upto)) if !text.is_empty() => state
                    .record(Event::OutputRead { id, upto })
                    .map(|lsn| Some((text, lsn))),
                _ => Ok(None),
            };
            reply(port, result.map(Placed::Done));
        }
        ResultMsg::Begin(id, len, port) => {
            if gone(&port) {
                return;
            }
            let result = state.begin(id, len);
            reply(port, result);
        }
        ResultMsg::Commit(id, token, port) => {
            if gone(&port) {
                // Its client went away: not done (the bytes past the recorded length
                // are overwritten by the next append).
                if let Some(open) = state.open.remove(&id) {
                    if open.token == token {
                        state.drop_open(id, open);
                    } else {
                        state.open.insert(id, open);
                    }
                }
                return;
            }
            let result = state.commit(id, token);
            reply(port, result);
        }
        ResultMsg::Abort(id, token) => {
            if let Some(open) = state.open.remove(&id) {
                if open.token == token {
                    state.drop_open(id, open);
                } else {
                    state.open.insert(id, open);
                }
            }
        }
        ResultMsg::ReadApart(id, upto, port) => {
            if gone(&port) {
                return;
            }
            let kept = state.results.read().orphan(id).is_some();
            let result = if kept {
                state.record(Event::OutputRead { id, upto }).map(Some)
            } else {
                Ok(None)
            };
            reply(port, result);
        }
        ResultMsg::Expire(ids, port) => {
            let result = state.remove(ids);
            reply(port, result);
        }
        ResultMsg::Delete(id, port) => {
            let exists = state.results.read().has(id);
            let result = if exists {
                state.remove(vec![id]).map(Some)
            } else {
                Ok(None)
            };
            reply(port, result);
        }
        ResultMsg::ExpireOrphans(cutoff, port) => {
            let expired: Vec<JobId> = {
                let results = state.results.read();
                let (jobs, open) = (&state.jobs, &state.open);
                state
                    .ledger
                    .stale(
                        cutoff,
                        |id| jobs.contains(id),
                        |id| {
                            results
                                .get(id)
                                .map(|d| d.updated_at)
                                .or_else(|| results.orphan(id).map(|e| e.at))
                        },
                    )
                    .into_iter()
                    // An append in flight is a write now.
                    .filter(|id| !open.contains_key(id))
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
        // Only wakes the actor: the turn took the inbox first.
        ResultMsg::Inbox => {}
    }
}
