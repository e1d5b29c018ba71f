//! The registry's unit tests: retention, claims, queue indexes built on threads, decoding.

use super::*;

fn submit(registry: &mut Registry, lsn: &mut u64, id: JobId, at: u64) {
    submit_to(registry, lsn, id, at, "q");
}

fn submit_to(registry: &mut Registry, lsn: &mut u64, id: JobId, at: u64, queue: &str) {
    *lsn += 1;
    let sub = Submission {
        id,
        queue: queue.into(),
        body: Bytes::from_static(b"{}"),
        priority: 0,
        exclude: no_names(),
        awaits_attachments: false,
    };
    let Submitted::Record(event) = registry.submit(sub, at) else {
        panic!("duplicate")
    };
    registry.apply(*lsn, &event);
}

#[test]
fn retention_takes_jobs_in_finishing_order_and_skips_resubmitted_ones() {
    let mut registry = Registry::default();
    let mut lsn = 0;
    let ids: Vec<JobId> = (0..3).map(|_| JobId::random()).collect();
    for (t, id) in ids.iter().enumerate() {
        submit(&mut registry, &mut lsn, *id, 0);
        lsn += 1;
        registry.apply(lsn, &registry.cancel(*id, t as u64 + 1).unwrap());
    }
    // The first job is queued again: it is no longer finished, so not expired.
    submit(&mut registry, &mut lsn, ids[0], 5);
    assert_eq!(registry.expired(3, 10), vec![ids[1]]);
    assert_eq!(registry.expired(10, 10), vec![ids[1], ids[2]]);
    lsn += 1;
    registry.apply(lsn, &Event::JobsExpired { ids: vec![ids[1]] });
    assert_eq!(registry.expired(10, 10), vec![ids[2]]);
    assert!(registry.get(ids[0]).is_some_and(|j| j.state.is_waiting()));
    assert_eq!(
        registry.finishing.len(),
        1,
        "stale entries at the front are dropped"
    );
}

/// A claim names the queue the job was reserved in: a job cancelled and resubmitted
/// (same id) to another queue meanwhile is not dispatched to an agent that did not
/// name that queue.
#[test]
fn a_claim_is_refused_when_the_job_now_waits_in_another_queue() {
    let mut registry = Registry::default();
    let mut lsn = 0;
    let id = JobId::random();
    submit_to(&mut registry, &mut lsn, id, 0, "wa");
    assert!(registry.claim(id, "wa", None, 1).is_some());
    lsn += 1;
    registry.apply(lsn, &registry.cancel(id, 1).unwrap());
    submit_to(&mut registry, &mut lsn, id, 2, "wb");
    assert_eq!(registry.claim(id, "wa", Some("dut".into()), 3), None);
    assert!(registry.claim(id, "wb", Some("dut".into()), 3).is_some());
}

/// The queue actors' start on several threads gives each queue the index one thread
/// builds from every waiting job, whatever the number of threads.
#[test]
fn waiting_indexes_on_any_number_of_threads_match_one_built_alone() {
    let mut registry = Registry::default();
    let mut lsn = 0;
    for i in 0..3000u64 {
        let id = JobId::random();
        submit_to(&mut registry, &mut lsn, id, i, &format!("q{}", i % 7));
        if i % 5 == 0 {
            lsn += 1;
            registry.apply(lsn, &registry.cancel(id, i).unwrap());
        }
    }
    let order = |index: &QueueIndex| index.entries().map(|e| e.id).collect::<Vec<_>>();
    let mut alone: Vec<(Name, Vec<JobId>)> = (registry.waiting_entries().into_iter())
        .map(|(queue, entries)| (queue, order(&QueueIndex::from_entries(entries))))
        .collect();
    alone.sort();
    assert_eq!(alone.len(), 7);
    assert_eq!(alone.iter().map(|(_, ids)| ids.len()).sum::<usize>(), 2400);
    for threads in [1, 2, 3, 8] {
        let mut built: Vec<(Name, Vec<JobId>)> = (registry.waiting_indexes(threads))
            .iter()
            .map(|(queue, index)| (queue.clone(), order(index)))
            .collect();
        built.sort();
        assert_eq!(built, alone, "{threads} threads");
    }
}

