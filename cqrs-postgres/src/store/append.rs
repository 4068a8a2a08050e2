//! The write path: an [`AppendRequest`] from its checks to its outcome.
//!
//! An append is prepared (checked, its numbers converted), its store's inline
//! projections are registered (once), then it is sent: with the appends waiting at the
//! same time (`batch.rs` queues them, `together.rs` sends them), or alone, as one
//! statement (or, with inline handlers, one transaction). What each sending came back
//! with is read as a [`Sent`] and the next step decided by `resend.rs`. A committed
//! append is announced after commit when the store notifies so.

use std::sync::Arc;

use cqrs_core::Error as CoreError;
use cqrs_core::store::{AppendOutcome, AppendRequest};
use sqlx::postgres::PgDatabaseError;
use tracing::warn;
use uuid::Uuid;

use super::Inner;
use super::batch::{Entry, Reply};
use super::connections::Check;
use super::notify::PgNotify;
use super::prepared::Prepared;
use super::resend::{
    Attempt, Failure, Key, Next, SENDINGS, Sent, after_command, after_own, after_send,
};
use super::together;
use crate::db::{Error, OutcomeRow, Statement, connection_lost, held_elsewhere, position, to_u64};

/// Constraint names of the log's keys (see the migrations).
const STREAM_VERSION_KEY: &str = "events_stream_version_key";
const EVENT_ID_KEY: &str = "events_event_id_key";
const COMMAND_ID_KEY: &str = "commands_pkey";
const UNIT_KEY: &str = "command_units_pkey";

/// Appends `request` and announces it.
pub(super) async fn append(
    inner: &Inner,
    request: AppendRequest,
) -> cqrs_core::Result<AppendOutcome> {
    let append = Arc::new(Prepared::new(request)?);
    inner
        .inline
        .register(&inner.pool, &inner.schema, &inner.projections())
        .await?;
    let outcome = if waits_for_others(inner) {
        let reply = inner
            .batcher
            .append(&append, |batch| send_waiting(inner, batch))
            .await;
        match reply {
            Reply::Done(outcome) => outcome?,
            Reply::Alone { unknown: false } => alone(inner, &append, Attempt::First).await?,
            // Its batch was the first sending.
            Reply::Alone { unknown: true } => alone(inner, &append, Attempt::First.next()).await?,
        }
    } else {
        alone(inner, &append, Attempt::First).await?
    };
    if !outcome.duplicate && inner.notify == PgNotify::AfterCommit {
        inner
            .notifier
            .announce(&inner.pool, &inner.channel, outcome.position);
    }
    Ok(outcome)
}

/// Whether appends wait to be sent with others: by a store that sends appends together,
/// has no inline handlers (whose transaction is one append's) and does not notify in
/// the statement.
fn waits_for_others(inner: &Inner) -> bool {
    inner.batcher.in_flight() > 0
        && inner.notify != PgNotify::InTransaction
        && !inner.inline.has_handlers()
}

/// Sends the appends the queue hands over: one alone, two or more together.
async fn send_waiting(inner: &Inner, mut batch: Vec<Entry>) {
    if batch.len() > 1 {
        return together::send(inner, batch).await;
    }
    if let Some(entry) = batch.pop() {
        let outcome = alone(inner, entry.append(), Attempt::First).await;
        entry.reply(Reply::Done(outcome));
    }
}

/// Sends `append` on a statement (or transaction) of its own until its outcome is
/// known.
async fn alone(
    inner: &Inner,
    append: &Prepared,
    mut attempt: Attempt,
) -> cqrs_core::Result<AppendOutcome> {
    let has_command_id = append.request.command_id.is_some();
    loop {
        let (statement, sent, error) = send_once(inner, append, attempt).await?;
        let mut next = after_send(attempt, has_command_id, sent);
        loop {
            match next {
                Next::Done(outcome) => return Ok(outcome),
                Next::SendAgain => {
                    if let Some(error) = &error {
                        warn!(%error, "the append's connection failed; sending the append again");
                    }
                    // Whatever ended that connection may have ended the idle ones too.
                    inner.commands.check_idle_before_use();
                    attempt = attempt.next();
                    break;
                }
                Next::FindCommand(key) => {
                    let request = &append.request;
                    let recorded = match request.command_id {
                        Some(command_id) => find_command(
                            inner,
                            command_id,
                            &request.stream_type,
                            &request.stream_id,
                        )
                        .await
                        .map_err(|lookup| unknown_if_lost(append, attempt, lookup))?,
                        None => None,
                    };
                    next = after_command(attempt, key, recorded);
                }
                Next::FindOwn {
                    recorded,
                    otherwise,
                } => {
                    let own = find_own(inner, append)
                        .await
                        .map_err(|lookup| unknown_if_lost(append, attempt, lookup))?;
                    next = after_own(own, recorded, otherwise);
                }
                Next::Fail(failure) => {
                    return Err(failed(inner, append, failure, statement, error).await);
                }
            }
        }
    }
}

