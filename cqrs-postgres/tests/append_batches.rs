//! Appends that wait at the same time are sent together as one statement, and each
//! keeps its own outcome: written, refused on its expected version, or refused for a
//! reason of its own after the statement was sent again one append at a time.
//!
//! To make a batch form on cue, the store sends one statement at a time, and the first
//! append is held on the server: another transaction, left open by the test, has
//! written the version it needs. The appends started meanwhile wait together; when the
//! test ends that transaction, they go out as one statement.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::TestStore;
use cqrs_core::EventStore;
use cqrs_core::store::{AppendOutcome, AppendRequest, NewEvent};
use cqrs_postgres::{PgEventStore, PgInlineSql};
use serde_json::json;
use sqlx::{Postgres, Transaction};
use tokio::task::JoinHandle;

type Outcome = cqrs_core::Result<AppendOutcome>;

/// An append to the account `id`.
fn account(id: &str, expected: u64, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest::new("account", id, expected, events)
}

fn deposit(amount: i64) -> NewEvent {
    NewEvent::new("Deposited", 1, json!({ "amount": amount }))
}

/// The test's store, sending at most one statement at a time.
fn one_at_a_time(t: &TestStore) -> PgEventStore {
    common::reconfigured(&t.store, |b| b.tuning(t.store.tuning().append_batches(1)))
}

/// Holds the store's only statement slot: a transaction of the test's own writes version
/// 1 of `torture/held` and stays open, and an append of that version by `store` waits on
/// it. Returns the open transaction and the held append.
async fn hold(
    t: &TestStore,
    store: &PgEventStore,
) -> (Transaction<'static, Postgres>, JoinHandle<Outcome>) {
    let holder = common::hold_stream(t, "held").await;
    let held = spawn_append(
        store,
        AppendRequest::new("torture", "held", 0, vec![deposit(1)]),
    );
    common::until_waiting_on_a_lock(t.pool(), store.schema()).await;
    (holder, held)
}

/// Ends the test's transaction (its write undone), lets the held append through, and
/// checks that it was written.
async fn release(blocker: Transaction<'static, Postgres>, held: JoinHandle<Outcome>) {
    blocker.rollback().await.expect("rollback");
    held.await.expect("join").expect("the held append");
}

fn spawn_append(store: &PgEventStore, request: AppendRequest) -> JoinHandle<Outcome> {
    let store = store.clone();
    tokio::spawn(async move { store.append(request).await })
}

/// Gives appends just spawned the time to take their place in the queue.
async fn let_them_queue() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Starts `request` and gives it the time to take its place in the queue, so that the
/// appends a test starts wait in the order it starts them.
async fn queue(store: &PgEventStore, request: AppendRequest) -> JoinHandle<Outcome> {
    let append = spawn_append(store, request);
    tokio::time::sleep(Duration::from_millis(100)).await;
    append
}

async fn opened(store: &PgEventStore, stream: &str) {
    store
        .append(account(stream, 0, vec![deposit(0)]))
        .await
        .expect("open the stream");
}

/// The transaction ids of the events of `stream`, in version order.
async fn transactions(t: &TestStore, stream: &str) -> Vec<u64> {
    let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(t.sql(
        "SELECT transaction_id FROM {schema}.events \
         WHERE stream_type = 'account' AND stream_id = $1 ORDER BY stream_version",
    )))
    .bind(stream)
    .fetch_all(t.pool())
    .await
    .expect("read the log");
    ids.into_iter()
        .map(|id| u64::try_from(id).expect("a transaction id"))
        .collect()
}

