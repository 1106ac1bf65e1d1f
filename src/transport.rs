//! Transport helpers (in progress).
