//! Lost-agent recovery: when is a running job's agent considered gone, and what then.
//!
//! The rule (also in README, "Lost agents"): a job that left its queue and is not
//! finished is *watched*; every request an agent makes about it (a state or result post,
//! a log fragment, an artifact, a download of its attachments, or any request about the
//! job carrying an agent's `agent_name` cookie: the stock agent checks the job's state
//! every 10 s while a command runs) counts as hearing from the agent. Its **allowance**,
//! counted from the last time the agent was heard, is
//!
//! - in a phase where the agent runs a command and checks on it every 10 s (`running`,
//!   `setup`, `firmware_update`, `test`, `allocate`, `cleanup`): `min(output_timeout,
//!   global_timeout)` + 10 s, since its check reads the job's state (which counts as
//!   contact), and in `test` it ends a command that stayed silent for `output_timeout`,
//!   then reports;
//! - in any other phase: `global_timeout`. In `provision` the stock agent neither checks
//!   for cancellation nor applies the output timeout (upstream `job.py`: no cancelling
//!   while provisioning, output timeouts in `test` only), so a quiet provisioning command
//!   runs silently until `global_timeout`; a reserved device (`reserve`, `allocated`) may
//!   sit silently until then too, and so may a phase we do not know;
//!
//! plus a configurable grace (`--lost-agent-grace-secs`). The timeouts are the job's own
//! (`global_timeout`, `output_timeout`), else the stock agent's defaults (4 h, 15 min),
//! each at most [`MAX_TIMEOUT`] (30 days), so a job cannot turn the watch off for itself
//! with a huge one.
//! Past the allowance the job is ended as `cancelled` (the terminal state the CLI's `poll`
//! and the agent stop on) with a `lost_agent` result field, or, if it never got past the
//! start of provisioning (`running` or `setup`: nothing ran on the device) and was not
//! requeued before, put back into its queue once (`--lost-agent-requeue`).
//!
//! An agent is also lost for a job, at once, when it takes another job while that one is
//! unfinished ([`abandoned`]: the stock agent runs one job at a time, so it restarted and
//! left the old one); the same outcome applies.
//!
//! This module only decides: the times come in as arguments, the outcome goes out as an
//! [`super::Event::JobLost`] that the registry records and folds.

/// Phases in which the stock agent checks on its command every 10 s (reading the job's
/// state). Not `provision`: the agent does not check while provisioning, and its only
/// limit there is `global_timeout`.
const COMMAND_PHASES: &[&str] = &[
    "running",
    "setup",
    "firmware_update",
    "test",
    "allocate",
    "cleanup",
];

/// Phases before anything ran on the device: a lost job there may be requeued.
const REQUEUE_PHASES: &[&str] = &["running", "setup"];

/// How often the stock agent checks on a running phase command (seconds): it reads the
/// job's state then, and stops a command past its timeouts only at such a check.
pub const AGENT_CHECK_SECS: u64 = 10;

/// The stock agent's default `global_timeout` (seconds).
pub const DEFAULT_GLOBAL_TIMEOUT: u64 = 4 * 60 * 60;
/// The stock agent's default `output_timeout` (seconds).
pub const DEFAULT_OUTPUT_TIMEOUT: u64 = 15 * 60;
/// The most a job's own `global_timeout` or `output_timeout` counts for (seconds): a
/// value past it (up to i64::MAX is accepted) would keep a lost agent's job running
/// for ever. The stock agent caps a job's timeouts at its own configured ones anyway.
pub const MAX_TIMEOUT: u64 = 30 * 24 * 60 * 60;

/// The server's settings for the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Seconds added to every allowance (network hiccups, a slow agent host).
    pub grace: u64,
    /// Whether a job lost before provisioning is requeued (once) instead of ended.
    pub requeue: bool,
}

/// What the server knows about one watched job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    /// Unix seconds the agent was last heard about this job (the dispatch counts).
    pub last_heard: u64,
    /// The job's `global_timeout`, if it set one.
    pub global_timeout: Option<u64>,
    /// The job's `output_timeout`, if it set one.
    pub output_timeout: Option<u64>,
}

/// What to do with a watched job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The agent is within its allowance.
    Alive,
    /// Put the job back into its queue (lost before provisioning, first time).
    Requeue,
    /// End the job: the agent is lost.
    End,
}

