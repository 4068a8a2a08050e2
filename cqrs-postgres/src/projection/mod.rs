//! The projection wing: [`PgProjectionRunner`] and the views it keeps. It builds on the
//! store and database wings; nothing below depends on it.
//!
//! - `builder`: registering projections and starting a runner;
//! - `runner`: a started runner: status, waits, operators' requests, shutdown;
//! - `ownership`: one owner per projection across processes (advisory locks);
//! - `worker`: the loop that runs one projection: reads a batch, decides what to do with
//!   it (`plan`, a pure function), does it (`batch`);
//! - `guard`: running handlers and hooks without letting an error or a panic escape;
//! - `listener`: one `LISTEN` connection per runner, fanned out;
//! - `shared`: what the parts of one runner share;
//! - `view`, `document`: views in PostgreSQL tables, and JSON documents per key;
//! - `status`: what the runner reports.

mod batch;
mod builder;
mod document;
mod document_query;
mod guard;
mod inline;
mod listener;
mod operations;
mod ownership;
mod plan;
mod runner;
mod shared;
mod status;
mod view;
mod worker;

pub(crate) use batch::begin;
pub use builder::PgProjectionRunnerBuilder;
pub use document::PgDocumentView;
pub use operations::{PgEventCount, PgOperations, PgStreamSummary};
pub use runner::PgProjectionRunner;
pub use shared::PgRunnerTuning;
pub(crate) use shared::Shared;
pub use status::{PgProjectionState, PgProjectionStatus};
pub use view::PgView;
pub(crate) use worker::spawn as spawn_worker;
