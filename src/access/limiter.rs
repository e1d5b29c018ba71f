//! The limit on failed token requests ([`Limiter`]): per client id and per address, over
//! a sliding minute, counting the checks under way (README, Access control).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Counts failed token requests per key (client id, address) over a sliding minute; a key
/// over the limit is refused (429) until its minute passes. Requests being checked count
/// against the limit too ([`Limiter::attempt`] to [`Limiter::finished`]): were failures
/// counted only once bcrypt refused them, any number of guesses sent at once would pass
/// the check before the first failure was counted. So at most as many checks as a key
/// has failures left run at once; a request beyond them waits for one to finish (a burst
/// of good logins from one address waits a bcrypt run, not a minute). Bounded: at most
/// [`Limiter::MAX_KEYS`] keys are tracked; when full, expired idle ones are dropped, and
/// if none is, a new key is not tracked (the keys already tracked stay limited, and the
/// table never grows past its bound).
pub struct Limiter {
    per_minute: u32,
    table: Mutex<HashMap<String, Tried>>,
    /// Wakes requests waiting for a check under way to end.
    ended: tokio::sync::Notify,
}

/// Longest a token request waits for checks under way of its keys to end (then 429).
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// A token request [`Limiter::admit`] let through: counted as failed when dropped, unless
/// [`Admitted::succeeded`] (so a request given up half-way counts as a failure too).
pub struct Admitted<'a> {
    limiter: &'a Limiter,
    keys: &'a [String],
    failed: bool,
}

impl Admitted<'_> {
    /// The secret matched: nothing is counted.
    pub fn succeeded(mut self) {
        self.failed = false;
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.limiter.finished(self.keys, self.failed);
    }
}

/// One key's failures in its window, and its checks under way.
#[derive(Clone, Copy)]
struct Tried {
    failures: u32,
    since: Instant,
    checking: u32,
}

/// Why [`Limiter::attempt`] did not let a request through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A key is over the limit: the seconds until its minute passes.
    Blocked(u64),
    /// A key's checks under way use up the failures it has left: try again when one ends.
    Busy,
}

const WINDOW: Duration = Duration::from_secs(60);

/// Wakes every waiter of a `Notify` when dropped (after the table's lock is released).
struct Wake<'a>(&'a tokio::sync::Notify);

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}

impl Limiter {
    /// Most keys tracked at once.
    pub const MAX_KEYS: usize = 100_000;

    /// A limiter allowing `per_minute` failures per key.
    pub fn new(per_minute: u32) -> Limiter {
        Limiter {
            per_minute,
            table: Mutex::new(HashMap::new()),
            ended: tokio::sync::Notify::new(),
        }
    }

    /// Lets a token request of `keys` through once [`Limiter::attempt`] does, waiting up
    /// to `BUSY_WAIT` (10 s) while checks under way use up what its keys have left; else the
    /// refusal's message (429).
    pub async fn admit<'a>(
        &'a self,
        keys: &'a [String],
    ) -> std::result::Result<Admitted<'a>, String> {
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            let ended = self.ended.notified();
            match self.attempt(keys) {
                Ok(()) => {
                    return Ok(Admitted {
                        limiter: self,
                        keys,
                        failed: true,
                    })
                }
                Err(Refused::Blocked(wait)) => {
                    return Err(format!(
                        "Too many failed authentication attempts; try again in {wait} s"
                    ))
                }
                Err(Refused::Busy) => {
                    if tokio::time::timeout_at(deadline, ended).await.is_err() {
                        return Err(
                            "Too many authentication attempts under way at once; try again".into(),
                        );
                    }
                }
            }
        }
    }

    /// Lets a request of `keys` be checked, unless a key is over the limit or its checks
    /// under way use up the failures it has left; a request let through must be
    /// [`Limiter::finished`].
    pub fn attempt(&self, keys: &[String]) -> std::result::Result<(), Refused> {
        // A limit of 0 refuses a key after its first failure, as 1 does: a check must be
        // able to run at all.
        let limit = self.per_minute.max(1);
        let mut table = self.table.lock();
        for key in keys {
            let Some(tried) = table.get_mut(key) else {
                continue;
            };
            if tried.since.elapsed() >= WINDOW {
                tried.failures = 0;
                tried.since = Instant::now();
            }
            if tried.failures >= limit {
                let left = WINDOW.saturating_sub(tried.since.elapsed());
                return Err(Refused::Blocked(left.as_secs().max(1)));
            }
            if tried.failures + tried.checking >= limit {
                return Err(Refused::Busy);
            }
        }
        for key in keys {
            if let Some(tried) = Self::entry(&mut table, key) {
                tried.checking += 1;
            }
        }
        Ok(())
    }

    /// Ends a check [`Limiter::attempt`] let through; a failed one is counted.
    pub fn finished(&self, keys: &[String], failed: bool) {
        let _wake = Wake(&self.ended);
        let mut table = self.table.lock();
        for key in keys {
            if let Some(tried) = table.get_mut(key) {
                tried.checking = tried.checking.saturating_sub(1);
            }
            if failed {
                if let Some(tried) = Self::entry(&mut table, key) {
                    if tried.since.elapsed() >= WINDOW {
                        tried.failures = 0;
                        tried.since = Instant::now();
                    }
                    tried.failures += 1;
                }
            }
        }
    }

    /// `key`'s entry, made if there is room (see the type's docs).
    fn entry<'t>(table: &'t mut HashMap<String, Tried>, key: &str) -> Option<&'t mut Tried> {
        if table.len() >= Self::MAX_KEYS && !table.contains_key(key) {
            table.retain(|_, t| t.checking > 0 || t.since.elapsed() < WINDOW);
            if table.len() >= Self::MAX_KEYS {
                return None;
            }
        }
        Some(table.entry(key.to_owned()).or_insert(Tried {
            failures: 0,
            since: Instant::now(),
            checking: 0,
        }))
    }

    /// Keys for a token request: the client id and the address.
    pub fn keys(client_id: &str, from: Option<IpAddr>) -> [String; 2] {
        [
            format!("client:{client_id}"),
            format!(
                "addr:{}",
                from.map_or_else(|| "unknown".into(), |a| a.to_string())
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_under_way_count_against_the_limit_and_a_limit_of_zero_allows_one() {
        let keys = Limiter::keys("c", None);
        let limiter = Limiter::new(2);
        assert_eq!(limiter.attempt(&keys), Ok(()));
        assert_eq!(limiter.attempt(&keys), Ok(()));
        assert_eq!(limiter.attempt(&keys), Err(Refused::Busy));
        limiter.finished(&keys, true);
        assert_eq!(limiter.attempt(&keys), Err(Refused::Busy));
        limiter.finished(&keys, true);
        assert!(matches!(limiter.attempt(&keys), Err(Refused::Blocked(_))));
        // Good logins are not counted, however many.
        let zero = Limiter::new(0);
        for _ in 0..3 {
            assert_eq!(zero.attempt(&keys), Ok(()));
            zero.finished(&keys, false);
        }
        assert_eq!(zero.attempt(&keys), Ok(()));
        zero.finished(&keys, true);
        assert!(matches!(zero.attempt(&keys), Err(Refused::Blocked(_))));
    }
}
