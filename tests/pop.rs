//! Handing jobs to agents (`GET /v1/job?queue=..`): FIFO within a queue, oldest first across the
//! named queues (upstream starved later queues), exactly-once delivery under concurrency, and
//! queue position (`GET /v1/job/<id>/position`).

use std::collections::HashSet;

use serde_json::json;

use crate::util::{job_id_of, new_id, TestServer};

#[tokio::test]
async fn pop_is_rejected_with_400_when_no_queue_is_named() {
    let srv = TestServer::start();
    for path in ["/v1/job", "/v1/job?", "/v1/job?foo=bar", "/v1/job?queues=q"] {
        let r = srv.get(path).await;
        assert_eq!(
            r.expect_error(400),
            "No queue(s) specified in request",
            "GET {path}"
        );
    }
}

#[tokio::test]
async fn pop_returns_204_with_empty_body_when_nothing_is_waiting() {
    let srv = TestServer::start();
    srv.get("/v1/job?queue=BAD_QUEUE_NAME")
        .await
        .expect_no_content();
    srv.get("/v1/job?queue=a&queue=b").await.expect_no_content();
    // A job in another queue is not visible.
    srv.submit_to("other").await;
    srv.get("/v1/job?queue=a&queue=b").await.expect_no_content();
}

#[tokio::test]
async fn pop_returns_the_stored_job_when_one_is_waiting() {
    let srv = TestServer::start();
    let id = srv
        .submit(&json!({"job_queue": "q", "test_data": {"test_cmds": "true"}}))
        .await;
    let stored = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    let r = srv.get("/v1/job?queue=q").await;
    let mut popped = r.expect_json();
    assert!(popped.is_object(), "pop returns one job object: {popped}");
    // The stored job plus when it was dispatched (as HEAD's pop answer).
    let started_at = popped.as_object_mut().unwrap().remove("started_at");
    assert!(started_at.is_some_and(|at| at.as_str().is_some_and(|at| at.ends_with('Z'))));
    assert_eq!(popped, stored);
    assert_eq!(job_id_of(&popped), id);
}

#[tokio::test]
async fn pop_is_fifo_when_one_queue_has_several_jobs() {
    let srv = TestServer::start();
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(srv.submit(&json!({"job_queue": "q", "n": n})).await);
    }
    for (n, id) in ids.iter().enumerate() {
        let job = srv.pop(&["q"]).await.expect("job waiting");
        assert_eq!(job_id_of(&job), *id);
        assert_eq!(job["n"], n);
    }
    assert_eq!(srv.pop(&["q"]).await, None);
}

#[tokio::test]
async fn pop_returns_older_job_of_later_queue_when_queues_are_listed_newest_first() {
    let srv = TestServer::start();
    let b1 = srv.submit_to("b").await;
    let a1 = srv.submit_to("a").await;
    assert_eq!(
        srv.pop_id(&["a", "b"]).await,
        Some(b1),
        "oldest job across queues first"
    );
    assert_eq!(srv.pop_id(&["a", "b"]).await, Some(a1));
    assert_eq!(srv.pop(&["a", "b"]).await, None);
}

#[tokio::test]
async fn pop_interleaves_queues_by_age_when_both_have_many_jobs() {
    let srv = TestServer::start();
    let mut expected = Vec::new();
    for n in 0..6 {
        let queue = if n % 2 == 0 { "a" } else { "b" };
        expected.push(srv.submit(&json!({"job_queue": queue, "n": n})).await);
        srv.submit_to("c").await; // not named by the poller
    }
    let mut got = Vec::new();
    for n in 0..6 {
        // Alternate the parameter order: the answer must not depend on it.
        let queues: &[&str] = if n % 2 == 0 { &["b", "a"] } else { &["a", "b"] };
        got.push(srv.pop_id(queues).await.expect("job waiting"));
    }
    assert_eq!(got, expected);
    assert_eq!(srv.pop(&["a", "b"]).await, None);
    assert_eq!(
        srv.pop(&["c"]).await.map(|j| j["job_queue"].clone()),
        Some(json!("c"))
    );
}

