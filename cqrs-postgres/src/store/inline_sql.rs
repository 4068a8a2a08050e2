//! Inline projections written as SQL: a statement spliced into every append statement,
//! which reads the append's events from `appended`.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, Executor as _, PgConnection, SqlSafeStr as _};

use crate::db::{Error, SchemaName, check_projection_name};

/// An inline projection written as one SQL statement, which the store runs as part of
/// the append statement itself: the view changes in the same statement as the log, at no
/// extra round trip. Add it with
/// [`PgEventStoreBuilder::inline_sql`](crate::PgEventStoreBuilder::inline_sql).
///
/// The statement reads the events of the append from `appended`, one row per event, with
/// the columns of the log (name them: their order is not part of the contract): `event_id` (uuid), `stream_type`, `stream_id`, `event_type`
/// (text), `stream_version`, `transaction_id`, `sequence` (bigint; the position is
/// `transaction_id.sequence`), `schema_version` (integer), `payload`, `metadata` (jsonb)
/// and `recorded_at` (timestamptz). Payloads are as the append writes them: at their
/// type's current schema version.
///
/// It is a data-modifying statement (`INSERT`, `UPDATE` or `DELETE`, as PostgreSQL allows
/// them in `WITH`) of its own, with these rules:
///
/// - **It draws its rows from `appended`.** An append that writes nothing (a conflict, a
///   repeated command id) leaves `appended` empty, and the statement still runs: what it
///   does must come from those rows.
/// - **`appended` may hold several appends, of different streams.** Appends that wait
///   at the same time are sent as one statement (see
///   [`PgStoreTuning::append_batches`](crate::PgStoreTuning::append_batches)), which
///   runs the projection once for all of their events: never assume one stream, and
///   take each row's stream from its own columns.
/// - **One statement touches a row of the view once.** Several events for the same row
///   must be folded first (`GROUP BY`), or the server refuses the statement with
///   "command cannot affect row a second time" (for appends sent together, they are then
///   sent again one by one, more slowly).
/// - **It sees the view as it was before the statement,** like every part of one
///   statement; concurrent appends are serialised on the view's rows by the server as
///   for any `UPDATE` or `INSERT … ON CONFLICT`.
/// - **No bind parameters and no `WITH` of its own holding a data-modifying statement.**
///   Qualify the view's table with its schema.
/// - **It is code.** The statement is spliced into the append statement as written, like
///   a query passed to `sqlx::AssertSqlSafe`: write it in the program, never build it
///   from input.
///
/// If the statement fails, the append fails with
/// [`Error::InlineSql`] and writes nothing: an inline projection can refuse
/// writes, so keep it simple. The store checks each statement with the server before its
/// first append (a syntax error, an unknown table or column surfaces then, naming the
/// projection, and nothing is written).
///
/// ```
/// use cqrs_postgres::PgInlineSql;
///
/// let balances = PgInlineSql::new(
///     "balances",
///     "INSERT INTO bank.balances AS b (account, balance)
///      SELECT stream_id, sum((payload->>'amount')::bigint)
///      FROM appended WHERE event_type = 'Deposited'
///      GROUP BY stream_id
///      ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance",
/// )?;
/// assert_eq!(balances.name(), "balances");
///
/// let bad = PgInlineSql::new("counter", "UPDATE counters SET n = n + $1");
/// assert!(bad.is_err());
/// # Ok::<(), cqrs_postgres::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PgInlineSql {
    name: &'static str,
    version: u32,
    sql: Arc<str>,
}

impl PgInlineSql {
    /// The projection `name` (version 1), keeping its view with `sql`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a name of more than 128 bytes, or holding whitespace or
    /// control characters; [`Error::InvalidInlineSql`] when `sql` is empty, never
    /// mentions `appended`, or refers to a bind parameter (`$1`, …).
    pub fn new(name: &'static str, sql: impl Into<String>) -> Result<Self, Error> {
        check_projection_name(name)?;
        let sql = sql.into();
        let sql = sql.trim().trim_end_matches(';').trim_end();
        let invalid = |reason| Error::InvalidInlineSql {
            projection: name,
            reason,
        };
        if sql.is_empty() {
            return Err(invalid("the statement is empty"));
        }
        if !sql.to_ascii_lowercase().contains("appended") {
            return Err(invalid(
                "the statement does not read `appended`, the events of the append",
            ));
        }
        let bytes = sql.as_bytes();
        if bytes
            .windows(2)
            .any(|pair| pair[0] == b'$' && pair[1].is_ascii_digit())
        {
            return Err(invalid(
                "the statement refers to a bind parameter; it takes none: read the events \
                 from `appended`",
            ));
        }
        Ok(Self {
            name,
            version: 1,
            sql: sql.into(),
        })
    }

