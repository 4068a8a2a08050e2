//! Appends to several streams as one unit: one statement (`append_atomic.sql`) writes
//! every stream's events in one transaction, or none.
//!
//! Sent again after its connection failed with it in flight, a unit is first looked for
//! by its event ids (written whole or not at all, any one of them tells); with a command
//! id, sending it again also finds the original outcomes. As for single appends, every
//! sending after the first runs on a connection checked just before, and a unit whose
//! connections keep failing comes back [`Error::OutcomeUnknown`].

use std::collections::HashMap;

use cqrs_core::Error as CoreError;
use cqrs_core::store::{AppendOutcome, AtomicAppendRequest};
use sqlx::types::Json;
use uuid::Uuid;

use super::Inner;
use super::append::{Violation, classify_violation, find_event_id};
use super::connections::Check;
use super::notify::PgNotify;
use super::prepared::Prepared;
use super::resend::SENDINGS;
use crate::db::{Error, Sql, Statement, connection_lost, position, to_u64};

/// A unit whose appends passed their checks, with the statement's parameters.
pub(super) struct Unit {
    pub(super) appends: Vec<Prepared>,
    command_id: Option<Uuid>,
}

impl Unit {
    fn new(request: AtomicAppendRequest) -> cqrs_core::Result<Self> {
        request.validate()?;
        let appends = request
            .appends
            .into_iter()
            .map(Prepared::new)
            .collect::<cqrs_core::Result<Vec<_>>>()?;
        Ok(Self {
            appends,
            command_id: request.command_id,
        })
    }

    /// The streams, as `type/id`, for errors about the whole unit.
    fn streams(&self) -> String {
        self.appends
            .iter()
            .map(Prepared::stream)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn event_ids(&self) -> Vec<Uuid> {
        self.appends
            .iter()
            .flat_map(|a| a.event_ids.iter().copied())
            .collect()
    }

    /// The statement, its parameters bound.
    fn statement(&self, inner: &Inner) -> Sql {
        let stream_types: Vec<&str> = self
            .appends
            .iter()
            .map(|a| a.request.stream_type.as_ref())
            .collect();
        let stream_ids: Vec<&str> = self
            .appends
            .iter()
            .map(|a| a.request.stream_id.as_str())
            .collect();
        let expected: Vec<i64> = self.appends.iter().map(|a| a.expected).collect();
        let (mut owner, mut place) = (Vec::new(), Vec::new());
        let (mut ids, mut types, mut versions, mut payloads, mut metadata) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, append) in self.appends.iter().enumerate() {
            for (k, event) in append.request.events.iter().enumerate() {
                owner.push(i32::try_from(i + 1).unwrap_or(i32::MAX));
                place.push(i32::try_from(k + 1).unwrap_or(i32::MAX));
                ids.push(event.event_id);
                types.push(event.event_type.as_ref());
                payloads.push(Json(&event.payload));
                metadata.push(Json(&event.metadata));
            }
            versions.extend_from_slice(&append.schema_versions);
        }
        let notify = (inner.notify == PgNotify::InTransaction).then_some(inner.channel.as_str());
        inner
            .statements
            .get(Statement::AppendAtomic)
            .bind(stream_types)
            .bind(stream_ids)
            .bind(expected)
            .bind(self.command_id)
            .bind(owner)
            .bind(place)
            .bind(ids)
            .bind(types)
            .bind(versions)
            .bind(payloads)
            .bind(metadata)
            .bind(notify)
    }
}

/// One row of `append_atomic.sql`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct UnitRow {
    kind: String,
    i: i64,
    stream_type: String,
    stream_id: String,
    first_version: Option<i64>,
    stream_version: Option<i64>,
    transaction_id: Option<i64>,
    sequence: Option<i64>,
}

