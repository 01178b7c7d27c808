//! The connection to `pgwarden-proxy`'s admin API on `proxy.sock`, with the
//! same deadlines and error mapping as the monitor's (see
//! [`Socket`](crate::socket::Socket)).

use pgwarden_proto::v1::proxy_client::ProxyClient;
use pgwarden_proto::v1::{
    ClientInfo, GetPoolsReply, GetPoolsRequest, ListClientsRequest, PauseReply, PauseRequest,
    ReloadRequest, ResumeReply, ResumeRequest, TerminateClientRequest,
};
use tonic::transport::Channel;

use crate::CtlError;
use crate::socket::Connected;

/// A connected client of the proxy's admin API; connecting fails when it is
/// not running.
pub type Proxy = Connected<ProxyClient<Channel>>;

impl Proxy {
    unary! {
        /// `GetPools`: every pool's numbers, and the route.
        pools() -> GetPoolsReply = get_pools(GetPoolsRequest {}), "GetPools";
        /// `ListClients`: every logged-in client.
        clients() -> Vec<ClientInfo> = list_clients(ListClientsRequest {}), "ListClients".clients;
        /// `Pause`: new sessions wait until `Resume`.
        pause() -> PauseReply = pause(PauseRequest {}), "Pause";
        /// `Resume`.
        resume() -> ResumeReply = resume(ResumeRequest {}), "Resume";
        /// `Reload`: the proxy re-reads its auth file; its message.
        reload() -> String = reload(ReloadRequest {}), "Reload".message;
        /// `TerminateClient`: whether a client with that pid was there.
        terminate(pid: i32) -> bool
            = terminate_client(TerminateClientRequest { pid }), "TerminateClient".found;
    }
}
