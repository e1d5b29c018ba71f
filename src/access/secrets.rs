//! Job secrets (upstream's `secrets/` store): values sealed with ChaCha20-Poly1305 under a
//! master key from the environment, so the write-ahead log and snapshots hold only
//! ciphertext; a job's `test_data.secrets` (`{ENV_NAME: path}`) is resolved into values
//! only in the copy handed to the agent it is dispatched to.
//!
//! The key is `FLINGER_SECRETS_KEY` (or upstream's `TESTFLINGER_SECRETS_MASTER_KEY`): any
//! string of at least 32 characters, hashed with SHA-256 into the 256-bit key. Without
//! it there is no secrets store, as upstream without one: PUT answers 400 "No secrets
//! store" and jobs naming secrets are refused (422).
//!
//! Each value is bound to its owner and path (AEAD associated data), so a ciphertext
//! copied to another client's path does not open.

use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Environment variables that may hold the master key (flinger's, then upstream's).
pub const MASTER_KEY_ENV: &[&str] = &["FLINGER_SECRETS_KEY", "TESTFLINGER_SECRETS_MASTER_KEY"];
/// Shortest master key accepted.
pub const MIN_MASTER_KEY_LEN: usize = 32;
/// Largest secret value, bytes.
pub const MAX_SECRET_BYTES: usize = 64 << 10;
/// Expiry of a secret stored without `expire_after` (upstream: one year).
pub const DEFAULT_EXPIRY_SECS: u64 = 365 * 24 * 3600;
const NONCE_LEN: usize = 12;

/// The master key from the environment (`FLINGER_SECRETS_KEY`, else
/// `TESTFLINGER_SECRETS_MASTER_KEY`, looked up through `env`), `Ok(None)` when neither is
/// set; one shorter than [`MIN_MASTER_KEY_LEN`] is an error naming the variable. Checked
/// with the configuration (before the data directory is touched) and where it is used.
pub fn env_master_key(
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<Option<String>, String> {
    for var in MASTER_KEY_ENV {
        if let Some(key) = env(var) {
            if key.len() < MIN_MASTER_KEY_LEN {
                return Err(format!(
                    "{var} must be at least {MIN_MASTER_KEY_LEN} bytes, got {} (e.g. \
                     `openssl rand -hex 32`), or unset to run without a secrets store",
                    key.len()
                ));
            }
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// Seals and opens secret values.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

fn aad(client_id: &str, path: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(client_id.len() + path.len() + 1);
    aad.extend_from_slice(client_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(path.as_bytes());
    aad
}

impl Sealer {
    /// The sealer from the environment's master key; `Ok(None)` when none is set.
    pub fn from_env() -> Result<Option<Sealer>> {
        Ok(env_master_key(&crate::config::env_var)
            .map_err(Error::Misconfigured)?
            .map(|key| Sealer::new(key.as_bytes())))
    }

    /// A sealer over the SHA-256 of `master`.
    pub fn new(master: &[u8]) -> Sealer {
        let key = Sha256::digest(master);
        Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// Nonce followed by the ciphertext of `value`, bound to `client_id` and `path`.
    pub fn seal(&self, client_id: &str, path: &str, value: &str) -> Bytes {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source works");
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: &aad(client_id, path),
                },
            )
            .expect("ChaCha20-Poly1305 encryption of a bounded message cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Bytes::from(out)
    }

    /// The value sealed for `client_id` at `path` (`None` if it does not open).
    pub fn open(&self, client_id: &str, path: &str, sealed: &[u8]) -> Option<String> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad(client_id, path),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

/// Upstream's secret path rule: `^[a-zA-Z0-9_-]+(/[a-zA-Z0-9_-]+)*$`, at most 512 bytes.
pub fn valid_path(path: &str) -> bool {
    path.len() <= 512
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// The `test_data.secrets` object of a job document, if any: `{ENV_NAME: path}`.
pub fn job_secrets(job: &Value) -> Option<&serde_json::Map<String, Value>> {
    job.get("test_data")?.get("secrets")?.as_object()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_owner_and_path() {
        let sealer = Sealer::new(b"0123456789abcdef0123456789abcdef");
        let sealed = sealer.seal("alice", "db/password", "hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            sealer.open("alice", "db/password", &sealed).as_deref(),
            Some("hunter2")
        );
        assert_eq!(sealer.open("bob", "db/password", &sealed), None);
        assert_eq!(sealer.open("alice", "db/other", &sealed), None);
        let other = Sealer::new(b"another key of thirty-two chars!");
        assert_eq!(other.open("alice", "db/password", &sealed), None);
    }

    #[test]
    fn paths_follow_upstream_pattern() {
        assert!(valid_path("a/b-c/d_e1"));
        for bad in ["", "/a", "a/", "a//b", "a b", "a/../b"] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }
}