/// Checks `outcome` against what the log holds for it.
async fn check_written(
    t: &TestStore,
    stream: &str,
    outcome: &AppendOutcome,
    first: u64,
    last: u64,
) {
    assert_eq!(
        (outcome.first_version, outcome.stream_version),
        (first, last)
    );
    assert!(!outcome.duplicate);
    let events = t.store.load("account", stream, 0).await.expect("load");
    assert_eq!(
        events.len() as u64,
        last,
        "{stream} holds exactly its events"
    );
    let newest = events.last().expect("an event");
    assert_eq!(newest.position, outcome.position, "{stream}'s position");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_waiting_together_share_one_statement_each_with_its_own_outcome() {
    let t = TestStore::new("batch_outcomes").await;
    let store = one_at_a_time(&t);
    for stream in ["a", "b", "c", "d", "e"] {
        opened(&store, stream).await;
    }
    let at_two = account("b", 1, vec![deposit(0)]);
    store.append(at_two).await.expect("b at version 2");
    let (blocker, held) = hold(&t, &store).await;
    let a = queue(&store, account("a", 1, vec![deposit(5)])).await;
    // Stale, as after a lost race: `b` is at version 2.
    let stale = queue(&store, account("b", 1, vec![deposit(7)])).await;
    let c = queue(&store, account("c", 1, vec![deposit(1), deposit(2)])).await;
    // Ahead of its stream, and "new" for a stream that exists.
    let ahead = queue(&store, account("e", 4, vec![deposit(7)])).await;
    let exists = queue(&store, account("d", 0, vec![deposit(7)])).await;
    let new = queue(&store, account("n", 0, vec![deposit(9)])).await;
    let_them_queue().await;
    release(blocker, held).await;

    let a = a.await.expect("join").expect("a is written");
    let c = c.await.expect("join").expect("c is written");
    let new = new.await.expect("join").expect("n is written");
    for refused in [stale, ahead, exists] {
        let refused = refused.await.expect("join").expect_err("refused");
        assert!(refused.is_conflict(), "{refused:?}");
    }
    check_written(&t, "a", &a, 2, 2).await;
    check_written(&t, "c", &c, 2, 3).await;
    check_written(&t, "n", &new, 1, 1).await;
    assert_eq!(transactions(&t, "b").await.len(), 2, "nothing more in b");
    assert_eq!(transactions(&t, "d").await.len(), 1, "nothing more in d");
    assert_eq!(transactions(&t, "e").await.len(), 1, "nothing more in e");
    // One statement: one transaction for all of them.
    let shared = a.position.commit();
    assert_eq!(c.position.commit(), shared);
    assert_eq!(new.position.commit(), shared);
    assert_eq!(transactions(&t, "c").await[1..], [shared, shared]);
    // In the order they were made, c's two events in their order.
    assert!(a.position < c.position && c.position < new.position);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_fails_is_sent_again_one_append_at_a_time() {
    let t = TestStore::new("batch_fallback").await;
    let store = one_at_a_time(&t);
    let taken = deposit(1);
    store
        .append(account("first", 0, vec![taken.clone()]))
        .await
        .expect("first");
    let (blocker, held) = hold(&t, &store).await;
    let a = queue(&store, account("a", 0, vec![deposit(5)])).await;
    // Its event id is taken: the whole statement fails on the log's key.
    let reused = queue(
        &store,
        account("reused", 0, vec![deposit(2), taken.clone()]),
    )
    .await;
    let c = queue(&store, account("c", 0, vec![deposit(3)])).await;
    let_them_queue().await;
    release(blocker, held).await;

    let a = a.await.expect("join").expect("a is written");
    let c = c.await.expect("join").expect("c is written");
    match reused.await.expect("join") {
        Err(cqrs_core::Error::DuplicateEventId { event_id }) => {
            assert_eq!(event_id, taken.event_id);
        }
        other => panic!("expected the taken event id, got {other:?}"),
    }
    check_written(&t, "a", &a, 1, 1).await;
    check_written(&t, "c", &c, 1, 1).await;
    assert!(
        transactions(&t, "reused").await.is_empty(),
        "nothing of it written"
    );
    assert_ne!(a.position.commit(), c.position.commit(), "sent one by one");
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_sql_failure_refuses_only_the_append_it_came_from() {
    let t = TestStore::new("batch_inline_sql").await;
    let view = t.sql("{schema}.balances");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {view} (account text PRIMARY KEY, balance bigint NOT NULL)"
    )))
    .execute(t.pool())
    .await
    .expect("create the view");
    let balances = PgInlineSql::new(
        "balances",
        format!(
            "INSERT INTO {view} AS b (account, balance) \
             SELECT stream_id, sum((payload->>'amount')::bigint) FROM appended \
             WHERE stream_type = 'account' GROUP BY stream_id \
             ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance"
        ),
    )
    .expect("valid inline SQL");
    let store = common::reconfigured(&one_at_a_time(&t), |b| b.inline_sql(balances));
    let (blocker, held) = hold(&t, &store).await;
    let a = queue(&store, account("a", 0, vec![deposit(5)])).await;
    let lots = NewEvent::new("Deposited", 1, json!({ "amount": "lots" }));
    let bad = queue(&store, account("bad", 0, vec![lots])).await;
    let c = queue(&store, account("c", 0, vec![deposit(3), deposit(4)])).await;
    let_them_queue().await;
    release(blocker, held).await;

    let a = a.await.expect("join").expect("a is written");
    let c = c.await.expect("join").expect("c is written");
    let bad = bad
        .await
        .expect("join")
        .expect_err("its payload cannot be cast");
    assert!(
        matches!(
            cqrs_postgres::Error::from_store(&bad),
            Some(cqrs_postgres::Error::InlineSql { .. })
        ),
        "not the inline SQL's failure: {bad:?}"
    );
    check_written(&t, "a", &a, 1, 1).await;
    check_written(&t, "c", &c, 1, 2).await;
    assert!(transactions(&t, "bad").await.is_empty());
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT account, balance FROM {view} ORDER BY account"
    )))
    .fetch_all(t.pool())
    .await
    .expect("read the view");
    assert_eq!(rows, [("a".to_owned(), 5), ("c".to_owned(), 7)]);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_caller_gave_up_while_it_waited_is_not_sent() {
    let t = TestStore::new("batch_gave_up").await;
    let store = one_at_a_time(&t);
    let (blocker, held) = hold(&t, &store).await;
    let abandoned = queue(&store, account("abandoned", 0, vec![deposit(5)])).await;
    let kept = queue(&store, account("kept", 0, vec![deposit(3)])).await;
    let_them_queue().await;
    abandoned.abort();
    assert!(abandoned.await.is_err_and(|e| e.is_cancelled()));
    release(blocker, held).await;

    let kept = kept.await.expect("join").expect("kept is written");
    check_written(&t, "kept", &kept, 1, 1).await;
    assert!(transactions(&t, "abandoned").await.is_empty());
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_their_own_streams_are_batched_and_exact() {
    let t = TestStore::new("batch_writers").await;
    let store = t.store.clone();
    assert_eq!(store.tuning().append_batches, 1, "the default");
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..32 {
        let store = store.clone();
        writers.spawn(async move {
            let stream = format!("w{writer}");
            let mut outcomes = Vec::new();
            for version in 0..25 {
                let outcome = store
                    .append(account(&stream, version, vec![deposit(1)]))
                    .await
                    .expect("each writer owns its stream");
                outcomes.push(outcome);
            }
            (stream, outcomes)
        });
    }
    let mut commits = HashSet::new();
    let mut events = 0;
    while let Some(joined) = writers.join_next().await {
        let (stream, outcomes) = joined.expect("writer");
        let log = t.store.load("account", &stream, 0).await.expect("load");
        assert_eq!(log.len(), outcomes.len(), "{stream}: each append once");
        for (event, outcome) in log.iter().zip(&outcomes) {
            assert_eq!(event.stream_version, outcome.stream_version);
            assert_eq!(event.position, outcome.position);
            commits.insert(outcome.position.commit());
        }
        events += log.len();
    }
    assert!(
        commits.len() < events,
        "some appends shared a statement: {} transactions for {events} appends",
        commits.len()
    );
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_whose_statement_was_dropped_by_its_sender_are_sent_again() {
    let t = TestStore::new("batch_dropped").await;
    let store = one_at_a_time(&t);
    let (holder, held) = hold(&t, &store).await;
    // The first to wait sends the next statement, for `s`, `b` and `torture/second`, in
    // that order. It writes `s` and `b`, then waits on the server for `second`, and its
    // caller gives up meanwhile.
    let second = common::hold_stream(&t, "second").await;
    let sender = queue(&store, account("s", 0, vec![deposit(1)])).await;
    let_them_queue().await;
    let b = queue(&store, account("b", 0, vec![deposit(2), deposit(3)])).await;
    let_them_queue().await;
    let waits = queue(
        &store,
        AppendRequest::new("torture", "second", 0, vec![deposit(4)]),
    )
    .await;
    let_them_queue().await;
    release(holder, held).await;
    common::until_waiting_on_a_lock(t.pool(), store.schema()).await;
    sender.abort();
    assert!(sender.await.is_err_and(|e| e.is_cancelled()));
    // Whether the dropped statement commits is unknown to the others: each is sent again
    // (and waits, now, behind it); once `second` is free, each is written once, by the
    // dropped statement or by its own.
    let_them_queue().await;
    second.rollback().await.expect("rollback");
    let b = b.await.expect("join").expect("b is written");
    let waits = waits.await.expect("join").expect("second is written");
    check_written(&t, "b", &b, 1, 2).await;
    assert_eq!(waits.stream_version, 1);
    let log = t.store.load("torture", "second", 0).await.expect("load");
    assert_eq!(log.len(), 1, "second written once");
    assert_eq!(log[0].position, waits.position);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_ids_sent_together_are_recorded_and_repeated_ones_return_the_original() {
    let t = TestStore::new("batch_command_ids").await;
    let store = one_at_a_time(&t);
    let (known, fresh) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let original = store
        .append(account("done", 0, vec![deposit(1)]).with_command_id(known))
        .await
        .expect("the original");
    let (holder, held) = hold(&t, &store).await;
    let x = queue(
        &store,
        account("x", 0, vec![deposit(2)]).with_command_id(fresh),
    )
    .await;
    // Its command id is recorded: the original outcome, though at `done`'s current
    // version it would be written without one.
    let repeat = queue(
        &store,
        account("done", 1, vec![deposit(3)]).with_command_id(known),
    )
    .await;
    let plain = queue(&store, account("p", 0, vec![deposit(4)])).await;
    // The same command id as `x`, for another stream: it waits for the next statement,
    // and is refused there, naming `x`'s stream.
    let twin = queue(
        &store,
        account("y", 0, vec![deposit(5)]).with_command_id(fresh),
    )
    .await;
    let_them_queue().await;
    release(holder, held).await;

    let x = x.await.expect("join").expect("x is written");
    let plain = plain.await.expect("join").expect("p is written");
    let repeat = repeat.await.expect("join").expect("the original outcome");
    let twin = twin.await.expect("join");
    check_written(&t, "x", &x, 1, 1).await;
    check_written(&t, "p", &plain, 1, 1).await;
    assert_eq!(
        x.position.commit(),
        plain.position.commit(),
        "one statement"
    );
    let recorded = t
        .store
        .find_command(fresh, "account", "x")
        .await
        .expect("find")
        .expect("x's command id is recorded");
    assert_eq!(recorded.position, x.position);
    assert!(repeat.duplicate);
    assert_eq!(repeat.position, original.position);
    assert_eq!((repeat.first_version, repeat.stream_version), (1, 1));
    match twin {
        Err(cqrs_core::Error::CommandIdInUse {
            command_id,
            stream_id,
            ..
        }) => assert_eq!((command_id, stream_id.as_str()), (fresh, "x")),
        other => panic!("expected the command id refused, naming x, got {other:?}"),
    }
    assert_eq!(
        transactions(&t, "done").await.len(),
        1,
        "nothing more in done"
    );
    assert!(transactions(&t, "y").await.is_empty(), "nothing in y");
    t.cleanup().await;
}