impl UnitRow {
    fn outcome(&self, duplicate: bool) -> cqrs_core::Result<AppendOutcome> {
        let column = |name: &'static str, value: Option<i64>| {
            value.ok_or_else(|| Error::UnexpectedRow {
                statement: Statement::AppendAtomic.name(),
                problem: format!("a `{}` row without `{name}`", self.kind),
            })
        };
        Ok(AppendOutcome {
            first_version: to_u64(
                "first_version",
                column("first_version", self.first_version)?,
            )?,
            stream_version: to_u64(
                "stream_version",
                column("stream_version", self.stream_version)?,
            )?,
            position: position(
                column("transaction_id", self.transaction_id)?,
                column("sequence", self.sequence)?,
            )?,
            duplicate,
        })
    }
}

impl UnitRow {
    /// Whether the row is one of a unit written now.
    pub(crate) fn is_written(&self) -> bool {
        self.kind == "written"
    }

    /// The append of the unit it is about (1-based).
    pub(crate) fn append(&self) -> i64 {
        self.i
    }

    /// The outcome of a unit written now.
    pub(crate) fn written(&self) -> cqrs_core::Result<AppendOutcome> {
        self.outcome(false)
    }
}

/// What the statement's rows mean for `unit`.
fn interpret(unit: &Unit, mut rows: Vec<UnitRow>) -> cqrs_core::Result<Vec<AppendOutcome>> {
    rows.sort_by_key(|row| row.i);
    let first = &unit.appends[0].request;
    let kinds: Vec<&str> = rows.iter().map(|row| row.kind.as_str()).collect();
    match kinds.first().copied() {
        Some("written" | "duplicate") => {
            let duplicate = kinds[0] == "duplicate";
            if duplicate
                && let Some(holder) = rows.first()
                && (holder.stream_type != first.stream_type || holder.stream_id != first.stream_id)
            {
                return Err(in_use(unit, holder));
            }
            rows.iter().map(|row| row.outcome(duplicate)).collect()
        }
        Some("in_use") => Err(in_use(unit, &rows[0])),
        Some("stale") => {
            let stale = &rows[0];
            let append = usize::try_from(stale.i - 1)
                .ok()
                .and_then(|i| unit.appends.get(i))
                .ok_or_else(|| Error::UnexpectedRow {
                    statement: Statement::AppendAtomic.name(),
                    problem: format!("a stale row for append {} of the unit", stale.i),
                })?;
            Err(append.conflict())
        }
        _ => Err(Error::UnexpectedRow {
            statement: Statement::AppendAtomic.name(),
            problem: format!("rows of kinds {kinds:?}"),
        }
        .into()),
    }
}

fn in_use(unit: &Unit, holder: &UnitRow) -> CoreError {
    CoreError::CommandIdInUse {
        command_id: unit.command_id.unwrap_or_default(),
        stream_type: holder.stream_type.clone(),
        stream_id: holder.stream_id.clone(),
    }
}

/// How one sending ended.
enum Sent {
    Rows(Vec<UnitRow>),
    Violation(Violation, sqlx::Error),
    Lost(sqlx::Error),
}

