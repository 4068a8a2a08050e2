//! The view conformance suite: a [`Document`](crate::Document) view written once gives
//! the same documents under every runner.
//!
//! A runner proves itself by implementing [`DocumentRunner`] (keep a document view, wait
//! for a token, read the documents, rebuild) and calling [`run`] with a function that
//! makes a runner over a fresh, empty store. The suite appends events of its own domain
//! (alone, in batches, from concurrent writers, with events no view wants), and checks
//! each runner's documents against the fold of the store's log: every wanted event folded
//! once, in stream order, into the document of its key; the same after a rebuild; and a
//! writer that waited for its token sees its write; and queries (filters on strings,
//! numbers and nested fields, orders, pages) select what they select in memory. The in-memory
//! [`Projector`](crate::memory::Projector) runs it in this crate, the PostgreSQL runner
//! and the PostgreSQL inline views in `cqrs-postgres`.
//!
//! ```
//! use cqrs_core::memory::MemoryEventStore;
//! use cqrs_core::testing::views::{self, MemoryDocuments};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! views::run(|| async { MemoryDocuments::new(MemoryEventStore::new()) }).await;
//! # });
//! ```

mod checks;
mod memory;
mod model;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub use memory::MemoryDocuments;
pub use model::{
    Holdings, Last, LedgerFeed, OwnerEvent, Owners, Statement, SuiteDocument, SuiteEvent,
};

use crate::{BoxError, DocumentQuery, EventStore, Token};

/// How long the suite waits for a view to catch up before calling it a failure.
pub const WAIT: Duration = Duration::from_secs(30);

/// A runner of [`Document`](crate::Document) views as the suite drives it: one per test,
/// over a fresh, empty store.
pub trait DocumentRunner: Send + Sync + 'static {
    /// The store the suite appends to.
    type Store: EventStore + Clone + 'static;

    /// The store to append through: the events appended through it once `keep` has
    /// returned reach the views this runner keeps.
    fn store(&self) -> Self::Store;

    /// Keeps the view of `D` from now on. Called before the suite appends anything.
    fn keep<D: SuiteDocument>(&mut self) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Waits until the view of `D` has passed `token`.
    fn wait_for<D: SuiteDocument>(
        &self,
        token: Token,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The documents of `D` as served now, by key.
    fn documents<D: SuiteDocument>(
        &self,
    ) -> impl Future<Output = Result<BTreeMap<String, D>, BoxError>> + Send;

    /// The served documents of `D` that `query` selects, in its order.
    fn query<D: SuiteDocument>(
        &self,
        query: &DocumentQuery,
    ) -> impl Future<Output = Result<Vec<(String, D)>, BoxError>> + Send;

    /// Whether the runner folds the events of different streams into one document in
    /// the log's order (a runner that reads the log does). A view kept inside each
    /// append's transaction folds concurrent appends to one document in the order they
    /// reach it instead; each stream's events still come in the stream's order. For such
    /// a runner the suite compares documents with
    /// [`SuiteDocument::across_streams_unordered`].
    fn folds_in_log_order(&self) -> bool {
        true
    }

    /// Rebuilds the view of `D` from the log and returns once it has caught up with the
    /// log's head; `false` when this runner does not rebuild (an inline view, which is
    /// built from the log by another runner).
    fn rebuild<D: SuiteDocument>(&mut self) -> impl Future<Output = Result<bool, BoxError>> + Send;
}

/// The result of one test: `Err` explains the violation.
pub type Verdict = Result<(), String>;

type Check<R> = fn(R) -> Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// Runs every test of the suite, each on a runner fresh from `new_runner`.
///
/// # Panics
///
/// When a test fails, after all have run, listing each failing test and its reason.
pub async fn run<F, Fut, R>(mut new_runner: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
    R: DocumentRunner,
{
    let tests = checks::tests::<R>();
    let mut failures = Vec::new();
    for (name, check) in &tests {
        let runner = new_runner().await;
        if let Err(reason) = check(runner).await {
            failures.push(format!("  {name}: {reason}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} view conformance tests failed:\n{}",
        failures.len(),
        tests.len(),
        failures.join("\n")
    );
}
