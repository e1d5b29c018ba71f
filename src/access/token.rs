//! Credentials: access tokens (HS256 JWTs with Testflinger's claim layout, plus
//! flinger's `secret_fp`: the fingerprint of the client secret they were issued under,
//! so a new secret ends them, and `rt`: the refresh token they were issued with or from,
//! so revoking it ends them), refresh tokens (opaque random strings, stored only as
//! SHA-256), client secrets (bcrypt, cost 8 as upstream) and the signing key (from the
//! environment, else generated once into the data directory, mode 0600).
//!
//! Upstream source: `server/src/testflinger/api/auth.py` (`generate_access_token`,
//! `decode_jwt_token`, `generate_refresh_token`, `hash_secret`). Status codes and
//! messages follow it: expired or not yet valid 401, anything else wrong 403.

use std::io::Write;
use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::access::{Permissions, RefreshId};

/// bcrypt cost of client secrets (upstream `HASH_ROUNDS`).
pub const BCRYPT_COST: u32 = 8;
/// Length of a refresh token (upstream `generate_token(48)`).
pub const REFRESH_TOKEN_LEN: usize = 48;
/// Name of the generated signing key file in the data directory.
pub const SIGNING_KEY_FILE: &str = "jwt-signing-key";
/// Environment variables that may hold the signing key (flinger's, then upstream's).
pub const SIGNING_KEY_ENV: &[&str] = &["FLINGER_JWT_SIGNING_KEY", "JWT_SIGNING_KEY"];

/// A JWT's claims, as upstream encodes them.
/// Every field is optional when decoding so that a missing claim is reported as such
/// (upstream's 403 "Token missing required claim: <c>"), not as undecodable.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    permissions: Option<Permissions>,
    /// flinger's own: the [`crate::model::access::secret_fingerprint`] of the client's
    /// secret when the token was issued, 16 hex digits. Upstream clients only pass the
    /// token on (the CLI reads `permissions` and nothing else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_fp: Option<String>,
    /// flinger's own: the [`RefreshId`] of the refresh token the token was issued with
    /// (`/v1/oauth2/token`) or from (`/v1/oauth2/refresh`), 32 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rt: Option<String>,
}

/// What a verified access token says.
#[derive(Debug)]
pub struct Claimed {
    /// Its `permissions` claim (who its client is; the rights used are the client's
    /// current ones).
    pub permissions: Permissions,
    /// Its `exp`, unix seconds.
    pub exp: u64,
    /// The fingerprint of the client's secret it was issued under.
    pub secret: u64,
    /// The refresh token it was issued with or from.
    pub refresh: RefreshId,
}

/// The refusal of a token that lacks flinger's `secret_fp` or `rt` claim: one flinger
/// issued before it bound tokens to their client's secret and refresh token, or another
/// server sharing the signing key. It cannot show that it was issued under the client's
/// current secret, nor from a refresh token not since revoked, so it is refused (401,
/// which upstream's CLI and agent answer by obtaining a new token and replaying).
pub const NO_FLINGER_CLAIMS: &str =
    "The token does not say which client secret and refresh token it was issued under \
     (issued by an earlier version or another server): obtain a new one";

/// Signs and verifies access tokens.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    leeway: u64,
}

impl Signer {
    /// The clock skew tolerated, seconds.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// A signer over `key` (HS256) tolerating `leeway` seconds of clock skew.
    pub fn new(key: &[u8], leeway: u64) -> Signer {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway;
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        Signer {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            leeway,
        }
    }