/// What the lost-agent pass does about one watched job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judged {
    /// Its agent is within its allowance: nothing.
    Alive,
    /// It is gone, back in its queue or finished: nothing to do (the registry stopped
    /// watching it when it left the running states).
    NotRunning,
    /// Its agent is lost: requeue or end it, recorded as decided in `phase`.
    Lose {
        /// The job's `job_state` when decided.
        phase: String,
        /// Requeue (else end).
        requeue: bool,
    },
}

/// The decision for a watched job given what the registry holds about it: `job` is its
/// `(job_state, active, requeued before)` (active: out of its queue and not finished),
/// `None` when no job has the id.
pub fn judge(job: Option<(&str, bool, bool)>, watched: &Watched, rule: &Rule, now: u64) -> Judged {
    let Some((phase, true, requeued_before)) = job else {
        return Judged::NotRunning;
    };
    match verdict(phase, requeued_before, watched, rule, now) {
        Verdict::Alive => Judged::Alive,
        verdict => Judged::Lose {
            phase: phase.to_owned(),
            requeue: verdict == Verdict::Requeue,
        },
    }
}

/// The seconds of silence allowed in `phase` (grace included).
pub fn allowance(phase: &str, watched: &Watched, rule: &Rule) -> u64 {
    let global = watched
        .global_timeout
        .unwrap_or(DEFAULT_GLOBAL_TIMEOUT)
        .min(MAX_TIMEOUT);
    let output = watched
        .output_timeout
        .unwrap_or(DEFAULT_OUTPUT_TIMEOUT)
        .min(MAX_TIMEOUT);
    let base = if COMMAND_PHASES.contains(&phase) {
        output.min(global).saturating_add(AGENT_CHECK_SECS)
    } else {
        global
    };
    base.saturating_add(rule.grace)
}

/// Whether `watched`'s agent was heard within the smallest allowance of any phase: then
/// the job is alive whatever its phase, and a pass need not look the job up (a pass over
/// a million running jobs read each from the registry: ~1.5 s of CPU a minute).
pub fn surely_alive(watched: &Watched, rule: &Rule, now: u64) -> bool {
    let least = allowance(COMMAND_PHASES[0], watched, rule).min(allowance("", watched, rule));
    now.saturating_sub(watched.last_heard) <= least
}

/// The decision for a job in `phase` (its `job_state`), `requeued_before` saying whether
/// it was already requeued once for a lost agent.
pub fn verdict(
    phase: &str,
    requeued_before: bool,
    watched: &Watched,
    rule: &Rule,
    now: u64,
) -> Verdict {
    let silent = now.saturating_sub(watched.last_heard);
    if silent <= allowance(phase, watched, rule) {
        Verdict::Alive
    } else {
        outcome(phase, requeued_before, rule)
    }
}

/// What becomes of a job whose agent is lost in `phase`: [`Verdict::Requeue`] when it
/// is lost before provisioning (`running`, `setup`: nothing ran on the device), was not
/// requeued for a lost agent before and the rule requeues; else [`Verdict::End`]. Both
/// ways an agent is found lost decide through here: silence past the allowance
/// ([`verdict`]) and taking another job while this one is unfinished ([`abandoned`]).
pub fn outcome(phase: &str, requeued_before: bool, rule: &Rule) -> Verdict {
    if rule.requeue && !requeued_before && REQUEUE_PHASES.contains(&phase) {
        Verdict::Requeue
    } else {
        Verdict::End
    }
}

/// The decision for a job whose agent took another job while this one was unfinished:
/// `job` is its `(job_state, active, requeued before)` as for [`judge`]. The stock agent
/// runs one job at a time, so an agent that takes a new job has abandoned (restarted,
/// crashed, was reinstalled) the one it held: it is lost for that job now, whatever its
/// allowance. [`Judged::NotRunning`] for a job that is gone, waiting or finished.
pub fn abandoned(job: Option<(&str, bool, bool)>, rule: &Rule) -> Judged {
    let Some((phase, true, requeued_before)) = job else {
        return Judged::NotRunning;
    };
    Judged::Lose {
        phase: phase.to_owned(),
        requeue: outcome(phase, requeued_before, rule) == Verdict::Requeue,
    }
}

