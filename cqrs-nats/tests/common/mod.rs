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
        let child = Command::new(nats_server())
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

impl Nats {
    /// A server of its own with the stream `name` over `name_lower.>` (the stream's name
    /// in lower case), and a JetStream context on it.
    pub(crate) async fn with_stream(name: &str) -> (Self, async_nats::jetstream::Context) {
        let nats = Self::start().await;
        let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.expect("nats"));
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{}.>", name.to_lowercase())],
            ..Default::default()
        })
        .await
        .expect("stream");
        (nats, js)
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

/// The `nats-server` binary: where `scripts/test` installs it, or the one on the `PATH`.
pub(crate) fn nats_server() -> &'static str {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server")
}

/// One `nats-server` of a [`Cluster`]; `child` is `None` once it was killed.
struct Node {
    name: String,
    url: String,
    log: std::path::PathBuf,
    child: Option<Child>,
}

/// A JetStream cluster of `nats-server`s on 127.0.0.1, each with its own free client and
/// cluster ports, temporary store, configuration file and log, and routes to the others;
/// all killed and removed at the end (their logs printed first when a test panicked).
pub(crate) struct Cluster {
    nodes: Vec<Node>,
    dir: std::path::PathBuf,
}

impl Cluster {
    /// Starts `size` nodes, named `n1`, `n2`, …, and waits until each takes connections
    /// (not until the cluster has a JetStream leader: that takes a few seconds more).
    pub(crate) async fn start(size: usize) -> Self {
        let dir =
            std::env::temp_dir().join(format!("nats-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("the cluster's directory");
        // Every port bound at once, so that no two are the same.
        let listeners: Vec<std::net::TcpListener> = (0..size * 2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("a bound port").port())
            .collect();
        drop(listeners);
        let (clients, routes) = ports.split_at(size);
        let mut nodes = Vec::with_capacity(size);
        for (index, (client, route)) in clients.iter().zip(routes).enumerate() {
            let name = format!("n{}", index + 1);
            let others: Vec<String> = routes
                .iter()
                .filter(|other| *other != route)
                .map(|other| format!("\"nats-route://127.0.0.1:{other}\""))
                .collect();
            let config = format!(
                "server_name: \"{name}\"\n\
                 listen: \"127.0.0.1:{client}\"\n\
                 jetstream {{\n  store_dir: \"{store}\"\n}}\n\
                 cluster {{\n  name: \"cqrs\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                store = dir.join(&name).display(),
                routes = others.join(", "),
            );
            let file = dir.join(format!("{name}.conf"));
            std::fs::write(&file, config).expect("the node's configuration");
            let log = dir.join(format!("{name}.log"));
            let out = std::fs::File::create(&log).expect("the node's log");
            let err = out.try_clone().expect("the node's log, twice");
            let child = Command::new(nats_server())
                .arg("-c")
                .arg(&file)
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
                .expect("nats-server starts (scripts/test installs it when missing)");
            nodes.push(Node {
                name,
                url: format!("nats://127.0.0.1:{client}"),
                log,
                child: Some(child),
            });
        }
        let cluster = Self { nodes, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in clients {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "a cluster node did not come up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    /// Every node's client URL (killed ones too), for a client that fails over.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// Kills the node named `name` with SIGKILL, no goodbye to its peers or clients;
    /// `false` when there is no such node running.
    pub(crate) fn kill(&mut self, name: &str) -> bool {
        let Some(mut child) = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .and_then(|n| n.child.take())
        else {
            return false;
        };
        let killed = child.kill().is_ok();
        let _ = child.wait();
        killed
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- the last lines of {}'s log:", node.name);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