    /// The same projection with another version (reported in status, as
    /// [`Projection::VERSION`](cqrs_core::Projection::VERSION) is).
    #[must_use]
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// The projection's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The projection's version.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The statement, as it is spliced into the append statement.
    #[must_use]
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

/// The columns `appended` gains for inline SQL projections (it always returns
/// `stream_version`, `transaction_id` and `sequence`).
pub(crate) const APPENDED_COLUMNS: &str = ", event_id, stream_type, stream_id, event_type, \
     schema_version, payload, metadata, recorded_at";

/// The CTEs the append statements gain for `statements`, each starting with a comma.
pub(crate) fn ctes(statements: &[PgInlineSql]) -> String {
    statements
        .iter()
        .enumerate()
        .map(|(i, statement)| format!(",\ninline_{i} AS (\n{}\n)", statement.sql))
        .collect()
}

/// Has the server parse and analyse `statement` as it will run: after `appended`, here
/// drawn from the log with no rows.
pub(crate) async fn check(
    conn: &mut PgConnection,
    schema: &SchemaName,
    statement: &PgInlineSql,
) -> Result<(), Error> {
    let sql = format!(
        "WITH appended AS (\n\
         SELECT stream_version, transaction_id, sequence{APPENDED_COLUMNS}\n\
         FROM {}.events WHERE false\n\
         ),\ninline_0 AS (\n{}\n)\nSELECT 1",
        schema.quoted(),
        statement.sql
    );
    conn.describe(AssertSqlSafe(sql).into_sql_str())
        .await
        .map(drop)
        .map_err(|source| Error::InlineSql {
            projection: statement.name.to_owned(),
            stream: None,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Splice, Statement, Statements};

    fn refused(sql: &str) -> Option<&'static str> {
        match PgInlineSql::new("view", sql) {
            Err(Error::InvalidInlineSql { projection, reason }) => {
                assert_eq!(projection, "view");
                Some(reason)
            }
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn statements_that_cannot_be_inline_projections_are_refused() {
        for sql in ["", "  ;\n", "DELETE FROM v", "UPDATE v SET n = n + 1"] {
            assert!(refused(sql).is_some(), "{sql:?} was accepted");
        }
        for sql in [
            "INSERT INTO v SELECT stream_id, $1 FROM appended",
            "UPDATE v SET n = n + 1 FROM appended WHERE v.id = $2",
        ] {
            assert!(
                refused(sql).is_some_and(|reason| reason.contains("bind parameter")),
                "{sql:?}"
            );
        }
    }

    #[test]
    fn accepted_statements_lose_trailing_semicolons_and_keep_dollar_quotes() {
        let sql = "INSERT INTO v SELECT stream_id, $$x$$ FROM appended ;\n";
        let statement = PgInlineSql::new("view", sql).expect("accepted");
        assert_eq!(
            statement.sql(),
            "INSERT INTO v SELECT stream_id, $$x$$ FROM appended"
        );
        assert_eq!(statement.with_version(3).version(), 3);
    }

    #[test]
    fn each_statement_is_spliced_into_the_append_as_a_cte_of_its_own() {
        let schema = SchemaName::parse("shop").expect("valid");
        let statements: Vec<_> = ["first", "second"]
            .into_iter()
            .map(|name| {
                PgInlineSql::new(name, format!("INSERT INTO {name} SELECT 1 FROM appended"))
                    .expect("accepted")
            })
            .collect();
        let ctes = ctes(&statements);
        let rendered = Statements::new(
            &schema,
            Splice {
                columns: APPENDED_COLUMNS,
                statements: &ctes,
            },
        );
        for which in [Statement::Append, Statement::AppendPlain] {
            let sql = rendered.text(which);
            assert!(sql.contains("inline_0 AS (\nINSERT INTO first SELECT 1 FROM appended\n)"));
            assert!(sql.contains("inline_1 AS (\nINSERT INTO second SELECT 1 FROM appended\n)"));
            assert!(sql.contains(&format!("sequence{APPENDED_COLUMNS}")));
        }
    }
}
