//! TLS to PostgreSQL natively, as libpq reads `sslmode` in the database URL:
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | absent, `disable` | no | — |
//! | `prefer` | if the server offers it | not checked |
//! | `require` | yes | not checked (encryption only) |
//! | `verify-ca` | yes | signed by the CA of `database_ca_file` (else the system's roots) |
//! | `verify-full` | yes | as `verify-ca`, and issued for the host name of the URL |
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`: the two verifying
//! modes are read here and handed on as `require` with a verifying connector.

use std::sync::Arc;

use anyhow::Context;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// What the URL's `sslmode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTlsMode {
    /// No TLS (no `sslmode`, or `disable`).
    Disable,
    /// TLS when the server offers it, unverified.
    Prefer,
    /// TLS, unverified.
    Require,
    /// TLS, the certificate chain verified.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyFull,
}

/// The URL as tokio-postgres can parse it (a verifying `sslmode` written as `require`),
/// and the mode it asked for. Works on URLs (`…?sslmode=verify-full`) and key=value
/// strings (`host=… sslmode=verify-full`) alike.
pub fn split_sslmode(url: &str) -> anyhow::Result<(String, PgTlsMode)> {
    let Some(start) = url.find("sslmode=").map(|i| i + "sslmode=".len()) else {
        return Ok((url.to_owned(), PgTlsMode::Disable));
    };
    let end = url[start..]
        .find(|c: char| c == '&' || c.is_whitespace())
        .map_or(url.len(), |i| start + i);
    let mode = match &url[start..end] {
        "disable" => PgTlsMode::Disable,
        "prefer" => PgTlsMode::Prefer,
        "require" => PgTlsMode::Require,
        "verify-ca" => PgTlsMode::VerifyCa,
        "verify-full" => PgTlsMode::VerifyFull,
        other => anyhow::bail!(
            "sslmode={other} in database_url: expected disable, prefer, require, verify-ca or verify-full"
        ),
    };
    let written = match mode {
        PgTlsMode::Disable => "disable",
        PgTlsMode::Prefer => "prefer",
        _ => "require",
    };
    Ok((format!("{}{written}{}", &url[..start], &url[end..]), mode))
}

impl PgTlsMode {
    /// The mode tokio-postgres is told.
    pub fn ssl_mode(self) -> SslMode {
        match self {
            PgTlsMode::Disable => SslMode::Disable,
            PgTlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }

    /// The connector for this mode; `ca_file` (PEM, empty: the system's roots) is read for
    /// the verifying modes only.
    pub fn connector(self, ca_file: &str) -> anyhow::Result<MakeRustlsConnect> {
        let builder = ClientConfig::builder();
        let config = match self {
            PgTlsMode::Disable | PgTlsMode::Prefer | PgTlsMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider())))
                .with_no_client_auth(),
            PgTlsMode::VerifyCa => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(
                    WebPkiServerVerifier::builder(Arc::new(roots(ca_file)?)).build()?,
                )))
                .with_no_client_auth(),
            PgTlsMode::VerifyFull => builder
                .with_root_certificates(roots(ca_file)?)
                .with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The CA certificates of `ca_file`, or the system's when it is empty.
fn roots(ca_file: &str) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if ca_file.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        store.add_parsable_certificates(found.certs);
        anyhow::ensure!(
            !store.is_empty(),
            "no system CA certificates found for sslmode=verify-*: set database_ca_file"
        );
        return Ok(store);
    }
    for cert in
        CertificateDer::pem_file_iter(ca_file).with_context(|| format!("database_ca_file {ca_file}"))?
    {
        store
            .add(cert.with_context(|| format!("database_ca_file {ca_file}"))?)
            .with_context(|| format!("database_ca_file {ca_file}"))?;
    }
    anyhow::ensure!(
        !store.is_empty(),
        "database_ca_file {ca_file} holds no certificate"
    );
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// `require`/`prefer`: encryption without checking who answers (libpq's meaning); the
/// handshake's signatures are still checked, so the session key is the server's.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name it was issued for is not
/// compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_reach_tokio_postgres_as_require() {
        for (url, written, mode) in [
            ("postgres://h/db", "postgres://h/db", PgTlsMode::Disable),
            (
                "postgres://h/db?sslmode=verify-full&options=x",
                "postgres://h/db?sslmode=require&options=x",
                PgTlsMode::VerifyFull,
            ),
            (
                "postgres://h/db?sslmode=verify-ca",
                "postgres://h/db?sslmode=require",
                PgTlsMode::VerifyCa,
            ),
            (
                "postgres://h/db?sslmode=require",
                "postgres://h/db?sslmode=require",
                PgTlsMode::Require,
            ),
            (
                "host=h sslmode=verify-full dbname=d",
                "host=h sslmode=require dbname=d",
                PgTlsMode::VerifyFull,
            ),
        ] {
            assert_eq!(split_sslmode(url).unwrap(), (written.to_owned(), mode), "{url}");
        }
        assert!(split_sslmode("postgres://h/db?sslmode=allow-me").is_err());
    }
}
