//! `multipart_artifact`: multipart uploads to `POST /v1/result/<id>/artifact` (via
//! `super::server`), with a fuzzed boundary. Shared by the fuzz target and the stable seed
//! replay.
//!
//! Input: byte 0 picks the job, byte 1 the mode; the rest, split at the first 0x00, is the
//! boundary and the body source. Mode even: the body is the source as is. Mode odd: the source,
//! split at 0x01, gives parts (first byte: which field name, the rest: its content) that are
//! assembled into a well-formed body.
//! Properties:
//! - an upload never gets a 5xx;
//! - a well-formed body with a plain boundary and a `file` field is accepted when it has at
//!   most `--max-upload-parts` parts, and refused with 413 when it has more;
//! - after a 200, `GET` returns exactly the bytes of the (first) `file` field; after any other
//!   answer the artifact is unchanged.

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode};

use super::server::{post, Server};

/// Field names a part can have; only `file` is the artifact.
const NAMES: &[(&str, Option<&str>)] = &[
    ("file", Some("artifact.tar.gz")),
    ("file", None),
    ("other", None),
    ("notes", Some("notes.txt")),
    ("File", Some("x")),
];

fn get(server: &Server, path: &str) -> (StatusCode, Vec<u8>) {
    let answer = server.send(Request::get(path).body(Body::empty()).unwrap());
    (answer.status, answer.body.to_vec())
}

/// Builds a well-formed body; returns it, the content of the first `file` part and the number
/// of parts.
fn assemble(boundary: &[u8], source: &[u8]) -> (Vec<u8>, Option<Vec<u8>>, usize) {
    let mut body = Vec::new();
    let mut file = None;
    let mut parts = 0;
    for part in source.split(|&b| b == 1) {
        parts += 1;
        let (pick, content) = part
            .split_first()
            .map_or((0, &[][..]), |(p, c)| (*p as usize, c));
        let (name, filename) = NAMES[pick % NAMES.len()];
        body.extend_from_slice(b"--");
        body.extend_from_slice(boundary);
        body.extend_from_slice(
            format!("\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes(),
        );
        if let Some(filename) = filename {
            body.extend_from_slice(
                format!("; filename=\"{filename}\"\r\nContent-Type: application/octet-stream")
                    .as_bytes(),
            );
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
        if name == "file" && file.is_none() {
            file = Some(content.to_vec());
        }
    }
    body.extend_from_slice(b"--");
    body.extend_from_slice(boundary);
    body.extend_from_slice(b"--\r\n");
    (body, file, parts)
}

pub fn check(server: &Server, data: &[u8]) {
    let [pick, mode, rest @ ..] = data else {
        return;
    };
    let id = server.jobs[*pick as usize % server.jobs.len()];
    let path = format!("/v1/result/{id}/artifact");
    let (boundary, source) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let mut content_type = b"multipart/form-data; boundary=".to_vec();
    content_type.extend_from_slice(boundary);
    let Ok(content_type) = HeaderValue::from_bytes(&content_type) else {
        return;
    };
    let Ok(content_type) = content_type.to_str().map(str::to_owned) else {
        return;
    };
    let (body, expected, parts) = if mode % 2 == 0 {
        (source.to_vec(), None, 0)
    } else {
        assemble(boundary, source)
    };
    // A body is only unambiguous when its boundary never shows up inside a part.
    let mut delimiter = b"--".to_vec();
    delimiter.extend_from_slice(boundary);
    let plain_boundary = (1..=70).contains(&boundary.len())
        && boundary
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        && !source.windows(delimiter.len()).any(|w| w == delimiter);
    let expected = expected.filter(|_| plain_boundary);
    let too_many_parts = plain_boundary && parts > server.max_upload_parts;

    let before = get(server, &path);
    let answer = server.send(post(&path, &content_type, body));
    let status = answer.status;
    assert!(
        status.as_u16() < 500,
        "upload: {status} {}",
        String::from_utf8_lossy(&answer.body)
    );
    if too_many_parts {
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "an upload of {parts} parts (limit {}) was not refused as too large: {}",
            server.max_upload_parts,
            String::from_utf8_lossy(&answer.body)
        );
    } else if expected.is_some() {
        assert_eq!(
            status,
            StatusCode::OK,
            "a well-formed upload was refused: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let after = get(server, &path);
    if status == StatusCode::OK {
        assert_eq!(
            after.0,
            StatusCode::OK,
            "an accepted artifact cannot be read back"
        );
        if let Some(expected) = expected {
            assert_eq!(
                after.1, expected,
                "the stored artifact differs from the uploaded file field"
            );
        }
    } else {
        assert_eq!(after, before, "a refused upload changed the artifact");
    }
}
