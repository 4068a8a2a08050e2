//! Every subcommand of `cqrs-admin`, run as a process against a real PostgreSQL store in
//! a schema of its own: output, `--json`, and exit codes.

use std::process::{Command, Output};
use std::time::Duration;

use cqrs_admin::{Admin, exit};
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventStore, Metadata, Projection};
use cqrs_postgres::sqlx::{self, PgConnection};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

#[derive(Debug, Clone, Serialize, Deserialize, cqrs_core::Event)]
enum Ledger {
    Added { amount: i64 },
}

/// A view that refuses negative amounts: a projection to fail, retry, skip, rebuild.
#[derive(Debug, Default)]
struct Totals;

#[derive(Debug)]
struct Negative(i64);

/// Once set, the view takes negative amounts too (the bug is fixed).
static HEALED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl std::fmt::Display for Negative {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a negative amount: {}", self.0)
    }
}

impl std::error::Error for Negative {}

impl Projection for Totals {
    const NAME: &'static str = "totals";
    type Event = Ledger;
    type Context = PgConnection;
    type Error = Negative;

    async fn handle(
        &mut self,
        _: &mut PgConnection,
        event: &EventEnvelope<Ledger>,
    ) -> Result<(), Negative> {
        let Ledger::Added { amount } = event.payload;
        if amount < 0 && !HEALED.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Negative(amount));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}

/// A store in a schema of its own, dropped at the end.
struct Fixture {
    store: PgEventStore,
}

