//! Instances of a process manager in PostgreSQL: reactions run in memory on locked
//! instances, and what they decided written at the end with a few multi-row statements,
//! inside the caller's transaction.
//!
//! Every transaction locks the instances it will touch first (`FOR UPDATE`, in key
//! order), and only then touches their timers or commands: the one order every
//! transaction follows, so the event path and the timer and refusal paths never wait on
//! each other in a circle.

use std::collections::{BTreeMap, HashMap};
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

/// Where an instance stands.
enum Slot<P> {
    New,
    /// Its state after step `version`.
    Running(P, i64),
    Finished(i64),
}

/// A timer's last change in the batch.
enum TimerEnd {
    Schedule(Duration),
    Cancel,
}

/// Reactions of one transaction: the locked instances, and what to write.
pub(crate) struct Reactions<P: ProcessManager> {
    slots: HashMap<String, Slot<P>>,
    /// Instances whose row changes, in the order they first changed.
    changed: Vec<String>,
    steps: Vec<(String, i64, Value, Vec<Uuid>, bool)>,
    outbox: Vec<(Uuid, String, Value, Option<Uuid>)>,
    timers: BTreeMap<(String, String), TimerEnd>,
    finished: Vec<String>,
}

impl<P: ProcessManager> Default for Reactions<P> {
    fn default() -> Self {
        Self {
            slots: HashMap::new(),
            changed: Vec::new(),
            steps: Vec::new(),
            outbox: Vec::new(),
            timers: BTreeMap::new(),
            finished: Vec::new(),
        }
    }
}

impl<P: ProcessManager> Reactions<P> {
    fn json(key: &str, what: &'static str) -> impl FnOnce(serde_json::Error) -> Error {
        let key = key.to_owned();
        move |source| Error::ProcessJson {
            manager: P::NAME.to_owned(),
            key,
            what,
            source,
        }
    }

    /// Locks the instances `keys` not locked yet (in key order) and loads them.
    pub(crate) async fn lock(&mut self, cx: &mut PgConnection, keys: &[String]) -> Result<()> {
        let mut wanted: Vec<&String> = keys
            .iter()
            .filter(|key| !self.slots.contains_key(*key))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort();
        wanted.dedup();
        let rows: Vec<(String, Option<Value>, i64)> = Sql::new(
            "process_lock",
            "SELECT key, state, version FROM process_instances \
             WHERE manager = $1 AND key = ANY($2) ORDER BY key FOR UPDATE",
        )
        .bind(P::NAME)
        .bind(&wanted)
        .fetch_all(&mut *cx)
        .await?;
        for key in wanted {
            self.slots.insert(key.clone(), Slot::New);
        }
        for (key, state, version) in rows {
            let slot = match state {
                None => Slot::Finished(version),
                Some(state) => Slot::Running(
                    serde_json::from_value(state).map_err(Self::json(&key, "state"))?,
                    version,
                ),
            };
            self.slots.insert(key, slot);
        }
        Ok(())
    }

