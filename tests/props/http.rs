//! The reference model against a real `flinger` process over HTTP: random submit, pop, cancel,
//! position and result posts (ids in many spellings, agents identified by cookie), every answer
//! compared with the model, then every queue drained in order and every state compared.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{json, Value};

use flinger::model::JobId;

use super::model::{Cancelled, Model, Popped, Submitted};
use super::ops::{id, names, AGENTS, CLIENT_IDS, QUEUES, STATES, UNKNOWN_ID};
use crate::util::{job_id_of, pop_path, Http, TestServer};

/// Servers started per run (each case runs against a fresh one).
const CASES: u32 = 32;

#[derive(Clone, Debug)]
enum HttpOp {
    /// `id`: none (the server picks), one of `CLIENT_IDS`, or the k-th known job's id.
    Submit {
        id: Option<IdPick>,
        queue: usize,
        priority: i64,
        exclude: Vec<usize>,
        spelling: usize,
    },
    Pop {
        queues: Vec<usize>,
        agent: Option<usize>,
    },
    Cancel {
        job: Option<usize>,
        spelling: usize,
    },
    Position {
        job: Option<usize>,
        spelling: usize,
    },
    Report {
        job: usize,
        state: usize,
        spelling: usize,
    },
}

#[derive(Clone, Copy, Debug)]
enum IdPick {
    Client(usize),
    Known(usize),
}

/// Ways Python's `uuid.UUID` (and so Testflinger) lets a client write one id.
fn spell(id: JobId, how: usize) -> String {
    let canonical = id.to_string();
    match how % 5 {
        0 => canonical,
        1 => canonical.to_uppercase(),
        2 => format!("{{{canonical}}}"),
        3 => format!("urn:uuid:{canonical}"),
        _ => canonical.replace('-', ""),
    }
}

fn http_op() -> impl Strategy<Value = HttpOp> {
    let pick = proptest::option::weighted(
        0.4,
        prop_oneof![
            (0..CLIENT_IDS.len()).prop_map(IdPick::Client),
            any::<usize>().prop_map(IdPick::Known),
        ],
    );
    let queues =
        proptest::sample::subsequence((0..QUEUES.len()).collect::<Vec<_>>(), 1..=QUEUES.len())
            .prop_shuffle();
    let job = proptest::option::weighted(0.9, any::<usize>());
    prop_oneof![
        4 => (pick, 0..QUEUES.len(), -2i64..=2, proptest::collection::vec(0..AGENTS.len(), 0..=2), 0..5usize)
            .prop_map(|(id, queue, priority, exclude, spelling)| HttpOp::Submit { id, queue, priority, exclude, spelling }),
        3 => (queues, proptest::option::of(0..AGENTS.len()))
            .prop_map(|(queues, agent)| HttpOp::Pop { queues, agent }),
        1 => (job.clone(), 0..5usize).prop_map(|(job, spelling)| HttpOp::Cancel { job, spelling }),
        1 => (job, 0..5usize).prop_map(|(job, spelling)| HttpOp::Position { job, spelling }),
        1 => (any::<usize>(), 0..STATES.len(), 0..5usize)
            .prop_map(|(job, state, spelling)| HttpOp::Report { job, state, spelling }),
    ]
}

fn known(model: &Model, k: Option<usize>) -> JobId {
    match k {
        Some(k) if !model.known.is_empty() => model.known[k % model.known.len()],
        _ => id(UNKNOWN_ID),
    }
}

async fn pop(http: &Http, queues: &[String], agent: Option<&str>) -> Popped {
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    let cookie = agent.map(|a| format!("agent_name={a}"));
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
    let r = http.get_with_headers(&pop_path(&queues), &headers).await;
    match r.status {
        // Whether it is new or held, the wire shows the same job; the caller compares ids.
        200 => Popped::Dispatched(id(&job_id_of(&r.json()))),
        204 => Popped::Empty,
        s => panic!("pop {queues:?}: status {s}: {}", r.text_preview()),
    }
}

fn same_job(real: Popped, model: Popped) -> bool {
    real.id() == model.id()
}