/// A decoded registry gives the jobs of a queue one shared name, and the jobs
/// without exclusions one shared empty list, as live submissions do.
#[test]
fn decoded_jobs_share_their_queue_name_and_empty_exclusions() {
    let mut registry = Registry::default();
    let mut lsn = 0;
    for i in 0..40u64 {
        submit_to(
            &mut registry,
            &mut lsn,
            JobId::random(),
            i,
            ["a", "b"][i as usize % 2],
        );
    }
    let bytes = rmp_serde::to_vec(&registry).unwrap();
    let decoded = Registry::decode(&bytes).unwrap();
    assert_eq!(decoded.len(), 40);
    for queue in ["a", "b"] {
        let shared = decoded.names.get(queue).expect("the name was kept");
        let jobs: Vec<&Job> = (decoded.jobs.values())
            .map(|job| &**job)
            .filter(|job| &*job.queue == queue)
            .collect();
        assert_eq!(jobs.len(), 20);
        assert!(jobs.iter().all(|job| Arc::ptr_eq(&job.queue, shared)));
        assert!(jobs
            .iter()
            .all(|job| Arc::ptr_eq(&job.exclude, &no_names())));
    }
    // Outside a registry's decoding, names are made as usual, also after one failed.
    assert!(Registry::decode(&bytes[..bytes.len() / 2]).is_err());
    let job: Job = rmp_serde::from_slice(
        &rmp_serde::to_vec(&**decoded.jobs.values().next().unwrap()).unwrap(),
    )
    .unwrap();
    assert!(!decoded.names.iter().any(|n| Arc::ptr_eq(n, &job.queue)));
}

/// A registry with jobs in every kind of state: waiting (some with exclusions, some
/// resubmitted), dispatched and held, cancelled (so `finishing` has entries), with waits.
fn varied(jobs: u64) -> Registry {
    let mut registry = Registry::default();
    let mut lsn = 0;
    for i in 0..jobs {
        let id = JobId::random();
        let queue = ["q0", "q1", "q2", "q3", "q4"][i as usize % 5];
        lsn += 1;
        let sub = Submission {
            id,
            queue: queue.into(),
            body: Bytes::from(format!("{{\"job_queue\":\"{queue}\",\"n\":{i}}}")),
            priority: (i % 3) as i64,
            exclude: if i % 7 == 0 {
                vec![Name::from("agent-x")].into()
            } else {
                no_names()
            },
            awaits_attachments: i % 11 == 0,
        };
        let Submitted::Record(event) = registry.submit(sub, i) else {
            panic!("duplicate")
        };
        registry.apply(lsn, &event);
        let agent = Name::from(format!("agent-{}", i % 13));
        let event = match i % 4 {
            1 => registry.claim(id, queue, Some(agent), i + 1),
            2 => registry.cancel(id, i + 2).ok(),
            _ => None,
        };
        if let Some(event) = event {
            lsn += 1;
            registry.apply(lsn, &event);
        }
    }
    registry
}

/// The job table of a large snapshot decodes in parts on several threads into exactly the
/// registry it decodes to on one, whatever the split.
#[test]
fn a_table_decoded_in_parts_gives_the_registry_decoded_whole() {
    let registry = varied(3000);
    assert!(registry.finishing.len() > 100 && !registry.holding.is_empty());
    let bytes = rmp_serde::to_vec(&registry).unwrap();
    assert!(
        decoding::table(&bytes).is_some(),
        "the positional form has a table"
    );
    let whole = Registry::decode_on(&bytes, 1, 1).unwrap();
    assert_eq!(whole.len(), 3000);
    // The read indexes built in bulk are those the fold kept, job by job.
    assert!(whole.index == registry.index);
    assert!(whole.index.agent_jobs("agent-1").next().is_some());
    for (threads, share) in [(2, 1), (3, 7), (4, 700), (5, 1000), (8, 1)] {
        let parts = Registry::decode_on(&bytes, threads, share).unwrap();
        assert!(parts == whole, "{threads} threads, {share} jobs each");
        assert!(
            parts.index == whole.index,
            "{threads} threads, {share} jobs each"
        );
        let mut rebuilt = parts.clone();
        rebuilt.rebuild_index(threads, share);
        assert!(rebuilt.index == whole.index, "rebuilt on {threads} threads");
    }
    // A registry that differs in one job is not equal (the comparison compares).
    let mut other = whole.clone();
    let (id, _) = other.iter().next().unwrap();
    Arc::make_mut(other.jobs.get_mut(&id).unwrap()).priority += 1;
    assert!(other != whole);
}

