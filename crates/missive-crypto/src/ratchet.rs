//! Phase 2.
