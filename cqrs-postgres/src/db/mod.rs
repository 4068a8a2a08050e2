//! The database wing: everything that knows the store's tables and statements, and
//! nothing of what runs them. The store and projection wings build on it; it depends on
//! neither.
//!
//! - `statements`: every statement, rendered once per store from `src/sql/`;
//! - `run`: running one, with its logging and the mapping of its failure;
//! - `rows`: the rows they return, and their conversion into cqrs-core types;
//! - `checkpoints`, `batch_read`: the statements on the projections table;
//! - `horizon`: how far readers of the log may read, and why that never skips;
//! - `wire`: the notification channels and payloads;
//! - `schema`: names spliced into SQL;
//! - `error`: the crate's error type;
//! - `migrations`: the tables, as embedded migrations.

mod batch_read;
mod checkpoints;
mod error;
mod horizon;
mod migrations;
mod rows;
mod run;
mod schema;
mod statements;
mod wire;

pub(crate) use batch_read::{Header, Window};
pub(crate) use checkpoints::{Advance, Control, Projections, StatusRow};
pub use error::{Error, Result};
pub use migrations::MIGRATOR;
pub(crate) use rows::{
    EventRow, LogRow, OutcomeRow, PositionRow, ReplayRow, SnapshotRow, held_elsewhere, position,
    to_i64_saturating, to_u32, to_u64,
};
pub(crate) use run::{Sql, connection_lost, session_survives};
pub(crate) use schema::{SchemaName, check_identifier, check_projection_name};
pub(crate) use statements::{Splice, Statement, Statements};
pub(crate) use wire::{Notice, events_channel, parse_position_notice, position_notice};
