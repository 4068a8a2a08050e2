use std::sync::Arc;

use crate::Error;

/// The longest schema name accepted: the NOTIFY channel is `<schema>_events` and channel
/// names, like all PostgreSQL identifiers, stop at 63 bytes.
const MAX_SCHEMA_LEN: usize = 56;

/// A schema name that passed [`SchemaName::parse`]: safe to splice into SQL once quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaName {
    name: String,
}

impl SchemaName {
    /// Accepts `^[a-z_][a-z0-9_]{0,55}$`, minus the `pg_` prefix PostgreSQL reserves.
    pub(crate) fn parse(name: &str) -> Result<Self, Error> {
        match identifier_problem(name, MAX_SCHEMA_LEN) {
            Some(reason) => Err(Error::InvalidSchema {
                name: name.chars().take(64).collect(),
                reason,
            }),
            None => Ok(Self {
                name: name.to_owned(),
            }),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.name
    }

    /// The name as a quoted identifier. The validated alphabet holds no `"`, so quoting
    /// needs no escaping; quoting keeps names such as `user` from reading as keywords.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.name)
    }

    /// The NOTIFY channel appends are announced on.
    pub(crate) fn channel(&self) -> String {
        format!("{}_events", self.name)
    }
}

/// The store's SQL, with the schema spliced in once at construction. Every other value is
/// a bind parameter.
#[derive(Debug)]
pub(crate) struct Queries {
    pub(crate) append: Arc<str>,
    pub(crate) append_plain: Arc<str>,
    pub(crate) append_batch: Arc<str>,
    pub(crate) append_batch_plain: Arc<str>,
    pub(crate) load: Arc<str>,
    pub(crate) load_for_command: Arc<str>,
    pub(crate) find_command: Arc<str>,
    pub(crate) find_event_id: Arc<str>,
    pub(crate) find_appended: Arc<str>,
    pub(crate) read_all: Arc<str>,
    pub(crate) head: Arc<str>,
    pub(crate) load_snapshot: Arc<str>,
    pub(crate) save_snapshot: Arc<str>,
    pub(crate) inline_positions: Arc<str>,
}

impl Queries {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let quoted = schema.quoted();
        let render = |sql: &str| Arc::<str>::from(sql.replace("{schema}", &quoted));
        Self {
            append: append_sql(Append::Full, schema, "", ""),
            append_plain: append_sql(Append::Plain, schema, "", ""),
            append_batch: append_sql(Append::Batch, schema, "", ""),
            append_batch_plain: append_sql(Append::BatchPlain, schema, "", ""),
            load: render(include_str!("sql/load.sql")),
            load_for_command: render(include_str!("sql/load_for_command.sql")),
            find_command: render(include_str!("sql/find_command.sql")),
            find_event_id: render(include_str!("sql/find_event_id.sql")),
            find_appended: render(include_str!("sql/find_appended.sql")),
            read_all: render(include_str!("sql/read_all.sql")),
            head: render(include_str!("sql/head.sql")),
            load_snapshot: render(include_str!("sql/load_snapshot.sql")),
            save_snapshot: render(include_str!("sql/save_snapshot.sql")),
            inline_positions: render(include_str!("sql/inline_positions.sql")),
        }
    }
}

/// The append statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Append {
    /// `append.sql`: with a command id, or notifying in the statement.
    Full,
    /// `append_plain.sql`: neither.
    Plain,
    /// `append_batch.sql`: several appends, each to a stream of its own.
    Batch,
    /// `append_batch_plain.sql`: the same, none with a command id.
    BatchPlain,
}

/// An append statement in `schema`, with `columns` added to what `appended` returns and
/// `statements` (CTEs, each starting with a comma) after its own.
pub(crate) fn append_sql(
    which: Append,
    schema: &SchemaName,
    columns: &str,
    statements: &str,
) -> Arc<str> {
    let template = match which {
        Append::Full => include_str!("sql/append.sql"),
        Append::Plain => include_str!("sql/append_plain.sql"),
        Append::Batch => include_str!("sql/append_batch.sql"),
        Append::BatchPlain => include_str!("sql/append_batch_plain.sql"),
    };
    // A batch's result names each append's stream: columns the inline ones include.
    let columns = match (which, columns) {
        (Append::Batch | Append::BatchPlain, "") => ", stream_type, stream_id",
        _ => columns,
    };
    template
        .replace("{insert}", include_str!("sql/append_insert.sql"))
        .replace(
            "{batch_insert}",
            include_str!("sql/append_batch_insert.sql"),
        )
        .replace("{schema}", &schema.quoted())
        .replace("{inline_columns}", columns)
        .replace("{inline_statements}", statements)
        .into()
}

/// Why `name` cannot be spliced into SQL as an identifier, if it cannot: it must match
/// `^[a-z_][a-z0-9_]*$`, hold at most `max_len` bytes, and not take the `pg_` prefix
/// PostgreSQL reserves.
pub(crate) fn identifier_problem(name: &str, max_len: usize) -> Option<&'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Some("it is empty"),
        Some(first) if !(first.is_ascii_lowercase() || first == '_') => {
            return Some("it must start with a lowercase ASCII letter or `_`");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Some("it may only hold lowercase ASCII letters, digits and `_`");
    }
    if name.len() > max_len {
        return Some("it is too long for a PostgreSQL identifier here");
    }
    if name.starts_with("pg_") {
        return Some("the `pg_` prefix is reserved by PostgreSQL");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_lowercase_names() {
        for name in ["cqrs", "_x", "tenant_42", &"a".repeat(56)] {
            assert_eq!(
                SchemaName::parse(name).map(|s| s.name).ok(),
                Some(name.to_owned())
            );
        }
    }

    #[test]
    fn rejects_anything_that_would_need_escaping() {
        for name in [
            "",
            "Cqrs",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "a;drop",
            "é",
            "pg_catalog",
            &"a".repeat(57),
        ] {
            assert!(SchemaName::parse(name).is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn every_statement_is_qualified_with_the_quoted_schema() {
        let schema = SchemaName::parse("store_1").expect("valid name");
        let queries = Queries::new(&schema);
        for sql in [
            &queries.append,
            &queries.append_plain,
            &queries.append_batch,
            &queries.append_batch_plain,
            &queries.load,
            &queries.read_all,
            &queries.head,
        ] {
            assert!(sql.contains("\"store_1\".events"));
            assert!(!sql.contains("{schema}"));
        }
    }
}
