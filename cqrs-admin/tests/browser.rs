//! The status page in a real headless browser (Debian's chromium, driven through
//! chromedriver over WebDriver): it loads, shows a projection fall behind and catch up,
//! and a rebuild started with its button runs to the end with its progress shown. Also
//! the page's API and `/metrics`. `scripts/test` installs chromium and chromedriver
//! when they are missing.
//!
//! `STATUS_SCREENSHOT=path.png` saves a screenshot taken during the rebuild (the one in
//! `docs/` was made so); by default it goes to the target directory.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, Request};
use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventEnvelope, EventStore, Metadata, Projection};
use cqrs_postgres::sqlx::{self, PgConnection};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key of a web element reference in the W3C protocol.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

#[derive(Debug, Clone, Serialize, Deserialize, cqrs_core::Event)]
enum Tick {
    Ticked,
}

#[derive(Debug, cqrs_core::Command)]
struct Wind(u32);

#[derive(Debug)]
struct Overwound;

impl std::fmt::Display for Overwound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wound too far")
    }
}

impl std::error::Error for Overwound {}

/// A clock wound through the command pipeline, for the pipeline metrics.
#[derive(Debug, Default, Serialize, Deserialize, cqrs_core::Aggregate)]
#[cqrs(name = "wound_clock", command = Wind, event = Tick, error = Overwound)]
struct WoundClock;

impl cqrs_core::Apply<Tick> for WoundClock {
    fn apply(&mut self, _: &Tick) {}
}

impl cqrs_core::Handle<Wind> for WoundClock {
    async fn handle(&self, wind: &Wind, (): &()) -> Result<Vec<Tick>, Overwound> {
        if wind.0 > 10 {
            return Err(Overwound);
        }
        Ok(vec![Tick::Ticked])
    }
}

/// Every event handled, across rebuilds.
static HANDLED: AtomicU64 = AtomicU64::new(0);

/// A slow view: 15 ms an event, so that a burst of appends leaves it behind.
#[derive(Debug)]
struct Slow;

impl Projection for Slow {
    const NAME: &'static str = "slow";
    type Event = Tick;
    type Context = PgConnection;
    type Error = std::convert::Infallible;

