//! Document queries on PostgreSQL use the indexes a document declares: each field of
//! `Document::INDEXES` gets an index on its number and one on its string, and a query
//! filtering on such a field is answered through it. (What queries select is the view
//! conformance suite's business: the same answers as in memory.)

mod common;

use std::time::Duration;

use common::{TestStore, eventually};
use cqrs_core::testing::views::Statement;
use cqrs_core::{Comparison, Direction, DocumentQuery};
use cqrs_postgres::{PgDocumentView, PgProjectionRunner};
use sqlx::AssertSqlSafe;

/// How many scans used the index `name` so far.
async fn index_scans(t: &TestStore, name: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT idx_scan FROM pg_stat_user_indexes WHERE schemaname = $1 AND indexrelname = $2",
    )
    .bind(t.store.schema())
    .bind(name)
    .fetch_optional(t.pool())
    .await
    .expect("pg_stat_user_indexes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_fields_are_indexed_and_queries_use_the_indexes() {
    let t = TestStore::new("doc_query").await;
    // The runner sets the view up: its table and indexes.
    let runner = PgProjectionRunner::builder(t.store.clone())
        .view(PgDocumentView::<Statement>::new(&t.store).expect("view"))
        .start()
        .await
        .expect("start");
    let indexes = eventually(Duration::from_secs(10), || async {
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 \
             AND tablename = 'suite_statements_v1' ORDER BY 1",
        )
        .bind(t.store.schema())
        .fetch_all(t.pool())
        .await
        .expect("pg_indexes");
        (!indexes.is_empty()).then_some(indexes)
    })
    .await;
    assert_eq!(
        indexes.unwrap_or_default(),
        [
            "suite_statements_v1_0n",
            "suite_statements_v1_0s",
            "suite_statements_v1_1n",
            "suite_statements_v1_1s",
            "suite_statements_v1_2n",
            "suite_statements_v1_2s",
            "suite_statements_v1_pkey",
        ]
    );

    // Enough documents for an index to pay, written straight into the table.
    sqlx::query(AssertSqlSafe(t.sql(
        "INSERT INTO {schema}.suite_statements_v1 (id, document) \
         SELECT 'k' || i, jsonb_build_object('entries', '[]'::jsonb, 'balance', i, \
             'owner', 'o' || (i % 500), 'last', jsonb_build_object('version', 1, 'amount', i)) \
         FROM generate_series(1, 20000) AS i",
    )))
    .execute(t.pool())
    .await
    .expect("documents");
    sqlx::query(AssertSqlSafe(t.sql("ANALYZE {schema}.suite_statements_v1")))
        .execute(t.pool())
        .await
        .expect("analyze");

    let by_owner = DocumentQuery::new()
        .filter("owner", Comparison::Eq, "o7")
        .expect("query");
    let by_balance = DocumentQuery::new()
        .filter("balance", Comparison::Gt, 19_990)
        .expect("query")
        .order_by("balance", Direction::Descending)
        .expect("query");
    let before = (
        index_scans(&t, "suite_statements_v1_0s").await,
        index_scans(&t, "suite_statements_v1_1n").await,
    );
    let owned = PgDocumentView::<Statement>::query(&t.store, &by_owner)
        .await
        .expect("by owner");
    assert_eq!(owned.len(), 40);
    assert!(owned.iter().all(|(_, s)| s.owner == "o7"));
    let largest = PgDocumentView::<Statement>::query(&t.store, &by_balance)
        .await
        .expect("by balance");
    let balances: Vec<i64> = largest.iter().map(|(_, s)| s.balance).collect();
    assert_eq!(balances, (19_991..=20_000).rev().collect::<Vec<_>>());

    // Statistics reach the view within a second or so of the queries' transactions.
    let used = eventually(Duration::from_secs(10), || async {
        let after = (
            index_scans(&t, "suite_statements_v1_0s").await,
            index_scans(&t, "suite_statements_v1_1n").await,
        );
        (after.0 > before.0 && after.1 > before.1).then_some(after)
    })
    .await;
    assert!(used.is_some(), "the queries did not use the indexes");
    runner.shutdown().await;
    t.cleanup().await;
}