#[tokio::test]
async fn pop_serves_any_named_queue_when_three_are_listed() {
    let srv = TestServer::start();
    let z = srv.submit_to("z").await;
    let y = srv.submit_to("y").await;
    assert_eq!(srv.pop_id(&["x", "y", "z"]).await, Some(z));
    assert_eq!(srv.pop_id(&["x", "y", "z"]).await, Some(y));
    assert_eq!(srv.pop(&["x", "y", "z"]).await, None);
}

#[tokio::test]
async fn popped_job_is_never_returned_again_and_is_running_when_popped() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    assert_eq!(srv.job_state(&id).await, "waiting");
    assert_eq!(srv.pop_id(&["q"]).await, Some(id.clone()));
    assert_eq!(srv.job_state(&id).await, "running");
    for _ in 0..3 {
        assert_eq!(srv.pop(&["q"]).await, None);
    }
    // Still readable by id after being popped.
    let job = srv.get(&format!("/v1/job/{id}")).await.expect_json();
    assert_eq!(job_id_of(&job), id);
}

#[tokio::test]
async fn same_queue_named_twice_yields_one_job_when_popped() {
    let srv = TestServer::start();
    let id = srv.submit_to("q").await;
    assert_eq!(srv.pop_id(&["q", "q"]).await, Some(id));
    assert_eq!(srv.pop(&["q", "q"]).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_poppers_get_each_job_exactly_once_when_eight_pop_four_hundred() {
    let srv = TestServer::start();
    let http = srv.http();
    let mut submits = Vec::new();
    for chunk in 0..8 {
        let http = http.clone();
        submits.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in 0..50 {
                let queue = if n % 2 == 0 { "even" } else { "odd" };
                ids.push(
                    http.submit(&json!({"job_queue": queue, "chunk": chunk, "n": n}))
                        .await,
                );
            }
            ids
        }));
    }
    let mut submitted = HashSet::new();
    for s in submits {
        for id in s.await.unwrap() {
            assert!(submitted.insert(id), "duplicate id from submit");
        }
    }
    assert_eq!(submitted.len(), 400);

    let mut poppers = Vec::new();
    for _ in 0..8 {
        let http = http.clone();
        poppers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(id) = http.pop_id(&["even", "odd"]).await {
                got.push(id);
            }
            got
        }));
    }
    let mut popped = Vec::new();
    for p in poppers {
        popped.extend(p.await.unwrap());
    }
    let distinct: HashSet<String> = popped.iter().cloned().collect();
    assert_eq!(
        popped.len(),
        400,
        "every job handed out exactly once (got {} pops)",
        popped.len()
    );
    assert_eq!(
        distinct, submitted,
        "the popped ids are exactly the submitted ones"
    );
    assert_eq!(srv.pop(&["even", "odd"]).await, None);
}

#[tokio::test]
async fn position_counts_from_zero_when_three_jobs_wait_in_one_queue() {
    let srv = TestServer::start();
    let mut ids = Vec::new();
    for expected in 0..3 {
        let id = srv.submit_to("q").await;
        let r = srv.position(&id).await;
        r.expect_status(200);
        assert_eq!(
            r.text(),
            expected.to_string(),
            "position right after submission"
        );
        ids.push(id);
    }
    for (expected, id) in ids.iter().enumerate() {
        let r = srv.position(id).await;
        r.expect_status(200);
        assert_eq!(r.text(), expected.to_string());
    }
}

#[tokio::test]
async fn position_moves_up_when_first_job_is_popped() {
    let srv = TestServer::start();
    let first = srv.submit_to("q").await;
    let second = srv.submit_to("q").await;
    let third = srv.submit_to("q").await;
    assert_eq!(srv.pop_id(&["q"]).await, Some(first.clone()));
    let r = srv.position(&second).await;
    r.expect_status(200);
    assert_eq!(r.text(), "0");
    let r = srv.position(&third).await;
    r.expect_status(200);
    assert_eq!(r.text(), "1");
    srv.position(&first).await.expect_error(410);
}

#[tokio::test]
async fn position_ignores_other_queues_when_they_have_older_jobs() {
    let srv = TestServer::start();
    srv.submit_to("other").await;
    srv.submit_to("other").await;
    let id = srv.submit_to("mine").await;
    let r = srv.position(&id).await;
    r.expect_status(200);
    assert_eq!(r.text(), "0");
}

