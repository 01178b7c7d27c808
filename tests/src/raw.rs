//! Speaking the PostgreSQL protocol by hand to the proxy: startup and
//! query packets, raw logins, reading and splitting what comes back.

use super::*;

/// Writes raw bytes to the proxy and returns everything it answers until it
/// closes (or 5 s pass).
pub fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// Splits a server byte stream into (type, body) messages; stops at a
/// truncated one.
pub fn messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if len < 4 || bytes.len() < 1 + len {
            break;
        }
        out.push((bytes[0], bytes[5..1 + len].to_vec()));
        bytes = &bytes[1 + len..];
    }
    out
}

/// The SQLSTATE (`C` field) of the first ErrorResponse among `bytes`' messages.
pub fn error_code(bytes: &[u8]) -> Option<String> {
    let (_, body) = messages(bytes).into_iter().find(|(t, _)| *t == b'E')?;
    let code = body.split(|b| *b == 0).find(|f| f.first() == Some(&b'C'))?;
    Some(String::from_utf8_lossy(&code[1..]).into_owned())
}

/// Reads `s` until the proxy closes it (or its read timeout passes), and
/// asserts the first ErrorResponse it sent has SQLSTATE `code`.
pub fn assert_ended_with(s: &mut impl std::io::Read, code: &str) {
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert_eq!(
        error_code(&answer).as_deref(),
        Some(code),
        "{:?}",
        messages(&answer)
    );
}

/// A StartupMessage for `user` and `database`.
pub fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    startup_packet_with(user, database, &[])
}

/// A StartupMessage for `user` and `database` with other parameters
/// (`replication`, `application_name`...).
pub fn startup_packet_with(user: &str, database: &str, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in [("user", user), ("database", database)]
        .into_iter()
        .chain(params.iter().copied())
    {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

/// Number of server sessions of `user` the primary sees.
pub fn server_sessions(cluster: &Cluster, user: &str) -> usize {
    cluster
        .primary()
        .psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}' AND backend_type = 'client backend'"))
        .unwrap()
        .parse()
        .unwrap()
}

/// Logs in over a raw socket as bob (md5) and returns the stream, ready for queries.
pub fn raw_login(port: u16) -> std::net::TcpStream {
    raw_login_with_key(port).0
}

/// [`raw_login`], with the BackendKeyData (pid, secret) the client was given.
pub fn raw_login_with_key(port: u16) -> (std::net::TcpStream, (i32, i32)) {
    let (s, msgs) = raw_login_with(port, &[]);
    let (_, key) = msgs
        .into_iter()
        .find(|(t, _)| *t == b'K')
        .expect("BackendKeyData");
    let pid = i32::from_be_bytes(key[0..4].try_into().unwrap());
    let secret = i32::from_be_bytes(key[4..8].try_into().unwrap());
    (s, (pid, secret))
}

/// [`raw_login`] with other startup parameters (`replication`...); returns
/// the stream and what the login got after authentication, up to its
/// ReadyForQuery.
pub fn raw_login_with(
    port: u16,
    params: &[(&str, &str)],
) -> (std::net::TcpStream, Vec<(u8, Vec<u8>)>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut s, &startup_packet_with(BOB.0, "app", params)).unwrap();
    let mut buf = vec![0u8; 13];
    std::io::Read::read_exact(&mut s, &mut buf).unwrap();
    assert_eq!(buf[0], b'R');
    assert_eq!(&buf[5..9], &5u32.to_be_bytes(), "md5 challenge");
    let salt: [u8; 4] = buf[9..13].try_into().unwrap();
    let mut inner = md5_hex(format!("{}{}", BOB.1, BOB.0).as_bytes()).into_bytes();
    inner.extend_from_slice(&salt);
    let answer = format!("md5{}", md5_hex(&inner));
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((answer.len() + 5) as u32).to_be_bytes());
    msg.extend_from_slice(answer.as_bytes());
    msg.push(0);
    std::io::Write::write_all(&mut s, &msg).unwrap();
    // Read until ReadyForQuery.
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !messages(&got).iter().any(|(t, _)| *t == b'Z') {
        let n = std::io::Read::read(&mut s, &mut chunk).unwrap();
        assert!(n > 0, "closed during login: {:?}", messages(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    (s, messages(&got))
}

/// A simple-protocol Query message.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

/// A CancelRequest packet for BackendKeyData `key`.
pub fn cancel_packet(key: (i32, i32)) -> Vec<u8> {
    let mut p = 16u32.to_be_bytes().to_vec();
    p.extend_from_slice(&80_877_102u32.to_be_bytes());
    p.extend_from_slice(&key.0.to_be_bytes());
    p.extend_from_slice(&key.1.to_be_bytes());
    p
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads from a raw session until ReadyForQuery; returns the messages.
pub fn read_until_ready(s: &mut std::net::TcpStream) -> Vec<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !messages(&got).iter().any(|(t, _)| *t == b'Z') {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {:?}", messages(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    messages(&got)
}

/// The SQLSTATE of the first ErrorResponse among `msgs`.
pub fn first_sqlstate(msgs: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'E')?;
    let code = body.split(|b| *b == 0).find(|f| f.first() == Some(&b'C'))?;
    Some(String::from_utf8_lossy(&code[1..]).into_owned())
}

/// The first column of the first DataRow among `msgs`, as text.
pub fn first_value(msgs: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, row) = msgs.iter().find(|(t, _)| *t == b'D')?;
    let len = i32::from_be_bytes(row.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    Some(String::from_utf8_lossy(row.get(6..6 + len)?).into_owned())
}
