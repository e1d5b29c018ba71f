//! Cross-site request refusal: a web page a lab member happens to open must not be able to
//! make their browser submit, cancel or change anything on the server (the default mode
//! has no credentials at all, and an authenticating proxy in front would add them to the
//! browser's request).
//!
//! Browsers say where a request comes from; Testflinger's clients (the CLI, the agent,
//! scripts) send neither header. So a state-changing request (any method but GET, HEAD,
//! OPTIONS, and the GETs that change state: the pop, the legacy `/output` read) is
//! refused when `Sec-Fetch-Site` says it was made by another site, or, from browsers
//! that do not send that header, when its `Origin` names another host than the `Host` it
//! was sent to. The same rule as Go's `net/http.CrossOriginProtection`. It blocks the
//! requests HTML forms, images and `no-cors` fetches can make without a CORS preflight
//! (`text/plain` "JSON" to `POST /v1/job`, the dashboard's cancel form, an `<img>`
//! popping a job), which are the only cross-site requests with effects a browser
//! allows: flinger answers no preflight.
//!
//! DNS rebinding (another site's name made to resolve to 127.0.0.1) would make such a
//! page same-origin; a server bound to loopback with access control off (full rights for
//! every caller) therefore answers only requests that name it as `localhost` or by
//! address.
//!
//! What it cannot see: over plain HTTP to a server reached by name, browsers send no
//! `Sec-Fetch-Site`, and an `<img>` sends no `Origin`, so a cross-site GET of a changing
//! read looks like a script's there. Only HTTPS (or localhost) closes that.

use std::net::{Ipv4Addr, Ipv6Addr};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};

use crate::error::{Error, Result};

/// What a request looks like to the check: its method, whether the route changes state
/// even when read with GET (the pop, the legacy destructive `/output` read: an `<img>`
/// on any page could make them), and whether browsers must name the server without DNS.
pub struct Asked<'a> {
    /// The method.
    pub method: &'a Method,
    /// Whether a GET of this route changes state (`table::CHANGING_READS`).
    pub changing_read: bool,
    /// Whether the server listens on loopback with access control off: every caller has
    /// full rights, and only this machine was meant to reach it.
    pub loopback_open: bool,
}

/// `Ok` unless the request may come from another site's page: a state-changing request
/// a browser says came from another site (403 naming it), or, to a
/// [`Asked::loopback_open`] server, any request naming it by a DNS name other than
/// `localhost` (403). A rebinding page's requests reach 127.0.0.1 under its own name,
/// and its same-origin GETs carry neither `Origin` nor (over plain HTTP) `Sec-Fetch-Site`,
/// so the name is the only sign; this machine's clients name the server `localhost` or
/// by address.
pub fn check(asked: &Asked<'_>, headers: &HeaderMap) -> Result<()> {
    // axum answers HEAD with the GET handler: a HEAD of a changing read changes state.
    let safe = match *asked.method {
        Method::GET | Method::HEAD => !asked.changing_read,
        Method::OPTIONS => true,
        _ => false,
    };
    if safe && !asked.loopback_open {
        return Ok(());
    }
    // The three headers in one walk over the request's few (three hashed lookups cost
    // more); each is its first value, as `HeaderMap::get` gives.
    let (mut host, mut origin, mut fetch_site) = (None, None, None);
    for (name, value) in headers {
        let slot = if name == header::HOST {
            &mut host
        } else if name == header::ORIGIN {
            &mut origin
        } else if name == SEC_FETCH_SITE {
            &mut fetch_site
        } else {
            continue;
        };
        slot.get_or_insert(value);
    }
    fn text(value: Option<&HeaderValue>) -> Option<&str> {
        value.and_then(|v| v.to_str().ok())
    }
    let (host, origin, fetch_site) = (text(host), text(origin), text(fetch_site));
    if asked.loopback_open {
        if let Some(host) = host.filter(|h| !is_loopback_name(h)) {
            let host: String = host.chars().take(100).collect();
            return Err(Error::Forbidden(format!(
                "Host {host:?} refused: with access control off and a loopback address, \
                 this server answers only requests naming it localhost or by IP address \
                 (another name resolving here may be another site's DNS rebinding); a \
                 proxy in front must pass its upstream address as Host"
            )));
        }
    }
    if safe {
        return Ok(());
    }
    match fetch_site {
        // `none`: typed in the address bar, a bookmark; `same-origin`: our own pages.
        Some("same-origin" | "none") => Ok(()),
        Some(site) => Err(refused(origin, site)),
        // Not a browser, or one that sends neither header.
        None => match origin {
            None => Ok(()),
            Some(origin) => match host {
                Some(host) if same_host(origin, host) => Ok(()),
                _ => Err(refused(Some(origin), "cross-site")),
            },
        },
    }
}

