//! The proxy's admin API on `<node.runtime_dir>/proxy.sock`: its pools
//! and clients (PgBouncer's SHOW POOLS and SHOW CLIENTS, pgpool's
//! pcp_pool_status and pcp_proc_info), pause and resume, reload, and
//! terminating one client.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use pgwarden_proto::v1::proxy_server::{Proxy as ProxyApi, ProxyServer};
use pgwarden_proto::v1::{
    ClientInfo, GetPoolsReply, GetPoolsRequest, ListClientsReply, ListClientsRequest, PauseReply,
    PauseRequest, PoolState, ReloadReply, ReloadRequest, ResumeReply, ResumeRequest,
    TerminateClientReply, TerminateClientRequest,
};
use tonic::{Request, Response, Status};

use crate::{Shared, load_users};

/// The service, over the state every session shares.
#[derive(Debug, Clone)]
pub struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    /// The service for a proxy's shared state.
    pub fn new(shared: Arc<Shared>) -> AdminService {
        AdminService { shared }
    }

    /// The tonic server for it.
    pub fn into_server(self) -> ProxyServer<AdminService> {
        ProxyServer::new(self)
    }
}

/// Re-reads the auth file into `shared`; on error the old one stays in force.
///
/// Read and prepared (a SCRAM verifier per plain-text secret, a PBKDF2
/// each) on the blocking pool: the thread serving clients never waits.
pub async fn reload_auth_file(shared: &Arc<Shared>) -> Result<usize, crate::StartError> {
    let s = Arc::clone(shared);
    let users = tokio::task::spawn_blocking(move || load_users(&s.settings))
        .await
        .map_err(|e| crate::StartError::AuthFile {
            path: shared.settings.auth_file.clone(),
            reason: format!("reading it failed: {e}"),
        })??;
    let n = users.len();
    *shared.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
    Ok(n)
}

/// A reload: the auth file, and the TLS files where some are configured.
/// Each keeps its old contents when its new ones cannot be used; the
/// message says what was reloaded, the error what was not and why.
pub async fn reload(shared: &Arc<Shared>) -> Result<String, String> {
    let auth = reload_auth_file(shared).await;
    let tls_files = shared.settings.client_tls.mode != pgwarden_config::ClientTlsMode::Disable
        || [
            &shared.settings.server_tls.ca_file,
            &shared.settings.server_tls.cert_file,
        ]
        .iter()
        .any(|p| !p.as_os_str().is_empty());
    let tls = if tls_files {
        let s = Arc::clone(shared);
        let r = tokio::task::spawn_blocking(move || s.tls.reload(&s.settings)).await;
        Some(
            r.map_err(|e| format!("reading the TLS files failed: {e}"))
                .and_then(|r| r.map_err(|e| e.to_string())),
        )
    } else {
        None
    };
    let mut done = Vec::new();
    let mut failed = Vec::new();
    if !shared.settings.hba_file.as_os_str().is_empty() {
        let s = Arc::clone(shared);
        let loaded = tokio::task::spawn_blocking(move || crate::load_hba(&s.settings))
            .await
            .unwrap_or_else(|e| {
                Err(crate::StartError::HbaFile {
                    path: shared.settings.hba_file.clone(),
                    reason: format!("reading it failed: {e}"),
                })
            });
        match loaded {
            Ok(hba) => {
                let n = hba.as_ref().map_or(0, |h| h.len());
                shared.set_hba(hba);
                tracing::info!(rules = n, "hba file reloaded");
                done.push(format!("hba file reloaded: {n} rules"));
            }
            Err(e) => not_reloaded(&mut failed, &e, "hba file"),
        }
    }
    match auth {
        Ok(n) => {
            tracing::info!(users = n, "auth file reloaded");
            done.push(format!("auth file reloaded: {n} users"));
        }
        Err(e) => not_reloaded(&mut failed, &e, "auth file"),
    }
    match tls {
        Some(Ok(())) => {
            tracing::info!("TLS certificates and keys reloaded");
            done.push("TLS certificates and keys reloaded".to_owned());
        }
        Some(Err(e)) => not_reloaded(&mut failed, &e, "TLS files"),
        None => {}
    }
    if failed.is_empty() {
        Ok(done.join("; "))
    } else {
        failed.extend(done);
        Err(failed.join("; "))
    }
}

