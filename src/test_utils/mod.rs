//! Test helpers (in progress).
