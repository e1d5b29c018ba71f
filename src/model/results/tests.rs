//! Tests of the result partition: documents, fragments, the counters of bytes held, orphans.

use super::*;

#[test]
fn top_level_members_are_counted_outside_strings_and_nested_values() {
    for (text, members) in [
        (r#"{}"#, 0),
        (r#"{"a":1}"#, 1),
        (r#"{"t":"12:34:56","u":"http://x:80/"}"#, 2),
        (r#"{"a":{"b":1,"c":[{"d":2}]},"e":"\":\\"}"#, 2),
        (r#" { "k:1" : "v:2" , "x" : [ ":" ] } "#, 2),
    ] {
        assert_eq!(super::top_level_members(text.as_bytes()), members, "{text}");
        let parsed: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).unwrap();
        assert_eq!(parsed.len() as u64, members, "{text}");
    }
}

/// The held-bytes count is kept by pushes (retries not counted twice) and counted
/// afresh after a snapshot round trip, always the sum of the fragments' weights.
#[test]
fn log_bytes_stay_the_sum_of_the_fragments_weights() {
    let piece = |number: u64, data: &'static str| Fragment {
        number,
        phase: Name::from("test"),
        timestamp: 0,
        data: Bytes::from_static(data.as_bytes()),
        run: first_run(),
    };
    let sum = |s: &LogStream| s.fragments.iter().map(Fragment::weight).sum::<u64>();
    // Each fragment also costs its phase name ("test") and the fixed overhead.
    let each = 4 + ENTRY_OVERHEAD;
    let mut stream = LogStream::default();
    assert!(stream.push(piece(0, "abc")));
    assert_eq!(stream.bytes(), 3 + each);
    assert!(stream.push(piece(1, "defgh")));
    assert!(!stream.push(piece(1, "defgh")), "a retry");
    assert_eq!(stream.bytes(), 8 + 2 * each);
    assert_eq!(stream.clone().bytes(), 8 + 2 * each);
    let loaded: LogStream = rmp_serde::from_slice(&rmp_serde::to_vec(&stream).unwrap()).unwrap();
    assert_eq!(loaded.bytes(), sum(&loaded));
    let mut loaded = loaded;
    assert!(loaded.push(piece(2, "")), "an empty fragment");
    assert_eq!(loaded.bytes(), 8 + 3 * each, "is not free");
    assert_eq!(loaded.bytes(), sum(&loaded));
}

/// A field's charge is kept by merges (new keys, replaced values growing or
/// shrinking) and by the handler's own insertions, always what counting afresh gives.
#[test]
fn fields_bytes_stay_what_counting_the_members_gives() {
    let counted = |f: &Fields| {
        f.iter()
            .map(|(k, v)| (k.len() + v.len()) as u64 + ENTRY_OVERHEAD)
            .sum::<u64>()
    };
    let mut fields = Fields::parse(br#"{"a":"long value","b":1}"#).unwrap();
    assert_eq!(fields.bytes(), 1 + 12 + 1 + 1 + 2 * ENTRY_OVERHEAD);
    fields.merge(Fields::parse(br#"{"a":0,"c":[1,2]}"#).unwrap());
    assert_eq!(fields.bytes(), counted(&fields));
    fields.insert_first("job_state", Bytes::from_static(b"\"waiting\""));
    fields.insert_first("job_state", Bytes::from_static(b"\"x\""));
    fields.insert("b", Bytes::from_static(b"12345"));
    assert_eq!(fields.bytes(), counted(&fields));
    assert_eq!(fields.len(), 4);
    let loaded: Fields = rmp_serde::from_slice(&rmp_serde::to_vec(&fields).unwrap()).unwrap();
    assert_eq!(loaded.bytes(), counted(&fields));
    assert_eq!(loaded, fields);
}

/// The partition's total ([`Results::held`], what `--max-results-bytes` bounds) is kept
/// by every event, live or replayed, whether counted before them or only after (a load),
/// and is always the sum of its documents' charges: retries add nothing, a merge
/// replacing a value may shrink it, a removal gives the document's charge back, and
/// data in the orphan store (on disk) is not counted.
#[test]
fn the_held_total_is_kept_by_every_event_and_is_the_sum_of_the_documents() {
    let (a, b, orphan) = (JobId::random(), JobId::random(), JobId::random());
    let sum = |r: &Results| r.iter().map(|(_, d)| d.bytes()).sum::<u64>();
    let events = [
        fragment(a, 1, 0, "abc"),
        fragment(a, 1, 0, "abc"),
        fragment(b, 1, 0, "defgh"),
        Event::ResultMerged {
            id: a,
            fields: Bytes::from_static(br#"{"k":"a long value here"}"#),
            at: 0,
        },
        Event::ResultMerged {
            id: a,
            fields: Bytes::from_static(br#"{"k":0}"#),
            at: 0,
        },
        Event::ResultMerged {
            id: b,
            fields: Bytes::from_static(b"[1]"),
            at: 0,
        },
        Event::OrphanAppended {
            id: orphan,
            file: "f".into(),
            offset: 0,
            len: 1000,
            at: 0,
        },
        fragment(a, 2, 0, "run 2"),
        Event::ResultsExpired { ids: vec![b] },
        Event::ResultsExpired {
            ids: vec![b, orphan],
        },
    ];
    // Counted from the start (a live server), and only after a prefix (a load).
    for counted_after in 0..=events.len() {
        let mut results = Results::default();
        for (i, event) in events.iter().enumerate() {
            if i == counted_after {
                assert_eq!(results.held(), sum(&results));
            }
            results.apply(event);
            if i >= counted_after {
                assert_eq!(results.held(), sum(&results), "after event {i}");
            }
        }
        assert_eq!(results.held(), sum(&results));
    }
    let mut results = Results::default();
    for event in &events[..8] {
        results.apply(event);
    }
    let a_bytes = (3 + 4 + ENTRY_OVERHEAD) + (5 + 4 + ENTRY_OVERHEAD) + (1 + 1 + ENTRY_OVERHEAD);
    let b_bytes = 5 + 4 + ENTRY_OVERHEAD;
    assert_eq!(
        results.held(),
        a_bytes + b_bytes,
        "the orphan file not counted"
    );
    let loaded: Results = rmp_serde::from_slice(&rmp_serde::to_vec(&results).unwrap()).unwrap();
    assert_eq!(
        loaded.held(),
        a_bytes + b_bytes,
        "counted afresh after a load"
    );
    results.apply(&events[8]);
    assert_eq!(results.held(), a_bytes);
}

fn merge(results: &mut Results, id: JobId, json: &str) {
    results.apply(&Event::ResultMerged {
        id,
        fields: Bytes::from(json.to_owned()),
        at: 0,
    });
}

#[test]
fn merges_are_shallow_and_keep_key_order() {
    let id = JobId::random();
    let mut results = Results::default();
    merge(
        &mut results,
        id,
        r#"{"foo":"test","job_state":"waiting","n":{"a":1}}"#,
    );
    merge(&mut results, id, r#"{"job_state":"provision","n":{"b":2}}"#);
    let text = results.get(id).unwrap().fields.as_ref().unwrap().to_json();
    assert_eq!(
        &text[..],
        br#"{"foo":"test","job_state":"provision","n":{"b":2}}"#
    );
}

#[test]
fn snapshots_of_the_text_layout_decode_into_members() {
    // The layout of snapshot version 2: the merged object as one JSON text.
    #[derive(Serialize)]
    struct OldDoc {
        fields: Option<Bytes>,
        output: LogStream,
        serial: LogStream,
        output_read: u64,
    }
    let old = OldDoc {
        fields: Some(Bytes::from_static(br#"{"b":[1, 2],"a":{"x":null}}"#)),
        output: LogStream::default(),
        serial: LogStream::default(),
        output_read: 3,
    };
    let doc: ResultDoc = rmp_serde::from_slice(&rmp_serde::to_vec(&old).unwrap()).unwrap();
    let fields = doc.fields.clone().unwrap();
    assert_eq!(&fields.to_json()[..], br#"{"b":[1, 2],"a":{"x":null}}"#);
    assert_eq!((doc.output_read, doc.updated_at), (3, 0));
    // And the new layout round-trips.
    let again: ResultDoc = rmp_serde::from_slice(&rmp_serde::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(again.fields, Some(fields));
}

#[test]
fn retried_fragments_are_stored_once() {
    let id = JobId::random();
    let mut results = Results::default();
    let fragment = Event::LogAppended {
        id,
        kind: LogKind::Output,
        phase: "test".into(),
        number: 0,
        timestamp: 0,
        data: Bytes::from_static(b"x"),
        run: 1,
        at: 0,
    };
    results.apply(&fragment);
    results.apply(&fragment);
    assert_eq!(results.get(id).unwrap().output.fragments.len(), 1);
}

#[test]
fn logs_written_before_runs_were_kept_apart_still_replay_and_load() {
    // A `LogAppended` record as older builds wrote it (named fields, no `run`).
    #[derive(Serialize)]
    #[allow(dead_code)]
    enum Old {
        JobSubmitted,
        JobDispatched,
        JobCancelled,
        JobStateReported,
        AttachmentsArrived,
        JobsExpired,
        ResultMerged,
        LogAppended {
            id: JobId,
            kind: LogKind,
            phase: Name,
            number: u64,
            timestamp: i64,
            data: Bytes,
        },
    }
    let id = JobId::random();
    let old = Old::LogAppended {
        id,
        kind: LogKind::Output,
        phase: "test".into(),
        number: 0,
        timestamp: 5,
        data: Bytes::from_static(b"old\n"),
    };
    let event = crate::journal::decode(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
    let mut results = Results::default();
    results.apply(&event);
    // Taken as the job's first run: a retry of the same fragment is still dropped.
    results.apply(&fragment(id, 1, 0, "old\n"));
    let stream = &results.get(id).unwrap().output;
    assert_eq!(stream.fragments.len(), 1);
    assert_eq!(
        stream.phase_text(1, "test", 0, i64::MIN).unwrap().1,
        "old\n"
    );

    // A snapshot's log stream in the older positional layout.
    #[derive(Serialize)]
    struct OldFragment {
        number: u64,
        phase: Name,
        timestamp: i64,
        data: Bytes,
    }
    #[derive(Serialize)]
    struct OldStream {
        fragments: Vec<OldFragment>,
        seen: FastSet<(Name, u64)>,
    }
    let mut seen = FastSet::default();
    seen.insert((Name::from("test"), 3));
    let old = OldStream {
        fragments: vec![OldFragment {
            number: 3,
            phase: "test".into(),
            timestamp: 0,
            data: Bytes::from_static(b"x"),
        }],
        seen,
    };
    let mut stream: LogStream = rmp_serde::from_slice(&rmp_serde::to_vec(&old).unwrap()).unwrap();
    assert_eq!(stream.latest_run(), Some(1));
    assert!(stream.contains(1, "test", 3));
    assert!(!stream.push(Fragment {
        number: 3,
        phase: "test".into(),
        timestamp: 0,
        data: Bytes::from_static(b"x"),
        run: 1,
    }));
}

fn fragment(id: JobId, run: u32, number: u64, data: &'static str) -> Event {
    Event::LogAppended {
        id,
        kind: LogKind::Output,
        phase: "test".into(),
        number,
        timestamp: 0,
        data: Bytes::from_static(data.as_bytes()),
        run,
        at: 0,
    }
}

#[test]
fn each_run_keeps_its_own_log_and_late_retries_of_older_runs_are_dropped() {
    let id = JobId::random();
    let mut results = Results::default();
    for event in [
        fragment(id, 1, 0, "run1\n"),
        fragment(id, 2, 0, "run2\n"),
        fragment(id, 2, 0, "run2\n"),
        fragment(id, 1, 0, "run1\n"),
        fragment(id, 1, 1, "late\n"),
    ] {
        results.apply(&event);
    }
    let stream = &results.get(id).unwrap().output;
    assert_eq!(stream.fragments.len(), 3);
    assert_eq!(stream.latest_run(), Some(2));
    assert_eq!(
        stream.phase_text(2, "test", 0, i64::MIN).unwrap().1,
        "run2\n"
    );
    assert_eq!(
        stream.phase_text(1, "test", 0, i64::MIN).unwrap(),
        (1, "run1\nlate\n".to_owned())
    );
    assert_eq!(results.next_output_number(id, 2), 1);
    assert_eq!(results.next_output_number(id, 3), 0);
}

#[test]
fn a_read_mark_resumes_after_what_was_copied_unless_the_stream_began_again() {
    let fragment = |number: u64, text: &str| Fragment {
        number,
        phase: Name::from("test"),
        timestamp: 7,
        data: Bytes::copy_from_slice(text.as_bytes()),
        run: 1,
    };
    let mut stream: Vec<Fragment> = (0..3).map(|n| fragment(n, "x")).collect();
    assert_eq!(ReadMark::default().resume(&stream), 0);
    let mark = ReadMark::at(&stream, 2);
    assert_eq!(mark.resume(&stream), 2);
    stream.push(fragment(3, "y"));
    assert_eq!(mark.resume(&stream), 2, "the stream grew");
    assert_eq!(ReadMark::at(&stream, 0).resume(&stream), 0);
    // Removed and posted again: the same numbers and times, other texts.
    let again: Vec<Fragment> = (0..4).map(|n| fragment(n, "x")).collect();
    assert_eq!(mark.resume(&again), 0);
    assert_eq!(mark.resume(&again[..1]), 0, "shorter than the mark");
}
