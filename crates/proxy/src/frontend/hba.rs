//! Host-based authentication for clients (`proxy.hba_file`), in
//! pg_hba.conf's syntax (pgpool-II's pool_hba.conf): which clients may log
//! in, and how they prove who they are.
//!
//! ```text
//! # TYPE     DATABASE   USER        ADDRESS        METHOD
//! hostssl    app        alice,bob   10.0.0.0/8     scram-sha-256
//! host       all        all         127.0.0.1/32   md5
//! host       all        all         all            reject
//! ```
//!
//! `host` matches any TCP client, `hostssl` TLS clients only, `hostnossl`
//! plain-text ones; `local` lines are accepted and never match (the proxy
//! listens on TCP only). Databases and users are comma lists of names
//! (double quotes keep a keyword a name), `all`, `sameuser` (the database
//! named like the user) and `replication` (physical replication
//! connections, which `all` does not match, as in PostgreSQL). Addresses
//! are CIDR (`10.0.0.0/8`), an address and a mask in two columns, or
//! `all`. The first line that matches decides; no line matching means the
//! client is refused. Group membership (`+role`), included files (`@file`),
//! host names and options are refused when the file is read, with the line
//! number: a rule the proxy cannot honour is never skipped silently.

use std::net::IpAddr;

/// How a matching client authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Let in without a password.
    Trust,
    /// Refuse.
    Reject,
    /// md5, or SCRAM when the auth file holds a SCRAM verifier (as
    /// PostgreSQL does).
    Md5,
    /// SCRAM-SHA-256 only.
    ScramSha256,
    /// The password in clear text (over TLS, one hopes).
    Password,
    /// A TLS client certificate, signed by `proxy.client_tls_ca_file`,
    /// whose common name is the user name.
    Cert,
}

impl Method {
    fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "trust" => Method::Trust,
            "reject" => Method::Reject,
            "md5" => Method::Md5,
            "scram-sha-256" => Method::ScramSha256,
            "password" => Method::Password,
            "cert" => Method::Cert,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Database {
    All,
    SameUser,
    Replication,
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum User {
    All,
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Address {
    All,
    Net { ip: IpAddr, prefix: u8 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    line: usize,
    kind: Kind,
    databases: Vec<Database>,
    users: Vec<User>,
    address: Option<Address>,
    method: Method,
}

/// A parsed hba file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hba {
    rules: Vec<Rule>,
}

/// A line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct HbaError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub why: String,
}

/// Who is logging in.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// Its address.
    pub addr: IpAddr,
    /// It speaks TLS.
    pub tls: bool,
    /// The user it names.
    pub user: &'a str,
    /// The database it names.
    pub database: &'a str,
    /// A physical replication connection (`replication=true`).
    pub replication: bool,
}

/// The rule that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Its line number.
    pub line: usize,
    /// Its method.
    pub method: Method,
}

/// One field: its comma-separated items, each with whether it was quoted.
type Field = Vec<(String, bool)>;

/// Splits a line into fields (whitespace between them, commas inside,
/// double quotes around items that hold either or are keywords).
fn fields(line: &str) -> Result<Vec<Field>, String> {
    let mut out: Vec<Field> = Vec::new();
    let mut field: Field = Vec::new();
    let mut item = String::new();
    let mut quoted = false;
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    let end_item = |field: &mut Field, item: &mut String, quoted: &mut bool| {
        field.push((std::mem::take(item), *quoted));
        *quoted = false;
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    item.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                item.push(c);
            }
            continue;
        }
        match c {
            '#' => break,
            '"' => {
                in_quotes = true;
                quoted = true;
            }
            ',' => {
                end_item(&mut field, &mut item, &mut quoted);
                // A list may go on after spaces: `alice, bob`.
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            }
            c if c.is_whitespace() => {
                if !item.is_empty() || quoted {
                    end_item(&mut field, &mut item, &mut quoted);
                }
                if !field.is_empty() {
                    out.push(std::mem::take(&mut field));
                }
            }
            c => item.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quoted string".to_owned());
    }
    if !item.is_empty() || quoted {
        end_item(&mut field, &mut item, &mut quoted);
    }
    if !field.is_empty() {
        out.push(field);
    }
    Ok(out)
}

