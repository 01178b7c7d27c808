//! pgwarden-testkit (work in progress).