impl Fixture {
    async fn new() -> Self {
        let schema = format!("admin_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url())
            .await
            .expect("connect");
        let store = PgEventStore::builder(pool)
            .schema(&schema)
            .build()
            .expect("store");
        store.migrate().await.expect("migrate");
        Self { store }
    }

    async fn append(&self, stream: &str, expected: u64, events: Vec<NewEvent>) {
        self.store
            .append(AppendRequest::new("ledger", stream, expected, events))
            .await
            .expect("append");
    }

    async fn add(&self, stream: &str, expected: u64, amount: i64) {
        let event =
            NewEvent::from_event(&Ledger::Added { amount }, Metadata::default()).expect("encodes");
        self.append(stream, expected, vec![event]).await;
    }

    fn admin(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cqrs-admin"))
            .env("DATABASE_URL", database_url())
            .arg("--schema")
            .arg(self.store.schema())
            .args(args)
            .output()
            .expect("cqrs-admin runs")
    }

    async fn cleanup(self) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{}\" CASCADE",
            self.store.schema()
        )))
        .execute(self.store.pool())
        .await
        .expect("drop schema");
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn code(output: &Output) -> u8 {
    output
        .status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(u8::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_events_and_tail() {
    let f = Fixture::new().await;
    f.add("a", 0, 1).await;
    f.add("a", 1, 2).await;
    f.add("b", 0, 3).await;
    f.add("c", 0, 4).await;

    let page = f.admin(&["streams", "--type", "ledger", "--limit", "2"]);
    assert_eq!(code(&page), exit::OK, "{page:?}");
    let text = stdout(&page);
    assert!(text.starts_with("TYPE"), "{text}");
    assert!(text.contains("ledger  a   2"), "{text}");
    assert!(text.contains("next page: --after 'ledger/b'"), "{text}");
    let next = f.admin(&["streams", "--after", "ledger/b", "--json"]);
    let rest: Value = serde_json::from_slice(&next.stdout).expect("JSON");
    assert_eq!(rest.as_array().map(Vec::len), Some(1));
    assert_eq!(rest[0]["stream_id"], "c");
    let bad = f.admin(&["streams", "--after", "no-slash"]);
    assert_eq!(code(&bad), exit::USAGE);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("TYPE/ID"));

    let events = f.admin(&["events", "ledger", "a"]);
    assert_eq!(code(&events), exit::OK);
    let text = stdout(&events);
    assert!(text.contains("#1  Added v1"), "{text}");
    assert!(text.contains("payload   {\"amount\":2}"), "{text}");
    let events = f.admin(&["events", "ledger", "a", "--after", "1", "--json"]);
    let parsed: Value = serde_json::from_slice(&events.stdout).expect("JSON");
    assert_eq!(parsed[0]["stream_version"], 2);
    assert_eq!(parsed[0]["payload"]["amount"], 2);
    assert_eq!(
        code(&f.admin(&["events", "ledger", "nobody"])),
        exit::NOTHING
    );

    let tail = f.admin(&["tail", "--from", "0.0", "--count", "3", "--json"]);
    assert_eq!(code(&tail), exit::OK);
    let lines: Vec<Value> = stdout(&tail)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON document per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["stream_id"], "b");
    // Live: a tail from the end sees an append made after it started.
    let store = f.store.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let event = NewEvent::from_event(&Ledger::Added { amount: 9 }, Metadata::default())
            .expect("encodes");
        store
            .append(AppendRequest::new("ledger", "late", 0, vec![event]))
            .await
            .expect("append");
    });
    let live = tokio::task::spawn_blocking({
        let schema = f.store.schema().to_owned();
        move || {
            Command::new(env!("CARGO_BIN_EXE_cqrs-admin"))
                .env("DATABASE_URL", database_url())
                .args(["--schema", &schema, "tail", "--count", "1"])
                .output()
                .expect("runs")
        }
    })
    .await
    .expect("joined");
    writer.await.expect("appended");
    assert!(
        stdout(&live).contains("ledger/late#1  Added v1"),
        "{live:?}"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_projection_is_shown_retried_skipped_and_rebuilt() {
    let f = Fixture::new().await;
    assert_eq!(stdout(&f.admin(&["projections"])).trim(), "no projections");
    let runner = PgProjectionRunner::builder(f.store.clone())
        .tuning(PgRunnerTuning::default().poll_interval(Duration::from_millis(50)))
        .retries(1, Duration::from_millis(10))
        .projection(Totals)
        .start()
        .await
        .expect("runner");
    f.add("a", 0, 1).await;
    f.add("poison", 0, -5).await;
    f.add("a", 1, 2).await;

    let mut shown = None;
    for _ in 0..100 {
        let output = f.admin(&["projections"]);
        if code(&output) == exit::PROBLEMS {
            shown = Some(output);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = shown.expect("the projection fails and `projections` exits 4");
    let text = stdout(&shown);
    assert!(text.contains("totals v1 FAILED at"), "{text}");
    assert!(text.contains("a negative amount: -5"), "{text}");
    assert!(text.contains("event ledger/poison#1  Added v1"), "{text}");
    let listed: Value =
        serde_json::from_slice(&f.admin(&["projections", "--json"]).stdout).expect("JSON");
    assert_eq!(listed[0]["state"], "failed");
    assert_eq!(listed[0]["failed_event"]["stream_id"], "poison");

    // Retry: it fails again on the same event.
    let retried = f.admin(&["retry", "totals"]);
    assert_eq!(code(&retried), exit::OK, "{retried:?}");
    assert!(stdout(&retried).contains("totals v1: retrying"));
    // Skip: it goes on past it.
    let mut skipped = false;
    for _ in 0..100 {
        let output = f.admin(&["skip", "totals"]);
        if code(&output) == exit::OK {
            assert!(stdout(&output).contains("skipped the event at"));
            skipped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        skipped,
        "the retried projection failed again and was skipped"
    );
    let mut healthy = false;
    for _ in 0..100 {
        if code(&f.admin(&["projections"])) == exit::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthy, "after the skip, `projections` exits 0");
    assert_eq!(code(&f.admin(&["retry", "totals"])), exit::NOTHING);
    assert_eq!(code(&f.admin(&["skip", "nothing"])), exit::NOTHING);

    // Rebuild with progress (plain lines on a pipe): the poison event is met again,
    // and the rebuild ends in the failure, exit 4, with the event shown.
    for i in 0..200 {
        f.add(&format!("bulk-{i}"), 0, 1).await;
    }
    let rebuilt = f.admin(&["rebuild", "totals", "--timeout", "60"]);
    let text = stdout(&rebuilt);
    assert_eq!(code(&rebuilt), exit::PROBLEMS, "{rebuilt:?}");
    assert!(text.contains("rebuild requested"), "{text}");
    assert!(text.contains("event ledger/poison#1"), "{text}");
    let progress = String::from_utf8_lossy(&rebuilt.stderr);
    assert!(
        progress.contains("totals v1: "),
        "progress lines: {progress}"
    );
    // The view is fixed: retried, the rebuild goes on; a new rebuild runs to the end.
    HEALED.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(code(&f.admin(&["retry", "totals"])), exit::OK);
    let rebuilt = f.admin(&["rebuild", "totals", "--timeout", "60"]);
    let text = stdout(&rebuilt);
    assert_eq!(code(&rebuilt), exit::OK, "{rebuilt:?}");
    assert!(text.contains("totals v1: rebuilt (203 events in"), "{text}");
    let progress = String::from_utf8_lossy(&rebuilt.stderr);
    assert!(
        progress.contains("(203/203 events)"),
        "progress lines: {progress}"
    );
    let waited = f.admin(&["rebuild", "totals", "--no-wait"]);
    assert_eq!(code(&waited), exit::OK);
    // `progress` follows a version until it is served: this one is already.
    let served = f.admin(&["progress", "totals", "--version", "1", "--timeout", "30"]);
    assert_eq!(code(&served), exit::OK, "{served:?}");
    assert!(
        stdout(&served).contains("totals v1: served ("),
        "{served:?}"
    );
    let missing = f.admin(&["progress", "totals", "--version", "7", "--timeout", "1"]);
    assert_eq!(code(&missing), exit::NOTHING);
    assert!(stdout(&missing).contains("no projection totals v7"));
    assert_eq!(code(&f.admin(&["rebuild", "nothing"])), exit::NOTHING);
    runner.shutdown().await;
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_counts_and_finds_events_that_no_longer_decode() {
    let f = Fixture::new().await;
    f.add("a", 0, 1).await;
    f.add("a", 1, 2).await;
    // Written by an older program: a field the type no longer reads by that name.
    f.append(
        "b",
        0,
        vec![NewEvent::new("Added", 1, serde_json::json!({ "sum": 3 }))],
    )
    .await;

    let counts = f.admin(&["check"]);
    assert_eq!(code(&counts), exit::OK);
    let text = stdout(&counts);
    assert!(text.contains("Added  1        3      -"), "{text}");
    assert!(
        text.contains("no event types were built into this tool"),
        "{text}"
    );

    // Built with the event type, the tool decodes each event.
    let admin = Admin::new().event::<Ledger>();
    let mut out = Vec::new();
    let schema = f.store.schema().to_owned();
    let url = database_url();
    let checked = admin
        .run(
            [
                "cqrs-admin",
                "--database-url",
                &url,
                "--schema",
                &schema,
                "check",
            ],
            &mut out,
        )
        .await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(checked, exit::PROBLEMS, "{text}");
    assert!(text.contains("NO (1 failed)"), "{text}");
    assert!(
        text.contains("ledger/b#1 Added v1 does not decode"),
        "{text}"
    );
    let mut out = Vec::new();
    let shown = admin
        .run(
            [
                "cqrs-admin",
                "--database-url",
                &url,
                "--schema",
                &schema,
                "--json",
                "events",
                "ledger",
                "b",
            ],
            &mut out,
        )
        .await;
    assert_eq!(shown, exit::OK);
    let parsed: Value = serde_json::from_slice(&out).expect("JSON");
    assert!(
        parsed[0]["decodes"]
            .as_str()
            .is_some_and(|e| e.contains("amount")),
        "{parsed}"
    );
    f.cleanup().await;
}

/// Runs `cqrs-admin serve` on a free port, checks it says where, and answers what
/// `GET path` returned (status line, headers and body).
async fn served(f: &Fixture, path: &str) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut server = Command::new(env!("CARGO_BIN_EXE_cqrs-admin"))
        .env("DATABASE_URL", database_url())
        .args([
            "--schema",
            f.store.schema(),
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().expect("stdout")),
        &mut first,
    )
    .expect("its first line");
    assert!(
        first.contains(&format!("http://127.0.0.1:{port}/")),
        "{first}"
    );
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let fetched = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.write_all(request.as_bytes()).expect("request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        answer
    })
    .await
    .expect("joined");
    let _ = server.kill();
    let _ = server.wait();
    fetched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_messages_are_listed_with_their_errors() {
    let f = Fixture::new().await;
    // Before any consumer ran here: nothing, and no error.
    let shown = f.admin(&["parked"]);
    assert_eq!(code(&shown), exit::OK);
    assert_eq!(stdout(&shown).trim(), "no parked messages");
    cqrs_nats::migrate(&f.store)
        .await
        .expect("the consumers' tables");
    let mut tx = f.store.begin_in_schema().await.expect("tx");
    sqlx::query(
        "INSERT INTO nats_parked (consumer, stream, sequence, subject, payload, error) \
         VALUES ('billing', 'ORDERS', 7, 'orders.placed', 'not json'::bytea, 'the payload is not JSON')",
    )
    .execute(&mut *tx)
    .await
    .expect("a parked message");
    tx.commit().await.expect("commit");
    let shown = f.admin(&["parked"]);
    assert_eq!(code(&shown), exit::PROBLEMS);
    let text = stdout(&shown);
    assert!(
        text.contains("billing") && text.contains("orders.placed"),
        "{text}"
    );
    assert!(text.contains("the payload is not JSON"), "{text}");
    let shown = f.admin(&["--json", "parked"]);
    let parsed: serde_json::Value = serde_json::from_str(&stdout(&shown)).expect("JSON");
    assert_eq!(parsed[0]["sequence"], 7);
    assert_eq!(parsed[0]["payload"], "not json");
    // And on the status page's API.
    let fetched = served(&f, "/api/parked").await;
    assert!(fetched.starts_with("HTTP/1.1 200"), "{fetched}");
    assert!(
        fetched.contains("\"error\":\"the payload is not JSON\""),
        "{fetched}"
    );
    f.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_show_failing_commands_and_errors_exit_with_their_codes() {
    let f = Fixture::new().await;
    assert_eq!(
        stdout(&f.admin(&["processes"])).trim(),
        "no process managers"
    );
    let mut tx = f.store.begin_in_schema().await.expect("tx");
    sqlx::query(
        "INSERT INTO process_outbox (id, manager, key, command, attempts, last_error) \
         VALUES ($1, 'shipping', 'o-1', '{}', 3, 'the warehouse is down')",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&mut *tx)
    .await
    .expect("a failing command");
    tx.commit().await.expect("commit");
    let shown = f.admin(&["processes"]);
    assert_eq!(code(&shown), exit::PROBLEMS);
    let text = stdout(&shown);
    assert!(text.contains("shipping"), "{text}");
    assert!(text.contains("the warehouse is down"), "{text}");

    // `serve`: the page, its API and the metrics, until the process is stopped.
    let fetched = served(&f, "/api/processes").await;
    assert!(fetched.starts_with("HTTP/1.1 200"), "{fetched}");
    assert!(fetched.contains("\"manager\":\"shipping\""), "{fetched}");

    let unreachable = Command::new(env!("CARGO_BIN_EXE_cqrs-admin"))
        .args([
            "--database-url",
            "postgres://postgres@127.0.0.1:1/none",
            "projections",
        ])
        .output()
        .expect("runs");
    assert_eq!(code(&unreachable), exit::ERROR);
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect"));
    let usage = f.admin(&["frobnicate"]);
    assert_eq!(code(&usage), exit::USAGE);
    f.cleanup().await;
}
