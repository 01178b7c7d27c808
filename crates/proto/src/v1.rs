//! Generated from `proto/pgwarden/v1/*.proto` (package `pgwarden.v1`): the
//! messages, and for each service a `<service>_server` module (the trait a
//! daemon implements and the tonic service wrapping it) and a
//! `<service>_client` module (the typed client over a
//! [`Channel`](tonic::transport::Channel)).
//!
//! [`Role`] and [`Status`] also implement [`Display`](std::fmt::Display) with
//! the short lower-case words operators see in logs and in `pgwardenctl`.

// Proto comments become doc comments verbatim; `[[backends]]` (a TOML
// table) reads as a broken link to rustdoc.
#[allow(
    missing_docs,
    rustdoc::broken_intra_doc_links,
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]
mod generated {
    tonic::include_proto!("pgwarden.v1");
}

pub use generated::*;

use std::fmt;

// === impl Role ===

impl Role {
    /// The role as operators read it: `unknown`, `primary` or `standby`.
    pub fn as_word(self) -> &'static str {
        pgwarden_cluster::Role::from(self).as_str()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_word())
    }
}

// === impl Status ===

impl Status {
    /// The status as operators read it: `unspecified`, `up`, `down`,
    /// `detached` or `quarantined`.
    pub fn as_word(self) -> &'static str {
        self.model()
            .map_or("unspecified", pgwarden_cluster::Status::as_str)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_words() {
        assert_eq!(Role::Primary.to_string(), "primary");
        assert_eq!(Role::Standby.to_string(), "standby");
        assert_eq!(Role::Unknown.to_string(), "unknown");
        assert_eq!(Status::Up.to_string(), "up");
        assert_eq!(Status::Down.to_string(), "down");
        assert_eq!(Status::Detached.to_string(), "detached");
        assert_eq!(Status::Unspecified.to_string(), "unspecified");
    }

    #[test]
    fn unknown_enum_values_fall_back_to_default() {
        let backend = BackendState {
            role: 42,
            status: 42,
            ..Default::default()
        };
        assert_eq!(backend.role(), Role::Unknown);
        assert_eq!(backend.status(), Status::Unspecified);
    }
}
