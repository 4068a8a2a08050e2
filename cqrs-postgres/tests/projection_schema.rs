//! A view's SQL runs with the store's schema first on `search_path`: a hand-written view
//! whose table names are unqualified keeps its tables in the store's schema, under a
//! runner and inline alike, and never in `public`.

mod common;

use std::time::Duration;

use common::TestStore;
use common::counter::Added;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventStore, Position, Projection};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgView};
use sqlx::{AssertSqlSafe, PgConnection, PgPool};

/// Counts events per stream in `<table>`, named without a schema.
#[derive(Debug, Clone)]
struct Unqualified {
    table: &'static str,
}

impl Projection for Unqualified {
    const NAME: &'static str = "unqualified";
    type Event = Added;
    type Context = PgConnection;
    type Error = sqlx::Error;

    async fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<Added>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS t VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = t.n + 1",
            self.table
        )))
        .bind(&event.stream_id)
        .execute(cx)
        .await?;
        Ok(())
    }
}

impl PgView for Unqualified {
    async fn setup(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, n bigint NOT NULL)",
            self.table
        )))
        .execute(cx)
        .await?;
        Ok(())
    }

    async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(AssertSqlSafe(format!("TRUNCATE {}", self.table)))
            .execute(cx)
            .await?;
        Ok(())
    }
}

/// The schema `table` was created in, if it was created (`pg_class` over all schemas).
async fn schemas_of(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relname = $1 AND c.relkind = 'r'",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("pg_class")
}

async fn count(t: &TestStore, table: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(t.sql(&format!(
        "SELECT coalesce(sum(n), 0)::bigint FROM {{schema}}.{table}"
    ))))
    .fetch_one(t.pool())
    .await
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runners_view_keeps_its_unqualified_tables_in_the_stores_schema() {
    let t = TestStore::new("proj_schema").await;
    let table = "unqualified_runner_view";
    let runner = PgProjectionRunner::builder(t.store.clone())
        .view(Unqualified { table })
        .start()
        .await
        .expect("start");
    let mut last = Position::START;
    for n in 0..3 {
        last = append_one(&t.store, "s-1", n).await;
    }
    runner
        .wait_for::<Unqualified>(last, Duration::from_secs(10))
        .await
        .expect("caught up");
    assert_eq!(schemas_of(t.pool(), table).await, [t.store.schema()]);
    assert_eq!(count(&t, table).await, 3);
    runner.shutdown().await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_view_and_begin_in_schema_use_the_stores_schema_too() {
    let t = TestStore::new("proj_schema_inline").await;
    let table = "unqualified_inline_view";
    // The table made by hand before the store serves appends, as an application would.
    let mut tx = t.store.begin_in_schema().await.expect("begin");
    Unqualified { table }
        .setup(&mut tx)
        .await
        .expect("create the table");
    tx.commit().await.expect("commit");
    assert_eq!(schemas_of(t.pool(), table).await, [t.store.schema()]);

    let store = common::reconfigured(&t.store, |b| b.inline(Unqualified { table }));
    for n in 0..4 {
        append_one(&store, "s-1", n).await;
    }
    assert_eq!(count(&t, table).await, 4);
    // The pool's connections kept their own path.
    let path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(t.pool())
        .await
        .expect("search_path");
    assert!(!path.contains(t.store.schema()), "{path}");
    t.cleanup().await;
}

/// Appends one counter event of 1 to `stream` at `expected`.
async fn append_one(store: &PgEventStore, stream: &str, expected: u64) -> Position {
    store
        .append(AppendRequest::new(
            "counter",
            stream,
            expected,
            vec![NewEvent::new(
                "Added",
                2,
                serde_json::json!({ "amount": 1 }),
            )],
        ))
        .await
        .expect("append")
        .position
}
