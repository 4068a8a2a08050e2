//! Reading one's own writes across services: [`ConsumedPosition`].

use std::time::{Duration, Instant};

use cqrs_core::Position;
use cqrs_postgres::PgEventStore;
use cqrs_postgres::sqlx::{self, AssertSqlSafe};
use tokio::sync::watch;

/// Why waiting on a consumer's position failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PositionError {
    /// The consumer did not get that far in time.
    #[error(
        "the consumer `{consumer}` did not reach position {position} within {waited:?} (it is at {reached})"
    )]
    Timeout {
        /// The consumer.
        consumer: String,
        /// The position waited for.
        position: Position,
        /// Where the consumer was when the wait gave up.
        reached: Position,
        /// How long the wait lasted.
        waited: Duration,
    },
    /// The position could not be read.
    #[error("the consumer's position could not be read: {0}")]
    Database(String),
}

/// How far a [`Consumer`](crate::Consumer) got in the publishing service's log: the
/// position of the last event whose message it applied (or parked), in stream order.
///
/// A service that wrote through another service (say, placed an order in the orders
/// service, whose relay publishes `OrderPlaced`) and wants to read the result in its own
/// view waits on the position of that write: once the consumer reached it, the view
/// holds the message of that event and of every earlier one the consumer reads.
///
/// Wait for a position whose event the relay publishes on a subject this consumer
/// reads: a position nothing is published for is reached only when a later message
/// arrives. A message parked as unappliable counts as reached (its error is in
/// `nats_parked`).
///
/// ```no_run
/// use std::time::Duration;
/// use cqrs_core::Position;
/// use cqrs_nats::ConsumedPosition;
/// use cqrs_postgres::PgEventStore;
///
/// # async fn example(store: PgEventStore, token: Position) -> Result<(), Box<dyn std::error::Error>> {
/// // In any process of the inventory service (the consumer may run in another one):
/// let consumed = ConsumedPosition::new(store, "inventory_orders", "ORDERS");
/// // `token`: the position the orders service answered the client's write with.
/// consumed.wait_for(token, Duration::from_secs(5)).await?;
/// // The reservations view now reflects that order.
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ConsumedPosition {
    store: PgEventStore,
    consumer: String,
    stream: String,
    local: Option<watch::Receiver<Position>>,
    poll: Duration,
    sql: String,
}

impl ConsumedPosition {
    /// The position of the consumer named `consumer` (its
    /// [`Consume::NAME`](crate::Consume::NAME)) on `stream`, as recorded in `store`'s
    /// schema. In the process that runs the consumer,
    /// [`Consumer::position`](crate::Consumer::position) also hears of progress at once.
    pub fn new(
        store: PgEventStore,
        consumer: impl Into<String>,
        stream: impl Into<String>,
    ) -> Self {
        // The schema name was checked when the store was built.
        let sql = format!(
            "SELECT log_commit, log_sequence FROM \"{}\".nats_consumed \
             WHERE consumer = $1 AND stream = $2",
            store.schema()
        );
        Self {
            store,
            consumer: consumer.into(),
            stream: stream.into(),
            local: None,
            poll: Duration::from_millis(20),
            sql,
        }
    }

    pub(crate) fn with_local(mut self, local: watch::Receiver<Position>) -> Self {
        self.local = Some(local);
        self
    }

    /// How often [`wait_for`](Self::wait_for) reads the recorded position (default
    /// 20 ms; progress made in this process wakes it at once).
    #[must_use]
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// The position reached, as recorded ([`Position::START`] before the first
    /// message, or before the consumer first ran).
    ///
    /// # Errors
    ///
    /// [`PositionError::Database`] when PostgreSQL fails.
    pub async fn current(&self) -> Result<Position, PositionError> {
        let row: Result<Option<(i64, i64)>, sqlx::Error> =
            sqlx::query_as(AssertSqlSafe(self.sql.as_str()))
                .bind(&self.consumer)
                .bind(&self.stream)
                .fetch_optional(self.store.pool())
                .await;
        match row {
            Ok(Some((commit, sequence))) => Ok(Position::new(
                u64::try_from(commit).unwrap_or(0),
                u64::try_from(sequence).unwrap_or(0),
            )),
            Ok(None) => Ok(Position::START),
            // The consumer has not prepared its tables yet.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => {
                Ok(Position::START)
            }
            Err(e) => Err(PositionError::Database(e.to_string())),
        }
    }

    /// Waits until the consumer reached `position`, for at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`PositionError::Timeout`] when it did not in time, with where it was;
    /// [`PositionError::Database`] when PostgreSQL fails.
    pub async fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<(), PositionError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut local = self.local.clone();
        let mut next_poll = started;
        let mut reached = Position::START;
        loop {
            if let Some(l) = &local {
                reached = reached.max(*l.borrow());
            }
            let now = Instant::now();
            if reached < position && now >= next_poll {
                reached = reached.max(self.current().await?);
                next_poll = now + self.poll;
            }
            if reached >= position {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PositionError::Timeout {
                    consumer: self.consumer.clone(),
                    position,
                    reached,
                    waited: now - started,
                });
            }
            let nap = next_poll.min(deadline).saturating_duration_since(now);
            match &mut local {
                // Woken by this process's consumer, or at the next poll.
                Some(l) => {
                    if let Ok(Err(_)) = tokio::time::timeout(nap, l.changed()).await {
                        // The consumer stopped: poll only.
                        local = None;
                    }
                }
                None => tokio::time::sleep(nap).await,
            }
        }
    }
}
