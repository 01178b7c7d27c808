//! Certificates the TLS tests make for themselves: one CA, and leaf
//! certificates it signs, as PEM files in a temp dir; and PostgreSQL
//! servers switched to TLS with one of them.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use pgwarden_testkit::Cluster;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA and the certificates it signed.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A fresh CA (`ca.pem`).
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-pki-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "pgwarden test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let pki = Pki { dir, ca, ca_key };
        pki.write("ca.pem", &pki.ca.pem(), 0o644);
        pki
    }

    /// Writes `<name>.crt` and `<name>.key` (mode 600): a certificate the
    /// CA signed for `names` (host names or IP addresses).
    pub fn issue(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(name));
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (
            self.write(&format!("{name}.crt"), &cert.pem(), 0o644),
            self.write(&format!("{name}.key"), &key.serialize_pem(), 0o600),
        )
    }

    /// The CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn write(&self, file: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.path(file);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// Turns TLS on in every server of `cluster` with a certificate for
    /// `names` (copied into each data dir, owned by the server's user, as
    /// PostgreSQL wants its key), by a reload.
    pub fn serve_tls(&self, cluster: &Cluster, names: &[&str]) {
        let (crt, key) = self.issue("postgres", names);
        for node in cluster.nodes() {
            let dir = node.data_dir();
            for (from, to) in [(&crt, "server.crt"), (&key, "server.key")] {
                let dest = dir.join(to);
                std::fs::copy(from, &dest).unwrap();
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600)).unwrap();
                if let Some((uid, gid)) = pgwarden_testkit::os_user() {
                    nix::unistd::chown(
                        &dest,
                        Some(nix::unistd::Uid::from_raw(uid)),
                        Some(nix::unistd::Gid::from_raw(gid)),
                    )
                    .unwrap();
                }
            }
        }
        // ALTER SYSTEM reaches the standbys through their own files only:
        // set it on each.
        for node in cluster.nodes() {
            node.psql("ALTER SYSTEM SET ssl = on").unwrap();
            node.psql("SELECT pg_reload_conf()").unwrap();
        }
        for node in cluster.nodes() {
            let on = pgwarden_testkit::wait_until(
                std::time::Duration::from_secs(10),
                "the server to serve TLS",
                || node.psql("SHOW ssl").is_ok_and(|v| v.trim() == "on"),
            );
            assert!(on.is_ok(), "{} did not turn TLS on", node.name());
        }
    }
}
