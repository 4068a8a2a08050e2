//! The same two contexts as two services, orders and inventory, each with its own
//! schema (its own event store and views), talking only through NATS JetStream:
//!
//! - the orders service relays `OrderPlaced` to `orders.placed` (stream `ORDERS`);
//! - the inventory service consumes it: it keeps a lean view of the orders it knows
//!   (`known_orders`, written in the transaction that records the message) and reserves
//!   stock with a command whose id comes from the message, so a redelivery changes
//!   nothing; it relays its answer to `inventory.reserved` or `inventory.refused`
//!   (stream `INVENTORY`);
//! - the orders service consumes the answer, records it (`inventory_answers`) and
//!   confirms or rejects the order.
//!
//! Reads wait for the client's own writes: `GET /orders/{id}?after=<token>` on the orders
//! view, and, across services, `GET /inventory/orders/{id}?orders_after=<token>` waits
//! until the inventory service has consumed the orders service's log up to the token the
//! client got when it placed the order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cqrs_core::{
    Aggregate, CommandError, CommandMetadata, Cqrs, CqrsTuning, EventEnvelope, Position, Projection,
};
use cqrs_nats::{
    Consume, ConsumedPosition, Consumer, Incoming, Message, PositionError, Raw, Relay, Route,
};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning, PgView};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgConnection};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::http::{
    ApiError, Body, PlaceOrder, ReadQuery, Restock, place_with, restock_with, token, view_lagging,
    wait_for_view,
};
use crate::inventory::{InventoryCommand, WAREHOUSE, Warehouse};
use crate::orders::{Order, OrderCommand, OrderLine};
use crate::views::{OrderRow, OrderView, StockView};

/// The stream the orders service publishes to (`orders.>`).
pub const ORDERS_STREAM: &str = "ORDERS";
/// The stream the inventory service publishes to (`inventory.>`).
pub const INVENTORY_STREAM: &str = "INVENTORY";

/// How one service is set up.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// A PostgreSQL URL.
    pub database_url: String,
    /// The service's own schema.
    pub schema: String,
    /// The NATS server (with JetStream), or several separated by commas.
    pub nats_url: String,
    /// How long a read waits for the client's writes.
    pub read_wait: Duration,
}

