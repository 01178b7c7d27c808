//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both roles.
//!
//! [`ScramServer`] checks clients of the proxy; [`ScramClient`] logs the
//! proxy in to servers. Both are small state machines fed whole SASL
//! messages and returning the next one, with the nonce injectable so tests
//! can replay recorded exchanges. Over TLS the proxy also offers
//! `SCRAM-SHA-256-PLUS`, bound to its certificate (`tls-server-end-point`,
//! RFC 5929), as PostgreSQL does; see [`ChannelBinding`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ScramVerifier;

/// The mechanism every client is offered, and the one the proxy uses with
/// servers.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// The mechanism bound to the TLS channel, offered to TLS clients.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The one channel binding type offered (PostgreSQL's).
const BINDING_TYPE: &str = "tls-server-end-point";

/// Channel binding in one exchange: what the server offered, and what the
/// client chose.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    /// Not offered (a plain-text connection).
    #[default]
    NotOffered,
    /// Offered (`SCRAM-SHA-256-PLUS` was listed), and the client chose
    /// `SCRAM-SHA-256`: it must not claim the server cannot bind (`y`).
    Declined,
    /// The client chose `SCRAM-SHA-256-PLUS`: its proof must cover this
    /// `tls-server-end-point` data.
    Chosen(Vec<u8>),
}

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScramError {
    /// The peer's message does not follow the grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding the proxy did not offer.
    #[error("SCRAM channel binding negotiation error or check failed")]
    ChannelBinding,
    /// The nonce in a later message is not the one agreed.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof is wrong: wrong password (or unknown user).
    #[error("password authentication failed")]
    InvalidProof,
    /// The server's signature is wrong: it does not know the verifier.
    #[error("the server's SCRAM signature is invalid")]
    InvalidServerSignature,
    /// The server reported an error in its final message.
    #[error("the server refused SCRAM authentication: {0}")]
    ServerError(String),
    /// Logging in with a `ClientKey` needs the server's verifier to use the
    /// same salt and iteration count as the proxy's.
    #[error(
        "the server's SCRAM salt or iteration count differs from the auth file's verifier; \
         put the verifier from pg_authid (or the plain password) in the auth file"
    )]
    VerifierMismatch,
    /// A message arrived in the wrong state.
    #[error("SCRAM message out of order")]
    OutOfOrder,
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

fn random_nonce() -> String {
    let mut raw = [0u8; 18];
    rand::fill(&mut raw);
    B64.encode(raw)
}

/// The keys derived from a password for one salt and iteration count.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// HMAC(SaltedPassword, "Client Key"): what a client proves it knows.
    pub client_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key"): what a server proves it knows.
    pub server_key: [u8; 32],
}

