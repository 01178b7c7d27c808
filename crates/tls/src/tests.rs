use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A CA and a server certificate for `name` it signed, as PEM files in a
/// fresh directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str, name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("pgwarden-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let ca_key = KeyPair::generate().ok();
        let ca_key = ca_key.as_ref().map(|k| (k, ca_params()));
        let (ca_key, ca_params) = ca_key.unwrap_or_else(|| panic!("no CA key"));
        let ca = ca_params.self_signed(ca_key).ok();
        let ca = ca.unwrap_or_else(|| panic!("no CA"));
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let cert = CertificateParams::new(vec![name.to_owned()])
            .and_then(|p| p.signed_by(&key, &ca, ca_key))
            .unwrap_or_else(|e| panic!("{e}"));
        let write = |file: &str, text: String, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("{e}"));
        };
        write("ca.pem", ca.pem(), 0o644);
        write("server.pem", cert.pem(), 0o644);
        write("server.key", key.serialize_pem(), 0o600);
        write("open.key", key.serialize_pem(), 0o644);
        Pki { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p
}

fn pem<'a>(key: &'static str, path: &'a std::path::Path) -> PemFile<'a> {
    PemFile { key, path }
}

fn server(pki: &Pki) -> ServerTls {
    server_tls(
        pem("proxy.client_tls_cert_file", &pki.file("server.pem")),
        pem("proxy.client_tls_key_file", &pki.file("server.key")),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A handshake over an in-memory pipe, then one byte each way: the
/// client's error if it refused the server.
async fn handshake(
    server: &ServerTls,
    client: Arc<ClientConfig>,
    name: &str,
) -> Result<(), String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = server.acceptor.clone();
    let served = tokio::spawn(async move {
        let mut s = acceptor.accept(a).await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        s.write_all(&byte).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())
    });
    let name = server_name(name)?;
    let mut c = TlsConnector::from(client)
        .connect(name, b)
        .await
        .map_err(|e| e.to_string())?;
    c.write_all(b"x").await.map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    c.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
    assert_eq!(&byte, b"x");
    assert_eq!(c.get_ref().1.alpn_protocol(), Some(ALPN_POSTGRESQL));
    served.await.map_err(|e| e.to_string())?
}

#[tokio::test]
async fn verify_full_checks_the_name_verify_ca_only_the_chain_require_nothing() {
    let pki = Pki::new("modes", "db.example");
    let other = Pki::new("modes-other", "db.example");
    let s = server(&pki);
    let ca = pki.file("ca.pem");
    let full = client_config(Verify::Full, Some(pem("server_tls.ca_file", &ca)), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let by_ca = client_config(Verify::Ca, Some(pem("server_tls.ca_file", &ca)), None)
        .unwrap_or_else(|e| panic!("{e}"));
    let nothing = client_config(Verify::Nothing, None, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(handshake(&s, Arc::clone(&full), "db.example").await, Ok(()));
    let wrong_name = handshake(&s, Arc::clone(&full), "other.example").await;
    assert!(
        wrong_name
            .as_ref()
            .is_err_and(|e| e.contains("not valid for name")),
        "{wrong_name:?}"
    );
    assert_eq!(
        handshake(&s, Arc::clone(&by_ca), "other.example").await,
        Ok(())
    );
    assert_eq!(handshake(&s, nothing, "other.example").await, Ok(()));
    // A server whose certificate another CA signed fails both checks.
    let impostor = server(&other);
    assert!(handshake(&impostor, full, "db.example").await.is_err());
    assert!(handshake(&impostor, by_ca, "db.example").await.is_err());
}

#[test]
fn the_channel_binding_of_an_ecdsa_sha256_certificate_is_its_sha256() {
    let pki = Pki::new("endpoint", "db.example");
    let s = server(&pki);
    let cert = pem("k", &pki.file("server.pem"))
        .certificates()
        .unwrap_or_else(|e| panic!("{e}"));
    let der: &[u8] = cert.first().map(|c| c.as_ref()).unwrap_or_default();
    use sha2::Digest;
    assert_eq!(s.end_point, Some(sha2::Sha256::digest(der).to_vec()));
}

#[test]
fn bad_files_are_named_by_their_key() {
    let pki = Pki::new("bad", "db.example");
    let missing = pki.file("missing.pem");
    // The proxy's TLS for clients from these files, or why not.
    let serve = |cert: &Path, key: &Path| {
        server_tls(
            pem("proxy.client_tls_cert_file", cert),
            pem("proxy.client_tls_key_file", key),
            None,
        )
        .err()
    };
    let e = serve(&missing, &pki.file("server.key"));
    assert!(
        e.as_ref()
            .is_some_and(|e| e.key == "proxy.client_tls_cert_file"
                && e.to_string().starts_with("proxy.client_tls_cert_file (")),
        "{e:?}"
    );
    // A key others can read is refused, as PostgreSQL refuses it.
    let e = serve(&pki.file("server.pem"), &pki.file("open.key"));
    assert!(
        e.as_ref().is_some_and(
            |e| e.key == "proxy.client_tls_key_file" && e.why.contains("readable by others")
        ),
        "{e:?}"
    );
    // A key file given as the certificate: no certificate in it.
    let e = serve(&pki.file("server.key"), &pki.file("server.key"));
    assert!(
        e.as_ref().is_some_and(|e| e.why.contains("no certificate")),
        "{e:?}"
    );
    // verify-ca without a CA.
    let e = client_config(Verify::Ca, None, None).err();
    assert_eq!(e.map(|e| e.key), Some("server_tls.ca_file"));
}
