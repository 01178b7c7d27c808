//! TLS for pgwarden's connections: rustls with the ring provider, no
//! OpenSSL.
//!
//! - [`server_tls`]: what the proxy answers an SSLRequest (or a direct TLS
//!   hello) with: its certificate and key, optionally a CA for client
//!   certificates, ALPN `postgresql` as PostgreSQL 17 asks, and the
//!   certificate's `tls-server-end-point` data for SCRAM-SHA-256-PLUS.
//! - [`client_config`]: how pgwarden's own connections to PostgreSQL check
//!   the server, with libpq's `sslmode` meanings: `require` encrypts and
//!   checks nothing, `verify-ca` checks the chain, `verify-full` the chain
//!   and the host name.
//! - [`server_end_point`]: RFC 5929's channel binding data of a
//!   certificate, hashed as PostgreSQL hashes it.
//! - [`Mutual`], [`mutual_server`], [`mutual_client`]: mutual TLS between
//!   pgwarden's own processes (watchdog peers, the remote admin API).
//! - [`postgres`]: the same client configs for tokio-postgres (the
//!   monitor's checks and actions), with channel binding.
//!
//! Every file is named in errors by the config key that points at it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

mod endpoint;
mod mutual;
mod names;
pub mod postgres;

pub use endpoint::server_end_point;
pub use mutual::{ALPN_H2, Mutual, mutual_client, mutual_server};
pub use names::common_name;
pub use rustls;
pub use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// The ALPN protocol PostgreSQL 17 uses for direct TLS connections.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// A file that could not be used, named by the config key that gave it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} ({}): {why}", path.display())]
pub struct TlsError {
    /// The config key, as `proxy.client_tls_cert_file`.
    pub key: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

/// A PEM file and the config key that names it.
#[derive(Debug, Clone, Copy)]
pub struct PemFile<'a> {
    /// The config key, for errors.
    pub key: &'static str,
    /// The file.
    pub path: &'a Path,
}

impl<'a> PemFile<'a> {
    /// `path` under `key`, or `None` when the path is empty (the key unset).
    pub fn optional(key: &'static str, path: &'a Path) -> Option<PemFile<'a>> {
        (!path.as_os_str().is_empty()).then_some(PemFile { key, path })
    }
}

impl PemFile<'_> {
    fn error(&self, why: impl Into<String>) -> TlsError {
        TlsError {
            key: self.key,
            path: self.path.to_owned(),
            why: why.into(),
        }
    }

    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        std::fs::metadata(self.path).map_err(|e| self.error(e.to_string()))?;
        let certs = CertificateDer::pem_file_iter(self.path)
            .map_err(|e| self.error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(self.error("no certificate in the file"));
        }
        Ok(certs)
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certificates()? {
            roots
                .add(cert)
                .map_err(|e| self.error(format!("not a usable CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    /// The private key, refused (as PostgreSQL refuses it) when others
    /// than its owner and group can read the file.
    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(self.path).map_err(|e| self.error(e.to_string()))?;
        if meta.permissions().mode() & 0o007 != 0 {
            return Err(self.error(format!(
                "a private key must not be readable by others (mode {:o}; chmod 600 or 640)",
                meta.permissions().mode() & 0o777
            )));
        }
        PrivateKeyDer::from_pem_file(self.path)
            .map_err(|e| self.error(format!("no private key in the file: {e}")))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the proxy serves TLS clients with.
#[derive(Clone)]
pub struct ServerTls {
    /// Accepts a client's TLS handshake.
    pub acceptor: TlsAcceptor,
    /// The certificate's `tls-server-end-point` data, for
    /// SCRAM-SHA-256-PLUS; `None` when its signature algorithm gives none
    /// (Ed25519, RSA-PSS), as with PostgreSQL.
    pub end_point: Option<Vec<u8>>,
    /// Client certificates are checked against a CA (`cert` auth).
    pub verifies_clients: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("channel_binding", &self.end_point.is_some())
            .field("verifies_clients", &self.verifies_clients)
            .finish_non_exhaustive()
    }
}

/// The proxy's TLS for clients: `cert` (the chain, leaf first) and `key`;
/// with `client_ca`, client certificates signed by it are checked when
/// sent (clients without one are still let in: authentication decides).
pub fn server_tls(
    cert: PemFile<'_>,
    key: PemFile<'_>,
    client_ca: Option<PemFile<'_>>,
) -> Result<ServerTls, TlsError> {
    let chain = cert.certificates()?;
    let private = key.private_key()?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| cert.error(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()?), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| ca.error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let end_point = chain.first().and_then(|c| server_end_point(c));
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| key.error(format!("does not go with the certificate: {e}")))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(ServerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        end_point,
        verifies_clients: client_ca.is_some(),
    })
}

/// What a connection to PostgreSQL checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing (libpq's `prefer` and `require`): encryption against
    /// eavesdroppers, no protection against an impostor.
    Nothing,
    /// That a trusted CA signed it (`verify-ca`).
    Ca,
    /// That, and that it names the host connected to (`verify-full`).
    Full,
}

