//! The inventory service on its own: restocks, reserves stock for the orders it hears
//! of through NATS JetStream, and relays its answers there.
//!
//! ```text
//! nats-server -js &
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run -p example-orders-service --bin inventory
//! ```
//!
//! Environment: `DATABASE_URL` (required), `NATS_URL` (default `nats://127.0.0.1:4222`;
//! several separated by commas), `INVENTORY_SCHEMA` (default `inventory_svc`), `PORT`
//! (default 3002). See the `orders` binary for a walk through both.

use anyhow::Context as _;
use example_orders_service::services::{InventoryService, serve_until_ctrl_c};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, port) = example_orders_service::services::config_from_env(
        "INVENTORY_SCHEMA",
        "inventory_svc",
        3002,
    )?;
    let service = InventoryService::start(config)
        .await
        .context("the inventory service did not start")?;
    serve_until_ctrl_c(port, service.clone().router(), || async move {
        service.shutdown().await;
    })
    .await
    .context("serving failed")?;
    Ok(())
}