impl Keys {
    /// Runs PBKDF2 over the SASLprep-normalised password, as PostgreSQL does
    /// (a password SASLprep rejects is used as raw bytes).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Keys {
        let normalized = stringprep::saslprep(password);
        let bytes = match &normalized {
            Ok(n) => n.as_bytes(),
            Err(_) => password.as_bytes(),
        };
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(bytes, salt, iterations, &mut salted);
        Keys {
            client_key: hmac(&salted, &[b"Client Key"]),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// H(ClientKey), the StoredKey of a verifier.
    pub fn stored_key(&self) -> [u8; 32] {
        sha256(&self.client_key)
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(***)")
    }
}

/// Splits `s` into `k=value` attributes at commas.
fn attributes(s: &str) -> impl Iterator<Item = (u8, &str)> {
    s.split(',').map(|a| {
        let b = a.as_bytes();
        match (b.first(), b.get(1)) {
            (Some(k), Some(b'=')) => (*k, a.get(2..).unwrap_or("")),
            _ => (0, a),
        }
    })
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

// === impl ScramServer ===

#[derive(Debug)]
enum ServerState {
    AwaitClientFirst,
    AwaitClientFinal {
        client_first_bare: String,
        server_first: String,
        gs2_header: String,
        nonce: String,
    },
    Done,
}

/// What a successful exchange yields.
#[derive(Debug)]
pub struct ServerSuccess {
    /// The server-final message (`v=...`) for AuthenticationSASLFinal.
    pub server_final: Vec<u8>,
    /// The client's ClientKey, recovered from its proof: lets the proxy log in
    /// to a server that holds the same verifier.
    pub client_key: [u8; 32],
}

/// Server side of SCRAM-SHA-256: verifies a client against a verifier.
#[derive(Debug)]
pub struct ScramServer {
    verifier: ScramVerifier,
    server_nonce: String,
    /// A mock exchange for an unknown user: looks real, always fails.
    mock: bool,
    binding: ChannelBinding,
    state: ServerState,
}

impl ScramServer {
    /// Starts an exchange against `verifier` with a random nonce.
    pub fn new(verifier: ScramVerifier) -> Self {
        Self::with_nonce(verifier, random_nonce())
    }

    /// Starts an exchange with a fixed server nonce (tests, recorded exchanges).
    pub fn with_nonce(verifier: ScramVerifier, server_nonce: String) -> Self {
        ScramServer {
            verifier,
            server_nonce,
            mock: false,
            binding: ChannelBinding::NotOffered,
            state: ServerState::AwaitClientFirst,
        }
    }

    /// An exchange for a user that does not exist. Like PostgreSQL, the proxy
    /// goes through the whole exchange with a salt derived from the user name
    /// and `mock_key` (stable per user, so retries cannot tell), then fails
    /// exactly as a wrong password does.
    pub fn mock(user: &str, mock_key: &[u8]) -> Self {
        let mut s = Self::new(Self::mock_verifier(user, mock_key));
        s.mock = true;
        s
    }

    /// The verifier of a user that does not exist (see [`ScramServer::mock`]):
    /// stable per user, matching no password anyone knows.
    pub fn mock_verifier(user: &str, mock_key: &[u8]) -> ScramVerifier {
        let salt = hmac(mock_key, &[b"salt", user.as_bytes()]);
        ScramVerifier {
            iterations: 4096,
            salt: salt.get(..16).unwrap_or(&salt).to_vec(),
            stored_key: hmac(mock_key, &[b"stored", user.as_bytes()]),
            server_key: hmac(mock_key, &[b"server", user.as_bytes()]),
        }
    }

    /// Sets what was offered and chosen of channel binding (before the
    /// client-first-message).
    pub fn with_channel_binding(mut self, binding: ChannelBinding) -> Self {
        self.binding = binding;
        self
    }

    /// Handles the client-first-message (the SASLInitialResponse data) and
    /// returns the server-first-message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::AwaitClientFirst) {
            return Err(ScramError::OutOfOrder);
        }
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        // RFC 5802 section 6, as PostgreSQL applies it.
        match (flag, &self.binding) {
            ("n", ChannelBinding::NotOffered | ChannelBinding::Declined) => {}
            // The client could bind but believes the server cannot: over
            // TLS, where the server offered it, that is a downgrade.
            ("y", ChannelBinding::NotOffered) => {}
            ("y", ChannelBinding::Declined) => return Err(ScramError::ChannelBinding),
            (f, ChannelBinding::Chosen(_)) if f.strip_prefix("p=") == Some(BINDING_TYPE) => {}
            (f, _) if f.starts_with("p=") || f == "n" || f == "y" => {
                return Err(ScramError::ChannelBinding);
            }
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity is not supported",
            ));
        }
        let mut attrs = attributes(bare);
        if !matches!(attrs.next(), Some((b'n', _))) {
            return Err(ScramError::Malformed("expected n= (user name)"));
        }
        let client_nonce = match attrs.next() {
            Some((b'r', n)) if valid_nonce(n) => n,
            _ => return Err(ScramError::Malformed("expected r= (nonce)")),
        };
        if attrs.any(|(k, _)| k == b'm') {
            return Err(ScramError::Malformed(
                "mandatory extensions are not supported",
            ));
        }
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = ServerState::AwaitClientFinal {
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            gs2_header: format!("{flag},,"),
            nonce,
        };
        Ok(server_first.into_bytes())
    }

    /// Handles the client-final-message; on success returns the
    /// server-final-message and the client's ClientKey.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<ServerSuccess, ScramError> {
        let ServerState::AwaitClientFinal {
            client_first_bare,
            server_first,
            gs2_header,
            nonce,
        } = std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = attributes(without_proof);
        let mut expected = gs2_header.into_bytes();
        if let ChannelBinding::Chosen(data) = &self.binding {
            expected.extend_from_slice(data);
        }
        match attrs.next() {
            Some((b'c', cb)) => {
                let same: bool = B64
                    .decode(cb)
                    .map(|c| c.ct_eq(&expected).into())
                    .unwrap_or(false);
                if !same {
                    return Err(ScramError::ChannelBinding);
                }
            }
            _ => return Err(ScramError::Malformed("expected c= (channel binding)")),
        }
        match attrs.next() {
            Some((b'r', n)) if n == nonce => {}
            Some((b'r', _)) => return Err(ScramError::NonceMismatch),
            _ => return Err(ScramError::Malformed("expected r= (nonce)")),
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof"))?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_key, &[auth_message.as_bytes()]);
        let client_key = xor(&proof, &client_signature);
        let ok: bool = sha256(&client_key).ct_eq(&self.verifier.stored_key).into();
        if !ok || self.mock {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac(&self.verifier.server_key, &[auth_message.as_bytes()]);
        Ok(ServerSuccess {
            server_final: format!("v={}", B64.encode(server_signature)).into_bytes(),
            client_key,
        })
    }
}

