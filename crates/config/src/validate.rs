//! Small range and syntax checks shared by the sections. Each returns a
//! [`ConfigError::Invalid`] naming the key and quoting the value.

use std::fmt::Display;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use crate::error::ConfigError;

/// `value >= min`.
pub(crate) fn at_least<T: PartialOrd + Display>(
    key: &str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(
            key,
            format!("must be at least {min} (got {value})"),
        ));
    }
    Ok(())
}

/// A timeout or period that must not be zero.
pub(crate) fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(
            key,
            format!(
                "must be greater than 0 (got \"{}\")",
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

/// A string that must not be empty.
pub(crate) fn non_empty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    Ok(())
}

/// A TCP port: 0 cannot be connected to.
pub(crate) fn port(key: &str, value: u16) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(
            key,
            "must be between 1 and 65535 (got 0)",
        ));
    }
    Ok(())
}

/// A host name or IP address (IPv6 without brackets).
pub(crate) fn host(key: &str, value: &str) -> Result<(), ConfigError> {
    host_reason(value).map_or(Ok(()), |reason| Err(ConfigError::invalid(key, reason)))
}

/// A `host:port` peer address: `name:9000`, `10.0.0.2:9000`, `[fe80::1]:9000`.
pub(crate) fn host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    let invalid = |why: String| ConfigError::invalid(key, why);
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or_else(|| invalid(format!("expected \"[ipv6]:port\" (got {value:?})")))?;
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err(invalid(format!("invalid IPv6 address {ip:?} in {value:?}")));
        }
        (None, port)
    } else {
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| invalid(format!("expected \"host:port\" (got {value:?})")))?;
        (Some(host), port)
    };
    if let Some(host) = host {
        if host.contains(':') {
            return Err(invalid(format!(
                "IPv6 addresses need brackets, e.g. \"[::1]:9000\" (got {value:?})"
            )));
        }
        if let Some(reason) = host_reason(host) {
            return Err(invalid(format!("host in {value:?} {reason}")));
        }
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(invalid(format!(
            "invalid port {port:?} in {value:?}: must be between 1 and 65535"
        ))),
    }
}

/// Why `value` is not a host name or IP address, if it is not.
fn host_reason(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if value.parse::<IpAddr>().is_ok() {
        return None;
    }
    if value.contains(':') {
        return Some(format!(
            "is not a valid host name or IP address (got {value:?})"
        ));
    }
    let valid_chars = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    let valid_shape = value.len() <= 253 && !value.starts_with(['-', '.']) && !value.contains("..");
    if !(valid_chars && valid_shape) {
        return Some(format!(
            "is not a valid host name or IP address (got {value:?})"
        ));
    }
    None
}

/// Files that only work together (a certificate, its key, a CA): when any
/// is set, each one left empty is an error naming it.
pub(crate) fn together(files: &[(&str, &std::path::Path)]) -> Result<(), ConfigError> {
    let Some((given, _)) = files.iter().find(|(_, p)| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    match files.iter().find(|(_, p)| p.as_os_str().is_empty()) {
        Some((missing, _)) => Err(ConfigError::invalid(
            *missing,
            format!("required when {given} is set"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts() {
        for ok in [
            "pg02.localnet:9000",
            "pg02:1",
            "10.0.0.2:65535",
            "[::1]:9000",
            "[fe80::1]:9000",
        ] {
            host_port("k", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn host_port_refuses() {
        for (bad, why) in [
            ("pg02", "expected \"host:port\""),
            ("pg02:", "invalid port"),
            ("pg02:0", "invalid port"),
            ("pg02:65536", "invalid port"),
            ("pg02:http", "invalid port"),
            (":9000", "must not be empty"),
            ("::1:9000", "need brackets"),
            ("[::1]9000", "expected \"[ipv6]:port\""),
            ("[nope]:9000", "invalid IPv6"),
            ("pg 02:9000", "not a valid host name"),
        ] {
            let msg = host_port("watchdog.peers[0]", bad).unwrap_err().to_string();
            assert!(msg.contains("watchdog.peers[0]"), "{bad}: {msg}");
            assert!(msg.contains(why), "{bad}: {msg}");
        }
    }

    #[test]
    fn host_accepts_names_and_ips() {
        for ok in [
            "pg01",
            "pg01.localnet",
            "10.0.0.1",
            "::1",
            "db_1.example.com",
        ] {
            host("k", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "pg01:5432", "/var/run/postgresql", "-x", "a..b", "a b"] {
            assert!(host("k", bad).is_err(), "{bad}");
        }
    }
}
