//! The API's query-string and cookie syntax: numbers in parameters, percent-decoded
//! pairs, the agent's name cookie.

use std::borrow::Cow;

use super::MAX_NAME;
use crate::error::{Error, Result};
use crate::model::Name;

/// A query parameter `name` that must be a whole number from 0 to `max`: 400 saying
/// which of the two it is not (`what` adds what the number means, e.g. "1: the job's
/// first run").
pub fn query_number(name: &str, value: &str, max: u64, what: &str) -> Result<u64> {
    use std::num::IntErrorKind;
    let what = if what.is_empty() {
        String::new()
    } else {
        format!(" ({what})")
    };
    match value.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        Err(e) if *e.kind() != IntErrorKind::PosOverflow => Err(Error::InvalidInput(format!(
            "{name} must be a non-negative integer{what}, got {:?}",
            value.chars().take(40).collect::<String>()
        ))),
        _ => Err(Error::InvalidInput(format!(
            "{name} must be at most {max}{what}"
        ))),
    }
}

/// Decodes an `application/x-www-form-urlencoded` query into (key, value) pairs; a key or
/// value without `%` or `+` is borrowed from `query`. A key or value whose escapes decode
/// to bytes that are not UTF-8 is a 400 naming it, as such a path is: read leniently, it
/// would name another queue (`%ff` would be U+FFFD) than the client meant.
pub fn query_pairs(query: &str) -> Result<Vec<(Cow<'_, str>, Cow<'_, str>)>> {
    // Byte loops, not `str` searches: a query is tens of bytes, where each memchr-backed
    // search costs more to set up than the plain scan (a pop's three `queue=` pairs were
    // ~2,100 instructions, most of a pop's parsing).
    let mut pairs = Vec::with_capacity(4);
    let mut rest = query;
    while !rest.is_empty() {
        // Cut at ASCII bytes, so every slice is on a character boundary.
        let (pair, after) = match rest.bytes().position(|b| b == b'&') {
            Some(amp) => (&rest[..amp], &rest[amp + 1..]),
            None => (rest, ""),
        };
        rest = after;
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.bytes().position(|b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, ""),
        };
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(pairs)
}

fn percent_decode(text: &str) -> Result<Cow<'_, str>> {
    if !text.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        let decoded = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some(hex(bytes[i + 1])? * 16 + hex(bytes[i + 2])?))
            .flatten()
            .map(|v| v as u8);
        match (bytes[i], decoded) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        Error::InvalidInput(format!(
            "Invalid UTF-8 in the query string: {shown:?} does not decode to UTF-8 text"
        ))
    })
}

/// The `agent_name` cookie (set by `POST /v1/agents/data/<name>`), if sent.
pub fn agent_cookie(headers: &axum::http::HeaderMap) -> Option<Name> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("agent_name="))
        .map(|name| name.trim_matches('"'))
        .find(|name| !name.is_empty() && name.len() <= MAX_NAME)
        .map(Name::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_repeated_keys_and_escapes() {
        let pairs = query_pairs("queue=a&queue=b%20c&queue=d+e&x=%zz&y=%4&q%75eue=%41").unwrap();
        assert_eq!(pairs[0], (Cow::Borrowed("queue"), Cow::Borrowed("a")));
        assert_eq!(pairs[1].1, "b c");
        assert_eq!(pairs[2].1, "d e");
        assert_eq!(pairs[3].1, "%zz");
        assert_eq!(pairs[4].1, "%4");
        assert_eq!(pairs[5], (Cow::Borrowed("queue"), Cow::Borrowed("A")));
        assert!(matches!(pairs[5].0, Cow::Owned(_)));
        assert_eq!(query_pairs("queue=%C3%A9").unwrap()[0].1, "é");
        // Empty pairs skipped; a pair without `=` is a key with an empty value; only the
        // first `=` separates; raw non-ASCII text passes through.
        let cut = |q| -> Vec<(String, String)> {
            let pairs = query_pairs(q).unwrap().into_iter();
            pairs
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        };
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(cut(""), []);
        assert_eq!(cut("&&"), []);
        assert_eq!(
            cut("&queue=a&&wait&=x&"),
            [pair("queue", "a"), pair("wait", ""), pair("", "x")]
        );
        assert_eq!(cut("queue=a=b&é=ü"), [pair("queue", "a=b"), pair("é", "ü")]);
        for bad in ["queue=%ff", "q%ffueue=a", "queue=a%C3", "queue=%ED%A0%80"] {
            assert!(
                matches!(query_pairs(bad), Err(Error::InvalidInput(_))),
                "{bad}"
            );
        }
    }
}
