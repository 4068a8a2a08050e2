//! The messages consumers parked: [`parked`].

use chrono::{DateTime, Utc};
use cqrs_postgres::PgEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe};
use serde::Serialize;

use crate::ConsumerError;

/// A message a [`Consumer`](crate::Consumer) could not apply and set aside, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ParkedMessage {
    /// The consumer ([`Consume::NAME`](crate::Consume::NAME)).
    pub consumer: String,
    /// The JetStream stream.
    pub stream: String,
    /// The message's place in the stream.
    pub sequence: u64,
    /// The subject it was published to.
    pub subject: String,
    /// Its payload as it came (lossily as text when it is not UTF-8).
    pub payload: String,
    /// Why it could not be applied.
    pub error: String,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

/// The messages parked by the consumers writing to `store`'s schema, oldest first (none
/// when no consumer ran there yet).
///
/// # Errors
///
/// [`ConsumerError::Database`] when PostgreSQL fails.
pub async fn parked(store: &PgEventStore) -> Result<Vec<ParkedMessage>, ConsumerError> {
    // The schema name was checked when the store was built.
    let sql = format!(
        "SELECT consumer, stream, sequence, subject, payload, error, parked_at \
         FROM \"{}\".nats_parked ORDER BY parked_at, consumer, stream, sequence",
        store.schema()
    );
    type Row = (String, String, i64, String, Vec<u8>, String, DateTime<Utc>);
    let rows: Vec<Row> = match sqlx::query_as(AssertSqlSafe(sql))
        .fetch_all(store.pool())
        .await
    {
        Ok(rows) => rows,
        // No consumer has prepared its tables here.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
        Err(e) => return Err(ConsumerError::Database(e.to_string())),
    };
    Ok(rows
        .into_iter()
        .map(
            |(consumer, stream, sequence, subject, payload, error, parked_at)| ParkedMessage {
                consumer,
                stream,
                sequence: u64::try_from(sequence).unwrap_or(0),
                subject,
                payload: String::from_utf8_lossy(&payload).into_owned(),
                error,
                parked_at,
            },
        )
        .collect())
}
