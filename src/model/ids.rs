//! Identifiers: job ids (UUIDs in any spelling Python's `uuid.UUID` accepts) and
//! queue/agent names.
//!
//! Parsing lives here so every endpoint normalises ids the same way: two spellings of
//! one UUID always address one job.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's identity: a UUID, always printed lower-case hyphenated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

/// The longest id text we bother to parse; anything longer cannot be a UUID spelling.
const MAX_ID_TEXT: usize = 64;

impl JobId {
    /// A fresh random (v4) id, for jobs submitted without one.
    pub fn random() -> JobId {
        JobId(Uuid::new_v4())
    }

    /// Parses the spellings Python's `uuid.UUID(str)` accepts: an optional `urn:` and
    /// `uuid:` prefix, surrounding braces, hyphens anywhere, upper or lower case, as long
    /// as exactly 32 hex digits remain.
    pub fn parse(text: &str) -> Option<JobId> {
        if text.len() > MAX_ID_TEXT {
            return None;
        }
        // The uuid crate's hyphenated and simple spellings (36 and 32 characters) are
        // Python's too, with the same value, and its parser is several times faster: this
        // runs on most requests. (Not its `urn:` spelling: that prefix it takes in any case,
        // Python only in lower case.)
        if text.len() == 36 || text.len() == 32 {
            if let Ok(id) = Uuid::try_parse(text) {
                return Some(JobId(id));
            }
        }
        // Python removes every `urn:` and `uuid:`; only a text with a colon can have one.
        let unprefixed;
        let text = if text.contains(':') {
            unprefixed = text.replace("urn:", "").replace("uuid:", "");
            unprefixed.as_str()
        } else {
            text
        };
        let text = text.trim_matches(|c| c == '{' || c == '}');
        let mut bytes = [0u8; 16];
        let mut digits = 0usize;
        // Bytes, not chars: a byte of a multi-byte character is never a hex digit.
        for &c in text.as_bytes() {
            if c == b'-' {
                continue;
            }
            let value = (c as char).to_digit(16)? as u8;
            if digits >= 32 {
                return None;
            }
            bytes[digits / 2] |= if digits % 2 == 0 { value << 4 } else { value };
            digits += 1;
        }
        (digits == 32).then(|| JobId(Uuid::from_bytes(bytes)))
    }

    /// The raw 16 bytes, for compact encodings.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A queue or agent name: shared, immutable text (cloned into many jobs and messages).
pub type Name = Arc<str>;

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<&str>) {
        assert_eq!(
            JobId::parse(text).map(|id| id.to_string()).as_deref(),
            expected,
            "{text}"
        );
    }

    #[test]
    fn spellings_python_accepts_normalise_to_one_id() {
        let canonical = "0123abcd-4567-89ab-cdef-0123456789ab";
        for text in [
            canonical,
            "0123ABCD-4567-89AB-CDEF-0123456789AB",
            "{0123abcd-4567-89ab-cdef-0123456789ab}",
            "urn:uuid:0123abcd-4567-89ab-cdef-0123456789ab",
            "0123abcd456789abcdef0123456789ab",
            "0123-abcd-4567-89ab-cdef-0123-4567-89ab",
            "uuid:0123abcd-4567-89ab-cdef-0123456789ab",
            "0123abcd-urn:4567-89ab-cdef-0123456789ab",
        ] {
            check(text, Some(canonical));
        }
    }

    #[test]
    fn garbage_is_rejected() {
        for text in [
            "",
            "foo",
            "BAD_JOB_ID",
            "00000000-0000-0000-0000-00000000000X",
            "0123abcd456789abcdef0123456789ab0",
            "0123abcd456789abcdef0123456789a",
            "\u{0}",
            "0123abcd-4567-89ab-cdef-0123456789a\u{e9}",
            "0123abcd-4567-89ab-cdef-\u{ff10}123456789ab",
            "urn:0123abcd-4567-89ab-cdef-0123456789ab:",
            "URN:UUID:0123abcd-4567-89ab-cdef-0123456789ab",
            "urn:uuid:{0123abcd-4567-89ab-cdef-0123456789ab}x",
            &"a".repeat(10_000),
        ] {
            check(text, None);
        }
    }

    /// The rule `parse` documents, step by step and slowly (what its fast path must match).
    fn python_uuid(text: &str) -> Option<JobId> {
        if text.len() > MAX_ID_TEXT {
            return None;
        }
        let text = text.replace("urn:", "").replace("uuid:", "");
        let hex: String = text
            .trim_matches(|c| c == '{' || c == '}')
            .chars()
            .filter(|&c| c != '-')
            .collect();
        if hex.chars().count() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        Uuid::parse_str(&hex).ok().map(JobId)
    }

    proptest::proptest! {
        #[test]
        fn parse_agrees_with_python_on_any_text(text in "[0-9a-fA-F{}:nrudiNRUDI\\-\u{e9}]{0,48}") {
            proptest::prop_assert_eq!(JobId::parse(&text), python_uuid(&text));
        }

        #[test]
        fn parse_agrees_with_python_on_spelled_ids(
            id in proptest::array::uniform16(proptest::num::u8::ANY),
            prefix in "([uU][rR][nN]:)?([uU][uU][iI][dD]:)?\\{?",
            suffix in "\\}?:?",
        ) {
            let text = format!("{prefix}{}{suffix}", Uuid::from_bytes(id));
            proptest::prop_assert_eq!(JobId::parse(&text), python_uuid(&text));
        }
    }
}
