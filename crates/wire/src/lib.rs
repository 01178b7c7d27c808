//! pgwarden-wire (work in progress).
