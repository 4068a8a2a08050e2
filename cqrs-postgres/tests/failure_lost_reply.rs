//! The reply to a committed append is lost on the way back: the client cannot know
//! whether the append went through. The store sends it again, finds its own events in
//! the log, and reports the append as written, once.
//!
//! A small TCP proxy sits between the store and the server and, when told to, drops the
//! next reply from the server together with the connection.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::TestStore;
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventStore, Projection};
use cqrs_postgres::{PgEventStore, PgEventStoreBuilder, PgNotify, PgStoreTuning};
use serde_json::json;
use sqlx::PgConnection;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards connections to the server; when `cut` is set, the next chunk the server sends
/// on any of them is dropped, and that connection closed.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let armed = Arc::clone(&cut);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(server).await else {
                    continue;
                };
                tokio::spawn(forward(client, server, Arc::clone(&armed)));
            }
        });
        Self { port, cut }
    }

    /// Drops the next reply.
    fn cut_next_reply(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    fn reply_was_cut(&self) -> bool {
        !self.cut.load(Ordering::SeqCst)
    }
}

async fn forward(client: TcpStream, server: TcpStream, cut: Arc<AtomicBool>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let up = tokio::io::copy(&mut from_client, &mut to_server);
    let down = async {
        let mut buffer = vec![0_u8; 64 * 1024];
        loop {
            let n = from_server.read(&mut buffer).await?;
            if n == 0 || cut.swap(false, Ordering::SeqCst) {
                return Ok::<(), std::io::Error>(());
            }
            to_client.write_all(&buffer[..n]).await?;
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    // Both halves of both sockets are dropped here: the connection is gone.
}

/// A store in `t`'s schema whose connections go through `proxy`; one command connection,
/// so that its statements are prepared by the first append and the cut reply is the one
/// of the append itself (sent after its commit); `configure` adds to its settings.
async fn through(
    t: &TestStore,
    proxy: &Proxy,
    configure: impl FnOnce(PgEventStoreBuilder) -> PgEventStoreBuilder,
) -> PgEventStore {
    let options = common::connect_options(t.store.schema()).port(proxy.port);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .expect("connect through the proxy");
    let builder = PgEventStore::builder(pool)
        .schema(t.store.schema())
        .notify(PgNotify::Off)
        .tuning(PgStoreTuning::default().command_connections(1));
    configure(builder).build().expect("valid schema")
}

fn server() -> SocketAddr {
    let url = common::database_url();
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("DATABASE_URL");
    let host = match options.get_host() {
        "localhost" => "127.0.0.1",
        host => host,
    };
    format!("{host}:{}", options.get_port())
        .parse()
        .expect("the server's address is an IP address")
}

fn one(n: u64) -> NewEvent {
    NewEvent::new("Numbered", 1, json!({ "n": n }))
}

async fn stored_ids(t: &TestStore, stream: &str) -> Vec<uuid::Uuid> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(t.sql(
        "SELECT event_id FROM {schema}.events WHERE stream_id = $1 ORDER BY stream_version",
    )))
    .bind(stream)
    .fetch_all(t.pool())
    .await
    .expect("read the log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_reply_is_lost_is_reported_written_once() {
    let t = TestStore::new("lostreply").await;
    let proxy = Proxy::start(server()).await;
    let store = through(&t, &proxy, |b| b).await;

    let first = one(1);
    store
        .append(AppendRequest::new("lost", "l-1", 0, vec![first.clone()]))
        .await
        .expect("first append");

    // Two events; the server commits them, the reply never arrives.
    let (second, third) = (one(2), one(3));
    proxy.cut_next_reply();
    let outcome = store
        .append(AppendRequest::new(
            "lost",
            "l-1",
            1,
            vec![second.clone(), third.clone()],
        ))
        .await
        .expect("the append is found written");
    assert!(proxy.reply_was_cut());
    assert_eq!((outcome.first_version, outcome.stream_version), (2, 3));
    assert!(!outcome.duplicate);
    assert_eq!(
        stored_ids(&t, "l-1").await,
        vec![first.event_id, second.event_id, third.event_id],
        "written once"
    );
    let log = t.store.load("lost", "l-1", 0).await.expect("load");
    assert_eq!(log[2].position, outcome.position);

    // A load whose reply is lost (this connection's first, whose statement is prepared
    // first) is read again.
    proxy.cut_next_reply();
    let loaded = store
        .load_for_command("lost", "l-1", 1)
        .await
        .expect("the load goes through");
    assert!(proxy.reply_was_cut());
    assert_eq!(loaded.events.len(), 3);

    // A stale append whose reply is lost is still a conflict: its events are not there.
    proxy.cut_next_reply();
    let stale = store
        .append(AppendRequest::new("lost", "l-1", 1, vec![one(5)]))
        .await
        .expect_err("stale expected version");
    assert!(proxy.reply_was_cut());
    assert!(stale.is_conflict(), "{stale:?}");
    assert_eq!(stored_ids(&t, "l-1").await.len(), 3);
    t.cleanup().await;
}

/// An inline projection that counts the events it is handed and, once, has the proxy
/// drop the next reply: the one to the transaction's `COMMIT`.
#[derive(Clone)]
struct CutsTheCommit {
    handled: Arc<AtomicUsize>,
    cut: Arc<AtomicBool>,
    armed: Arc<AtomicBool>,
}

impl Projection for CutsTheCommit {
    const NAME: &'static str = "cuts_the_commit";
    type Event = common::counter::Added;
    type Context = PgConnection;
    type Error = std::convert::Infallible;

    async fn handle(
        &mut self,
        _cx: &mut PgConnection,
        _event: &EventEnvelope<common::counter::Added>,
    ) -> Result<(), Self::Error> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        if self.armed.swap(false, Ordering::SeqCst) {
            self.cut.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl cqrs_postgres::PgView for CutsTheCommit {
    /// It keeps no table: nothing to empty.
    async fn reset(&mut self, _: &mut PgConnection) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_append_whose_commit_reply_is_lost_is_reported_written_once() {
    let t = TestStore::new("lostcommit").await;
    let proxy = Proxy::start(server()).await;
    let projection = CutsTheCommit {
        handled: Arc::default(),
        cut: Arc::clone(&proxy.cut),
        armed: Arc::default(),
    };
    let store = through(&t, &proxy, |b| b.inline(projection.clone())).await;
    let added = |amount: u64| NewEvent::new("Added", 2, json!({ "amount": amount }));

    store
        .append(AppendRequest::new("counter", "c-1", 0, vec![added(1)]))
        .await
        .expect("first append");
    projection.armed.store(true, Ordering::SeqCst);
    let second = added(2);
    let outcome = store
        .append(AppendRequest::new(
            "counter",
            "c-1",
            1,
            vec![second.clone()],
        ))
        .await
        .expect("the append is found written");
    assert!(proxy.reply_was_cut());
    assert_eq!(outcome.stream_version, 2);
    assert_eq!(stored_ids(&t, "c-1").await.len(), 2);
    assert_eq!(stored_ids(&t, "c-1").await[1], second.event_id);
    // Sent again, the append ran into the committed one before its handlers: each event
    // was handled once.
    assert_eq!(projection.handled.load(Ordering::SeqCst), 2);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_command_id_after_a_lost_reply_returns_the_original() {
    let t = TestStore::new("lostcmd").await;
    let proxy = Proxy::start(server()).await;
    let store = through(&t, &proxy, |b| b).await;
    store
        .append(AppendRequest::new("lost", "l-1", 0, vec![one(1)]))
        .await
        .expect("first append");
    let command_id = uuid::Uuid::new_v4();
    proxy.cut_next_reply();
    let outcome = store
        .append(AppendRequest::new("lost", "l-1", 1, vec![one(2)]).with_command_id(command_id))
        .await
        .expect("the append");
    assert!(proxy.reply_was_cut());
    // Sent again with its command id, the append found its own first attempt: for this
    // caller, the append that wrote the events, not a duplicate of an earlier one.
    assert!(!outcome.duplicate);
    assert_eq!(outcome.stream_version, 2);
    assert_eq!(stored_ids(&t, "l-1").await.len(), 2);
    let recorded = t
        .store
        .find_command(command_id, "lost", "l-1")
        .await
        .expect("find")
        .expect("recorded");
    assert_eq!(recorded.position, outcome.position);

    // The same command id sent by the caller again is a duplicate, as always.
    let again = store
        .append(AppendRequest::new("lost", "l-1", 1, vec![one(2)]).with_command_id(command_id))
        .await
        .expect("the repeated command");
    assert!(again.duplicate);
    assert_eq!(again.position, outcome.position);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_sql_view_counts_an_append_whose_reply_is_lost_once() {
    let t = TestStore::new("lostsql").await;
    let proxy = Proxy::start(server()).await;
    sqlx::query(sqlx::AssertSqlSafe(t.sql(
        "CREATE TABLE {schema}.counted (stream_id text PRIMARY KEY, events bigint NOT NULL)",
    )))
    .execute(t.pool())
    .await
    .expect("create the view");
    let counted = cqrs_postgres::PgInlineSql::new(
        "counted",
        t.sql(
            "INSERT INTO {schema}.counted AS c (stream_id, events) \
             SELECT stream_id, count(*) FROM appended GROUP BY stream_id \
             ON CONFLICT (stream_id) DO UPDATE SET events = c.events + excluded.events",
        ),
    )
    .expect("a valid statement");
    let store = through(&t, &proxy, |b| b.inline_sql(counted)).await;

    store
        .append(AppendRequest::new("lost", "l-1", 0, vec![one(1)]))
        .await
        .expect("first append");
    proxy.cut_next_reply();
    let outcome = store
        .append(AppendRequest::new("lost", "l-1", 1, vec![one(2), one(3)]))
        .await
        .expect("the append is found written");
    assert!(proxy.reply_was_cut());
    assert_eq!(outcome.stream_version, 3);
    let events: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(
        t.sql("SELECT events FROM {schema}.counted WHERE stream_id = 'l-1'"),
    ))
    .fetch_one(t.pool())
    .await
    .expect("read the view");
    assert_eq!(events, 3, "the view counted each event once");
    assert_eq!(stored_ids(&t, "l-1").await.len(), 3);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_sent_together_whose_reply_is_lost_are_each_reported_written_once() {
    let t = TestStore::new("lostbatch").await;
    let proxy = Proxy::start(server()).await;
    // One statement at a time: while one append waits on the server, the next ones queue
    // and go out together.
    let store = through(&t, &proxy, |b| {
        b.tuning(
            PgStoreTuning::default()
                .command_connections(1)
                .append_batches(1),
        )
    })
    .await;
    let append = |stream_id: &'static str, expected: u64, events: Vec<NewEvent>| {
        let store = store.clone();
        let mut request = AppendRequest::new("torture", stream_id, expected, events);
        // One of them with a command id: sent again, it finds its own first attempt.
        if stream_id == "b" {
            request = request.with_command_id(uuid::Uuid::new_v4());
        }
        tokio::spawn(async move { store.append(request).await })
    };
    let first = common::hold_stream(&t, "first").await;
    let held = append("first", 0, vec![one(1)]);
    common::until_waiting_on_a_lock(t.pool(), t.store.schema()).await;
    // The statement these three share will wait on the server too, for `second`.
    let second = common::hold_stream(&t, "second").await;
    let sent = [
        (append("second", 0, vec![one(2)]), "second", 1),
        (append("a", 0, vec![one(3)]), "a", 1),
        (append("b", 0, vec![one(4), one(5)]), "b", 2),
    ];
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    first.rollback().await.expect("rollback");
    held.await.expect("join").expect("the held append");
    common::until_waiting_on_a_lock(t.pool(), t.store.schema()).await;
    // The shared statement commits once `second` is free; its reply never arrives.
    proxy.cut_next_reply();
    second.rollback().await.expect("rollback");

    let mut commits = Vec::new();
    for (task, stream, events) in sent {
        let outcome = task.await.expect("join").expect("found written");
        assert_eq!(outcome.stream_version, events, "{stream}");
        assert!(!outcome.duplicate);
        assert_eq!(
            stored_ids(&t, stream).await.len() as u64,
            events,
            "{stream} once"
        );
        let log = t.store.load("torture", stream, 0).await.expect("load");
        assert_eq!(log.last().map(|e| e.position), Some(outcome.position));
        commits.push(outcome.position.commit());
    }
    assert!(proxy.reply_was_cut());
    assert!(
        commits.iter().all(|commit| *commit == commits[0]),
        "the three were written by the one statement: {commits:?}"
    );
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_unit_whose_reply_is_lost_is_reported_written_once() {
    use cqrs_core::store::AtomicAppendRequest;
    let t = TestStore::new("lostunit").await;
    let proxy = Proxy::start(server()).await;
    let store = through(&t, &proxy, |b| b).await;
    let unit = |a: u64, b: u64, events: [NewEvent; 2]| {
        let [x, y] = events;
        AtomicAppendRequest::new(vec![
            AppendRequest::new("lost", "u-a", a, vec![x]),
            AppendRequest::new("lost", "u-b", b, vec![y]),
        ])
    };
    // The first unit prepares the statement on the store's one connection.
    store
        .append_atomic(unit(0, 0, [one(1), one(2)]))
        .await
        .expect("first unit");

    // Committed, its reply cut: found by its events, reported written once.
    let (a, b) = (one(3), one(4));
    proxy.cut_next_reply();
    let outcomes = store
        .append_atomic(unit(1, 1, [a.clone(), b.clone()]))
        .await
        .expect("the unit is found written");
    assert!(proxy.reply_was_cut());
    let shape: Vec<(u64, bool)> = outcomes
        .iter()
        .map(|o| (o.stream_version, o.duplicate))
        .collect();
    assert_eq!(shape, [(2, false), (2, false)]);
    assert_eq!(stored_ids(&t, "u-a").await[1], a.event_id);
    assert_eq!(stored_ids(&t, "u-b").await[1], b.event_id);

    // A stale unit whose reply is cut is still a conflict, and writes nothing.
    proxy.cut_next_reply();
    let stale = store
        .append_atomic(unit(2, 1, [one(5), one(6)]))
        .await
        .expect_err("u-b is at version 2");
    assert!(proxy.reply_was_cut());
    assert!(stale.is_conflict(), "{stale:?}");
    assert_eq!(stored_ids(&t, "u-a").await.len(), 2);

    // With a command id: sent again by the caller after a lost reply, the original.
    let command_id = uuid::Uuid::new_v4();
    proxy.cut_next_reply();
    let first = store
        .append_atomic(unit(2, 2, [one(7), one(8)]).with_command_id(command_id))
        .await
        .expect("written");
    let again = store
        .append_atomic(unit(2, 2, [one(9), one(10)]).with_command_id(command_id))
        .await
        .expect("the original outcomes");
    assert!(again.iter().all(|o| o.duplicate));
    assert_eq!(
        first.iter().map(|o| o.position).collect::<Vec<_>>(),
        again.iter().map(|o| o.position).collect::<Vec<_>>()
    );
    assert_eq!(stored_ids(&t, "u-a").await.len(), 3);
    assert_eq!(stored_ids(&t, "u-b").await.len(), 3);
    t.cleanup().await;
}
