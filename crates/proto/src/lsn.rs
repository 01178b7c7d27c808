//! PostgreSQL log sequence numbers (LSNs).
//!
//! The contracts carry LSNs as `uint64` (0 = unknown); PostgreSQL prints and
//! parses them as two hexadecimal 32-bit halves, `16/B374D848`
//! (`pg_lsn`). These helpers convert between the two, exactly as PostgreSQL
//! does, so logs and `pgwardenctl` show what `pg_current_wal_lsn()` shows.

/// Formats an LSN the way PostgreSQL does: `%X/%X`, upper-case, no padding
/// (`0/0`, `16/B374D848`).
pub fn lsn_to_string(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses an LSN in PostgreSQL's text form (`16/B374D848`; 1 to 8 hex digits
/// each side, either case, nothing else), as returned by functions such as
/// `pg_last_wal_replay_lsn()::text`. `None` when the text is not an LSN.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from(parse_half(high)?) << 32) | u64::from(parse_half(low)?))
}

/// One half of an LSN: 1 to 8 hex digits (no sign, no spaces, no `0x`).
fn parse_half(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero() {
        assert_eq!(lsn_to_string(0), "0/0");
        assert_eq!(parse_lsn("0/0"), Some(0));
    }

    #[test]
    fn max() {
        assert_eq!(lsn_to_string(u64::MAX), "FFFFFFFF/FFFFFFFF");
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_lsn("ffffffff/ffffffff"), Some(u64::MAX));
    }

    #[test]
    fn typical() {
        let lsn = (0x16 << 32) | 0xB374_D848;
        assert_eq!(lsn_to_string(lsn), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848"), Some(lsn));
        assert_eq!(parse_lsn("16/b374d848"), Some(lsn));
        assert_eq!(parse_lsn("00000016/B374D848"), Some(lsn));
        assert_eq!(parse_lsn("0/1"), Some(1));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
    }

    #[test]
    fn round_trip() {
        for lsn in [1, 0xFFFF_FFFF, 1 << 32, 0x0123_4567_89AB_CDEF, u64::MAX - 1] {
            assert_eq!(parse_lsn(&lsn_to_string(lsn)), Some(lsn), "{lsn:#x}");
        }
    }

    #[test]
    fn bad_input() {
        for text in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "16B374D848",
            "1/2/3",
            "100000000/0",
            "0/100000000",
            "G/0",
            "0/G",
            "+1/0",
            "-1/0",
            "0x1/0",
            " 1/0",
            "1/0 ",
            "1 /0",
            "1/0\n",
            "１/0",
        ] {
            assert_eq!(parse_lsn(text), None, "{text:?}");
        }
    }
}
