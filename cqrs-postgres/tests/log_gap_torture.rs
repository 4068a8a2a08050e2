//! The global log never skips an event whose transaction commits after a later-numbered
//! one: a transaction is held open after its append while other writers commit, then
//! many writers (some holding, some rolling back) race a polling reader.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Rng, TestStore, raw_append};
use cqrs_core::store::{AppendRequest, NewEvent, RecordedEvent};
use cqrs_core::{Error, EventFilter, EventStore, Position};
use serde_json::json;
use uuid::Uuid;

fn numbered(n: u64) -> NewEvent {
    NewEvent::new("Numbered", 1, json!({ "n": n }))
}

/// Reads from `position` to the current end, advancing it.
async fn read_on(store: &impl EventStore, position: &mut Position) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    loop {
        let batch = store
            .read_all(*position, 50, &EventFilter::all())
            .await
            .expect("read_all");
        let Some(last) = batch.last() else {
            return out;
        };
        *position = last.position;
        out.extend(batch);
    }
}

/// Keeps reading from `position` into `seen` until it holds `want` events or `timeout`
/// passes; returns whether it got there.
async fn read_until(
    store: &impl EventStore,
    position: &mut Position,
    seen: &mut Vec<RecordedEvent>,
    want: usize,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        seen.extend(read_on(store, position).await);
        if seen.len() >= want {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reader_does_not_pass_a_transaction_held_open_after_its_append() {
    let t = TestStore::new("gap").await;
    let store = &t.store;

    // Writer A appends with the store's own statement and keeps its transaction open.
    let held_id = Uuid::new_v4();
    let mut held = t.pool().begin().await.expect("begin");
    let held_position = raw_append(&mut held, &t, "held", 0, held_id)
        .await
        .expect("held append")
        .expect("no conflict");

    // Later writers commit while A is still open; their streams are readable at once.
    let mut later = Vec::new();
    for i in 0..5 {
        let outcome = store
            .append(AppendRequest::new(
                "torture",
                format!("later-{i}"),
                0,
                vec![numbered(i)],
            ))
            .await
            .expect("later append");
        assert!(
            outcome.position.commit() > u64::try_from(held_position.0).expect("xid"),
            "a later append got a smaller transaction id"
        );
        later.push(outcome.position);
    }
    assert_eq!(
        store
            .load("torture", "later-0", 0)
            .await
            .expect("load")
            .len(),
        1
    );

    // The global log shows none of them: they sort after the open transaction.
    let mut position = Position::START;
    let early = read_on(store, &mut position).await;
    assert!(
        early.is_empty(),
        "the reader passed an open transaction: {early:?}"
    );
    assert_eq!(store.head().await.expect("head"), Position::START);

    held.commit().await.expect("commit");

    // Once A commits, a reader resuming from its position gets all six, A first.
    let mut all = Vec::new();
    assert!(
        read_until(store, &mut position, &mut all, 6, Duration::from_secs(20)).await,
        "every event becomes readable"
    );
    assert_eq!(all.len(), 6, "each event exactly once");
    assert_eq!(all[0].event_id, held_id, "the held transaction sorts first");
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(store.head().await.expect("head"), all[5].position);
    assert_eq!(all[5].position, later[4]);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_append_never_shows_and_does_not_block_later_ones() {
    let t = TestStore::new("gaprb").await;
    let store = &t.store;
    let mut held = t.pool().begin().await.expect("begin");
    raw_append(&mut held, &t, "rolled-back", 0, Uuid::new_v4())
        .await
        .expect("held append")
        .expect("no conflict");
    let after = store
        .append(AppendRequest::new("torture", "after", 0, vec![numbered(1)]))
        .await
        .expect("append");
    let mut position = Position::START;
    assert!(read_on(store, &mut position).await.is_empty());
    held.rollback().await.expect("rollback");

    let mut events = Vec::new();
    assert!(
        read_until(
            store,
            &mut position,
            &mut events,
            1,
            Duration::from_secs(20)
        )
        .await,
        "the committed event becomes readable"
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].position, after.position);
    assert!(
        store
            .load("torture", "rolled-back", 0)
            .await
            .expect("load")
            .is_empty()
    );
    t.cleanup().await;
}

/// What the writers know they committed: event id -> (stream, version).
type Committed = Arc<Mutex<HashMap<Uuid, (String, u64)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_writers_and_a_polling_reader_see_every_event_once_in_stream_order() {
    const WRITERS: u64 = 16;
    const STREAMS: u64 = 24;
    let seconds = std::env::var("CQRS_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_u64);
    let seed = std::env::var("CQRS_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 7919 + 17);
    println!("torture: {seconds} s, seed {seed}");

    let t = Arc::new(TestStore::with_pool_size("torture", 20).await);
    let committed: Committed = Arc::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);

    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let t = Arc::clone(&t);
        let committed = Arc::clone(&committed);
        writers.spawn(async move {
            let mut rng = Rng::new(seed ^ (w + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (mut appended, mut conflicts, mut rolled_back) = (0_u64, 0_u64, 0_u64);
            while tokio::time::Instant::now() < deadline {
                let stream = format!("s{}", rng.below(STREAMS));
                let expected: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(t.sql(
                    "SELECT coalesce(max(stream_version), 0) FROM {schema}.events \
                     WHERE stream_type = 'torture' AND stream_id = $1",
                )))
                .bind(&stream)
                .fetch_one(t.pool())
                .await
                .expect("current version");
                let expected = u64::try_from(expected).expect("version");
                match rng.below(4) {
                    // A plain append: its own autocommitted statement.
                    0 | 1 => {
                        let events: Vec<NewEvent> = (0..=rng.below(3))
                            .map(|i| numbered(expected + i + 1))
                            .collect();
                        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                        match t
                            .store
                            .append(AppendRequest::new("torture", &stream, expected, events))
                            .await
                        {
                            Ok(outcome) => {
                                let mut known = committed.lock().expect("committed");
                                for (i, id) in ids.into_iter().enumerate() {
                                    let version = outcome.first_version + i as u64;
                                    known.insert(id, (stream.clone(), version));
                                }
                                appended += 1;
                            }
                            Err(Error::Conflict { .. }) => conflicts += 1,
                            Err(other) => panic!("append failed: {other:?}"),
                        }
                    }
                    // An append whose transaction stays open for a while, then commits
                    // or rolls back.
                    mode => {
                        let id = Uuid::new_v4();
                        let expected = i64::try_from(expected).expect("version");
                        let mut tx = t.pool().begin().await.expect("begin");
                        match raw_append(&mut tx, &t, &stream, expected, id).await {
                            Ok(Some(_)) => {
                                tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
                                if mode == 2 {
                                    tx.commit().await.expect("commit");
                                    let version = u64::try_from(expected + 1).expect("version");
                                    committed
                                        .lock()
                                        .expect("committed")
                                        .insert(id, (stream.clone(), version));
                                    appended += 1;
                                } else {
                                    tx.rollback().await.expect("rollback");
                                    rolled_back += 1;
                                }
                            }
                            Ok(None) => conflicts += 1,
                            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                                conflicts += 1;
                            }
                            Err(other) => panic!("held append failed: {other:?}"),
                        }
                    }
                }
            }
            (appended, conflicts, rolled_back)
        });
    }

    // The reader polls while the writers run, remembering only its position.
    let reader = {
        let t = Arc::clone(&t);
        tokio::spawn(async move {
            let mut position = Position::START;
            let mut seen = Vec::new();
            while tokio::time::Instant::now() < deadline {
                let batch = read_on(&t.store, &mut position).await;
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen.extend(batch);
            }
            (position, seen)
        })
    };

    let (mut appended, mut conflicts, mut rolled_back) = (0, 0, 0);
    while let Some(joined) = writers.join_next().await {
        let (a, c, r) = joined.expect("writer panicked");
        appended += a;
        conflicts += c;
        rolled_back += r;
    }
    let (mut position, mut seen) = reader.await.expect("reader panicked");
    let committed = committed.lock().expect("committed").clone();

    // Writers are done: drain what is left.
    let drained = read_until(
        &t.store,
        &mut position,
        &mut seen,
        committed.len(),
        Duration::from_secs(30),
    )
    .await;
    println!(
        "torture: {appended} appends, {conflicts} conflicts, {rolled_back} rollbacks, {} events committed, {} read",
        committed.len(),
        seen.len()
    );
    assert!(drained, "the reader never caught up");
    assert!(committed.len() > 100, "too little traffic to mean anything");
    assert!(rolled_back > 0, "no rolled-back append was exercised");

    // Every committed event exactly once, nothing else.
    let mut ids = HashSet::new();
    for event in &seen {
        assert!(
            ids.insert(event.event_id),
            "event {} read twice",
            event.event_id
        );
        assert!(
            committed.contains_key(&event.event_id),
            "event {} was never committed",
            event.event_id
        );
    }
    assert_eq!(ids.len(), committed.len(), "events were skipped");
    // Strictly growing positions, and each stream in version order with no gap.
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    for event in &seen {
        let last = versions.entry(event.stream_id.as_str()).or_insert(0);
        assert_eq!(
            event.stream_version,
            *last + 1,
            "stream {} out of order in the global log",
            event.stream_id
        );
        *last = event.stream_version;
        assert_eq!(
            committed[&event.event_id],
            (event.stream_id.clone(), event.stream_version)
        );
    }
    match Arc::try_unwrap(t) {
        Ok(t) => t.cleanup().await,
        Err(_) => panic!("store still shared"),
    }
}
