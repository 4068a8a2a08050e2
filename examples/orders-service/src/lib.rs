//! An orders service in two bounded contexts, orders and inventory, that talk only
//! through events, behind an HTTP API whose reads can wait for the client's own writes.
//!
//! - `POST /orders` places an order and answers `202 Accepted` with the order's version
//!   and a consistency token.
//! - The inventory context reacts to `OrderPlaced` (a checkpointed projection that issues
//!   its own `Reserve` command); the orders context reacts to the warehouse's answer and
//!   confirms or rejects the order. Correlation and causation ids flow through both.
//! - `GET /orders/{id}?after=<token>` blocks until the order view has processed the
//!   token, so a client reads its own write; it answers `504` if the view lags too long.
//!
//! The [`services`] module runs the same two contexts as two services (the binaries
//! `orders` and `inventory`), each with its own schema, talking only through NATS
//! JetStream.

pub mod app;
pub mod http;
pub mod inventory;
pub mod orders;
pub mod services;
pub mod views;

pub use app::{App, Config, StartError};
pub use http::router;

/// Serves the API on `listener` until `shutdown` resolves.
///
/// # Errors
///
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}
