//! Cross-site request refusal: a web page a lab member happens to open must not be able to
//! make their browser submit, cancel or change anything on the server (the default mode
//! has no credentials at all, and an authenticating proxy in front would add them to the
//! browser's request).
//!
//! Browsers say where a request comes from; Testflinger's clients (the CLI, the agent,
//! scripts) send neither header. So a state-changing request (any method but GET, HEAD,
//! OPTIONS) is refused when `Sec-Fetch-Site` says it was made by another site, or, from
//! browsers that do not send that header, when its `Origin` names another host than the
//! `Host` it was sent to. The same rule as Go's `net/http.CrossOriginProtection`. It
//! blocks the requests HTML forms and `no-cors` fetches can make without a CORS
//! preflight (`text/plain` "JSON" to `POST /v1/job`, the dashboard's cancel form), which
//! are the only cross-site writes a browser allows: flinger answers no preflight.

use axum::http::{header, HeaderMap, Method};

use crate::error::{Error, Result};

/// `Ok` unless `method` changes state and the headers show a browser sending it from
/// another site: then 403 naming the origin.
pub fn check(method: &Method, headers: &HeaderMap) -> Result<()> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    match text("sec-fetch-site") {
        // `none`: typed in the address bar, a bookmark; `same-origin`: our own pages.
        Some("same-origin" | "none") => return Ok(()),
        Some(site) => return Err(refused(text(header::ORIGIN.as_str()).unwrap_or(site))),
        None => {}
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(()); // not a browser, or one that sends neither header
    };
    let origin = origin.to_str().unwrap_or("");
    // `Origin` is `scheme://host[:port]` (or `null` from sandboxed or file pages).
    let origin_host = origin.split_once("://").map(|(_, host)| host);
    match (origin_host, text(header::HOST.as_str())) {
        (Some(from), Some(to)) if from.eq_ignore_ascii_case(to) => Ok(()),
        _ => Err(refused(origin)),
    }
}

fn refused(origin: &str) -> Error {
    let origin: String = origin.chars().take(100).collect();
    Error::Forbidden(format!(
        "Cross-origin request refused: a page from {origin:?} may not change anything here"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn only_browser_writes_from_another_site_are_refused() {
        let post = Method::POST;
        // Clients without browser headers (the CLI, the agent, curl).
        assert!(check(&post, &headers(&[("host", "lab:8000")])).is_ok());
        // Our own pages, typed URLs.
        for site in ["same-origin", "none"] {
            let h = headers(&[("sec-fetch-site", site), ("origin", "http://evil")]);
            assert!(check(&post, &h).is_ok(), "{site}");
        }
        for site in ["cross-site", "same-site"] {
            let h = headers(&[("sec-fetch-site", site), ("origin", "http://evil")]);
            let e = check(&post, &h).unwrap_err();
            assert_eq!(e.status(), 403);
            assert!(e.message().contains("\"http://evil\""), "{}", e.message());
        }
        // Older browsers: Origin against Host.
        let same = headers(&[("origin", "http://Lab:8000"), ("host", "lab:8000")]);
        assert!(check(&Method::DELETE, &same).is_ok());
        for (origin, host) in [
            ("http://evil:8000", "lab:8000"),
            ("http://lab:8001", "lab:8000"),
            ("null", "lab:8000"),
        ] {
            let mut h = headers(&[("host", host)]);
            h.insert("origin", origin.parse().unwrap());
            assert!(check(&Method::PUT, &h).is_err(), "{origin} → {host}");
        }
        let no_host = headers(&[("origin", "http://lab:8000")]);
        assert!(check(&post, &no_host).is_err());
        // Reads are never refused.
        let h = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(check(&Method::GET, &h).is_ok());
        assert!(check(&Method::HEAD, &h).is_ok());
    }
}
