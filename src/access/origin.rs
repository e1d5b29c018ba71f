//! Cross-site request refusal and the `Host` check: a web page a lab member happens to open must not be able to
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
//! DNS rebinding (another site's name made to resolve to this server's address) makes
//! such a page same-origin: the browser then sends its requests here with the other
//! site's name as `Host` and lets the page read every answer. So every request's `Host`
//! is checked first ([`check_host`], in front of every route), by [`Hosts`]: with
//! `--allowed-hosts` set, it must be one of those names, an IP address or `localhost`;
//! without it, a server bound to loopback with access control off (full rights for every
//! caller) answers only `localhost` and addresses, and any other server any name (lab
//! users reach it by names it cannot know; start-up warns off loopback).
//!
//! What it cannot see: over plain HTTP to a server reached by name, browsers send no
//! `Sec-Fetch-Site`, and an `<img>` sends no `Origin`, so a cross-site GET of a changing
//! read looks like a script's there. Only HTTPS (or localhost) closes that.

use std::net::{Ipv4Addr, Ipv6Addr};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{AccessMode, Config};
use crate::error::{Error, Result};

/// What a request looks like to the cross-site check: its method, and whether the route
/// changes state even when read with GET (the pop, the legacy destructive `/output`
/// read: an `<img>` on any page could make them).
pub struct Asked<'a> {
    /// The method.
    pub method: &'a Method,
    /// Whether a GET of this route changes state (`table::CHANGING_READS`).
    pub changing_read: bool,
}

/// `Ok` unless the request may come from another site's page: a state-changing request
/// a browser says came from another site (403 naming it). The `Host` it names is
/// [`check_host`]'s, made before.
pub fn check(asked: &Asked<'_>, headers: &HeaderMap) -> Result<()> {
    // axum answers HEAD with the GET handler: a HEAD of a changing read changes state.
    let safe = match *asked.method {
        Method::GET | Method::HEAD => !asked.changing_read,
        Method::OPTIONS => true,
        _ => false,
    };
    if safe {
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

/// Which names a request's `Host` may give, from the settings ([`Hosts::of`]).
#[derive(Clone, Copy, Debug)]
pub enum Hosts<'a> {
    /// Any: no `--allowed-hosts`, and not [`Hosts::WithoutDns`]'s case.
    Any,
    /// Only names that need no DNS (`localhost`, addresses): no `--allowed-hosts`, a
    /// loopback address and access control off (every caller has full rights, and only
    /// this machine was meant to reach it).
    WithoutDns,
    /// `--allowed-hosts`, and names that need no DNS.
    Listed(&'a AllowedHosts),
}

impl Hosts<'_> {
    /// The rule `config` sets. A few comparisons: it runs on every request.
    pub fn of(config: &Config) -> Hosts<'_> {
        match &config.allowed_hosts {
            Some(listed) => Hosts::Listed(listed),
            None if config.access == AccessMode::Off && config.bind.ip().is_loopback() => {
                Hosts::WithoutDns
            }
            None => Hosts::Any,
        }
    }
}

/// Why [`check_host`] let a request's `Host` through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAdmitted {
    /// Not looked at ([`Hosts::Any`]).
    Unchecked,
    /// An address, `localhost` or a name under `.localhost` (or no `Host` at all: HTTP/1.0,
    /// never a browser's): no DNS answer chose where it went.
    WithoutDns,
    /// One of `--allowed-hosts`.
    Listed,
    /// Only as this node's own name, the host of its `--advertise-url`. Another node
    /// does not know it: a standby forwarding such a request names the leader instead
    /// ([`readdress`]).
    Advertised,
}

