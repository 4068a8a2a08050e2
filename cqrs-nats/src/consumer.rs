//! Consuming a JetStream stream into PostgreSQL with exactly-once effect: [`Consumer`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, Context};
use cqrs_core::Position;
use cqrs_postgres::PgEventStore;
use cqrs_postgres::sqlx::{self, PgConnection};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{ConsumedPosition, POSITION_HEADER};

/// Moves a consumer's position in `nats_consumed` forward (never back) to the row
/// selected before it: `$1` consumer, `$2` stream, then the stream sequence and the
/// publisher's position (commit, sequence; zeros when the message carried none).
macro_rules! advance {
    () => {
        "INSERT INTO nats_consumed AS c (consumer, stream, sequence, log_commit, log_sequence) \
         SELECT $1, $2, s, pc, ps FROM next \
         ON CONFLICT (consumer, stream) DO UPDATE SET \
         sequence = GREATEST(c.sequence, EXCLUDED.sequence), \
         log_commit = CASE WHEN (EXCLUDED.log_commit, EXCLUDED.log_sequence) > (c.log_commit, c.log_sequence) \
             THEN EXCLUDED.log_commit ELSE c.log_commit END, \
         log_sequence = CASE WHEN (EXCLUDED.log_commit, EXCLUDED.log_sequence) > (c.log_commit, c.log_sequence) \
             THEN EXCLUDED.log_sequence ELSE c.log_sequence END, \
         updated_at = now() \
         RETURNING c.sequence"
    };
}

/// Claims a sequence (passed by when already claimed) and moves the position with it.
const CLAIM: &str = concat!(
    "WITH next AS (INSERT INTO nats_applied (consumer, stream, sequence) VALUES ($1, $2, $3) \
     ON CONFLICT DO NOTHING RETURNING sequence AS s, $4::bigint AS pc, $5::bigint AS ps) ",
    advance!()
);

/// Moves the position past a parked message.
const PASS: &str = concat!(
    "WITH next AS (SELECT $3::bigint AS s, $4::bigint AS pc, $5::bigint AS ps) ",
    advance!()
);

/// One message of the stream, as a [`Consume`] sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Incoming {
    /// The subject it was published to.
    pub subject: String,
    /// Its place in the stream.
    pub stream_sequence: u64,
    /// Its `Nats-Msg-Id` (the publishing relay's event id, or for a copy in a
    /// [`SchemaWindow`](crate::SchemaWindow), `<event id>:<window>`), if any.
    pub message_id: Option<String>,
    /// The publishing store's log position of the event it was made from
    /// ([`POSITION_HEADER`]), if it carried a well-formed one.
    pub position: Option<Position>,
    /// The payload, as JSON.
    pub payload: Value,
}

/// What a [`Consumer`] does with each message: changes to a view in the consumer's
/// database, made in the transaction that records the message's stream sequence.
///
/// `Sync` so that [`Consumer::run`] can be spawned on a multi-threaded runtime.
pub trait Consume: Send + Sync + 'static {
    /// The consumer's name: its durable JetStream consumer and its recorded position.
    const NAME: &'static str;

    /// Why applying a message failed (the message is delivered again later).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies one message, through `cx` (the transaction that commits it with its
    /// stream sequence).
    fn apply(
        &mut self,
        cx: &mut PgConnection,
        message: &Incoming,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Why a consumer stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The consumer's table could not be prepared, or PostgreSQL failed.
    #[error("the consumer's database failed: {0}")]
    Database(String),
    /// The [`Consume`] refused a message (the message is delivered again, then parked).
    #[error("{0}")]
    Apply(String),
    /// JetStream could not be reached, or the stream or consumer not set up.
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// How far a consumer got: messages applied, and deliveries passed by as already
/// applied (redeliveries after a lost acknowledgement, or a crash before it).
#[derive(Debug, Default)]
pub struct ConsumerCounts {
    applied: AtomicU64,
    duplicates: AtomicU64,
    parked: AtomicU64,
}

impl ConsumerCounts {
    /// Messages applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Deliveries passed by because their sequence was already applied.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Messages parked in `nats_parked` (they could not be applied).
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }
}

