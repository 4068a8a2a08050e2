//! Readers of the log are held back only by appends to their store still in flight: a
//! write transaction held open elsewhere (in another database, or on another table of
//! the same one) delays no projection, wait, read or head; an append held open still
//! holds them back, and nothing is ever skipped.

mod common;
mod projection_support;

use std::time::{Duration, Instant};

use common::{TestStore, database_url, hold_stream};
use cqrs_core::{EventFilter, EventStore, Position};
use cqrs_postgres::{PgProjectionRunner, PgRunnerTuning};
use projection_support::{Balances, add, fold, rows, served_view};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// How often the runner polls: the bound on the delay an unrelated transaction may cause.
const POLL: Duration = Duration::from_millis(500);

/// How long the unrelated transaction stays open.
const HELD: Duration = Duration::from_secs(30);

/// A database of its own for the unrelated transaction (created once, if missing).
async fn other_database() -> PgConnection {
    const NAME: &str = "cqrs_test_unrelated";
    let url = database_url();
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    for _ in 0..20 {
        if let Ok(conn) = PgConnection::connect(&format!("{base}/{NAME}")).await {
            return conn;
        }
        // Missing: create it. Another test may create it at the same moment, or the
        // template may be busy for a moment; either way, try again.
        let _ = sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {NAME}")))
            .execute(&mut admin)
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot create or reach the database {NAME}");
}

/// Begins a transaction on `conn` that writes a row of `table` and stays open; returns
/// its transaction id.
async fn hold_a_write(conn: &mut PgConnection, table: &str) -> i64 {
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (n bigint)"
    )))
    .execute(&mut *conn)
    .await
    .expect("create the unrelated table");
    sqlx::query("BEGIN")
        .execute(&mut *conn)
        .await
        .expect("begin");
    sqlx::query(AssertSqlSafe(format!("INSERT INTO {table} VALUES (1)")))
        .execute(&mut *conn)
        .await
        .expect("write");
    let (xid,): (i64,) = sqlx::query_as("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *conn)
        .await
        .expect("its transaction id");
    xid
}

