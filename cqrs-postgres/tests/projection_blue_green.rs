//! Blue/green switches under writers who read their own writes: a new version becomes
//! the served one only at or past the served checkpoint, so a client that waited for
//! its write keeps seeing it across every switch, and the served checkpoint never moves
//! back.

mod common;
mod projection_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TestStore, eventually};
use cqrs_core::Position;
use cqrs_postgres::{PgProjectionRunner, PgRunnerTuning};
use projection_support::{Balances, add, served_view};

const WRITERS: u64 = 16;
const WAIT: Duration = Duration::from_secs(60);

/// What the clients saw: reads right after `wait_for` that lacked the client's write,
/// and reads that lacked a write an earlier read had shown.
#[derive(Default)]
struct Seen {
    misses: AtomicU64,
    gone: AtomicU64,
    reads: AtomicU64,
}

/// Starts a runner of version `V`.
async fn start<const V: u32>(t: &TestStore, schema: &str) -> PgProjectionRunner {
    PgProjectionRunner::builder(t.store.clone())
        .tuning(PgRunnerTuning::default().poll_interval(Duration::from_millis(100)))
        .view(Balances::<V>::new(schema))
        .start()
        .await
        .expect("start")
}

/// Starts version `V` beside the served one and waits until it is served.
async fn switch_to<const V: u32>(t: &TestStore, schema: &str) -> PgProjectionRunner {
    let runner = start::<V>(t, schema).await;
    let begun = Instant::now();
    let served = eventually(WAIT, || async {
        let status = runner.status_of("balances").await.ok()?;
        status
            .iter()
            .any(|s| s.version == V && s.active)
            .then_some(())
    })
    .await;
    let status = runner.status_of("balances").await.expect("status");
    assert!(
        served.is_some(),
        "version {V} never became the served one: {status:#?}"
    );
    eprintln!(
        "version {V} served after {:.2} s",
        begun.elapsed().as_secs_f64()
    );
    runner
}

/// The served version and its checkpoint.
async fn served(pool: &sqlx::PgPool, schema: &str) -> Option<(i32, i64, i64)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT version, transaction_id, sequence FROM \"{schema}\".projections \
         WHERE name = 'balances' AND active"
    )))
    .fetch_optional(pool)
    .await
    .expect("served row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_keep_their_writes_across_twenty_switches() {
    let t = TestStore::with_pool_size("proj_bg", 32).await;
    let schema = t.store.schema().to_owned();
    let first = start::<1>(&t, &schema).await;
    first
        .wait_for::<Balances<1>>(Position::START, WAIT)
        .await
        .expect("version 1 is served");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());

    // Clients: append, wait for the write, read it back; every earlier write must be
    // there too.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (store, pool, runner) = (t.store.clone(), t.pool().clone(), first.clone());
        let (stop, seen, view) = (Arc::clone(&stop), Arc::clone(&seen), served_view(&schema));
        writers.spawn(async move {
            let account = format!("w-{w}");
            let mut written = 0_i64;
            let mut shown = 0_i64;
            while !stop.load(Ordering::Relaxed) {
                let token = add(&store, &account, u64::try_from(written).unwrap_or(0), 1).await;
                written += 1;
                runner
                    .wait_for::<Balances>(token, WAIT)
                    .await
                    .expect("the served view passes the write");
                let events: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT events FROM {view} WHERE account = $1"
                )))
                .bind(&account)
                .fetch_optional(&pool)
                .await
                .expect("read the served view");
                let events = events.unwrap_or(0);
                seen.reads.fetch_add(1, Ordering::Relaxed);
                if events < shown {
                    seen.gone.fetch_add(1, Ordering::Relaxed);
                }
                if events < written {
                    seen.misses.fetch_add(1, Ordering::Relaxed);
                }
                shown = shown.max(events);
                // A pause after each write, so that the log grows at a pace the new
                // versions' replays keep up with even on a loaded machine: every
                // version started keeps running beside the served one, so the work per
                // write grows with each switch.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            written
        });
    }

    // A watcher of the served row: neither its version nor its checkpoint moves back.
    let watcher = {
        let (pool, schema, stop) = (t.pool().clone(), schema.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut last, mut backwards, mut looks) = ((0, 0, 0), 0_u64, 0_u64);
            while !stop.load(Ordering::Relaxed) {
                if let Some(now) = served(&pool, &schema).await {
                    looks += 1;
                    if now.0 < last.0 || (now.1, now.2) < (last.1, last.2) {
                        eprintln!("served row moved back: {last:?} -> {now:?}");
                        backwards += 1;
                    }
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (backwards, looks)
        })
    };

    // Versions 2 to 23 take over one after the other: 22 switches.
    let started = Instant::now();
    let mut runners = vec![first.clone()];
    macro_rules! switches {
        ($($v:literal),*) => {$(
            runners.push(switch_to::<$v>(&t, &schema).await);
            // The version before the one just served stops (and is forgotten later).
            if runners.len() > 2 {
                runners.remove(1).shutdown().await;
            }
        )*};
    }
    switches!(
        2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23
    );
    let switching = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    while let Some(joined) = writers.join_next().await {
        written += joined.expect("writer");
    }
    let (backwards, looks) = watcher.await.expect("watcher");
    println!(
        "22 switches in {:.1} s under {WRITERS} clients: {written} writes, {} reads after \
         waiting, {} misses, {} writes gone; the served row looked at {looks} times, moved \
         back {backwards} times",
        switching.as_secs_f64(),
        seen.reads.load(Ordering::Relaxed),
        seen.misses.load(Ordering::Relaxed),
        seen.gone.load(Ordering::Relaxed),
    );
    assert_eq!(served(t.pool(), &schema).await.map(|s| s.0), Some(23));
    assert_eq!(
        seen.misses.load(Ordering::Relaxed),
        0,
        "reads missed the own write"
    );
    assert_eq!(
        seen.gone.load(Ordering::Relaxed),
        0,
        "writes read once were gone"
    );
    assert_eq!(backwards, 0, "the served row moved back");
    assert!(written > 0 && looks > 0);
    for runner in runners {
        runner.shutdown().await;
    }
    t.cleanup().await;
}
