//! Access control's recorded state and its pure decisions: client credentials and
//! permissions, refresh tokens (hashes only), restricted queues, job secrets (sealed), the
//! role hierarchy and the three submission checks of Testflinger's `auth.check_permissions`.
//!
//! Everything here is data and pure functions: the HTTP layer (`crate::access`) verifies
//! tokens and bcrypt hashes and reads clocks; this module never sees a secret in clear (a
//! client secret arrives as its bcrypt hash, a refresh token as its SHA-256, a job secret as
//! AEAD ciphertext).
//!
//! Invariants:
//! - a restricted queue's owners are exactly the clients whose `allowed_queues` list it;
//! - a refresh token belongs to an existing client and its current secret (deleting a
//!   client, or giving it a new secret, drops its tokens);
//! - each client holds at most [`MAX_TOKENS_PER_CLIENT`] live refresh tokens and
//!   [`MAX_SECRETS_PER_CLIENT`] secrets, so no client can grow the state without bound
//!   (a revoked refresh token is kept beyond the cap until no access token issued from it
//!   can be valid, [`RefreshToken::outlived`]: it is what refuses them, and only an admin
//!   revokes)
//!   (expired secrets are removed by [`Event::SecretsExpired`] before a new one would pass
//!   the limit, so only live ones can make a client reach it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::event::Event;
use super::ids::Name;
use crate::error::{Error, Result};

/// Testflinger's server roles, lowest first: the order is the hierarchy used when one
/// client edits another (`ServerRoles` in testflinger-common). Which role may call which
/// endpoint is a table (`crate::access::table`), not this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A test agent: takes jobs, posts results.
    Agent,
    /// A user: submits, reads and cancels jobs (anonymous callers get this role when
    /// access control is `on`).
    Contributor,
    /// Manages clients below admin and restricted queues.
    Manager,
    /// Everything, including deleting clients and revoking tokens.
    Admin,
}

impl Role {
    /// The wire spelling (`"admin"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Contributor => "contributor",
            Role::Manager => "manager",
            Role::Admin => "admin",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "agent" => Role::Agent,
            "contributor" => Role::Contributor,
            "manager" => Role::Manager,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// The client Testflinger's own admin tool manages; like upstream, it cannot be changed or
/// deleted through the API (only with `flinger client`).
pub const SYSTEM_ADMIN_ID: &str = "testflinger-admin";
/// Most live (unrevoked) refresh tokens one client holds; issuing another drops its
/// oldest.
pub const MAX_TOKENS_PER_CLIENT: usize = 100;
/// The longest an access token may live, seconds (`--access-token-secs` at most): a
/// revoked refresh token is kept this long past its expiry, so the access tokens issued
/// from it stay refused until none can be valid.
pub const MAX_ACCESS_TOKEN_SECS: u64 = 86_400;
/// Most secrets one client stores.
pub const MAX_SECRETS_PER_CLIENT: usize = 1000;
/// Reservations up to this many seconds need no permission (Testflinger: 6 h).
pub const FREE_RESERVATION_SECS: u64 = 6 * 3600;
/// A job's reservation timeout when it names none (Testflinger: 1 h).
pub const DEFAULT_RESERVATION_SECS: u64 = 3600;

/// One client's credentials and permissions (Testflinger's `client_permissions` entry).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Client {
    /// bcrypt hash of the client secret (never the secret).
    pub secret_hash: Box<str>,
    /// Its role.
    pub role: Option<Role>,
    /// Highest `job_priority` per queue, `*` for every queue.
    pub max_priority: BTreeMap<String, i64>,
    /// Restricted queues it may submit to.
    pub allowed_queues: BTreeSet<String>,
    /// Longest `reserve_data.timeout` (seconds) per queue, `*` for every queue.
    pub max_reservation_time: BTreeMap<String, i64>,
    /// Contact address, if given.
    pub email: Option<String>,
}

