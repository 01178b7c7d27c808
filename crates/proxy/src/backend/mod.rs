//! One connection from the proxy to a PostgreSQL server: opening it
//! (startup and authentication as the client's user), resetting it between
//! clients, and telling whether a cached one is still usable.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use pgwarden_wire::auth::Secret;
use pgwarden_wire::auth::md5;
use pgwarden_wire::auth::scram::{self, Credentials, ScramClient};
use pgwarden_wire::frame::{self, Message};
use pgwarden_wire::{ProtocolError, ServerMessageFields};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::{self, Stream};

/// Largest message the proxy accepts from a server outside the data path.
const MAX_CONTROL_MESSAGE: u32 = 1 << 20;

/// How the proxy authenticates to servers as a given user.
#[derive(Clone)]
pub enum ServerCredentials {
    /// The plain-text password: any method works.
    Password(String),
    /// An md5 secret: md5 only.
    Md5(String),
    /// The ClientKey the client proved: SCRAM only, with the same verifier.
    ScramKey(Credentials),
    /// Nothing: the client proved no password (hba `trust` or `cert`) and
    /// the auth file holds none to pass on; only a server that asks for
    /// none lets the proxy in.
    Nothing,
}

impl std::fmt::Debug for ServerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerCredentials::Password(_) => "Password(***)",
            ServerCredentials::Md5(_) => "Md5(***)",
            ServerCredentials::ScramKey(_) => "ScramKey(***)",
            ServerCredentials::Nothing => "Nothing",
        })
    }
}

impl ServerCredentials {
    /// The credentials a plain or md5 secret gives (SCRAM secrets need the
    /// client's proof first, see [`ServerCredentials::ScramKey`]).
    pub fn from_secret(secret: &Secret) -> Option<ServerCredentials> {
        match secret {
            Secret::Plain(p) => Some(ServerCredentials::Password(p.clone())),
            Secret::Md5(m) => Some(ServerCredentials::Md5(m.clone())),
            Secret::Scram(_) => None,
        }
    }
}

/// Why a server connection could not be opened or reset.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// TCP connect or IO failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The server refused with an ErrorResponse; `raw` is the whole message,
    /// to relay to the client as it is.
    #[error("server error {}: {}", .fields.code, .fields.message)]
    Refused {
        /// Parsed fields, for logs and decisions.
        fields: ServerMessageFields,
        /// The ErrorResponse as received.
        raw: BytesMut,
    },
    /// The server asked for an authentication the credentials cannot answer.
    #[error("{0}")]
    Auth(String),
    /// SCRAM with the server failed.
    #[error("SCRAM: {0}")]
    Scram(#[from] scram::ScramError),
    /// The server broke the protocol.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// TLS with the server could not be had (`server_tls.mode`).
    #[error("TLS: {0}")]
    Tls(String),
    /// After a reset the session was still inside a transaction.
    #[error("the session is still inside a transaction after the reset")]
    NotIdle,
}

/// An open, authenticated server connection, idle between queries.
#[derive(Debug)]
pub struct ServerConn {
    pub(crate) stream: Stream,
    /// Backend id in `[[backends]]`.
    pub backend: usize,
    /// ParameterStatus values the server reported, kept current.
    pub params: Vec<(String, String)>,
    /// The server's BackendKeyData (process id, secret), for cancels.
    pub key: (i32, i32),
    /// Resolved address, for cancels.
    pub addr: std::net::SocketAddr,
    /// The role this connection is logged in as.
    pub user: String,
    /// Client settings [`ServerConn::apply_params`] set, as the client
    /// spelled them (the server may report them spelled otherwise:
    /// `utf8` / `UTF8`), until the session changes or resets them.
    pub applied: Vec<(String, String)>,
    /// The client settings (and believed defaults) the session was last
    /// found to match, as a [`crate::pool::checkout`] fingerprint; `None` once the
    /// server reports a setting changed or a reset, so the next checkout
    /// compares again. Spares the common checkout (the same settings as
    /// the last client's) its comparisons.
    pub settled: Option<u64>,
    /// NoticeResponses (whole messages) the server sent while taking the
    /// settings in `applied`, by setting name, and those of its startup
    /// under `""`: a direct client would have seen them at login
    /// (`identifier ... will be truncated`), so a client gets them with
    /// its welcome ([`ServerConn::login_notices`]).
    pub notices: Vec<(String, BytesMut)>,
    /// Transaction mode: the prepared statements this connection holds.
    pub statements: crate::relay::ServerStatements,
    created: Instant,
    /// Unique among the proxy's server connections.
    pub(crate) serial: u64,
    /// Transactions it served (transaction mode): a client that gets it
    /// back with the count where it left it knows nobody else used it.
    pub(crate) served: u64,
    /// When it was last handed back to its pool.
    pub idle_since: Instant,
    pub(crate) buf: BytesMut,
}

