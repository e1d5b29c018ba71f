//! Tests of the job index: lists, bulk building, owners' weights and queue charges, agents' lists, searches.

use super::*;

fn index_with(jobs: &[(u64, &str, &str)]) -> (JobIndex, Vec<JobId>) {
    let mut index = JobIndex::default();
    let mut ids = Vec::new();
    for &(seq, state, tags) in jobs {
        let id = JobId::random();
        let tags: Vec<&str> = tags.split(',').filter(|t| !t.is_empty()).collect();
        let body = serde_json::json!({"job_queue": "q", "tags": tags}).to_string();
        index.insert(id, seq, &Name::from("q"), state, body.as_bytes(), None);
        ids.push(id);
    }
    (index, ids)
}

/// One list of an index: its kind, its key and its entries in order.
type List = (String, String, Vec<(u64, JobId)>);

/// Every list of an index, in a form that compares (its maps iterate in random order).
fn lists(index: &JobIndex) -> Vec<List> {
    let mut out = Vec::new();
    let mut put = |kind: &str, map: &FastMap<Name, SeqList>| {
        for (key, list) in map {
            let entries = list.iter().map(|(s, id)| (*s, *id)).collect();
            out.push((kind.to_owned(), key.to_string(), entries));
        }
    };
    put("queue", &index.by_queue);
    put("tag", &index.by_tag);
    put("state", &index.by_state);
    let waiting = (index.live.iter()).map(|(q, l)| (q.clone(), l.waiting.clone()));
    put("waiting", &waiting.collect());
    let active = (index.live.iter()).map(|(q, l)| (q.clone(), l.active.clone()));
    put("active", &active.collect());
    out.sort();
    out
}

#[test]
fn an_index_built_in_bulk_equals_one_built_job_by_job() {
    let states = ["waiting", "resubmitted", "running", "complete", "cancelled"];
    let queues = [Name::from("q1"), Name::from("q2"), Name::from("q3")];
    let jobs: Vec<(JobId, u64, Name, &str, String)> = (0..500u64)
        // Out of sequence order, as a hash map yields them.
        .map(|i| (i * 7919) % 500)
        .map(|seq| {
            let tags = match seq % 4 {
                0 => serde_json::json!(["a", "b", "a"]),
                1 => serde_json::json!(["b"]),
                _ => serde_json::json!([]),
            };
            let body = serde_json::json!({"job_queue": "q", "tags": tags}).to_string();
            let queue = queues[(seq % 3) as usize].clone();
            (
                JobId::random(),
                seq,
                queue,
                states[(seq % 5) as usize],
                body,
            )
        })
        .collect();
    let owners = [Some(Name::from("alice")), Some(Name::from("bob")), None];
    let owner = |seq: u64| owners[(seq % 3) as usize].as_ref();
    let mut one_by_one = JobIndex::default();
    for (id, seq, queue, state, body) in &jobs {
        one_by_one.insert(*id, *seq, queue, state, body.as_bytes(), owner(*seq));
    }
    // In three parts, as threads decoding or walking shares of the jobs gather them.
    let mut parts: Vec<PartIndex> = (0..3).map(|_| PartIndex::default()).collect();
    for (n, (id, seq, q, state, body)) in jobs.iter().enumerate() {
        parts[n % 3].add(
            *id,
            *seq,
            q,
            state,
            body.as_bytes(),
            owner(*seq),
            AgentLinks::default(),
        );
    }
    let bulk = JobIndex::from_parts(parts);
    assert_eq!(lists(&bulk), lists(&one_by_one));
    assert_eq!(bulk.weights, one_by_one.weights);
    assert_eq!(bulk.owner_queues, one_by_one.owner_queues);
    assert!(lists(&bulk).iter().any(|(kind, _, _)| kind == "active"));
    assert_eq!(bulk.tag_len("a"), 125);
}

#[test]
fn owners_weights_follow_their_jobs_and_sum_to_the_whole() {
    let mut index = JobIndex::default();
    let (q, alice) = (Name::from("q"), Name::from("alice"));
    let bodies: [&[u8]; 3] = [b"{\"a\": 1}", b"{\"bb\": 22}", b"{}"];
    index.insert(JobId::random(), 1, &q, "waiting", bodies[0], Some(&alice));
    index.insert(JobId::random(), 2, &q, "waiting", bodies[1], Some(&alice));
    index.insert(JobId::random(), 3, &q, "waiting", bodies[2], None);
    let alices = job_weight(bodies[0]) + job_weight(bodies[1]);
    // Each owner is charged the queue its jobs are in, once.
    assert_eq!(index.owner_weight(Some(&alice)), alices + QUEUE_OVERHEAD);
    assert_eq!(
        index.owner_weight(None),
        job_weight(bodies[2]) + QUEUE_OVERHEAD
    );
    assert_eq!(index.owner_weight(Some(&Name::from("bob"))), 0);
    assert_eq!(alices + job_weight(bodies[2]), index.weights.total());
    assert!(index.owner_in_queue(Some(&alice), "q"));
    assert!(!index.owner_in_queue(Some(&alice), "other"));
    // A job of its in another queue: that queue is charged too, until it leaves.
    let other = Name::from("other");
    index.insert(
        JobId::random(),
        4,
        &other,
        "waiting",
        bodies[2],
        Some(&alice),
    );
    let with_other = alices + job_weight(bodies[2]) + 2 * QUEUE_OVERHEAD;
    assert_eq!(index.owner_weight(Some(&alice)), with_other);
    index.remove(4, "other", "waiting", bodies[2], Some(&alice));
    assert_eq!(index.owner_weight(Some(&alice)), alices + QUEUE_OVERHEAD);
    index.remove(1, "q", "waiting", bodies[0], Some(&alice));
    assert_eq!(
        index.owner_weight(Some(&alice)),
        job_weight(bodies[1]) + QUEUE_OVERHEAD
    );
    index.remove(2, "q", "waiting", bodies[1], Some(&alice));
    assert_eq!(index.owner_weight(Some(&alice)), 0);
    assert!(index.weights.owners() == 1, "gone with its jobs");
    assert_eq!(index.owner_queues.0.len(), 1, "gone with its jobs");
}

