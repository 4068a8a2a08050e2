//! The in-memory runner passes the view conformance suite: a document view folded by a
//! `Projector` equals the fold of the log, for concurrent writers too, and after a
//! rebuild.

use cqrs_core::memory::MemoryEventStore;
use cqrs_core::testing::views::{self, MemoryDocuments};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_runner_conforms_to_the_view_contract() {
    views::run(|| async { MemoryDocuments::new(MemoryEventStore::new()) }).await;
}
