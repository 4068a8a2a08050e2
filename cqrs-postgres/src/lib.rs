//! PostgreSQL backend for `cqrs-core`.
//!
//! The event store lands here; until then this crate only pins its place in the workspace.
