//! Odd stream ids and large payloads round-trip unchanged: every value is a bind
//! parameter, none is spliced into SQL.

mod common;

use common::TestStore;
use cqrs_core::store::{AppendRequest, NewEvent, Snapshot};
use cqrs_core::{EventFilter, EventStore, Metadata, Position};
use serde_json::json;

fn odd_ids() -> Vec<String> {
    vec![
        "it's".to_owned(),
        "quote\"d".to_owned(),
        "back\\slash\\\\".to_owned(),
        "'); DROP TABLE events; --".to_owned(),
        "$1 $$ dollar $$".to_owned(),
        "ünïcödé ✓ 🦀 中文".to_owned(),
        "tab\tnew\nline\r".to_owned(),
        " leading and trailing ".to_owned(),
        "%_like_wildcards_%".to_owned(),
        "x".repeat(1024),
        "é".repeat(512),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_stream_ids_round_trip() {
    let t = TestStore::new("odd").await;
    let store = &t.store;
    let ids = odd_ids();
    for (i, id) in ids.iter().enumerate() {
        let mut metadata = Metadata::default();
        metadata.headers.insert("who\"'\\".to_owned(), id.clone());
        let event = NewEvent::new("Odd", 1, json!({ "id": id, "i": i })).with_metadata(metadata);
        let outcome = store
            .append(AppendRequest::new(
                "odd'type\\",
                id.as_str(),
                0,
                vec![event.clone()],
            ))
            .await
            .expect("append");
        assert_eq!(outcome.stream_version, 1);
        let loaded = store.load("odd'type\\", id, 0).await.expect("load");
        assert_eq!(loaded.len(), 1, "{id:?}");
        assert_eq!(&loaded[0].stream_id, id);
        assert_eq!(loaded[0].payload, event.payload);
        assert_eq!(loaded[0].metadata, event.metadata);
        store
            .save_snapshot(Snapshot {
                stream_type: "odd'type\\".to_owned(),
                stream_id: id.clone(),
                stream_version: 1,
                state_version: 1,
                state: json!({ "id": id }),
            })
            .await
            .expect("snapshot");
        let for_command = store
            .load_for_command("odd'type\\", id, 1)
            .await
            .expect("load for command");
        assert_eq!(
            for_command.snapshot.map(|s| s.state),
            Some(json!({ "id": id }))
        );
        assert!(for_command.events.is_empty());
    }
    // A prefix or a LIKE pattern of an id is another stream.
    assert!(
        store
            .load("odd'type\\", "it", 0)
            .await
            .expect("load")
            .is_empty()
    );
    assert!(
        store
            .load("odd'type\\", "%", 0)
            .await
            .expect("load")
            .is_empty()
    );

    // A read may stop short for a moment while a transaction elsewhere on the server
    // ends (the horizon errs on the side of waiting): read until every id is there.
    let filter = EventFilter::all().and_stream_type("odd'type\\");
    let mut read = Vec::new();
    for _ in 0..100 {
        let log = store
            .read_all(Position::START, 100, &filter)
            .await
            .expect("read_all");
        read = log.iter().map(|e| e.stream_id.clone()).collect::<Vec<_>>();
        if read.len() >= ids.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(read, ids);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_megabyte_payloads_round_trip() {
    let t = TestStore::new("big").await;
    let store = &t.store;
    let chunk = "quote\" backslash\\ unicode ✓ 🦀 ";
    let text: String = chunk.repeat(1024 * 1024 / chunk.len() + 1);
    let payload = json!({ "text": text, "nested": { "list": (0..1000).collect::<Vec<_>>() } });
    assert!(serde_json::to_vec(&payload).expect("json").len() > 1024 * 1024);
    let events = vec![
        NewEvent::new("Big", 1, payload.clone()),
        NewEvent::new("Big", 1, payload.clone()),
    ];
    store
        .append(AppendRequest::new("big", "b-1", 0, events))
        .await
        .expect("append");
    let loaded = store.load("big", "b-1", 0).await.expect("load");
    assert_eq!(loaded.len(), 2);
    assert!(loaded.iter().all(|e| e.payload == payload));
    let log = store
        .read_all(Position::START, 10, &EventFilter::all())
        .await
        .expect("read_all");
    assert!(log.iter().all(|e| e.payload == payload));
    t.cleanup().await;
}