// === impl ScramClient ===

/// What the proxy logs in to a server with.
#[derive(Clone)]
pub enum Credentials {
    /// The password itself.
    Password(String),
    /// The ClientKey recovered from a client's proof, with the verifier it
    /// was checked against (whose salt and iterations the server must share).
    ClientKey {
        /// The recovered ClientKey.
        client_key: [u8; 32],
        /// The proxy's verifier for this user.
        verifier: ScramVerifier,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password(_) => f.write_str("Credentials::Password(***)"),
            Credentials::ClientKey { .. } => f.write_str("Credentials::ClientKey(***)"),
        }
    }
}

#[derive(Debug)]
enum ClientState {
    AwaitServerFirst,
    AwaitServerFinal { expected_signature: [u8; 32] },
    Done,
}

/// Client side of SCRAM-SHA-256: logs the proxy in to a server.
#[derive(Debug)]
pub struct ScramClient {
    credentials: Credentials,
    client_first_bare: String,
    nonce: String,
    state: ClientState,
}

impl ScramClient {
    /// Starts an exchange with a random nonce. PostgreSQL ignores the SCRAM
    /// user name (it uses the startup packet's), so it is sent empty, as libpq does.
    pub fn new(credentials: Credentials) -> Self {
        Self::with_nonce(credentials, "", random_nonce())
    }

    /// Starts an exchange with a fixed user name and nonce (tests).
    pub fn with_nonce(credentials: Credentials, user: &str, nonce: String) -> Self {
        let client_first_bare = format!("n={user},r={nonce}");
        ScramClient {
            credentials,
            client_first_bare,
            nonce,
            state: ClientState::AwaitServerFirst,
        }
    }