/// Sends `append` once: which statement, what it came back with, and the driver's
/// error if it failed. The error is an inline handler's failure, or a commit the server
/// refused after them.
async fn send_once(
    inner: &Inner,
    append: &Prepared,
    attempt: Attempt,
) -> cqrs_core::Result<(Statement, Sent, Option<sqlx::Error>)> {
    let request = &append.request;
    let notify_in_statement = inner.notify == PgNotify::InTransaction;
    // Without a command id or a NOTIFY in the statement, the plainer statement.
    let statement = if request.command_id.is_none() && !notify_in_statement {
        Statement::AppendPlain
    } else {
        Statement::Append
    };
    let mut query = inner
        .statements
        .get(statement)
        .bind(request.stream_type.as_ref())
        .bind(request.stream_id.as_str())
        .bind(append.expected)
        .bind(&append.event_ids)
        .bind(append.event_types())
        .bind(&append.schema_versions)
        .bind(append.payloads())
        .bind(append.metadata());
    if statement == Statement::Append {
        query = query
            .bind(request.command_id)
            .bind(notify_in_statement.then_some(inner.channel.as_str()));
    }
    // Sent again, it runs on a connection checked just now: another connection the same
    // failure ended must not take it.
    let check = match attempt {
        Attempt::First => Check::IfIdle,
        Attempt::Again(_) => Check::Always,
    };
    let row = match inner.commands.lease(&inner.pool, check).await {
        Err(error) => Err(error),
        Ok(lease) if inner.inline.has_handlers() => {
            inner
                .inline
                .append_in_transaction(lease, &inner.statements, append, query)
                .await?
        }
        Ok(mut lease) => {
            let row = match lease.conn() {
                Ok(conn) => query.try_fetch_optional::<OutcomeRow, _>(conn).await,
                Err(error) => Err(error),
            };
            lease.release(&row);
            row
        }
    };
    Ok(match row {
        Ok(Some(row)) => {
            if let Some(refusal) = held_elsewhere(
                request.command_id,
                row.holder_type.as_deref(),
                row.holder_id.as_deref(),
                &request.stream_type,
                &request.stream_id,
            ) {
                return Err(refusal);
            }
            let outcome = row.into_outcome()?;
            let sent = if outcome.duplicate {
                Sent::Duplicate(outcome)
            } else {
                Sent::Written(outcome)
            };
            (statement, sent, None)
        }
        Ok(None) => (statement, Sent::Stale, None),
        Err(error) => (statement, classify(inner, &error), Some(error)),
    })
}

/// Which of the log's keys a statement ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Violation {
    StreamVersion,
    EventId,
    CommandId,
    /// Another error of the log's tables.
    Other,
}

/// The log's key (or other error of its tables) `error` is, if it is one.
pub(super) fn classify_violation(inner: &Inner, error: &sqlx::Error) -> Option<Violation> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    let on_the_log = db.try_downcast_ref::<PgDatabaseError>().is_some_and(|db| {
        db.schema() == Some(inner.schema.as_str())
            && matches!(db.table(), Some("events" | "commands" | "command_units"))
    });
    if !on_the_log {
        return None;
    }
    if !db.is_unique_violation() {
        return Some(Violation::Other);
    }
    Some(match db.constraint() {
        Some(STREAM_VERSION_KEY) => Violation::StreamVersion,
        Some(EVENT_ID_KEY) => Violation::EventId,
        Some(COMMAND_ID_KEY | UNIT_KEY) => Violation::CommandId,
        _ => Violation::Other,
    })
}

/// Reads a failed sending: a lost connection, one of the log's keys (by its constraint,
/// on the log's own tables), an inline SQL projection's failure (any other error the
/// server raised, on a store with inline SQL projections), or a failure of the
/// statement.
fn classify(inner: &Inner, error: &sqlx::Error) -> Sent {
    if connection_lost(error) {
        return Sent::Lost;
    }
    match classify_violation(inner, error) {
        Some(Violation::StreamVersion) => return Sent::Taken(Key::StreamVersion),
        Some(Violation::EventId) => return Sent::Taken(Key::EventId),
        Some(Violation::CommandId) => return Sent::Taken(Key::CommandId),
        Some(Violation::Other) => return Sent::Failed,
        None => {}
    }
    if !matches!(error, sqlx::Error::Database(_)) {
        return Sent::Failed;
    }
    if inner.inline.statement_names().is_some() {
        Sent::InlineSql
    } else {
        Sent::Failed
    }
}