/// A client config for pgwarden's connections to PostgreSQL. `ca` is
/// required by [`Verify::Ca`] and [`Verify::Full`]; `identity` (certificate
/// and key) is sent when the server asks for one.
pub fn client_config(
    verify: Verify,
    ca: Option<PemFile<'_>>,
    identity: Option<(PemFile<'_>, PemFile<'_>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: "server_tls.mode",
            path: PathBuf::new(),
            why: e.to_string(),
        })?;
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match (verify, ca) {
        (Verify::Nothing, _) => Arc::new(Relaxed {
            chain: None,
            algorithms,
        }),
        (Verify::Ca | Verify::Full, None) => {
            return Err(TlsError {
                key: "server_tls.ca_file",
                path: PathBuf::new(),
                why: "required by verify-ca and verify-full".to_owned(),
            });
        }
        (v, Some(ca)) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(ca.roots()?), provider)
                    .build()
                    .map_err(|e| ca.error(e.to_string()))?;
            if v == Verify::Full {
                webpki
            } else {
                Arc::new(Relaxed {
                    chain: Some(webpki),
                    algorithms,
                })
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    finish_client(builder, identity, ALPN_POSTGRESQL)
}

/// A client config with `identity` (certificate and key) shown when the
/// server asks for one, offering the ALPN protocol `alpn`.
fn finish_client(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    identity: Option<(PemFile<'_>, PemFile<'_>)>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(cert.certificates()?, key.private_key()?)
            .map_err(|e| key.error(format!("does not go with the certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The client config `[server_tls]` asks for, `None` under `disable`.
pub fn for_servers(
    c: &pgwarden_config::ServerTlsConfig,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    use pgwarden_config::ServerTlsMode;
    let verify = match c.mode {
        ServerTlsMode::Disable => return Ok(None),
        ServerTlsMode::Prefer | ServerTlsMode::Require => Verify::Nothing,
        ServerTlsMode::VerifyCa => Verify::Ca,
        ServerTlsMode::VerifyFull => Verify::Full,
    };
    let identity = PemFile::optional("server_tls.cert_file", &c.cert_file)
        .zip(PemFile::optional("server_tls.key_file", &c.key_file));
    client_config(
        verify,
        PemFile::optional("server_tls.ca_file", &c.ca_file),
        identity,
    )
    .map(Some)
}

/// The name a server's certificate is checked against: a DNS name or an
/// IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("\"{host}\" is not a host name TLS can check: {e}"))
}

/// The handshake signature checks of a [`ServerCertVerifier`] holding
/// `algorithms`: each method forwards to the `rustls::crypto` function of
/// the same name.
macro_rules! signature_checks {
    ($($check:ident),+) => {$(
        fn $check(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::$check(message, cert, dss, &self.algorithms)
        }
    )+};
}

/// A verifier that checks less than WebPKI does: with `chain`, the chain
/// but not the name (libpq's `verify-ca`); without, no certificate at all
/// (libpq's `require`). Either way the handshake signatures are checked, so
/// the server must still hold the key of the certificate it shows.
#[derive(Debug)]
struct Relaxed {
    /// The chain check, `None` to accept any certificate.
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// The algorithms handshake signatures are checked with (the
    /// provider's, as WebPKI's own verifier uses).
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    signature_checks!(verify_tls12_signature, verify_tls13_signature);

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