    /// Runs `reaction` on instance `key` (locked before; a default state for a new
    /// instance, nothing for a finished one) and keeps what it decided for
    /// [`write`](Self::write). Returns whether it ran.
    pub(crate) fn react(
        &mut self,
        key: &str,
        cause: &Cause,
        reaction: impl FnOnce(&mut P, &mut Effects<P::Command>),
    ) -> Result<bool> {
        let Some(slot) = self.slots.get_mut(key) else {
            return Err(Error::UnexpectedRow {
                statement: "process_lock",
                problem: format!("instance `{key}` reacted before it was locked"),
            });
        };
        let (mut state, version) = match std::mem::replace(slot, Slot::New) {
            Slot::Finished(version) => {
                *slot = Slot::Finished(version);
                return Ok(false);
            }
            Slot::New => (P::default(), 0),
            Slot::Running(state, version) => (state, version),
        };
        let mut effects = Effects::new();
        reaction(&mut state, &mut effects);
        let (commands, timers, finished) = effects.into_parts();
        let version = version + 1;
        let mut sent = Vec::with_capacity(commands.len());
        for (index, command) in commands.iter().enumerate() {
            let id = command_id(P::NAME, cause.input.id(), index);
            let encoded = serde_json::to_value(command).map_err(Self::json(key, "command"))?;
            self.outbox
                .push((id, key.to_owned(), encoded, cause.correlation_id));
            sent.push(id);
        }
        let input = serde_json::to_value(&cause.input).map_err(Self::json(key, "step"))?;
        self.steps
            .push((key.to_owned(), version, input, sent, finished));
        for change in timers {
            let (name, end) = match change {
                TimerChange::Schedule { name, after } => (name, TimerEnd::Schedule(after)),
                TimerChange::Cancel { name } => (name, TimerEnd::Cancel),
            };
            self.timers.insert((key.to_owned(), name), end);
        }
        if !self.changed.iter().any(|k| k == key) {
            self.changed.push(key.to_owned());
        }
        if finished {
            self.timers.retain(|(k, _), _| k != key);
            self.finished.push(key.to_owned());
            *slot = Slot::Finished(version);
        } else {
            *slot = Slot::Running(state, version);
        }
        Ok(true)
    }

