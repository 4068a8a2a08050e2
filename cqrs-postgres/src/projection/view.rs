//! Projections whose view lives in PostgreSQL, and the hooks a runner calls around
//! their batches.

use std::future::Future;

use cqrs_core::{EventEnvelope, EventFilter, Projection};
use sqlx::PgConnection;

/// A [`Projection`] whose view lives in PostgreSQL tables, with the hooks the
/// [`PgProjectionRunner`](crate::PgProjectionRunner) calls around its batches.
///
/// Every hook but [`reset`](Self::reset) has a default that does nothing. Each runs
/// inside a transaction of the runner: what it writes commits together with the
/// projection's checkpoint, or not at all.
///
/// # Where the tables live
///
/// Each of those transactions (and the append's, for a view kept
/// [inline](crate::PgEventStoreBuilder::inline)) puts the store's schema first on
/// `search_path`, for the transaction only: a view that names its tables without a schema
/// (`balances_v1`) keeps them in the store's schema, beside the log, whatever the pool's
/// connections are set to. Its SQL can read the schema as `current_schema()`. For SQL of
/// your own in that setting (creating the tables before a runner starts, say), use
/// [`PgEventStore::begin_in_schema`](crate::PgEventStore::begin_in_schema); readers on the
/// pool name the tables with the schema (`cqrs.balances`) or set their own path.
///
/// # Batches
///
/// The runner reads a batch of events, opens a transaction, calls
/// [`handle`](Projection::handle) for each event, then [`flush`](Self::flush), then moves
/// the checkpoint and commits. A view may therefore buffer in `handle` (for example
/// balance deltas per account) and write them all in `flush` with one multi-row
/// statement. When the batch's transaction is rolled back (a failing handler, a lost
/// connection, another process that owns the projection now), the runner calls
/// [`discard`](Self::discard): drop what was buffered. The value's own fields are
/// scratch space; the view is what the tables hold.
///
/// # Versions and blue/green rebuilds
///
/// A new [`VERSION`](Projection::VERSION) is built beside the one being served, from the
/// start of the log, and replaces it once it has caught up. The two run at the same time,
/// so each version needs its own tables: name them after the version (`balances_v2`),
/// create them in [`setup`](Self::setup), and point readers at the served one in
/// [`activate`](Self::activate), for instance with
/// `CREATE OR REPLACE VIEW balances AS SELECT * FROM balances_v2`. Readers then always
/// query `balances`, and see the old version until the new one has caught up.
/// [`PgDocumentView`](crate::PgDocumentView) does exactly this.
///
/// ```
/// # #![allow(dead_code)]
/// use cqrs_core::{EventEnvelope, Projection};
/// use cqrs_postgres::PgView;
/// use sqlx::PgConnection;
/// # use cqrs_core::{CodecError, Event, EventType, codec};
/// # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
/// # struct Deposited { amount: i64 }
/// # impl Event for Deposited {
/// #     const TYPES: &'static [EventType] = &[EventType { name: "Deposited", version: 1 }];
/// #     fn event_type(&self) -> &'static str { "Deposited" }
/// #     fn schema_version(&self) -> u32 { 1 }
/// #     fn encode(&self) -> Result<serde_json::Value, CodecError> { codec::encode(self) }
/// #     fn decode(t: &str, v: u32, p: serde_json::Value) -> Result<Self, CodecError> {
/// #         codec::check_known::<Self>(t, v)?;
/// #         codec::decode(t, v, p)
/// #     }
/// # }
///
/// /// `balances_v1(account, balance)`, one row per account.
/// #[derive(Debug, Default)]
/// struct Balances {
///     accounts: Vec<String>,
///     amounts: Vec<i64>,
/// }
///
/// impl Projection for Balances {
///     const NAME: &'static str = "balances";
///     type Event = Deposited;
///     type Context = PgConnection;
///     type Error = sqlx::Error;
///
///     async fn handle(
///         &mut self,
///         _: &mut PgConnection,
///         event: &EventEnvelope<Deposited>,
///     ) -> Result<(), sqlx::Error> {
///         // buffered: written by `flush`, once per batch
///         self.accounts.push(event.stream_id.clone());
///         self.amounts.push(event.payload.amount);
///         Ok(())
///     }
/// }
///
/// impl PgView for Balances {
///     async fn setup(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
///         sqlx::query(
///             "CREATE TABLE IF NOT EXISTS balances_v1 \
///              (account text PRIMARY KEY, balance bigint NOT NULL)",
///         )
///         .execute(cx)
///         .await?;
///         Ok(())
///     }
///
///     async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
///         sqlx::query("TRUNCATE balances_v1").execute(cx).await?;
///         Ok(())
///     }
///
///     async fn flush(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
///         sqlx::query(
///             "INSERT INTO balances_v1 AS b (account, balance) \
///              SELECT account, sum(amount) FROM unnest($1::text[], $2::bigint[]) \
///                  AS d (account, amount) GROUP BY account \
///              ON CONFLICT (account) DO UPDATE SET balance = b.balance + excluded.balance",
///         )
///         .bind(&self.accounts)
///         .bind(&self.amounts)
///         .execute(cx)
///         .await?;
///         self.discard();
///         Ok(())
///     }
///
///     fn discard(&mut self) {
///         self.accounts.clear();
///         self.amounts.clear();
///     }
///
///     async fn activate(&mut self, cx: &mut PgConnection) -> Result<(), sqlx::Error> {
///         sqlx::query("CREATE OR REPLACE VIEW balances AS SELECT * FROM balances_v1")
///             .execute(cx)
///             .await?;
///         Ok(())
///     }
/// }
/// ```
pub trait PgView: Projection<Context = PgConnection> {
    /// Prepares the view (creates its tables if they do not exist). Called each time a
    /// runner takes ownership of the projection, before its first batch, so it must be
    /// idempotent.
    fn setup(
        &mut self,
        cx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = cx;
        async { Ok(()) }
    }