/// Damaged bytes: decoded in parts, a registry fails exactly when it fails whole, and
/// otherwise is the same (every cut, and every byte replaced by markers that change
/// lengths and nesting).
#[test]
fn a_damaged_table_fails_in_parts_exactly_when_it_fails_whole() {
    let bytes = rmp_serde::to_vec(&varied(8)).unwrap();
    let same = |damaged: &[u8], what: &str| {
        let whole = Registry::decode_on(damaged, 1, 1);
        let parts = Registry::decode_on(damaged, 3, 1);
        match (whole, parts) {
            (Ok(whole), Ok(parts)) => {
                assert!(whole == parts, "{what}");
                // Lists are keyed by `seq`: damage that gives two jobs one leaves which
                // of them a list keeps to the order they were filed in.
                let mut seqs: Vec<u64> = whole.iter().map(|(_, job)| job.seq).collect();
                seqs.sort_unstable();
                seqs.dedup();
                if seqs.len() == whole.len() {
                    assert!(whole.index == parts.index, "{what}");
                }
            }
            (Err(_), Err(_)) => {}
            (whole, parts) => panic!(
                "{what}: whole {:?}, in parts {:?}",
                whole.err(),
                parts.err()
            ),
        }
    };
    for cut in 0..bytes.len() {
        same(&bytes[..cut], &format!("cut at {cut}"));
    }
    for at in 0..bytes.len() {
        for marker in [0x00, 0x91, 0xc1, 0xc4, 0xdf] {
            let mut damaged = bytes.clone();
            damaged[at] = marker;
            same(&damaged, &format!("byte {at} = {marker:#x}"));
        }
    }
}

/// The jobs an agent was lost on: the agent it left and the one that ended it both list
/// it (the loss that requeued it is kept with the one that ended it), a snapshot's
/// rebuilt index lists the same, and a resubmission forgets them. An agent that took
/// another job loses only its own unfinished jobs.
#[test]
fn lost_jobs_are_listed_by_agent_live_and_rebuilt_and_abandoned_ones_are_decided() {
    let mut registry = Registry::default();
    let mut lsn = 0;
    let (x, y): (Name, Name) = ("x".into(), "y".into());
    let rule = lost::Rule {
        grace: 0,
        requeue: true,
    };
    let [a, b, c] = [0; 3].map(|_| JobId::random());
    for id in [a, b, c] {
        submit(&mut registry, &mut lsn, id, 0);
    }
    macro_rules! record {
        ($event:expr) => {{
            let event: Option<Event> = $event;
            lsn += 1;
            registry.apply(lsn, &event.expect("decided"));
        }};
    }
    record!(registry.claim(a, "q", Some(x.clone()), 1));
    record!(registry.report(a, "setup", 2));
    record!(registry.claim(c, "q", Some(y.clone()), 2));
    record!(registry.report(c, "test", 2));
    // x takes b: a (x's, in setup) is requeued; c (y's) is not x's.
    record!(registry.claim(b, "q", Some(x.clone()), 3));
    let lost = registry.abandoned_by(&x, None, b, &rule, |_| Some(2), 4);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(
        matches!(&lost[0], Event::JobLost { id, requeued: true, took: Some(t), last_heard: 2, .. } if *id == a && *t == b)
    );
    record!(lost.into_iter().next());
    assert!(registry.get(a).is_some_and(|j| j.state.is_waiting()));
    assert!(registry
        .abandoned_by(&x, None, b, &rule, |_| None, 5)
        .is_empty());
    // y takes a and, having left c, loses it; then y takes nothing more and a is lost
    // again (in setup, requeued before): ended.
    record!(registry.claim(a, "q", Some(y.clone()), 6));
    let lost = registry.abandoned_by(&y, None, a, &rule, |_| None, 6);
    assert!(
        matches!(&lost[..], [Event::JobLost { id, requeued: false, .. }] if *id == c),
        "{lost:?}"
    );
    record!(lost.into_iter().next());
    record!(registry.report(a, "setup", 7));
    record!(registry.lose(a, "setup", 7, false, 8));
    let job = registry.get(a).unwrap();
    let loss = job.lost.as_ref().unwrap();
    assert_eq!(loss.agent.as_deref(), Some("y"));
    assert_eq!(loss.dispatched_at, Some(6));
    let earlier = loss.earlier.as_deref().unwrap();
    assert_eq!(
        (earlier.agent.as_deref(), earlier.dispatched_at),
        (Some("x"), Some(1))
    );
    assert_eq!(earlier.phases, vec![(Name::from("setup"), 2)]);
    assert_eq!(job.phases, vec![(Name::from("setup"), 7)]);

    let listed = |registry: &Registry, agent: &str| -> Vec<JobId> {
        registry.index().lost_jobs(agent).collect()
    };
    assert_eq!(listed(&registry, "x"), vec![a]);
    assert_eq!(listed(&registry, "y"), vec![a, c]);
    let bytes = rmp_serde::to_vec(&registry).unwrap();
    let rebuilt = Registry::decode(&bytes).unwrap();
    assert_eq!(listed(&rebuilt, "x"), vec![a]);
    assert_eq!(listed(&rebuilt, "y"), vec![a, c]);

    submit(&mut registry, &mut lsn, a, 9);
    assert!(listed(&registry, "x").is_empty());
    assert_eq!(listed(&registry, "y"), vec![c]);
    lsn += 1;
    registry.apply(lsn, &Event::JobDeleted { id: c });
    assert!(listed(&registry, "y").is_empty());
}
