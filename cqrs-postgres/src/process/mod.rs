//! The process wing: process managers run by a [`PgProjectionRunner`], their instances,
//! commands and timers kept in PostgreSQL beside the log. It builds on the projection
//! wing; nothing below depends on it.
//!
//! - `instances`: running one reaction and recording what it decided;
//! - `view`: the event side, a view the runner's worker drives;
//! - `driver`: the timer and command side.
//!
//! [`PgProjectionRunner`]: crate::PgProjectionRunner

mod driver;
mod instances;
mod view;

use std::sync::Arc;

use cqrs_core::process::{Dispatch, ProcessManager, Step, StepInput};
use serde_json::Value;
use uuid::Uuid;

use crate::db::{Error, Result, Sql};
use crate::projection::spawn_worker;
use crate::{PgEventStore, PgOperations, PgProjectionRunnerBuilder};

/// One process manager as [`PgOperations::processes`] sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PgProcessStatus {
    /// Its name.
    pub manager: String,
    /// Instances running.
    pub running: u64,
    /// Instances finished.
    pub finished: u64,
    /// Commands waiting to be sent.
    pub waiting: u64,
    /// Of those, how many could not be carried out at least once.
    pub failing: u64,
    /// The error of the most recent failure among those, if any.
    pub last_error: Option<String>,
    /// Timers pending.
    pub timers: u64,
    /// Of those, how many are past due (the manager's owner is down or behind).
    pub overdue: u64,
}

impl PgOperations {
    /// The store's process managers: instances, commands waiting or failing, timers.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails.
    pub async fn processes(&self) -> Result<Vec<PgProcessStatus>> {
        let mut tx = self.store().begin_in_schema().await?;
        let rows: Vec<ProcessRow> = Sql::new(
            "ops_processes",
            "WITH managers AS ( \
                 SELECT manager FROM process_instances UNION SELECT manager FROM process_outbox \
                 UNION SELECT manager FROM process_timers \
             ) \
             SELECT m.manager, \
                 (SELECT count(*) FROM process_instances i \
                  WHERE i.manager = m.manager AND i.finished_at IS NULL), \
                 (SELECT count(*) FROM process_instances i \
                  WHERE i.manager = m.manager AND i.finished_at IS NOT NULL), \
                 (SELECT count(*) FROM process_outbox o WHERE o.manager = m.manager), \
                 (SELECT count(*) FROM process_outbox o \
                  WHERE o.manager = m.manager AND o.attempts > 0), \
                 (SELECT o.last_error FROM process_outbox o \
                  WHERE o.manager = m.manager AND o.last_error IS NOT NULL \
                  ORDER BY o.next_at DESC LIMIT 1), \
                 (SELECT count(*) FROM process_timers t WHERE t.manager = m.manager), \
                 (SELECT count(*) FROM process_timers t \
                  WHERE t.manager = m.manager AND t.due_at < now() - interval '1 second') \
             FROM managers m ORDER BY m.manager",
        )
        .fetch_all(&mut *tx)
        .await?;
        drop(tx);
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(rows
            .into_iter()
            .map(
                |(manager, running, finished, waiting, failing, last_error, timers, overdue)| {
                    PgProcessStatus {
                        manager,
                        running: count(running),
                        finished: count(finished),
                        waiting: count(waiting),
                        failing: count(failing),
                        last_error,
                        timers: count(timers),
                        overdue: count(overdue),
                    }
                },
            )
            .collect())
    }
}

/// A row of [`PgOperations::processes`].
type ProcessRow = (String, i64, i64, i64, i64, Option<String>, i64, i64);

impl PgEventStore {
    /// The history of instance `key` of process manager `manager`: one step per
    /// reaction, oldest first. Folded with [`replay`](cqrs_core::process::replay), it
    /// gives the instance's state (a running one keeps that state in
    /// `process_instances.state` too). Empty for an instance that never started.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the query fails (for example before the store's
    /// migrations ran); [`Error::ProcessJson`] for a step that does not decode.
    pub async fn process_history(&self, manager: &str, key: &str) -> Result<Vec<Step>> {
        let mut tx = self.begin_in_schema().await?;
        let rows: Vec<(i64, Value, Vec<Uuid>, bool)> = Sql::new(
            "process_history",
            "SELECT version, input, sent, finished FROM process_steps \
             WHERE manager = $1 AND key = $2 ORDER BY version",
        )
        .bind(manager)
        .bind(key)
        .fetch_all(&mut *tx)
        .await?;
        drop(tx);
        rows.into_iter()
            .map(|(version, input, sent, finished)| {
                let input: StepInput =
                    serde_json::from_value(input).map_err(|source| Error::ProcessJson {
                        manager: manager.to_owned(),
                        key: key.to_owned(),
                        what: "step",
                        source,
                    })?;
                Ok(Step {
                    version: u64::try_from(version).map_err(|_| Error::OutOfRange {
                        column: "process_steps.version",
                        value: version,
                    })?,
                    input,
                    sent,
                    finished,
                })
            })
            .collect()
    }
}