#[tokio::test]
async fn position_is_410_when_job_is_popped_cancelled_or_unknown() {
    let srv = TestServer::start();
    let popped = srv.submit_to("q").await;
    let cancelled = srv.submit_to("q").await;
    let waiting = srv.submit_to("q").await;
    assert_eq!(srv.pop_id(&["q"]).await, Some(popped.clone()));
    srv.cancel(&cancelled).await.expect_status(200);
    srv.position(&popped).await.expect_error(410);
    srv.position(&cancelled).await.expect_error(410);
    srv.position(&new_id()).await.expect_error(410);
    let r = srv.position(&waiting).await;
    r.expect_status(200);
    assert_eq!(r.text(), "0", "the cancelled job no longer counts");
}

#[tokio::test]
async fn position_is_400_when_id_is_malformed() {
    let srv = TestServer::start();
    for id in ["foo", "00000000-0000-0000-0000-00000000000X", "12"] {
        srv.position(id).await.expect_error(400);
    }
}

/// A pop of one queue has its queue actor reserve the job and forward the claim to the
/// registry (`actors::queue::Feed::pop`). When the pop went away before the registry
/// got to it, the registry must give the reservation back, or the job would wait reserved
/// forever. Driven in-process so the claim can reach the registry with its caller gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_claim_whose_pop_went_away_gives_the_job_back() {
    use flinger::actors::ask;
    use flinger::actors::queue::Pop;
    use flinger::actors::registry::RegistryMsg;
    use ractor::Actor;

    let core = crate::util::InProcess::start().await;
    let (http, svc) = (&core.http, &core.services);

    let job = http.submit_to("q").await;
    let queue = svc.queues.get("q").expect("the queue has an actor");
    // A pop whose claim the queue actor forwards to a stand-in for the registry, which
    // hands it over here: the job is reserved and the claim in hand ...
    let (claims, mut claimed) = tokio::sync::mpsc::unbounded_channel();
    let (stand_in, _) = Actor::spawn(None, StandIn, claims).await.unwrap();
    let (port, answer) = tokio::sync::oneshot::channel();
    let handed = queue.pop(Box::new(Pop {
        queue: "q".into(),
        rest: Default::default(),
        queues: vec!["q".into()],
        best: None,
        agent: None,
        client: None,
        registry: stand_in.clone().into(),
        waiters: svc.dispatch.clone(),
        port: port.into(),
    }));
    assert!(handed.is_ok(), "the queue's actor is running");
    let claim = claimed
        .recv()
        .await
        .expect("the queue actor forwards the claim");
    assert_eq!(claim.id.to_string(), job);
    assert_eq!(&**claim.reserved.queue(), "q");
    // ... and the pop goes away before the registry gets the claim.
    drop(answer);
    svc.registry.cast(RegistryMsg::Claim(claim)).unwrap();
    // Any answered request to the registry comes after the claim in its mailbox, so the
    // claim was handled (and its release sent to the queue actor) before the pop below.
    let unknown = flinger::model::JobId::random();
    let _ = ask(&*svc.registry, |p| RegistryMsg::Cancel(unknown, p)).await;

    assert_eq!(
        http.job_state(&job).await,
        "waiting",
        "the gone pop did not dispatch it"
    );
    let popped = http.get("/v1/job?queue=q").await;
    assert_eq!(
        job_id_of(&popped.expect_json()),
        job,
        "the job was given back"
    );
    core.stop().await;
}

/// Stands in for the registry: hands every claim it gets to the test.
struct StandIn;

impl ractor::Actor for StandIn {
    type Msg = flinger::actors::registry::RegistryMsg;
    type State = tokio::sync::mpsc::UnboundedSender<flinger::actors::registry::Claim>;
    type Arguments = Self::State;

    async fn pre_start(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        claims: Self::Arguments,
    ) -> Result<Self::State, ractor::ActorProcessingErr> {
        Ok(claims)
    }

    async fn handle(
        &self,
        _: ractor::ActorRef<Self::Msg>,
        msg: Self::Msg,
        claims: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        if let flinger::actors::registry::RegistryMsg::Claim(claim) = msg {
            let _ = claims.send(claim);
        }
        Ok(())
    }
}