#[test]
fn agent_lists_keep_the_newest_dispatches_first_and_bounded() {
    let mut index = JobIndex::default();
    let agent = Name::from("a1");
    let ids: Vec<JobId> = (0..AGENT_RECENT + 5).map(|_| JobId::random()).collect();
    for id in &ids {
        index.dispatched(&agent, *id);
    }
    let listed: Vec<JobId> = index.agent_jobs("a1").collect();
    assert_eq!(listed.len(), AGENT_RECENT);
    assert_eq!(listed[0], *ids.last().unwrap());
    assert!(!listed.contains(&ids[0]), "the oldest dispatches fall off");
    index.dispatched(&agent, ids[10]);
    assert_eq!(index.agent_jobs("a1").next(), Some(ids[10]));
    assert_eq!(index.agent_jobs("a1").count(), AGENT_RECENT);
    for id in &ids {
        index.undispatched("a1", *id);
    }
    assert_eq!(index.agent_jobs("a1").count(), 0);
    assert!(index.by_agent.is_empty(), "an empty list leaves the map");
}

#[test]
fn live_lists_hold_only_unfinished_jobs_split_into_waiting_and_active() {
    let (mut index, ids) = index_with(&[
        (1, "waiting", ""),
        (2, "resubmitted", ""),
        (3, "complete", ""),
    ]);
    let q = Name::from("q");
    let counts = |index: &JobIndex| {
        index
            .live_of("q")
            .map_or((0, 0), |l| (l.waiting.len(), l.active.len()))
    };
    assert_eq!(counts(&index), (2, 0));
    index.restate(ids[0], 1, &q, "waiting", "running");
    index.restate(ids[0], 1, &q, "running", "provision");
    assert_eq!(counts(&index), (1, 1));
    assert_eq!(index.live_of("q").unwrap().waiting.keys().next(), Some(&2));
    index.restate(ids[0], 1, &q, "provision", "cancelled");
    index.remove(2, "q", "resubmitted", b"{}", None);
    assert_eq!(counts(&index), (0, 0));
    assert!(
        index.live_of("q").is_none(),
        "an empty queue leaves the live map"
    );
    assert_eq!(index.live().count(), 0);
    let states: Vec<(String, usize)> = index
        .state_counts()
        .map(|(l, n)| (l.to_string(), n))
        .collect();
    assert!(states.contains(&("cancelled".into(), 1)) && states.contains(&("complete".into(), 1)));
}

fn run(index: &JobIndex, search: &Search, states: &FastMap<JobId, Name>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut before = u64::MAX;
    while let Some(next) = search.step(
        index,
        before,
        2,
        |id| states.get(&id).cloned(),
        |_, seq| {
            out.push(seq);
            true
        },
    ) {
        before = next;
    }
    out
}

#[test]
fn searches_match_any_all_and_state_newest_first_across_steps() {
    let jobs = [
        (1, "waiting", "a"),
        (2, "complete", "a,b"),
        (3, "running", "b"),
        (4, "cancelled", "a,b,c"),
        (5, "waiting", ""),
    ];
    let (index, ids) = index_with(&jobs);
    let states: FastMap<JobId, Name> = ids
        .iter()
        .zip(jobs.iter())
        .map(|(id, j)| (*id, Name::from(j.1)))
        .collect();
    let tags = |t: &[&str]| t.iter().map(|t| Name::from(*t)).collect();
    let search = |t: &[&str], all: bool, s: &[&str]| Search {
        tags: tags(t),
        match_all: all,
        states: s.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(
        run(&index, &search(&["a", "b"], false, &[]), &states),
        [4, 3, 2, 1]
    );
    assert_eq!(
        run(&index, &search(&["a", "b"], true, &[]), &states),
        [4, 2]
    );
    assert_eq!(
        run(&index, &search(&["a"], false, &["active"]), &states),
        [1]
    );
    assert_eq!(
        run(&index, &search(&[], false, &["active"]), &states),
        [5, 3, 1]
    );
    assert_eq!(
        run(&index, &search(&[], false, &[]), &states),
        [5, 4, 3, 2, 1]
    );
    assert_eq!(
        run(&index, &search(&["a", "z"], true, &[]), &states),
        Vec::<u64>::new()
    );
    assert_eq!(
        run(&index, &search(&["z"], false, &[]), &states),
        Vec::<u64>::new()
    );
    assert_eq!(
        run(&index, &search(&["c", "a"], true, &["cancelled"]), &states),
        [4]
    );
}

#[test]
fn a_search_with_a_limit_visits_only_what_it_returns() {
    let jobs: Vec<(u64, &str, &str)> = (0..10_000).map(|s| (s, "waiting", "x")).collect();
    let (index, _) = index_with(&jobs);
    let search = Search {
        tags: vec![Name::from("x")],
        states: vec!["waiting".into()],
        ..Search::default()
    };
    let visited = std::cell::Cell::new(0);
    let mut emitted = 0;
    let resume = search.step(
        &index,
        u64::MAX,
        usize::MAX,
        |_| {
            visited.set(visited.get() + 1);
            Some(Name::from("waiting"))
        },
        |_, _| {
            emitted += 1;
            false // limit=1: enough after the first
        },
    );
    assert_eq!((resume, emitted, visited.get()), (None, 1, 1));
}
