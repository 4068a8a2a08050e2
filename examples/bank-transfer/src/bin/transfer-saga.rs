//! Runs the transfer process against PostgreSQL until interrupted.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/postgres CQRS_SCHEMA=bank_transfer \
//!     cargo run -p example-bank-transfer --bin transfer-saga
//! ```
//!
//! Start several: one owns the process at a time, the others take over when it dies.

use anyhow::Context as _;
use example_bank_transfer::{DEFAULT_DATABASE_URL, connect, run_saga};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let schema = std::env::var("CQRS_SCHEMA").unwrap_or_else(|_| "bank_transfer".to_owned());
    let store = connect(&url, &schema).await?;
    let runner = run_saga(store)
        .await
        .context("cannot start the transfer process")?;
    println!("transfer process running as {}", runner.owner());
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    runner.shutdown().await;
    Ok(())
}
