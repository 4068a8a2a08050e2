//! The cqrs-core storage conformance suite against real PostgreSQL, each test in a
//! fresh schema.

mod common;

use std::sync::{Arc, Mutex};

use cqrs_core::testing::conformance;
use cqrs_postgres::{PgEventStore, PgEventStoreBuilder, PgInlineSql, PgStoreTuning};
use sqlx::{AssertSqlSafe, PgPool};

/// The suite; again with every statement on the pool (no connections of the store's own);
/// and again with an inline SQL projection spliced into the append statement, whose view
/// must then hold exactly what the log does. One after the other: the suite reads the log
/// right after writing it, which another suite's open transactions would hold back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_conformance_suite() {
    run_suite("conformance", |store| store, false).await;
    run_suite(
        "conformance-pool",
        |store| store.tuning(PgStoreTuning::default().command_connections(0)),
        false,
    )
    .await;
    run_suite("conformance-inline-sql", |store| store, true).await;
}

/// Events per stream, as the log holds them or as the inline view counted them.
const COUNT_EVENTS: &str = "SELECT stream_type, stream_id, count(*)::bigint FROM {schema}.events \
     GROUP BY stream_type, stream_id ORDER BY stream_type, stream_id";
const COUNTED: &str = "SELECT stream_type, stream_id, events FROM {schema}.counted \
     ORDER BY stream_type, stream_id";

/// A store in `schema` whose appends also count their events per stream, in
/// `<schema>.counted`.
async fn with_counting_view(store: PgEventStore) -> PgEventStore {
    let schema = format!("\"{}\"", store.schema());
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {schema}.counted (stream_type text, stream_id text, \
         events bigint NOT NULL, PRIMARY KEY (stream_type, stream_id))"
    )))
    .execute(store.pool())
    .await
    .expect("create the counting view");
    let count = PgInlineSql::new(
        "counted",
        format!(
            "INSERT INTO {schema}.counted AS c (stream_type, stream_id, events) \
             SELECT stream_type, stream_id, count(*) FROM appended \
             GROUP BY stream_type, stream_id \
             ON CONFLICT (stream_type, stream_id) DO UPDATE SET events = c.events + excluded.events"
        ),
    )
    .expect("a valid inline statement");
    common::reconfigured(&store, |b| b.inline_sql(count))
}

async fn per_stream(pool: &PgPool, sql: &str, schema: &str) -> Vec<(String, String, i64)> {
    sqlx::query_as(AssertSqlSafe(
        sql.replace("{schema}", &format!("\"{schema}\"")),
    ))
    .fetch_all(pool)
    .await
    .expect("count events per stream")
}

async fn run_suite(
    label: &str,
    configure: fn(PgEventStoreBuilder) -> PgEventStoreBuilder,
    counted: bool,
) {
    let pool = common::pool(16, label).await;
    let base = configure(PgEventStore::builder(pool.clone()))
        .build()
        .expect("a valid store configuration");
    let schemas = Arc::new(Mutex::new(Vec::new()));
    let made = Arc::clone(&schemas);
    let suite = common::catch_unwind(async move {
        conformance::run(move || {
            let base = base.clone();
            let made = Arc::clone(&made);
            async move {
                let schema = common::unique_schema("conf");
                made.lock().expect("schema list").push(schema.clone());
                let store = base
                    .to_builder()
                    .schema(&schema)
                    .build()
                    .expect("valid schema name");
                store.migrate().await.expect("migrate");
                if counted {
                    with_counting_view(store).await
                } else {
                    store
                }
            }
        })
        .await;
    })
    .await;
    let names = schemas.lock().expect("schema list").clone();
    let mut differing = Vec::new();
    for schema in names {
        if counted
            && suite.is_ok()
            && per_stream(&pool, COUNTED, &schema).await
                != per_stream(&pool, COUNT_EVENTS, &schema).await
        {
            differing.push(schema.clone());
        }
        common::drop_schema(&pool, &schema).await;
    }
    if let Err(failure) = suite {
        std::panic::resume_unwind(failure);
    }
    assert!(
        differing.is_empty(),
        "the inline view differs from the log in {differing:?}"
    );
}
