//! Upstream's submit-time job schema, as data: the `Job` schema of Testflinger's
//! `server/src/testflinger/api/schemas.py` (canonical/testflinger fe381ff2, marshmallow
//! 3.26), with its nested `TestData`, `ReserveData`, `Attachment` and the 13 device
//! connectors' `provision_data` schemas.
//!
//! A [`Schema`] is a table of [`Field`]s; [`load`] walks it the way marshmallow loads: a
//! missing required field, a `null` where none is allowed, a value of the wrong kind, an
//! unknown key (in every nested schema) or a failed validator (length, choice, pattern,
//! URL, e-mail, whole-schema check) is an [`Invalid`] naming the path and marshmallow's own
//! words. Values are coerced in place as marshmallow loads them (upstream stores the loaded
//! job): an integer field takes `"5"` or `5.9` as `5`, a boolean `"yes"` as `true`, a
//! duration `"1h30m"` as `5400`.
//!
//! Deliberate differences, each because flinger keeps more than upstream or bounds what
//! upstream leaves unbounded:
//! - unknown *top-level* fields are kept and reach the agent (upstream: 422);
//! - `job_id: null` asks for a new id like `""` (the original server's rule; upstream:
//!   422), and a `job_id` that is not a string is the 400 "Invalid job_id specified" both
//!   servers give for a bad id (upstream: 422 "Not a valid string.");
//! - integers beyond 64 bits are "Number too large." (upstream takes any Python int);
//! - `job_queue` is at most [`MAX_NAME`](super::wire::MAX_NAME) bytes, `tags` and `exclude_agents` at most
//!   [`MAX_LIST`](super::wire::MAX_LIST) entries;
//! - e-mail domains must be ASCII (upstream retries a non-ASCII domain as IDNA) and digits
//!   in numbers and durations must be ASCII (Python also takes other scripts' digits).
//!
//! This file holds the vocabulary ([`Schema`], [`Field`], [`Kind`], [`Invalid`]);
//! `schemas.rs` holds upstream's schemas as data and `validate.rs` the loader that walks
//! them.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

mod schemas;
mod validate;

pub use schemas::{ATTACHMENT, JOB, PROVISION_LOG, PROVISION_SCHEMAS, RESERVE_DATA, TEST_DATA};
pub use validate::{duration, integer, is_email, is_url, load, Lookup, Object};

/// Why a value does not load: where (top-level field first, then keys and list indexes)
/// and marshmallow's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The path to the value; `_schema` names a whole-object check.
    pub path: Vec<String>,
    /// What is wrong, in marshmallow's words ("Not a valid URL.").
    pub reason: String,
    /// A longer explanation for the response's `message`, when the reason alone would not
    /// say what to fix (which connector schema came closest).
    pub hint: Option<String>,
}

impl Invalid {
    fn new(reason: impl Into<String>) -> Invalid {
        Invalid {
            path: Vec::new(),
            reason: reason.into(),
            hint: None,
        }
    }

    fn at(key: &str, reason: impl Into<String>) -> Invalid {
        Invalid::new(reason).within(key)
    }

    fn within(mut self, key: &str) -> Invalid {
        self.path.insert(0, key.to_owned());
        self
    }

    /// The top-level field at fault (`_schema` for the body as a whole).
    pub fn field(&self) -> &str {
        self.path.first().map_or("_schema", String::as_str)
    }

    /// The reason with the path below the top-level field: `ssh_keys.0: String does not
    /// match expected pattern.`
    pub fn detail(&self) -> String {
        match self.path.get(1..) {
            Some(rest) if !rest.is_empty() => format!("{}: {}", rest.join("."), self.reason),
            _ => self.reason.clone(),
        }
    }
}