impl ServiceConfig {
    /// Defaults: reads wait up to 5 s.
    pub fn new(
        database_url: impl Into<String>,
        schema: impl Into<String>,
        nats_url: impl Into<String>,
    ) -> Self {
        Self {
            database_url: database_url.into(),
            schema: schema.into(),
            nats_url: nats_url.into(),
            read_wait: Duration::from_secs(5),
        }
    }
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The database cannot be reached, or a table not created.
    #[error("cannot use the database")]
    Database(#[source] sqlx::Error),
    /// The store refused the schema name or could not migrate.
    #[error("cannot prepare the event store")]
    Store(#[source] cqrs_postgres::Error),
    /// The projection runner did not start.
    #[error("cannot start the projections")]
    Projections(#[source] cqrs_postgres::Error),
    /// NATS cannot be reached, or has no JetStream.
    #[error("NATS at {url}: {reason} (the server must run with JetStream: nats-server -js)")]
    Nats {
        /// The URL tried.
        url: String,
        /// What failed.
        reason: String,
    },
}

/// Connects to the service's schema and to JetStream, and makes sure both streams
/// exist (each service may start first).
async fn connect(
    config: &ServiceConfig,
    tables: &str,
) -> Result<(PgEventStore, jetstream::Context), ServiceError> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&config.database_url)
        .await
        .map_err(ServiceError::Database)?;
    let store = PgEventStore::builder(pool)
        .schema(&config.schema)
        .build()
        .map_err(ServiceError::Store)?;
    store.migrate().await.map_err(ServiceError::Store)?;
    let mut tx = store.begin_in_schema().await.map_err(ServiceError::Store)?;
    sqlx::raw_sql(AssertSqlSafe(tables))
        .execute(&mut *tx)
        .await
        .map_err(ServiceError::Database)?;
    tx.commit().await.map_err(ServiceError::Database)?;
    let nats_error = |reason: String| ServiceError::Nats {
        url: config.nats_url.clone(),
        reason,
    };
    let servers: Vec<&str> = config.nats_url.split(',').map(str::trim).collect();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(|e| nats_error(e.to_string()))?;
    let js = jetstream::new(client);
    for (name, subjects) in [
        (ORDERS_STREAM, "orders.>"),
        (INVENTORY_STREAM, "inventory.>"),
    ] {
        js.get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            // Longer than any outage a relay recovers from: a message published again
            // after it is still recognised.
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .map_err(|e| nats_error(e.to_string()))?;
    }
    Ok((store, js))
}

/// Runs a consumer until the service stops, starting it again after a failure (NATS
/// or PostgreSQL away for a moment).
fn supervise<C, F>(make: F) -> AbortOnDrop
where
    C: Consume,
    F: Fn() -> Consumer<C> + Send + 'static,
{
    AbortOnDrop(tokio::spawn(async move {
        loop {
            match make().run().await {
                Ok(()) => tracing::warn!(consumer = C::NAME, "deliveries ended; starting again"),
                Err(error) => {
                    tracing::warn!(consumer = C::NAME, %error, "consumer stopped; starting again")
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }))
}

/// A task stopped with its owner.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A command id that is the same on every delivery of one message.
fn command_id(message: &Incoming) -> Uuid {
    let key = message
        .message_id
        .clone()
        .unwrap_or_else(|| format!("{}#{}", message.subject, message.stream_sequence));
    Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes())
}

/// Why a message could not be applied (it is delivered again, then parked).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The payload is not what the subject promises.
    #[error("the message on {subject} is malformed: {reason}")]
    Malformed {
        /// Where it came.
        subject: String,
        /// What is wrong.
        reason: String,
    },
    /// The view could not be written.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The command could not be carried out.
    #[error("the command failed: {0}")]
    Command(String),
}

fn decode<T: serde::de::DeserializeOwned>(message: &Incoming) -> Result<T, ApplyError> {
    serde_json::from_value(message.payload.clone()).map_err(|e| ApplyError::Malformed {
        subject: message.subject.clone(),
        reason: e.to_string(),
    })
}

// --- the orders service -------------------------------------------------------------

/// What `orders.placed` carries (version 1 of the integration event).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order's id.
    pub order: String,
    /// Who placed it.
    pub customer: String,
    /// What it asks for.
    pub lines: Vec<OrderLine>,
}

/// Publishes placed orders.
#[derive(Debug)]
pub struct PlacedOrders;

impl Route for PlacedOrders {
    const NAME: &'static str = "orders_to_jetstream";

    fn route(&self, event: &EventEnvelope<Raw>) -> Option<Message> {
        if event.payload.event_type != "OrderPlaced" {
            return None;
        }
        let stored = &event.payload.payload;
        Some(Message::new(
            "orders.placed",
            json!({ "order": event.stream_id, "customer": stored["customer"], "lines": stored["lines"] }),
        ))
    }
}

/// What `inventory.reserved` and `inventory.refused` carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservationAnswer {
    /// The order answered.
    pub order: String,
    /// Why it was refused (on `inventory.refused`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Confirms or rejects orders as the inventory answers.
#[derive(Debug)]
pub struct FollowInventory {
    orders: Arc<Cqrs<Order, PgEventStore>>,
}

impl Consume for FollowInventory {
    const NAME: &'static str = "orders_follow_inventory";
    type Error = ApplyError;