/// `Ok` unless the request's `Host` names this server by a name `hosts` does not allow
/// (403 naming the `Host` and the setting): a rebinding page's requests reach this
/// server under its own name, and its same-origin requests carry neither `Origin` nor
/// (over plain HTTP) `Sec-Fetch-Site`, so the name is the only sign. Allocates nothing
/// unless it refuses.
pub fn check_host(hosts: Hosts<'_>, host: Option<&HeaderValue>) -> Result<HostAdmitted> {
    let listed = match hosts {
        Hosts::Any => return Ok(HostAdmitted::Unchecked),
        Hosts::WithoutDns => None,
        Hosts::Listed(listed) => Some(listed),
    };
    let Some(value) = host else {
        return Ok(HostAdmitted::WithoutDns);
    };
    // A value that is not visible ASCII names nothing allowed (browsers send the ASCII
    // form of international names).
    if let Ok(host) = value.to_str() {
        if names_without_dns(host) {
            return Ok(HostAdmitted::WithoutDns);
        }
        if let Some(admitted) = listed.and_then(|listed| listed.admits(host)) {
            return Ok(admitted);
        }
    }
    let shown: String = String::from_utf8_lossy(value.as_bytes())
        .chars()
        .take(100)
        .collect();
    Err(Error::Forbidden(match listed {
        Some(_) => format!(
            "Host {shown:?} refused: it is none of --allowed-hosts (FLINGER_ALLOWED_HOSTS, \
             config key ALLOWED_HOSTS), an IP address or localhost (another name resolving \
             here may be another site's DNS rebinding); add the name clients use to reach \
             this server to --allowed-hosts, or reach it by address"
        ),
        None => format!(
            "Host {shown:?} refused: with access control off and a loopback address, \
             this server answers only requests naming it localhost or by IP address \
             (another name resolving here may be another site's DNS rebinding), or one of \
             --allowed-hosts (FLINGER_ALLOWED_HOSTS, config key ALLOWED_HOSTS) when set; a \
             proxy in front must pass its upstream address as Host"
        ),
    }))
}

/// For a standby forwarding a request [`HostAdmitted::Advertised`] (it names the
/// standby's own advertised host, which the leader does not know): the leader's
/// `authority` as its `Host`, so the leader admits it as its own, and no `Origin` when
/// it named the old `Host` (the request was same-origin; without `Origin` or
/// `Sec-Fetch-Site` the leader's [`check`] passes it as it passed here). A cross-site
/// `Origin` stays, and is refused as before (unless it names the leader itself: one of
/// flinger's own pages).
pub fn readdress(headers: &mut HeaderMap, authority: HeaderValue) {
    let was = headers.insert(header::HOST, authority);
    let was = was.as_ref().and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if let (Some(was), Some(origin)) = (was, origin) {
        if same_host(origin, was) {
            headers.remove(header::ORIGIN);
        }
    }
}

/// `--allowed-hosts`: the names besides addresses and `localhost` a request's `Host` may
/// give, parsed from a comma-separated list (`lab.example,*.lab.example`); a `Host`'s
/// port is not compared (a rebinding page can use any port). Compared without
/// allocating: lists are a few entries, so a scan beats hashing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHosts {
    /// Whole names, lower case, without a trailing dot.
    names: Box<[Box<str>]>,
    /// `*.suffix` entries as `.suffix`, lower case: any name ending so (at any depth),
    /// not `suffix` itself.
    suffixes: Box<[Box<str>]>,
    /// The host of `--advertise-url` when it is a name: this node's own (other nodes
    /// forward to it, so clients may use it too). Kept apart for [`HostAdmitted`].
    advertised: Option<Box<str>>,
}

impl AllowedHosts {
    /// Adds the host of `url` (`--advertise-url`, already checked to be `http://HOST:PORT`)
    /// as this node's own name; an address passes anyway and is not kept.
    pub fn advertise(&mut self, url: &str) {
        let host = url
            .parse::<axum::http::Uri>()
            .ok()
            .and_then(|u| u.host().map(str::to_ascii_lowercase));
        self.advertised = host
            .map(|h| h.trim_end_matches('.').to_owned())
            .filter(|h| !names_without_dns(h))
            .map(String::into_boxed_str);
    }

    /// How `host` (a `Host` header: a name, perhaps a port) is admitted, if it is.
    fn admits(&self, host: &str) -> Option<HostAdmitted> {
        let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
        let name = name.strip_suffix('.').unwrap_or(name);
        let ends_with = |suffix: &str| {
            name.len() > suffix.len()
                && name.is_char_boundary(name.len() - suffix.len())
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        };
        if self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
            || self.suffixes.iter().any(|s| ends_with(s))
        {
            Some(HostAdmitted::Listed)
        } else if self
            .advertised
            .as_deref()
            .is_some_and(|own| own.eq_ignore_ascii_case(name))
        {
            Some(HostAdmitted::Advertised)
        } else {
            None
        }
    }
}

