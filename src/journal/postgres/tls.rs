//! TLS to the PostgreSQL journal's database, chosen by `sslmode` in the connection string:
//!
//! - `require`, `verify-ca`, `verify-full`: every connection (the writer's session,
//!   snapshot uploads, the file store's pool) is encrypted with rustls, and the server's
//!   certificate *and* host name are verified, against the certificate authorities in the
//!   PEM file `sslrootcert=PATH` names, else the system's. That is libpq's `verify-full`
//!   for all three: stricter than libpq's `require` (which encrypts without checking whom
//!   it talks to) and `verify-ca` (which skips the host name).
//! - `disable`, or no `sslmode`: no TLS. (libpq's default, `prefer`, would try TLS first;
//!   a start-up warning says so when the server is not on this machine.)
//! - `prefer`, `allow`: refused. Each falls back to a connection in clear whenever TLS
//!   fails, which anyone on the path can make happen: it looks like protection and is none.
//! - `sslcert`, `sslkey` and the other client-certificate parameters: refused (client
//!   certificates are not supported; authenticate with a password).
//!
//! `sslrootcert` is flinger's to read and `sslmode` is flinger's to interpret: both are
//! taken out of the connection string before `tokio-postgres` parses the rest.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::redact;
use crate::error::{Error, Result};

/// A parsed connection string and, under `sslmode=require`, the TLS connector for it.
pub struct Target {
    /// The connection settings.
    pub config: tokio_postgres::Config,
    /// `Some` when the connection string asks for TLS.
    pub tls: Option<MakeRustlsConnect>,
}

/// What `sslmode` asks for (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// `sslmode=disable`: no TLS, as asked.
    Off,
    /// No `sslmode`: no TLS (libpq would try TLS first).
    Unspecified,
    /// `require`, `verify-ca` or `verify-full`: TLS, server certificate and host verified.
    Verified,
}

/// Client-certificate parameters of libpq that flinger does not support.
const CLIENT_CERT_PARAMS: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslcrl",
    "sslcrldir",
];

/// A connection string taken apart: what `tokio-postgres` parses, and flinger's own
/// parameters.
pub struct Parsed {
    /// The connection settings (their `sslmode` set from [`Parsed::tls`]).
    pub config: tokio_postgres::Config,
    /// What `sslmode` asks for.
    pub tls: Tls,
    /// `sslrootcert=PATH`.
    pub root: Option<String>,
}

/// Parses connection string `url`: `sslmode` and `sslrootcert` by flinger's rules (the
/// module docs), the rest by `tokio-postgres`. The error says what is wrong and what is
/// supported; it never repeats the string (the caller shows it with its password hidden).
pub fn parse(url: &str) -> std::result::Result<Parsed, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut root, mut mode) = (None, None);
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8_lossy()
            .into_owned();
        match &*key {
            "sslrootcert" => root = Some(value),
            "sslmode" => mode = Some(value),
            k if CLIENT_CERT_PARAMS.contains(&k) => {
                return Err(format!(
                    "{k}: client certificates are not supported (authenticate with a password: \
                     postgres://USER:PASSWORD@HOST/DB); TLS itself is `sslmode=require` with \
                     `sslrootcert=CA.pem`"
                ))
            }
            _ => rest.push(pair),
        }
    }
    let tls = match mode.as_deref() {
        None => Tls::Unspecified,
        Some("disable") => Tls::Off,
        Some("require" | "verify-ca" | "verify-full") => Tls::Verified,
        Some(m @ ("prefer" | "allow")) => {
            return Err(format!(
                "sslmode={m} is not supported: it connects in clear whenever TLS fails, which \
                 anyone on the network path can arrange. Use sslmode=require (or verify-ca, \
                 verify-full: each encrypts and verifies the server's certificate and host \
                 name, against sslrootcert=CA.pem or the system's authorities) or \
                 sslmode=disable (no TLS)"
            ))
        }
        Some(m) => {
            return Err(format!(
                "sslmode={m:?} is not one of disable, require, verify-ca, verify-full \
                 (the last three each encrypt and verify the server's certificate and host name)"
            ))
        }
    };
    let rest = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| with_causes(&e))?;
    config.ssl_mode(match tls {
        Tls::Verified => SslMode::Require,
        Tls::Off | Tls::Unspecified => SslMode::Disable,
    });
    Ok(Parsed { config, tls, root })
}

/// `e` with its chain of causes: `tokio-postgres` shows only "invalid connection string",
/// the option at fault is in the source.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// The settings and connector for `url` (see the module docs).
pub fn target(url: &str) -> Result<Target> {
    // The connection string names what is wrong (its sslmode, its sslrootcert file): the
    // operator's to change.
    let bad =
        |what: String| Error::Misconfigured(format!("PostgreSQL journal {}: {what}", redact(url)));
    let Parsed { config, tls, root } = parse(url).map_err(bad)?;
    if tls != Tls::Verified {
        return Ok(Target { config, tls: None });
    }
    let mut roots = rustls::RootCertStore::empty();
    match &root {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(format!("cannot read sslrootcert {path}: {e}")))?
            {
                let cert = cert.map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("sslrootcert {path}: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A malformed system certificate is skipped, as every TLS client does.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(bad(format!(
            "sslmode asks for TLS but there is no certificate authority to verify the server with ({})",
            root.as_deref()
                .map_or("none in the system's store".to_owned(), |p| format!(
                    "none in {p}"
                ))
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Target {
        config,
        tls: Some(MakeRustlsConnect::new(tls)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_cert_and_ssl_mode_are_taken_out_wherever_they_stand_in_the_query() {
        let parsed = parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            (parsed.tls, parsed.root.as_deref()),
            (Tls::Verified, Some("/ca.pem"))
        );
        assert_eq!(parsed.config.get_ssl_mode(), SslMode::Require);
        let parsed = parse("postgres://u@h/db?sslrootcert=/ca.pem&connect_timeout=3").unwrap();
        assert_eq!(
            (parsed.tls, parsed.root.as_deref()),
            (Tls::Unspecified, Some("/ca.pem"))
        );
        assert_eq!(parsed.config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(parse("postgres://u@h/db").unwrap().tls, Tls::Unspecified);
        assert_eq!(
            parse("postgres://u@h/db?sslmode=disable").unwrap().tls,
            Tls::Off
        );
    }
}
