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
        let invalid = |reason| Error::InvalidSchema {
            name: name.chars().take(64).collect(),
            reason,
        };
        let mut chars = name.chars();
        match chars.next() {
            None => return Err(invalid("it is empty")),
            Some(first) if !(first.is_ascii_lowercase() || first == '_') => {
                return Err(invalid(
                    "it must start with a lowercase ASCII letter or `_`",
                ));
            }
            Some(_) => {}
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(invalid(
                "it may only hold lowercase ASCII letters, digits and `_`",
            ));
        }
        if name.len() > MAX_SCHEMA_LEN {
            return Err(invalid("it is longer than 56 characters"));
        }
        if name.starts_with("pg_") {
            return Err(invalid("the `pg_` prefix is reserved by PostgreSQL"));
        }
        Ok(Self {
            name: name.to_owned(),
        })
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
    pub(crate) load: Arc<str>,
    pub(crate) load_for_command: Arc<str>,
    pub(crate) find_command: Arc<str>,
    pub(crate) find_event_id: Arc<str>,
    pub(crate) read_all: Arc<str>,
    pub(crate) head: Arc<str>,
    pub(crate) load_snapshot: Arc<str>,
    pub(crate) save_snapshot: Arc<str>,
}

impl Queries {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        let quoted = schema.quoted();
        let render = |sql: &str| Arc::<str>::from(sql.replace("{schema}", &quoted));
        Self {
            append: render(include_str!("sql/append.sql")),
            load: render(include_str!("sql/load.sql")),
            load_for_command: render(include_str!("sql/load_for_command.sql")),
            find_command: render(include_str!("sql/find_command.sql")),
            find_event_id: render(include_str!("sql/find_event_id.sql")),
            read_all: render(include_str!("sql/read_all.sql")),
            head: render(include_str!("sql/head.sql")),
            load_snapshot: render(include_str!("sql/load_snapshot.sql")),
            save_snapshot: render(include_str!("sql/save_snapshot.sql")),
        }
    }
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
            &queries.load,
            &queries.read_all,
            &queries.head,
        ] {
            assert!(sql.contains("\"store_1\".events"));
            assert!(!sql.contains("{schema}"));
        }
    }
}
