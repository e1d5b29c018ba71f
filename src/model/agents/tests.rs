//! The agents partition's bounds, running counts and indexes, each held to what reading
//! every record says.

use super::*;

#[test]
fn an_agent_has_left_a_job_only_when_it_posted_idle_or_another_job_after_last_heard() {
    let job = JobId::random();
    let record = |fields: String, updated_at: u64| AgentRecord {
        fields: Bytes::from(fields),
        updated_at,
        ..AgentRecord::default()
    };
    let running = format!(r#"{{"state":"test","job_id":"{job}"}}"#);
    let restarted = format!(r#"{{"state":"waiting","job_id":"{job}"}}"#);
    let upper = format!(
        r#"{{"state":"setup","job_id":"{}"}}"#,
        job.to_string().to_uppercase()
    );
    let other = format!(r#"{{"state":"setup","job_id":"{}"}}"#, JobId::random());
    assert!(!record(running, 20).left_job(job, 10), "still on it");
    assert!(
        !record(upper, 20).left_job(job, 10),
        "the same job, spelt otherwise"
    );
    assert!(
        record(restarted.clone(), 20).left_job(job, 10),
        "started again"
    );
    assert!(
        record(other.clone(), 20).left_job(job, 10),
        "took another job"
    );
    assert!(
        record(restarted.clone(), 10).left_job(job, 10),
        "in the second it was last heard"
    );
    assert!(
        !record(restarted, 9).left_job(job, 10),
        "not before it was last heard"
    );
    assert!(
        !record(other, 9).left_job(job, 10),
        "not after it was last heard"
    );
}

fn update(name: &str) -> Event {
    Event::AgentUpdated {
        name: Name::from(name),
        fields: Bytes::from_static(br#"{"state":"waiting"}"#),
        at: 1,
        by: None,
    }
}

#[test]
fn agent_data_is_bounded_in_total_bytes() {
    let mut agents = Agents::default();
    // One buffer shared by every queue's images: counted for each, allocated once.
    let big = Bytes::from(vec![b'x'; 4 << 20]);
    let images = |q: usize| Event::ImagesAdvertised {
        queue: Name::from(format!("q{q}").as_str()),
        images: big.clone(),
    };
    let fit = MAX_AGENT_DATA_BYTES / big.len();
    for q in 0..fit {
        agents.admit(&images(q), MAX_AGENTS).unwrap();
        agents.apply(&images(q));
    }
    assert_eq!(agents.held_bytes(), fit * big.len());
    let refused = agents.admit(&images(fit), MAX_AGENTS).unwrap_err();
    assert!(
        matches!(refused, Error::NoSpace(_)) && refused.message().contains("agent data is full"),
        "{refused:?}"
    );
    // Replacing a queue's images with as many bytes adds nothing: let in.
    agents.admit(&images(0), MAX_AGENTS).unwrap();
    // Records and provision entries count too.
    assert!(matches!(
        agents.admit(&update("late"), MAX_AGENTS),
        Err(Error::NoSpace(_))
    ));
    let entry = Event::ProvisionLogged {
        name: Name::from("q0"),
        entry: Bytes::from_static(br#"{"exit_code":0}"#),
        at: 1,
    };
    assert!(matches!(
        agents.admit(&entry, MAX_AGENTS),
        Err(Error::NoSpace(_))
    ));
}

/// The running count [`Agents::apply`] keeps is what counting every entry gives,
/// through replacements, merges, trimmed provision history, expiry and a snapshot's
/// encoding and decoding (which stores no count).
#[test]
fn held_bytes_is_kept_through_every_change_and_a_snapshot() {
    let mut agents = Agents::default();
    let events = [
        Event::QueuesAdvertised {
            queues: vec![(Name::from("q"), "first".into())],
            at: 1,
        },
        Event::QueuesAdvertised {
            queues: vec![(Name::from("q"), "a longer one".into())],
            at: 2,
        },
        Event::ImagesAdvertised {
            queue: Name::from("q"),
            images: Bytes::from_static(br#"{"img":"url"}"#),
        },
        Event::ImagesAdvertised {
            queue: Name::from("q"),
            images: Bytes::from_static(br#"{}"#),
        },
        update("a"),
        update("b"),
        Event::AgentUpdated {
            name: Name::from("a"),
            fields: Bytes::from_static(br#"{"location":"lab 3","log":["x"]}"#),
            at: 2,
            by: None,
        },
    ];
    for event in &events {
        agents.apply(event);
        assert_eq!(agents.held_bytes(), agents.count_bytes(), "{event:?}");
    }
    for n in 0..120 {
        agents.apply(&Event::ProvisionLogged {
            name: Name::from("a"),
            entry: Bytes::from(format!(
                "{{\"exit_code\":{n},\"d\":\"{}\"}}",
                "x".repeat(20_000)
            )),
            at: 3,
        });
        assert_eq!(agents.held_bytes(), agents.count_bytes());
    }
    agents.apply(&Event::AgentsExpired {
        names: vec![Name::from("b")],
    });
    assert_eq!(agents.held_bytes(), agents.count_bytes());
    assert!(agents.held_bytes() > 0);
    let decoded: Agents = rmp_serde::from_slice(&rmp_serde::to_vec(&agents).unwrap()).unwrap();
    assert_eq!(decoded.held_bytes(), agents.held_bytes());
}

#[test]
fn provision_history_keeps_the_newest_entries_within_its_bytes() {
    let mut agents = Agents::default();
    agents.apply(&update("a"));
    let log = |n: usize, len: usize| Event::ProvisionLogged {
        name: Name::from("a"),
        entry: Bytes::from(format!("{{\"n\":{n},\"d\":\"{}\"}}", "x".repeat(len))),
        at: 1,
    };
    for n in 0..150 {
        agents.apply(&log(n, 10));
    }
    assert_eq!(agents.agents["a"].provision_log.len(), AGENT_LOG_KEEP);
    for n in 0..10 {
        agents.apply(&log(n, 300_000));
    }
    let kept = &agents.agents["a"].provision_log;
    let held: usize = kept.iter().map(Bytes::len).sum();
    assert!(held <= MAX_PROVISION_LOG_BYTES, "{held}");
    assert_eq!(kept.len(), 3, "the newest three of ~300 kB");
    agents.apply(&log(99, 2 * MAX_PROVISION_LOG_BYTES));
    assert_eq!(
        agents.agents["a"].provision_log.len(),
        1,
        "the newest stays"
    );
}

/// Past [`MAX_AGENTS`] records a new agent is refused (507) while the known ones keep
/// posting; once one expires, a new one is let in.
#[test]
fn a_new_agent_is_refused_only_past_the_most_records_kept() {
    let mut agents = Agents::default();
    for i in 0..MAX_AGENTS {
        let event = update(&format!("a{i}"));
        agents.admit(&event, MAX_AGENTS).unwrap();
        agents.apply(&event);
    }
    let refused = agents.admit(&update("one-more"), MAX_AGENTS).unwrap_err();
    assert!(matches!(refused, Error::NoSpace(_)), "{refused:?}");
    agents.admit(&update("a0"), MAX_AGENTS).unwrap();
    agents.apply(&Event::AgentsExpired {
        names: vec![Name::from("a0")],
    });
    agents.admit(&update("one-more"), MAX_AGENTS).unwrap();
}

/// Which agents serve a queue, and how many records have each state, as the indexes
/// answer them, are always what reading every record would say: through updates that
/// change, keep or drop their queues or state (or post none, or a state that is not a
/// string), provision entries (one may start a record), expiries, and a snapshot's
/// decoding. So are the records each agent credential created: a record counts under the
/// credential of the post that made it, whoever posts to it later, until it expires or
/// is deleted (a provision entry that starts a record counts under none).
#[test]
fn the_agents_serving_a_queue_the_state_counts_and_each_credentials_records_are_what_the_records_say(
) {
    let mut seed: u64 = 0x51f1_5eed_0bad_cafe;
    let mut below = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let every = |agents: &Agents, queue: &str| -> Vec<Name> {
        agents
            .agents
            .iter()
            .filter(|(_, r)| r.queues().iter().any(|q| &**q == queue))
            .map(|(name, _)| name.clone())
            .collect()
    };
    let counted = |agents: &Agents| -> Vec<(String, usize)> {
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        for record in agents.agents.values() {
            let fields = record.fields_map();
            let state = fields.get("state").and_then(Value::as_str);
            *states.entry(state.unwrap_or("unknown").into()).or_default() += 1;
        }
        states.into_iter().collect()
    };
    let indexed = |agents: &Agents| -> Vec<(String, usize)> {
        agents.states().map(|(s, n)| (s.to_owned(), n)).collect()
    };
    let mut agents = Agents::default();
    // Each record's creator, as the events say it.
    let mut creators: BTreeMap<Name, Option<Name>> = BTreeMap::new();
    for step in 0..2_000 {
        let name = Name::from(format!("dev-{}", below(6)));
        let mut event = match below(9) {
            0 if below(2) == 0 => Event::AgentsExpired { names: vec![name] },
            0 => Event::AgentDeleted { name },
            6 => Event::ProvisionLogged {
                name,
                entry: Bytes::from_static(br#"{"exit_code":0}"#),
                at: step,
            },
            7 | 8 => {
                let state = match below(5) {
                    0 => Value::from(3),
                    1 => Value::Null,
                    s => Value::from(["waiting", "test", "offline"][s as usize - 2]),
                };
                Event::AgentUpdated {
                    name,
                    fields: Bytes::from(
                        serde_json::to_vec(&serde_json::json!({"state": state})).unwrap(),
                    ),
                    at: step,
                    by: None,
                }
            }
            1 => Event::AgentUpdated {
                name,
                fields: Bytes::from_static(br#"{"state":"waiting","log":["x"]}"#),
                at: step,
                by: None,
            },
            2 => Event::AgentUpdated {
                name,
                fields: Bytes::from_static(br#"{"queues":"not a list"}"#),
                at: step,
                by: None,
            },
            _ => {
                let queues: Vec<Value> = (0..below(3))
                    .map(|_| match below(5) {
                        0 => Value::from(1),
                        q => Value::from(format!("q{q}")),
                    })
                    .collect();
                Event::AgentUpdated {
                    name,
                    fields: Bytes::from(
                        serde_json::to_vec(&serde_json::json!({"queues": queues})).unwrap(),
                    ),
                    at: step,
                    by: None,
                }
            }
        };
        match &mut event {
            Event::AgentUpdated { name, by, .. } => {
                *by = [None, Some("c1"), Some("c2")][below(3) as usize].map(Name::from);
                creators.entry(name.clone()).or_insert_with(|| by.clone());
            }
            Event::ProvisionLogged { name, .. } => {
                creators.entry(name.clone()).or_insert(None);
            }
            Event::AgentsExpired { names } => {
                for name in names {
                    creators.remove(name);
                }
            }
            Event::AgentDeleted { name } => {
                creators.remove(name);
            }
            _ => unreachable!(),
        }
        agents.apply(&event);
        let decoded: Agents = rmp_serde::from_slice(&rmp_serde::to_vec(&agents).unwrap()).unwrap();
        assert_eq!(indexed(&agents), counted(&agents), "step {step}");
        assert_eq!(indexed(&decoded), counted(&agents), "decoded, step {step}");
        for client in ["c1", "c2", "c3"] {
            let want = creators
                .values()
                .filter(|c| c.as_deref() == Some(client))
                .count();
            assert_eq!(agents.created_by(client), want, "step {step}, {client}");
            assert_eq!(
                decoded.created_by(client),
                want,
                "decoded, {step}, {client}"
            );
        }
        for queue in ["q1", "q2", "q3", "q4", "nowhere"] {
            let want = every(&agents, queue);
            let got: Vec<Name> = agents.serving(queue).map(|(n, _)| n.clone()).collect();
            assert_eq!(got, want, "step {step}, {queue}");
            let got: Vec<Name> = decoded.serving(queue).map(|(n, _)| n.clone()).collect();
            assert_eq!(got, want, "decoded, step {step}, {queue}");
        }
    }
}

/// `post` as agent credential `by` (`None`: a manager, or access control off).
fn post(name: &str, by: Option<&str>) -> Event {
    Event::AgentUpdated {
        name: Name::from(name),
        fields: Bytes::from_static(br#"{"state":"waiting"}"#),
        at: 1,
        by: by.map(Name::from),
    }
}

/// An agent credential that has created its share of the records kept is refused a new
/// one (507 naming it, the count and the setting) while its agents keep posting, other
/// credentials and managers are not, a manager's post does not move a record out of its
/// creator's share, and a record that expires or is deleted, also after a snapshot's
/// decoding, frees its place.
#[test]
fn a_credential_is_refused_new_agents_only_past_its_share() {
    let mut agents = Agents::default();
    let admit = |agents: &mut Agents, event: Event| -> Result<()> {
        agents.admit(&event, 3)?;
        agents.apply(&event);
        Ok(())
    };
    for i in 0..3 {
        admit(&mut agents, post(&format!("a{i}"), Some("lab"))).unwrap();
    }
    let refused = admit(&mut agents, post("a3", Some("lab"))).unwrap_err();
    let message = refused.message();
    assert!(matches!(refused, Error::NoSpace(_)), "{refused:?}");
    for part in ["\"lab\"", "created 3", "--max-agents-per-client 3"] {
        assert!(message.contains(part), "{part}: {message}");
    }
    admit(&mut agents, post("a0", Some("lab"))).unwrap();
    admit(&mut agents, post("b0", Some("other"))).unwrap();
    admit(&mut agents, post("m0", None)).unwrap();
    // A manager's post releases the record (its writer), but it stays in lab's share.
    admit(&mut agents, post("a1", None)).unwrap();
    assert_eq!(agents.agents["a1"].writer, None);
    assert_eq!(agents.created_by("lab"), 3);
    assert!(admit(&mut agents, post("a3", Some("lab"))).is_err());
    agents.apply(&Event::AgentDeleted {
        name: Name::from("a1"),
    });
    assert_eq!(agents.created_by("lab"), 2);
    admit(&mut agents, post("a3", Some("lab"))).unwrap();
    let mut decoded: Agents = rmp_serde::from_slice(&rmp_serde::to_vec(&agents).unwrap()).unwrap();
    assert_eq!(decoded.created_by("lab"), 3);
    assert!(admit(&mut decoded, post("a4", Some("lab"))).is_err());
    decoded.apply(&Event::AgentsExpired {
        names: vec![Name::from("a0"), Name::from("b0")],
    });
    assert_eq!(decoded.created_by("lab"), 2);
    assert_eq!(decoded.created_by("other"), 0);
    admit(&mut decoded, post("a4", Some("lab"))).unwrap();
}
