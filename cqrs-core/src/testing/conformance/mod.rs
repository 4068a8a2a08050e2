//! The storage conformance suite: the [`EventStore`] contract as executable tests.
//!
//! Every backend in this workspace runs it, and a third-party backend proves itself with
//! one call. Give [`run`] a function that makes a fresh, empty store; it is called once
//! per test, so tests never see each other's data (for a database backend, hand out a
//! new schema or database each time):
//!
//! ```
//! use cqrs_core::memory::MemoryEventStore;
//! use cqrs_core::testing::conformance;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! conformance::run(|| async { MemoryEventStore::new() }).await;
//! # });
//! ```
//!
//! In a backend's own test suite this is a single `#[tokio::test]`:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn conforms_to_the_event_store_contract() {
//!     conformance::run(|| async { MyStore::connect_to_fresh_schema().await.unwrap() }).await;
//! }
//! ```
//!
//! [`run`] panics with the name and reason of every failing test. [`tests`] lists them,
//! for a backend that wants to run them one by one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::EventStore;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(format!("{}: got {:?}, expected {:?}", format!($($msg)+), left, right));
        }
    }};
}

mod atomic;
mod concurrency;
mod helpers;
mod log;
mod snapshots;
mod streams;

/// The result of one conformance test: `Err` explains the violation.
pub type Verdict = Result<(), String>;

type Check = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// One named test of the contract.
#[derive(Clone, Copy)]
pub struct ConformanceTest {
    name: &'static str,
    run: fn(Arc<dyn EventStore>) -> Check,
}

impl std::fmt::Debug for ConformanceTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConformanceTest").field(&self.name).finish()
    }
}

impl ConformanceTest {
    /// The test's name, which states the rule it checks.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Runs the test on a fresh, empty store.
    pub async fn run(&self, store: Arc<dyn EventStore>) -> Verdict {
        (self.run)(store).await
    }
}

/// Runs every conformance test, each on a store fresh from `new_store`.
///
/// # Panics
///
/// When a test fails, after all have run, listing each failing test and its reason.
pub async fn run<F, Fut, S>(mut new_store: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
    S: EventStore,
{
    let mut failures = Vec::new();
    for test in tests() {
        let store: Arc<dyn EventStore> = Arc::new(new_store().await);
        if let Err(reason) = test.run(store).await {
            failures.push(format!("  {}: {reason}", test.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} event store conformance tests failed:\n{}",
        failures.len(),
        tests().len(),
        failures.join("\n")
    );
}

/// Every conformance test.
#[must_use]
pub fn tests() -> &'static [ConformanceTest] {
    TESTS
}

macro_rules! suite {
    ($($module:ident :: $name:ident),* $(,)?) => {
        const TESTS: &[ConformanceTest] = &[
            $(ConformanceTest {
                name: stringify!($name),
                run: |store| Box::pin($module::$name(store)),
            },)*
        ];
    };
}

suite![
    streams::loading_a_missing_stream_returns_no_events,
    streams::first_append_expects_version_zero,
    streams::append_assigns_contiguous_versions,
    streams::append_outcome_reports_versions_and_last_position,
    streams::load_returns_events_in_version_order,
    streams::load_after_a_version_returns_only_the_tail,
    streams::load_after_the_last_version_is_empty,
    streams::stale_expected_version_conflicts,
    streams::expected_version_ahead_of_the_stream_conflicts,
    streams::new_stream_with_nonzero_expected_version_conflicts,
    streams::conflict_writes_nothing,
    streams::conflict_names_the_stream_and_expected_version,
    streams::streams_are_isolated_by_id,
    streams::streams_are_isolated_by_type,
    streams::empty_append_is_rejected_and_writes_nothing,
    streams::empty_stream_id_is_rejected,
    streams::schema_version_zero_is_rejected_and_writes_nothing,
    streams::stored_fields_round_trip,
    streams::recorded_at_is_set_by_the_store,
    streams::event_id_already_stored_is_rejected_and_writes_nothing,
    streams::event_id_twice_in_one_append_is_rejected,
    streams::repeated_command_id_returns_original_outcome_and_writes_nothing,
    streams::repeated_command_id_on_another_stream_is_refused_and_writes_nothing,
    streams::stream_ids_past_the_limit_are_refused_and_write_nothing,
    streams::find_command_returns_the_original_outcome,
    streams::racing_appends_with_one_command_id_write_once,
    log::read_all_returns_every_event_in_order,
    log::read_all_after_a_position_excludes_it,
    log::read_all_in_batches_covers_the_log_exactly_once,
    log::read_all_filters_by_event_type,
    log::read_all_filters_by_stream_type,
    log::read_all_filters_by_both,
    log::read_all_keeps_an_append_contiguous_and_in_version_order,
    log::positions_grow_across_appends,
    log::head_is_start_for_an_empty_store,
    log::head_is_the_last_event_position,
    snapshots::snapshot_of_unknown_stream_is_none,
    snapshots::snapshot_round_trips,
    snapshots::newer_snapshot_replaces_older,
    snapshots::older_snapshot_never_replaces_newer,
    snapshots::snapshot_ahead_of_its_stream_is_refused,
    snapshots::load_for_command_returns_snapshot_and_tail,
    snapshots::load_for_command_ignores_other_state_versions,
    snapshots::load_for_command_without_snapshot_returns_whole_stream,
    concurrency::racing_appends_on_one_stream_have_one_winner,
    concurrency::concurrent_appends_on_many_streams_all_land,
    concurrency::odd_stream_ids_round_trip,
    concurrency::large_payload_round_trips,
    atomic::atomic_append_writes_every_stream_in_one_commit,
    atomic::atomic_append_with_one_stale_stream_writes_nothing,
    atomic::atomic_repeated_command_id_returns_the_original_outcomes,
    atomic::atomic_command_id_of_another_append_is_refused,
    atomic::atomic_invalid_units_are_refused_and_write_nothing,
    atomic::racing_atomic_units_on_a_shared_stream_have_one_winner,
];