/// Appends `request` as one unit.
pub(super) async fn append_atomic(
    inner: &Inner,
    request: AtomicAppendRequest,
) -> cqrs_core::Result<Vec<AppendOutcome>> {
    let unit = Unit::new(request)?;
    inner
        .inline
        .register(&inner.pool, &inner.schema, &inner.projections())
        .await?;
    let mut sendings = 0;
    let outcomes = loop {
        sendings += 1;
        let check = if sendings == 1 {
            Check::IfIdle
        } else {
            Check::Always
        };
        match send(inner, &unit, check).await? {
            Sent::Rows(rows) => break interpret(&unit, rows)?,
            Sent::Violation(Violation::EventId, source) => {
                return Err(match find_event_id(inner, &unit.event_ids()).await? {
                    Some(event_id) => CoreError::DuplicateEventId { event_id },
                    None => Error::database(Statement::AppendAtomic.name(), source).into(),
                });
            }
            Sent::Violation(Violation::Other, source) => {
                return Err(Error::database(Statement::AppendAtomic.name(), source).into());
            }
            // Another append took a version (or the command id) first and committed: the
            // next sending finds the stale stream (or the recorded outcomes).
            Sent::Violation(Violation::StreamVersion | Violation::CommandId, _)
                if sendings < SENDINGS + 2 => {}
            Sent::Violation(_, source) => {
                return Err(Error::database(Statement::AppendAtomic.name(), source).into());
            }
            Sent::Lost(source) => {
                inner.commands.check_idle_before_use();
                if let Some(found) = find_unit(inner, &unit).await? {
                    break found;
                }
                if sendings >= SENDINGS {
                    return Err(Error::OutcomeUnknown {
                        stream: unit.streams(),
                        sendings: SENDINGS,
                        source,
                    }
                    .into());
                }
                tracing::warn!(error = %source, "the unit's connection failed; sending it again");
            }
        }
    };
    if inner.notify == PgNotify::AfterCommit
        && let Some(last) = outcomes
            .iter()
            .filter(|o| !o.duplicate)
            .map(|o| o.position)
            .max()
    {
        inner.notifier.announce(&inner.pool, &inner.channel, last);
    }
    Ok(outcomes)
}

/// Sends the unit once.
async fn send(inner: &Inner, unit: &Unit, check: Check) -> cqrs_core::Result<Sent> {
    let query = unit.statement(inner);
    let rows = match inner.commands.lease(&inner.pool, check).await {
        Err(error) => Err(error),
        Ok(lease) if inner.inline.has_handlers() => {
            inner
                .inline
                .append_unit_in_transaction(lease, &inner.statements, unit, query)
                .await?
        }
        Ok(mut lease) => {
            let rows = match lease.conn() {
                Ok(conn) => query.try_fetch_all::<UnitRow, _>(conn).await,
                Err(error) => Err(error),
            };
            lease.release(&rows);
            rows
        }
    };
    Ok(match rows {
        Ok(rows) => Sent::Rows(rows),
        Err(error) if connection_lost(&error) => Sent::Lost(error),
        Err(error) => match classify_violation(inner, &error) {
            Some(violation) => Sent::Violation(violation, error),
            None if inner.inline.statement_names().is_some() => {
                return Err(Error::InlineSql {
                    projection: inner.inline.statement_names().unwrap_or_default(),
                    stream: Some(unit.streams()),
                    source: error,
                }
                .into());
            }
            None => return Err(Error::database(Statement::AppendAtomic.name(), error).into()),
        },
    })
}

/// The unit's outcomes if its events are in the log (it was written by a sending whose
/// reply was lost), in the unit's order.
async fn find_unit(inner: &Inner, unit: &Unit) -> cqrs_core::Result<Option<Vec<AppendOutcome>>> {
    let rows: Vec<(String, String, i64, i64, i64, i64)> = inner
        .read(Statement::FindUnit, |sql| sql.bind(unit.event_ids()))
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let by_stream: HashMap<(String, String), (i64, i64, i64, i64)> = rows
        .into_iter()
        .map(|(t, id, first, last, xid, seq)| ((t, id), (first, last, xid, seq)))
        .collect();
    let mut outcomes = Vec::with_capacity(unit.appends.len());
    for append in &unit.appends {
        let key = (
            append.request.stream_type.clone().into_owned(),
            append.request.stream_id.clone(),
        );
        let Some(&(first, last, xid, seq)) = by_stream.get(&key) else {
            return Err(Error::UnexpectedRow {
                statement: Statement::FindUnit.name(),
                problem: format!("part of the unit is in the log, not `{}`", append.stream()),
            }
            .into());
        };
        outcomes.push(AppendOutcome {
            first_version: to_u64("first_version", first)?,
            stream_version: to_u64("stream_version", last)?,
            position: position(xid, seq)?,
            duplicate: false,
        });
    }
    Ok(Some(outcomes))
}