/// While `conn` holds its write open for [`HELD`], appends an event every 250 ms and
/// checks that `read_all`, `head` and a projection show it within the poll interval. Prints the delays, and how many of the appends the former rule
/// (stopping below the snapshot's `xmin`, which the unrelated transaction holds back)
/// would have let a reader see before the transaction ended.
async fn readers_are_not_delayed(t: &TestStore, conn: &mut PgConnection, what: &str) {
    let schema = t.store.schema().to_owned();
    let runner = PgProjectionRunner::builder(t.store.clone())
        .tuning(PgRunnerTuning::default().poll_interval(POLL))
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    let started = Instant::now();
    let (mut version, mut seen_before) = (0, Position::START);
    let (mut waits, mut reads, mut former_rule_readable) = (Vec::new(), Vec::new(), 0);
    while started.elapsed() < HELD {
        let position = add(&t.store, "a", version, 1).await;
        version += 1;
        // A transaction anywhere that ends while a read runs holds that read back (it
        // may have been an appender): the next read, a moment later, shows the append.
        let appended = Instant::now();
        loop {
            let read = t
                .store
                .read_all(seen_before, 10, &EventFilter::all())
                .await
                .expect("read_all");
            let head = t.store.head().await.expect("head");
            if read.last().map(|e| e.position) == Some(position) && head == position {
                break;
            }
            assert!(
                appended.elapsed() < POLL,
                "{what}: read_all and head did not show the append within {POLL:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        reads.push(appended.elapsed());
        seen_before = position;
        let waited = Instant::now();
        runner
            .wait_for_named("balances", position, POLL * 4)
            .await
            .expect("the projection passes the append");
        waits.push(waited.elapsed());
        let (xmin,): (i64,) =
            sqlx::query_as("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(t.pool())
                .await
                .expect("xmin");
        if u64::try_from(xmin).is_ok_and(|xmin| position.commit() < xmin) {
            former_rule_readable += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sqlx::query("COMMIT")
        .execute(&mut *conn)
        .await
        .expect("commit the unrelated write");
    waits.sort();
    reads.sort();
    let slowest = waits.last().copied().unwrap_or_default();
    println!(
        "{what}, held {HELD:?}: {} appends; read_all and head showed each after p50 {:?}, \
         max {:?}; the projection passed each after p50 {:?}, max {slowest:?}. Readable under \
         the former xmin rule while held: {} of them",
        waits.len(),
        reads[reads.len() / 2],
        reads.last().copied().unwrap_or_default(),
        waits[waits.len() / 2],
        former_rule_readable,
    );
    assert!(
        slowest < POLL,
        "{what}: a wait took {slowest:?}, more than the poll interval"
    );
    assert_eq!(
        rows(t.pool(), &served_view(&schema)).await,
        fold(t.pool(), &schema).await
    );
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_held_open_in_another_database_delays_no_reader() {
    let t = TestStore::new("horizon_db").await;
    let mut conn = other_database().await;
    // A table of its own there, named after the test's schema.
    let table = format!("\"{}\"", t.store.schema());
    hold_a_write(&mut conn, &table).await;
    readers_are_not_delayed(&t, &mut conn, "a write held open in another database").await;
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&mut conn)
        .await
        .expect("drop the unrelated table");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_held_open_on_another_table_of_the_database_delays_no_reader() {
    let t = TestStore::new("horizon_table").await;
    let mut conn = PgConnection::connect(&database_url())
        .await
        .expect("connect");
    let table = t.sql("{schema}.unrelated_writes");
    hold_a_write(&mut conn, &table).await;
    readers_are_not_delayed(&t, &mut conn, "a write held open on another table").await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_held_open_holds_readers_back_and_nothing_is_skipped() {
    let t = TestStore::new("horizon_held").await;
    let schema = t.store.schema().to_owned();
    let runner = PgProjectionRunner::builder(t.store.clone())
        .tuning(PgRunnerTuning::default().poll_interval(Duration::from_millis(100)))
        .view(Balances::<1>::new(&schema))
        .start()
        .await
        .expect("start");
    let before = add(&t.store, "before", 0, 1).await;
    runner
        .wait_for_named("balances", before, Duration::from_secs(5))
        .await
        .expect("caught up");
    let holder = hold_stream(&t, "held").await;
    let after = add(&t.store, "after", 0, 1).await;
    for _ in 0..10 {
        // At `before`, or lower for a moment: a transaction of another test that ends
        // between a reader's snapshot and its look at the locks holds the horizon back
        // too (the rule errs on the side of waiting). Never past the held append.
        let head = t.store.head().await.expect("head");
        assert!(
            head <= before,
            "the head {head} passed the append held open (before it: {before})"
        );
        let read = t
            .store
            .read_all(before, 10, &EventFilter::all())
            .await
            .expect("read_all");
        assert!(read.is_empty(), "read past the held append: {read:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = runner
        .wait_for_named("balances", after, Duration::from_millis(300))
        .await;
    assert!(
        waited.is_err_and(|e| e.is_timeout()),
        "the projection passed an append held open"
    );
    holder.commit().await.expect("commit the held append");
    runner
        .wait_for_named("balances", after, Duration::from_secs(5))
        .await
        .expect("the projection goes on once it commits");
    let read = t
        .store
        .read_all(before, 10, &EventFilter::all())
        .await
        .expect("read_all");
    let streams: Vec<&str> = read.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(streams, ["held", "after"], "both, in commit-safe order");
    assert_eq!(t.store.head().await.expect("head"), after);
    runner.shutdown().await;
    t.cleanup().await;
}

/// A reader whose role may not see the appenders' sessions (no superuser, no
/// `pg_read_all_stats`) reads the log all the same, and stops below an append held open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_that_may_not_see_other_sessions_never_skips() {
    const ROLE: &str = "cqrs_test_plain_reader";
    let t = TestStore::new("horizon_role").await;
    let schema = t.store.schema().to_owned();
    // Roles belong to the cluster: another test process may create it at the same moment.
    let _ = sqlx::query(AssertSqlSafe(format!("CREATE ROLE {ROLE} LOGIN")))
        .execute(t.pool())
        .await;
    for grant in [
        format!("GRANT USAGE ON SCHEMA \"{schema}\" TO {ROLE}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA \"{schema}\" TO {ROLE}"),
    ] {
        sqlx::query(AssertSqlSafe(grant))
            .execute(t.pool())
            .await
            .expect("grant");
    }
    let options = common::connect_options("plain reader").username(ROLE);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .expect("connect as the plain role");
    let reader = cqrs_postgres::PgEventStore::builder(pool)
        .schema(&schema)
        .build()
        .expect("the reader's store");

    let before = add(&t.store, "before", 0, 1).await;
    assert_eq!(reader.head().await.expect("head"), before);
    let holder = hold_stream(&t, "held").await;
    let after = add(&t.store, "after", 0, 1).await;
    for _ in 0..5 {
        let read = reader
            .read_all(before, 10, &EventFilter::all())
            .await
            .expect("read_all as the plain role");
        assert!(read.is_empty(), "read past the held append: {read:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.commit().await.expect("commit");
    let read = reader
        .read_all(before, 10, &EventFilter::all())
        .await
        .expect("read_all");
    assert_eq!(read.last().map(|e| e.position), Some(after));
    assert_eq!(read.len(), 2, "the held event and the one after it");
    reader.pool().close().await;
    for revoke in [
        format!("REVOKE ALL ON ALL TABLES IN SCHEMA \"{schema}\" FROM {ROLE}"),
        format!("REVOKE ALL ON SCHEMA \"{schema}\" FROM {ROLE}"),
    ] {
        sqlx::query(AssertSqlSafe(revoke))
            .execute(t.pool())
            .await
            .expect("revoke");
    }
    t.cleanup().await;
}
