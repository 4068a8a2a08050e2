//! Names spliced into SQL: the store's schema, and the checks every such name passes.

use super::error::Error;

/// The longest schema name accepted: PostgreSQL's identifiers hold 63 bytes, and the
/// notification channels append a suffix of up to 6.
const MAX_SCHEMA_LEN: usize = 56;

/// A schema name that is safe to splice into SQL once quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchemaName {
    name: String,
}

impl SchemaName {
    /// Accepts `^[a-z_][a-z0-9_]{0,55}$`, minus the `pg_` prefix PostgreSQL reserves.
    pub(crate) fn parse(name: &str) -> Result<Self, Error> {
        check_identifier("schema", name, MAX_SCHEMA_LEN)?;
        Ok(Self {
            name: name.to_owned(),
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.name
    }

    /// The statement that puts the store's schema first on a session's `search_path`
    /// (the session's own path after it), for the store's own connections: a view kept
    /// inline resolves its unqualified names there, and the store's statements, all
    /// qualified, keep their plans (a prepared statement is planned again whenever it
    /// runs under another path).
    pub(crate) fn session_search_path(&self) -> String {
        format!(
            "SELECT set_config('search_path', concat_ws(', ', '{}', \
             nullif(current_setting('search_path'), '')), false)",
            self.quoted()
        )
    }

    /// The statement that opens a transaction in which a view's SQL runs: the store's
    /// schema first on `search_path` for that transaction only (the connection's own path
    /// after it), so a view's unqualified table names resolve in the store's schema; and
    /// `synchronous_commit` off unless `synchronous_commit`.
    pub(crate) fn begin_view_transaction(&self, synchronous_commit: bool) -> String {
        // The validated alphabet holds no `'` either, so the name sits in a literal as is.
        let mut sql = format!(
            "BEGIN; SELECT set_config('search_path', concat_ws(', ', '{}', \
             nullif(current_setting('search_path'), '')), true)",
            self.quoted()
        );
        if !synchronous_commit {
            sql.push_str("; SET LOCAL synchronous_commit TO off");
        }
        sql
    }

    /// The name as a quoted identifier. The validated alphabet holds no `"`, so quoting
    /// needs no escaping; quoting keeps names such as `user` from reading as keywords.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.name)
    }
}

/// Checks a name that is spliced into SQL as an identifier: it must match
/// `^[a-z_][a-z0-9_]*$`, hold at most `max_len` bytes, and not take the `pg_` prefix
/// PostgreSQL reserves. `what` names it in the error (`schema`, `table`).
pub(crate) fn check_identifier(
    what: &'static str,
    name: &str,
    max_len: usize,
) -> Result<(), Error> {
    match identifier_problem(name, max_len) {
        Some(reason) => Err(Error::InvalidName {
            what,
            name: name.chars().take(64).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The longest projection name accepted, in bytes: a name travels in notifications and
/// lock keys, and is shown in status.
pub(crate) const MAX_PROJECTION_NAME_LEN: usize = 128;

/// Checks a projection's name: 1 to [`MAX_PROJECTION_NAME_LEN`] bytes, with no
/// whitespace or control characters.
pub(crate) fn check_projection_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_PROJECTION_NAME_LEN {
        Some("it is longer than 128 bytes")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it may not hold whitespace or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            what: "projection",
            name: name.chars().take(64).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

fn identifier_problem(name: &str, max_len: usize) -> Option<&'static str> {
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
    fn projection_names_are_short_and_printable() {
        for name in ["balances", "orders-v2", "ünï.côdé:view", &"n".repeat(128)] {
            assert!(check_projection_name(name).is_ok(), "{name:?} was refused");
        }
        for name in [
            "",
            "two words",
            "tab\tname",
            "new\nline",
            "\u{7}",
            &"n".repeat(129),
        ] {
            assert!(
                matches!(
                    check_projection_name(name),
                    Err(Error::InvalidName {
                        what: "projection",
                        ..
                    })
                ),
                "{name:?} was accepted"
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
            assert!(
                matches!(
                    SchemaName::parse(name),
                    Err(Error::InvalidName { what: "schema", .. })
                ),
                "{name:?} was accepted"
            );
        }
    }
}