    async fn apply(&mut self, cx: &mut PgConnection, message: &Incoming) -> Result<(), ApplyError> {
        let answer: ReservationAnswer = decode(message)?;
        let (outcome, command) = match message.subject.as_str() {
            "inventory.reserved" => ("reserved", OrderCommand::Confirm),
            "inventory.refused" => (
                "refused",
                OrderCommand::Reject {
                    reason: answer.reason.clone().unwrap_or_default(),
                },
            ),
            other => {
                return Err(ApplyError::Malformed {
                    subject: other.to_owned(),
                    reason: "no message type is known on this subject".to_owned(),
                });
            }
        };
        sqlx::query(
            "INSERT INTO inventory_answers (order_id, outcome, reason, deliveries) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (order_id) DO UPDATE SET deliveries = inventory_answers.deliveries + 1",
        )
        .bind(&answer.order)
        .bind(outcome)
        .bind(&answer.reason)
        .execute(&mut *cx)
        .await?;
        let meta = CommandMetadata::new().with_command_id(command_id(message));
        match self.orders.execute_with(&answer.order, command, meta).await {
            // Cancelled meanwhile, or settled by an earlier delivery: nothing to do.
            Ok(_) | Err(CommandError::Rejected(_)) => Ok(()),
            Err(error) => Err(ApplyError::Command(error.to_string())),
        }
    }
}

const ORDERS_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS inventory_answers (
        order_id text PRIMARY KEY,
        outcome text NOT NULL,
        reason text,
        deliveries integer NOT NULL
    );";

/// What each service runs: its pipeline, its projections (its view and its relay),
/// and its consumer of the other service's stream.
#[derive(Debug)]
struct Wiring<A: Aggregate> {
    cqrs: Arc<Cqrs<A, PgEventStore>>,
    store: PgEventStore,
    runner: PgProjectionRunner,
    consumer: AbortOnDrop,
    read_wait: Duration,
}

impl<A> Wiring<A>
where
    A: Aggregate<Services = ()>,
{
    /// Connects (see [`connect`]), and starts `view` and the relay of `route` under one
    /// runner, and a consumer of `stream` made by `consume` around the pipeline.
    async fn start<V, R, C>(
        config: &ServiceConfig,
        tables: &str,
        cache: usize,
        (view, route): (V, R),
        stream: &'static str,
        consume: fn(Arc<Cqrs<A, PgEventStore>>) -> C,
    ) -> Result<Self, ServiceError>
    where
        V: PgView,
        R: Route,
        C: Consume,
    {
        let (store, js) = connect(config, tables).await?;
        let cqrs = Arc::new(
            Cqrs::<A, _>::builder(store.clone())
                .tuning(CqrsTuning::default().cache(cache))
                .build(),
        );
        let runner = PgProjectionRunner::builder(store.clone())
            .tuning(PgRunnerTuning::default().poll_interval(Duration::from_millis(200)))
            // The relay outlasts an outage of the broker, and goes on within 2 s of its return.
            .retries(u32::MAX, Duration::from_millis(200))
            .retry_ceiling(Duration::from_secs(2))
            .view(view)
            .view(Relay::new(js.clone(), route))
            .start()
            .await
            .map_err(ServiceError::Projections)?;
        let (consumer_store, consumer_cqrs) = (store.clone(), Arc::clone(&cqrs));
        let consumer = supervise(move || {
            Consumer::new(
                consumer_store.clone(),
                js.clone(),
                stream,
                consume(Arc::clone(&consumer_cqrs)),
            )
            .ack_wait(Duration::from_secs(5))
        });
        Ok(Self {
            cqrs,
            store,
            runner,
            consumer,
            read_wait: config.read_wait,
        })
    }

    async fn shutdown(&self) {
        self.runner.shutdown().await;
        self.consumer.0.abort();
    }

    /// Waits until the view `V` has passed `position` (a token of this service's).
    async fn wait_for<V: Projection>(&self, position: Position) -> Result<(), ApiError> {
        wait_for_view::<V>(&self.runner, position, self.read_wait).await
    }

    /// The row `key` of this service's `table`, queried by `sql` (`{schema}` is filled in).
    async fn row<T>(&self, sql: &str, key: &str) -> Result<Option<T>, ApiError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        // The schema name was checked when the store was built.
        let sql = sql.replace("{schema}", self.store.schema());
        sqlx::query_as(AssertSqlSafe(sql))
            .bind(key)
            .fetch_optional(self.store.pool())
            .await
            .map_err(|e| ApiError::internal(&e))
    }
}

/// The orders service: places orders, relays them, follows the inventory's answers.
#[derive(Debug, Clone)]
pub struct OrdersService(Arc<Wiring<Order>>);

impl OrdersService {
    /// Connects, prepares the schema and the streams, and starts the order view, the
    /// relay and the consumer of the inventory's answers.
    ///
    /// # Errors
    ///
    /// [`ServiceError`] naming what failed.
    pub async fn start(config: ServiceConfig) -> Result<Self, ServiceError> {
        let wiring = Wiring::start(
            &config,
            ORDERS_TABLES,
            10_000,
            (OrderView, PlacedOrders),
            INVENTORY_STREAM,
            |orders| FollowInventory { orders },
        )
        .await?;
        Ok(Self(Arc::new(wiring)))
    }

