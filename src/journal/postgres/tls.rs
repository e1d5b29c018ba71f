//! TLS to the PostgreSQL journal's database: `sslmode=require` in the connection string
//! encrypts every connection (the writer's session, snapshot uploads, the file store's
//! pool) with rustls, and verifies the server's certificate and host name, against the
//! certificate authorities in the PEM file `sslrootcert=PATH` names, else the system's.
//! That is libpq's `verify-full`: stricter than libpq's `require`, which encrypts without
//! checking whom it talks to. Without `sslmode=require` nothing changes (no TLS).
//!
//! `sslrootcert` is flinger's to read: it is taken out of the connection string before
//! `tokio-postgres` parses the rest, which does not know it.

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

/// Splits `sslrootcert=PATH` off the query of `url`: the rest, and the path.
pub fn split_root_cert(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("sslrootcert=") {
            Some(path) => {
                root = Some(path.to_owned());
                false
            }
            None => true,
        })
        .collect();
    if rest.is_empty() {
        (base.to_owned(), root)
    } else {
        (format!("{base}?{}", rest.join("&")), root)
    }
}

/// The settings and connector for `url` (see the module docs).
pub fn target(url: &str) -> Result<Target> {
    let (rest, root) = split_root_cert(url);
    let bad =
        |what: String| Error::InvalidInput(format!("PostgreSQL journal {}: {what}", redact(url)));
    let config: tokio_postgres::Config = rest.parse().map_err(|e| bad(format!("{e}")))?;
    if config.get_ssl_mode() != SslMode::Require {
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
            "sslmode=require but no certificate authority to verify the server with ({})",
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
    fn root_cert_is_split_off_wherever_it_stands_in_the_query() {
        assert_eq!(
            split_root_cert("postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem"),
            (
                "postgres://u@h/db?sslmode=require".to_owned(),
                Some("/ca.pem".to_owned())
            )
        );
        assert_eq!(
            split_root_cert("postgres://u@h/db?sslrootcert=/ca.pem"),
            ("postgres://u@h/db".to_owned(), Some("/ca.pem".to_owned()))
        );
        assert_eq!(
            split_root_cert("postgres://u@h/db"),
            ("postgres://u@h/db".to_owned(), None)
        );
    }
}