    async fn handle(
        &mut self,
        _: &mut PgConnection,
        _: &EventEnvelope<Tick>,
    ) -> Result<(), Self::Error> {
        tokio::time::sleep(Duration::from_millis(15)).await;
        HANDLED.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn call(http: &Http, method: Method, url: &str, body: Option<Value>) -> (u16, Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .expect("request");
    let response = http.request(request).await.expect("an answer");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, bytes)
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A WebDriver session on a chromedriver of its own.
struct Browser {
    http: Http,
    base: String,
    driver: Child,
}

impl Browser {
    async fn start() -> Self {
        assert!(
            std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
            "the browser test needs Debian's chromium and chromium-driver: scripts/test installs them"
        );
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = Client::builder(TokioExecutor::new()).build_http();
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let request = Request::get(format!("{root}/status"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            if let Ok(response) = http.request(request).await
                && response.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,640"]
            }
        }}});
        let (status, body) = call(
            &http,
            Method::POST,
            &format!("{root}/session"),
            Some(capabilities),
        )
        .await;
        let session: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(status, 200, "a browser session: {session}");
        let id = session["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Self {
            http,
            base: format!("{root}/session/{id}"),
            driver,
        }
    }

    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, bytes) = call(&self.http, method, &format!("{}{path}", self.base), body).await;
        let value: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(status, 200, "WebDriver {path}: {value}");
        value["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.command(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Clicks the element `css` finds (the page redraws its rows: tries a few times).
    async fn click(&self, css: &str) {
        for _ in 0..10 {
            let (_, found) = call(
                &self.http,
                Method::POST,
                &format!("{}/element", self.base),
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
            let found: Value = serde_json::from_slice(&found).expect("JSON");

            if let Some(element) = found["value"][ELEMENT].as_str() {
                let (status, _) = call(
                    &self.http,
                    Method::POST,
                    &format!("{}/element/{element}/click", self.base),
                    Some(json!({})),
                )
                .await;
                if status == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot click {css}");
    }

    async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command(Method::GET, "/screenshot", None).await;
        base64_decode(encoded.as_str().expect("base64"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0_u32, 0_u32);
    for sextet in text.bytes().filter_map(value) {
        buffer = (buffer << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((buffer >> bits) & 0xFF).unwrap_or(0));
        }
    }
    out
}

/// The slow view's row as the page shows it: state, lag, progress cell.
async fn row(browser: &Browser) -> Option<(String, u64, String)> {
    let value = browser
        .script(
            "const r = document.querySelector('#projections tr[data-name=\"slow\"]');\
             if (!r) return null;\
             const p = r.querySelector('td.progress');\
             return [r.dataset.state, Number(r.dataset.lag), p ? p.textContent : ''];",
        )
        .await;
    let state = value[0].as_str()?.to_owned();
    Some((
        state,
        value[1].as_u64()?,
        value[2].as_str().unwrap_or("").to_owned(),
    ))
}

/// Polls the page until `seen` holds, for at most `timeout`.
async fn until(
    browser: &Browser,
    timeout: Duration,
    what: &str,
    seen: impl Fn(&(String, u64, String)) -> bool,
) -> (String, u64, String) {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(row) = row(browser).await {
            if seen(&row) {
                return row;
            }
            last = Some(row);
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_lag_and_a_rebuild_started_from_it() {
    let schema = format!(
        "admin_web_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(&database_url())
        .await
        .expect("connect");
    let store = PgEventStore::builder(pool)
        .schema(&schema)
        .build()
        .expect("store");
    store.migrate().await.expect("migrate");
    let runner = PgProjectionRunner::builder(store.clone())
        .tuning(
            PgRunnerTuning::default()
                .poll_interval(Duration::from_millis(50))
                .batch_size(10),
        )
        .projection(Slow)
        .start()
        .await
        .expect("runner");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let page = format!("http://{}/", listener.local_addr().expect("address"));
    let clocks = cqrs_core::Cqrs::<WoundClock, _>::new(store.clone());
    let status = cqrs_admin::StatusPage::new(store.operations())
        .pipeline(&clocks)
        .router();
    let server = tokio::spawn(axum::serve(listener, status).into_future());

    let browser = Browser::start().await;
    browser.open(&page).await;
    until(
        &browser,
        Duration::from_secs(20),
        "the slow view caught up",
        |(state, lag, _)| state == "caught_up" && *lag == 0,
    )
    .await;

    // A burst of appends: the view falls behind, then catches up.
    for i in 0..120 {
        let event = NewEvent::from_event(&Tick::Ticked, Metadata::default()).expect("encodes");
        store
            .append(AppendRequest::new(
                "clock",
                format!("c-{i}"),
                0,
                vec![event],
            ))
            .await
            .expect("append");
    }
    let behind = until(
        &browser,
        Duration::from_secs(20),
        "the view behind",
        |(_, lag, _)| *lag > 0,
    )
    .await;
    assert!(behind.1 > 0);
    until(
        &browser,
        Duration::from_secs(60),
        "the view caught up again",
        |(state, lag, _)| state == "caught_up" && *lag == 0,
    )
    .await;
    assert_eq!(HANDLED.load(Ordering::SeqCst), 120);

    // A rebuild from the page's button: its progress shows, then it is done.
    browser
        .click("#projections tr[data-name=\"slow\"] button[data-action=\"rebuild\"]")
        .await;
    let rebuilding = until(
        &browser,
        Duration::from_secs(20),
        "the rebuild's progress",
        |(state, _, progress)| state == "rebuilding" && progress.contains('/'),
    )
    .await;
    // The screenshot once the bar has moved, if the rebuild is not over by then.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match row(&browser).await {
            Some((state, _, progress))
                if state == "rebuilding" && !progress.trim_start().starts_with("0/") =>
            {
                break;
            }
            Some((state, _, _)) if state != "rebuilding" => break,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let shot = browser.screenshot().await;
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    let path = std::env::var("STATUS_SCREENSHOT")
        .unwrap_or_else(|_| format!("{}/status-page.png", env!("CARGO_TARGET_TMPDIR")));
    std::fs::write(&path, &shot).expect("save the screenshot");
    until(
        &browser,
        Duration::from_secs(60),
        "the rebuild done",
        |(state, lag, progress)| state == "caught_up" && *lag == 0 && progress == "done",
    )
    .await;
    assert_eq!(
        HANDLED.load(Ordering::SeqCst),
        240,
        "the rebuild replayed every event: {rebuilding:?}"
    );
    let note = browser
        .script("return document.getElementById('note').textContent;")
        .await;
    assert_eq!(note, "rebuild of slow v1 requested");

    // A message a JetStream consumer parked shows, with its error.
    cqrs_nats::migrate(&store)
        .await
        .expect("the consumers' tables");
    let mut tx = store.begin_in_schema().await.expect("tx");
    sqlx::query(
        "INSERT INTO nats_parked (consumer, stream, sequence, subject, payload, error) \
         VALUES ('billing', 'ORDERS', 12, 'orders.placed', '{}'::bytea, 'the message has no amount')",
    )
    .execute(&mut *tx)
    .await
    .expect("a parked message");
    tx.commit().await.expect("commit");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let shown = browser
            .script("return document.querySelector('#parked tbody').textContent;")
            .await;
        let shown = shown.as_str().unwrap_or_default();
        if shown.contains("billing") && shown.contains("the message has no amount") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the parked message is not shown: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The API and the metrics behind the page, with the pipeline's counters.
    clocks.execute("w-1", Wind(1)).await.expect("wound");
    clocks.execute("w-1", Wind(2)).await.expect("wound");
    assert!(clocks.execute("w-1", Wind(99)).await.is_err());
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let (status, body) = call(&http, Method::GET, &format!("{page}metrics"), None).await;
    let metrics = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    // (The clock's two events may still be on their way to the slow view.)
    assert!(
        metrics.contains("cqrs_projection_lag_events{projection=\"slow\",version=\"1\"} "),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE cqrs_projection_position counter"),
        "{metrics}"
    );
    for line in [
        "cqrs_commands_total{aggregate=\"wound_clock\"} 3",
        "cqrs_command_rejections_total{aggregate=\"wound_clock\"} 1",
        "cqrs_append_conflicts_total{aggregate=\"wound_clock\"} 0",
        "cqrs_append_seconds_count{aggregate=\"wound_clock\"} 2",
        "cqrs_append_seconds_bucket{aggregate=\"wound_clock\",le=\"+Inf\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    for (name, _, _) in cqrs_admin::METRICS {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} documented in /metrics"
        );
    }
    let (status, body) = call(
        &http,
        Method::POST,
        &format!("{page}api/projections/slow/1/skip"),
        None,
    )
    .await;
    assert_eq!(
        (
            status,
            serde_json::from_slice::<Value>(&body).expect("JSON")
        ),
        (200, json!({ "done": false }))
    );
    let (status, _) = call(
        &http,
        Method::POST,
        &format!("{page}api/projections/slow/1/explode"),
        None,
    )
    .await;
    assert_eq!(status, 404);

    drop(browser);
    server.abort();
    runner.shutdown().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(store.pool())
    .await
    .expect("drop schema");
}
