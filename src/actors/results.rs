//! The result actor: owns the [`Results`] partition (result documents and logs).
//!
//! Decides what a post records (dropping retried log fragments, numbering legacy output
//! chunks, consuming unread output) and applies it after the journal accepted it.

use bytes::{Bytes, BytesMut};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::{now, now_micros, reply, PendingSnapshot, Recorder};
use crate::error::Result;
use crate::journal::{Journal, Ticket};
use crate::model::job::PHASES;
use crate::model::results::Results;
use crate::model::{Event, JobId, LogKind, Name};

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

/// What `GET /v1/result/<id>` needs from this actor, computed here so a poll never
/// copies a job's whole log.
#[derive(Debug)]
pub struct ResultView {
    /// The merged fields (JSON object text), if any were posted.
    pub fields: Option<Bytes>,
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
    /// The job's result fields and its per-phase log texts (`None`: nothing reported).
    View(JobId, RpcReplyPort<Option<ResultView>>),
    /// One log stream, filtered, per phase.
    Log(JobId, LogKind, LogQuery, RpcReplyPort<LogAnswer>),
    /// Remove these jobs' results.
    Expire(Vec<JobId>, RpcReplyPort<Result<Ticket>>),
    /// Serialise the partition for a snapshot.
    Snapshot(RpcReplyPort<PendingSnapshot>),
}

/// The result actor (no configuration).
pub struct ResultActor;

/// The result actor's state.
pub struct ResultState {
    /// The partition.
    results: Results,
    /// Journal and how far the partition reaches.
    recorder: Recorder,
}

impl ResultState {
    fn record(&mut self, event: Event) -> Result<Ticket> {
        let ticket = self.recorder.append(&event)?;
        self.results.apply(&event);
        Ok(ticket)
    }
}

impl Actor for ResultActor {
    type Msg = ResultMsg;
    type State = ResultState;
    type Arguments = (Results, Journal);

    async fn pre_start(
        &self,
        _: ActorRef<ResultMsg>,
        (results, journal): Self::Arguments,
    ) -> Result<ResultState, ActorProcessingErr> {
        Ok(ResultState {
            results,
            recorder: Recorder::new(journal),
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
                let result = state.record(Event::ResultMerged {
                    id,
                    fields,
                    at: now(),
                });
                reply(port, result);
            }
            ResultMsg::AppendLog(id, f, port) => {
                let result = if state
                    .results
                    .has_fragment(id, f.kind, f.run, &f.phase, f.number)
                {
                    Ok(None)
                } else {
                    state
                        .record(Event::LogAppended {
                            id,
                            kind: f.kind,
                            phase: f.phase,
                            number: f.number,
                            timestamp: f.timestamp,
                            data: f.data,
                            run: f.run,
                        })
                        .map(Some)
                };
                reply(port, result);
            }
            ResultMsg::AppendOutput(id, phase, run, data, port) => {
                let number = state.results.next_output_number(id, run);
                let result = state.record(Event::LogAppended {
                    id,
                    kind: LogKind::Output,
                    phase,
                    number,
                    timestamp: now_micros(),
                    data,
                    run,
                });
                reply(port, result);
            }
            ResultMsg::ReadOutput(id, port) => {
                let unread = state.results.get(id).map(|doc| {
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
            ResultMsg::View(id, port) => {
                let view = state.results.get(id).map(|doc| {
                    let mut logs = Vec::new();
                    let mut newest = None;
                    for (kind, suffix) in [(LogKind::Output, "output"), (LogKind::Serial, "serial")]
                    {
                        let stream = doc.log(kind);
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
                        fields: doc.fields.clone(),
                        logs,
                        run: newest,
                    }
                });
                reply(port, view);
            }
            ResultMsg::Log(id, kind, query, port) => {
                let stream = state.results.get(id).map(|doc| doc.log(kind));
                let run = query.run.or_else(|| stream.and_then(|s| s.latest_run()));
                let phases = PHASES
                    .iter()
                    .filter(|p| query.phase.as_deref().is_none_or(|only| only == **p))
                    .map(|phase| {
                        let text = stream
                            .zip(run)
                            .and_then(|(s, run)| s.phase_text(run, phase, query.from, query.since));
                        match text {
                            Some((last, text)) => (*phase, last as i64, text),
                            None => (*phase, -1, String::new()),
                        }
                    })
                    .collect();
                reply(port, (run, phases));
            }
            ResultMsg::Expire(ids, port) => {
                let result = state.record(Event::ResultsExpired { ids });
                reply(port, result);
            }
            ResultMsg::Snapshot(port) => {
                reply(port, state.recorder.snapshot(&state.results));
            }
        }
        Ok(())
    }
}
