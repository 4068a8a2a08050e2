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
use cqrs_core::{CommandError, CommandMetadata, Cqrs, CqrsTuning, EventEnvelope};
use cqrs_nats::{
    Consume, ConsumedPosition, Consumer, Incoming, Message, PositionError, Raw, Relay, Route,
};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgConnection};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::http::{
    ApiError, Body, PlaceOrder, ReadQuery, Restock, accepted, inventory_error, metadata,
    order_error, token, view_lagging,
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

/// The orders service: places orders, relays them, follows the inventory's answers.
#[derive(Debug, Clone)]
pub struct OrdersService {
    orders: Arc<Cqrs<Order, PgEventStore>>,
    runner: Arc<PgProjectionRunner>,
    store: PgEventStore,
    read_wait: Duration,
    _consumer: Arc<AbortOnDrop>,
}

impl OrdersService {
    /// Connects, prepares the schema and the streams, and starts the order view, the
    /// relay and the consumer of the inventory's answers.
    ///
    /// # Errors
    ///
    /// [`ServiceError`] naming what failed.
    pub async fn start(config: ServiceConfig) -> Result<Self, ServiceError> {
        let (store, js) = connect(&config, ORDERS_TABLES).await?;
        let orders = Arc::new(
            Cqrs::<Order, _>::builder(store.clone())
                .tuning(CqrsTuning::default().cache(10_000))
                .build(),
        );
        let runner = PgProjectionRunner::builder(store.clone())
            .tuning(PgRunnerTuning::default().poll_interval(Duration::from_millis(200)))
            // The relay outlasts an outage of the broker.
            .retries(u32::MAX, Duration::from_millis(200))
            .view(OrderView)
            .view(Relay::new(js.clone(), PlacedOrders))
            .start()
            .await
            .map_err(ServiceError::Projections)?;
        let (consumer_store, consumer_orders) = (store.clone(), Arc::clone(&orders));
        let consumer = supervise(move || {
            Consumer::new(
                consumer_store.clone(),
                js.clone(),
                INVENTORY_STREAM,
                FollowInventory {
                    orders: Arc::clone(&consumer_orders),
                },
            )
            .ack_wait(Duration::from_secs(5))
        });
        Ok(Self {
            orders,
            runner: Arc::new(runner),
            store,
            read_wait: config.read_wait,
            _consumer: Arc::new(consumer),
        })
    }

    /// Stops the projections and the consumer.
    pub async fn shutdown(&self) {
        self.runner.shutdown().await;
        self._consumer.0.abort();
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
    let meta = metadata(&headers)?;
    let id = meta
        .command_id
        .map_or_else(|| Uuid::new_v4().to_string(), |key| key.to_string());
    let command = OrderCommand::Place {
        customer: body.customer,
        lines: body.lines,
    };
    let outcome = service
        .orders
        .execute_with(&id, command, meta)
        .await
        .map_err(order_error)?;
    Ok(accepted(id, &outcome))
}

async fn order(
    State(service): State<OrdersService>,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if let Some(position) = token(&query, &headers)? {
        match service
            .runner
            .wait_for::<OrderView>(position, service.read_wait)
            .await
        {
            Ok(()) => {}
            Err(cqrs_core::ProjectionError::Timeout { .. }) => return Err(view_lagging(position)),
            Err(error) => return Err(ApiError::internal(&error)),
        }
    }
    let sql = format!(
        "SELECT id, customer, status, reason, lines, version FROM \"{}\".order_view WHERE id = $1",
        service.store.schema()
    );
    let row: Option<OrderRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(&id)
        .fetch_optional(service.store.pool())
        .await
        .map_err(|e| ApiError::internal(&e))?;
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
    warehouse: Arc<Cqrs<Warehouse, PgEventStore>>,
    runner: Arc<PgProjectionRunner>,
    store: PgEventStore,
    orders_consumed: ConsumedPosition,
    read_wait: Duration,
    _consumer: Arc<AbortOnDrop>,
}

impl InventoryService {
    /// Connects, prepares the schema and the streams, and starts the stock view, the
    /// relay and the consumer of placed orders.
    ///
    /// # Errors
    ///
    /// [`ServiceError`] naming what failed.
    pub async fn start(config: ServiceConfig) -> Result<Self, ServiceError> {
        let (store, js) = connect(&config, INVENTORY_TABLES).await?;
        let warehouse = Arc::new(
            Cqrs::<Warehouse, _>::builder(store.clone())
                .tuning(CqrsTuning::default().cache(16))
                .build(),
        );
        let runner = PgProjectionRunner::builder(store.clone())
            .tuning(PgRunnerTuning::default().poll_interval(Duration::from_millis(200)))
            .retries(u32::MAX, Duration::from_millis(200))
            .view(StockView)
            .view(Relay::new(js.clone(), Reservations))
            .start()
            .await
            .map_err(ServiceError::Projections)?;
        let orders_consumed =
            ConsumedPosition::new(store.clone(), ReserveOrders::NAME, ORDERS_STREAM);
        let (consumer_store, consumer_warehouse) = (store.clone(), Arc::clone(&warehouse));
        let consumer = supervise(move || {
            Consumer::new(
                consumer_store.clone(),
                js.clone(),
                ORDERS_STREAM,
                ReserveOrders {
                    warehouse: Arc::clone(&consumer_warehouse),
                },
            )
            .ack_wait(Duration::from_secs(5))
        });
        Ok(Self {
            warehouse,
            runner: Arc::new(runner),
            store,
            orders_consumed,
            read_wait: config.read_wait,
            _consumer: Arc::new(consumer),
        })
    }

    /// Stops the projections and the consumer.
    pub async fn shutdown(&self) {
        self.runner.shutdown().await;
        self._consumer.0.abort();
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
    let meta = metadata(&headers)?;
    let command = InventoryCommand::Restock {
        sku,
        quantity: body.quantity,
    };
    let outcome = service
        .warehouse
        .execute_with(WAREHOUSE, command, meta)
        .await
        .map_err(inventory_error)?;
    Ok(accepted(WAREHOUSE.to_owned(), &outcome))
}

async fn stock(
    State(service): State<InventoryService>,
    Path(sku): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if let Some(position) = token(&query, &headers)? {
        wait_for_stock(&service, position).await?;
    }
    let sql = format!(
        "SELECT on_hand FROM \"{}\".stock_view WHERE sku = $1",
        service.store.schema()
    );
    let on_hand: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(&sku)
        .fetch_optional(service.store.pool())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({ "sku": sku, "on_hand": on_hand.map_or(0, |(n,)| n) })).into_response())
}

async fn wait_for_stock(
    service: &InventoryService,
    position: cqrs_core::Position,
) -> Result<(), ApiError> {
    match service
        .runner
        .wait_for::<StockView>(position, service.read_wait)
        .await
    {
        Ok(()) => Ok(()),
        Err(cqrs_core::ProjectionError::Timeout { .. }) => Err(view_lagging(position)),
        Err(error) => Err(ApiError::internal(&error)),
    }
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
            .wait_for(position, service.read_wait)
            .await
        {
            Ok(()) => {}
            Err(PositionError::Timeout { .. }) => return Err(view_lagging(position)),
            Err(error) => return Err(ApiError::internal(&error)),
        }
    }
    let sql = format!(
        "SELECT id, customer, lines, deliveries FROM \"{}\".known_orders WHERE id = $1",
        service.store.schema()
    );
    let row: Option<KnownOrder> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(&id)
        .fetch_optional(service.store.pool())
        .await
        .map_err(|e| ApiError::internal(&e))?;
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
