//! Client authentication against the auth file.
//!
//! The method follows the secret (see `pgwarden_wire::auth`): SCRAM for
//! SCRAM verifiers, md5 for md5 secrets, and `proxy.auth_type` for plain
//! text. An unknown user goes through a mock exchange and fails exactly as a
//! wrong password does, so the proxy never tells which users exist.

use std::collections::HashMap;

use crate::net::Stream;
use bytes::BytesMut;
use pgwarden_wire::auth::auth_file::AuthFile;
use pgwarden_wire::auth::md5;
use pgwarden_wire::auth::scram::{self, ChannelBinding, Credentials, ScramError, ScramServer};
use pgwarden_wire::auth::{ScramVerifier, Secret};
use pgwarden_wire::frame::{self, Message};
use pgwarden_wire::{ErrorResponse, ProtocolError, backend, sqlstate};
use tokio::io::AsyncReadExt;

use crate::backend::ServerCredentials;
use crate::frontend::hba::Method;
use crate::settings::PlainAuth;
use subtle::ConstantTimeEq;

/// PostgreSQL's `PG_MAX_AUTH_TOKEN_LENGTH`.
const MAX_AUTH_MESSAGE: u32 = 65_535;

/// A user of the auth file, ready to authenticate.
#[derive(Debug, Clone)]
struct User {
    secret: Secret,
    /// For plain-text secrets checked with SCRAM: a verifier made once at load.
    verifier: Option<ScramVerifier>,
}

/// The auth file, prepared.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: HashMap<String, User>,
}

impl Users {
    /// Prepares the parsed auth file: plain-text secrets get a SCRAM verifier
    /// with a random salt, so SCRAM needs no PBKDF2 per login.
    pub fn new(file: &AuthFile, plain: PlainAuth) -> Users {
        let users = file
            .iter()
            .map(|(name, secret)| {
                let verifier = match (secret, plain) {
                    (Secret::Plain(p), PlainAuth::Scram) => Some(ScramVerifier::generate(p)),
                    _ => None,
                };
                (
                    name.to_owned(),
                    User {
                        secret: secret.clone(),
                        verifier,
                    },
                )
            })
            .collect();
        Users { users }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file lists nobody.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Why a client was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong password or unknown user (28P01).
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    /// The exchange was malformed (08P01).
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// A SCRAM message was malformed (08P01).
    #[error("{0}")]
    Scram(ScramError),
    /// The client left during authentication (psql does, to prompt for a password).
    #[error("client closed the connection during authentication")]
    Gone,
    /// The hba file says `cert`, and the client sent no certificate the
    /// proxy's CA signed (28000).
    #[error("connection requires a valid client certificate")]
    NoCertificate,
    /// Its certificate names someone else (28000).
    #[error("certificate authentication failed for user \"{0}\"")]
    Certificate(String),
}

impl AuthError {
    /// The message to send the client, if any.
    pub fn to_error_response(&self) -> Option<ErrorResponse> {
        match self {
            AuthError::Failed(_) => Some(ErrorResponse::fatal(
                sqlstate::INVALID_PASSWORD,
                self.to_string(),
            )),
            AuthError::Protocol(e) => Some(e.to_error_response()),
            AuthError::Scram(e) => Some(ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                e.to_string(),
            )),
            AuthError::NoCertificate | AuthError::Certificate(_) => Some(ErrorResponse::fatal(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                self.to_string(),
            )),
            AuthError::Gone => None,
        }
    }
}

/// How a client is to authenticate.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// How plain-text secrets are checked without an hba file.
    pub plain: PlainAuth,
    /// Key for the mock SCRAM salts of unknown users.
    pub mock_key: &'a [u8],
    /// The TLS channel's `tls-server-end-point` data, which a SCRAM client
    /// may bind its proof to (SCRAM-SHA-256-PLUS).
    pub binding: Option<&'a [u8]>,
    /// The method the hba file chose; `None` without an hba file (the
    /// secret's kind decides).
    pub method: Option<Method>,
    /// The common name of the client's TLS certificate, when it sent one
    /// the proxy's CA signed.
    pub certificate: Option<&'a str>,
}

