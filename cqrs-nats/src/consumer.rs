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
}

/// Feeds a view in PostgreSQL from a JetStream stream through a durable pull consumer,
/// with exactly-once effect: each message's changes commit together with its stream
/// sequence, the message is acknowledged only after that commit, and a delivery whose
/// sequence was already applied is acknowledged and passed by. A crash (or a lost
/// acknowledgement) between the commit and the acknowledgement makes JetStream deliver
/// the message again, which changes nothing.
///
/// Its position lives in the table `nats_consumers` of the store's schema (created
/// when missing). Run one consumer process per name at a time, or several: the row of
/// the position is locked for each message, so two never apply the same one.
pub struct Consumer<C> {
    store: PgEventStore,
    jetstream: Context,
    stream: String,
    consume: C,
    ack_wait: Duration,
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
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| ConsumerError::JetStream(e.to_string()))?;
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
            let incoming = Incoming {
                subject: message.subject.to_string(),
                stream_sequence: info.stream_sequence,
                message_id: message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .map(|v| v.as_str().to_owned()),
                payload: serde_json::from_slice(&message.payload).unwrap_or(Value::Null),
            };
            match self.apply(&incoming).await {
                Ok(()) => {
                    if let Err(error) = message.ack().await {
                        // Delivered again later, and passed by then.
                        warn!(%error, sequence = incoming.stream_sequence, "acknowledgement lost");
                    }
                }
                Err(error) => {
                    warn!(%error, sequence = incoming.stream_sequence, "applying a message failed; it is delivered again");
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
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS nats_consumers ( \
                 consumer text NOT NULL, stream text NOT NULL, sequence bigint NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (consumer, stream))",
        )
        .execute(&mut *tx)
        .await
        .map_err(database)?;
        sqlx::query(
            "INSERT INTO nats_consumers (consumer, stream, sequence) VALUES ($1, $2, 0) \
             ON CONFLICT DO NOTHING",
        )
        .bind(C::NAME)
        .bind(&self.stream)
        .execute(&mut *tx)
        .await
        .map_err(database)?;
        tx.commit().await.map_err(database)
    }

    /// Applies one message in the transaction that records its sequence; passes by one
    /// already applied.
    async fn apply(&mut self, incoming: &Incoming) -> Result<(), ConsumerError> {
        let mut tx = self.store.begin_in_schema().await.map_err(database)?;
        let (applied,): (i64,) = sqlx::query_as(
            "SELECT sequence FROM nats_consumers WHERE consumer = $1 AND stream = $2 FOR UPDATE",
        )
        .bind(C::NAME)
        .bind(&self.stream)
        .fetch_one(&mut *tx)
        .await
        .map_err(database)?;
        let sequence = i64::try_from(incoming.stream_sequence).unwrap_or(i64::MAX);
        if sequence <= applied {
            self.counts.duplicates.fetch_add(1, Ordering::Relaxed);
            debug!(sequence, "already applied; passed by");
            return Ok(());
        }
        self.consume
            .apply(&mut tx, incoming)
            .await
            .map_err(|error| ConsumerError::Database(error.to_string()))?;
        sqlx::query(
            "UPDATE nats_consumers SET sequence = $3, updated_at = now() \
             WHERE consumer = $1 AND stream = $2",
        )
        .bind(C::NAME)
        .bind(&self.stream)
        .bind(sequence)
        .execute(&mut *tx)
        .await
        .map_err(database)?;
        tx.commit().await.map_err(database)?;
        self.counts.applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn database(error: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Database(error.to_string())
}
