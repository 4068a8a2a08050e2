//! The orders service on its own: places orders, relays them to NATS JetStream, and
//! follows the inventory service's answers, which it hears of only through JetStream.
//!
//! ```text
//! nats-server -js &
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run -p example-orders-service --bin orders
//! ```
//!
//! Environment: `DATABASE_URL` (required), `NATS_URL` (default `nats://127.0.0.1:4222`;
//! several separated by commas), `ORDERS_SCHEMA` (default `orders_svc`), `PORT` (default
//! 3001). With the inventory service running beside it (binary `inventory`):
//!
//! ```text
//! curl -X POST localhost:3002/inventory/tea/restock -H 'content-type: application/json' -d '{"quantity": 10}'
//! curl -X POST localhost:3001/orders -H 'content-type: application/json' \
//!      -d '{"customer": "ada", "lines": [{"sku": "tea", "quantity": 2}]}'
//! curl "localhost:3001/orders/<id>?after=<token>"
//! curl "localhost:3002/inventory/orders/<id>?orders_after=<token>"
//! ```

use anyhow::Context as _;
use example_orders_service::services::{OrdersService, serve_until_ctrl_c};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, port) =
        example_orders_service::services::config_from_env("ORDERS_SCHEMA", "orders_svc", 3001)?;
    let service = OrdersService::start(config)
        .await
        .context("the orders service did not start")?;
    serve_until_ctrl_c(port, service.clone().router(), || async move {
        service.shutdown().await;
    })
    .await
    .context("serving failed")?;
    Ok(())
}
