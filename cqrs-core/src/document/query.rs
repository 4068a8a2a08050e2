//! Queries over a document view: filters on fields, an order, a page. One meaning on
//! every backend: the in-memory [`Documents`](crate::memory::Documents) evaluates it in
//! Rust, a database translates it to SQL, and the view conformance suite holds both to
//! the same answers.

use std::cmp::Ordering;

use serde_json::Value;

/// The longest field path a query takes, in bytes.
pub(crate) const MAX_FIELD_LEN: usize = 128;

/// A field of a document: a top-level field name, or a path through nested objects
/// separated by `.` (`"address.city"`). Each segment is ASCII letters, digits and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Field {
    path: String,
}

impl Field {
    /// The field at `path`.
    ///
    /// # Errors
    ///
    /// [`QueryError::InvalidField`] for an empty path, an empty segment, a segment
    /// holding anything but ASCII letters, digits and `_`, or a path longer than
    /// 128 bytes.
    pub fn new(path: &str) -> Result<Self, QueryError> {
        let invalid = |reason| QueryError::InvalidField {
            field: path.to_owned(),
            reason,
        };
        if path.is_empty() {
            return Err(invalid("it is empty"));
        }
        if path.len() > MAX_FIELD_LEN {
            return Err(invalid("it is longer than 128 bytes"));
        }
        for segment in path.split('.') {
            if segment.is_empty() {
                return Err(invalid("a segment between dots is empty"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(invalid(
                    "a segment holds a character other than A-Z, a-z, 0-9 and _",
                ));
            }
        }
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// The path as given.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path's segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('.')
    }

    /// The value at this field of `document`, if there is one.
    #[must_use]
    pub fn value_in<'v>(&self, document: &'v Value) -> Option<&'v Value> {
        self.segments()
            .try_fold(document, |value, segment| value.get(segment))
    }
}

/// A value a filter compares a field with: a string, a number or a boolean.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// Compared with string fields, byte by byte (as PostgreSQL's `"C"` collation does).
    Text(String),
    /// Compared with number fields, by value.
    Number(serde_json::Number),
    /// Compared with boolean fields.
    Bool(bool),
}

impl From<&str> for Scalar {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

impl From<String> for Scalar {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

impl From<bool> for Scalar {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

macro_rules! scalar_from_number {
    ($($t:ty),*) => {$(
        impl From<$t> for Scalar {
            fn from(value: $t) -> Self {
                Self::Number(value.into())
            }
        }
    )*};
}

scalar_from_number!(i8, i16, i32, i64, u8, u16, u32, u64);

impl Scalar {
    /// How a document's value compares with this one; `None` when the value is not of
    /// this scalar's type (such a document never matches a filter on it).
    #[must_use]
    pub fn compare(&self, value: &Value) -> Option<Ordering> {
        match (self, value) {
            (Self::Text(s), Value::String(v)) => Some(v.as_bytes().cmp(s.as_bytes())),
            (Self::Number(n), Value::Number(v)) => Some(compare_numbers(v, n)),
            (Self::Bool(b), Value::Bool(v)) => Some(v.cmp(b)),
            _ => None,
        }
    }
}

/// Two JSON numbers by value: exactly for integers, as floating point otherwise.
#[must_use]
pub(crate) fn compare_numbers(a: &serde_json::Number, b: &serde_json::Number) -> Ordering {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return a.cmp(&b);
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return a.cmp(&b);
    }
    // Integers of both signs: the negative one is the smaller.
    if a.as_i64().is_some() && b.as_u64().is_some() {
        return Ordering::Less;
    }
    if a.as_u64().is_some() && b.as_i64().is_some() {
        return Ordering::Greater;
    }
    let (a, b) = (
        a.as_f64().unwrap_or(f64::NAN),
        b.as_f64().unwrap_or(f64::NAN),
    );
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

/// How a filter compares a field with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Equal.
    Eq,
    /// Not equal (a field of another type, or missing, does not match either).
    Ne,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Ge,
}

impl Comparison {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Self::Eq => ordering == Ordering::Equal,
            Self::Ne => ordering != Ordering::Equal,
            Self::Lt => ordering == Ordering::Less,
            Self::Le => ordering != Ordering::Greater,
            Self::Gt => ordering == Ordering::Greater,
            Self::Ge => ordering != Ordering::Less,
        }
    }