/// The error an append fails with.
async fn failed(
    inner: &Inner,
    append: &Prepared,
    failure: Failure,
    statement: Statement,
    error: Option<sqlx::Error>,
) -> CoreError {
    let database = |error: Option<sqlx::Error>| -> CoreError {
        match error {
            Some(source) => Error::database(statement.name(), source).into(),
            None => Error::UnexpectedRow {
                statement: statement.name(),
                problem: "the append failed without an error from the server".to_owned(),
            }
            .into(),
        }
    };
    match failure {
        Failure::Conflict => append.conflict(),
        Failure::EventIdTaken => match find_event_id(inner, &append.event_ids).await {
            Ok(Some(event_id)) => CoreError::DuplicateEventId { event_id },
            Ok(None) => database(error),
            Err(lookup) => lookup,
        },
        Failure::InlineSql => match (inner.inline.statement_names(), error) {
            (Some(projection), Some(source)) => Error::InlineSql {
                projection,
                stream: Some(append.stream()),
                source,
            }
            .into(),
            (_, error) => database(error),
        },
        Failure::Statement => database(error),
        Failure::Unknown => match error {
            Some(source) => Error::OutcomeUnknown {
                stream: append.stream(),
                sendings: SENDINGS,
                source,
            }
            .into(),
            None => database(None),
        },
    }
}

/// The error of a lookup that was to tell what became of `append`: when the lookup
/// lost its connection (after being sent again once), whether the append was written
/// is unknown, and the caller is told so.
fn unknown_if_lost(append: &Prepared, attempt: Attempt, lookup: CoreError) -> CoreError {
    let CoreError::Backend(backend) = lookup else {
        return lookup;
    };
    match backend.downcast::<Error>() {
        Ok(error) => match *error {
            Error::Database { source, .. } if connection_lost(&source) => Error::OutcomeUnknown {
                stream: append.stream(),
                sendings: attempt.sendings(),
                source,
            }
            .into(),
            error => error.into(),
        },
        Err(other) => CoreError::Backend(other),
    }
}

/// The outcome recorded for `command_id`, as a duplicate.
pub(super) async fn find_command(
    inner: &Inner,
    command_id: Uuid,
    stream_type: &str,
    stream_id: &str,
) -> cqrs_core::Result<Option<AppendOutcome>> {
    let row: Option<OutcomeRow> = inner
        .read(Statement::FindCommand, |sql| sql.bind(command_id))
        .await?
        .pop();
    let Some(row) = row else {
        return Ok(None);
    };
    if let Some(refusal) = held_elsewhere(
        Some(command_id),
        row.holder_type.as_deref(),
        row.holder_id.as_deref(),
        stream_type,
        stream_id,
    ) {
        return Err(refusal);
    }
    Ok(Some(AppendOutcome {
        duplicate: true,
        ..row.into_outcome()?
    }))
}

/// Which of `event_ids` is stored already, if any.
pub(super) async fn find_event_id(
    inner: &Inner,
    event_ids: &[Uuid],
) -> cqrs_core::Result<Option<Uuid>> {
    let row: Option<(Uuid,)> = inner
        .read(Statement::FindEventId, |sql| sql.bind(event_ids))
        .await?
        .pop();
    Ok(row.map(|(event_id,)| event_id))
}

/// The outcome of `append`, if all of its events are in the log where it put them.
async fn find_own(inner: &Inner, append: &Prepared) -> cqrs_core::Result<Option<AppendOutcome>> {
    let request = &append.request;
    let found: Option<(i64, i64, i64, i64, i64)> = inner
        .read(Statement::FindAppended, |sql| {
            sql.bind(request.stream_type.as_ref())
                .bind(request.stream_id.as_str())
                .bind(&append.event_ids)
        })
        .await?
        .pop();
    let Some((first_version, stream_version, transaction_id, sequence, count)) = found else {
        return Ok(None);
    };
    let outcome = AppendOutcome {
        first_version: to_u64("first_version", first_version)?,
        stream_version: to_u64("stream_version", stream_version)?,
        position: position(transaction_id, sequence)?,
        duplicate: false,
    };
    let all_there = usize::try_from(count).is_ok_and(|count| count == append.event_ids.len())
        && request.expected_version.checked_add(1) == Some(outcome.first_version);
    Ok(all_there.then_some(outcome))
}