    /// Empties the view for a rebuild, in the transaction that moves the checkpoint back
    /// to the start of the log.
    fn reset(
        &mut self,
        cx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Called in the batch's transaction (or, inline, the append's) before its events are
    /// handled, with all of them in order: to load, or lock, what they will touch with
    /// one statement rather than one per event. Does nothing by default.
    fn prepare(
        &mut self,
        cx: &mut PgConnection,
        events: &[&EventEnvelope<Self::Event>],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = (cx, events);
        async { Ok(()) }
    }

    /// Called once when the view is kept [inline](crate::PgEventStoreBuilder::inline):
    /// concurrent appends then run copies of it at the same moment, each in its own
    /// transaction, so a view that reads what it then writes (a document, a running
    /// total kept in Rust) must lock it first, in [`prepare`](Self::prepare), in an
    /// order every transaction follows. (Under a runner, one worker at a time applies
    /// the view's batches.) Does nothing by default.
    fn kept_inline(&mut self) {}

    /// Writes what [`handle`](Projection::handle) buffered, at the end of each batch,
    /// before the checkpoint moves.
    fn flush(
        &mut self,
        cx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = cx;
        async { Ok(()) }
    }

    /// Forgets what was buffered: the batch's transaction was rolled back.
    fn discard(&mut self) {}

    /// Points readers at this version's tables. Called when this version becomes the
    /// served one (in the transaction of the batch that caught it up), and each time a
    /// runner takes ownership of the served version, so it must be idempotent.
    fn activate(
        &mut self,
        cx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = cx;
        async { Ok(()) }
    }
}

/// A plain projection seen as a view without hooks: its rebuild replays the log over the
/// view as it is.
#[derive(Debug)]
pub(crate) struct Plain<P>(pub(crate) P);

impl<P> Projection for Plain<P>
where
    P: Projection<Context = PgConnection>,
{
    const NAME: &'static str = P::NAME;
    const VERSION: u32 = P::VERSION;
    type Event = P::Event;
    type Context = PgConnection;
    type Error = P::Error;

    fn filter() -> EventFilter {
        P::filter()
    }

    fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<Self::Event>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.0.handle(cx, event)
    }
}

impl<P> PgView for Plain<P>
where
    P: Projection<Context = PgConnection>,
{
    fn reset(
        &mut self,
        cx: &mut PgConnection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = cx;
        async { Ok(()) }
    }
}
