//! The orders and inventory services as two processes (the `orders` and `inventory`
//! binaries), each with its own schema, talking only through a `nats-server -js` that
//! the test starts on a free port with a temporary store:
//!
//! - over HTTP, a client reads its own writes: on the orders service after placing an
//!   order, and on the inventory service with the orders service's token;
//! - under load, both processes are SIGKILLed at random points (`KILL_ROUNDS` rounds,
//!   20 by default, each killing the relaying orders process and the consuming
//!   inventory process once) and started again; in the end every order was delivered
//!   to the inventory's view exactly once and every answer to the orders' view exactly
//!   once, each stream holds each message once, the warehouse answered each order once,
//!   and the stock adds up.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode};
use cqrs_core::{CommandMetadata, Cqrs, EventFilter, EventStore, Position};
use example_orders_service::inventory::{InventoryCommand, WAREHOUSE, Warehouse};
use example_orders_service::orders::{Order, OrderCommand, OrderLine};
use example_orders_service::services::{INVENTORY_STREAM, ORDERS_STREAM};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn until_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{what} did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything one test runs: a `nats-server -js`, two schemas, and the two services as
/// processes, each started again when killed.
struct World {
    nats: Child,
    nats_url: String,
    dir: PathBuf,
    orders_schema: String,
    inventory_schema: String,
    orders: Option<Child>,
    inventory: Option<Child>,
    orders_port: u16,
    inventory_port: u16,
}

impl World {
    async fn start(name: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let nats = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("jetstream"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (scripts/test installs it when missing)");
        until_listening(port, "nats-server").await;
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let mut world = Self {
            nats,
            nats_url: format!("nats://127.0.0.1:{port}"),
            dir,
            orders_schema: format!("{name}_orders_{suffix}"),
            inventory_schema: format!("{name}_inventory_{suffix}"),
            orders: None,
            inventory: None,
            orders_port: free_port(),
            inventory_port: free_port(),
        };
        world.spawn_orders();
        world.spawn_inventory();
        until_listening(world.orders_port, "the orders service").await;
        until_listening(world.inventory_port, "the inventory service").await;
        world
    }

    fn spawn(&self, binary: &str, schema_var: &str, schema: &str, port: u16) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{binary}.log")))
            .expect("a log file");
        Command::new(binary_path(binary))
            .env("DATABASE_URL", database_url())
            .env("NATS_URL", &self.nats_url)
            .env(schema_var, schema)
            .env("PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the service starts")
    }

    fn spawn_orders(&mut self) {
        self.orders = Some(self.spawn(
            "orders",
            "ORDERS_SCHEMA",
            &self.orders_schema.clone(),
            self.orders_port,
        ));
    }

    fn spawn_inventory(&mut self) {
        self.inventory = Some(self.spawn(
            "inventory",
            "INVENTORY_SCHEMA",
            &self.inventory_schema.clone(),
            self.inventory_port,
        ));
    }

    async fn store(&self, schema: &str) -> cqrs_postgres::PgEventStore {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(&database_url())
            .await
            .expect("connect");
        let store = cqrs_postgres::PgEventStore::builder(pool)
            .schema(schema)
            .build()
            .expect("store");
        store.migrate().await.expect("migrate");
        store
    }

