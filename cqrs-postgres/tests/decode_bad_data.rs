//! Stored data the code cannot read (written here with plain SQL) is a typed error that
//! names the stream, version and type; never a panic. Older schema versions are upcast.

mod common;

use std::time::Duration;

use common::TestStore;
use common::counter::{Added, Counter};
use cqrs_core::{CodecError, Cqrs, Error, EventFilter, EventStore, Position};
use serde_json::{Value, json};
use uuid::Uuid;

/// Inserts one event row with plain SQL, the way a faulty tool or migration might.
async fn insert(
    t: &TestStore,
    stream_id: &str,
    version: i64,
    event_type: &str,
    schema_version: i32,
    payload: Value,
    metadata: Value,
) {
    sqlx::query(sqlx::AssertSqlSafe(t.sql(
        "INSERT INTO {schema}.events \
         (stream_type, stream_id, stream_version, event_id, event_type, schema_version, payload, metadata) \
         VALUES ('counter', $1, $2, $3, $4, $5, $6, $7)",
    )))
    .bind(stream_id)
    .bind(version)
    .bind(Uuid::new_v4())
    .bind(event_type)
    .bind(schema_version)
    .bind(payload)
    .bind(metadata)
    .execute(t.pool())
    .await
    .expect("insert a raw row");
}

/// A bad stream: its id, the failing version, the stored type and schema version, and
/// a check of the cause.
type Case = (
    &'static str,
    u64,
    &'static str,
    u32,
    fn(&CodecError) -> bool,
);