    /// Stops the projections and the consumer.
    pub async fn shutdown(&self) {
        self.0.shutdown().await;
    }

    /// The routes: `POST /orders`, `GET /orders/{id}?after=<token>`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/orders", post(place))
            .route("/orders/{id}", get(order))
            .fallback(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
            })
            .with_state(self)
    }
}

async fn place(
    State(service): State<OrdersService>,
    headers: HeaderMap,
    Body(body): Body<PlaceOrder>,
) -> Result<Response, ApiError> {
    place_with(&service.0.cqrs, &headers, body).await
}

async fn order(
    State(service): State<OrdersService>,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if let Some(position) = token(&query, &headers)? {
        service.0.wait_for::<OrderView>(position).await?;
    }
    let sql = "SELECT id, customer, status, reason, lines, version \
               FROM \"{schema}\".order_view WHERE id = $1";
    let row: Option<OrderRow> = service.0.row(sql, &id).await?;
    row.map(|row| Json(row).into_response()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            "there is no such order",
        )
    })
}

// --- the inventory service ----------------------------------------------------------

/// Publishes the warehouse's answers.
#[derive(Debug)]
pub struct Reservations;

impl Route for Reservations {
    const NAME: &'static str = "inventory_to_jetstream";

    fn route(&self, event: &EventEnvelope<Raw>) -> Option<Message> {
        let stored = &event.payload.payload;
        match event.payload.event_type.as_str() {
            "StockReserved" => Some(Message::new(
                "inventory.reserved",
                json!({ "order": stored["order_id"] }),
            )),
            "ReservationRefused" => Some(Message::new(
                "inventory.refused",
                json!({ "order": stored["order_id"], "reason": stored["reason"] }),
            )),
            _ => None,
        }
    }
}

/// Keeps the orders the inventory knows, and reserves their stock.
#[derive(Debug)]
pub struct ReserveOrders {
    warehouse: Arc<Cqrs<Warehouse, PgEventStore>>,
}

impl Consume for ReserveOrders {
    const NAME: &'static str = "inventory_reserves_orders";
    type Error = ApplyError;

    async fn apply(&mut self, cx: &mut PgConnection, message: &Incoming) -> Result<(), ApplyError> {
        let placed: OrderPlaced = decode(message)?;
        sqlx::query(
            "INSERT INTO known_orders (id, customer, lines, deliveries) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (id) DO UPDATE SET deliveries = known_orders.deliveries + 1",
        )
        .bind(&placed.order)
        .bind(&placed.customer)
        .bind(sqlx::types::Json(&placed.lines))
        .execute(&mut *cx)
        .await?;
        let command = InventoryCommand::Reserve {
            order_id: placed.order,
            lines: placed.lines,
        };
        let meta = CommandMetadata::new().with_command_id(command_id(message));
        self.warehouse
            .execute_with(WAREHOUSE, command, meta)
            .await
            .map_err(|e| ApplyError::Command(e.to_string()))?;
        Ok(())
    }
}

const INVENTORY_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS known_orders (
        id text PRIMARY KEY,
        customer text NOT NULL,
        lines jsonb NOT NULL,
        deliveries integer NOT NULL
    );";

/// The inventory service: restocks, reserves for the orders it hears of, relays its
/// answers.
#[derive(Debug, Clone)]
pub struct InventoryService {
    wiring: Arc<Wiring<Warehouse>>,
    orders_consumed: ConsumedPosition,
}

impl InventoryService {
    /// Connects, prepares the schema and the streams, and starts the stock view, the
    /// relay and the consumer of placed orders.
    ///
    /// # Errors
    ///
    /// [`ServiceError`] naming what failed.
    pub async fn start(config: ServiceConfig) -> Result<Self, ServiceError> {
        let wiring = Wiring::start(
            &config,
            INVENTORY_TABLES,
            16,
            (StockView, Reservations),
            ORDERS_STREAM,
            |warehouse| ReserveOrders { warehouse },
        )
        .await?;
        let orders_consumed =
            ConsumedPosition::new(wiring.store.clone(), ReserveOrders::NAME, ORDERS_STREAM);
        Ok(Self {
            wiring: Arc::new(wiring),
            orders_consumed,
        })
    }