/// The next [`ServerConn::serial`].
static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Why a login with [`ServerCredentials::Nothing`] failed.
const NOTHING: &str = "the server asks for a password, and the proxy has none for this user: its hba method (trust or cert) took none, and the auth file holds no plain or md5 secret to use";

/// SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Asks the server for TLS as `server_tls.mode` says (libpq's `sslmode`):
/// not at all, preferably, or as a must; then checks its certificate as
/// the mode says, against `host`.
async fn encrypt(
    mut tcp: TcpStream,
    host: &str,
    tls: &crate::net::tls::ToServer,
) -> Result<Stream, ServerError> {
    let Some(config) = &tls.config else {
        return Ok(tcp.into());
    };
    tcp.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer {
        [b'S'] => {
            let name = pgwarden_tls::server_name(host).map_err(ServerError::Tls)?;
            let s = pgwarden_tls::TlsConnector::from(std::sync::Arc::clone(config))
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    ServerError::Tls(format!(
                        "handshake failed (server_tls.mode = \"{}\"): {e}",
                        tls.mode
                    ))
                })?;
            Ok(Stream::TlsClient(Box::new(s)))
        }
        [b'N'] if !tls.mode.required() => Ok(tcp.into()),
        [b'N'] => Err(ServerError::Tls(format!(
            "the server does not accept TLS, and server_tls.mode = \"{}\" requires it",
            tls.mode
        ))),
        _ => Err(ServerError::Tls(
            "the server answered SSLRequest with neither S nor N".to_owned(),
        )),
    }
}

/// How new server connections are made.
#[derive(Debug, Clone)]
pub struct Dial {
    /// TCP keepalive.
    pub keepalive: bool,
    /// TLS, as `server_tls` says.
    pub tls: crate::net::tls::ToServer,
    /// Connect, TLS, startup and login must finish within this.
    pub timeout: Duration,
}

impl ServerConn {
    /// Opens a connection to `host:port`, starts a session with the client's
    /// startup parameters and logs in with `creds`.
    pub async fn connect(
        backend: usize,
        host: &str,
        port: u16,
        params: &[(String, String)],
        creds: &ServerCredentials,
        dial: &Dial,
    ) -> Result<ServerConn, ServerError> {
        let login = async {
            let (keepalive, tls) = (dial.keepalive, &dial.tls);
            let stream = TcpStream::connect((host, port)).await?;
            net::tune(&stream, keepalive);
            let addr = stream.peer_addr()?;
            let stream = encrypt(stream, host, tls).await?;
            let now = Instant::now();
            let mut conn = ServerConn {
                stream,
                backend,
                params: Vec::new(),
                key: (0, 0),
                addr,
                user: params
                    .iter()
                    .find(|(k, _)| k == "user")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
                applied: Vec::new(),
                settled: None,
                notices: Vec::new(),
                statements: Default::default(),
                created: now,
                serial: SERIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                served: 0,
                idle_since: now,
                buf: BytesMut::with_capacity(4096),
            };
            let mut out = BytesMut::new();
            frontend::startup_message(
                params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &mut out,
            )?;
            conn.stream.send(&out).await?;
            conn.authenticate(creds).await?;
            // Then ParameterStatus*, BackendKeyData, ReadyForQuery.
            loop {
                let m = conn.read().await?;
                match m.tag {
                    b'S' => conn.record_param(&m.body),
                    b'K' => {
                        let Some((pid, rest)) = m.body.split_first_chunk::<4>() else {
                            return Err(ProtocolError::Malformed {
                                what: "BackendKeyData",
                            }
                            .into());
                        };
                        let Some(secret) = rest.first_chunk::<4>() else {
                            return Err(ProtocolError::Malformed {
                                what: "BackendKeyData",
                            }
                            .into());
                        };
                        conn.key = (i32::from_be_bytes(*pid), i32::from_be_bytes(*secret));
                    }
                    b'Z' => return Ok(conn),
                    b'N' => conn.note_notice("", &m),
                    b'E' => return Err(refused(&m)),
                    tag => return Err(ProtocolError::UnexpectedMessage { tag }.into()),
                }
            }
        };
        tokio::time::timeout(dial.timeout, login)
            .await
            .map_err(|_| ServerError::Timeout(dial.timeout))?
    }