/// The job's own `global_timeout` and `output_timeout` (seconds) from its document;
/// absent, non-numeric or negative values count as unset. Runs on every dispatch, so a
/// document that names neither is not parsed at all, and one that does is read for
/// those two members only (the others are skipped, not built).
pub fn timeouts(body: &[u8]) -> (Option<u64>, Option<u64>) {
    #[derive(serde::Deserialize)]
    struct Timeouts {
        #[serde(default)]
        global_timeout: Option<serde_json::Value>,
        #[serde(default)]
        output_timeout: Option<serde_json::Value>,
    }
    static NAMED: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"_timeout\""));
    // Stored documents are the server's own serialisation, which never escapes a plain
    // key, so the search sees every key that names a timeout. A struct also deserialises
    // from an array (its fields in order): only objects count.
    if NAMED.find(body).is_none() || body.trim_ascii_start().first() != Some(&b'{') {
        return (None, None);
    }
    match serde_json::from_slice::<Timeouts>(body) {
        Ok(t) => {
            let seconds =
                |v: Option<serde_json::Value>| v.as_ref().and_then(serde_json::Value::as_u64);
            (seconds(t.global_timeout), seconds(t.output_timeout))
        }
        Err(_) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        grace: 10,
        requeue: true,
    };

    fn watched(last_heard: u64) -> Watched {
        Watched {
            last_heard,
            global_timeout: Some(1000),
            output_timeout: Some(100),
        }
    }

    #[test]
    fn a_job_surely_alive_is_alive_in_every_phase() {
        let phases = [
            "running",
            "setup",
            "test",
            "reserve",
            "allocated",
            "unknown",
            "",
        ];
        for (global, output) in [(None, None), (Some(1000), Some(100)), (Some(50), Some(900))] {
            let w = Watched {
                last_heard: 10_000,
                global_timeout: global,
                output_timeout: output,
            };
            let mut last_sure = None;
            for now in (10_000..10_000 + 20_000).step_by(5) {
                if surely_alive(&w, &RULE, now) {
                    last_sure = Some(now);
                    for phase in phases {
                        assert_eq!(
                            verdict(phase, false, &w, &RULE, now),
                            Verdict::Alive,
                            "{phase} {global:?} {output:?} at +{}",
                            now - 10_000
                        );
                    }
                }
            }
            // ...and it is the smallest allowance: one second later some phase is lost.
            let edge = last_sure.expect("alive at first") / 5 * 5;
            let after = (edge + 1..edge + 6)
                .find(|&now| !surely_alive(&w, &RULE, now))
                .unwrap();
            assert!(
                phases
                    .iter()
                    .any(|p| verdict(p, false, &w, &RULE, after) != Verdict::Alive),
                "{global:?} {output:?}"
            );
        }
    }

    /// A job's own timeouts count for at most 30 days each: i64::MAX (accepted at
    /// submission) no longer keeps a lost agent's job running for ever.
    #[test]
    fn a_huge_timeout_counts_for_thirty_days() {
        let huge = Watched {
            last_heard: 0,
            global_timeout: Some(i64::MAX as u64),
            output_timeout: Some(i64::MAX as u64),
        };
        assert_eq!(allowance("provision", &huge, &RULE), MAX_TIMEOUT + 10);
        assert_eq!(allowance("test", &huge, &RULE), MAX_TIMEOUT + 20);
        let later = MAX_TIMEOUT + 11;
        assert_eq!(
            verdict("provision", false, &huge, &RULE, later),
            Verdict::End
        );
    }

    #[test]
    fn a_pass_forgets_gone_waiting_and_finished_jobs_and_loses_silent_running_ones() {
        let w = watched(1000);
        // Allowance in `setup`: min(100, 1000) + 10 + grace 10 = 120 s.
        let quiet = 1000 + 120;
        assert_eq!(judge(None, &w, &RULE, quiet + 1), Judged::NotRunning);
        let waiting = Some(("waiting", false, false));
        assert_eq!(judge(waiting, &w, &RULE, quiet + 1), Judged::NotRunning);
        let finished = Some(("complete", false, false));
        assert_eq!(judge(finished, &w, &RULE, quiet + 1), Judged::NotRunning);
        let setup = Some(("setup", true, false));
        assert_eq!(judge(setup, &w, &RULE, quiet), Judged::Alive);
        let lose = |phase: &str, requeue| Judged::Lose {
            phase: phase.into(),
            requeue,
        };
        assert_eq!(judge(setup, &w, &RULE, quiet + 1), lose("setup", true));
        let requeued_before = Some(("setup", true, true));
        assert_eq!(
            judge(requeued_before, &w, &RULE, quiet + 1),
            lose("setup", false)
        );
        let test = Some(("test", true, false));
        assert_eq!(judge(test, &w, &RULE, quiet + 1), lose("test", false));
    }

    #[test]
    fn an_abandoned_job_is_lost_at_once_with_the_outcome_of_a_silent_one() {
        let lose = |phase: &str, requeue| Judged::Lose {
            phase: phase.into(),
            requeue,
        };
        assert_eq!(abandoned(None, &RULE), Judged::NotRunning);
        assert_eq!(
            abandoned(Some(("cancelled", false, false)), &RULE),
            Judged::NotRunning
        );
        assert_eq!(
            abandoned(Some(("resubmitted", false, true)), &RULE),
            Judged::NotRunning
        );
        for (phase, requeued_before) in [("setup", false), ("setup", true), ("test", false)] {
            let silent = judge(
                Some((phase, true, requeued_before)),
                &watched(0),
                &RULE,
                10_000,
            );
            assert_eq!(
                abandoned(Some((phase, true, requeued_before)), &RULE),
                silent,
                "{phase} {requeued_before}"
            );
        }
        assert_eq!(
            abandoned(Some(("running", true, false)), &RULE),
            lose("running", true)
        );
        let no_requeue = Rule {
            requeue: false,
            ..RULE
        };
        assert_eq!(
            abandoned(Some(("running", true, false)), &no_requeue),
            lose("running", false)
        );
    }

    #[test]
    fn timeouts_are_read_from_the_job_document_top_level_whole_seconds_only() {
        for (body, want) in [
            (
                &br#"{"job_queue":"q","global_timeout":100,"output_timeout":7}"#[..],
                (Some(100), Some(7)),
            ),
            (
                br#"{"output_timeout":7,"test_data":{"global_timeout":5}}"#,
                (None, Some(7)),
            ),
            (
                br#"{"global_timeout":-1,"output_timeout":"7"}"#,
                (None, None),
            ),
            (
                br#"{"global_timeout":1.5,"output_timeout":null}"#,
                (None, None),
            ),
            (
                br#"{"global_timeout":{"a":1},"tags":["x_timeout\""]}"#,
                (None, None),
            ),
            (br#"{"job_queue":"q"}"#, (None, None)),
            (br#"["global_timeout", 5]"#, (None, None)),
            (br#"{"global_timeout": 9"#, (None, None)),
            (b"", (None, None)),
            (b"not json", (None, None)),
        ] {
            assert_eq!(timeouts(body), want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn command_phases_allow_the_output_timeout_and_others_the_global_one() {
        assert_eq!(allowance("test", &watched(0), &RULE), 120);
        assert_eq!(allowance("reserve", &watched(0), &RULE), 1010);
        assert_eq!(allowance("mystery", &watched(0), &RULE), 1010);
        let defaults = Watched {
            last_heard: 0,
            global_timeout: None,
            output_timeout: None,
        };
        assert_eq!(allowance("setup", &defaults, &RULE), 900 + 10 + 10);
        // The agent neither checks in nor times out silent output while provisioning.
        assert_eq!(allowance("provision", &watched(0), &RULE), 1010);
        assert_eq!(allowance("provision", &defaults, &RULE), 4 * 3600 + 10);
        let short_global = Watched {
            global_timeout: Some(30),
            ..watched(0)
        };
        assert_eq!(allowance("test", &short_global, &RULE), 50);
    }

    #[test]
    fn a_job_is_ended_past_its_allowance_and_requeued_once_before_provisioning() {
        assert_eq!(
            verdict("test", false, &watched(100), &RULE, 220),
            Verdict::Alive
        );
        assert_eq!(
            verdict("test", false, &watched(100), &RULE, 221),
            Verdict::End
        );
        assert_eq!(
            verdict("setup", false, &watched(100), &RULE, 221),
            Verdict::Requeue
        );
        assert_eq!(
            verdict("setup", true, &watched(100), &RULE, 221),
            Verdict::End
        );
        let no_requeue = Rule {
            requeue: false,
            ..RULE
        };
        assert_eq!(
            verdict("running", false, &watched(100), &no_requeue, 221),
            Verdict::End
        );
    }
}