/// Feeds a view in PostgreSQL from a JetStream stream through a durable pull consumer,
/// with exactly-once effect: each message's changes commit together with its stream
/// sequence, the message is acknowledged only after that commit, and a delivery whose
/// sequence was already applied is acknowledged and passed by. A crash (or a lost
/// acknowledgement) between the commit and the acknowledgement makes JetStream deliver
/// the message again, which changes nothing.
///
/// Messages are applied in the stream's order: the durable consumer has one message
/// outstanding at a time (`max_ack_pending` 1), so a message is delivered only once
/// the one before it was applied or parked. What it applied lives in the store's
/// schema (tables created when missing): `nats_applied` holds each sequence applied
/// until JetStream's acknowledgement floor passes it, and `nats_consumed` how far the
/// consumer got, in the stream and in the publisher's log (what
/// [`ConsumedPosition`] waits on for reads of one's own writes across services).
///
/// A message that cannot be applied (its `apply` failed on every one of
/// [`max_deliveries`](Self::max_deliveries), or its payload is not JSON) is parked in
/// `nats_parked` with the error, and the consumer goes on: no crash loop, and the
/// error is there to see. Run one consumer process per name at a time, or several: a
/// sequence's row is claimed in the transaction that applies it, so two never apply
/// the same one.
pub struct Consumer<C> {
    store: PgEventStore,
    jetstream: Context,
    stream: String,
    subjects: Vec<String>,
    consume: C,
    ack_wait: Duration,
    max_deliveries: i64,
    counts: Arc<ConsumerCounts>,
    reached: watch::Sender<Position>,
}

impl<C> std::fmt::Debug for Consumer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stream", &self.stream)
            .field("ack_wait", &self.ack_wait)
            .finish_non_exhaustive()
    }
}

impl<C: Consume> Consumer<C> {
    /// A consumer of `stream` writing its view through `store`.
    pub fn new(
        store: PgEventStore,
        jetstream: Context,
        stream: impl Into<String>,
        consume: C,
    ) -> Self {
        Self {
            store,
            jetstream,
            stream: stream.into(),
            subjects: Vec::new(),
            consume,
            ack_wait: Duration::from_secs(5),
            max_deliveries: 5,
            counts: Arc::default(),
            reached: watch::Sender::new(Position::START),
        }
    }

    /// Reads only the messages whose subject matches `filter` (a NATS subject, with
    /// wildcards; call again for more, which needs nats-server 2.10 or later). By
    /// default it reads the whole stream. A
    /// consumer of an old version in a [`SchemaWindow`](crate::SchemaWindow) reads the
    /// old prefix (`orders.v1.>`), one that moved reads the new one under a new name.
    #[must_use]
    pub fn filter_subject(mut self, filter: impl Into<String>) -> Self {
        self.subjects.push(filter.into());
        self
    }

    /// How far this consumer got in the publisher's log: wait on it to read one's own
    /// writes made in another service. It learns of this process's progress at once,
    /// and of other processes' (running the same consumer) by polling.
    pub fn position(&self) -> ConsumedPosition {
        ConsumedPosition::new(self.store.clone(), C::NAME, self.stream.clone())
            .with_local(self.reached.subscribe())
    }