    /// Writes what the reactions decided: their steps, the instances' new states, the
    /// commands to send and the timer changes. Leaves the instances locked and known
    /// (a later reaction in the transaction goes on from them).
    pub(crate) async fn write(&mut self, cx: &mut PgConnection) -> Result<()> {
        if self.steps.is_empty() {
            return Ok(());
        }
        let (mut keys, mut versions, mut states) = (Vec::new(), Vec::new(), Vec::new());
        for key in self.changed.drain(..) {
            let (state, version) = match self.slots.get(&key) {
                Some(Slot::Running(state, version)) => (
                    Some(serde_json::to_value(state).map_err(Self::json(&key, "state"))?),
                    *version,
                ),
                Some(Slot::Finished(version)) => (None, *version),
                Some(Slot::New) | None => continue,
            };
            keys.push(key);
            versions.push(version);
            states.push(state);
        }
        let mut step_keys = Vec::with_capacity(self.steps.len());
        let mut step_versions = Vec::with_capacity(self.steps.len());
        let mut inputs = Vec::with_capacity(self.steps.len());
        // uuid[][] must be rectangular: each step's sent ids go as one JSON array.
        let mut sent = Vec::with_capacity(self.steps.len());
        let mut finished = Vec::with_capacity(self.steps.len());
        for (key, version, input, ids, done) in self.steps.drain(..) {
            step_keys.push(key);
            step_versions.push(version);
            inputs.push(input);
            sent.push(serde_json::to_value(ids).map_err(Self::json("", "step"))?);
            finished.push(done);
        }
        // The steps and the states they lead to, in one statement.
        Sql::new(
            "process_save",
            "WITH steps AS ( \
                 INSERT INTO process_steps (manager, key, version, input, sent, finished) \
                 SELECT $1, s.key, s.version, s.input, \
                        ARRAY(SELECT jsonb_array_elements_text(s.sent)::uuid), s.finished \
                 FROM unnest($5::text[], $6::bigint[], $7::jsonb[], $8::jsonb[], \
                             $9::boolean[]) AS s (key, version, input, sent, finished) \
             ) \
             INSERT INTO process_instances (manager, key, version, state, finished_at) \
             SELECT $1, i.key, i.version, i.state, \
                    CASE WHEN i.state IS NULL THEN now() END \
             FROM unnest($2::text[], $3::bigint[], $4::jsonb[]) AS i (key, version, state) \
             ON CONFLICT (manager, key) DO UPDATE \
             SET version = EXCLUDED.version, state = EXCLUDED.state, \
                 finished_at = EXCLUDED.finished_at, updated_at = now()",
        )
        .bind(P::NAME)
        .bind(keys)
        .bind(versions)
        .bind(states)
        .bind(step_keys)
        .bind(step_versions)
        .bind(inputs)
        .bind(sent)
        .bind(finished)
        .execute(&mut *cx)
        .await?;
        if !self.outbox.is_empty() {
            let (mut ids, mut keys, mut commands, mut correlations) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (id, key, command, correlation_id) in self.outbox.drain(..) {
                ids.push(id);
                keys.push(key);
                commands.push(command);
                correlations.push(correlation_id);
            }
            // In the order decided (`seq` follows it). `ON CONFLICT DO NOTHING`: a
            // reaction replayed while its commands still wait sends each once.
            Sql::new(
                "process_send",
                "INSERT INTO process_outbox (id, manager, key, command, correlation_id) \
                 SELECT c.id, $1, c.key, c.command, c.correlation_id \
                 FROM unnest($2::uuid[], $3::text[], $4::jsonb[], $5::uuid[]) \
                      WITH ORDINALITY AS c (id, key, command, correlation_id, i) \
                 ORDER BY c.i \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(P::NAME)
            .bind(ids)
            .bind(keys)
            .bind(commands)
            .bind(correlations)
            .execute(&mut *cx)
            .await?;
        }
        if !self.finished.is_empty() {
            Sql::new(
                "process_timers_drop",
                "DELETE FROM process_timers WHERE manager = $1 AND key = ANY($2)",
            )
            .bind(P::NAME)
            .bind(std::mem::take(&mut self.finished))
            .execute(&mut *cx)
            .await?;
        }
        if !self.timers.is_empty() {
            let (mut keys, mut names, mut delays, mut timer_ids) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((key, name), end) in std::mem::take(&mut self.timers) {
                keys.push(key);
                names.push(name);
                // A cancellation is a delay of NULL.
                delays.push(match end {
                    TimerEnd::Schedule(after) => Some(micros(after)),
                    TimerEnd::Cancel => None,
                });
                timer_ids.push(Uuid::new_v4());
            }
            Sql::new(
                "process_timers",
                "WITH t AS ( \
                     SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::uuid[]) \
                         AS t (key, name, delay, id) \
                 ), \
                 cancelled AS ( \
                     DELETE FROM process_timers AS p USING t \
                     WHERE t.delay IS NULL AND p.manager = $1 AND p.key = t.key \
                       AND p.name = t.name \
                 ) \
                 INSERT INTO process_timers (id, manager, key, name, due_at) \
                 SELECT t.id, $1, t.key, t.name, now() + t.delay * interval '1 microsecond' \
                 FROM t WHERE t.delay IS NOT NULL \
                 ON CONFLICT (manager, key, name) DO UPDATE \
                 SET id = EXCLUDED.id, due_at = EXCLUDED.due_at",
            )
            .bind(P::NAME)
            .bind(keys)
            .bind(names)
            .bind(delays)
            .bind(timer_ids)
            .execute(&mut *cx)
            .await?;
        }
        Ok(())
    }

    /// Forgets everything: the transaction was rolled back, or has committed.
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Locks instance `key` and removes the row that caused the reaction (`remove`, which
/// returns how many rows it removed); when it removed one, runs `reaction` and writes
/// what it decided. Returns whether it ran.
pub(crate) async fn react_once<P: ProcessManager>(
    cx: &mut PgConnection,
    key: &str,
    cause: &Cause,
    remove: Sql,
    reaction: impl FnOnce(&mut P, &mut Effects<P::Command>),
) -> Result<bool> {
    let mut reactions = Reactions::<P>::default();
    reactions.lock(cx, &[key.to_owned()]).await?;
    if remove.execute(&mut *cx).await? == 0 {
        return Ok(false);
    }
    // A finished instance has no timers; a refusal of its last commands is passed by.
    let ran = reactions.react(key, cause, reaction)?;
    reactions.write(cx).await?;
    Ok(ran)
}

/// A delay in microseconds, capped at a thousand years (what an interval holds).
fn micros(after: Duration) -> i64 {
    const MILLENNIUM: i64 = 1000 * 366 * 24 * 3600 * 1_000_000;
    i64::try_from(after.as_micros()).map_or(MILLENNIUM, |us| us.min(MILLENNIUM))
}