impl Client {
    /// The role, contributor when none was set (as upstream).
    pub fn role(&self) -> Role {
        self.role.unwrap_or(Role::Contributor)
    }

    /// The fingerprint of its current secret ([`secret_fingerprint`]).
    pub fn secret_fingerprint(&self) -> u64 {
        secret_fingerprint(&self.secret_hash)
    }
}

/// A short fingerprint of a client secret's bcrypt hash: the first 64 bits of its
/// SHA-256. Access tokens carry the fingerprint of the secret they were issued under, so
/// a new secret (the fix for a leaked one) ends them on their next use. It is derived
/// from the recorded hash alone, so replay on any journal gives the same value, and a new
/// secret always changes it (bcrypt salts every hash afresh, so even the same secret set
/// again does, with odds of a collision of 2^-64). It tells a token holder nothing about
/// the secret: without the hash's 128-bit salt, no guess can be tested against it.
pub fn secret_fingerprint(secret_hash: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret_hash.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A refresh token's record; the token itself is known only by its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    /// Whose it is.
    pub client_id: Name,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds after which it is refused.
    pub expires_at: u64,
    /// Revoked by an admin.
    pub revoked: bool,
}

impl RefreshToken {
    /// Whether it can be forgotten at unix second `now`: once expired, or, revoked, once
    /// every access token issued from it has expired too (they were issued before its
    /// expiry and live at most [`MAX_ACCESS_TOKEN_SECS`]), since its record is what
    /// refuses them ([`Access::refresh_revoked`]).
    pub fn outlived(&self, now: u64) -> bool {
        let grace = if self.revoked {
            MAX_ACCESS_TOKEN_SECS
        } else {
            0
        };
        self.expires_at.saturating_add(grace) <= now
    }
}

/// The first 128 bits of a refresh token's SHA-256, which the access tokens issued from
/// it carry (claim `rt`, 32 hex digits), so that revoking it ends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RefreshId(pub u128);

impl RefreshId {
    /// The id of the refresh token recorded as `hash` (hex SHA-256; `None` if it is not).
    pub fn of_hash(hash: &str) -> Option<RefreshId> {
        Self::parse(hash.get(..32)?)
    }

    /// Parses the claim's 32 hex digits.
    pub fn parse(hex: &str) -> Option<RefreshId> {
        (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u128::from_str_radix(hex, 16).ok().map(RefreshId))
            .flatten()
    }

    /// The claim's spelling: 32 lower-case hex digits, as the recorded hash begins.
    pub fn hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

/// One stored job secret: AEAD ciphertext (nonce included), never the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// Sealed value.
    pub sealed: Bytes,
    /// Unix seconds after which it reads as absent.
    pub expires_at: Option<u64>,
    /// Deleted after its first read by a dispatch.
    pub ephemeral: bool,
}

/// The access partition.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Access {
    /// Clients by id.
    pub clients: BTreeMap<Name, Client>,
    /// Refresh tokens by SHA-256 (hex).
    pub tokens: BTreeMap<Box<str>, RefreshToken>,
    /// Per client, its refresh tokens oldest first (for the per-client cap).
    pub tokens_by_client: BTreeMap<Name, VecDeque<Box<str>>>,
    /// Queues only their owners may submit to.
    pub restricted: BTreeSet<Name>,
    /// Secrets by (client id, path).
    pub secrets: BTreeMap<(Name, String), Secret>,
}