    /// How long JetStream waits for an acknowledgement before delivering a message again
    /// (default 5 s; applied to the durable consumer at each start). With one message
    /// outstanding at a time, an acknowledgement lost (with a cluster node that died, say)
    /// holds the consumer this long; an `apply` that takes longer only makes JetStream
    /// deliver the message again, and the second delivery is passed by.
    #[must_use]
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// How many deliveries a message whose `apply` fails gets before it is parked
    /// (default 5; at least 1). A payload that is not JSON is parked at once.
    #[must_use]
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = i64::from(deliveries.max(1));
        self
    }

    /// Its counters (shared: read them while it runs).
    pub fn counts(&self) -> Arc<ConsumerCounts> {
        Arc::clone(&self.counts)
    }

    /// Consumes until the stream of deliveries ends (the connection closes) or fails.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Database`] when the position's table cannot be prepared;
    /// [`ConsumerError::JetStream`] when the stream or the durable consumer cannot be
    /// reached.
    pub async fn run(mut self) -> Result<(), ConsumerError> {
        migrate(&self.store).await?;
        let consumer = self.durable().await?;
        let mut messages = deliveries(&consumer).await?;
        let mut handled = 0_u64;
        while let Some(delivered) = messages.next().await {
            let message = match delivered {
                Ok(message) => message,
                Err(error) if error.kind() == MessagesErrorKind::ConsumerDeleted => {
                    return Err(ConsumerError::JetStream(error.to_string()));
                }
                Err(error) => {
                    // The server that held the pull is gone (a cluster's leader died, a
                    // connection dropped): pull again at once rather than wait for the
                    // request to expire.
                    warn!(%error, "a pull failed; pulling again");
                    messages = pull_again(&consumer).await;
                    continue;
                }
            };
            let Some((incoming, parsed, delivered)) = incoming(&message) else {
                warn!("a delivery without JetStream metadata; passed by");
                continue;
            };
            let outcome = match parsed {
                // Never applicable: parked at once.
                Err(error) => Err((format!("the payload is not JSON: {error}"), true)),
                Ok(()) => self
                    .apply(&incoming)
                    .await
                    .map_err(|error| (error.to_string(), delivered >= self.max_deliveries)),
            };
            self.settle(&message, &incoming, outcome).await?;
            handled += 1;
            if handled.is_multiple_of(256)
                && let Ok(info) = consumer.get_info().await
            {
                self.prune(info.ack_floor.stream_sequence).await?;
            }
        }
        Ok(())
    }

    /// The durable consumer: created, or brought to this configuration when it exists
    /// with another.
    async fn durable(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, ConsumerError> {
        let stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|e| ConsumerError::JetStream(e.to_string()))?;
        stream
            .create_consumer(pull::Config {
                durable_name: Some(C::NAME.to_owned()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: self.ack_wait,
                max_ack_pending: 1,
                // One filter as `filter_subject`, which servers before 2.10 know too.
                filter_subject: match self.subjects.as_slice() {
                    [one] => one.clone(),
                    _ => String::new(),
                },
                filter_subjects: match self.subjects.as_slice() {
                    [_] => Vec::new(),
                    all => all.to_vec(),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| ConsumerError::JetStream(e.to_string()))
    }

    /// Acknowledges an applied message, parks one that can never be applied, and asks
    /// for one that failed to be delivered again.
    async fn settle(
        &self,
        message: &jetstream::Message,
        incoming: &Incoming,
        outcome: Result<(), (String, bool)>,
    ) -> Result<(), ConsumerError> {
        let sequence = incoming.stream_sequence;
        match outcome {
            Ok(()) => {
                if let Err(error) = message.ack().await {
                    // Delivered again later, and passed by then.
                    warn!(%error, sequence, "acknowledgement lost");
                }
            }
            Err((error, true)) => {
                warn!(%error, sequence, "a message that cannot be applied is parked");
                self.park(incoming, &message.payload, &error).await?;
                let _ = message.ack_with(jetstream::AckKind::Term).await;
            }
            Err((error, false)) => {
                warn!(%error, sequence, "applying a message failed; it is delivered again");
                let _ = message
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(500))))
                    .await;
            }
        }
        Ok(())
    }

    /// Records in `tx` that `incoming` was dealt with, and moves the position past it
    /// (`sql` is [`CLAIM`], which passes it by when it already was dealt with, or
    /// [`PASS`]); `false` when it already was (the row's key also makes a concurrent
    /// delivery of it wait, then pass it by).
    async fn record(
        &self,
        tx: &mut PgConnection,
        sql: &'static str,
        incoming: &Incoming,
    ) -> Result<bool, ConsumerError> {
        let (commit, sequence) = incoming
            .position
            .and_then(|p| {
                Some((
                    i64::try_from(p.commit()).ok()?,
                    i64::try_from(p.sequence()).ok()?,
                ))
            })
            .unwrap_or((0, 0));
        let recorded: Option<(i64,)> = sqlx::query_as(sql)
            .bind(C::NAME)
            .bind(&self.stream)
            .bind(i64::try_from(incoming.stream_sequence).unwrap_or(i64::MAX))
            .bind(commit)
            .bind(sequence)
            .fetch_optional(&mut *tx)
            .await
            .map_err(database)?;
        Ok(recorded.is_some())
    }

    /// Tells this process's waiters the position reached, once committed.
    fn reached(&self, incoming: &Incoming) {
        if let Some(position) = incoming.position {
            self.reached.send_if_modified(|reached| {
                let moved = position > *reached;
                if moved {
                    *reached = position;
                }
                moved
            });
        }
    }

    /// Forgets the sequences at or below JetStream's acknowledgement floor: they are
    /// never delivered again.
    async fn prune(&self, floor: u64) -> Result<(), ConsumerError> {
        let mut tx = self.store.begin_in_schema().await.map_err(database)?;
        sqlx::query(
            "DELETE FROM nats_applied WHERE consumer = $1 AND stream = $2 AND sequence <= $3",
        )
        .bind(C::NAME)
        .bind(&self.stream)
        .bind(i64::try_from(floor).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(database)?;
        tx.commit().await.map_err(database)
    }

    /// Records a message that cannot be applied in `nats_parked`, with why.
    async fn park(
        &self,
        incoming: &Incoming,
        payload: &[u8],
        error: &str,
    ) -> Result<(), ConsumerError> {
        let mut tx = self.store.begin_in_schema().await.map_err(database)?;
        sqlx::query(
            "INSERT INTO nats_parked (consumer, stream, sequence, subject, payload, error) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(C::NAME)
        .bind(&self.stream)
        .bind(i64::try_from(incoming.stream_sequence).unwrap_or(i64::MAX))
        .bind(&incoming.subject)
        .bind(payload)
        .bind(error)
        .execute(&mut *tx)
        .await
        .map_err(database)?;
        self.record(&mut tx, PASS, incoming).await?;
        tx.commit().await.map_err(database)?;
        self.reached(incoming);
        self.counts.parked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Applies one message in the transaction that records its sequence; passes by one
    /// already applied.
    async fn apply(&mut self, incoming: &Incoming) -> Result<(), ConsumerError> {
        let mut tx = self.store.begin_in_schema().await.map_err(database)?;
        if !self.record(&mut tx, CLAIM, incoming).await? {
            self.counts.duplicates.fetch_add(1, Ordering::Relaxed);
            debug!(
                sequence = incoming.stream_sequence,
                "already applied; passed by"
            );
            return Ok(());
        }
        self.consume
            .apply(&mut tx, incoming)
            .await
            .map_err(|error| ConsumerError::Apply(error.to_string()))?;
        tx.commit().await.map_err(database)?;
        self.reached(incoming);
        self.counts.applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Creates the tables consumers keep in `store`'s schema, when missing: `nats_applied`,
/// `nats_consumed` and `nats_parked`. [`Consumer::run`] does it itself; call it at
/// deployment to have them before the first consumer starts (a
/// [`ConsumedPosition`] or [`parked`](crate::parked) reads them). Safe to call from
/// several processes at once.
///
/// # Errors
///
/// [`ConsumerError::Database`] when PostgreSQL fails.
pub async fn migrate(store: &PgEventStore) -> Result<(), ConsumerError> {
    let mut tx = store.begin_in_schema().await.map_err(database)?;
    // Consumers starting side by side on one schema: one creates the tables, the
    // others wait and find them (concurrent creations of one table collide).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.cqrs_nats'))")
        .execute(&mut *tx)
        .await
        .map_err(database)?;
    // The sequences applied (or parked) and not yet below JetStream's acknowledgement
    // floor: a redelivery of one of them is passed by, whatever order it comes in.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS nats_applied ( \
             consumer text NOT NULL, stream text NOT NULL, sequence bigint NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (consumer, stream, sequence))",
    )
    .execute(&mut *tx)
    .await
    .map_err(database)?;
    // How far each consumer got: in the stream, and in the publisher's log.
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS nats_consumed ( \
             consumer text NOT NULL, stream text NOT NULL, sequence bigint NOT NULL, \
             log_commit bigint NOT NULL, log_sequence bigint NOT NULL, \
             updated_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (consumer, stream))",
    )
    .execute(&mut *tx)
    .await
    .map_err(database)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS nats_parked ( \
             consumer text NOT NULL, stream text NOT NULL, sequence bigint NOT NULL, \
             subject text NOT NULL, payload bytea NOT NULL, error text NOT NULL, \
             parked_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (consumer, stream, sequence))",
    )
    .execute(&mut *tx)
    .await
    .map_err(database)?;
    tx.commit().await.map_err(database)
}

