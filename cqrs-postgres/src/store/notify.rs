use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::sync::Arc;

use cqrs_core::Position;
use sqlx::{ConnectOptions as _, PgConnection, PgPool};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{Instrument, debug, warn};

use crate::db::{Statement, Statements, position_notice};

/// How a [`PgEventStore`](crate::PgEventStore) announces appends with `NOTIFY`, so that
/// the projection runners wake up at once instead of polling.
///
/// A notification is only a wake-up call: a reader always reads on from its own
/// position, and polls as well, since a notification can be late or (with
/// [`AfterCommit`](Self::AfterCommit)) lost.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use cqrs_postgres::{PgEventStore, PgNotify};
///
/// let pool = sqlx::PgPool::connect_lazy("postgres://postgres@localhost/app")?;
/// let store = PgEventStore::builder(pool).notify(PgNotify::InTransaction).build()?;
/// assert_eq!(store.notify(), PgNotify::InTransaction);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgNotify {
    /// Once an append has committed, a background task of the store sends one `NOTIFY`
    /// with the newest position, at most one per millisecond: appends that commit while
    /// it waits share the next one. It sends on a connection it keeps (opened with the
    /// pool's options, replaced if it is closed), or on the pool for a store that keeps
    /// no connections of its own
    /// ([`command_connections(0)`](crate::PgStoreTuning::command_connections)).
    /// The default.
    ///
    /// Appends stay fully concurrent. A process that dies between an append's commit and
    /// the notification loses that wake-up; readers find the events at their next poll.
    #[default]
    AfterCommit,
    /// The append statement itself notifies, so the notification is delivered exactly
    /// when, and only if, the append commits.
    ///
    /// PostgreSQL serialises the commits of notifying transactions (a database-wide
    /// lock held through the commit's WAL flush), so concurrent appends no longer share
    /// WAL flushes: expect roughly half the append throughput under concurrency.
    InTransaction,
    /// No notifications: readers poll.
    Off,
}

/// The background notifier behind [`PgNotify::AfterCommit`]: keeps the newest announced
/// position and a task that sends it, started by the first announcement (which runs
/// inside the Tokio runtime of an append).
#[derive(Debug)]
pub(crate) struct Notifier {
    latest: watch::Sender<Position>,
    waiting: Mutex<Option<watch::Receiver<Position>>>,
    started: AtomicBool,
    /// Whether it sends on a connection of its own (otherwise on the pool).
    own_connection: bool,
    statements: Arc<Statements>,
}

impl Notifier {
    pub(crate) fn new(own_connection: bool, statements: Arc<Statements>) -> Self {
        let (latest, waiting) = watch::channel(Position::START);
        Self {
            latest,
            waiting: Mutex::new(Some(waiting)),
            started: AtomicBool::new(false),
            own_connection,
            statements,
        }
    }

    /// Records that an append up to `position` committed and wakes the task.
    pub(crate) fn announce(&self, pool: &PgPool, channel: &str, position: Position) {
        self.latest.send_if_modified(|newest| {
            let newer = position > *newest;
            if newer {
                *newest = position;
            }
            newer
        });
        if !self.started.load(Ordering::Acquire) {
            self.start(pool, channel);
        }
    }

    fn start(&self, pool: &PgPool, channel: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let receiver = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(receiver) = receiver else {
            return;
        };
        self.started.store(true, Ordering::Release);
        let span = tracing::debug_span!("cqrs_postgres.notifier", channel);
        let sender = Sender {
            pool: pool.clone(),
            own_connection: self.own_connection,
            statements: Arc::clone(&self.statements),
            conn: None,
        };
        runtime.spawn(notify_loop(sender, channel.to_owned(), receiver).instrument(span));
    }
}

/// The shortest time between two notifications of one store. Under load, appends that
/// commit within it share one `NOTIFY`, which costs the server a statement and a commit
/// of its own; a reader wakes at most this much later.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(1);

/// Sends the newest position each time it changes, at most once per [`NOTIFY_INTERVAL`];
/// ends when the store is dropped.
async fn notify_loop(mut sender: Sender, channel: String, mut latest: watch::Receiver<Position>) {
    let mut sent_at: Option<Instant> = None;
    while latest.changed().await.is_ok() {
        if let Some(sent_at) = sent_at {
            tokio::time::sleep_until(sent_at + NOTIFY_INTERVAL).await;
        }
        sent_at = Some(Instant::now());
        let position = *latest.borrow_and_update();
        if let Err(error) = sender.notify(&channel, &position_notice(position)).await {
            warn!(%error, %position, "NOTIFY failed; readers will find the events when they poll");
        }
    }
    debug!("store dropped; notifier stops");
}

/// Where the notifier's `NOTIFY`s go: a connection of its own, opened with the pool's
/// options (a connection of the pool would cost a second round trip each time, the
/// pool's check when it is handed back), or the pool itself for a store that keeps no
/// connections of its own.
struct Sender {
    pool: PgPool,
    own_connection: bool,
    statements: Arc<Statements>,
    conn: Option<PgConnection>,
}

impl Sender {
    async fn notify(&mut self, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
        if !self.own_connection {
            return self
                .notify_query(channel, payload)
                .try_execute(&self.pool)
                .await
                .map(drop);
        }
        // A connection kept from before may have been closed meanwhile (by the server, a
        // proxy, an idle timeout): then once more on a new one.
        let reused = self.conn.is_some();
        match self.notify_on_own(channel, payload).await {
            Err(_) if reused => self.notify_on_own(channel, payload).await,
            sent => sent,
        }
    }

    /// One `NOTIFY` on the notifier's connection, opened first if need be; a failure
    /// drops the connection.
    async fn notify_on_own(&mut self, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self
                .conn
                .insert(self.pool.connect_options().connect().await?),
        };
        let sent = self
            .statements
            .get(Statement::Notify)
            .bind(channel)
            .bind(payload)
            .try_execute(&mut *conn)
            .await;
        if sent.is_err() {
            self.conn = None;
        }
        sent.map(drop)
    }

    fn notify_query(&self, channel: &str, payload: &str) -> crate::db::Sql {
        self.statements
            .get(Statement::Notify)
            .bind(channel)
            .bind(payload)
    }
}
