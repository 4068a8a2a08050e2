//! Derive macros for `cqrs-core`.
//!
//! Not for direct use: depend on `cqrs-core`, which re-exports these derives under its
//! default `derive` feature and documents every `#[cqrs(...)]` key.
