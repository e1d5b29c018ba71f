//! The limit on failed token requests ([`Limiter`]): a rate per (client, address) and a
//! larger one per address, never per client alone, counting the checks under way (README,
//! Access control).
//!
//! What it is for: a client secret is at least 15 characters checked against a bcrypt
//! hash, so guessing one is not the threat; the bcrypt work a flood of wrong secrets
//! costs is. So the bound is on what one address can make the server check, and a
//! client's right secret is never refused for failures sent from another address: a
//! limit per client id alone let anyone lock any client out (ten wrong guesses a minute,
//! from anywhere, kept a CLI user or an agent from logging in). An address is what
//! [`address_key`] makes of it: an IPv6 /64 is one address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::address::address_key;

/// Counts failed token requests per [`Key`] as a rate: a key has `burst` tries, and each
/// failed one comes back a `burst`th of a minute after the failures before it have come
/// back (a token bucket of `burst` tries refilled `burst` per minute, kept as the
/// instant it is full again, GCRA-style). So at most `burst` failures at once, and in
/// any `t` seconds at most `burst × (1 + t / 60)`: no window edge to send a second burst
/// across (a fixed minute let twice the limit through in a few seconds).
///
/// A key out of tries is refused (429) until one comes back. Requests being checked count
/// against the limit too ([`Limiter::attempt`] to [`Limiter::finished`]): were failures
/// counted only once bcrypt refused them, any number of guesses sent at once would pass
/// the check before the first failure was counted. So at most as many checks as a key
/// has tries left run at once; a request beyond them waits for one to finish (a burst of
/// good logins from one address waits a bcrypt run, not a minute).
///
/// Bounded: at most [`Limiter::MAX_KEYS`] keys are tracked; when full, keys with all their
/// tries back and no check under way are dropped (they are as good as new), and if none
/// is, a new key is not tracked (the keys already tracked stay limited, and the table
/// never grows past its bound).
pub struct Limiter {
    /// Tries per (client, address) and per minute.
    per_minute: u32,
    /// Keys not back to full, or with checks under way.
    table: Mutex<HashMap<String, Bucket>>,
    /// Wakes requests waiting for a check under way to end.
    ended: tokio::sync::Notify,
}

/// What one token request is counted against: a name in the table, and how many times
/// the limiter's tries a minute it has (1, or [`ADDRESS_SHARE`] for an address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    name: String,
    share: u32,
}

/// A key's tries a minute: its burst and its rate.
#[derive(Clone, Copy)]
struct Rate {
    per_minute: u32,
}

impl Rate {
    /// A failed try's share of the minute: how long it takes to come back.
    fn interval(self) -> Duration {
        // Never zero: 60 s over u32::MAX is 13 ns.
        Duration::from_nanos(60_000_000_000 / u64::from(self.per_minute))
    }

    /// Tries `bucket` has left at `now`: `per_minute` less the intervals its debt (how far
    /// `full_at` is ahead) spans, a started one counting whole.
    fn left(self, bucket: &Bucket, now: Instant) -> u32 {
        let debt = bucket.full_at.saturating_duration_since(now).as_nanos();
        let used = debt.div_ceil(self.interval().as_nanos());
        self.per_minute
            .saturating_sub(used.min(u128::from(u32::MAX)) as u32)
    }

    /// How long until `bucket`, out of tries at `now`, has one back: until its debt is
    /// down to `per_minute - 1` intervals.
    fn wait(self, bucket: &Bucket, now: Instant) -> Duration {
        let keep = self.interval() * (self.per_minute - 1);
        bucket.full_at.saturating_duration_since(now + keep)
    }
}

/// Longest a token request waits for checks under way of its keys to end (then 429).
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// How many times the tries of a (client, address) one address gets in all: a few
/// people behind one NAT can each mistype their secret up to the limit without locking
/// the others out, while one address still causes a bounded amount of bcrypt work
/// however many client ids it names.
pub const ADDRESS_SHARE: u32 = 4;

/// A token request [`Limiter::admit`] let through: counted as failed when dropped, unless
/// [`Admitted::succeeded`] (so a request given up half-way counts as a failure too).
pub struct Admitted<'a> {
    limiter: &'a Limiter,
    keys: &'a [Key],
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