fn single<'a>(f: &'a Field, what: &str) -> Result<&'a str, String> {
    match f.as_slice() {
        [(s, _)] => Ok(s),
        _ => Err(format!("{what} must be a single value")),
    }
}

fn parse_databases(f: &Field) -> Result<Vec<Database>, String> {
    parse_names(
        f,
        "database",
        |s| match s {
            "all" => Some(Ok(Database::All)),
            "sameuser" => Some(Ok(Database::SameUser)),
            "replication" => Some(Ok(Database::Replication)),
            "samerole" | "samegroup" => {
                Some(Err(format!("\"{s}\" (role membership) is not supported")))
            }
            _ => None,
        },
        Database::Name,
    )
}

fn parse_users(f: &Field) -> Result<Vec<User>, String> {
    parse_names(
        f,
        "user",
        |s| match s {
            "all" => Some(Ok(User::All)),
            s if s.starts_with('+') => Some(Err(format!(
                "group membership (\"{s}\") is not supported: list the users"
            ))),
            _ => None,
        },
        User::Name,
    )
}

/// The items of a database or user field (`what` says which): an unquoted
/// keyword is what `keyword` makes of it (`None`: no keyword), anything
/// else a name (`name`); empty names and included files are refused.
fn parse_names<T>(
    f: &Field,
    what: &str,
    keyword: impl Fn(&str) -> Option<Result<T, String>>,
    name: impl Fn(String) -> T,
) -> Result<Vec<T>, String> {
    f.iter()
        .map(|(s, quoted)| {
            if s.is_empty() {
                return Err(format!("an empty {what} name"));
            }
            if !quoted {
                if let Some(k) = keyword(s) {
                    return k;
                }
                if s.starts_with('@') {
                    return Err(format!("included files (\"{s}\") are not supported"));
                }
            }
            Ok(name(s.clone()))
        })
        .collect()
}

/// A CIDR address, or an address whose mask is the next field.
fn parse_address(addr: &str, mask: Option<&str>) -> Result<(Address, bool), String> {
    if addr == "all" {
        return Ok((Address::All, false));
    }
    if matches!(addr, "samehost" | "samenet") {
        return Err(format!("\"{addr}\" is not supported: give the network"));
    }
    let (ip, prefix, used_mask) = match addr.split_once('/') {
        Some((ip, bits)) => {
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("invalid IP address \"{ip}\""))?;
            let bits: u8 = bits
                .parse()
                .map_err(|_| format!("invalid CIDR mask in \"{addr}\""))?;
            (ip, bits, false)
        }
        None => {
            let ip: IpAddr = addr.parse().map_err(|_| {
                format!("invalid IP address \"{addr}\" (host names are not supported)")
            })?;
            let Some(mask) = mask else {
                return Err(format!("\"{addr}\" needs a CIDR mask or a mask column"));
            };
            let mask: IpAddr = mask
                .parse()
                .map_err(|_| format!("invalid IP mask \"{mask}\""))?;
            if mask.is_ipv4() != ip.is_ipv4() {
                return Err(format!(
                    "IP address and mask do not match (\"{addr}\", \"{mask}\")"
                ));
            }
            (ip, mask_bits(mask)?, true)
        }
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("invalid CIDR mask in \"{addr}\""));
    }
    // An IPv4-mapped network matches IPv4 clients (whose addresses are
    // compared in IPv4 form), as in PostgreSQL.
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
        && prefix >= 96
    {
        return Ok((
            Address::Net {
                ip: IpAddr::V4(v4),
                prefix: prefix - 96,
            },
            used_mask,
        ));
    }
    Ok((Address::Net { ip, prefix }, used_mask))
}

fn mask_bits(mask: IpAddr) -> Result<u8, String> {
    let bits = match mask {
        IpAddr::V4(m) => u128::from(u32::from(m)) << 96,
        IpAddr::V6(m) => u128::from(m),
    };
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return Err(format!("invalid IP mask \"{mask}\""));
    }
    u8::try_from(ones.min(if mask.is_ipv4() { 32 } else { 128 }))
        .map_err(|_| format!("invalid IP mask \"{mask}\""))
}

