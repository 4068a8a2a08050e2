//! The in-memory store passes the storage conformance suite.

use cqrs_core::memory::MemoryEventStore;
use cqrs_core::testing::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms_to_the_event_store_contract() {
    conformance::run(|| async { MemoryEventStore::new() }).await;
}

#[test]
fn the_suite_has_at_least_thirty_named_tests() {
    let tests = conformance::tests();
    assert!(tests.len() >= 30, "only {} conformance tests", tests.len());
    let mut names: Vec<&str> = tests.iter().map(|t| t.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), tests.len(), "conformance test names repeat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_with_latency_conforms_too() {
    conformance::run(|| async {
        MemoryEventStore::with_latency(std::time::Duration::from_micros(200))
    })
    .await;
}