    /// An access token for `permissions` issued at `now` (unix seconds), valid `ttl` s,
    /// under the client secret whose fingerprint is `secret`
    /// ([`crate::model::access::secret_fingerprint`]), with or from the refresh token
    /// `refresh`.
    pub fn issue(
        &self,
        permissions: &Permissions,
        secret: u64,
        refresh: RefreshId,
        now: u64,
        ttl: u64,
    ) -> String {
        let claims = Claims {
            exp: Some(now + ttl),
            iat: Some(now),
            sub: Some("access_token".into()),
            permissions: Some(permissions.clone()),
            secret_fp: Some(format!("{secret:016x}")),
            rt: Some(refresh.hex()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of serialisable claims cannot fail")
    }

    /// Verifies a bearer token: what it says, or upstream's error; a token without
    /// flinger's `secret_fp` and `rt` claims is refused with 401 [`NO_FLINGER_CLAIMS`]
    /// (after every check upstream makes).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claimed> {
        if token.is_empty() {
            return Err(Error::Unauthorized("Unauthorized".into()));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Error::Unauthorized("Token has expired".into()),
                ErrorKind::ImmatureSignature => Error::Unauthorized("Token not yet valid".into()),
                ErrorKind::InvalidSignature => Error::Forbidden("Invalid Token signature".into()),
                ErrorKind::MissingRequiredClaim(claim) => {
                    Error::Forbidden(format!("Token missing required claim: {claim}"))
                }
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => Error::Forbidden("Unable to decode token".into()),
                _ => Error::Forbidden("Invalid Token".into()),
            })?;
        let claims = data.claims;
        for (claim, present) in [
            ("exp", claims.exp.is_some()),
            ("iat", claims.iat.is_some()),
            ("sub", claims.sub.is_some()),
        ] {
            if !present {
                return Err(Error::Forbidden(format!(
                    "Token missing required claim: {claim}"
                )));
            }
        }
        // PyJWT refuses an `iat` in the future; jsonwebtoken does not check it.
        if claims.iat.unwrap_or(0) > now + self.leeway {
            return Err(Error::Unauthorized("Token not yet valid".into()));
        }
        let exp = claims.exp.unwrap_or(0);
        let permissions = match claims.permissions {
            Some(p) if !p.client_id.is_empty() && p.role().is_some() => p,
            _ => return Err(Error::Forbidden("Invalid Token".into())),
        };
        let (Some(secret), Some(refresh)) = (claims.secret_fp, claims.rt) else {
            return Err(Error::Unauthorized(NO_FLINGER_CLAIMS.into()));
        };
        // Only a holder of the signing key could write a malformed one.
        let secret = Some(&secret)
            .filter(|s| s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| Error::Forbidden("Invalid Token".into()))?;
        let refresh =
            RefreshId::parse(&refresh).ok_or_else(|| Error::Forbidden("Invalid Token".into()))?;
        Ok(Claimed {
            permissions,
            exp,
            secret,
            refresh,
        })
    }
}

/// `n` random characters from `[A-Za-z0-9]` (OS randomness).
pub fn random_text(n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes).expect("the OS random source works");
        // Rejection sampling keeps the distribution uniform (62 does not divide 256).
        for b in bytes {
            if (b as usize) < 62 * 4 && out.len() < n {
                out.push(ALPHABET[b as usize % 62] as char);
            }
        }
    }
    out
}

/// A fresh refresh token.
pub fn new_refresh_token() -> String {
    random_text(REFRESH_TOKEN_LEN)
}

/// How a refresh token is recorded: hex SHA-256. Tokens are 48 random characters (285
/// bits), so a fast hash suffices; the log and snapshots never hold the token.
pub fn token_hash(token: &str) -> Box<str> {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex.into()
}

/// Longest client secret in bytes: bcrypt reads no further, so two longer secrets that
/// share their first 72 bytes would both match one hash.
pub const MAX_SECRET_BYTES: usize = 72;

/// What bcrypt could not tell apart in `secret`, if anything: more than
/// [`MAX_SECRET_BYTES`] (it reads no further), or a NUL (it ends the key there and
/// repeats it, so `"abc\0abc"` would match `"abc"`).
pub fn secret_problem(secret: &str) -> Option<String> {
    if secret.len() > MAX_SECRET_BYTES {
        Some(format!(
            "Longer than maximum length {MAX_SECRET_BYTES} bytes."
        ))
    } else if secret.contains('\0') {
        Some("May not contain NUL characters.".into())
    } else {
        None
    }
}

/// bcrypt hash of a client secret (slow on purpose: run it off the async runtime); 422
/// for a secret with a [`secret_problem`].
pub fn hash_secret(secret: &str) -> Result<String> {
    if let Some(problem) = secret_problem(secret) {
        return Err(Error::validation("client_secret", problem));
    }
    bcrypt::hash(secret, BCRYPT_COST).map_err(|e| Error::Internal(format!("bcrypt: {e}")))
}

/// Whether `secret` matches `hash` (constant-time inside bcrypt; false for a malformed
/// hash, and for a secret with a [`secret_problem`], which no stored secret has: bcrypt
/// would compare only part of it).
pub fn secret_matches(secret: &str, hash: &str) -> bool {
    secret_problem(secret).is_none() && bcrypt::verify(secret, hash).unwrap_or(false)
}