    /// The SQL operator.
    #[must_use]
    pub fn operator(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "<>",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }
}

/// One condition on a document: its `field` compares with `value` as `comparison`
/// says. Only a field holding a value of the same type (string, number, boolean) can
/// match.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// The field compared.
    pub field: Field,
    /// How.
    pub comparison: Comparison,
    /// With what.
    pub value: Scalar,
}

impl Filter {
    /// Whether `document` (as JSON) meets the condition.
    #[must_use]
    pub fn matches(&self, document: &Value) -> bool {
        self.field
            .value_in(document)
            .and_then(|value| self.value.compare(value))
            .is_some_and(|ordering| self.comparison.holds(ordering))
    }
}

/// Which way an order runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Smallest first.
    Ascending,
    /// Largest first.
    Descending,
}

/// How a query orders documents by a field: those holding a number first (by value),
/// then those holding a string (byte by byte), then the others (missing, null, boolean,
/// object, array); `direction` orders within the numbers and within the strings. Ties,
/// and documents of the last group, are ordered by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The field ordered by.
    pub field: Field,
    /// Which way.
    pub direction: Direction,
}

/// The rank of a value in an [`Order`]: numbers, strings, then the rest.
fn rank(value: Option<&Value>) -> u8 {
    match value {
        Some(Value::Number(_)) => 0,
        Some(Value::String(_)) => 1,
        _ => 2,
    }
}

impl Order {
    /// How two documents (as JSON) compare under this order, before their keys.
    #[must_use]
    pub fn compare(&self, a: &Value, b: &Value) -> Ordering {
        let (a, b) = (self.field.value_in(a), self.field.value_in(b));
        let by_value = match (a, b) {
            (Some(Value::Number(a)), Some(Value::Number(b))) => compare_numbers(a, b),
            (Some(Value::String(a)), Some(Value::String(b))) => a.as_bytes().cmp(b.as_bytes()),
            _ => return rank(a).cmp(&rank(b)),
        };
        match self.direction {
            Direction::Ascending => by_value,
            Direction::Descending => by_value.reverse(),
        }
    }
}

/// A query over a document view: every filter must hold; the documents come in the
/// order given (then by key), `offset` of them skipped and at most `limit` returned.
///
/// ```
/// use cqrs_core::{Direction, DocumentQuery};
///
/// # fn main() -> Result<(), cqrs_core::QueryError> {
/// let open_and_large = DocumentQuery::new()
///     .filter("status", cqrs_core::Comparison::Eq, "open")?
///     .filter("total", cqrs_core::Comparison::Ge, 100)?
///     .order_by("total", Direction::Descending)?
///     .limit(20);
/// # let _ = open_and_large;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentQuery {
    /// The conditions, all of which must hold.
    pub filters: Vec<Filter>,
    /// The order, field by field; the key last.
    pub order: Vec<Order>,
    /// How many documents to skip.
    pub offset: usize,
    /// How many to return at most (`None`: all).
    pub limit: Option<usize>,
}

impl DocumentQuery {
    /// Every document, by key.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a condition on `field`.
    ///
    /// # Errors
    ///
    /// [`QueryError::InvalidField`] for a field path [`Field::new`] refuses.
    pub fn filter(
        mut self,
        field: &str,
        comparison: Comparison,
        value: impl Into<Scalar>,
    ) -> Result<Self, QueryError> {
        self.filters.push(Filter {
            field: Field::new(field)?,
            comparison,
            value: value.into(),
        });
        Ok(self)
    }

    /// Orders by `field` (after the orders already given).
    ///
    /// # Errors
    ///
    /// [`QueryError::InvalidField`] for a field path [`Field::new`] refuses.
    pub fn order_by(mut self, field: &str, direction: Direction) -> Result<Self, QueryError> {
        self.order.push(Order {
            field: Field::new(field)?,
            direction,
        });
        Ok(self)
    }

