//! Instances of a process manager in PostgreSQL: running one reaction and recording
//! what it decided, inside the caller's transaction.
//!
//! Every reaction locks its instance's row first (`FOR UPDATE`), and only then touches
//! the instance's timers or commands: the one order every transaction follows, so the
//! event path and the timer and refusal paths never wait on each other in a circle.

use std::time::Duration;

use cqrs_core::process::{Effects, ProcessManager, StepInput, TimerChange, command_id};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::{Error, Result, Sql};

/// What caused a reaction (its id seeds the ids of the commands it sends), and the
/// correlation id they carry on.
pub(crate) struct Cause {
    pub(crate) input: StepInput,
    pub(crate) correlation_id: Option<Uuid>,
}

/// Where an instance stands when a reaction starts.
enum Found<P> {
    New,
    /// Its state after step `version`.
    Running(P, i64),
    Finished,
}

async fn lock<P: ProcessManager>(cx: &mut PgConnection, key: &str) -> Result<Found<P>> {
    let row: Option<(Option<Value>, i64)> = Sql::new(
        "process_lock",
        "SELECT state, version FROM process_instances \
         WHERE manager = $1 AND key = $2 FOR UPDATE",
    )
    .bind(P::NAME)
    .bind(key)
    .fetch_optional(&mut *cx)
    .await?;
    Ok(match row {
        None => Found::New,
        Some((None, _)) => Found::Finished,
        Some((Some(state), version)) => {
            let state = serde_json::from_value(state).map_err(|source| Error::ProcessJson {
                manager: P::NAME.to_owned(),
                key: key.to_owned(),
                what: "state",
                source,
            })?;
            Found::Running(state, version)
        }
    })
}

/// Locks instance `key`, runs `reaction` on its state (a default one for a new
/// instance; none for a finished one) and records the new state, the commands to send
/// and the timer changes. Returns whether the reaction ran.
pub(crate) async fn react<P: ProcessManager>(
    cx: &mut PgConnection,
    key: &str,
    cause: &Cause,
    reaction: impl FnOnce(&mut P, &mut Effects<P::Command>),
) -> Result<bool> {
    let found = lock::<P>(cx, key).await?;
    run(cx, key, cause, found, reaction).await
}

/// Locks instance `key` and removes the row that caused the reaction (`remove`, which
/// returns how many rows it removed); when it removed one, runs `reaction` as
/// [`react`] does. Returns whether it ran.
pub(crate) async fn react_once<P: ProcessManager>(
    cx: &mut PgConnection,
    key: &str,
    cause: &Cause,
    remove: Sql,
    reaction: impl FnOnce(&mut P, &mut Effects<P::Command>),
) -> Result<bool> {
    let found = lock::<P>(cx, key).await?;
    if remove.execute(&mut *cx).await? == 0 {
        return Ok(false);
    }
    // A finished instance has no timers; a refusal of its last commands is passed by.
    run(cx, key, cause, found, reaction).await
}

async fn run<P: ProcessManager>(
    cx: &mut PgConnection,
    key: &str,
    cause: &Cause,
    found: Found<P>,
    reaction: impl FnOnce(&mut P, &mut Effects<P::Command>),
) -> Result<bool> {
    let (mut state, version) = match found {
        Found::Finished => return Ok(false),
        Found::New => (P::default(), 0),
        Found::Running(state, version) => (state, version),
    };
    let mut effects = Effects::new();
    reaction(&mut state, &mut effects);
    record(cx, key, cause, version + 1, &state, effects).await?;
    Ok(true)
}

