//! Every statement the store and its projections run, rendered once per store: the
//! schema, the shared parts and the notification payloads spliced in. Every other value
//! is a bind parameter.

use std::sync::Arc;

use sqlx::AssertSqlSafe;

use super::horizon::HORIZON_SQL;
use super::run::Sql;
use super::schema::SchemaName;
use super::wire;

/// The statements, by the name of their file in `src/sql/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Statement {
    /// Appending events, with a command id or a `NOTIFY` in the statement.
    Append,
    /// Appending events, with neither.
    AppendPlain,
    /// The appends that waited at the same time, each to a stream of its own.
    AppendBatch,
    /// The same, none with a command id.
    AppendBatchPlain,
    /// Appending to several streams as one unit.
    AppendAtomic,
    /// Finding the events of an atomic unit sent again after its connection failed.
    FindUnit,
    /// Loading a stream.
    Load,
    /// Loading a snapshot and the events after it.
    LoadForCommand,
    /// Looking up a command id.
    FindCommand,
    /// Finding which event id of an append is already stored.
    FindEventId,
    /// Finding the events of an append sent again after its connection failed.
    FindAppended,
    /// Where the events of one append sit in the log (for inline handlers).
    InlinePositions,
    /// Reading the global log.
    ReadAll,
    /// The head of the global log.
    Head,
    /// Loading a snapshot.
    LoadSnapshot,
    /// Saving a snapshot.
    SaveSnapshot,
    /// Announcing appends after they committed.
    Notify,
    /// Registering a projection version.
    ProjectionRegister,
    /// A projection version's lock key.
    ProjectionLockKey,
    /// Serving the first version of a projection.
    ProjectionActivateFirst,
    /// Recording a projection's new owner.
    ProjectionClaim,
    /// A projection's row, the head and a window of the log.
    ProjectionBatch,
    /// Moving a checkpoint.
    ProjectionAdvance,
    /// The served version's checkpoint, locked for a blue/green switch.
    ProjectionServed,
    /// First half of a blue/green switch.
    ProjectionDeactivate,
    /// Second half of a blue/green switch.
    ProjectionActivate,
    /// Moving a checkpoint back to the start for a rebuild.
    ProjectionReset,
    /// Stopping a projection at a failing event.
    ProjectionFail,
    /// An operator's request.
    ProjectionControl,
    /// The served checkpoint of a projection.
    ProjectionCheckpoint,
    /// The status of projections.
    ProjectionStatus,
    /// Forgetting a version that is not served.
    ProjectionRetire,
}

impl Statement {
    const ALL: [Self; 32] = [
        Self::Append,
        Self::AppendPlain,
        Self::AppendBatch,
        Self::AppendBatchPlain,
        Self::AppendAtomic,
        Self::FindUnit,
        Self::Load,
        Self::LoadForCommand,
        Self::FindCommand,
        Self::FindEventId,
        Self::FindAppended,
        Self::InlinePositions,
        Self::ReadAll,
        Self::Head,
        Self::LoadSnapshot,
        Self::SaveSnapshot,
        Self::Notify,
        Self::ProjectionRegister,
        Self::ProjectionLockKey,
        Self::ProjectionActivateFirst,
        Self::ProjectionClaim,
        Self::ProjectionBatch,
        Self::ProjectionAdvance,
        Self::ProjectionServed,
        Self::ProjectionDeactivate,
        Self::ProjectionActivate,
        Self::ProjectionReset,
        Self::ProjectionFail,
        Self::ProjectionControl,
        Self::ProjectionCheckpoint,
        Self::ProjectionStatus,
        Self::ProjectionRetire,
    ];