/// Authenticates `user` on `stream` and returns how to log in to servers as
/// that user. `buf` holds client bytes read but not yet consumed; `after`
/// gets what the client is to be sent with AuthenticationOk (SCRAM's final
/// message).
pub async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    after: &mut BytesMut,
    user: &str,
    users: &Users,
    policy: &Policy<'_>,
) -> Result<ServerCredentials, AuthError> {
    let (plain, mock_key, binding) = (policy.plain, policy.mock_key, policy.binding);
    let found = users.users.get(user);
    if let Some(method) = policy.method {
        return by_method(stream, buf, after, user, found, method, policy).await;
    }
    let failed = || AuthError::Failed(user.to_owned());
    match found.map(|u| (&u.secret, u.verifier.as_ref())) {
        Some((Secret::Scram(v), _)) => scram_secret(stream, buf, after, v, user, binding).await,
        Some((Secret::Plain(p), Some(v))) => {
            scram_exchange(
                stream,
                buf,
                after,
                ScramServer::new(v.clone()),
                user,
                binding,
            )
            .await?;
            Ok(ServerCredentials::Password(p.clone()))
        }
        Some((Secret::Plain(p), None)) => {
            md5_exchange(stream, buf, &md5::secret(p, user), user).await?;
            Ok(ServerCredentials::Password(p.clone()))
        }
        Some((Secret::Md5(m), _)) => {
            md5_exchange(stream, buf, m, user).await?;
            Ok(ServerCredentials::Md5(m.clone()))
        }
        None => {
            match plain {
                PlainAuth::Scram => {
                    scram_exchange(
                        stream,
                        buf,
                        after,
                        ScramServer::mock(user, mock_key),
                        user,
                        binding,
                    )
                    .await?;
                }
                PlainAuth::Md5 => {
                    // A secret nobody knows: the exchange runs, then fails.
                    let mut random = [0u8; 16];
                    rand::fill(&mut random);
                    md5_exchange(
                        stream,
                        buf,
                        &md5::secret(&format!("{random:?}"), user),
                        user,
                    )
                    .await?;
                }
            }
            Err(failed())
        }
    }
}

/// What the proxy can log in to servers with when the client proved
/// nothing the proxy can pass on (trust, cert).
fn unproven(found: Option<&User>) -> ServerCredentials {
    match found.map(|u| &u.secret) {
        Some(Secret::Plain(p)) => ServerCredentials::Password(p.clone()),
        Some(Secret::Md5(m)) => ServerCredentials::Md5(m.clone()),
        Some(Secret::Scram(_)) | None => ServerCredentials::Nothing,
    }
}

/// Authentication as an hba line's method says, with PostgreSQL's
/// meanings: `md5` does SCRAM for a SCRAM secret; `scram-sha-256` fails
/// for an md5 one (after a full mock exchange, telling nothing).
async fn by_method(
    stream: &mut Stream,
    buf: &mut BytesMut,
    after: &mut BytesMut,
    user: &str,
    found: Option<&User>,
    method: Method,
    policy: &Policy<'_>,
) -> Result<ServerCredentials, AuthError> {
    let failed = || AuthError::Failed(user.to_owned());
    let mock = || ScramServer::mock(user, policy.mock_key);
    let binding = policy.binding;
    match method {
        Method::Trust => Ok(unproven(found)),
        Method::Reject => Err(failed()),
        Method::Cert => match policy.certificate {
            Some(name) if name == user => Ok(unproven(found)),
            Some(_) => Err(AuthError::Certificate(user.to_owned())),
            None => Err(AuthError::NoCertificate),
        },
        Method::Password => {
            let mut out = BytesMut::new();
            backend::authentication_cleartext(&mut out);
            send(stream, &out).await?;
            let m = read_password_message(stream, buf).await?;
            let given = frame::parse_password(&m.body)?.to_owned();
            // A SCRAM verifier costs a PBKDF2 to check (on the blocking
            // pool, never the threads serving clients); an unknown user
            // costs the same, so the answer's timing tells nothing.
            let against = match found.map(|u| &u.secret) {
                Some(Secret::Scram(v)) => Some(v.clone()),
                None => Some(ScramServer::mock_verifier(user, policy.mock_key)),
                _ => None,
            };
            let ok = match (found.map(|u| &u.secret), against) {
                (Some(Secret::Plain(p)), _) => bool::from(p.as_bytes().ct_eq(given.as_bytes())),
                (Some(Secret::Md5(m)), _) => {
                    bool::from(md5::secret(&given, user).as_bytes().ct_eq(m.as_bytes()))
                }
                (found, Some(v)) => {
                    let pw = given.clone();
                    let derived = tokio::task::spawn_blocking(move || {
                        ScramVerifier::from_password(&pw, &v.salt, v.iterations).stored_key
                            == v.stored_key
                    })
                    .await
                    .unwrap_or(false);
                    derived && found.is_some()
                }
                (_, None) => false,
            };
            if ok {
                Ok(ServerCredentials::Password(given))
            } else {
                Err(failed())
            }
        }
        Method::Md5 | Method::ScramSha256 => {
            match found.map(|u| (&u.secret, u.verifier.as_ref())) {
                Some((Secret::Scram(v), _)) => {
                    scram_secret(stream, buf, after, v, user, binding).await
                }
                Some((Secret::Plain(p), _)) if method == Method::Md5 => {
                    md5_exchange(stream, buf, &md5::secret(p, user), user).await?;
                    Ok(ServerCredentials::Password(p.clone()))
                }
                Some((Secret::Plain(p), verifier)) => {
                    // Made at load unless auth_type = "md5": then once
                    // here, on the blocking pool.
                    let v = match verifier {
                        Some(v) => v.clone(),
                        None => {
                            let p = p.clone();
                            tokio::task::spawn_blocking(move || ScramVerifier::generate(&p))
                                .await
                                .map_err(|_| AuthError::Failed(user.to_owned()))?
                        }
                    };
                    scram_exchange(stream, buf, after, ScramServer::new(v), user, binding).await?;
                    Ok(ServerCredentials::Password(p.clone()))
                }
                Some((Secret::Md5(m), _)) if method == Method::Md5 => {
                    md5_exchange(stream, buf, m, user).await?;
                    Ok(ServerCredentials::Md5(m.clone()))
                }
                // An md5 secret cannot check SCRAM, and nobody is unknown
                // in a way a client can tell.
                Some((Secret::Md5(_), _)) | None => {
                    scram_exchange(stream, buf, after, mock(), user, binding).await?;
                    Err(failed())
                }
            }
        }
    }
}

