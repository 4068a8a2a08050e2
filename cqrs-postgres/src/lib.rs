#![doc = include_str!("../README.md")]
#![doc(test(attr(deny(warnings))))]

mod db;
mod process;
mod projection;
mod store;

pub use db::{Error, MIGRATOR, Result};
pub use process::PgProcessStatus;
pub use projection::{
    PgDocumentView, PgEventCount, PgOperations, PgProjectionRunner, PgProjectionRunnerBuilder,
    PgProjectionState, PgProjectionStatus, PgRunnerTuning, PgStreamSummary, PgView,
};
pub use store::{
    DEFAULT_SCHEMA, PgEventStore, PgEventStoreBuilder, PgInlineSql, PgNotify, PgStoreTuning,
};

/// The sqlx this crate is built on, so that applications use the same version without
/// pinning it themselves.
pub use sqlx;
