//! The cqrs-core storage conformance suite against real PostgreSQL, each test in a
//! fresh schema.

mod common;

use std::sync::{Arc, Mutex};

use cqrs_core::testing::conformance;
use cqrs_postgres::PgEventStore;

/// The suite, then the suite again with every statement on the pool (no connections of
/// the store's own). One after the other: the suite reads the log right after writing it,
/// which another suite's open transactions would hold back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_conformance_suite() {
    run_suite("conformance", |store| store).await;
    run_suite("conformance-pool", |store| {
        store.with_command_connections(0)
    })
    .await;
}

async fn run_suite(label: &str, configure: fn(PgEventStore) -> PgEventStore) {
    let pool = common::pool(16, label).await;
    let base = configure(PgEventStore::new(pool.clone()));
    let schemas = Arc::new(Mutex::new(Vec::new()));
    let made = Arc::clone(&schemas);
    let suite = common::catch_unwind(async move {
        conformance::run(move || {
            let base = base.clone();
            let made = Arc::clone(&made);
            async move {
                let schema = common::unique_schema("conf");
                made.lock().expect("schema list").push(schema.clone());
                let store = base.with_schema(&schema).expect("valid schema name");
                store.migrate().await.expect("migrate");
                store
            }
        })
        .await;
    })
    .await;
    let names = schemas.lock().expect("schema list").clone();
    for schema in names {
        common::drop_schema(&pool, &schema).await;
    }
    if let Err(failure) = suite {
        std::panic::resume_unwind(failure);
    }
}