/// A part of a reload (`files`: "hba file", "TLS files") that failed:
/// logged, and said in the answer with the old files staying in force.
fn not_reloaded(failed: &mut Vec<String>, e: &dyn std::fmt::Display, files: &str) {
    let (ones, stay) = if files.ends_with('s') {
        ("ones", "stay")
    } else {
        ("one", "stays")
    };
    tracing::error!(error = %e, "{files} not reloaded; keeping the old {ones}");
    failed.push(format!("{e}; the old {files} {stay} in force"));
}

fn id32(id: usize) -> u32 {
    u32::try_from(id).unwrap_or(u32::MAX)
}

#[tonic::async_trait]
impl ProxyApi for AdminService {
    async fn get_pools(
        &self,
        _: Request<GetPoolsRequest>,
    ) -> Result<Response<GetPoolsReply>, Status> {
        let route = self.shared.router.current();
        let pools = self
            .shared
            .pool_report()
            .into_iter()
            .map(|p| PoolState {
                backend_id: id32(p.backend),
                user: p.user,
                database: p.database,
                active: id32(p.active),
                idle: id32(p.idle),
                waiting: id32(p.waiting),
                clients_active: id32(p.clients_active),
                clients_idle: id32(p.clients_idle),
                clients_pinned: id32(p.clients_pinned),
                reads: p.reads,
                writes: p.writes,
            })
            .collect();
        Ok(Response::new(GetPoolsReply {
            pools,
            generation: route.generation,
            primary_id: route.primary.as_ref().map(|b| id32(b.id)),
        }))
    }

    async fn list_clients(
        &self,
        _: Request<ListClientsRequest>,
    ) -> Result<Response<ListClientsReply>, Status> {
        let clients = self
            .shared
            .clients
            .list()
            .into_iter()
            .map(|c| ClientInfo {
                pid: c.pid,
                address: c.meta.address.to_string(),
                user: c.meta.user,
                database: c.meta.database,
                backend_id: c.backend.map(id32),
                connected_unix_ms: c
                    .meta
                    .connected
                    .duration_since(UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .unwrap_or(0),
            })
            .collect();
        Ok(Response::new(ListClientsReply { clients }))
    }

    async fn pause(&self, _: Request<PauseRequest>) -> Result<Response<PauseReply>, Status> {
        if !self.shared.paused.send_replace(true) {
            tracing::info!("paused by an operator: new sessions wait for resume");
        }
        Ok(Response::new(PauseReply {}))
    }

    async fn resume(&self, _: Request<ResumeRequest>) -> Result<Response<ResumeReply>, Status> {
        if self.shared.paused.send_replace(false) {
            tracing::info!("resumed by an operator");
        }
        Ok(Response::new(ResumeReply {}))
    }

    async fn reload(&self, _: Request<ReloadRequest>) -> Result<Response<ReloadReply>, Status> {
        match reload(&self.shared).await {
            Ok(message) => Ok(Response::new(ReloadReply { message })),
            Err(e) => Err(Status::failed_precondition(e)),
        }
    }

    async fn terminate_client(
        &self,
        request: Request<TerminateClientRequest>,
    ) -> Result<Response<TerminateClientReply>, Status> {
        let pid = request.into_inner().pid;
        let found = self.shared.clients.terminate(pid);
        if found {
            tracing::info!(pid, "terminating a client at an operator's request");
        }
        Ok(Response::new(TerminateClientReply { found }))
    }
}
