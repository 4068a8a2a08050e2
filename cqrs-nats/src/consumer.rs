//! Consuming a JetStream stream into PostgreSQL with exactly-once effect: [`Consumer`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{self, Context};
use cqrs_postgres::PgEventStore;
use cqrs_postgres::sqlx::{self, PgConnection};
use futures_util::StreamExt;
use serde_json::Value;
use tracing::{debug, warn};

/// One message of the stream, as a [`Consume`] sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Incoming {
    /// The subject it was published to.
    pub subject: String,
    /// Its place in the stream.
    pub stream_sequence: u64,
    /// Its `Nats-Msg-Id` (the publishing relay's event id), if any.
    pub message_id: Option<String>,
    /// The payload, as JSON.
    pub payload: Value,
}

/// What a [`Consumer`] does with each message: changes to a view in the consumer's
/// database, made in the transaction that records the message's stream sequence.
pub trait Consume: Send + 'static {
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
/// What it applied lives in the table `nats_applied` of the store's schema (created
/// when missing): each sequence applied, until JetStream's acknowledgement floor passes
/// it (redeliveries may come in any order, so a high-water mark would not do). A message that cannot be applied (its `apply` failed on every one of
/// [`max_deliveries`](Self::max_deliveries), or its payload is not JSON) is parked in
/// `nats_parked` with the error, and the consumer goes on: no crash loop, and the
/// error is there to see. Run one consumer process per name at a time, or several: a
/// sequence's row is claimed in the transaction that applies it, so two never apply
/// the same one.
pub struct Consumer<C> {
    store: PgEventStore,
    jetstream: Context,
    stream: String,
    consume: C,
    ack_wait: Duration,
    max_deliveries: i64,
    counts: Arc<ConsumerCounts>,
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
            consume,
            ack_wait: Duration::from_secs(30),
            max_deliveries: 5,
            counts: Arc::default(),
        }
    }

    /// How long JetStream waits for an acknowledgement before delivering a message again
    /// (default 30 s; set when the durable consumer is created).
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
        self.prepare().await?;
        let stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|e| ConsumerError::JetStream(e.to_string()))?;
        let consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                C::NAME,
                pull::Config {
                    durable_name: Some(C::NAME.to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ConsumerError::JetStream(e.to_string()))?;
        let mut consumer = consumer;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| ConsumerError::JetStream(e.to_string()))?;
        let mut handled = 0_u64;
        while let Some(delivered) = messages.next().await {
            let message = match delivered {
                Ok(message) => message,
                Err(error) => {
                    warn!(%error, "a delivery failed; going on");
                    continue;
                }
            };
            let Ok(info) = message.info() else {
                warn!("a delivery without JetStream metadata; passed by");
                continue;
            };
            let delivered = info.delivered;
            let parsed = serde_json::from_slice::<Value>(&message.payload);
            let incoming = Incoming {
                subject: message.subject.to_string(),
                stream_sequence: info.stream_sequence,
                message_id: message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_owned()),
                payload: parsed.as_ref().map_or(Value::Null, Clone::clone),
            };
            let outcome = match &parsed {
                // Never applicable: parked at once.
                Err(error) => Err((format!("the payload is not JSON: {error}"), true)),
                Ok(_) => self
                    .apply(&incoming)
                    .await
                    .map_err(|error| (error.to_string(), delivered >= self.max_deliveries)),
            };
            handled += 1;
            if handled.is_multiple_of(256)
                && let Ok(info) = consumer.info().await
            {
                let floor = info.ack_floor.stream_sequence;
                self.prune(floor).await?;
            }
            match outcome {
                Ok(()) => {
                    if let Err(error) = message.ack().await {
                        // Delivered again later, and passed by then.
                        warn!(%error, sequence = incoming.stream_sequence, "acknowledgement lost");
                    }
                }
                Err((error, true)) => {
                    warn!(%error, sequence = incoming.stream_sequence, "a message that cannot be applied is parked");
                    self.park(&incoming, &message.payload, &error).await?;
                    let _ = message.ack_with(jetstream::AckKind::Term).await;
                }
                Err((error, false)) => {
                    warn!(%error, sequence = incoming.stream_sequence, delivered, "applying a message failed; it is delivered again");
                    let _ = message
                        .ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(500))))
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn prepare(&self) -> Result<(), ConsumerError> {
        let mut tx = self.store.begin_in_schema().await.map_err(database)?;
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

    /// Records that `sequence` was dealt with, in `tx`; `false` when it already was (the
    /// row's key also makes a concurrent delivery of it wait, then pass it by).
    async fn claim(&self, tx: &mut PgConnection, sequence: u64) -> Result<bool, ConsumerError> {
        let claimed: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO nats_applied (consumer, stream, sequence) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING RETURNING sequence",
        )
        .bind(C::NAME)
        .bind(&self.stream)
        .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
        .fetch_optional(&mut *tx)
        .await
        .map_err(database)?;
        Ok(claimed.is_some())
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
        tx.commit().await.map_err(database)?;
        self.counts.parked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Applies one message in the transaction that records its sequence; passes by one
    /// already applied.
    async fn apply(&mut self, incoming: &Incoming) -> Result<(), ConsumerError> {
        let mut tx = self.store.begin_in_schema().await.map_err(database)?;
        if !self.claim(&mut tx, incoming.stream_sequence).await? {
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
        self.counts.applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn database(error: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Database(error.to_string())
}