    fn logs(&self) -> String {
        ["orders", "inventory"]
            .iter()
            .map(|b| {
                let text =
                    std::fs::read_to_string(self.dir.join(format!("{b}.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {b} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn drop_schemas(&self) {
        let pool = sqlx::PgPool::connect(&database_url())
            .await
            .expect("connect");
        for schema in [&self.orders_schema, &self.inventory_schema] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .execute(&pool)
            .await
            .expect("drop schema");
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for child in [
            self.orders.as_mut(),
            self.inventory.as_mut(),
            Some(&mut self.nats),
        ]
        .into_iter()
        .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binary_path(binary: &str) -> &'static str {
    match binary {
        "orders" => env!("CARGO_BIN_EXE_orders"),
        _ => env!("CARGO_BIN_EXE_inventory"),
    }
}

async fn send(method: Method, url: &str, body: Option<Value>) -> (StatusCode, Value) {
    let client = HyperClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .expect("request");
    let response = client.request(request).await.expect("an answer");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reads_its_own_writes_on_both_services() {
    let world = World::start("rywsvc").await;
    let orders = format!("http://127.0.0.1:{}", world.orders_port);
    let inventory = format!("http://127.0.0.1:{}", world.inventory_port);
    let (status, _) = send(
        Method::POST,
        &format!("{inventory}/inventory/tea/restock"),
        Some(json!({ "quantity": 100 })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for i in 0..20 {
        let (status, placed) = send(
            Method::POST,
            &format!("{orders}/orders"),
            Some(
                json!({ "customer": format!("c{i}"), "lines": [{ "sku": "tea", "quantity": 2 }] }),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{placed}");
        let id = placed["id"].as_str().expect("an id");
        let token = placed["token"].as_str().expect("a token");
        // On the orders service: its own view, at once.
        let (status, order) = send(
            Method::GET,
            &format!("{orders}/orders/{id}?after={token}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{order}");
        assert_eq!(order["customer"], json!(format!("c{i}")));
        // On the inventory service, which heard of it only through JetStream: at once
        // too, by waiting on the orders service's token.
        let (status, known) = send(
            Method::GET,
            &format!("{inventory}/inventory/orders/{id}?orders_after={token}"),
            None,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "order {i}: {known}\n{}",
            world.logs()
        );
        assert_eq!(known["deliveries"], json!(1));
        assert_eq!(known["lines"], json!([{ "sku": "tea", "quantity": 2 }]));
    }
    // A token the orders service never gave: 504 after the read's wait, not a hang.
    let (status, body) = send(
        Method::GET,
        &format!("{inventory}/inventory/orders/x?orders_after=999999999.1"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    let (status, body) = send(
        Method::GET,
        &format!("{inventory}/inventory/orders/x?orders_after=nonsense"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // In the end the orders service hears the answer too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let store = world.store(&world.orders_schema).await;
        let mut tx = store.begin_in_schema().await.expect("tx");
        let confirmed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM order_view WHERE status = 'confirmed'")
                .fetch_one(&mut *tx)
                .await
                .expect("count");
        if confirmed == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {confirmed} of 20 confirmed\n{}",
            world.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.drop_schemas().await;
}

/// A small deterministic generator (xorshift), seeded per run and printed.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const RESTOCK: [(&str, u32); 2] = [("tea", 700), ("cake", 120)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_consumer_killed_at_random_points_deliver_everything_exactly_once() {
    let rounds: u64 = std::env::var("KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() % 1_000_000_007),
            )
            .unwrap_or(1)
                | 1
        });
    let mut world = World::start("killsvc").await;
    let orders_store = world.store(&world.orders_schema).await;
    let inventory_store = world.store(&world.inventory_schema).await;
    let warehouse = Cqrs::<Warehouse, _>::builder(inventory_store.clone()).build();
    for (sku, quantity) in RESTOCK {
        warehouse
            .execute(
                WAREHOUSE,
                InventoryCommand::Restock {
                    sku: sku.to_owned(),
                    quantity,
                },
            )
            .await
            .expect("restocked");
    }

    // The load: an order every few milliseconds, written to the orders store directly
    // (the orders process relays it, whether or not it is up at that moment).
    let placed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (placed, stop) = (Arc::clone(&placed), Arc::clone(&stop));
        let orders = Cqrs::<Order, _>::builder(orders_store.clone()).build();
        let mut random = Random(seed.wrapping_mul(31) | 1);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = placed.load(Ordering::SeqCst);
                let mut lines = vec![OrderLine {
                    sku: "tea".to_owned(),
                    quantity: 1 + u32::try_from(random.below(3)).unwrap_or(0),
                }];
                if random.below(2) == 0 {
                    lines.push(OrderLine {
                        sku: "cake".to_owned(),
                        quantity: 1,
                    });
                }
                orders
                    .execute_with(
                        &format!("o{n:05}"),
                        OrderCommand::Place {
                            customer: format!("c{}", n % 7),
                            lines,
                        },
                        CommandMetadata::new(),
                    )
                    .await
                    .expect("placed");
                placed.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
        })
    };

    let mut random = Random(seed);
    let started = Instant::now();
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(100 + random.below(500))).await;
        if let Some(mut child) = world.orders.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        world.spawn_orders();
        tokio::time::sleep(Duration::from_millis(100 + random.below(500))).await;
        if let Some(mut child) = world.inventory.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        world.spawn_inventory();
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("the writer");
    let total = placed.load(Ordering::SeqCst);
    let expected = i64::try_from(total).expect("small");

    // Everything settles: every order answered and settled on the orders side.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut tx = orders_store.begin_in_schema().await.expect("tx");
        let settled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM order_view WHERE status IN ('confirmed', 'rejected')",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap_or(0);
        drop(tx);
        if settled == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {settled} of {total} orders settled (seed {seed})\n{}",
            world.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Each order delivered to the inventory's view once, each answer to the orders' once.
    let mut tx = inventory_store.begin_in_schema().await.expect("tx");
    let known: (i64, i64, i64) = sqlx::query_as("SELECT count(*), coalesce(min(deliveries), 0)::bigint, coalesce(max(deliveries), 0)::bigint FROM known_orders")
        .fetch_one(&mut *tx)
        .await
        .expect("known orders");
    drop(tx);
    assert_eq!(
        known,
        (expected, 1, 1),
        "(orders known, fewest deliveries, most deliveries), seed {seed}"
    );
    let mut tx = orders_store.begin_in_schema().await.expect("tx");
    let answers: (i64, i64, i64) = sqlx::query_as("SELECT count(*), coalesce(min(deliveries), 0)::bigint, coalesce(max(deliveries), 0)::bigint FROM inventory_answers")
        .fetch_one(&mut *tx)
        .await
        .expect("answers");
    let confirmed: Vec<(String, sqlx::types::Json<Vec<OrderLine>>)> =
        sqlx::query_as("SELECT id, lines FROM order_view WHERE status = 'confirmed'")
            .fetch_all(&mut *tx)
            .await
            .expect("confirmed");
    drop(tx);
    assert_eq!(
        answers,
        (expected, 1, 1),
        "(answers, fewest deliveries, most deliveries), seed {seed}"
    );

    // Each stream holds each message once.
    let client = async_nats::connect(&world.nats_url).await.expect("nats");
    let js = jetstream::new(client);
    for name in [ORDERS_STREAM, INVENTORY_STREAM] {
        let mut stream = js.get_stream(name).await.expect("stream");
        let count = stream.info().await.expect("info").state.messages;
        assert_eq!(
            count, total,
            "{name} holds one message per order (seed {seed})"
        );
        let mut ids = HashSet::new();
        for sequence in 1..=count {
            let message = stream.get_raw_message(sequence).await.expect("message");
            let id = message
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_owned());
            assert!(
                ids.insert(id.expect("an id")),
                "{name}: a message twice (seed {seed})"
            );
        }
    }

    // The warehouse answered each order once, and the stock adds up.
    let log = inventory_store
        .read_all(Position::START, 1_000_000, &EventFilter::all())
        .await
        .expect("log");
    let mut answered = HashSet::new();
    let mut reserved: BTreeMap<String, i64> = BTreeMap::new();
    for event in &log {
        match event.event_type.as_str() {
            "StockReserved" | "ReservationRefused" => {
                let order = event.payload["order_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                assert!(
                    answered.insert(order.clone()),
                    "{order} answered twice (seed {seed})"
                );
            }
            _ => {}
        }
        if event.event_type == "StockReserved" {
            for line in event.payload["lines"].as_array().into_iter().flatten() {
                *reserved
                    .entry(line["sku"].as_str().unwrap_or_default().to_owned())
                    .or_default() += line["quantity"].as_i64().unwrap_or(0);
            }
        }
    }
    assert_eq!(answered.len(), usize::try_from(total).expect("small"));
    let mut confirmed_lines: BTreeMap<String, i64> = BTreeMap::new();
    for (_, lines) in &confirmed {
        for line in &lines.0 {
            *confirmed_lines.entry(line.sku.clone()).or_default() += i64::from(line.quantity);
        }
    }
    assert_eq!(
        confirmed_lines, reserved,
        "the orders confirmed are the ones reserved (seed {seed})"
    );
    for (sku, restocked) in RESTOCK {
        assert!(
            reserved.get(sku).copied().unwrap_or(0) <= i64::from(restocked),
            "{sku} oversold"
        );
    }
    println!(
        "{rounds} rounds in {:.1} s (seed {seed}): {total} orders, {} confirmed; the orders and the inventory process each SIGKILLed {rounds} times",
        started.elapsed().as_secs_f64(),
        confirmed.len()
    );
    world.drop_schemas().await;
}