/// What is wrong with `client_id` as a client id, if anything: 1 to 256 bytes, no `:`
/// (HTTP Basic credentials split at the first one, so such a client could never obtain
/// a token) and no control characters (they would forge lines in logs and in
/// `flinger client`'s output).
pub fn client_id_problem(client_id: &str) -> Option<&'static str> {
    if client_id.is_empty() || client_id.len() > crate::http::wire::MAX_NAME {
        Some("client ids are 1 to 256 bytes")
    } else if client_id.contains(':') {
        Some("client ids may not contain ':' (HTTP Basic credentials split at it)")
    } else if client_id.chars().any(char::is_control) {
        Some("client ids may not contain control characters")
    } else {
        None
    }
}

/// Longest email address kept, bytes: RFC 5321's 256-byte path less its angle brackets.
pub const MAX_EMAIL_BYTES: usize = 254;

/// What is wrong with a client's email address, if anything: a non-empty local part of at
/// most 64 bytes, one `@`, and a domain of non-empty dot-separated labels, at most
/// [`MAX_EMAIL_BYTES`] in all, without spaces or control characters (an address is shown
/// in `flinger client list` and in tokens' claims: a line break would forge output). Not
/// a full RFC 5322 parser: quoted local parts and address literals are refused.
pub fn email_problem(email: &str) -> Option<String> {
    if email.len() > MAX_EMAIL_BYTES {
        return Some(format!(
            "it is {} bytes, more than {MAX_EMAIL_BYTES}",
            email.len()
        ));
    }
    if email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Some("it contains a space or a control character".into());
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Some("it has no '@'".into());
    };
    if local.is_empty() {
        return Some("nothing comes before the '@'".into());
    }
    if local.len() > 64 {
        return Some("the part before the '@' is longer than 64 bytes".into());
    }
    if domain.contains('@') {
        return Some("it has more than one '@'".into());
    }
    if domain.is_empty() {
        return Some("no domain comes after the '@'".into());
    }
    if domain.split('.').any(str::is_empty) {
        return Some(format!("the domain {domain:?} has an empty label"));
    }
    None
}

/// Shortest signing key accepted, bytes, from any source (environment or the kept file):
/// RFC 7518 §3.2 requires an HS256 key of at least the hash's 256 bits. Anyone holding
/// one token can test guesses of the key offline; a short one found forges tokens of any
/// role.
pub const MIN_SIGNING_KEY_BYTES: usize = 32;