fn in_net(addr: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let addr = addr.to_canonical();
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Hba {
    /// Reads a file's text.
    pub fn parse(text: &str) -> Result<Hba, HbaError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |why: String| HbaError { line, why };
            let f = fields(raw).map_err(err)?;
            let Some(first) = f.first() else { continue };
            let kind = match single(first, "the connection type").map_err(err)? {
                "local" => Kind::Local,
                "host" => Kind::Host,
                "hostssl" => Kind::HostSsl,
                "hostnossl" => Kind::HostNoSsl,
                k @ ("hostgssenc" | "hostnogssenc") => {
                    return Err(err(format!("\"{k}\" is not supported (no GSSAPI)")));
                }
                k => return Err(err(format!("invalid connection type \"{k}\""))),
            };
            let databases = parse_databases(
                f.get(1)
                    .ok_or_else(|| err("no database field".to_owned()))?,
            )
            .map_err(err)?;
            let users = parse_users(f.get(2).ok_or_else(|| err("no user field".to_owned()))?)
                .map_err(err)?;
            let mut next = 3;
            let address = if kind == Kind::Local {
                None
            } else {
                let addr = f
                    .get(3)
                    .ok_or_else(|| err("no address field".to_owned()))
                    .and_then(|a| single(a, "the address").map_err(err))?;
                let mask = f.get(4).and_then(|m| single(m, "the mask").ok());
                let (a, used_mask) = parse_address(addr, mask).map_err(err)?;
                next = if used_mask { 5 } else { 4 };
                Some(a)
            };
            let method = f
                .get(next)
                .ok_or_else(|| err("no authentication method".to_owned()))
                .and_then(|m| single(m, "the method").map_err(err))?;
            let method = Method::parse(method).ok_or_else(|| {
                err(format!(
                    "authentication method \"{method}\" is not supported (trust, reject, md5, scram-sha-256, password, cert)"
                ))
            })?;
            if let Some(opts) = f.get(next + 1) {
                let opt = opts.first().map(|(s, _)| s.as_str()).unwrap_or_default();
                return Err(err(format!("options (\"{opt}\") are not supported")));
            }
            rules.push(Rule {
                line,
                kind,
                databases,
                users,
                address,
                method,
            });
        }
        Ok(Hba { rules })
    }

    /// The first rule that matches `c`; `None`: no rule does.
    pub fn decide(&self, c: &Client<'_>) -> Option<Decision> {
        self.rules.iter().find(|r| r.matches(c)).map(|r| Decision {
            line: r.line,
            method: r.method,
        })
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when the file holds no rule (everyone is refused).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Rule {
    fn matches(&self, c: &Client<'_>) -> bool {
        let kind = match self.kind {
            Kind::Local => false,
            Kind::Host => true,
            Kind::HostSsl => c.tls,
            Kind::HostNoSsl => !c.tls,
        };
        let database = self.databases.iter().any(|d| match d {
            Database::Replication => c.replication,
            _ if c.replication => false,
            Database::All => true,
            Database::SameUser => c.database == c.user,
            Database::Name(n) => n == c.database,
        });
        let user = self.users.iter().any(|u| match u {
            User::All => true,
            User::Name(n) => n == c.user,
        });
        let address = match self.address {
            Some(Address::All) => true,
            Some(Address::Net { ip, prefix }) => in_net(c.addr, ip, prefix),
            None => false,
        };
        kind && database && user && address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client<'a>(addr: &str, tls: bool, user: &'a str, database: &'a str) -> Client<'a> {
        Client {
            addr: addr.parse().unwrap(),
            tls,
            user,
            database,
            replication: false,
        }
    }

    fn method(hba: &Hba, c: Client<'_>) -> Option<Method> {
        hba.decide(&c).map(|d| d.method)
    }

    #[test]
    fn the_first_matching_line_decides_and_no_match_refuses() {
        let hba = Hba::parse(
            "# comment\n\
             local   all all                    trust\n\
             hostssl app alice,bob 10.0.0.0/8   scram-sha-256\n\
             hostnossl all all     10.0.0.0 255.0.0.0 reject   # trailing comment\n\
             host    sameuser all  127.0.0.1/32 md5\n\
             host    \"all\" carol ::1/128      password\n",
        )
        .unwrap();
        assert_eq!(hba.len(), 5);
        use Method::*;
        let mapped =
            Hba::parse("host all all ::ffff:10.0.0.0/104 reject\nhost all all all trust\n")
                .unwrap();
        for (rules, addr, tls, user, database, want) in [
            (&hba, "10.1.2.3", true, "alice", "app", Some(ScramSha256)),
            (&hba, "10.1.2.3", true, "carol", "app", None),
            // Plain text from the same net: the hostnossl line.
            (&hba, "10.1.2.3", false, "alice", "app", Some(Reject)),
            (&hba, "127.0.0.1", false, "dave", "dave", Some(Md5)),
            (&hba, "127.0.0.1", false, "dave", "app", None),
            // A quoted "all" is a database named all; v4-mapped v6 is v4.
            (&hba, "::1", false, "carol", "all", Some(Password)),
            (&hba, "::1", false, "carol", "app", None),
            (&hba, "::ffff:127.0.0.1", false, "x", "x", Some(Md5)),
            // A rule written as an IPv4-mapped network matches IPv4 clients.
            (&mapped, "10.1.2.3", false, "u", "d", Some(Reject)),
            (&mapped, "11.1.2.3", false, "u", "d", Some(Trust)),
        ] {
            assert_eq!(
                method(rules, client(addr, tls, user, database)),
                want,
                "{user}@{database} from {addr}, tls {tls}"
            );
        }
        assert_eq!(
            hba.decide(&client("10.1.2.3", true, "bob", "app"))
                .map(|d| d.line),
            Some(3)
        );
    }

    #[test]
    fn all_does_not_match_physical_replication_but_replication_does() {
        let hba = Hba::parse("host all all all trust\nhost replication all all reject\n").unwrap();
        let mut c = client("1.2.3.4", false, "u", "db");
        assert_eq!(method(&hba, c), Some(Method::Trust));
        c.replication = true;
        assert_eq!(method(&hba, c), Some(Method::Reject));
    }

    #[test]
    fn rules_the_proxy_cannot_honour_are_refused_with_their_line() {
        for (text, says) in [
            ("host all +admins all md5", "group membership"),
            ("host @dbs all all md5", "included files"),
            (
                "host all all db.example.com md5",
                "host names are not supported",
            ),
            ("host all all samenet md5", "samenet"),
            ("host all all all ident", "\"ident\" is not supported"),
            ("host all all all md5 clientcert=verify-full", "options"),
            ("hostgssenc all all all md5", "GSSAPI"),
            ("hots all all all md5", "invalid connection type"),
            ("host all all 10.0.0.0/33 md5", "invalid CIDR mask"),
            ("host all all 10.0.0.0 255.0.255.0 md5", "invalid IP mask"),
            ("host all all 10.0.0.0", "needs a CIDR mask"),
            ("host all all 10.0.0.0 ffff:ff00:: md5", "do not match"),
            ("host all all all", "no authentication method"),
            ("host \"all all all md5", "unterminated"),
        ] {
            let e = Hba::parse(&format!("# header\n{text}\n")).err();
            assert!(
                e.as_ref()
                    .is_some_and(|e| e.line == 2 && e.why.contains(says)),
                "{text}: {e:?}"
            );
        }
    }

    #[test]
    fn masks_and_prefixes_agree() {
        assert_eq!(mask_bits("255.255.255.0".parse().unwrap()), Ok(24));
        assert_eq!(mask_bits("0.0.0.0".parse().unwrap()), Ok(0));
        assert!(in_net(
            "10.9.8.7".parse().unwrap(),
            IpAddr::from([10, 0, 0, 0]),
            8
        ));
        assert!(!in_net(
            "11.9.8.7".parse().unwrap(),
            IpAddr::from([10, 0, 0, 0]),
            8
        ));
        assert!(in_net(
            IpAddr::from([1, 2, 3, 4]),
            IpAddr::from([0, 0, 0, 0]),
            0
        ));
    }
}
