//! What the relay's and the consumer's tests share: a `nats-server -js` of their own, and
//! a store in a schema of its own.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cqrs_postgres::PgEventStore;
use cqrs_postgres::sqlx;

pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A `nats-server -js` on a free port with a temporary store, removed with it at the end.
pub(crate) struct Nats {
    child: Child,
    dir: std::path::PathBuf,
    pub(crate) url: String,
}

impl Nats {
    pub(crate) async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!("nats-{}", uuid::Uuid::new_v4().simple()));
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (scripts/test installs it when missing)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            dir,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A migrated store in a new schema named after `prefix`.
pub(crate) async fn store(prefix: &str) -> PgEventStore {
    let schema = format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(&database_url())
        .await
        .expect("connect");
    let store = PgEventStore::builder(pool)
        .schema(&schema)
        .build()
        .expect("store");
    store.migrate().await.expect("migrate");
    store
}

pub(crate) async fn drop_schema(store: &PgEventStore) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{}\" CASCADE",
        store.schema()
    )))
    .execute(store.pool())
    .await
    .expect("drop schema");
}
