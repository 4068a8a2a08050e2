//! A real server crash: a PostgreSQL cluster of the test's own (initdb in a temporary
//! directory, on a free port) is stopped with an immediate shutdown, which is a crash to
//! the server, and started again, several times, while writers append and a runner
//! projects. The store reconnects by itself, no acknowledged append is lost, none is
//! written in part, and the view equals the fold of the log.

mod common;
mod projection_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cqrs_core::store::{AppendRequest, NewEvent};
use cqrs_core::{EventStore, Position};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning};
use projection_support::{Balances, STREAM, fold, rows, served_view};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

/// The server's programs, from the newest installed PostgreSQL.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed under /usr/lib/postgresql (scripts/test installs it)")
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs `command`; panics with its output when it fails.
fn run(command: &mut Command) {
    let out = command.output().expect("run a server program");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster of the test's own, removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_root: bool,
}

impl Cluster {
    fn init() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("cqrs-restart-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let cluster = Self {
            bin: bin_dir(),
            dir,
            port,
            as_root: running_as_root(),
        };
        if cluster.as_root {
            // The server refuses to run as root: the cluster belongs to `postgres`.
            run(Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&cluster.dir));
        }
        let data = cluster.data();
        cluster.server(&[
            "initdb",
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-D",
            &data,
        ]);
        cluster.start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs one of the server's programs, as `postgres` when the test runs as root.
    fn server(&self, args: &[&str]) {
        let program = self.bin.join(args[0]);
        let mut command = if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.args(&args[1..]);
        run(&mut command);
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=60",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        self.server(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-o",
            &options,
            "-l",
            &log,
            "-w",
            "start",
        ]);
    }

    /// Stops the server the way a crash would: no checkpoint, no goodbye to clients.
    fn crash(&self) {
        self.server(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let mut command = if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(Path::new(&self.dir));
    }
}

/// Appends `n` events of `amount` to `stream` at `expected`, with `command_id`, until it
/// is acknowledged: a failed attempt is retried with the same request (same event ids
/// and command id), as a caller must when an outcome is unknown.
/// Returns the outcome and how many attempts failed.
async fn append_until_acknowledged(
    store: &PgEventStore,
    request: AppendRequest,
) -> (cqrs_core::store::AppendOutcome, u32) {
    let mut failed = 0;
    loop {
        match store.append(request.clone()).await {
            Ok(outcome) => return (outcome, failed),
            Err(error) if error.is_conflict() => panic!("a writer of its own stream conflicted"),
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashing_server_loses_no_acknowledged_append_and_the_view_stays_exact() {
    let cluster = Cluster::init();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&cluster.url())
        .await
        .expect("connect to the test's cluster");
    let store = PgEventStore::builder(pool)
        .schema("restart")
        .build()
        .expect("the store");
    store.migrate().await.expect("migrate");
    let runner = PgProjectionRunner::builder(store.clone())
        .tuning(
            PgRunnerTuning::default()
                .batch_size(50)
                .poll_interval(Duration::from_millis(200))
                .claim_interval(Duration::from_millis(200)),
        )
        .view(Balances::<1>::new("restart"))
        .start()
        .await
        .expect("start the runner");

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4_u64 {
        let store = store.clone();
        let stop = Arc::clone(&stop);
        writers.spawn(async move {
            let stream = format!("w-{w}");
            let (mut version, mut acknowledged, mut failed) = (0_u64, Vec::new(), 0);
            while !stop.load(Ordering::Relaxed) {
                // Three events per append: an append is written whole or not at all.
                let events = (0..3)
                    .map(|i| NewEvent::new("Added", 2, json!({ "amount": w * 10 + i + 1 })))
                    .collect();
                let request = AppendRequest::new(STREAM, stream.clone(), version, events)
                    .with_command_id(uuid::Uuid::new_v4());
                let (outcome, attempts_failed) = append_until_acknowledged(&store, request).await;
                failed += attempts_failed;
                assert_eq!(outcome.first_version, version + 1, "acknowledged in order");
                version = outcome.stream_version;
                acknowledged.push(outcome);
            }
            (stream, acknowledged, failed)
        });
    }

    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.crash();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.start();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = BTreeMap::new();
    let (mut last, mut failed) = (Position::START, 0);
    while let Some(joined) = writers.join_next().await {
        let (stream, outcomes, attempts_failed) = joined.expect("writer");
        last = outcomes
            .iter()
            .map(|o| o.position)
            .fold(last, Position::max);
        failed += attempts_failed;
        acknowledged.insert(stream, outcomes);
    }
    println!(
        "{} appends acknowledged over three crashes; {failed} attempts failed while the \
         server was down and were retried with the same command id",
        acknowledged.values().map(Vec::len).sum::<usize>()
    );
    assert!(
        failed > 0,
        "no attempt failed: the crashes missed the writers"
    );
    assert!(
        acknowledged.values().all(|outcomes| !outcomes.is_empty()),
        "every writer got appends through"
    );

    for (stream, outcomes) in &acknowledged {
        let stored = store.load(STREAM, stream, 0).await.expect("load");
        let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
        let expected: Vec<u64> = (1..=outcomes.last().map_or(0, |o| o.stream_version)).collect();
        assert_eq!(
            versions, expected,
            "{stream}: every acknowledged append once, whole, and nothing else"
        );
        for outcome in outcomes {
            let at = &stored[usize::try_from(outcome.first_version - 1).expect("fits")..][..3];
            assert!(
                at.iter()
                    .all(|e| e.position.commit() == outcome.position.commit()),
                "{stream}: an append's events in one transaction"
            );
        }
    }
    runner
        .wait_for_named("balances", last, Duration::from_secs(30))
        .await
        .expect("the projection catches up after the crashes");
    assert_eq!(
        rows(store.pool(), &served_view("restart")).await,
        fold(store.pool(), "restart").await,
        "the view equals the fold of the log"
    );
    runner.shutdown().await;
    store.pool().close().await;
}