    /// Skips the first `offset` documents.
    #[must_use]
    pub fn offset(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }

    /// Returns at most `limit` documents.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether `document` (as JSON) meets every filter.
    #[must_use]
    pub fn matches(&self, document: &Value) -> bool {
        self.filters.iter().all(|filter| filter.matches(document))
    }

    /// How two documents compare under the query's order: field by field, then by key.
    #[must_use]
    pub fn compare(&self, a: (&str, &Value), b: (&str, &Value)) -> Ordering {
        self.order
            .iter()
            .map(|order| order.compare(a.1, b.1))
            .find(|ordering| ordering.is_ne())
            .unwrap_or_else(|| a.0.as_bytes().cmp(b.0.as_bytes()))
    }
}

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// A field path that is not one.
    #[error("`{field}` is not a document field: {reason}")]
    InvalidField {
        /// The path given.
        field: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A document did not turn into JSON to be queried.
    #[error("document `{key}` of `{view}` does not serialise: {reason}")]
    Serialise {
        /// The view.
        view: &'static str,
        /// The document's key.
        key: String,
        /// The serialiser's message.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn field_paths_are_checked() {
        assert!(Field::new("status").is_ok());
        assert!(Field::new("address.city_2").is_ok());
        for bad in ["", ".", "a..b", "a.", "na'me", "a b", "é"] {
            assert!(
                matches!(Field::new(bad), Err(QueryError::InvalidField { .. })),
                "{bad:?}"
            );
        }
        assert!(Field::new(&"a".repeat(129)).is_err());
    }

    #[test]
    fn a_filter_matches_only_values_of_its_type() {
        let document = json!({ "n": 5, "s": "b", "t": true, "nested": { "n": 2 } });
        let holds = |field: &str, comparison, value: Scalar| {
            Filter {
                field: Field::new(field).expect("field"),
                comparison,
                value,
            }
            .matches(&document)
        };
        assert!(holds("n", Comparison::Gt, 4.into()));
        assert!(!holds("n", Comparison::Gt, 5.into()));
        assert!(holds("n", Comparison::Ge, 5.into()));
        assert!(holds("s", Comparison::Lt, "c".into()));
        assert!(
            !holds("s", Comparison::Lt, 9.into()),
            "a string is no number"
        );
        assert!(
            !holds("n", Comparison::Ne, "5".into()),
            "nor a number a string"
        );
        assert!(!holds("missing", Comparison::Ne, 1.into()));
        assert!(holds("t", Comparison::Eq, true.into()));
        assert!(holds("nested.n", Comparison::Eq, 2.into()));
        assert!(holds(
            "n",
            Comparison::Eq,
            Scalar::Number(serde_json::Number::from_f64(5.0).expect("finite"))
        ));
    }

    #[test]
    fn an_order_puts_numbers_then_strings_then_the_rest() {
        let order = Order {
            field: Field::new("v").expect("field"),
            direction: Direction::Descending,
        };
        let mut values = vec![
            json!({}),
            json!({ "v": "a" }),
            json!({ "v": 1 }),
            json!({ "v": "B" }),
            json!({ "v": 3 }),
        ];
        values.sort_by(|a, b| order.compare(a, b));
        assert_eq!(
            values,
            [
                json!({ "v": 3 }),
                json!({ "v": 1 }),
                json!({ "v": "a" }),
                json!({ "v": "B" }),
                json!({})
            ]
        );
    }

    #[test]
    fn numbers_compare_by_value_across_representations() {
        let n = |v: serde_json::Value| match v {
            Value::Number(n) => n,
            _ => unreachable!(),
        };
        assert_eq!(
            compare_numbers(&n(json!(-1)), &n(json!(u64::MAX))),
            Ordering::Less
        );
        assert_eq!(
            compare_numbers(&n(json!(u64::MAX)), &n(json!(-1))),
            Ordering::Greater
        );
        assert_eq!(
            compare_numbers(&n(json!(2.5)), &n(json!(2))),
            Ordering::Greater
        );
        assert_eq!(
            compare_numbers(&n(json!(2.0)), &n(json!(2))),
            Ordering::Equal
        );
    }
}
