//! The proxy's TLS, both ways: what it serves clients with
//! (`proxy.client_tls_*`) and how it connects to servers (`[server_tls]`).
//! Both are read at start and again on reload; a reload that cannot read
//! the new files keeps the old ones and says why.

use std::path::Path;
use std::sync::{Arc, RwLock};

use pgwarden_config::{ClientTlsMode, ServerTlsMode};
use pgwarden_tls::{PemFile, ServerTls, TlsError};

use crate::settings::Settings;

/// The proxy's TLS state.
#[derive(Debug)]
pub struct Tls {
    client_mode: ClientTlsMode,
    served: RwLock<Option<Arc<ServerTls>>>,
    server_mode: ServerTlsMode,
    to_servers: RwLock<Option<Arc<pgwarden_tls::rustls::ClientConfig>>>,
}

/// How a connection to a server is to be made.
#[derive(Debug, Clone)]
pub struct ToServer {
    /// `server_tls.mode`.
    pub mode: ServerTlsMode,
    /// The client config, unless the mode is `disable`.
    pub config: Option<Arc<pgwarden_tls::rustls::ClientConfig>>,
}

fn pem<'a>(key: &'static str, path: &'a Path) -> Option<PemFile<'a>> {
    PemFile::optional(key, path)
}

fn load_served(settings: &Settings) -> Result<Option<ServerTls>, TlsError> {
    let f = &settings.client_tls;
    if f.mode == ClientTlsMode::Disable {
        return Ok(None);
    }
    let cert = PemFile {
        key: "proxy.client_tls_cert_file",
        path: &f.cert,
    };
    let key = PemFile {
        key: "proxy.client_tls_key_file",
        path: &f.key,
    };
    pgwarden_tls::server_tls(cert, key, pem("proxy.client_tls_ca_file", &f.ca)).map(Some)
}

impl ToServer {
    /// The same for tokio-postgres connections (primary discovery).
    pub fn postgres(&self) -> pgwarden_tls::postgres::PgTls {
        match &self.config {
            Some(c) => pgwarden_tls::postgres::PgTls::new(Arc::clone(c), self.mode.required()),
            None => pgwarden_tls::postgres::PgTls::disabled(),
        }
    }
}

impl Tls {
    /// Reads every file the settings name.
    pub fn load(settings: &Settings) -> Result<Tls, TlsError> {
        let served = load_served(settings)?.map(Arc::new);
        let to_servers = pgwarden_tls::for_servers(&settings.server_tls)?;
        Ok(Tls {
            client_mode: settings.client_tls.mode,
            served: RwLock::new(served),
            server_mode: settings.server_tls.mode,
            to_servers: RwLock::new(to_servers),
        })
    }

    /// Reads the files again; on error the old ones stay in force.
    pub fn reload(&self, settings: &Settings) -> Result<(), TlsError> {
        let served = load_served(settings)?.map(Arc::new);
        let to_servers = pgwarden_tls::for_servers(&settings.server_tls)?;
        *self.served.write().unwrap_or_else(|p| p.into_inner()) = served;
        *self.to_servers.write().unwrap_or_else(|p| p.into_inner()) = to_servers;
        Ok(())
    }

    /// What TLS clients are served with; `None` under `disable`.
    pub fn served(&self) -> Option<Arc<ServerTls>> {
        self.served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Plain-text clients are refused.
    pub fn required(&self) -> bool {
        self.client_mode == ClientTlsMode::Require
    }

    /// How to connect to servers.
    pub fn to_server(&self) -> ToServer {
        ToServer {
            mode: self.server_mode,
            config: self
                .to_servers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
