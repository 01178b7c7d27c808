//! pgwarden-proxy library.
