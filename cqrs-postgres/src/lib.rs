#![doc = include_str!("../README.md")]
#![doc(test(attr(deny(warnings))))]

mod batch;
mod checkpoints;
mod connections;
mod document;
mod error;
mod inline;
mod listener;
mod notify;
mod projection_error;
mod rows;
mod runner;
mod schema;
mod status;
mod store;
mod view;
mod worker;

pub use document::{Document, PgDocumentView};
pub use error::{Error, Result, Statement};
pub use inline::PgInlineSql;
pub use notify::PgNotify;
pub use projection_error::PgProjectionError;
pub use runner::{PgProjectionRunner, PgProjectionRunnerBuilder};
pub use status::{PgProjectionStatus, ProjectionState};
pub use store::{DEFAULT_SCHEMA, PgEventStore};
pub use view::PgView;

/// The store's embedded migrations (`cqrs-postgres/migrations/`), tracked in their own
/// `_cqrs_migrations` table so they never mix with the application's `_sqlx_migrations`.
///
/// The migrations create unqualified tables: run them through
/// [`PgEventStore::migrate`], which creates the store's schema and applies them inside it.
/// Running `MIGRATOR` directly applies them to the first schema on the connection's
/// `search_path` (for example in `#[sqlx::test(migrator = "cqrs_postgres::MIGRATOR")]`,
/// then open the store with `.with_schema("public")`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