/// The permissions a request carries: a verified token's `permissions` claim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Permissions {
    /// The client.
    pub client_id: String,
    /// Its role (contributor when absent, as upstream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Highest priority per queue.
    #[serde(default)]
    pub max_priority: BTreeMap<String, i64>,
    /// Restricted queues it may use.
    #[serde(default)]
    pub allowed_queues: Vec<String>,
    /// Longest reservation per queue (seconds).
    #[serde(default)]
    pub max_reservation_time: BTreeMap<String, i64>,
    /// Contact address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl Permissions {
    /// The claim for `client`, as `POST /v1/oauth2/token` puts it in the JWT.
    pub fn of(client_id: &str, client: &Client) -> Permissions {
        Permissions {
            client_id: client_id.to_owned(),
            role: Some(client.role().as_str().to_owned()),
            max_priority: client.max_priority.clone(),
            allowed_queues: client.allowed_queues.iter().cloned().collect(),
            max_reservation_time: client.max_reservation_time.clone(),
            email: client.email.clone(),
        }
    }

    /// The role claimed (contributor when absent; `None` when it names no role).
    pub fn role(&self) -> Option<Role> {
        match &self.role {
            None => Some(Role::Contributor),
            Some(r) => Role::parse(r),
        }
    }
}

/// What a submission asks for, for the checks.
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    /// `job_queue`.
    pub queue: &'a str,
    /// `job_priority`.
    pub priority: i64,
    /// `reserve_data.timeout` in seconds ([`DEFAULT_RESERVATION_SECS`] when absent).
    pub reservation: u64,
    /// Whether the queue is restricted.
    pub restricted: bool,
}

/// Testflinger's three submission checks (`check_max_priority`,
/// `check_queue_restriction`, `check_max_reservation_timeout`), with its messages: 401
/// when a permission is needed and the caller is anonymous (`perms` is `None`), 403 when
/// the caller's permissions do not cover it. Like upstream, admins are not exempt.
pub fn check_submission(perms: Option<&Permissions>, asked: Asked<'_>) -> Result<()> {
    let Asked {
        queue,
        priority,
        reservation,
        restricted,
    } = asked;
    let most = |map: &BTreeMap<String, i64>| {
        map.get("*")
            .copied()
            .unwrap_or(0)
            .max(map.get(queue).copied().unwrap_or(0))
    };
    if priority != 0 {
        let perms = perms.ok_or_else(|| {
            Error::Unauthorized(format!(
                "Authentication required for setting priority: {priority}"
            ))
        })?;
        if priority > most(&perms.max_priority) {
            return Err(Error::Forbidden(format!(
                "Not enough permissions to push to {queue} with priority {priority}"
            )));
        }
    }
    if restricted {
        let perms = perms.ok_or_else(|| {
            Error::Unauthorized(format!(
                "Authentication required to push to restricted queue: {queue}"
            ))
        })?;
        if !perms.allowed_queues.iter().any(|q| q == queue) {
            return Err(Error::Forbidden(format!(
                "Not enough permissions to push to the restricted queue: {queue}"
            )));
        }
    }
    if reservation > FREE_RESERVATION_SECS {
        let perms = perms.ok_or_else(|| {
            Error::Unauthorized(format!(
                "Authentication required for setting timeout: {reservation}"
            ))
        })?;
        if reservation as i128 > most(&perms.max_reservation_time) as i128 {
            return Err(Error::Forbidden(format!(
                "Not enough permissions to push to {queue} with reservation timeout {reservation}"
            )));
        }
    }
    Ok(())
}

impl Access {
    /// The client, if known.
    pub fn client(&self, id: &str) -> Option<&Client> {
        self.clients.get(id)
    }

    /// Whether `queue` is restricted.
    pub fn is_restricted(&self, queue: &str) -> bool {
        self.restricted.contains(queue)
    }

    /// Restricted queue → the clients allowed on it, sorted.
    pub fn owners(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (id, client) in &self.clients {
            for queue in &client.allowed_queues {
                out.entry(queue.as_str()).or_default().push(id);
            }
        }
        out
    }

    /// A live secret of `client_id` at `path` at time `now`.
    pub fn secret(&self, client_id: &str, path: &str, now: u64) -> Option<&Secret> {
        self.secrets
            .get(&(Name::from(client_id), path.to_owned()))
            .filter(|s| s.expires_at.is_none_or(|t| t > now))
    }

