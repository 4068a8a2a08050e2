//! The read side: views in tables, kept by projections that run inside the runner's
//! transaction (the view's change commits with the checkpoint), and the reactions that
//! carry events from one context to the other.

use std::sync::Arc;

use cqrs_core::{CommandMetadata, Cqrs, EventEnvelope, Project};
use cqrs_postgres::{PgEventStore, PgView};
use serde::Serialize;
use sqlx::PgConnection;

use crate::inventory::{InventoryCommand, InventoryEvent, WAREHOUSE, Warehouse};
use crate::orders::{Order, OrderCommand, OrderEvent, OrderLine};

/// Creates the views' tables if they do not exist, in the first schema of the
/// transaction's `search_path`: the store's, in a view's transaction and in
/// `PgEventStore::begin_in_schema`. The service runs it at start, so that reads find the
/// tables before the runner has set its views up; the views run it again when a runner
/// takes them over.
///
/// # Errors
///
/// When the statement fails.
pub async fn create_tables(cx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS order_view (
             id text PRIMARY KEY,
             customer text NOT NULL,
             status text NOT NULL,
             reason text,
             lines jsonb NOT NULL,
             version bigint NOT NULL
         );
         CREATE TABLE IF NOT EXISTS stock_view (
             sku text PRIMARY KEY,
             on_hand bigint NOT NULL
         );",
    )
    .execute(cx)
    .await?;
    Ok(())
}

/// The order view's row, as `GET /orders/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, sqlx::FromRow)]
pub struct OrderRow {
    /// The order id.
    pub id: String,
    /// Who ordered.
    pub customer: String,
    /// `pending`, `confirmed`, `rejected` or `cancelled`.
    pub status: String,
    /// Why it was rejected, if it was.
    pub reason: Option<String>,
    /// What was ordered.
    #[sqlx(json)]
    pub lines: Vec<OrderLine>,
    /// The order's stream version this row reflects.
    pub version: i64,
}

/// Keeps `order_view`: one row per order.
#[derive(Debug, Default, cqrs_core::Projection)]
#[cqrs(
    name = "order_view",
    event = OrderEvent,
    aggregate = Order,
    context = PgConnection,
    error = sqlx::Error
)]
pub struct OrderView;

impl Project for OrderView {
    async fn project(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<OrderEvent>,
    ) -> Result<(), sqlx::Error> {
        let version = i64::try_from(event.stream_version).unwrap_or(i64::MAX);
        match &event.payload {
            OrderEvent::Placed { customer, lines } => {
                sqlx::query(
                    "INSERT INTO order_view (id, customer, status, lines, version)
                     VALUES ($1, $2, 'pending', $3, $4)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(&event.stream_id)
                .bind(customer)
                .bind(sqlx::types::Json(lines))
                .bind(version)
                .execute(&mut *cx)
                .await?;
            }
            other => {
                let (status, reason) = match other {
                    OrderEvent::Confirmed => ("confirmed", None),
                    OrderEvent::Rejected { reason } => ("rejected", Some(reason.as_str())),
                    OrderEvent::Cancelled | OrderEvent::Placed { .. } => ("cancelled", None),
                };
                sqlx::query(
                    "UPDATE order_view SET status = $2, reason = $3, version = $4 WHERE id = $1",
                )
                .bind(&event.stream_id)
                .bind(status)
                .bind(reason)
                .bind(version)
                .execute(&mut *cx)
                .await?;
            }
        }
        Ok(())
    }
}

impl PgView for OrderView {
    async fn setup(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        create_tables(cx).await
    }

    async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE order_view").execute(cx).await?;
        Ok(())
    }
}

/// Keeps `stock_view`: units on hand per product.
#[derive(Debug, Default, cqrs_core::Projection)]
#[cqrs(
    name = "stock_view",
    event = InventoryEvent,
    aggregate = Warehouse,
    context = PgConnection,
    error = sqlx::Error
)]
pub struct StockView;

