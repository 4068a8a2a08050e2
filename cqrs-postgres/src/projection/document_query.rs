//! A [`DocumentQuery`] in SQL over a document view's `jsonb` column, with the meaning
//! the in-memory view gives it: a field compares only with a value of its own type,
//! numbers by value, strings byte by byte (collation `"C"`), booleans false before true;
//! orders put numbers first, then strings, then the rest, and ties go by key. The
//! expressions are the ones the view's indexes ([`Document::INDEXES`]) are built on, so
//! the planner can use them.

use cqrs_core::{Direction, Document, DocumentQuery, Field, Scalar};
use sqlx::AssertSqlSafe;

use crate::db::{Error, Sql};

/// The SQL expressions of one field of `document`: its `jsonb` value and its text.
struct Path {
    json: String,
    text: String,
}

impl Path {
    /// Segments passed [`Field::new`]: ASCII letters, digits and `_`, safe inside quotes.
    fn of(field: &Field) -> Self {
        let segments: Vec<&str> = field.segments().collect();
        let mut parent = String::from("document");
        for segment in &segments[..segments.len().saturating_sub(1)] {
            parent.push_str(&format!("->'{segment}'"));
        }
        let last = segments.last().copied().unwrap_or_default();
        Self {
            json: format!("{parent}->'{last}'"),
            text: format!("{parent}->>'{last}'"),
        }
    }

    /// The number the field holds, else null.
    fn number(&self) -> String {
        format!(
            "(CASE WHEN jsonb_typeof({}) = 'number' THEN ({})::numeric END)",
            self.json, self.text
        )
    }

    /// The string the field holds, compared byte by byte, else null.
    fn string(&self) -> String {
        format!(
            "((CASE WHEN jsonb_typeof({}) = 'string' THEN {} END) COLLATE \"C\")",
            self.json, self.text
        )
    }

    /// The boolean the field holds, else null.
    fn boolean(&self) -> String {
        format!(
            "(CASE WHEN jsonb_typeof({}) = 'boolean' THEN ({})::boolean END)",
            self.json, self.text
        )
    }

    /// 0 for a number, 1 for a string, 2 for anything else.
    fn rank(&self) -> String {
        format!(
            "(CASE jsonb_typeof({}) WHEN 'number' THEN 0 WHEN 'string' THEN 1 ELSE 2 END)",
            self.json
        )
    }
}

/// The statements that create the indexes `D` declares on `table` (the view's table of
/// one version, qualified), named after `stem` (its unqualified name): for each field,
/// one on its number and one on its string.
pub(super) fn index_statements<D: Document>(table: &str, stem: &str) -> Result<Vec<String>, Error> {
    let mut statements = Vec::with_capacity(D::INDEXES.len() * 2);
    for (i, path) in D::INDEXES.iter().enumerate() {
        let field = Field::new(path).map_err(|e| Error::InvalidName {
            what: "document index field",
            name: (*path).to_owned(),
            reason: match e {
                cqrs_core::QueryError::InvalidField { reason, .. } => reason,
                _ => "it is not a document field",
            },
        })?;
        let path = Path::of(&field);
        for (kind, expression) in [("n", path.number()), ("s", path.string())] {
            let name = index_name(&format!("{stem}_{i}{kind}"));
            statements.push(format!(
                "CREATE INDEX IF NOT EXISTS \"{name}\" ON {table} ({expression})"
            ));
        }
    }
    Ok(statements)
}

/// `name`, or for one longer than PostgreSQL keeps (63 bytes), a name made of a stable
/// hash of it (two long names would otherwise be cut to the same one).
fn index_name(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_owned();
    }
    // FNV-1a: the same in every process and release.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("cqrs_doc_idx_{hash:016x}")
}

/// The statement that runs `query` over `view` (a qualified table or view with columns
/// `id` and `document`), its parameters bound.
pub(super) fn select(view: &str, query: &DocumentQuery) -> Sql {
    let mut sql = format!("SELECT id, document FROM {view}");
    let mut binds: Vec<&Scalar> = Vec::with_capacity(query.filters.len());
    for (i, filter) in query.filters.iter().enumerate() {
        let path = Path::of(&filter.field);
        let n = i + 1;
        let (left, right) = match &filter.value {
            Scalar::Number(_) => (path.number(), format!("${n}::text::numeric")),
            Scalar::Text(_) => (path.string(), format!("${n}::text")),
            Scalar::Bool(_) => (path.boolean(), format!("${n}::boolean")),
        };
        sql.push_str(if i == 0 { " WHERE " } else { " AND " });
        sql.push_str(&format!("{left} {} {right}", filter.comparison.operator()));
        binds.push(&filter.value);
    }
    sql.push_str(" ORDER BY ");
    for order in &query.order {
        let path = Path::of(&order.field);
        let direction = match order.direction {
            Direction::Ascending => "ASC",
            Direction::Descending => "DESC",
        };
        sql.push_str(&format!(
            "{}, {} {direction}, {} {direction}, ",
            path.rank(),
            path.number(),
            path.string()
        ));
    }
    sql.push_str("id COLLATE \"C\"");
    let limit_at = binds.len() + 1;
    sql.push_str(&format!(
        " LIMIT ${limit_at}::bigint OFFSET ${}::bigint",
        limit_at + 1
    ));
    let mut statement = Sql::new("document_query", AssertSqlSafe(sql));
    for value in binds {
        statement = match value {
            Scalar::Number(n) => statement.bind(n.to_string()),
            Scalar::Text(s) => statement.bind(s.clone()),
            Scalar::Bool(b) => statement.bind(*b),
        };
    }
    // A limit past what a bigint holds is no limit; `None` binds NULL, which is none.
    let limit = query.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let offset = i64::try_from(query.offset).unwrap_or(i64::MAX);
    statement.bind(limit).bind(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_index_names_are_hashed_apart() {
        assert_eq!(index_name("short_v1_0n"), "short_v1_0n");
        let a = index_name(&format!("{}_v4294967295_0n", "a".repeat(48)));
        let b = index_name(&format!("{}_v4294967295_0s", "a".repeat(48)));
        assert_ne!(a, b);
        assert!(a.len() <= 63);
    }

    #[test]
    fn nested_paths_walk_objects() {
        let path = Path::of(&Field::new("address.city").expect("field"));
        assert_eq!(path.json, "document->'address'->'city'");
        assert_eq!(path.text, "document->'address'->>'city'");
    }
}
