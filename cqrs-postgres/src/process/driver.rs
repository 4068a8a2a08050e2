//! The timer and command side of a process manager: while this process owns the
//! manager, fires its due timers and sends the commands its reactions decided.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use cqrs_core::process::{Dispatch, ProcessManager, Refusal, StepInput, command_metadata};
use serde_json::Value;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, warn};
use uuid::Uuid;

use super::instances::{Cause, react_once};
use crate::db::{Result, Sql};
use crate::projection::{Shared, begin};

/// How long an idle driver sleeps before looking for due timers again (it wakes sooner
/// when the manager's checkpoint moves, since a batch may have decided commands).
const TICK: Duration = Duration::from_millis(100);
/// How many timers or commands one round takes.
const ROUND: i64 = 256;
/// How many commands (of different instances) are sent at once.
const IN_FLIGHT: usize = 32;
/// The longest wait before a command that could not be carried out is sent again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One command waiting to be sent: the first waiting one of its instance.
type Waiting = (Uuid, String, Value, Option<Uuid>, i32);

/// What became of one command sent.
enum Sent {
    Done(Uuid),
    Refused(Uuid, String, Value, Option<Uuid>, String),
    Failed(Uuid, i32, String),
}

pub(crate) struct Driver<P, D> {
    dispatcher: Arc<D>,
    shared: Arc<Shared>,
    owned: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    manager: PhantomData<fn() -> P>,
}