    /// Whether the refresh token `id` names was revoked (its record is kept until no
    /// access token issued from it can be valid, [`RefreshToken::outlived`]). A token no
    /// longer recorded for another reason (expired, its client's oldest beyond the cap,
    /// its client's secret replaced or the client deleted) is not: the access tokens
    /// issued from it live out their time, or are refused for their client's sake.
    pub fn refresh_revoked(&self, id: RefreshId) -> bool {
        let mut prefix = [0u8; 32];
        for (i, digit) in prefix.iter_mut().enumerate() {
            *digit = b"0123456789abcdef"[((id.0 >> (124 - 4 * i)) & 0xf) as usize];
        }
        let prefix = std::str::from_utf8(&prefix).expect("hex digits");
        // Hashes are keys in order: those beginning with the prefix follow it at once.
        self.tokens
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(hash, _)| hash.starts_with(prefix))
            .any(|(_, token)| token.revoked)
    }

    /// Drops every refresh token of `client_id`.
    fn drop_tokens(&mut self, client_id: &Name) {
        for hash in self.tokens_by_client.remove(client_id).unwrap_or_default() {
            self.tokens.remove(&hash);
        }
    }

    /// Folds one access event in.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::ClientSaved { id, client } => {
                let old = self.clients.insert(id.clone(), (**client).clone());
                // A new secret is how a leaked credential is replaced: the refresh tokens
                // issued with the old one go with it.
                if old.is_some_and(|old| old.secret_hash != client.secret_hash) {
                    self.drop_tokens(id);
                }
            }
            Event::ClientDeleted { id } => {
                self.clients.remove(id);
                self.drop_tokens(id);
                self.secrets.retain(|(owner, _), _| owner != id);
            }
            Event::RefreshTokenIssued {
                hash,
                client_id,
                issued_at,
                expires_at,
            } => {
                let list = self.tokens_by_client.entry(client_id.clone()).or_default();
                let tokens = &mut self.tokens;
                // This client's outlived tokens go first, then its oldest live ones
                // beyond the cap (revoked ones are not counted: they are kept to refuse
                // the access tokens issued from them).
                list.retain(|old| {
                    let keep = tokens.get(old).is_some_and(|t| !t.outlived(*issued_at));
                    if !keep {
                        tokens.remove(old);
                    }
                    keep
                });
                let live = |tokens: &BTreeMap<Box<str>, RefreshToken>, hash: &str| {
                    tokens.get(hash).is_some_and(|t| !t.revoked)
                };
                while list.iter().filter(|h| live(tokens, h)).count() >= MAX_TOKENS_PER_CLIENT {
                    let Some(oldest) = list.iter().position(|h| live(tokens, h)) else {
                        break;
                    };
                    if let Some(old) = list.remove(oldest) {
                        tokens.remove(&old);
                    }
                }
                list.push_back(hash.clone());
                self.tokens.insert(
                    hash.clone(),
                    RefreshToken {
                        client_id: client_id.clone(),
                        issued_at: *issued_at,
                        expires_at: *expires_at,
                        revoked: false,
                    },
                );
            }
            Event::RefreshTokenRevoked { hash } => {
                if let Some(token) = self.tokens.get_mut(hash) {
                    token.revoked = true;
                }
            }
            Event::QueueRestricted { queue, client_id } => {
                self.restricted.insert(queue.clone());
                if let Some(client) = self.clients.get_mut(client_id) {
                    client.allowed_queues.insert(queue.to_string());
                }
            }
            Event::QueueUnrestricted { queue, client_id } => {
                // As upstream: the restriction goes for everyone, the queue leaves only
                // this client's list.
                self.restricted.remove(queue);
                if let Some(client) = self.clients.get_mut(client_id) {
                    client.allowed_queues.remove(&**queue);
                }
            }
            Event::SecretStored {
                client_id,
                path,
                sealed,
                expires_at,
                ephemeral,
            } => {
                self.secrets.insert(
                    (client_id.clone(), path.to_string()),
                    Secret {
                        sealed: sealed.clone(),
                        expires_at: *expires_at,
                        ephemeral: *ephemeral,
                    },
                );
            }
            Event::SecretDeleted { client_id, path } => {
                self.secrets.remove(&(client_id.clone(), path.to_string()));
            }
            Event::SecretsExpired { client_id, at } => {
                let expired = self.expired_secrets(client_id, *at);
                for path in expired {
                    self.secrets.remove(&(client_id.clone(), path));
                }
            }
            _ => {}
        }
    }

    /// `client_id`'s secrets, expired or not, in path order.
    fn secrets_of<'a>(&'a self, client_id: &'a str) -> impl Iterator<Item = (&'a str, &'a Secret)> {
        let from = (Name::from(client_id), String::new());
        self.secrets
            .range(from..)
            .take_while(move |((owner, _), _)| &**owner == client_id)
            .map(|((_, path), secret)| (path.as_str(), secret))
    }

    /// How many secrets `client_id` stores, expired ones included (they stay until a
    /// [`Event::SecretsExpired`] removes them).
    pub fn secret_count(&self, client_id: &str) -> usize {
        self.secrets_of(client_id).count()
    }

    /// The paths of `client_id`'s secrets that read as absent at `now`.
    pub fn expired_secrets(&self, client_id: &str, now: u64) -> Vec<String> {
        self.secrets_of(client_id)
            .filter(|(_, s)| s.expires_at.is_some_and(|t| t <= now))
            .map(|(path, _)| path.to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(
        max_priority: &[(&str, i64)],
        allowed: &[&str],
        reserve: &[(&str, i64)],
    ) -> Permissions {
        Permissions {
            client_id: "c".into(),
            role: Some("contributor".into()),
            max_priority: max_priority
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            allowed_queues: allowed.iter().map(|s| s.to_string()).collect(),
            max_reservation_time: reserve.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            email: None,
        }
    }

    fn asked(queue: &str, priority: i64, reservation: u64, restricted: bool) -> Asked<'_> {
        Asked {
            queue,
            priority,
            reservation,
            restricted,
        }
    }

    #[test]
    fn submission_checks_follow_upstream_statuses() {
        let status = |r: Result<()>| r.err().map(|e| e.status());
        assert_eq!(
            status(check_submission(None, asked("q", 0, 3600, false))),
            None
        );
        assert_eq!(
            status(check_submission(None, asked("q", 5, 3600, false))),
            Some(401)
        );
        assert_eq!(
            status(check_submission(None, asked("q", 0, 3600, true))),
            Some(401)
        );
        assert_eq!(
            status(check_submission(None, asked("q", 0, 21_601, false))),
            Some(401)
        );
        assert_eq!(
            status(check_submission(None, asked("q", 0, 21_600, false))),
            None
        );
        let p = perms(&[("*", 10), ("q", 50)], &["r"], &[("q", 30_000)]);
        assert_eq!(
            status(check_submission(Some(&p), asked("q", 50, 3600, false))),
            None
        );
        assert_eq!(
            status(check_submission(Some(&p), asked("q", 51, 3600, false))),
            Some(403)
        );
        assert_eq!(
            status(check_submission(Some(&p), asked("x", 10, 3600, false))),
            None
        );
        assert_eq!(
            status(check_submission(Some(&p), asked("x", 11, 3600, false))),
            Some(403)
        );
        assert_eq!(
            status(check_submission(Some(&p), asked("q", -5, 3600, false))),
            None
        );
        assert_eq!(
            status(check_submission(Some(&p), asked("r", 0, 3600, true))),
            None
        );
        assert_eq!(
            status(check_submission(Some(&p), asked("s", 0, 3600, true))),
            Some(403)
        );
        assert_eq!(
            status(check_submission(Some(&p), asked("q", 0, 30_000, false))),
            None
        );
        assert_eq!(
            status(check_submission(Some(&p), asked("q", 0, 30_001, false))),
            Some(403)
        );
        assert_eq!(
            status(check_submission(Some(&p), asked("x", 0, 21_601, false))),
            Some(403)
        );
    }

    #[test]
    fn tokens_are_capped_per_client_and_dropped_with_their_client() {
        let mut access = Access::default();
        let id: Name = "c".into();
        access.apply(&Event::ClientSaved {
            id: id.clone(),
            client: Box::new(Client::default()),
        });
        for i in 0..(MAX_TOKENS_PER_CLIENT + 5) {
            access.apply(&Event::RefreshTokenIssued {
                hash: format!("h{i}").into(),
                client_id: id.clone(),
                issued_at: 10,
                expires_at: 100,
            });
        }
        assert_eq!(access.tokens.len(), MAX_TOKENS_PER_CLIENT);
        assert!(!access.tokens.contains_key("h0"));
        access.apply(&Event::ClientDeleted { id });
        assert!(access.tokens.is_empty());
    }

    /// A revoked refresh token is kept past the cap and its own expiry until no access
    /// token issued from it can be valid, so it keeps refusing them; the cap counts live
    /// tokens only.
    #[test]
    fn a_revoked_refresh_token_outlives_the_cap_and_its_access_tokens() {
        let mut access = Access::default();
        let id: Name = "c".into();
        access.apply(&Event::ClientSaved {
            id: id.clone(),
            client: Box::new(Client::default()),
        });
        let hash = |i: usize| -> Box<str> { format!("{i:032x}{:032x}", 0).into() };
        let issue = |access: &mut Access, i: usize, at: u64| {
            access.apply(&Event::RefreshTokenIssued {
                hash: hash(i),
                client_id: id.clone(),
                issued_at: at,
                expires_at: 1_000,
            });
        };
        issue(&mut access, 0, 10);
        let revoked = RefreshId::of_hash(&hash(0)).unwrap();
        assert_eq!(revoked.hex(), &hash(0)[..32]);
        assert!(!access.refresh_revoked(revoked));
        access.apply(&Event::RefreshTokenRevoked { hash: hash(0) });
        assert!(access.refresh_revoked(revoked));
        // A hundred more logins: the cap drops the oldest live ones, never the revoked.
        for i in 1..=(MAX_TOKENS_PER_CLIENT + 5) {
            issue(&mut access, i, 20);
        }
        assert!(access.refresh_revoked(revoked));
        assert_eq!(access.tokens.len(), MAX_TOKENS_PER_CLIENT + 1);
        assert!(!access.tokens.contains_key(&hash(1)));
        let other = RefreshId::of_hash(&hash(MAX_TOKENS_PER_CLIENT)).unwrap();
        assert!(!access.refresh_revoked(other));
        // Past its expiry it stays while an access token from it may live ...
        issue(&mut access, 500, 1_000 + MAX_ACCESS_TOKEN_SECS - 1);
        assert!(access.refresh_revoked(revoked));
        assert!(
            !access.tokens.contains_key(&hash(2)),
            "expired live ones go"
        );
        // ... and goes after.
        issue(&mut access, 501, 1_000 + MAX_ACCESS_TOKEN_SECS);
        assert!(!access.refresh_revoked(revoked));
        assert_eq!(
            access.tokens.len(),
            1,
            "only the one just issued (and expired)"
        );
        assert_eq!(RefreshId::parse("xyz"), None);
        assert_eq!(RefreshId::of_hash("0123"), None);
    }

    #[test]
    fn a_new_secret_drops_the_clients_refresh_tokens_and_other_changes_keep_them() {
        let mut access = Access::default();
        let save = |access: &mut Access, id: &str, secret: &str, role: Role| {
            let client = Client {
                secret_hash: secret.into(),
                role: Some(role),
                ..Client::default()
            };
            access.apply(&Event::ClientSaved {
                id: id.into(),
                client: Box::new(client),
            });
        };
        let issue = |access: &mut Access, id: &str, hash: &str| {
            access.apply(&Event::RefreshTokenIssued {
                hash: hash.into(),
                client_id: id.into(),
                issued_at: 10,
                expires_at: 100,
            });
        };
        save(&mut access, "c", "s1", Role::Contributor);
        save(&mut access, "d", "s1", Role::Contributor);
        issue(&mut access, "c", "hc");
        issue(&mut access, "d", "hd");
        save(&mut access, "c", "s1", Role::Manager);
        assert!(access.tokens.contains_key("hc"), "a role change keeps them");
        save(&mut access, "c", "s2", Role::Manager);
        assert!(!access.tokens.contains_key("hc"), "a new secret drops them");
        assert!(access.tokens.contains_key("hd"), "only the client's own");
        issue(&mut access, "c", "hc2");
        assert!(access.tokens.contains_key("hc2"));
    }

    #[test]
    fn a_secrets_fingerprint_follows_its_hash_only() {
        let client = |hash: &str, role| Client {
            secret_hash: hash.into(),
            role: Some(role),
            ..Client::default()
        };
        let a = client("$2b$08$saltsaltsaltsaltsaltsOhash1", Role::Agent);
        assert_eq!(
            a.secret_fingerprint(),
            client(&a.secret_hash, Role::Admin).secret_fingerprint(),
            "other fields do not count"
        );
        assert_ne!(
            a.secret_fingerprint(),
            client("$2b$08$saltsaltsaltsaltsaltsOhash2", Role::Agent).secret_fingerprint()
        );
        // The same secret hashed twice (two salts) gives two fingerprints.
        let one = crate::access::token::hash_secret("the-same-secret-0123").unwrap();
        let two = crate::access::token::hash_secret("the-same-secret-0123").unwrap();
        assert_ne!(secret_fingerprint(&one), secret_fingerprint(&two));
    }

    #[test]
    fn secrets_expired_removes_only_that_clients_expired_secrets() {
        let mut access = Access::default();
        let store = |access: &mut Access, owner: &str, path: &str, expires_at: Option<u64>| {
            access.apply(&Event::SecretStored {
                client_id: owner.into(),
                path: path.into(),
                sealed: Bytes::from_static(b"sealed"),
                expires_at,
                ephemeral: false,
            });
        };
        store(&mut access, "c", "old", Some(10));
        store(&mut access, "c", "edge", Some(20));
        store(&mut access, "c", "live", Some(21));
        store(&mut access, "c", "forever", None);
        store(&mut access, "d", "old", Some(10));
        assert_eq!(access.secret_count("c"), 4);
        assert_eq!(access.expired_secrets("c", 20), ["edge", "old"]);
        access.apply(&Event::SecretsExpired {
            client_id: "c".into(),
            at: 20,
        });
        assert_eq!(access.secret_count("c"), 2);
        assert!(access.secret("c", "live", 20).is_some());
        assert!(access.secret("c", "forever", 20).is_some());
        assert_eq!(access.secret_count("d"), 1, "another client's stay");
    }

    #[test]
    fn restricting_a_queue_adds_it_to_the_client_and_unrestricting_removes_it() {
        let mut access = Access::default();
        let id: Name = "c".into();
        access.apply(&Event::ClientSaved {
            id: id.clone(),
            client: Box::new(Client::default()),
        });
        let queue: Name = "q".into();
        access.apply(&Event::QueueRestricted {
            queue: queue.clone(),
            client_id: id.clone(),
        });
        assert!(access.is_restricted("q"));
        assert_eq!(access.owners().get("q"), Some(&vec!["c"]));
        access.apply(&Event::QueueUnrestricted {
            queue,
            client_id: id,
        });
        assert!(!access.is_restricted("q"));
        assert!(access.owners().is_empty());
    }
}