    /// The statement's name: its file in `src/sql/`, and the `db.statement` trace field.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Append => "append",
            Self::AppendPlain => "append_plain",
            Self::AppendBatch => "append_batch",
            Self::AppendBatchPlain => "append_batch_plain",
            Self::AppendAtomic => "append_atomic",
            Self::FindUnit => "find_unit",
            Self::Load => "load",
            Self::LoadForCommand => "load_for_command",
            Self::FindCommand => "find_command",
            Self::FindEventId => "find_event_id",
            Self::FindAppended => "find_appended",
            Self::InlinePositions => "inline_positions",
            Self::ReadAll => "read_all",
            Self::Head => "head",
            Self::LoadSnapshot => "load_snapshot",
            Self::SaveSnapshot => "save_snapshot",
            Self::Notify => "notify",
            Self::ProjectionRegister => "projection_register",
            Self::ProjectionLockKey => "projection_lock_key",
            Self::ProjectionActivateFirst => "projection_activate_first",
            Self::ProjectionClaim => "projection_claim",
            Self::ProjectionBatch => "projection_batch",
            Self::ProjectionAdvance => "projection_advance",
            Self::ProjectionServed => "projection_served",
            Self::ProjectionDeactivate => "projection_deactivate",
            Self::ProjectionActivate => "projection_activate",
            Self::ProjectionReset => "projection_reset",
            Self::ProjectionFail => "projection_fail",
            Self::ProjectionControl => "projection_control",
            Self::ProjectionCheckpoint => "projection_checkpoint",
            Self::ProjectionStatus => "projection_status",
            Self::ProjectionRetire => "projection_retire",
        }
    }

    fn template(self) -> &'static str {
        match self {
            Self::Append => include_str!("../sql/append.sql"),
            Self::AppendPlain => include_str!("../sql/append_plain.sql"),
            Self::AppendBatch => include_str!("../sql/append_batch.sql"),
            Self::AppendBatchPlain => include_str!("../sql/append_batch_plain.sql"),
            Self::AppendAtomic => include_str!("../sql/append_atomic.sql"),
            Self::FindUnit => include_str!("../sql/find_unit.sql"),
            Self::Load => include_str!("../sql/load.sql"),
            Self::LoadForCommand => include_str!("../sql/load_for_command.sql"),
            Self::FindCommand => include_str!("../sql/find_command.sql"),
            Self::FindEventId => include_str!("../sql/find_event_id.sql"),
            Self::FindAppended => include_str!("../sql/find_appended.sql"),
            Self::InlinePositions => include_str!("../sql/inline_positions.sql"),
            Self::ReadAll => include_str!("../sql/read_all.sql"),
            Self::Head => include_str!("../sql/head.sql"),
            Self::LoadSnapshot => include_str!("../sql/load_snapshot.sql"),
            Self::SaveSnapshot => include_str!("../sql/save_snapshot.sql"),
            Self::Notify => "SELECT pg_notify($1::text, $2::text)",
            Self::ProjectionRegister => include_str!("../sql/projection_register.sql"),
            Self::ProjectionLockKey => include_str!("../sql/projection_lock_key.sql"),
            Self::ProjectionActivateFirst => include_str!("../sql/projection_activate_first.sql"),
            Self::ProjectionClaim => include_str!("../sql/projection_claim.sql"),
            Self::ProjectionBatch => include_str!("../sql/projection_batch.sql"),
            Self::ProjectionAdvance => include_str!("../sql/projection_advance.sql"),
            Self::ProjectionServed => include_str!("../sql/projection_served.sql"),
            Self::ProjectionDeactivate => include_str!("../sql/projection_deactivate.sql"),
            Self::ProjectionActivate => include_str!("../sql/projection_activate.sql"),
            Self::ProjectionReset => include_str!("../sql/projection_reset.sql"),
            Self::ProjectionFail => include_str!("../sql/projection_fail.sql"),
            Self::ProjectionControl => include_str!("../sql/projection_control.sql"),
            Self::ProjectionCheckpoint => include_str!("../sql/projection_checkpoint.sql"),
            Self::ProjectionStatus => include_str!("../sql/projection_status.sql"),
            Self::ProjectionRetire => include_str!("../sql/projection_retire.sql"),
        }
    }

    /// Whether `{inline_columns}` and `{inline_statements}` splice the store's inline SQL
    /// projections into it.
    fn is_append(self) -> bool {
        matches!(
            self,
            Self::Append
                | Self::AppendPlain
                | Self::AppendBatch
                | Self::AppendBatchPlain
                | Self::AppendAtomic
        )
    }
}