impl<P, D> Driver<P, D>
where
    P: ProcessManager,
    D: Dispatch<P::Command>,
{
    pub(crate) fn new(
        dispatcher: Arc<D>,
        shared: Arc<Shared>,
        owned: watch::Receiver<bool>,
    ) -> Self {
        let shutdown = shared.shutdown.clone();
        Self {
            dispatcher,
            shared,
            owned,
            shutdown,
            manager: PhantomData,
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn owned(&self) -> bool {
        *self.owned.borrow() && !self.stopping()
    }

    pub(crate) async fn run(mut self) {
        let span = tracing::info_span!("cqrs_postgres.process", manager = P::NAME);
        async move {
            let mut checkpoints = self.shared.hub.subscribe_served(P::NAME);
            loop {
                while !*self.owned.borrow_and_update() {
                    if self.stopping() {
                        return;
                    }
                    tokio::select! {
                        changed = self.owned.changed() => if changed.is_err() { return },
                        _ = self.shutdown.changed() => {}
                    }
                }
                let mut failures = 0_u32;
                while self.owned() {
                    let pause = match self.round().await {
                        Ok(true) => {
                            failures = 0;
                            continue;
                        }
                        Ok(false) => {
                            failures = 0;
                            TICK
                        }
                        Err(error) => {
                            failures = failures.saturating_add(1);
                            warn!(%error, failures, "process manager round failed; trying again");
                            backoff(failures)
                        }
                    };
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        _ = checkpoints.changed() => {}
                        _ = self.owned.changed() => {}
                        _ = self.shutdown.changed() => {}
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Fires the due timers, then sends the waiting commands. `true` when there was
    /// something to do (there may be more).
    async fn round(&self) -> Result<bool> {
        let fired = self.fire_due().await?;
        let sent = self.send_waiting().await?;
        Ok(fired || sent)
    }

    /// The rows `query` (bound to the manager's name and the round's size) returns, read
    /// in the store's schema.
    async fn read<T>(&self, query: Sql) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let mut tx = begin(&self.shared).await?;
        let rows = query.bind(P::NAME).bind(ROUND).fetch_all(&mut *tx).await?;
        commit(tx).await?;
        Ok(rows)
    }

    async fn fire_due(&self) -> Result<bool> {
        let due: Vec<(Uuid, String, String)> = self
            .read(Sql::new(
                "process_due",
                "SELECT id, key, name FROM process_timers \
                 WHERE manager = $1 AND due_at <= now() ORDER BY due_at LIMIT $2",
            ))
            .await?;
        for (id, key, name) in &due {
            if !self.owned() {
                break;
            }
            let mut tx = begin(&self.shared).await?;
            let remove =
                Sql::new("process_fire", "DELETE FROM process_timers WHERE id = $1").bind(*id);
            let cause = Cause {
                input: StepInput::Timer {
                    timer_id: *id,
                    name: name.clone(),
                },
                correlation_id: None,
            };
            let fired = react_once::<P>(&mut tx, key, &cause, remove, |state, effects| {
                state.handle_timer(name, effects);
            })
            .await?;
            commit(tx).await?;
            if fired {
                debug!(key = %key, timer = %name, "timer fired");
            }
        }
        Ok(!due.is_empty())
    }

    async fn send_waiting(&self) -> Result<bool> {
        let waiting: Vec<Waiting> = self
            .read(Sql::new(
                "process_waiting",
                "SELECT id, key, command, correlation_id, attempts FROM ( \
                     SELECT DISTINCT ON (key) id, key, command, correlation_id, attempts, \
                            next_at, seq \
                     FROM process_outbox WHERE manager = $1 ORDER BY key, seq \
                 ) AS first WHERE next_at <= now() ORDER BY seq LIMIT $2",
            ))
            .await?;
        if waiting.is_empty() {
            return Ok(false);
        }
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut sending = JoinSet::new();
        for (id, key, json, correlation_id, attempts) in waiting {
            let dispatcher = Arc::clone(&self.dispatcher);
            let permits = Arc::clone(&permits);
            sending.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let command: P::Command = match serde_json::from_value(json.clone()) {
                    Ok(command) => command,
                    Err(error) => {
                        return Sent::Failed(
                            id,
                            attempts,
                            format!("the stored command does not decode: {error}"),
                        );
                    }
                };
                let metadata = command_metadata(P::NAME, &key, id, correlation_id);
                match dispatcher.dispatch(command, metadata).await {
                    Ok(()) => Sent::Done(id),
                    Err(Refusal::Rejected(reason)) => {
                        Sent::Refused(id, key, json, correlation_id, reason)
                    }
                    Err(Refusal::Failed(error)) => Sent::Failed(id, attempts, error.to_string()),
                }
            });
        }
        let mut done = Vec::new();
        let mut outcomes = Vec::new();
        while let Some(joined) = sending.join_next().await {
            match joined {
                Ok(Sent::Done(id)) => done.push(id),
                Ok(other) => outcomes.push(other),
                Err(error) => warn!(%error, "a command's task ended abnormally; it is sent again"),
            }
        }
        let mut tx = begin(&self.shared).await?;
        Sql::new(
            "process_sent",
            "DELETE FROM process_outbox WHERE id = ANY($1)",
        )
        .bind(done)
        .execute(&mut *tx)
        .await?;
        for outcome in &outcomes {
            if let Sent::Failed(id, attempts, error) = outcome {
                warn!(command = %id, attempts = attempts + 1, %error, "command not carried out; it is sent again later");
                Sql::new(
                    "process_retry",
                    "UPDATE process_outbox SET attempts = attempts + 1, last_error = $2, \
                     next_at = now() + $3 * interval '1 millisecond' WHERE id = $1",
                )
                .bind(*id)
                .bind(error.as_str())
                .bind(
                    i64::try_from(backoff(attempts.unsigned_abs().saturating_add(1)).as_millis())
                        .unwrap_or(i64::MAX),
                )
                .execute(&mut *tx)
                .await?;
            }
        }
        commit(tx).await?;
        for outcome in outcomes {
            if let Sent::Refused(id, key, json, correlation_id, reason) = outcome {
                self.refused(id, &key, json, correlation_id, &reason)
                    .await?;
            }
        }
        Ok(true)
    }

    /// Reacts to the refusal of command `id`, in the transaction that removes it.
    async fn refused(
        &self,
        id: Uuid,
        key: &str,
        json: Value,
        correlation_id: Option<Uuid>,
        reason: &str,
    ) -> Result<()> {
        debug!(key = %key, command = %id, %reason, "command refused");
        let command: P::Command =
            serde_json::from_value(json.clone()).map_err(|source| crate::Error::ProcessJson {
                manager: P::NAME.to_owned(),
                key: key.to_owned(),
                what: "command",
                source,
            })?;
        let mut tx = begin(&self.shared).await?;
        let remove = Sql::new(
            "process_refused",
            "DELETE FROM process_outbox WHERE id = $1",
        )
        .bind(id);
        let cause = Cause {
            input: StepInput::Refused {
                command_id: id,
                command: json,
                reason: reason.to_owned(),
            },
            correlation_id,
        };
        react_once::<P>(&mut tx, key, &cause, remove, |state, effects| {
            state.handle_refusal(&command, reason, effects);
        })
        .await?;
        commit(tx).await?;
        Ok(())
    }
}

/// Commits one of the driver's transactions.
async fn commit(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Result<()> {
    tx.commit()
        .await
        .map_err(|e| crate::Error::database("commit", e))
}

/// 100 ms doubled at each failure, up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (Duration::from_millis(100) * 2_u32.pow(doublings)).min(MAX_BACKOFF)
}