/// A SCRAM exchange against the user's stored SCRAM secret `v`; the
/// client key its proof gives then logs in to servers.
async fn scram_secret(
    stream: &mut Stream,
    buf: &mut BytesMut,
    after: &mut BytesMut,
    v: &ScramVerifier,
    user: &str,
    binding: Option<&[u8]>,
) -> Result<ServerCredentials, AuthError> {
    let server = ScramServer::new(v.clone());
    let client_key = scram_exchange(stream, buf, after, server, user, binding).await?;
    Ok(ServerCredentials::ScramKey(Credentials::ClientKey {
        client_key,
        verifier: v.clone(),
    }))
}

async fn scram_exchange(
    stream: &mut Stream,
    buf: &mut BytesMut,
    after: &mut BytesMut,
    server: ScramServer,
    user: &str,
    binding: Option<&[u8]>,
) -> Result<[u8; 32], AuthError> {
    let mut out = BytesMut::new();
    // PostgreSQL's order: the bound mechanism first, where there is one.
    let offered: &[&str] = match binding {
        Some(_) => &[scram::MECHANISM_PLUS, scram::MECHANISM],
        None => &[scram::MECHANISM],
    };
    backend::authentication_sasl(&mut out, offered);
    send(stream, &out).await?;

    let m = read_password_message(stream, buf).await?;
    let initial = frame::parse_sasl_initial_response(&m.body)?;
    let chosen = match (initial.mechanism, binding) {
        (m, Some(data)) if m == scram::MECHANISM_PLUS => ChannelBinding::Chosen(data.to_vec()),
        (m, Some(_)) if m == scram::MECHANISM => ChannelBinding::Declined,
        (m, None) if m == scram::MECHANISM => ChannelBinding::NotOffered,
        _ => {
            return Err(AuthError::Scram(ScramError::Malformed(
                "client selected an invalid SASL authentication mechanism",
            )));
        }
    };
    let mut server = server.with_channel_binding(chosen);
    let data = initial.data.ok_or(AuthError::Scram(ScramError::Malformed(
        "missing client-first-message",
    )))?;
    let server_first = server.client_first(data).map_err(AuthError::Scram)?;
    out.clear();
    backend::authentication_sasl_continue(&mut out, &server_first);
    send(stream, &out).await?;

    let m = read_password_message(stream, buf).await?;
    match server.client_final(&m.body) {
        Ok(ok) => {
            // Sent with AuthenticationOk and the welcome, not alone: as
            // PostgreSQL does, one write less per login.
            backend::authentication_sasl_final(after, &ok.server_final);
            Ok(ok.client_key)
        }
        Err(ScramError::InvalidProof) => Err(AuthError::Failed(user.to_owned())),
        Err(e) => Err(AuthError::Scram(e)),
    }
}

async fn md5_exchange(
    stream: &mut Stream,
    buf: &mut BytesMut,
    stored: &str,
    user: &str,
) -> Result<(), AuthError> {
    let mut salt = [0u8; 4];
    rand::fill(&mut salt);
    let mut out = BytesMut::new();
    backend::authentication_md5(&mut out, salt);
    send(stream, &out).await?;
    let m = read_password_message(stream, buf).await?;
    let answer = frame::parse_password(&m.body)?;
    if md5::verify(stored, salt, answer) {
        Ok(())
    } else {
        Err(AuthError::Failed(user.to_owned()))
    }
}

async fn send(stream: &mut Stream, bytes: &[u8]) -> Result<(), AuthError> {
    stream.send(bytes).await.map_err(|_| AuthError::Gone)
}

/// Reads the next client message, which must be a PasswordMessage (`p`).
async fn read_password_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Message, AuthError> {
    let m = read_message(stream, buf, MAX_AUTH_MESSAGE).await?;
    match m.tag {
        b'p' => Ok(m),
        b'X' => Err(AuthError::Gone),
        tag => Err(ProtocolError::UnexpectedMessage { tag }.into()),
    }
}

/// Reads one whole client message of at most `max` bytes.
pub async fn read_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: u32,
) -> Result<Message, AuthError> {
    loop {
        if let Some(m) = frame::read_message(buf, max)? {
            return Ok(m);
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(AuthError::Gone),
            Ok(_) => {}
        }
    }
}