    /// Stops the projections and the consumer.
    pub async fn shutdown(&self) {
        self.wiring.shutdown().await;
    }

    /// The routes: `POST /inventory/{sku}/restock`, `GET /inventory/{sku}?after=<token>`,
    /// `GET /inventory/orders/{id}?orders_after=<the orders service's token>`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/inventory/orders/{id}", get(known_order))
            .route("/inventory/{sku}/restock", post(restock))
            .route("/inventory/{sku}", get(stock))
            .fallback(|| async {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
            })
            .with_state(self)
    }
}

async fn restock(
    State(service): State<InventoryService>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    Body(body): Body<Restock>,
) -> Result<Response, ApiError> {
    restock_with(&service.wiring.cqrs, sku, &headers, body).await
}

async fn stock(
    State(service): State<InventoryService>,
    Path(sku): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if let Some(position) = token(&query, &headers)? {
        service.wiring.wait_for::<StockView>(position).await?;
    }
    let sql = "SELECT on_hand FROM \"{schema}\".stock_view WHERE sku = $1";
    let on_hand: Option<(i64,)> = service.wiring.row(sql, &sku).await?;
    Ok(Json(json!({ "sku": sku, "on_hand": on_hand.map_or(0, |(n,)| n) })).into_response())
}

/// The query of a read that waits on the orders service's token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrdersAfter {
    /// The token the orders service answered a write with.
    pub orders_after: Option<String>,
}

/// An order as the inventory service knows it, and what it answered.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct KnownOrder {
    /// The order's id.
    pub id: String,
    /// Who placed it.
    pub customer: String,
    /// What it asks for.
    #[sqlx(json)]
    pub lines: Vec<OrderLine>,
    /// How many deliveries of its message were applied (always 1).
    pub deliveries: i32,
}

async fn known_order(
    State(service): State<InventoryService>,
    Path(id): Path<String>,
    query: Result<Query<OrdersAfter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if let Some(text) = query.orders_after {
        let position: cqrs_core::Position =
            text.parse().map_err(|e: cqrs_core::ParsePositionError| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_token", e.to_string())
            })?;
        match service
            .orders_consumed
            .wait_for(position, service.wiring.read_wait)
            .await
        {
            Ok(()) => {}
            Err(PositionError::Timeout { .. }) => return Err(view_lagging(position)),
            Err(error) => return Err(ApiError::internal(&error)),
        }
    }
    let sql = "SELECT id, customer, lines, deliveries FROM \"{schema}\".known_orders WHERE id = $1";
    let row: Option<KnownOrder> = service.wiring.row(sql, &id).await?;
    row.map(|row| Json(row).into_response()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_known",
            "the inventory has not heard of this order",
        )
    })
}

/// Serves `router` on `port` of 127.0.0.1 until Ctrl-C (for the two binaries).
///
/// # Errors
///
/// When the port cannot be bound or serving fails.
pub async fn serve_until_ctrl_c<F, Fut>(
    port: u16,
    router: Router,
    shutdown: F,
) -> std::io::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    shutdown().await;
    Ok(())
}

/// A service's configuration from the environment (for the two binaries): `DATABASE_URL`
/// (required), `NATS_URL`, the schema from `schema_var` (else `schema`), and `PORT`
/// (else `port`). Also sets up logging from `RUST_LOG`.
///
/// # Errors
///
/// When `DATABASE_URL` is missing or `PORT` is not a port number.
pub fn config_from_env(
    schema_var: &str,
    schema: &str,
    port: u16,
) -> anyhow::Result<(ServiceConfig, u16)> {
    use anyhow::Context as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .init();
    let url = std::env::var("DATABASE_URL").context("set DATABASE_URL to a PostgreSQL URL")?;
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let schema = std::env::var(schema_var).unwrap_or_else(|_| schema.to_owned());
    let port = match std::env::var("PORT") {
        Ok(text) => text.parse().context("PORT is not a port number")?,
        Err(_) => port,
    };
    Ok((ServiceConfig::new(url, schema, nats), port))
}