    async fn authenticate(&mut self, creds: &ServerCredentials) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        let mut scram: Option<ScramClient> = None;
        loop {
            let m = self.read().await?;
            match m.tag {
                b'R' => {}
                b'E' => return Err(refused(&m)),
                b'N' => continue,
                tag => return Err(ProtocolError::UnexpectedMessage { tag }.into()),
            }
            let Some((code, data)) = m.body.split_first_chunk::<4>() else {
                return Err(ProtocolError::Malformed {
                    what: "Authentication",
                }
                .into());
            };
            out.clear();
            match u32::from_be_bytes(*code) {
                0 => return Ok(()),
                3 => match creds {
                    ServerCredentials::Password(p) => {
                        frontend::password_message(p.as_bytes(), &mut out)?
                    }
                    _ => return Err(ServerError::Auth(needs_plain("a cleartext password"))),
                },
                5 => {
                    let salt: [u8; 4] = data.try_into().map_err(|_| ProtocolError::Malformed {
                        what: "AuthenticationMD5Password",
                    })?;
                    let stored = match creds {
                        ServerCredentials::Password(p) => md5::secret(p, &self.user),
                        ServerCredentials::Md5(m) => m.clone(),
                        other => return Err(cannot_answer("md5", other)),
                    };
                    frontend::password_message(md5::response(&stored, salt).as_bytes(), &mut out)?;
                }
                10 => {
                    let offered = data
                        .split(|b| *b == 0)
                        .any(|m| m == scram::MECHANISM.as_bytes());
                    if !offered {
                        return Err(ServerError::Auth(
                            "the server offers no SASL mechanism the proxy knows".into(),
                        ));
                    }
                    let c = match creds {
                        ServerCredentials::Password(p) => Credentials::Password(p.clone()),
                        ServerCredentials::ScramKey(c) => c.clone(),
                        other => return Err(cannot_answer("SCRAM", other)),
                    };
                    let client = ScramClient::new(c);
                    frontend::sasl_initial_response(
                        scram::MECHANISM,
                        &client.client_first(),
                        &mut out,
                    )?;
                    scram = Some(client);
                }
                11 => {
                    let client = scram.as_mut().ok_or(ProtocolError::Malformed {
                        what: "SASLContinue",
                    })?;
                    frontend::sasl_response(&client.server_first(data)?, &mut out)?;
                }
                12 => {
                    let client = scram
                        .as_mut()
                        .ok_or(ProtocolError::Malformed { what: "SASLFinal" })?;
                    client.server_final(data)?;
                    continue;
                }
                other => {
                    return Err(ServerError::Auth(format!(
                        "the server asks for an authentication method the proxy does not support (code {other})"
                    )));
                }
            }
            self.stream.send(&out).await?;
        }
    }

    /// Reads the server's replies up to its ReadyForQuery, keeping the
    /// settings it reports (ParameterStatus); `each` sees every other
    /// message but an ErrorResponse. Gives the server's last error, if any.
    async fn until_ready(
        &mut self,
        mut each: impl FnMut(&mut Self, &Message),
    ) -> Result<Option<ServerError>, ServerError> {
        let mut failed = None;
        loop {
            let m = self.read().await?;
            match m.tag {
                b'S' => self.record_param(&m.body),
                b'E' => failed = Some(refused(&m)),
                b'Z' => return Ok(failed),
                _ => each(self, &m),
            }
        }
    }

    /// Reads one whole message (outside the data path).
    async fn read(&mut self) -> Result<Message, ServerError> {
        loop {
            if let Some(m) = frame::read_message(&mut self.buf, MAX_CONTROL_MESSAGE)? {
                return Ok(m);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Keeps a NoticeResponse the server sent while taking `setting`.
    fn note_notice(&mut self, setting: &str, m: &Message) {
        match self.notices.iter_mut().find(|(k, _)| k == setting) {
            Some((_, raw)) => raw.extend_from_slice(&m.to_bytes()),
            None => self.notices.push((setting.to_owned(), m.to_bytes())),
        }
    }

    /// What the server said while taking a client's settings (`wanted`,
    /// just applied), and what it said at startup when this is the
    /// connection's first client: the NoticeResponses to send the client
    /// before its ReadyForQuery, as a direct connection would.
    pub fn login_notices(&mut self, wanted: &[(String, String)], out: &mut BytesMut) {
        if let Some(i) = self.notices.iter().position(|(k, _)| k.is_empty()) {
            out.extend_from_slice(&self.notices.swap_remove(i).1);
        }
        for (name, value) in wanted {
            let applied = |(k, v): &(String, String)| k.eq_ignore_ascii_case(name) && v == value;
            if !self.applied.iter().any(applied) {
                continue;
            }
            if let Some((_, raw)) = self
                .notices
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                out.extend_from_slice(raw);
            }
        }
    }

    fn record_param(&mut self, body: &[u8]) {
        self.settled = None;
        apply_param(&mut self.params, body);
    }

    /// Makes the session clean for the next client: `ROLLBACK` first when a
    /// transaction was left open, then the reset query. The connection must
    /// be idle between queries (every ReadyForQuery received).
    pub async fn reset(
        &mut self,
        rollback: bool,
        query: &str,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        if !rollback && query.is_empty() {
            return Ok(());
        }
        // DISCARD ALL and the like take settings and statements back to the
        // server's defaults (forgetting statements is always safe).
        let previous = if query.is_empty() {
            Vec::new()
        } else {
            self.statements.clear();
            self.settled = None;
            std::mem::take(&mut self.applied)
        };
        tokio::time::timeout(timeout, self.reset_inner(rollback, query))
            .await
            .map_err(|_| ServerError::Timeout(timeout))??;
        // The next client most likely wants what the last one did (the
        // same application): give the settings back now, off its login's
        // path; one that wants others has them changed at login.
        self.apply_params(&previous, timeout).await.map(|_| ())
    }

    async fn reset_inner(&mut self, rollback: bool, query: &str) -> Result<(), ServerError> {
        // The unnamed statement is no longer a client's.
        self.served += 1;
        let mut out = BytesMut::new();
        let mut pending = 0;
        if rollback {
            frontend::query("ROLLBACK", &mut out)?;
            pending += 1;
        }
        if !query.is_empty() {
            frontend::query(query, &mut out)?;
            pending += 1;
        }
        self.exchange(&out, pending).await
    }

    /// Sends `out` and reads the replies up to its `pending`-th
    /// ReadyForQuery, keeping reported settings; the first error refuses
    /// the whole, and so does a session that does not end idle.
    async fn exchange(&mut self, out: &[u8], mut pending: u32) -> Result<(), ServerError> {
        self.stream.send(out).await?;
        let mut failed = None;
        while pending > 0 {
            let m = self.read().await?;
            match m.tag {
                b'S' => self.record_param(&m.body),
                b'E' => failed = failed.or(Some(refused(&m))),
                b'Z' => {
                    pending -= 1;
                    if pending == 0 && failed.is_none() && m.body.first() != Some(&b'I') {
                        return Err(ServerError::NotIdle);
                    }
                }
                // CommandComplete, NoticeResponse and anything else it may say.
                _ => {}
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Gives the session the client's settings (its replayed startup
    /// parameters), within `timeout`, in one round trip: one
    /// `set_config(name, value, false)` per setting, skipping those the
    /// server already reports with the wanted value or that were applied
    /// already; settings an earlier client had applied and this one does
    /// not want go back to their reset value first. Session-level, so the
    /// next reset (`DISCARD ALL`) takes them back to the server's defaults.
    /// An invalid setting is refused by the server, as it would refuse it
    /// at startup.
    /// True when it had anything to do.
    pub async fn apply_params(
        &mut self,
        wanted: &[(String, String)],
        timeout: Duration,
    ) -> Result<bool, ServerError> {
        let todo: Vec<(String, String)> = wanted
            .iter()
            .filter(|(name, value)| {
                let has = |(k, v): &(String, String)| k.eq_ignore_ascii_case(name) && v == value;
                !self.params.iter().any(has) && !self.applied.iter().any(has)
            })
            .cloned()
            .collect();
        let stale: Vec<String> = self
            .applied
            .iter()
            .filter(|(k, _)| !wanted.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)))
            .map(|(k, _)| k.clone())
            .collect();
        if todo.is_empty() && stale.is_empty() {
            return Ok(false);
        }
        tokio::time::timeout(timeout, self.apply_params_inner(&stale, &todo))
            .await
            .map_err(|_| ServerError::Timeout(timeout))??;
        self.applied
            .retain(|(k, _)| !stale.iter().any(|s| s.eq_ignore_ascii_case(k)));
        for (name, value) in todo {
            self.applied.retain(|(k, _)| !k.eq_ignore_ascii_case(&name));
            self.applied.push((name, value));
        }
        // Notices of settings no longer applied (reset, or changed by the
        // session since) are stale.
        let applied = &self.applied;
        self.notices.retain(|(k, _)| {
            k.is_empty() || applied.iter().any(|(a, _)| a.eq_ignore_ascii_case(k))
        });
        Ok(true)
    }

    async fn apply_params_inner(
        &mut self,
        stale: &[String],
        todo: &[(String, String)],
    ) -> Result<(), ServerError> {
        // The unnamed statement is no longer a client's.
        self.served += 1;
        let mut out = BytesMut::new();
        if !stale.is_empty() {
            frontend::parse(
                "",
                "SELECT pg_catalog.set_config(name, reset_val, false) \
                 FROM pg_catalog.pg_settings WHERE name = pg_catalog.lower($1)",
                std::iter::empty(),
                &mut out,
            )?;
            for name in stale {
                bind_text(&mut out, &[name.as_bytes()])?;
                frontend::execute("", 0, &mut out)?;
            }
        }
        if !todo.is_empty() {
            frontend::parse(
                "",
                "SELECT pg_catalog.set_config($1, $2, false)",
                std::iter::empty(),
                &mut out,
            )?;
            for (name, value) in todo {
                bind_text(&mut out, &[name.as_bytes(), value.as_bytes()])?;
                frontend::execute("", 0, &mut out)?;
            }
        }
        frontend::sync(&mut out);
        self.stream.send(&out).await?;
        // What the server says while running the k-th Execute (one
        // CommandComplete each) is about its setting: the stale ones
        // first, then `todo`'s.
        for (name, _) in todo {
            self.notices.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        }
        let mut done: usize = 0;
        let failed = self
            .until_ready(|conn, m| match m.tag {
                b'C' => done += 1,
                b'N' => {
                    if let Some((name, _)) = done.checked_sub(stale.len()).and_then(|i| todo.get(i))
                    {
                        conn.note_notice(name, m);
                    }
                }
                // ParseComplete, BindComplete, DataRow.
                _ => {}
            })
            .await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Gives a new session the state of one that was lost: runs each of
    /// `queries` (SQL text as a client sent it, one Query each), then sends
    /// the `parses` (whole Parse messages) and a Sync, within `timeout`.
    /// Any error refuses the whole; the session must end idle.
    pub async fn restore<'a>(
        &mut self,
        queries: impl Iterator<Item = &'a bytes::Bytes>,
        parses: impl Iterator<Item = &'a bytes::Bytes>,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        let mut pending = 0u32;
        for q in queries {
            out.put_u8(b'Q');
            out.put_u32(
                u32::try_from(q.len() + 5).map_err(|_| ProtocolError::Malformed {
                    what: "replayed query too long",
                })?,
            );
            out.extend_from_slice(q);
            out.put_u8(0);
            pending += 1;
        }
        let before = out.len();
        for p in parses {
            out.extend_from_slice(p);
        }
        if out.len() > before {
            frontend::sync(&mut out);
            pending += 1;
        }
        if pending == 0 {
            return Ok(());
        }
        tokio::time::timeout(timeout, self.restore_inner(out, pending))
            .await
            .map_err(|_| ServerError::Timeout(timeout))?
    }

    async fn restore_inner(&mut self, out: BytesMut, pending: u32) -> Result<(), ServerError> {
        self.served += 1;
        self.settled = None;
        self.exchange(&out, pending).await
    }

    /// The session's current value of setting `name`, within `timeout`,
    /// in one round trip (for settings the server does not report).
    pub async fn current_setting(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Result<String, ServerError> {
        tokio::time::timeout(timeout, self.current_setting_inner(name))
            .await
            .map_err(|_| ServerError::Timeout(timeout))?
    }

    async fn current_setting_inner(&mut self, name: &str) -> Result<String, ServerError> {
        self.value_inner("SELECT pg_catalog.current_setting($1)", &[name.as_bytes()])
            .await
    }

    /// The one text value `sql` (a query of one row and column) gives,
    /// between a client's transactions, within `timeout`.
    pub async fn value(&mut self, sql: &str, timeout: Duration) -> Result<String, ServerError> {
        tokio::time::timeout(timeout, self.value_inner(sql, &[]))
            .await
            .map_err(|_| ServerError::Timeout(timeout))?
    }

    async fn value_inner(&mut self, sql: &str, params: &[&[u8]]) -> Result<String, ServerError> {
        // The unnamed statement is no longer a client's.
        self.served += 1;
        let mut out = BytesMut::new();
        frontend::parse("", sql, std::iter::empty(), &mut out)?;
        bind_text(&mut out, params)?;
        frontend::execute("", 0, &mut out)?;
        frontend::sync(&mut out);
        self.stream.send(&out).await?;
        let mut value = None;
        let failed = self
            .until_ready(|_, m| {
                if m.tag == b'D' {
                    value = first_text_column(&m.body);
                }
            })
            .await?;
        match (failed, value) {
            (Some(e), _) => Err(e),
            (None, Some(v)) => Ok(v),
            (None, None) => Err(ServerError::NotIdle),
        }
    }

    /// Records a ParameterStatus the data path saw: the session changed a
    /// setting, so what [`ServerConn::apply_params`] set of it is stale.
    pub fn note_param(
        params: &mut Vec<(String, String)>,
        applied: &mut Vec<(String, String)>,
        body: &[u8],
    ) {
        apply_param(params, body);
        if let Some(name) = body.split(|b| *b == 0).next() {
            applied.retain(|(k, _)| !k.as_bytes().eq_ignore_ascii_case(name));
        }
    }

    /// True when a cached connection cannot be handed out: the server closed
    /// it, or sent something while idle (a FATAL from `pg_terminate_backend`,
    /// a shutdown notice). Costs one non-blocking read, no round trip.
    pub fn is_stale(&mut self) -> bool {
        self.stream.has_input()
    }

    /// Age since the connection was opened.
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        // Best effort, never blocks: a Terminate keeps the server's log free
        // of "unexpected EOF" lines when the proxy closes a connection.
        self.stream.try_write_last(b"X\0\0\0\x04");
    }
}

/// The first column of a DataRow, as text (`None` when NULL or malformed).
fn first_text_column(row: &[u8]) -> Option<String> {
    let len = i32::from_be_bytes(row.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    Some(String::from_utf8_lossy(row.get(6..6 + len)?).into_owned())
}

/// Appends a Bind of the unnamed statement with text parameters.
fn bind_text(out: &mut BytesMut, values: &[&[u8]]) -> std::io::Result<()> {
    frontend::bind(
        "",
        "",
        std::iter::empty(),
        values.iter().copied(),
        |v, buf| {
            buf.extend_from_slice(v);
            Ok(postgres_protocol::IsNull::No)
        },
        std::iter::empty(),
        out,
    )
    .map_err(|e| match e {
        frontend::BindError::Conversion(e) => std::io::Error::other(e.to_string()),
        frontend::BindError::Serialization(e) => e,
    })
}

/// Records a ParameterStatus body (`name\0value\0`) in `params`.
pub(crate) fn apply_param(params: &mut Vec<(String, String)>, body: &[u8]) {
    let mut parts = body.split(|b| *b == 0);
    let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
        return;
    };
    let name = String::from_utf8_lossy(name).into_owned();
    let value = String::from_utf8_lossy(value).into_owned();
    match params.iter_mut().find(|(k, _)| *k == name) {
        Some(slot) => slot.1 = value,
        None => params.push((name, value)),
    }
}

fn refused(m: &Message) -> ServerError {
    ServerError::Refused {
        fields: ServerMessageFields::parse(&m.body),
        raw: m.to_bytes(),
    }
}

/// Why `creds` cannot answer a server asking for `asked` (`md5`, `SCRAM`),
/// a method they are not for.
fn cannot_answer(asked: &str, creds: &ServerCredentials) -> ServerError {
    let held = match creds {
        ServerCredentials::Nothing => return ServerError::Auth(NOTHING.into()),
        ServerCredentials::ScramKey(_) => "a SCRAM verifier",
        ServerCredentials::Md5(_) => "an md5 secret",
        ServerCredentials::Password(_) => "a plain-text password",
    };
    ServerError::Auth(format!(
        "the server asks for {asked} but the auth file holds {held} for this user"
    ))
}

fn needs_plain(what: &str) -> String {
    format!("the server asks for {what}, which needs the plain-text password in the auth file")
}