/// The `Sec-Fetch-Site` request header (browsers: `same-origin`, `same-site`,
/// `cross-site` or `none`).
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Whether `host` (a `Host` header: name or address, perhaps a port) names this machine
/// without DNS: an IP address, `localhost` or a name under `.localhost`. Allocates
/// nothing: with access control off on loopback it runs on every request.
fn is_loopback_name(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        return rest
            .split_once(']')
            .is_some_and(|(address, _)| address.parse::<Ipv6Addr>().is_ok());
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let name = name.strip_suffix('.').unwrap_or(name);
    let suffix = ".localhost";
    name.eq_ignore_ascii_case("localhost")
        || (name.len() > suffix.len()
            && name.is_char_boundary(name.len() - suffix.len())
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
        || name.parse::<Ipv4Addr>().is_ok()
}

/// Whether `Origin` (`scheme://host[:port]`, or `null`) names `host` (a `Host` header),
/// a scheme's default port written or not.
fn same_host(origin: &str, host: &str) -> bool {
    let Some((scheme, from)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => "",
    };
    let plain = |h: &str| {
        let h = h.to_ascii_lowercase();
        match h.strip_suffix(default) {
            Some(bare) if !default.is_empty() => bare.to_owned(),
            _ => h,
        }
    };
    plain(from) == plain(host)
}

/// The 403 for a request from another site: its `Origin`, or the `Sec-Fetch-Site` that
/// said so when it sent no `Origin`.
fn refused(origin: Option<&str>, site: &str) -> Error {
    let from = match origin {
        Some(origin) => format!(
            "a page from {:?}",
            origin.chars().take(100).collect::<String>()
        ),
        None => format!("a page from another site (Sec-Fetch-Site: {site})"),
    };
    Error::Forbidden(format!(
        "Cross-origin request refused: {from} may not change anything here"
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

    fn asked(method: &Method) -> Asked<'_> {
        Asked {
            method,
            changing_read: false,
            loopback_open: false,
        }
    }

    #[test]
    fn only_browser_writes_from_another_site_are_refused() {
        let post = asked(&Method::POST);
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
        let h = headers(&[("sec-fetch-site", "cross-site")]);
        let message = check(&post, &h).unwrap_err().message().to_owned();
        assert!(
            message.contains("another site (Sec-Fetch-Site: cross-site)"),
            "{message}"
        );
        // Older browsers: Origin against Host, a scheme's default port written or not.
        for (origin, host, same) in [
            ("http://Lab:8000", "lab:8000", true),
            ("http://lab", "lab:80", true),
            ("https://lab:443", "lab", true),
            ("http://evil:8000", "lab:8000", false),
            ("http://lab:8001", "lab:8000", false),
            ("https://lab", "lab:80", false),
            ("null", "lab:8000", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert("host", host.parse().unwrap());
            h.insert("origin", origin.parse().unwrap());
            for method in [Method::PUT, Method::DELETE] {
                let allowed = check(&asked(&method), &h).is_ok();
                assert_eq!(allowed, same, "{method} {origin} → {host}");
            }
        }
        let no_host = headers(&[("origin", "http://lab:8000")]);
        assert!(check(&post, &no_host).is_err());
        // Reads are never refused, except those that change state.
        let h = headers(&[("sec-fetch-site", "cross-site")]);
        assert!(check(&asked(&Method::GET), &h).is_ok());
        assert!(check(&asked(&Method::HEAD), &h).is_ok());
        let pop = Asked {
            changing_read: true,
            ..asked(&Method::GET)
        };
        assert!(check(&pop, &h).is_err());
        let head_pop = Asked {
            changing_read: true,
            ..asked(&Method::HEAD)
        };
        assert!(check(&head_pop, &h).is_err(), "HEAD runs the GET handler");
    }

    #[test]
    fn a_repeated_header_counts_by_its_first_value() {
        // As `HeaderMap::get` reads it: the check walks the headers once instead.
        let post = asked(&Method::POST);
        let twice = |name: &'static str, first: &str, second: &str| {
            let mut h = headers(&[("host", "lab:8000")]);
            h.append(name, first.parse().unwrap());
            h.append(name, second.parse().unwrap());
            h
        };
        assert!(check(
            &post,
            &twice("origin", "http://evil:8000", "http://lab:8000")
        )
        .is_err());
        assert!(check(
            &post,
            &twice("origin", "http://lab:8000", "http://evil:8000")
        )
        .is_ok());
        let site = |first, second| twice("sec-fetch-site", first, second);
        assert!(check(&post, &site("cross-site", "same-origin")).is_err());
        assert!(check(&post, &site("same-origin", "cross-site")).is_ok());
        let open = Asked {
            loopback_open: true,
            ..asked(&Method::GET)
        };
        let mut h = headers(&[("host", "127.0.0.1:8000")]);
        h.append("host", "evil.example".parse().unwrap());
        assert!(check(&open, &h).is_ok());
        let mut h = headers(&[("host", "evil.example")]);
        h.append("host", "127.0.0.1:8000".parse().unwrap());
        assert!(check(&open, &h).is_err());
    }

    #[test]
    fn a_loopback_open_server_answers_only_names_that_need_no_dns() {
        let get = Asked {
            loopback_open: true,
            ..asked(&Method::GET)
        };
        let browser = |host: &str| {
            let mut h = headers(&[("sec-fetch-site", "same-origin")]);
            h.insert("host", host.parse().unwrap());
            h
        };
        for host in [
            "127.0.0.1:8000",
            "localhost:8000",
            "LocalHost",
            "a.localhost:1",
            "[::1]:8000",
            "[::1]",
            "10.1.2.3",
        ] {
            assert!(check(&get, &browser(host)).is_ok(), "{host}");
        }
        for host in [
            "evil.example:8000",
            "localhost.evil.example",
            "lab",
            "[evil]:80",
        ] {
            let e = check(&get, &browser(host)).unwrap_err();
            assert!(
                e.message().contains("DNS rebinding"),
                "{host}: {}",
                e.message()
            );
        }
        // An Origin marks a browser too (older ones send no Sec-Fetch-Site).
        let mut h = headers(&[("origin", "http://evil.example:8000")]);
        h.insert("host", "evil.example:8000".parse().unwrap());
        assert!(check(&get, &h).is_err());
        // A rebound page's same-origin GET carries neither header: the name still counts.
        let mut h = HeaderMap::new();
        h.insert("host", "evil.example:8000".parse().unwrap());
        assert!(check(&get, &h).is_err());
        // Access control on, or not on loopback: any name (labs reach it by name).
        assert!(check(&asked(&Method::GET), &browser("lab.example:8000")).is_ok());
    }
}