async fn state_of(http: &Http, id: JobId) -> Option<String> {
    let r = http.get(&format!("/v1/result/{id}")).await;
    match r.status {
        200 => r
            .json()
            .get("job_state")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

async fn run(http: &Http, ops: &[HttpOp]) {
    let mut model = Model::default();
    for op in ops {
        match op {
            HttpOp::Submit {
                id: pick,
                queue,
                priority,
                exclude,
                spelling,
            } => {
                let queue = QUEUES[*queue];
                let exclude = names(exclude, AGENTS);
                let wanted = pick.map(|p| match p {
                    IdPick::Client(k) => id(CLIENT_IDS[k]),
                    IdPick::Known(k) => known(&model, Some(k)),
                });
                let mut job = json!({ "job_queue": queue, "job_priority": priority, "exclude_agents": exclude });
                if let Some(wanted) = wanted {
                    job["job_id"] = json!(spell(wanted, *spelling));
                }
                let got = id(&http.submit(&job).await);
                if let Some(wanted) = wanted {
                    assert_eq!(
                        got, wanted,
                        "the server must normalise the id it was given: {op:?}"
                    );
                }
                let outcome = model.submit(got, queue, *priority, &exclude);
                if outcome == Submitted::Duplicate {
                    // A duplicate keeps the waiting job as it was.
                    let stored = http.get(&format!("/v1/job/{got}")).await.expect_json();
                    assert_eq!(stored["job_queue"], json!(model.jobs[&got].queue), "{op:?}");
                }
            }
            HttpOp::Pop { queues, agent } => {
                let queues = names(queues, QUEUES);
                let agent = agent.map(|a| AGENTS[a]);
                let real = pop(http, &queues, agent).await;
                let expected = model.pop(&queues, agent);
                assert!(
                    same_job(real, expected),
                    "{op:?}: server {real:?}, model {expected:?}"
                );
            }
            HttpOp::Cancel { job, spelling } => {
                let id = known(&model, *job);
                let r = http.cancel(&spell(id, *spelling)).await;
                let real = match r.status {
                    200 => Cancelled::Ok,
                    // Both refusals are 400 (as upstream); the message tells them apart.
                    400 if r.message().starts_with("Job is not found") => Cancelled::NotFound,
                    400 => Cancelled::AlreadyFinished,
                    s => panic!("cancel {id}: status {s}: {}", r.text_preview()),
                };
                assert_eq!(real, model.cancel(id), "{op:?}");
            }
            HttpOp::Position { job, spelling } => {
                let id = known(&model, *job);
                let r = http.position(&spell(id, *spelling)).await;
                let real = match r.status {
                    200 => Some(
                        r.text()
                            .trim()
                            .parse::<usize>()
                            .expect("a position is a number"),
                    ),
                    410 => None,
                    s => panic!("position {id}: status {s}: {}", r.text_preview()),
                };
                assert_eq!(real, model.position(id), "{op:?}");
            }
            // Results may be posted for unknown ids too (Testflinger keeps them); only a job's
            // state is modelled, so report on known jobs.
            HttpOp::Report { .. } if model.known.is_empty() => {}
            HttpOp::Report {
                job,
                state,
                spelling,
            } => {
                let id = known(&model, Some(*job));
                let state = STATES[*state];
                let body = json!({ "job_state": state });
                let path = format!("/v1/result/{}", spell(id, *spelling));
                let status = if model.refuses_report(id, state) {
                    400
                } else {
                    200
                };
                http.post_json(&path, &body).await.expect_status(status);
                model.report(id, state);
                assert_eq!(
                    state_of(http, id).await.as_deref(),
                    model.state(id),
                    "{op:?}"
                );
            }
        }
    }
    for known in model.known.clone() {
        assert_eq!(
            state_of(http, known).await.as_deref(),
            model.state(known),
            "final state of {known}"
        );
    }
    // Drain every queue: the server hands out the rest in the model's order.
    let all: Vec<String> = QUEUES.iter().map(|q| q.to_string()).collect();
    loop {
        let real = pop(http, &all, None).await;
        let expected = model.pop(&all, None);
        assert!(
            same_job(real, expected),
            "draining: server {real:?}, model {expected:?}"
        );
        if expected == Popped::Empty {
            break;
        }
    }
}

proptest! {
    #![proptest_config(Config {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/proptest-regressions/http.txt"))),
        ..Config::default()
    })]

    /// Over real HTTP, the server's answers to random submit/pop/cancel/position/result
    /// sequences and its final queues and states equal the reference model's.
    #[test]
    fn http_answers_agree_with_the_reference_model(ops in proptest::collection::vec(http_op(), 10..50)) {
        let srv = TestServer::start();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(&srv.http(), &ops));
    }
}