/// What the append statements gain for inline SQL projections: `columns` added to what
/// `appended` returns, and `statements` (CTEs, each starting with a comma) after their
/// own. Empty for a store without any.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Splice<'a> {
    pub(crate) columns: &'a str,
    pub(crate) statements: &'a str,
}

/// The rendered statements of one store.
#[derive(Debug)]
pub(crate) struct Statements {
    sql: Vec<Arc<str>>,
}

impl Statements {
    /// Every statement in `schema`, with `splice` in the append statements.
    pub(crate) fn new(schema: &SchemaName, splice: Splice<'_>) -> Self {
        Self {
            sql: Statement::ALL
                .iter()
                .map(|&statement| render(statement, schema, splice).into())
                .collect(),
        }
    }

    /// `statement`, ready to bind and run.
    pub(crate) fn get(&self, statement: Statement) -> Sql {
        Sql::new(
            statement.name(),
            AssertSqlSafe(Arc::clone(self.text(statement))),
        )
    }

    /// The text of `statement`.
    pub(crate) fn text(&self, statement: Statement) -> &Arc<str> {
        // `ALL` lists the statements in declaration order, so a statement's discriminant
        // is its index (checked by a test).
        &self.sql[statement as usize]
    }
}

fn render(statement: Statement, schema: &SchemaName, splice: Splice<'_>) -> String {
    let mut sql = statement
        .template()
        .replace("{horizon}", HORIZON_SQL)
        .replace("{insert}", include_str!("../sql/append_insert.sql"))
        .replace(
            "{batch_insert}",
            include_str!("../sql/append_batch_insert.sql"),
        )
        .replace(
            "{unit_ready}",
            if statement == Statement::AppendAtomic {
                "(SELECT count(*) FROM ready) = (SELECT count(*) FROM candidates)"
            } else {
                "true"
            },
        )
        .replace("{schema}", &schema.quoted());
    for (placeholder, expression) in wire::PLACEHOLDERS {
        sql = sql.replace(placeholder, expression);
    }
    if statement.is_append() {
        // A batch's result names each append's stream: columns the inline ones include.
        let batch = matches!(
            statement,
            Statement::AppendBatch | Statement::AppendBatchPlain | Statement::AppendAtomic
        );
        let columns = match splice.columns {
            "" if batch => ", stream_type, stream_id",
            columns => columns,
        };
        sql = sql
            .replace("{inline_columns}", columns)
            .replace("{inline_statements}", splice.statements);
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_statement_sits_at_its_own_index() {
        for (index, statement) in Statement::ALL.into_iter().enumerate() {
            assert_eq!(statement as usize, index);
        }
    }

    #[test]
    fn every_statement_is_rendered_whole_in_the_quoted_schema() {
        let schema = SchemaName::parse("store_1").expect("valid name");
        let statements = Statements::new(&schema, Splice::default());
        for statement in Statement::ALL {
            let sql = statements.text(statement);
            assert!(
                !sql.contains('{'),
                "{} keeps a placeholder",
                statement.name()
            );
            if statement != Statement::Notify {
                assert!(sql.contains("\"store_1\"."), "{}", statement.name());
            }
        }
        assert_eq!(
            statements.get(Statement::ReadAll).name(),
            "read_all",
            "a statement runs under its own name"
        );
    }

    #[test]
    fn inline_sql_is_spliced_into_the_append_statements_only() {
        let schema = SchemaName::parse("shop").expect("valid name");
        let splice = Splice {
            columns: ", payload",
            statements: ",\ninline_0 AS (\nINSERT INTO v SELECT 1 FROM appended\n)",
        };
        let statements = Statements::new(&schema, splice);
        for statement in Statement::ALL {
            let spliced = statements.text(statement).contains("inline_0 AS");
            assert_eq!(spliced, statement.is_append(), "{}", statement.name());
        }
    }
}