/// The kind of value a field holds (a marshmallow field class with its validator).
#[derive(Debug)]
pub enum Kind {
    /// `fields.String`.
    Str,
    /// `fields.Integer` (not strict: numbers and numeric strings, truncated).
    Int,
    /// `fields.Boolean` (marshmallow's truthy and falsy spellings).
    Bool,
    /// `fields.URL`: absolute http, https, ftp or ftps URL with a dotted host name,
    /// `localhost` or an IP address.
    Url,
    /// `fields.Email`.
    Email,
    /// `fields.Dict()`: any JSON object.
    Dict,
    /// Upstream's `DurationField`: seconds, or a duration string such as `1h30m`.
    Duration,
    /// `fields.List` of this kind.
    List(&'static Kind),
    /// `fields.Nested` of this schema.
    Nested(&'static Schema),
    /// `fields.String` with a `Regexp` validator.
    Matching(Pattern),
    /// `fields.String` with a `OneOf` validator.
    OneOf(&'static [&'static str]),
    /// `fields.Dict` whose keys and values are strings matching these patterns.
    DictOf(Pattern, Pattern),
    /// Upstream's `ProvisionData`: the first device connector schema that loads it.
    ProvisionData,
}

/// The regular expressions upstream's schemas use (`Regexp` validators).
#[derive(Clone, Copy, Debug)]
pub enum Pattern {
    /// `ReserveData.ssh_keys`: `^(lp|gh):(\S+)$`.
    SshKey,
    /// `TestData.secrets` keys: `^[a-zA-Z_][a-zA-Z0-9_]*$`.
    SecretName,
    /// `TestData.secrets` values: `^[a-zA-Z0-9_/-]+$`.
    SecretPath,
}

impl Pattern {
    fn regex(self) -> &'static Regex {
        // Python's `$` also matches before a final newline: `\n?\z` says the same.
        static SSH_KEY: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"^(lp|gh):\S+\n?\z").expect("a valid pattern"));
        static SECRET_NAME: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"^[a-zA-Z_][a-zA-Z0-9_]*\n?\z").expect("a valid pattern"));
        static SECRET_PATH: LazyLock<Regex> =
            LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_/-]+\n?\z").expect("a valid pattern"));
        match self {
            Pattern::SshKey => &SSH_KEY,
            Pattern::SecretName => &SECRET_NAME,
            Pattern::SecretPath => &SECRET_PATH,
        }
    }
}

/// One field of a schema.
#[derive(Debug)]
pub struct Field {
    /// Its key.
    pub name: &'static str,
    /// What it holds.
    pub kind: Kind,
    /// `required=True`.
    pub required: bool,
    /// `allow_none=True`.
    pub nullable: bool,
    /// `Length(min=…)`: fewest characters or entries.
    pub min: Option<usize>,
    /// `Length(max=…)`: most characters (strings) or entries (lists).
    pub max: Option<usize>,
    /// `load_default`: the value stored when the field is absent.
    pub default: Option<fn() -> Value>,
}

impl Field {
    const fn opt(name: &'static str, kind: Kind) -> Field {
        Field {
            name,
            kind,
            required: false,
            nullable: false,
            min: None,
            max: None,
            default: None,
        }
    }

    const fn req(name: &'static str, kind: Kind) -> Field {
        Field {
            required: true,
            ..Field::opt(name, kind)
        }
    }

    const fn nullable(self) -> Field {
        Field {
            nullable: true,
            ..self
        }
    }

    const fn min(self, min: usize) -> Field {
        Field {
            min: Some(min),
            ..self
        }
    }

    const fn max(self, max: usize) -> Field {
        Field {
            max: Some(max),
            ..self
        }
    }

    const fn default(self, default: fn() -> Value) -> Field {
        Field {
            default: Some(default),
            ..self
        }
    }
}

/// What a schema does with keys it does not declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// marshmallow's default: 422 "Unknown field.".
    Raise,
    /// Keep them as they are (flinger's top level: they reach the agent).
    Keep,
}

/// A whole-object check: why the object fails, or `None`.
pub type SchemaCheck = fn(&dyn validate::Lookup) -> Option<String>;

/// A marshmallow schema: fields, the unknown-key policy and an optional whole-object check
/// (`@validates_schema`, run once every field loaded), which returns why it fails.
#[derive(Debug)]
pub struct Schema {
    /// Upstream's name for it (error hints name connector schemas by it).
    pub name: &'static str,
    /// Declared fields.
    pub fields: &'static [Field],
    /// Undeclared keys.
    pub unknown: Unknown,
    /// `@validates_schema`.
    pub check: Option<SchemaCheck>,
}

const fn schema(name: &'static str, fields: &'static [Field]) -> Schema {
    Schema {
        name,
        fields,
        unknown: Unknown::Raise,
        check: None,
    }
}
