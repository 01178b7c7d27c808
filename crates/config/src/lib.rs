//! pgwarden-config (work in progress).
