//! Process managers on PostgreSQL: timers fire once with two runners competing and when
//! ownership moves; a refused command is reacted to once; a command that cannot be
//! carried out is sent again with its error kept; state survives between reactions.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::counter::{Add, Added, Counter};
use common::{TestStore, eventually};
use cqrs_core::process::{Dispatch, Effects, ProcessManager, Refusal, StepInput, replay};
use cqrs_core::{CommandMetadata, Cqrs, EventEnvelope, EventFilter, EventStore};
use cqrs_postgres::{PgEventStore, PgProjectionRunner, PgRunnerTuning};
use serde::{Deserialize, Serialize};

/// For each `counter` stream `c-*`: after its first `Added { amount }`, waits `amount`
/// milliseconds, then adds 1 to `ping-<stream>`; when that is refused, adds 1 to
/// `refused-<stream>` instead. Counts the events it heard in its state.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Reminders {
    heard: u64,
    scheduled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping {
    stream: String,
    heard: u64,
}

impl ProcessManager for Reminders {
    const NAME: &'static str = "reminders";
    type Event = Added;
    type Command = Ping;

    fn filter() -> EventFilter {
        EventFilter::event_types(<Added as cqrs_core::Event>::TYPES).and_stream_type("counter")
    }

    fn correlation_key(event: &EventEnvelope<Added>) -> Option<String> {
        event
            .stream_id
            .starts_with("c-")
            .then(|| event.stream_id.clone())
    }

    fn handle_event(&mut self, event: &EventEnvelope<Added>, effects: &mut Effects<Ping>) {
        self.heard += 1;
        if !self.scheduled {
            self.scheduled = true;
            effects.schedule("ping", Duration::from_millis(event.payload.amount));
        }
    }

    fn handle_timer(&mut self, _: &str, effects: &mut Effects<Ping>) {
        effects.send(Ping {
            stream: "ping".into(),
            heard: self.heard,
        });
    }

    fn handle_refusal(&mut self, command: &Ping, _: &str, effects: &mut Effects<Ping>) {
        effects.send(Ping {
            stream: "refused".into(),
            heard: command.heard,
        });
        effects.finish();
    }
}

/// Sends pings to the counters, counting every attempt; refuses the keys in `refuse`,
/// and fails the first `fail` attempts of the keys in `flaky`.
struct Pinger {
    counters: Cqrs<Counter, PgEventStore>,
    sent: AtomicUsize,
    refuse: Vec<String>,
    flaky: Mutex<HashMap<String, u32>>,
}

impl Dispatch<Ping> for Pinger {
    async fn dispatch(&self, ping: Ping, metadata: CommandMetadata) -> Result<(), Refusal> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        let key = metadata
            .headers
            .get("process_key")
            .cloned()
            .unwrap_or_default();
        if ping.stream == "ping" && self.refuse.contains(&key) {
            return Err(Refusal::Rejected("no pings for this one".into()));
        }
        let failing = {
            let mut flaky = self.flaky.lock().unwrap_or_else(|e| e.into_inner());
            match flaky.get_mut(&key) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            }
        };
        if failing {
            return Err(Refusal::Failed("the pinger is down".into()));
        }
        self.counters
            .execute_with(&format!("{}-{key}", ping.stream), Add(ping.heard), metadata)
            .await
            .map(|_| ())
            .map_err(Refusal::from)
    }
}

fn pinger(store: &PgEventStore, refuse: &[&str], flaky: &[(&str, u32)]) -> Arc<Pinger> {
    Arc::new(Pinger {
        counters: Cqrs::new(store.clone()),
        sent: AtomicUsize::new(0),
        refuse: refuse.iter().map(|s| (*s).to_owned()).collect(),
        flaky: Mutex::new(flaky.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()),
    })
}

async fn runner(store: &PgEventStore, owner: &str, pinger: &Arc<Pinger>) -> PgProjectionRunner {
    PgProjectionRunner::builder(store.clone())
        .owner(owner)
        .tuning(
            PgRunnerTuning::default()
                .poll_interval(Duration::from_millis(50))
                .claim_interval(Duration::from_millis(50)),
        )
        .process::<Reminders, _>(Arc::clone(pinger))
        .start()
        .await
        .expect("runner starts")
}