/// A queue actor stopping as idle drops the pops still in its inbox. A pop of several
/// queues that met such an actor first must try again without it, not answer "no job"
/// while another of its queues has one (an agent long-polling would then sleep until its
/// deadline). Driven in-process on one thread, so the registry stops the idle queue's actor
/// between the pop's lookup of the queues and that actor's turn.
#[tokio::test]
async fn a_pop_dropped_by_a_queue_actor_stopping_as_idle_tries_the_other_queues_again() {
    use flinger::actors::registry::RegistryMsg;
    use std::time::Duration;

    let core = crate::util::InProcess::start().await;
    let (http, svc) = (&core.http, &core.services);
    let idle = http.submit_to("idle").await;
    http.cancel(&idle).await.expect_status(200);
    let job = http.submit_to("busy").await;
    assert!(
        svc.queues.get("idle").is_some(),
        "the idle queue still has its actor"
    );

    // The registry will stop every queue actor without waiting jobs ...
    svc.registry
        .cast(RegistryMsg::StopIdleQueues(Duration::ZERO))
        .unwrap();
    // ... after the pop has looked up both queues and sent itself to the idle one first.
    let queues = ["idle".into(), "busy".into()];
    let popped = {
        let pop = flinger::dispatch::pop(svc, &queues, None, None);
        tokio::pin!(pop);
        tokio::select! {
            biased;
            _ = &mut pop => panic!("the pop answered before any actor's turn"),
            () = std::future::ready(()) => {}
        }
        pop.await.unwrap().expect("the busy queue's job")
    };
    let popped: serde_json::Value = serde_json::from_slice(&popped).unwrap();
    assert_eq!(popped["job_id"], job.as_str());
    assert!(
        svc.queues.get("idle").is_none(),
        "the idle queue's actor was stopped"
    );
    core.stop().await;
}

/// A `queue=` whose escapes decode to bytes that are not UTF-8 is a 400 naming the
/// problem, as such a path is (read leniently, `%ff` would pop the queue named U+FFFD);
/// the same on the dashboard, whose queue page also holds the API's name rules.
#[tokio::test]
async fn pop_and_pages_refuse_query_escapes_that_are_not_utf8() {
    let srv = TestServer::start();
    let id = srv.submit_to("\u{fffd}").await;
    for path in ["/v1/job?queue=%ff", "/v1/job?queue=a%C3", "/jobs?state=%ff"] {
        let message = srv.get(path).await.expect_error(400);
        assert!(message.contains("UTF-8"), "{path}: {message}");
    }
    assert_eq!(
        srv.pop_id(&["\u{fffd}"]).await,
        Some(id),
        "the job is still there for its real name"
    );
    let message = srv.get("/queues/%00").await.expect_error(400);
    assert!(message.contains("control character"), "{message}");
}

/// A HEAD of a pop or of the legacy output read is refused (405) and changes nothing: axum
/// answers HEAD with the GET handler and no body, so the job was dispatched (its state
/// `running`) and the output marked read, with nothing delivered.
#[tokio::test]
async fn head_of_a_pop_or_output_read_is_405_and_dispatches_or_consumes_nothing() {
    let srv = TestServer::start();
    let id = srv.submit_to("head-q").await;
    let r = srv
        .request("HEAD", "/v1/job?queue=head-q", &[], Vec::new())
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(srv.job_state(&id).await, "waiting");
    assert_eq!(srv.pop_id(&["head-q"]).await.as_deref(), Some(id.as_str()));

    let output = format!("/v1/result/{}/output", new_id());
    srv.post_raw(&output, Some("text/plain"), b"chunk".to_vec())
        .await
        .expect_status(200);
    let r = srv.request("HEAD", &output, &[], Vec::new()).await;
    assert_eq!(r.status, 405);
    let r = srv.get(&output).await;
    r.expect_status(200);
    assert_eq!(&r.body[..], b"chunk");
    // Reads that change nothing still answer HEAD.
    let r = srv
        .request("HEAD", &format!("/v1/job/{id}"), &[], Vec::new())
        .await;
    assert_eq!(r.status, 200);
}