/// The signing key from the environment (`FLINGER_JWT_SIGNING_KEY`, else
/// `JWT_SIGNING_KEY`, looked up through `env`), `Ok(None)` when neither is set; one
/// shorter than [`MIN_SIGNING_KEY_BYTES`] is an error naming the variable. Checked with
/// the configuration (so a bad key is refused before the data directory is touched) and
/// again where the key is used.
pub fn env_signing_key(
    env: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<Option<Vec<u8>>, String> {
    for var in SIGNING_KEY_ENV {
        if let Some(value) = env(var) {
            if value.len() >= MIN_SIGNING_KEY_BYTES {
                return Ok(Some(value.into_bytes()));
            }
            return Err(format!(
                "{var} must be at least {MIN_SIGNING_KEY_BYTES} bytes, got {} (HS256 needs a \
                 256-bit key, RFC 7518 §3.2; e.g. `openssl rand -hex 32`), or unset to \
                 have one generated and kept",
                value.len()
            ));
        }
    }
    Ok(None)
}

/// The signing key: `FLINGER_JWT_SIGNING_KEY` or `JWT_SIGNING_KEY` when set
/// ([`env_signing_key`]), else the file store's private value [`SIGNING_KEY_FILE`],
/// generated on first use (64 random characters) and kept durably so tokens survive
/// restarts and power loss: a mode-0600 file in the data directory, or a row in the
/// PostgreSQL journal's database, which every node then shares. A kept key shorter than
/// [`MIN_SIGNING_KEY_BYTES`] (written by hand, or emptied) is refused, saying where it is
/// and how to replace it: never used, never silently replaced.
pub async fn signing_key(store: &dyn crate::journal::files::FileStore) -> Result<Vec<u8>> {
    if let Some(key) = env_signing_key(&crate::config::env_var).map_err(Error::Misconfigured)? {
        return Ok(key);
    }
    let key = store
        .private(SIGNING_KEY_FILE, random_text(64).into_bytes())
        .await?;
    if key.len() < MIN_SIGNING_KEY_BYTES {
        let place = store.private_place(SIGNING_KEY_FILE);
        return Err(Error::Misconfigured(format!(
            "the access-token signing key in {} is {} bytes, shorter than the \
             {MIN_SIGNING_KEY_BYTES} HS256 needs (RFC 7518 §3.2: a short key can be found \
             from any token, and tokens of any role forged). Remove it (`{}`) to have a new \
             one generated at the next start, or set FLINGER_JWT_SIGNING_KEY to at least \
             {MIN_SIGNING_KEY_BYTES} random bytes (e.g. `openssl rand -hex 32`); tokens \
             signed with the old key stop working either way",
            place.what,
            key.len(),
            place.remove
        )));
    }
    Ok(key)
}

/// A private file (mode 0600) written and synced under a temporary name beside `path`, put
/// in place only by [`StagedFile::commit`]. Dropped without a commit, the temporary file is
/// removed and `path` is as it was. So a caller can write the file, then record what it
/// holds, then put it in place: whatever fails first, nothing half-done is left behind.
pub struct StagedFile {
    /// Where it is written.
    tmp: std::path::PathBuf,
    /// Where it goes.
    path: std::path::PathBuf,
    /// The directory of both (synced after the rename).
    dir: std::path::PathBuf,
    /// Renamed into place (nothing to clean up).
    committed: bool,
}

impl StagedFile {
    /// Writes and syncs `bytes` under the temporary name (creating `path`'s directory if
    /// needed). Refuses a `path` that names a directory or no file at all.
    pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<StagedFile> {
        use std::io::{Error, ErrorKind};
        use std::os::unix::fs::OpenOptionsExt;
        let Some(name) = path.file_name() else {
            return Err(Error::new(ErrorKind::InvalidInput, "it names no file"));
        };
        if path.is_dir() {
            return Err(Error::new(ErrorKind::InvalidInput, "it is a directory"));
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // Not made here: a mistyped path would become a tree owned by whoever ran the
        // command (mode 0700 under a umask of 077), which the agent's user may not read.
        if !dir.is_dir() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "the folder {} does not exist (create it, readable by the agent's user)",
                    dir.display()
                ),
            ));
        }
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".tmp");
        let staged = StagedFile {
            tmp: dir.join(tmp_name),
            path: path.to_owned(),
            dir: dir.to_owned(),
            committed: false,
        };
        let _ = std::fs::remove_file(&staged.tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged.tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        Ok(staged)
    }

    /// Renames the file into place and syncs the directory.
    pub fn commit(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_replaces_the_old_one_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        StagedFile::write(&path, b"old").unwrap().commit().unwrap();
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        drop(StagedFile::write(&path, b"new").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(names(), ["token"], "the temporary file goes when dropped");
        StagedFile::write(&path, b"new").unwrap().commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(names(), ["token"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A directory, or a path under a file, is refused before anything is written.
        assert!(StagedFile::write(dir.path(), b"x").is_err());
        assert!(StagedFile::write(&path.join("below"), b"x").is_err());
        assert_eq!(names(), ["token"]);
    }

    #[test]
    fn email_addresses_need_a_local_part_an_at_and_a_domain() {
        for ok in [
            "a@b.c",
            "first.last+tag@example.co.uk",
            "ops@localhost",
            "ü@bücher.de",
        ] {
            assert_eq!(email_problem(ok), None, "{ok}");
        }
        let long_local = format!("{}@b.c", "a".repeat(65));
        let too_long = format!("a@{}.com", "b".repeat(MAX_EMAIL_BYTES));
        for (bad, why) in [
            ("", "no '@'"),
            ("alice", "no '@'"),
            ("@example.com", "before the '@'"),
            ("alice@", "no domain"),
            ("a@b@c.d", "more than one '@'"),
            ("a@.com", "empty label"),
            ("a@b..com", "empty label"),
            ("a@b.com.", "empty label"),
            ("a b@c.d", "a space or a control"),
            ("a@b.c\nforged line", "a space or a control"),
            ("a\u{7f}@b.c", "a space or a control"),
            (long_local.as_str(), "longer than 64 bytes"),
            (too_long.as_str(), "more than 254"),
        ] {
            let problem = email_problem(bad).unwrap_or_else(|| panic!("{bad:?} was taken"));
            assert!(problem.contains(why), "{bad:?}: {problem}");
        }
    }

    #[test]
    fn secrets_past_what_bcrypt_reads_are_refused_not_truncated() {
        let stored = "k".repeat(MAX_SECRET_BYTES);
        let hash = hash_secret(&stored).unwrap();
        assert!(secret_matches(&stored, &hash));
        // bcrypt alone would accept this: its first 72 bytes are the stored secret.
        assert!(!secret_matches(&format!("{stored}extra"), &hash));
        assert_eq!(
            hash_secret(&format!("{stored}k")).unwrap_err().status(),
            422
        );
        // bcrypt alone would take "abc" for this one.
        let nul = "abc\0abc\0abc\0abc";
        assert_eq!(hash_secret(nul).unwrap_err().status(), 422);
        let hash = hash_secret("abc").unwrap();
        assert!(bcrypt::verify(nul, &hash).unwrap_or(false));
        assert!(!secret_matches(nul, &hash));
    }

    #[test]
    fn client_ids_that_could_not_log_in_or_would_forge_lines_are_refused() {
        for good in ["lab-agent-1", "ci.bot@example.com", "é"] {
            assert_eq!(client_id_problem(good), None, "{good}");
        }
        let long = "a".repeat(257);
        for bad in ["", long.as_str(), "a:b", "a\nINFO fake line", "tab\there"] {
            assert!(client_id_problem(bad).is_some(), "{bad:?}");
        }
    }

    fn perms() -> Permissions {
        Permissions {
            client_id: "c".into(),
            role: Some("agent".into()),
            ..Permissions::default()
        }
    }

    #[test]
    fn tokens_verify_and_errors_follow_upstream_codes() {
        let now = crate::actors::now();
        let signer = Signer::new(b"key", 0);
        let rt = RefreshId(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        let token = signer.issue(&perms(), 0xfeed_0000_0000_beef, rt, now, 600);
        let claimed = signer.verify(&token, now).unwrap();
        assert_eq!(claimed.permissions, perms());
        assert_eq!(claimed.secret, 0xfeed_0000_0000_beef);
        assert_eq!(claimed.refresh, rt);
        assert_eq!(claimed.exp, now + 600);
        let status = |r: Result<Claimed>| r.unwrap_err().status();
        // Expired (jsonwebtoken reads the real clock: a token from the past).
        let old = signer.issue(&perms(), 1, rt, 1_000_000, 600);
        assert_eq!(status(signer.verify(&old, now)), 401);
        assert_eq!(status(Signer::new(b"other", 0).verify(&token, now)), 403);
        assert_eq!(status(signer.verify("garbage", now)), 403);
        assert_eq!(status(signer.verify("", now)), 401);
    }

    #[test]
    fn a_token_without_flingers_claims_is_refused_with_401_and_a_bad_one_with_403() {
        let now = crate::actors::now();
        let signer = Signer::new(b"key", 0);
        let rt = "000000000000000000000000000000aa";
        let sign = |secret_fp: Option<&str>, rt: Option<&str>| {
            let claims = Claims {
                exp: Some(now + 60),
                iat: Some(now),
                sub: Some("access_token".into()),
                permissions: Some(perms()),
                secret_fp: secret_fp.map(str::to_owned),
                rt: rt.map(str::to_owned),
            };
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &signer.encoding).unwrap()
        };
        let fp = "00000000000000ff";
        for (secret_fp, rt) in [(None, Some(rt)), (Some(fp), None), (None, None)] {
            let e = signer.verify(&sign(secret_fp, rt), now).unwrap_err();
            assert_eq!((e.status(), e.message()), (401, NO_FLINGER_CLAIMS));
        }
        for bad in ["xyz", "", "00000000000000001", "+000000000000001"] {
            let e = signer.verify(&sign(Some(bad), Some(rt)), now).unwrap_err();
            assert_eq!(e.status(), 403, "{bad:?}");
            let e = signer.verify(&sign(Some(fp), Some(bad)), now).unwrap_err();
            assert_eq!(e.status(), 403, "{bad:?}");
        }
        let claimed = signer.verify(&sign(Some(fp), Some(rt)), now).unwrap();
        assert_eq!((claimed.secret, claimed.refresh), (0xff, RefreshId(0xaa)));
    }

    #[test]
    fn refresh_tokens_are_random_and_hashed() {
        let a = new_refresh_token();
        assert_eq!(a.len(), REFRESH_TOKEN_LEN);
        assert_ne!(a, new_refresh_token());
        assert_eq!(token_hash(&a).len(), 64);
        assert!(!token_hash(&a).contains(&a[..8]));
    }
}