impl Project for StockView {
    async fn project(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<InventoryEvent>,
    ) -> Result<(), sqlx::Error> {
        let changes: Vec<(&str, i64)> = match &event.payload {
            InventoryEvent::Restocked { sku, quantity } => vec![(sku, i64::from(*quantity))],
            InventoryEvent::StockReserved { lines, .. } => lines
                .iter()
                .map(|line| (line.sku.as_str(), -i64::from(line.quantity)))
                .collect(),
            InventoryEvent::ReservationRefused { .. } => Vec::new(),
        };
        for (sku, delta) in changes {
            sqlx::query(
                "INSERT INTO stock_view (sku, on_hand) VALUES ($1, $2)
                 ON CONFLICT (sku) DO UPDATE SET on_hand = stock_view.on_hand + EXCLUDED.on_hand",
            )
            .bind(sku)
            .bind(delta)
            .execute(&mut *cx)
            .await?;
        }
        Ok(())
    }
}

impl PgView for StockView {
    async fn setup(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        create_tables(cx).await
    }

    async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("TRUNCATE stock_view").execute(cx).await?;
        Ok(())
    }
}

/// Why a reaction failed: its command could not be executed.
#[derive(Debug, thiserror::Error)]
#[error("reacting to event {event_id} failed: {message}")]
pub struct ReactionFailed {
    event_id: uuid::Uuid,
    message: String,
}

fn failed(event_id: uuid::Uuid, error: &dyn std::error::Error) -> ReactionFailed {
    ReactionFailed {
        event_id,
        message: error.to_string(),
    }
}

/// The inventory context's reaction to orders: every placed order asks the warehouse to
/// reserve its lines. The command id derives from the event id, so a reaction that runs
/// twice (after a crash before its checkpoint committed) reserves once.
#[derive(Debug, cqrs_core::Projection)]
#[cqrs(
    name = "inventory_reserves_orders",
    event = OrderEvent,
    aggregate = Order,
    context = PgConnection,
    error = ReactionFailed
)]
pub struct ReserveStock {
    /// The warehouse's command pipeline.
    pub warehouse: Arc<Cqrs<Warehouse, PgEventStore>>,
}

impl Project for ReserveStock {
    async fn project(
        &mut self,
        _: &mut PgConnection,
        event: &EventEnvelope<OrderEvent>,
    ) -> Result<(), ReactionFailed> {
        if let OrderEvent::Placed { lines, .. } = &event.payload {
            let command = InventoryCommand::Reserve {
                order_id: event.stream_id.clone(),
                lines: lines.clone(),
            };
            self.warehouse
                .execute_with(WAREHOUSE, command, CommandMetadata::caused_by(event))
                .await
                .map_err(|e| failed(event.event_id, &e))?;
        }
        Ok(())
    }
}

/// The orders context's reaction to the warehouse: a reservation confirms the order, a
/// refusal rejects it. An order cancelled meanwhile stays cancelled.
#[derive(Debug, cqrs_core::Projection)]
#[cqrs(
    name = "orders_follow_reservations",
    event = InventoryEvent,
    aggregate = Warehouse,
    context = PgConnection,
    error = ReactionFailed
)]
pub struct SettleOrders {
    /// The orders' command pipeline.
    pub orders: Arc<Cqrs<Order, PgEventStore>>,
}

impl Project for SettleOrders {
    async fn project(
        &mut self,
        _: &mut PgConnection,
        event: &EventEnvelope<InventoryEvent>,
    ) -> Result<(), ReactionFailed> {
        let (order_id, command) = match &event.payload {
            InventoryEvent::StockReserved { order_id, .. } => (order_id, OrderCommand::Confirm),
            InventoryEvent::ReservationRefused { order_id, reason } => (
                order_id,
                OrderCommand::Reject {
                    reason: reason.clone(),
                },
            ),
            InventoryEvent::Restocked { .. } => return Ok(()),
        };
        match self
            .orders
            .execute_with(order_id, command, CommandMetadata::caused_by(event))
            .await
        {
            // Already settled or cancelled: nothing left to do.
            Ok(_) | Err(cqrs_core::CommandError::Rejected(_)) => Ok(()),
            Err(error) => Err(failed(event.event_id, &error)),
        }
    }
}