impl std::str::FromStr for AllowedHosts {
    type Err = String;

    /// A comma-separated list of host names, each optionally `*.suffix`; spaces around
    /// entries are ignored. Anything else is refused naming the entry: a port, a URL, a
    /// wildcard elsewhere, a lone `*` (that would turn the check off), an empty entry.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (mut names, mut suffixes) = (Vec::new(), Vec::new());
        for entry in text.split(',').map(str::trim) {
            let bad = |why: &str| Err(format!("entry {entry:?} in {text:?}: {why}"));
            let (wild, name) = match entry.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, entry),
            };
            let name = name.strip_suffix('.').unwrap_or(name);
            if entry.is_empty() {
                return bad("an empty entry (two commas, or one at an end)");
            } else if entry == "*" {
                return bad("a lone * would allow every name: leave the setting unset for that");
            } else if entry.contains("://") || entry.contains('/') {
                return bad("expected a host name, not a URL");
            } else if entry.contains(':') || entry.contains('[') {
                return bad("expected a host name without a port (IP addresses always pass)");
            } else if name.contains('*') {
                return bad("a wildcard may only open an entry, as `*.` (`*.lab.example`)");
            } else if !name.is_ascii() {
                return bad("expected ASCII: write an international name in its `xn--` form, as browsers send it");
            }
            let label_ok = |label: &str| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if name.len() > 253 || !name.split('.').all(label_ok) {
                return bad("expected a host name: dot-separated labels of letters, digits, `-` and `_`, each 1 to 63 long");
            }
            let name = name.to_ascii_lowercase();
            if wild {
                suffixes.push(format!(".{name}").into_boxed_str());
            } else {
                names.push(name.into_boxed_str());
            }
        }
        Ok(AllowedHosts {
            names: names.into(),
            suffixes: suffixes.into(),
            advertised: None,
        })
    }
}

