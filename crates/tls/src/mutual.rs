//! Mutual TLS between pgwarden's own processes over TCP: watchdog peers
//! (`watchdog.tls_*`) and the remote admin API (`[admin]`, `pgwardenctl
//! --host`). Both sides hold a certificate signed by the cluster's CA and
//! check the other's against it; the client also checks that the server's
//! certificate names the host it dialled. gRPC runs over it, so the ALPN
//! protocol is `h2`.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use crate::{PemFile, TlsError, finish_client, provider};

/// The ALPN protocol of gRPC (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// A TLS server that admits only clients with a certificate signed by
/// `client_ca`.
pub fn mutual_server(
    cert: PemFile<'_>,
    key: PemFile<'_>,
    client_ca: PemFile<'_>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(client_ca.roots()?),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| client_ca.error(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert.error(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.certificates()?, key.private_key()?)
        .map_err(|e| key.error(format!("does not go with the certificate: {e}")))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A TLS client that trusts servers whose certificate `ca` signed for the
/// name dialled, and shows `identity` (certificate and key) when asked.
/// Without an identity a [`mutual_server`] refuses it: that is for
/// `pgwardenctl`, which reports the refusal.
pub fn mutual_client(
    ca: PemFile<'_>,
    identity: Option<(PemFile<'_>, PemFile<'_>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(ca.roots()?), Arc::clone(&provider))
            .build()
            .map_err(|e| ca.error(e.to_string()))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ca.error(e.to_string()))?
        .with_webpki_verifier(verifier);
    finish_client(builder, identity, ALPN_H2)
}

/// Both sides of a node's mutual TLS from one certificate, key and CA: a
/// watchdog is the server of its peers and their client.
#[derive(Clone)]
pub struct Mutual {
    /// What this node accepts peers with.
    pub server: Arc<ServerConfig>,
    /// What this node dials peers with.
    pub client: Arc<ClientConfig>,
}

impl std::fmt::Debug for Mutual {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mutual(..)")
    }
}

impl Mutual {
    /// Reads and checks the three files.
    pub fn load(cert: PemFile<'_>, key: PemFile<'_>, ca: PemFile<'_>) -> Result<Mutual, TlsError> {
        Ok(Mutual {
            server: mutual_server(cert, key, ca)?,
            client: mutual_client(ca, Some((cert, key)))?,
        })
    }
}
