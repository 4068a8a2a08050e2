//! The orders service: orders and inventory contexts over HTTP, on PostgreSQL, with reads
//! that wait for the client's own writes.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run -p example-orders-service
//! ```
//!
//! Environment: `DATABASE_URL` (required), `ORDERS_SCHEMA` (default `orders_service`),
//! `PORT` (default 3000), `RUST_LOG` (default `example_orders_service=debug,cqrs_postgres=info,warn`).
//! Then, for example:
//!
//! ```text
//! curl -X POST localhost:3000/inventory/tea/restock -H 'content-type: application/json' -d '{"quantity": 10}'
//! curl -X POST localhost:3000/orders -H 'content-type: application/json' \
//!      -d '{"customer": "ada", "lines": [{"sku": "tea", "quantity": 2}]}'
//! curl "localhost:3000/orders/<id>?after=<token>"
//! ```

use anyhow::Context as _;
use example_orders_service::{App, Config, serve};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new("example_orders_service=debug,cqrs_postgres=info,warn")
        }))
        .init();

    let url = std::env::var("DATABASE_URL").context("set DATABASE_URL to a PostgreSQL URL")?;
    let mut config = Config::new(url);
    if let Ok(schema) = std::env::var("ORDERS_SCHEMA") {
        config.schema = schema;
    }
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port.parse().context("PORT is not a port number")?,
        Err(_) => 3000,
    };

    let app = App::start(config).await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on port {port}"))?;
    tracing::info!(address = %listener.local_addr()?, "orders service listening");
    serve(listener, app.clone(), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    app.shutdown().await;
    Ok(())
}
