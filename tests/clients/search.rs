//! Job search (tags, match, state, limit; the search route before job ids) and queue wait
//! time percentiles.

use serde_json::{json, Value};

use super::{assert_iso_z, Agent};
use crate::util::{job_id_of, TestServer};

#[tokio::test]
async fn job_search_filters_by_tags_match_and_state_and_honours_limit() {
    let srv = TestServer::start();
    let ab = srv
        .submit(&json!({"job_queue": "q", "tags": ["a", "b"]}))
        .await;
    let a = srv.submit(&json!({"job_queue": "q", "tags": ["a"]})).await;
    let b = srv.submit(&json!({"job_queue": "q", "tags": ["b"]})).await;
    let ab_cancelled = srv
        .submit(&json!({"job_queue": "q", "tags": ["a", "b", "c"]}))
        .await;
    let untagged = srv.submit_to("q").await;
    srv.cancel(&ab_cancelled).await.expect_status(200);

    let ids = |v: &Value| -> std::collections::BTreeSet<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("a JSON list: {v}"))
            .iter()
            .map(job_id_of)
            .collect()
    };
    let set = |xs: &[&String]| -> std::collections::BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    };

    let all = srv
        .get("/v1/job/search?tags=a&tags=b&match=all")
        .await
        .expect_json();
    assert_eq!(ids(&all), set(&[&ab, &ab_cancelled]));
    for entry in all.as_array().unwrap() {
        assert_iso_z(entry["created_at"].as_str().expect("created_at"));
        assert!(entry["job_state"].is_string(), "{entry}");
    }
    let active = srv
        .get("/v1/job/search?tags=a&match=all&state=active")
        .await
        .expect_json();
    assert_eq!(ids(&active), set(&[&ab, &a]));
    let active_ab = srv
        .get("/v1/job/search?tags=a&tags=b&match=all&state=active")
        .await
        .expect_json();
    assert_eq!(ids(&active_ab), set(&[&ab]));
    let any = srv
        .get("/v1/job/search?tags=a&tags=b&match=any")
        .await
        .expect_json();
    assert_eq!(ids(&any), set(&[&ab, &a, &b, &ab_cancelled]));
    let default_any = srv.get("/v1/job/search?tags=a&tags=b").await.expect_json();
    assert_eq!(ids(&default_any), ids(&any));
    let cancelled = srv
        .get("/v1/job/search?state=cancelled")
        .await
        .expect_json();
    assert_eq!(ids(&cancelled), set(&[&ab_cancelled]));
    let everything = srv.get("/v1/job/search").await.expect_json();
    assert_eq!(
        ids(&everything),
        set(&[&ab, &a, &b, &ab_cancelled, &untagged])
    );

    // limit caps the answer.
    let limited = srv.get("/v1/job/search?tags=a&limit=2").await.expect_json();
    assert_eq!(limited.as_array().unwrap().len(), 2, "{limited}");
    assert!(ids(&limited).is_subset(&ids(&srv.get("/v1/job/search?tags=a").await.expect_json())));
    let one = srv.get("/v1/job/search?limit=1").await.expect_json();
    assert_eq!(one.as_array().unwrap().len(), 1);

    // Bad match/state: 422 as upstream.
    srv.get("/v1/job/search?match=some").await.expect_error(422);
    srv.get("/v1/job/search?state=bogus")
        .await
        .expect_error(422);
}

#[tokio::test]
async fn wait_times_report_percentiles_per_queue_when_jobs_were_dispatched() {
    let srv = TestServer::start();
    assert_eq!(
        srv.get("/v1/queues/wait_times").await.expect_json(),
        json!({})
    );
    let agent = Agent::register(&srv, "dut-1", &["a", "b", "c"]).await;
    for q in ["a", "a", "a", "b"] {
        srv.submit_to(q).await;
    }
    srv.submit_to("c").await; // never dispatched: no data
    for q in ["a", "a", "a", "b"] {
        let id = job_id_of(&agent.pop(&[q]).await.expect("job"));
        agent
            .post_result(&id, json!({"job_state": "complete"}))
            .await;
    }
    let all = srv.get("/v1/queues/wait_times").await.expect_json();
    let map = all.as_object().expect("object");
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["a", "b"],
        "queues without data are omitted: {all}"
    );
    for stats in map.values() {
        let stats = stats.as_object().expect("per-queue object");
        let mut pcts: Vec<&String> = stats.keys().collect();
        pcts.sort_by_key(|k| k.parse::<u32>().unwrap_or(u32::MAX));
        assert_eq!(pcts, vec!["5", "10", "50", "90", "95"], "{all}");
        for v in stats.values() {
            let secs = v
                .as_f64()
                .unwrap_or_else(|| panic!("a number of seconds: {v}"));
            assert!((0.0..60.0).contains(&secs), "{all}");
        }
    }
    let only = srv
        .get("/v1/queues/wait_times?queue=b&queue=c")
        .await
        .expect_json();
    let keys: Vec<&String> = only.as_object().expect("object").keys().collect();
    assert_eq!(keys, vec!["b"], "{only}");
}

#[tokio::test]
async fn job_search_route_wins_when_path_could_be_a_job_id() {
    let srv = TestServer::start();
    let id = srv.submit(&json!({"job_queue": "q", "tags": ["t"]})).await;
    let r = srv.get("/v1/job/search").await;
    let list = r.expect_json();
    assert!(
        list.is_array(),
        "search answers a list, not a job or an id error: {list}"
    );
    let r = srv.get("/v1/job/search?tags=t").await;
    assert_eq!(r.expect_json()[0]["job_id"], id.as_str());
    // The parameterised routes still work around it.
    assert_eq!(
        job_id_of(&srv.get(&format!("/v1/job/{id}")).await.expect_json()),
        id
    );
    srv.get("/v1/job/searc").await.expect_error(400);
}