    /// The client-first-message, for the SASLInitialResponse.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Handles the server-first-message; returns the client-final-message.
    pub fn server_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ClientState::AwaitServerFirst) {
            return Err(ScramError::OutOfOrder);
        }
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut attrs = attributes(msg);
        let nonce = match attrs.next() {
            Some((b'r', n))
                if n.starts_with(&self.nonce) && n.len() > self.nonce.len() && valid_nonce(n) =>
            {
                n
            }
            Some((b'r', _)) => return Err(ScramError::NonceMismatch),
            _ => return Err(ScramError::Malformed("expected r= (nonce)")),
        };
        let salt = match attrs.next() {
            Some((b's', s)) => B64
                .decode(s)
                .map_err(|_| ScramError::Malformed("bad salt"))?,
            _ => return Err(ScramError::Malformed("expected s= (salt)")),
        };
        let iterations: u32 = match attrs.next() {
            Some((b'i', i)) => i
                .parse()
                .ok()
                .filter(|i| *i > 0)
                .ok_or(ScramError::Malformed("bad iterations"))?,
            _ => return Err(ScramError::Malformed("expected i= (iterations)")),
        };
        let (client_key, server_key) = match &self.credentials {
            Credentials::Password(p) => {
                let k = Keys::derive(p, &salt, iterations);
                (k.client_key, k.server_key)
            }
            Credentials::ClientKey {
                client_key,
                verifier,
            } => {
                if verifier.salt != salt || verifier.iterations != iterations {
                    return Err(ScramError::VerifierMismatch);
                }
                (*client_key, verifier.server_key)
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{msg},{without_proof}", self.client_first_bare);
        let client_signature = hmac(&sha256(&client_key), &[auth_message.as_bytes()]);
        let proof = xor(&client_key, &client_signature);
        self.state = ClientState::AwaitServerFinal {
            expected_signature: hmac(&server_key, &[auth_message.as_bytes()]),
        };
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: the server must prove it knows the verifier.
    pub fn server_final(&mut self, msg: &[u8]) -> Result<(), ScramError> {
        let ClientState::AwaitServerFinal { expected_signature } =
            std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        match attributes(msg).next() {
            Some((b'e', e)) => Err(ScramError::ServerError(e.to_owned())),
            Some((b'v', v)) => {
                let sig = B64
                    .decode(v)
                    .map_err(|_| ScramError::Malformed("bad server signature"))?;
                if bool::from(sig.ct_eq(&expected_signature)) {
                    Ok(())
                } else {
                    Err(ScramError::InvalidServerSignature)
                }
            }
            _ => Err(ScramError::Malformed("expected v= or e=")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_verifier() -> ScramVerifier {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramVerifier::from_password("pencil", &salt, 4096)
    }

    #[test]
    fn server_replays_rfc_7677() {
        let mut server = ScramServer::with_nonce(rfc_verifier(), SERVER_NONCE.into());
        assert_eq!(
            server.client_first(CLIENT_FIRST.as_bytes()).unwrap(),
            SERVER_FIRST.as_bytes()
        );
        let ok = server.client_final(CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(ok.server_final, SERVER_FINAL.as_bytes());
        assert_eq!(
            ok.client_key,
            Keys::derive("pencil", &rfc_verifier().salt, 4096).client_key
        );
    }

    /// A client with `creds` (RFC 7677's user's) sends RFC 7677's messages
    /// and accepts its server's.
    fn client_replays(creds: Credentials) {
        let mut client = ScramClient::with_nonce(creds, "user", CLIENT_NONCE.into());
        assert_eq!(client.client_first(), CLIENT_FIRST.as_bytes());
        assert_eq!(
            client.server_first(SERVER_FIRST.as_bytes()).unwrap(),
            CLIENT_FINAL.as_bytes()
        );
        client.server_final(SERVER_FINAL.as_bytes()).unwrap();
    }

    #[test]
    fn client_replays_rfc_7677() {
        client_replays(Credentials::Password("pencil".into()));
    }

    #[test]
    fn client_key_pass_through_replays_rfc_7677() {
        let client_key = Keys::derive("pencil", &rfc_verifier().salt, 4096).client_key;
        client_replays(Credentials::ClientKey {
            client_key,
            verifier: rfc_verifier(),
        });
    }

    #[test]
    fn client_key_needs_the_same_salt() {
        let creds = Credentials::ClientKey {
            client_key: [1; 32],
            verifier: ScramVerifier::generate("pencil"),
        };
        let mut client = ScramClient::with_nonce(creds, "user", CLIENT_NONCE.into());
        assert_eq!(
            client.server_first(SERVER_FIRST.as_bytes()),
            Err(ScramError::VerifierMismatch)
        );
    }

    #[test]
    fn wrong_password_is_rejected() {
        let mut server = ScramServer::new(rfc_verifier());
        let mut client = ScramClient::new(Credentials::Password("pencil2".into()));
        let sf = server.client_first(&client.client_first()).unwrap();
        let cf = client.server_first(&sf).unwrap();
        assert!(matches!(
            server.client_final(&cf),
            Err(ScramError::InvalidProof)
        ));
    }

    #[test]
    fn our_client_and_server_agree() {
        let v = ScramVerifier::generate("späß word");
        let mut server = ScramServer::new(v);
        let mut client = ScramClient::new(Credentials::Password("späß word".into()));
        let sf = server.client_first(&client.client_first()).unwrap();
        let cf = client.server_first(&sf).unwrap();
        let ok = server.client_final(&cf).unwrap();
        client.server_final(&ok.server_final).unwrap();
    }

    #[test]
    fn postgres_protocol_client_logs_in() {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut server = ScramServer::new(rfc_verifier());
        let mut client = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
        let sf = server.client_first(client.message()).unwrap();
        client.update(&sf).unwrap();
        let ok = server.client_final(client.message()).unwrap();
        client.finish(&ok.server_final).unwrap();
    }

    #[test]
    fn mock_exchange_looks_real_and_fails() {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut a = ScramServer::mock("ghost", b"key");
        let mut b = ScramServer::mock("ghost", b"key");
        let mut client = ScramSha256::new(b"anything", ChannelBinding::unsupported());
        let sf = a.client_first(client.message()).unwrap();
        let sf_b = b.client_first(client.message()).unwrap();
        let salt = |m: &[u8]| {
            String::from_utf8_lossy(m)
                .split(',')
                .nth(1)
                .map(str::to_owned)
        };
        assert_eq!(salt(&sf), salt(&sf_b), "same salt on every attempt");
        client.update(&sf).unwrap();
        assert!(matches!(
            a.client_final(client.message()),
            Err(ScramError::InvalidProof)
        ));
    }

    #[test]
    fn refuses_malformed_and_channel_binding() {
        let mut s = ScramServer::new(rfc_verifier());
        assert_eq!(
            s.client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        let mut s = ScramServer::new(rfc_verifier());
        assert!(s.client_first(b"n,a=admin,n=,r=abc").is_err());
        let mut s = ScramServer::new(rfc_verifier());
        assert!(s.client_first(b"garbage").is_err());
        let mut s = ScramServer::new(rfc_verifier());
        s.client_first(b"n,,n=,r=abc").unwrap();
        assert!(matches!(
            s.client_final(b"c=biws,r=abcX,p=AAAA"),
            Err(ScramError::NonceMismatch)
        ));
        let mut s = ScramServer::new(rfc_verifier());
        assert!(matches!(
            s.client_final(b"c=biws"),
            Err(ScramError::OutOfOrder)
        ));
    }

    /// A client's final message over a channel with `cbind` data: the
    /// proof computed as a libpq client computes it.
    fn client_final_bound(server_first: &str, gs2: &str, cbind: &[u8], bare: &str) -> String {
        let nonce = server_first
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .unwrap_or_default();
        let mut c = gs2.as_bytes().to_vec();
        c.extend_from_slice(cbind);
        let without_proof = format!("c={},r={nonce}", B64.encode(&c));
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let keys = Keys::derive("pencil", &salt, 4096);
        let client_key = keys.client_key;
        let stored = sha256(&client_key);
        let auth = format!("{bare},{server_first},{without_proof}");
        let proof = xor(&client_key, &hmac(&stored, &[auth.as_bytes()]));
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn plus_binds_the_proof_to_the_servers_certificate() {
        let cert_hash = b"0123456789abcdef0123456789abcdef".to_vec();
        let bare = "n=,r=abc";
        let first = format!("p=tls-server-end-point,,{bare}");
        let exchange = |client_binds: &[u8]| {
            let mut s = ScramServer::new(rfc_verifier())
                .with_channel_binding(ChannelBinding::Chosen(cert_hash.clone()));
            let server_first =
                String::from_utf8(s.client_first(first.as_bytes()).unwrap()).unwrap();
            let fin = client_final_bound(
                &server_first,
                "p=tls-server-end-point,,",
                client_binds,
                bare,
            );
            s.client_final(fin.as_bytes()).map(|_| ())
        };
        assert_eq!(exchange(&cert_hash), Ok(()));
        // A man in the middle terminates TLS with another certificate: the
        // client binds to that one, and the proof no longer passes.
        assert_eq!(
            exchange(b"another certificate's hash......"),
            Err(ScramError::ChannelBinding)
        );
    }

    #[test]
    fn binding_negotiation_refuses_downgrades_and_unknown_types() {
        let hash = ChannelBinding::Chosen(vec![1; 32]);
        let first = |binding: ChannelBinding, msg: &str| {
            ScramServer::new(rfc_verifier())
                .with_channel_binding(binding)
                .client_first(msg.as_bytes())
                .map(|_| ())
        };
        // Over TLS the server offered -PLUS: a client saying "y" (I could
        // bind, you cannot) is a downgrade.
        assert_eq!(
            first(ChannelBinding::Declined, "y,,n=,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        assert_eq!(first(ChannelBinding::NotOffered, "y,,n=,r=abc"), Ok(()));
        assert_eq!(first(ChannelBinding::Declined, "n,,n=,r=abc"), Ok(()));
        // -PLUS chosen but no binding asked for, or another type.
        assert_eq!(
            first(hash.clone(), "n,,n=,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        assert_eq!(
            first(hash, "p=tls-unique,,n=,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        // Binding asked for where none was offered.
        assert_eq!(
            first(
                ChannelBinding::NotOffered,
                "p=tls-server-end-point,,n=,r=abc"
            ),
            Err(ScramError::ChannelBinding)
        );
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
                                b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            // One PBKDF2 round keeps 256 cases fast; the grammar is what is under test.
            let mut s = ScramServer::new(ScramVerifier::from_password("x", b"salt", 1));
            let _ = s.client_first(&a);
            let _ = s.client_final(&b);
            let mut c = ScramClient::new(Credentials::Password("x".into()));
            let _ = c.server_first(&a);
            let _ = c.server_final(&b);
        }
    }
}