/// Loads the aggregate through the command pipeline and returns its decode error.
async fn decode_error(cqrs: &Cqrs<Counter, cqrs_postgres::PgEventStore>, id: &str) -> Error {
    match cqrs.load(id).await {
        Ok(loaded) => panic!("stream {id} decoded: {loaded:?}"),
        Err(error) => error,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_typed_decode_errors_naming_stream_version_and_type() {
    let t = TestStore::new("bad").await;
    let cqrs = Cqrs::<Counter, _>::new(t.store.clone());
    let good = json!({ "amount": 1 });

    // An undecodable payload at version 2, after a good event.
    insert(&t, "payload", 1, "Added", 2, good.clone(), json!({})).await;
    insert(
        &t,
        "payload",
        2,
        "Added",
        2,
        json!({ "amount": "lots" }),
        json!({}),
    )
    .await;
    // An event type the code does not know.
    insert(&t, "type", 1, "Teleported", 1, json!({}), json!({})).await;
    // A schema version with no upcast path (newer than the code).
    insert(&t, "version", 1, "Added", 7, good.clone(), json!({})).await;
    // A v1 payload the upcaster refuses.
    insert(&t, "upcast", 1, "Added", 1, json!({ "m": 1 }), json!({})).await;
    // Metadata that is not the metadata shape.
    insert(
        &t,
        "metadata",
        1,
        "Added",
        2,
        good.clone(),
        json!({ "correlation_id": 5 }),
    )
    .await;

    let cases: [Case; 4] = [
        ("payload", 2, "Added", 2, |e| {
            matches!(e, CodecError::Payload { .. })
        }),
        ("type", 1, "Teleported", 1, |e| {
            matches!(e, CodecError::UnknownType { .. })
        }),
        ("version", 1, "Added", 7, |e| {
            matches!(
                e,
                CodecError::UnknownVersion {
                    version: 7,
                    current: 2,
                    ..
                }
            )
        }),
        ("upcast", 1, "Added", 1, |e| {
            matches!(e, CodecError::Upcast { from: 1, .. })
        }),
    ];
    for (id, version, event_type, schema_version, expected_source) in cases {
        match decode_error(&cqrs, id).await {
            Error::Decode {
                stream_type,
                stream_id,
                stream_version,
                event_type: stored_type,
                schema_version: stored_version,
                source,
                ..
            } => {
                assert_eq!(stream_type, "counter", "{id}");
                assert_eq!(stream_id, id);
                assert_eq!(stream_version, version, "{id}");
                assert_eq!(stored_type, event_type, "{id}");
                assert_eq!(stored_version, schema_version, "{id}");
                assert!(
                    expected_source(&source),
                    "{id}: unexpected cause {source:?}"
                );
            }
            other => panic!("{id}: expected a decode error, got {other:?}"),
        }
    }

    // Corrupt metadata fails every read that returns it, with the same typed error...
    match t.store.load("counter", "metadata", 0).await {
        Err(Error::Decode {
            stream_id,
            stream_version: 1,
            source,
            ..
        }) => {
            assert_eq!(stream_id, "metadata");
            assert!(matches!(*source, CodecError::Payload { .. }), "{source:?}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    // ...but not a command's load, which reads only what the fold needs.
    let loaded = cqrs
        .load("metadata")
        .await
        .expect("the fold ignores metadata");
    assert_eq!(loaded.version, 1);

    // The error text names all three.
    let text = decode_error(&cqrs, "payload").await.to_string();
    assert!(
        text.contains("counter/payload") && text.contains("Added") && text.contains("version 2"),
        "{text}"
    );

    // In the global log, events decode (or not) one by one. (The log only shows rows
    // below the oldest running transaction, and other tests run beside this one: wait
    // until all five are readable.)
    let mut log = Vec::new();
    for _ in 0..500 {
        log = t
            .store
            .read_all(Position::START, 5, &EventFilter::all())
            .await
            .expect("read_all");
        if log.len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let verdicts: Vec<(String, bool)> = log
        .iter()
        .map(|raw| (raw.stream_id.clone(), raw.decode::<Added>().is_ok()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("payload".to_owned(), true),
            ("payload".to_owned(), false),
            ("type".to_owned(), false),
            ("version".to_owned(), false),
            ("upcast".to_owned(), false),
        ]
    );
    // ...and a row whose envelope itself is corrupt stops the reader at that event with
    // the same typed error, instead of skipping it.
    let mut after_upcast = Ok(Vec::new());
    for _ in 0..500 {
        after_upcast = t
            .store
            .read_all(log[4].position, 5, &EventFilter::all())
            .await;
        if !matches!(&after_upcast, Ok(events) if events.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bad = match after_upcast {
        Err(Error::Decode {
            stream_id,
            stream_version: 1,
            position: Some(position),
            ..
        }) => {
            assert_eq!(stream_id, "metadata");
            position
        }
        other => panic!("expected a decode error naming its position, got {other:?}"),
    };
    // A reader that must go on steps over the event: it reads again after the position
    // the error names.
    let next = t
        .store
        .append(cqrs_core::store::AppendRequest::new(
            "counter",
            "next",
            0,
            vec![cqrs_core::store::NewEvent::new(
                "Added",
                2,
                json!({ "amount": 1 }),
            )],
        ))
        .await
        .expect("a good event after the bad one");
    let stepped = t
        .store
        .read_all(bad, 5, &EventFilter::all())
        .await
        .expect("read on after the bad event");
    assert_eq!(
        stepped.iter().map(|e| e.position).collect::<Vec<_>>(),
        [next.position],
        "the next event, and only it"
    );
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_schema_versions_are_upcast_on_read() {
    let t = TestStore::new("upcast").await;
    insert(&t, "mixed", 1, "Added", 1, json!({ "n": 5 }), json!({})).await;
    insert(
        &t,
        "mixed",
        2,
        "Added",
        2,
        json!({ "amount": 7 }),
        json!({}),
    )
    .await;
    let cqrs = Cqrs::<Counter, _>::new(t.store.clone());
    let loaded = cqrs.load("mixed").await.expect("load");
    assert_eq!(
        loaded.state,
        Counter {
            total: 12,
            events: 2
        }
    );
    assert_eq!(loaded.version, 2);
    // New events are written at the current version and read back alongside old ones.
    cqrs.execute("mixed", common::counter::Add(3))
        .await
        .expect("command");
    let events = t.store.load("counter", "mixed", 0).await.expect("load");
    assert_eq!(
        events.iter().map(|e| e.schema_version).collect::<Vec<_>>(),
        [1, 2, 2]
    );
    assert_eq!(cqrs.load("mixed").await.expect("load").state.total, 15);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_ahead_of_its_stream_is_refused_and_one_stored_anyway_is_ignored() {
    let t = TestStore::new("snapahead").await;
    let cqrs = Cqrs::<Counter, _>::new(t.store.clone());
    for _ in 0..2 {
        cqrs.execute("ahead", common::counter::Add(1))
            .await
            .expect("a command");
    }
    let snapshot = |version| cqrs_core::store::Snapshot {
        stream_type: "counter".to_owned(),
        stream_id: "ahead".to_owned(),
        stream_version: version,
        state_version: 1,
        state: json!({ "total": 99, "events": version }),
    };
    match t.store.save_snapshot(snapshot(10)).await {
        Err(Error::InvalidSnapshot { stream_id, .. }) => assert_eq!(stream_id, "ahead"),
        other => panic!("expected the snapshot refused, got {other:?}"),
    }
    // Written by something else: the pipeline ignores it and folds the stream.
    sqlx::query(sqlx::AssertSqlSafe(t.sql(
        "INSERT INTO {schema}.snapshots (stream_type, stream_id, stream_version, state_version, state) \
         VALUES ('counter', 'ahead', 10, 1, $1)",
    )))
    .bind(json!({ "total": 99, "events": 10 }))
    .execute(t.pool())
    .await
    .expect("plant a snapshot");
    let fresh = Cqrs::<Counter, _>::new(t.store.clone());
    let loaded = fresh.load("ahead").await.expect("load");
    assert_eq!(
        (loaded.version, loaded.state.total),
        (2, 2),
        "the snapshot is ignored"
    );
    let outcome = fresh
        .execute("ahead", common::counter::Add(1))
        .await
        .expect("commands go on, instead of conflicting forever");
    assert_eq!(outcome.stream_version, 3);
    t.cleanup().await;
}