/// The `Sec-Fetch-Site` request header (browsers: `same-origin`, `same-site`,
/// `cross-site` or `none`).
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Whether `host` (a `Host` header: name or address, perhaps a port) names this machine
/// without DNS: an IP address, `localhost` or a name under `.localhost` (which browsers
/// resolve to loopback themselves, RFC 6761). Allocates nothing: it runs on every
/// request whose `Host` is checked.
fn names_without_dns(host: &str) -> bool {
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
        // `Host` counts by its first value too (`HeaderMap::get`).
        let mut h = headers(&[("host", "127.0.0.1:8000")]);
        h.append("host", "evil.example".parse().unwrap());
        assert!(check_host(Hosts::WithoutDns, h.get("host")).is_ok());
        let mut h = headers(&[("host", "evil.example")]);
        h.append("host", "127.0.0.1:8000".parse().unwrap());
        assert!(check_host(Hosts::WithoutDns, h.get("host")).is_err());
    }

    fn value(host: &str) -> HeaderValue {
        host.parse().unwrap()
    }

    #[test]
    fn a_loopback_open_server_answers_only_names_that_need_no_dns() {
        for host in [
            "127.0.0.1:8000",
            "localhost:8000",
            "LocalHost",
            "a.localhost:1",
            "[::1]:8000",
            "[::1]",
            "10.1.2.3",
        ] {
            let admitted = check_host(Hosts::WithoutDns, Some(&value(host)));
            assert_eq!(admitted.ok(), Some(HostAdmitted::WithoutDns), "{host}");
        }
        for host in [
            "evil.example:8000",
            "localhost.evil.example",
            "lab",
            "[evil]:80",
        ] {
            let e = check_host(Hosts::WithoutDns, Some(&value(host))).unwrap_err();
            assert_eq!(e.status(), 403);
            assert!(
                e.message().contains("DNS rebinding") && e.message().contains(host),
                "{host}: {}",
                e.message()
            );
        }
        // No `Host` (HTTP/1.0): no name a DNS answer chose.
        assert!(check_host(Hosts::WithoutDns, None).is_ok());
        // Access control on, or not on loopback, and no list: any name (labs reach it by
        // names it cannot know).
        let unchecked = check_host(Hosts::Any, Some(&value("lab.example:8000")));
        assert_eq!(unchecked.ok(), Some(HostAdmitted::Unchecked));
    }

    #[test]
    fn a_listed_server_answers_its_names_addresses_and_localhost_only() {
        let mut listed: AllowedHosts = " Lab.Example , *.Lab.Example,flinger".parse().unwrap();
        listed.advertise("http://node-b.internal:8000");
        let hosts = Hosts::Listed(&listed);
        for (host, admitted) in [
            ("lab.example", HostAdmitted::Listed),
            ("LAB.example:8000", HostAdmitted::Listed),
            ("lab.example.:8000", HostAdmitted::Listed),
            ("a.lab.example:1", HostAdmitted::Listed),
            ("x.y.lab.example", HostAdmitted::Listed),
            ("flinger:80", HostAdmitted::Listed),
            ("node-b.internal:9999", HostAdmitted::Advertised),
            ("127.0.0.1:8000", HostAdmitted::WithoutDns),
            ("[::1]:8000", HostAdmitted::WithoutDns),
            ("localhost", HostAdmitted::WithoutDns),
            ("10.1.2.3", HostAdmitted::WithoutDns),
        ] {
            assert_eq!(
                check_host(hosts, Some(&value(host))).ok(),
                Some(admitted),
                "{host}"
            );
        }
        for host in [
            "rebind.attacker.example:8000",
            "evil-lab.example",
            "lab.example.evil.example",
            "xlab.example",
            "flinger.example",
            "b.internal",
        ] {
            let e = check_host(hosts, Some(&value(host))).unwrap_err();
            assert!(
                e.message().contains(&format!("{host:?}"))
                    && e.message().contains("--allowed-hosts")
                    && e.message().contains("DNS rebinding"),
                "{host}: {}",
                e.message()
            );
        }
        // Not visible ASCII: names nothing allowed.
        let odd = HeaderValue::from_bytes(b"lab.example\xff").unwrap();
        assert!(check_host(hosts, Some(&odd)).is_err());
        // An advertised address passes as every address does, and is not kept.
        let mut by_address: AllowedHosts = "lab.example".parse().unwrap();
        by_address.advertise("http://10.0.0.2:8000");
        assert_eq!(by_address.advertised, None);
    }

    #[test]
    fn allowed_hosts_refuse_entries_that_are_not_host_names() {
        let parsed: AllowedHosts = "a.example,*.b.example,c_d.example.".parse().unwrap();
        assert_eq!(&*parsed.names, &["a.example".into(), "c_d.example".into()]);
        assert_eq!(&*parsed.suffixes, &[".b.example".into()]);
        for (text, says) in [
            ("", "empty entry"),
            ("a.example,", "empty entry"),
            ("*", "lone *"),
            ("http://lab.example", "not a URL"),
            ("lab.example/x", "not a URL"),
            ("lab.example:8000", "without a port"),
            ("[::1]", "without a port"),
            ("lab.*.example", "wildcard"),
            ("*lab.example", "wildcard"),
            ("*.", "host name"),
            ("a..example", "host name"),
            ("a b.example", "host name"),
            ("bücher.example", "xn--"),
        ] {
            let why = text.parse::<AllowedHosts>().unwrap_err();
            assert!(why.contains(says), "{text:?}: {why}");
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(long.parse::<AllowedHosts>().is_err());
    }

    #[test]
    fn readdressing_keeps_the_cross_site_decision() {
        let post = asked(&Method::POST);
        let leader = || HeaderValue::from_static("10.0.0.1:8000");
        // Same-origin (an older browser's form on the standby's own page): still passes.
        let mut h = headers(&[("host", "node-b:8000"), ("origin", "http://node-b:8000")]);
        readdress(&mut h, leader());
        assert_eq!(h["host"], "10.0.0.1:8000");
        assert!(h.get("origin").is_none());
        assert!(check(&post, &h).is_ok());
        // Cross-site: still refused.
        let mut h = headers(&[("host", "node-b:8000"), ("origin", "http://evil:8000")]);
        readdress(&mut h, leader());
        assert!(check(&post, &h).is_err());
        let mut h = headers(&[("host", "node-b:8000"), ("sec-fetch-site", "cross-site")]);
        readdress(&mut h, leader());
        assert!(check(&post, &h).is_err());
    }
}