/// What a delivery says: the message as a [`Consume`] sees it, whether its payload is
/// JSON, and how many times it was delivered; `None` without JetStream metadata.
fn incoming(
    message: &jetstream::Message,
) -> Option<(Incoming, Result<(), serde_json::Error>, i64)> {
    let info = message.info().ok()?;
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    let (payload, parsed) = match serde_json::from_slice::<Value>(&message.payload) {
        Ok(payload) => (payload, Ok(())),
        Err(error) => (Value::Null, Err(error)),
    };
    let incoming = Incoming {
        subject: message.subject.to_string(),
        stream_sequence: info.stream_sequence,
        message_id: header("Nats-Msg-Id"),
        position: header(POSITION_HEADER).and_then(|p| p.parse().ok()),
        payload,
    };
    Some((incoming, parsed, info.delivered))
}

/// Pulls again after a failed pull, pausing longer each time it fails (up to 2 s).
async fn pull_again(consumer: &jetstream::consumer::Consumer<pull::Config>) -> pull::Stream {
    let mut pause = Duration::from_millis(100);
    loop {
        tokio::time::sleep(pause).await;
        match deliveries(consumer).await {
            Ok(messages) => return messages,
            Err(error) => warn!(%error, "pulling again failed; trying again"),
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// A stream of deliveries whose pulls expire after 5 s and whose idle heartbeats come
/// every second: a server that stops answering (a leader that died) shows within about
/// two seconds as a missed heartbeat, and the consumer pulls again.
async fn deliveries(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
) -> Result<pull::Stream, ConsumerError> {
    consumer
        .stream()
        .expires(Duration::from_secs(5))
        .heartbeat(Duration::from_secs(1))
        .messages()
        .await
        .map_err(|e| ConsumerError::JetStream(e.to_string()))
}

fn database(error: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Database(error.to_string())
}