impl PgProjectionRunnerBuilder {
    /// Adds a process manager: it reacts to the log's events like a projection (with
    /// the same checkpoint, ownership across processes, status, retry and skip), and,
    /// while this process owns it, fires its timers and sends its commands through
    /// `dispatcher`.
    ///
    /// Each reaction happens once. A reaction to an event commits its instance's new
    /// state, its commands and its timer changes with the manager's checkpoint; a
    /// reaction to a timer, with the timer's removal; to a refused command, with the
    /// command's removal. Commands go out with ids derived from their cause
    /// ([`command_id`](cqrs_core::process::command_id)), so one sent again after a crash
    /// (between its append and the removal of its row) is recognised by the command
    /// pipeline and appends nothing twice. Those of one instance go out in order, each
    /// after the one before it was accepted or refused; one that could not be carried
    /// out ([`Refusal::Failed`](cqrs_core::process::Refusal::Failed)) is sent again
    /// after a growing delay (up to 30 s), its error kept in `process_outbox.last_error`.
    ///
    /// Timers run on the database's clock, so processes whose clocks disagree agree on
    /// when a timer is due; they fire within about 100 ms of it (later when the owner is
    /// down: the next owner fires what came due meanwhile).
    ///
    /// ```no_run
    /// # use cqrs_core::prelude::*;
    /// # use cqrs_core::process::Effects;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    /// # enum OrderEvent { Placed }
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
    /// # enum OrderCommand { Cancel { #[cqrs(id)] id: String } }
    /// # #[derive(Debug, thiserror::Error)]
    /// # #[error("no")]
    /// # struct No;
    /// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
    /// # #[cqrs(name = "order", command = OrderCommand, event = OrderEvent, error = No)]
    /// # struct Order;
    /// # impl Apply<OrderEvent> for Order { fn apply(&mut self, _: &OrderEvent) {} }
    /// # impl Handle<OrderCommand> for Order {
    /// #     async fn handle(&self, _: &OrderCommand, (): &()) -> Result<Vec<OrderEvent>, No> { Ok(vec![]) }
    /// # }
    /// # #[derive(Debug, Default, Serialize, Deserialize, ProcessManager)]
    /// # #[cqrs(name = "unpaid_orders", event = OrderEvent, command = OrderCommand)]
    /// # struct Unpaid;
    /// # impl React for Unpaid {
    /// #     fn correlate(e: &EventEnvelope<OrderEvent>) -> Option<String> { Some(e.stream_id.clone()) }
    /// #     fn react(&mut self, _: &EventEnvelope<OrderEvent>, _: &mut Effects<OrderCommand>) {}
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use cqrs_postgres::{PgEventStore, PgProjectionRunner};
    ///
    /// let store = PgEventStore::connect("postgres://postgres@localhost/app").await?;
    /// store.migrate().await?;
    /// let orders = Cqrs::<Order, _>::new(store.clone());
    /// let runner = PgProjectionRunner::builder(store)
    ///     .process::<Unpaid, _>(orders)
    ///     .start()
    ///     .await?;
    /// # runner.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn process<P, D>(self, dispatcher: D) -> Self
    where
        P: ProcessManager,
        D: Dispatch<P::Command>,
    {
        let dispatcher = Arc::new(dispatcher);
        self.register(
            P::NAME,
            1,
            P::filter(),
            Box::new(move |shared, owned| {
                let events = spawn_worker(
                    view::ProcessView::<P>::new(),
                    Arc::clone(&shared),
                    owned.clone(),
                );
                let commands =
                    tokio::spawn(driver::Driver::<P, D>::new(dispatcher, shared, owned).run());
                tokio::spawn(async move {
                    // Both watch the runner's shutdown and the ownership.
                    let _ = events.await;
                    let _ = commands.await;
                })
            }),
        )
    }
}
