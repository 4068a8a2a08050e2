//! Wiring: the store, the two contexts' pipelines, the projection runner, the views.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::{Cqrs, CqrsTuning, Position, Projection};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};

use crate::http::{ApiError, wait_for_view};
use crate::inventory::Warehouse;
use crate::orders::Order;
use crate::views::{OrderRow, OrderView, ReserveStock, SettleOrders, StockView, create_tables};

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// A PostgreSQL URL.
    pub database_url: String,
    /// The schema holding the event store and the views.
    pub schema: String,
    /// How long a read waits for its view to reach the client's token.
    pub read_wait: Duration,
    /// How often projections look at the log when no notification arrives.
    pub poll_interval: Duration,
}

impl Config {
    /// Defaults for `database_url`: schema `orders_service`, reads wait up to 5 s.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            schema: "orders_service".to_owned(),
            read_wait: Duration::from_secs(5),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database cannot be reached, or the views' tables cannot be created.
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    /// The store refused the schema name or could not migrate.
    #[error("cannot prepare the event store")]
    Store(#[source] cqrs_postgres::Error),
    /// The projection runner did not start.
    #[error("cannot start the projections")]
    Projections(#[source] cqrs_postgres::Error),
}

/// Everything a request handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct App {
    /// The orders context's command pipeline.
    pub orders: Arc<Cqrs<Order, PgEventStore>>,
    /// The inventory context's command pipeline.
    pub warehouse: Arc<Cqrs<Warehouse, PgEventStore>>,
    /// The event store.
    pub store: PgEventStore,
    /// Runs the views and the reactions.
    pub runner: Arc<PgProjectionRunner>,
    pool: PgPool,
    queries: Arc<Queries>,
    read_wait: Duration,
}

/// The views' queries, their tables named in the store's schema.
#[derive(Debug)]
struct Queries {
    order: String,
    stock: String,
}

impl App {
    /// Connects, migrates the store, and starts the projections.
    ///
    /// # Errors
    ///
    /// [`StartError`] naming the step that failed.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let options: PgConnectOptions = config.database_url.parse().map_err(StartError::Connect)?;
        let pool = PgPoolOptions::new()
            .max_connections(32)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(StartError::Connect)?;
        let store = PgEventStore::builder(pool.clone())
            .schema(&config.schema)
            .build()
            .map_err(StartError::Store)?;
        store.migrate().await.map_err(StartError::Store)?;
        // The views' tables, in the store's schema like the views' own SQL.
        let mut tx = store.begin_in_schema().await.map_err(StartError::Store)?;
        create_tables(&mut tx).await.map_err(StartError::Connect)?;
        tx.commit().await.map_err(StartError::Connect)?;
        let schema = store.schema();
        let queries = Queries {
            order: format!(
                "SELECT id, customer, status, reason, lines, version FROM \"{schema}\".order_view \
                 WHERE id = $1"
            ),
            stock: format!("SELECT on_hand FROM \"{schema}\".stock_view WHERE sku = $1"),
        };

        let orders = Arc::new(
            Cqrs::<Order, _>::builder(store.clone())
                .tuning(CqrsTuning::default().cache(10_000))
                .build(),
        );
        let warehouse = Arc::new(
            Cqrs::<Warehouse, _>::builder(store.clone())
                .tuning(CqrsTuning::default().cache(16))
                .build(),
        );
        let runner = PgProjectionRunner::builder(store.clone())
            .tuning(PgRunnerTuning::default().poll_interval(config.poll_interval))
            .view(OrderView)
            .view(StockView)
            .projection(ReserveStock {
                warehouse: Arc::clone(&warehouse),
            })
            .projection(SettleOrders {
                orders: Arc::clone(&orders),
            })
            .start()
            .await
            .map_err(StartError::Projections)?;
        Ok(Self {
            orders,
            warehouse,
            store,
            runner: Arc::new(runner),
            pool,
            queries: Arc::new(queries),
            read_wait: config.read_wait,
        })
    }

    /// Stops the projections (another instance takes them over at once).
    pub async fn shutdown(&self) {
        self.runner.shutdown().await;
    }

    /// Waits until the view `V` has processed `position`.
    async fn wait_for<V: Projection>(&self, position: Position) -> Result<(), ApiError> {
        wait_for_view::<V>(&self.runner, position, self.read_wait).await
    }

    /// Waits until the order view has processed `position`.
    pub(crate) async fn wait_for_orders(&self, position: Position) -> Result<(), ApiError> {
        self.wait_for::<OrderView>(position).await
    }

    /// Waits until the stock view has processed `position`.
    pub(crate) async fn wait_for_stock(&self, position: Position) -> Result<(), ApiError> {
        self.wait_for::<StockView>(position).await
    }

    /// The order view's row for `id`.
    pub(crate) async fn order_view(&self, id: &str) -> Result<Option<OrderRow>, sqlx::Error> {
        sqlx::query_as::<_, OrderRow>(AssertSqlSafe(self.queries.order.as_str()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Units on hand of `sku` per the stock view.
    pub(crate) async fn stock_view(&self, sku: &str) -> Result<i64, sqlx::Error> {
        let row: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(self.queries.stock.as_str()))
            .bind(sku)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map_or(0, |(on_hand,)| on_hand))
    }
}