/// One key's state: when all its tries are back, and its checks under way.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Each failure moves it one interval on from `max(full_at, now)`; once it has passed
    /// the key has every try, like a key never seen.
    full_at: Instant,
    checking: u32,
}

impl Bucket {
    /// As good as a key never seen, at `now`: droppable.
    fn idle(&self, now: Instant) -> bool {
        self.checking == 0 && self.full_at <= now
    }
}

/// Why [`Limiter::attempt`] did not let a request through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// A key has no tries left: the seconds until one comes back (at least 1).
    Blocked(u64),
    /// A key's checks under way use up the tries it has left: try again when one ends.
    Busy,
}

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

    /// A limiter allowing `per_minute` failures per (client, address) and
    /// [`ADDRESS_SHARE`] times as many per address (0 counts as 1: a check must be able
    /// to run at all).
    pub fn new(per_minute: u32) -> Limiter {
        Limiter {
            per_minute: per_minute.max(1),
            table: Mutex::new(HashMap::new()),
            ended: tokio::sync::Notify::new(),
        }
    }

    /// Keys for a token request naming `client_id` from `from`: the pair, and the address
    /// alone, an address as [`super::address::address_key`] counts it (an IPv6 /64 is
    /// one address). Never the client id alone: failures from one address must not
    /// refuse the client's right secret from another.
    pub fn keys(client_id: &str, from: Option<IpAddr>) -> [Key; 2] {
        let address = from.map_or_else(|| "unknown".into(), |a| address_key(a).to_string());
        [
            // An address holds no space, so the first one ends it.
            Key {
                name: format!("client:{address} {client_id}"),
                share: 1,
            },
            Key {
                name: format!("addr:{address}"),
                share: ADDRESS_SHARE,
            },
        ]
    }

    /// `key`'s tries a minute.
    fn rate(&self, key: &Key) -> Rate {
        Rate {
            per_minute: self.per_minute.saturating_mul(key.share),
        }
    }

    /// Lets a token request of `keys` through once [`Limiter::attempt`] does, waiting up
    /// to `BUSY_WAIT` (10 s) while checks under way use up what its keys have left; else the
    /// refusal's message (429).
    pub async fn admit<'a>(&'a self, keys: &'a [Key]) -> std::result::Result<Admitted<'a>, String> {
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

    /// Lets a request of `keys` be checked, unless a key has no tries left or its checks
    /// under way use up those it has; a request let through must be
    /// [`Limiter::finished`].
    pub fn attempt(&self, keys: &[Key]) -> std::result::Result<(), Refused> {
        self.attempt_at(keys, Instant::now())
    }

    /// [`Limiter::attempt`] at `now` (the clock is an argument so the arithmetic is
    /// tested without waiting).
    fn attempt_at(&self, keys: &[Key], now: Instant) -> std::result::Result<(), Refused> {
        let mut table = self.table.lock();
        for key in keys {
            let Some(bucket) = table.get(&key.name) else {
                continue;
            };
            let rate = self.rate(key);
            let left = rate.left(bucket, now);
            if left == 0 {
                let wait = rate.wait(bucket, now).as_secs_f64().ceil();
                return Err(Refused::Blocked(wait.max(1.0) as u64));
            }
            if bucket.checking >= left {
                return Err(Refused::Busy);
            }
        }
        for key in keys {
            if let Some(bucket) = Self::entry(&mut table, &key.name, now) {
                bucket.checking += 1;
            }
        }
        Ok(())
    }

    /// Ends a check [`Limiter::attempt`] let through; a failed one is counted.
    pub fn finished(&self, keys: &[Key], failed: bool) {
        self.finished_at(keys, failed, Instant::now());
    }

    /// [`Limiter::finished`] at `now`.
    fn finished_at(&self, keys: &[Key], failed: bool, now: Instant) {
        let _wake = Wake(&self.ended);
        let mut table = self.table.lock();
        for key in keys {
            if let Some(bucket) = table.get_mut(&key.name) {
                bucket.checking = bucket.checking.saturating_sub(1);
            }
            if failed {
                if let Some(bucket) = Self::entry(&mut table, &key.name, now) {
                    bucket.full_at = bucket.full_at.max(now) + self.rate(key).interval();
                }
            }
        }
    }

    /// `name`'s entry, made if there is room (see the type's docs).
    fn entry<'t>(
        table: &'t mut HashMap<String, Bucket>,
        name: &str,
        now: Instant,
    ) -> Option<&'t mut Bucket> {
        if table.len() >= Self::MAX_KEYS && !table.contains_key(name) {
            table.retain(|_, bucket| !bucket.idle(now));
            if table.len() >= Self::MAX_KEYS {
                return None;
            }
        }
        Some(table.entry(name.to_owned()).or_insert(Bucket {
            full_at: now,
            checking: 0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` failed checks of `keys` at `at`, each let through.
    fn fail(limiter: &Limiter, keys: &[Key], at: Instant, n: u32) {
        for _ in 0..n {
            assert_eq!(limiter.attempt_at(keys, at), Ok(()));
            limiter.finished_at(keys, true, at);
        }
    }

    #[test]
    fn checks_under_way_count_against_the_limit_and_a_limit_of_zero_allows_one() {
        let t = Instant::now();
        let limiter = Limiter::new(2);
        let keys = Limiter::keys("c", None);
        assert_eq!(limiter.attempt_at(&keys, t), Ok(()));
        assert_eq!(limiter.attempt_at(&keys, t), Ok(()));
        assert_eq!(limiter.attempt_at(&keys, t), Err(Refused::Busy));
        limiter.finished_at(&keys, true, t);
        assert_eq!(limiter.attempt_at(&keys, t), Err(Refused::Busy));
        limiter.finished_at(&keys, true, t);
        assert_eq!(limiter.attempt_at(&keys, t), Err(Refused::Blocked(30)));
        // Good logins are not counted, however many.
        let zero = Limiter::new(0);
        for _ in 0..3 {
            assert_eq!(zero.attempt_at(&keys, t), Ok(()));
            zero.finished_at(&keys, false, t);
        }
        fail(&zero, &keys, t, 1);
        assert_eq!(zero.attempt_at(&keys, t), Err(Refused::Blocked(60)));
    }

    /// The reviewer's case for a fixed window at 10 a minute: one failure at 0 s, then
    /// guesses from 58.5 s on. A fixed minute let 19 be checked by 62.6 s; as a rate, the
    /// one at 0 s is back by 6 s, so 10 are checked at 58.5 s and none more until a try
    /// comes back at 64.5 s.
    #[test]
    fn no_second_burst_across_a_window_edge() {
        let t0 = Instant::now();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let limiter = Limiter::new(10);
        let keys = Limiter::keys("alice", Some([127, 0, 0, 2].into()));
        fail(&limiter, &keys, at(0.0), 1);
        fail(&limiter, &keys, at(58.5), 10);
        for secs in [58.5, 60.0, 62.6, 64.4] {
            assert!(
                matches!(
                    limiter.attempt_at(&keys, at(secs)),
                    Err(Refused::Blocked(_))
                ),
                "checked at {secs} s"
            );
        }
        assert_eq!(
            limiter.attempt_at(&keys, at(62.6)),
            Err(Refused::Blocked(2))
        );
        fail(&limiter, &keys, at(64.5), 1);
        assert!(limiter.attempt_at(&keys, at(64.5)).is_err());
    }

    /// Sustained guessing gets `per_minute` a minute after the first burst: over ten
    /// minutes of trying every 100 ms, 10 + 10 × 10 checks.
    #[test]
    fn sustained_guessing_gets_the_rate_and_one_burst() {
        let t0 = Instant::now();
        let limiter = Limiter::new(10);
        let keys = Limiter::keys("alice", Some([127, 0, 0, 2].into()));
        let mut checked = 0;
        for tick in 0..=6000u64 {
            let now = t0 + Duration::from_millis(100 * tick);
            if limiter.attempt_at(&keys, now).is_ok() {
                limiter.finished_at(&keys, true, now);
                checked += 1;
            }
        }
        assert_eq!(checked, 10 + 100);
    }

    /// Failures for a client from one address leave its tries from another address, and
    /// other clients' from the same one, whole; one address gets `ADDRESS_SHARE` times
    /// the tries across all client ids.
    #[test]
    fn failures_count_per_address_and_per_client_at_an_address_not_per_client() {
        let t = Instant::now();
        let limiter = Limiter::new(3);
        let here = Limiter::keys("alice", Some([127, 0, 0, 2].into()));
        fail(&limiter, &here, t, 3);
        assert!(matches!(
            limiter.attempt_at(&here, t),
            Err(Refused::Blocked(_))
        ));
        let elsewhere = Limiter::keys("alice", Some([127, 0, 0, 3].into()));
        assert_eq!(limiter.attempt_at(&elsewhere, t), Ok(()));
        limiter.finished_at(&elsewhere, false, t);
        for n in 0..9 {
            let other = Limiter::keys(&format!("someone-{n}"), Some([127, 0, 0, 2].into()));
            fail(&limiter, &other, t, 1);
        }
        let bob = Limiter::keys("bob", Some([127, 0, 0, 2].into()));
        assert!(matches!(
            limiter.attempt_at(&bob, t),
            Err(Refused::Blocked(_))
        ));
    }

    /// Two addresses in one IPv6 /64 are one address: failures from one use up the
    /// other's tries, for the same client and across client ids; the next /64 has its
    /// own. An IPv4 client arriving mapped on a dual-stack socket is its IPv4 address.
    #[test]
    fn one_ipv6_64_shares_a_limit_and_its_neighbour_does_not() {
        let t = Instant::now();
        let limiter = Limiter::new(3);
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        let first = Limiter::keys("alice", ip("2001:db8:1:2::1"));
        fail(&limiter, &first, t, 3);
        let same_64 = Limiter::keys("alice", ip("2001:db8:1:2:ffff:1234:5678:9abc"));
        assert!(matches!(
            limiter.attempt_at(&same_64, t),
            Err(Refused::Blocked(_))
        ));
        let next_64 = Limiter::keys("alice", ip("2001:db8:1:3::1"));
        assert_eq!(limiter.attempt_at(&next_64, t), Ok(()));
        limiter.finished_at(&next_64, false, t);
        // The /64's share across client ids: 12 here, 3 used; each other client id
        // guessed from a new address of the /64.
        for n in 0..9u16 {
            let other = Limiter::keys(&format!("c{n}"), ip(&format!("2001:db8:1:2::{n:x}:1")));
            fail(&limiter, &other, t, 1);
        }
        let bob = Limiter::keys("bob", ip("2001:db8:1:2:9::9"));
        assert!(matches!(
            limiter.attempt_at(&bob, t),
            Err(Refused::Blocked(_))
        ));
        let bob_next = Limiter::keys("bob", ip("2001:db8:1:3::9"));
        assert_eq!(limiter.attempt_at(&bob_next, t), Ok(()));
        limiter.finished_at(&bob_next, false, t);
        // Mapped and plain IPv4 are one address; another IPv4 address is another.
        let mapped = Limiter::keys("carol", ip("::ffff:192.0.2.7"));
        fail(&limiter, &mapped, t, 3);
        let plain = Limiter::keys("carol", ip("192.0.2.7"));
        assert!(limiter.attempt_at(&plain, t).is_err());
        let other_v4 = Limiter::keys("carol", ip("::ffff:192.0.2.8"));
        assert_eq!(limiter.attempt_at(&other_v4, t), Ok(()));
    }

    /// Keys all of whose tries are back make room when the table is full; keys still
    /// owed, or with checks under way, stay limited.
    #[test]
    fn a_full_table_drops_only_keys_as_good_as_new() {
        let t = Instant::now();
        let limiter = Limiter::new(1);
        {
            let mut table = limiter.table.lock();
            for n in 0..Limiter::MAX_KEYS {
                let full_at = if n % 2 == 0 {
                    t
                } else {
                    t + Duration::from_secs(30)
                };
                table.insert(
                    format!("k{n}"),
                    Bucket {
                        full_at,
                        checking: 0,
                    },
                );
            }
        }
        let keys = Limiter::keys("new", None);
        fail(&limiter, &keys, t, 1);
        let table = limiter.table.lock();
        assert_eq!(table.len(), Limiter::MAX_KEYS / 2 + 2);
        assert!(table.contains_key("k1") && !table.contains_key("k0"));
    }
}
