//! The connection to `pgwarden-proxy`'s admin API on `proxy.sock`, with the
//! same deadlines and error mapping as the monitor's (see [`Socket`]).

use pgwarden_proto::uds::Daemon;
use pgwarden_proto::v1::proxy_client::ProxyClient;
use pgwarden_proto::v1::{
    ClientInfo, GetPoolsReply, GetPoolsRequest, ListClientsRequest, PauseRequest, ReloadRequest,
    ResumeRequest, TerminateClientRequest,
};
use tonic::transport::Channel;

use crate::CtlError;
use crate::socket::{Connected, Place};

/// A connected client of the proxy's admin API.
pub type Proxy = Connected<ProxyClient<Channel>>;

impl Proxy {
    /// Connects to the proxy's socket now; an error means it is not running.
    pub async fn connect(at: Place) -> Result<Self, CtlError> {
        Self::open(Daemon::Proxy, at, ProxyClient::new).await
    }

    /// `GetPools`: every pool's numbers, and the route.
    pub async fn pools(&mut self) -> Result<GetPoolsReply, CtlError> {
        let call = self.client.get_pools(GetPoolsRequest {});
        self.socket.deadline("GetPools", call).await
    }

    /// `ListClients`: every logged-in client.
    pub async fn clients(&mut self) -> Result<Vec<ClientInfo>, CtlError> {
        let call = self.client.list_clients(ListClientsRequest {});
        Ok(self.socket.deadline("ListClients", call).await?.clients)
    }

    /// `Pause`: new sessions wait until `Resume`.
    pub async fn pause(&mut self) -> Result<(), CtlError> {
        let call = self.client.pause(PauseRequest {});
        self.socket.deadline("Pause", call).await?;
        Ok(())
    }

    /// `Resume`.
    pub async fn resume(&mut self) -> Result<(), CtlError> {
        let call = self.client.resume(ResumeRequest {});
        self.socket.deadline("Resume", call).await?;
        Ok(())
    }

    /// `Reload`: the proxy re-reads its auth file; its message.
    pub async fn reload(&mut self) -> Result<String, CtlError> {
        let call = self.client.reload(ReloadRequest {});
        Ok(self.socket.deadline("Reload", call).await?.message)
    }

    /// `TerminateClient`: whether a client with that pid was there.
    pub async fn terminate(&mut self, pid: i32) -> Result<bool, CtlError> {
        let call = self.client.terminate_client(TerminateClientRequest { pid });
        Ok(self.socket.deadline("TerminateClient", call).await?.found)
    }
}
