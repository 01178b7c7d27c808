//! The proxy's commands: `pools`, `clients`, `pause`, `resume`, `reload`
//! and `terminate`.

use std::io::Write;

use crate::CtlError;
use crate::proxy::Proxy;

/// `pools`: the server connection cache.
pub async fn pools(proxy: &mut Proxy, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    super::print(out, json, &proxy.pools().await?)
}

/// `clients`: who is logged in.
pub async fn clients(proxy: &mut Proxy, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    super::print(out, json, &proxy.clients().await?)
}

/// `pause`: new sessions wait.
pub async fn pause(proxy: &mut Proxy, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    proxy.pause().await?;
    super::message(
        out,
        json,
        "paused: new sessions wait (up to proxy.pool_timeout) until `pgwardenctl resume`",
    )
}

/// `resume`: sessions go through again.
pub async fn resume(proxy: &mut Proxy, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    proxy.resume().await?;
    super::message(out, json, "resumed: new sessions go through")
}

/// `reload`: the auth file is read again.
pub async fn reload(proxy: &mut Proxy, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    let said = proxy.reload().await?;
    super::message(out, json, &said)
}

/// `terminate PID`: one client's session ends; an unknown pid is refused.
pub async fn terminate(
    proxy: &mut Proxy,
    pid: i32,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    if !proxy.terminate(pid).await? {
        return Err(CtlError::Refused(format!(
            "no client with pid {pid} (see `pgwardenctl clients`)"
        )));
    }
    super::message(out, json, &format!("client {pid} terminated"))
}
