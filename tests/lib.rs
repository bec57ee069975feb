//! End-to-end tests of the Concord suite live in `suite.rs`; this crate has no library code.