async fn version(store: &PgEventStore, stream: &str) -> u64 {
    store
        .load("counter", stream, 0)
        .await
        .expect("load")
        .last()
        .map_or(0, |e| e.stream_version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_once_with_two_runners_and_when_the_owner_stops() {
    let test = TestStore::new("pm_timers").await;
    let store = test.store.clone();
    let counters = Cqrs::<Counter, _>::new(store.clone());
    let pinger = pinger(&store, &[], &[]);
    let first = runner(&store, "first", &pinger).await;
    let second = runner(&store, "second", &pinger).await;

    // 40 instances, timers of 200..590 ms; some hear a second event, appended right
    // after the first and so heard well before their timer fires (a timer of a few
    // milliseconds could fire first on a loaded machine, and the state would rightly
    // not have heard it).
    for i in 0..40_u64 {
        counters
            .execute(&format!("c-{i}"), Add(200 + i * 10))
            .await
            .expect("add");
        if i % 3 == 0 {
            counters
                .execute(&format!("c-{i}"), Add(1))
                .await
                .expect("add");
        }
    }
    // Stop whichever owns it while timers are pending: the other takes over.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let status = first.status().await.expect("status");
    let owner_is_first = status
        .iter()
        .any(|s| s.name == "reminders" && s.owner.as_deref() == Some("first"));
    let survivor = if owner_is_first {
        first.shutdown().await;
        second
    } else {
        second.shutdown().await;
        first
    };
    let all_pinged = eventually(Duration::from_secs(20), || async {
        for i in 0..40 {
            if version(&store, &format!("ping-c-{i}")).await == 0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(all_pinged.is_some(), "every timer fired");
    // Nothing more fires later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..40_u64 {
        let stream = format!("ping-c-{i}");
        assert_eq!(version(&store, &stream).await, 1, "{stream} pinged once");
        let loaded = Cqrs::<Counter, _>::new(store.clone())
            .load(&stream)
            .await
            .expect("load");
        let heard = if i % 3 == 0 { 2 } else { 1 };
        assert_eq!(
            loaded.state.total, heard,
            "{stream}: the state kept what it heard"
        );
    }
    assert_eq!(
        pinger.sent.load(Ordering::SeqCst),
        40,
        "each ping was sent once, even across the change of owner"
    );
    // Each instance's history folds into the state it keeps: one step per event heard
    // and one for its timer.
    for i in [0_u64, 1] {
        let key = format!("c-{i}");
        let history = store
            .process_history("reminders", &key)
            .await
            .expect("history");
        let heard = if i % 3 == 0 { 2 } else { 1 };
        assert_eq!(history.len(), heard + 1, "{history:#?}");
        assert!(matches!(
            history.last().map(|s| &s.input),
            Some(StepInput::Timer { name, .. }) if name == "ping"
        ));
        let folded: Reminders =
            replay(&key, history.iter().map(|s| &s.input)).expect("the history folds");
        let mut tx = store.begin_in_schema().await.expect("tx");
        let (kept, version): (serde_json::Value, i64) = sqlx::query_as(
            "SELECT state, version FROM process_instances WHERE manager = 'reminders' AND key = $1",
        )
        .bind(&key)
        .fetch_one(&mut *tx)
        .await
        .expect("instance");
        drop(tx);
        assert_eq!(serde_json::to_value(&folded).expect("encodes"), kept);
        assert_eq!(usize::try_from(version).expect("small"), history.len());
    }
    survivor.shutdown().await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_is_reacted_to_once_and_a_failing_one_is_sent_again() {
    let test = TestStore::new("pm_refusals").await;
    let store = test.store.clone();
    let counters = Cqrs::<Counter, _>::new(store.clone());
    let pinger = pinger(&store, &["c-refused"], &[("c-flaky", 2)]);
    let runner = runner(&store, "only", &pinger).await;
    for key in ["c-refused", "c-flaky", "c-fine"] {
        counters.execute(key, Add(10)).await.expect("add");
    }
    let done = eventually(Duration::from_secs(20), || async {
        (version(&store, "refused-c-refused").await == 1
            && version(&store, "ping-c-flaky").await == 1
            && version(&store, "ping-c-fine").await == 1)
            .then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the refusal, the retried and the plain ping all landed"
    );
    assert_eq!(version(&store, "ping-c-refused").await, 0);
    // The flaky ping's error was kept while it waited (its row is gone now).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        version(&store, "refused-c-refused").await,
        1,
        "reacted once"
    );
    // refused (1) + its reaction (1) + flaky (2 failures + 1) + fine (1)
    assert_eq!(pinger.sent.load(Ordering::SeqCst), 6);
    let mut tx = store.begin_in_schema().await.expect("tx");
    let (waiting, instances_finished): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM process_outbox), \
                (SELECT count(*) FROM process_instances WHERE finished_at IS NOT NULL)",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("counts");
    drop(tx);
    assert_eq!(waiting, 0);
    assert_eq!(instances_finished, 1, "the refused one finished");
    runner.shutdown().await;
    test.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_keeps_failing_waits_with_its_error_and_blocks_only_its_instance() {
    let test = TestStore::new("pm_failing").await;
    let store = test.store.clone();
    let counters = Cqrs::<Counter, _>::new(store.clone());
    let pinger = pinger(&store, &[], &[("c-down", u32::MAX)]);
    let runner = runner(&store, "only", &pinger).await;
    counters.execute("c-down", Add(1)).await.expect("add");
    counters.execute("c-up", Add(1)).await.expect("add");
    let kept = eventually(Duration::from_secs(10), || async {
        let mut tx = store.begin_in_schema().await.ok()?;
        let row: Option<(i32, Option<String>)> = sqlx::query_as(
            "SELECT attempts, last_error FROM process_outbox WHERE key = 'c-down' AND attempts >= 2",
        )
        .fetch_optional(&mut *tx)
        .await
        .ok()?;
        row
    })
    .await;
    let (attempts, error) = kept.expect("the failing command stays, its attempts counted");
    assert!(attempts >= 2);
    assert_eq!(
        error.as_deref(),
        Some("the pinger is down"),
        "the error is kept for operators"
    );
    assert_eq!(
        version(&store, "ping-c-up").await,
        1,
        "other instances go on"
    );
    assert_eq!(version(&store, "ping-c-down").await, 0);
    runner.shutdown().await;
    test.cleanup().await;
}
