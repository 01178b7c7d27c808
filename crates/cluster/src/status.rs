//! Where a backend stands: the role it plays and whether it is routable.

use std::fmt;

/// Role a backend plays, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Never checked successfully.
    Unknown,
    /// Out of recovery.
    Primary,
    /// In recovery.
    Standby,
}

/// Whether the backend is routable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Healthy: the primary, or a standby streaming from it.
    Up,
    /// Failing checks (or not streaming); re-attached automatically when healthy.
    Down,
    /// Fenced until an operator attaches it.
    Detached,
    /// This node's monitor cannot reach it but the quorum does not agree:
    /// no failover, and this node's proxy keeps routing to it.
    Quarantined,
}

/// Gives a fieldless enum `as_str`, the name its table lists for each
/// variant (documented by the attributes before the table), and a
/// `Display` that writes that name.
macro_rules! names {
    ($(#[$doc:meta])* $enum:ident { $($variant:ident => $name:literal,)+ }) => {
        impl $enum {
            $(#[$doc])*
            pub fn as_str(self) -> &'static str {
                match self {
                    $($enum::$variant => $name,)+
                }
            }
        }

        impl fmt::Display for $enum {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// The lowercase name every daemon, metric and pgwardenctl shows.
    Status {
        Up => "up",
        Down => "down",
        Detached => "detached",
        Quarantined => "quarantined",
    }
}

names! {
    /// The lowercase name every daemon and pgwardenctl shows.
    Role {
        Unknown => "unknown",
        Primary => "primary",
        Standby => "standby",
    }
}