/// Records step `version` of instance `key`: the step, the state it leads to, the
/// commands it sends and its timer changes.
async fn record<P: ProcessManager>(
    cx: &mut PgConnection,
    key: &str,
    cause: &Cause,
    version: i64,
    state: &P,
    effects: Effects<P::Command>,
) -> Result<()> {
    let json = |what: &'static str| {
        move |source| Error::ProcessJson {
            manager: P::NAME.to_owned(),
            key: key.to_owned(),
            what,
            source,
        }
    };
    let (commands, timers, finished) = effects.into_parts();
    let state = if finished {
        None
    } else {
        Some(serde_json::to_value(state).map_err(json("state"))?)
    };
    let mut ids = Vec::with_capacity(commands.len());
    let mut encoded = Vec::with_capacity(commands.len());
    for (index, command) in commands.iter().enumerate() {
        ids.push(command_id(P::NAME, cause.input.id(), index));
        encoded.push(serde_json::to_value(command).map_err(json("command"))?);
    }
    let input = serde_json::to_value(&cause.input).map_err(json("step"))?;
    // The step and the state it leads to, in one statement.
    Sql::new(
        "process_save",
        "WITH step AS ( \
             INSERT INTO process_steps (manager, key, version, input, sent, finished) \
             VALUES ($1, $2, $4, $5, $6, $3 IS NULL) \
         ) \
         INSERT INTO process_instances (manager, key, version, state, finished_at) \
         VALUES ($1, $2, $4, $3, CASE WHEN $3 IS NULL THEN now() END) \
         ON CONFLICT (manager, key) DO UPDATE \
         SET version = EXCLUDED.version, state = EXCLUDED.state, \
             finished_at = EXCLUDED.finished_at, updated_at = now()",
    )
    .bind(P::NAME)
    .bind(key)
    .bind(state)
    .bind(version)
    .bind(input)
    .bind(&ids)
    .execute(&mut *cx)
    .await?;
    if !commands.is_empty() {
        // `ON CONFLICT DO NOTHING`: a reaction replayed after its rows were kept (a
        // rebuild over commands still waiting) sends each command once.
        Sql::new(
            "process_send",
            "INSERT INTO process_outbox (id, manager, key, command, correlation_id) \
             SELECT c.id, $2, $3, c.command, $4 \
             FROM unnest($1::uuid[], $5::jsonb[]) WITH ORDINALITY AS c (id, command, i) \
             ORDER BY c.i \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(ids)
        .bind(P::NAME)
        .bind(key)
        .bind(cause.correlation_id)
        .bind(encoded)
        .execute(&mut *cx)
        .await?;
    }
    if finished {
        Sql::new(
            "process_timers_drop",
            "DELETE FROM process_timers WHERE manager = $1 AND key = $2",
        )
        .bind(P::NAME)
        .bind(key)
        .execute(&mut *cx)
        .await?;
        return Ok(());
    }
    for change in timers {
        match change {
            TimerChange::Schedule { name, after } => {
                Sql::new(
                    "process_schedule",
                    "INSERT INTO process_timers (id, manager, key, name, due_at) \
                     VALUES ($1, $2, $3, $4, now() + $5 * interval '1 microsecond') \
                     ON CONFLICT (manager, key, name) DO UPDATE \
                     SET id = EXCLUDED.id, due_at = EXCLUDED.due_at",
                )
                .bind(Uuid::new_v4())
                .bind(P::NAME)
                .bind(key)
                .bind(name)
                .bind(micros(after))
                .execute(&mut *cx)
                .await?;
            }
            TimerChange::Cancel { name } => {
                Sql::new(
                    "process_cancel",
                    "DELETE FROM process_timers WHERE manager = $1 AND key = $2 AND name = $3",
                )
                .bind(P::NAME)
                .bind(key)
                .bind(name)
                .execute(&mut *cx)
                .await?;
            }
        }
    }
    Ok(())
}

/// A delay in microseconds, capped at a thousand years (what an interval holds).
fn micros(after: Duration) -> i64 {
    const MILLENNIUM: i64 = 1000 * 366 * 24 * 3600 * 1_000_000;
    i64::try_from(after.as_micros()).map_or(MILLENNIUM, |us| us.min(MILLENNIUM))
}
