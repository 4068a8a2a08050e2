//! How a store is configured: [`PgEventStoreBuilder`], checked once by `build`, and
//! [`PgStoreTuning`].

use std::fmt;
use std::sync::Arc;

use sqlx::PgPool;

use super::batch::Batcher;
use super::connections::CommandConnections;
use super::inline::{Inline, InlineHandler};
use super::inline_sql::PgInlineSql;
use super::notify::{Notifier, PgNotify};
use super::{DEFAULT_SCHEMA, Inner, PgEventStore};
use crate::db::{Result, SchemaName, events_channel};

/// How the store spends connections and statements. The defaults suit most
/// applications; the guide's performance page explains each knob with measurements.
///
/// ```
/// use cqrs_postgres::PgStoreTuning;
///
/// let tuning = PgStoreTuning::default().command_connections(8).append_batches(2);
/// assert_eq!(tuning.command_connections, Some(8));
/// assert_eq!(tuning.append_batches, 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgStoreTuning {
    /// How many connections of its own the store keeps for the statements on a
    /// command's path (its load and its append); `None`, the default: as many as the
    /// pool may open. `Some(0)` runs them, and the notifications after commits, on the
    /// pool. Count them when sizing the server's `max_connections`.
    pub command_connections: Option<usize>,
    /// How many statements carrying appends sent together may be in flight at once
    /// (default 1); 0 sends every append on a statement of its own.
    pub append_batches: usize,
}

impl Default for PgStoreTuning {
    fn default() -> Self {
        Self {
            command_connections: None,
            append_batches: 1,
        }
    }
}

impl PgStoreTuning {
    /// Sets [`command_connections`](Self::command_connections).
    #[must_use]
    pub fn command_connections(mut self, max: usize) -> Self {
        self.command_connections = Some(max);
        self
    }

    /// Sets [`append_batches`](Self::append_batches).
    #[must_use]
    pub fn append_batches(mut self, in_flight: usize) -> Self {
        self.append_batches = in_flight;
        self
    }
}

/// Configures a [`PgEventStore`]; made by [`PgEventStore::builder`] (or
/// [`PgEventStore::to_builder`]), checked once by [`build`](Self::build).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use cqrs_postgres::{PgEventStore, PgNotify};
///
/// let pool = sqlx::PgPool::connect_lazy("postgres://postgres@localhost/app")?;
/// let store = PgEventStore::builder(pool.clone())
///     .schema("tenant_7")
///     .notify(PgNotify::InTransaction)
///     .build()?;
/// assert_eq!(store.channel(), "tenant_7_events");
///
/// let refused = PgEventStore::builder(pool).schema("Robert'); DROP TABLE students;--").build();
/// assert!(refused.is_err());
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `build`"]
pub struct PgEventStoreBuilder {
    pool: PgPool,
    schema: String,
    notify: PgNotify,
    inline: Inline,
    tuning: PgStoreTuning,
}

impl fmt::Debug for PgEventStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEventStoreBuilder")
            .field("schema", &self.schema)
            .field("notify", &self.notify)
            .field("inline", &self.inline)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

impl PgEventStoreBuilder {
    pub(super) fn new(pool: PgPool) -> Self {
        Self {
            pool,
            schema: DEFAULT_SCHEMA.to_owned(),
            notify: PgNotify::default(),
            inline: Inline::default(),
            tuning: PgStoreTuning::default(),
        }
    }

    pub(super) fn from_store(
        pool: PgPool,
        schema: &SchemaName,
        notify: PgNotify,
        inline: &Inline,
        tuning: PgStoreTuning,
    ) -> Self {
        Self {
            pool,
            schema: schema.as_str().to_owned(),
            notify,
            inline: inline.clone(),
            tuning,
        }
    }

    /// The PostgreSQL schema holding the store's tables (default `cqrs`). It must match
    /// `^[a-z_][a-z0-9_]{0,55}$` and not start with `pg_`: it is the one identifier
    /// spliced into the store's SQL, so it is checked strictly (by
    /// [`build`](Self::build)) and quoted.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How the store announces appends (default [`PgNotify::AfterCommit`]).
    pub fn notify(mut self, notify: PgNotify) -> Self {
        self.notify = notify;
        self
    }

    /// Adds an inline view's handler (see the projection wing's
    /// [`inline`](Self::inline)).
    pub(crate) fn inline_handler(mut self, handler: Arc<dyn InlineHandler>) -> Self {
        self.inline.add_handler(handler);
        self
    }

    /// Also keeps `projection`'s view with its SQL statement, run as part of every append
    /// statement: the view changes in the same statement as the log, so it never lags,
    /// and it costs no round trip. See [`PgInlineSql`] for what the statement reads and
    /// the rules it follows.
    ///
    /// Inline SQL projections are registered and reported like those of
    /// [`inline`](Self::inline); events appended before the projection was added are not
    /// applied.
    pub fn inline_sql(mut self, projection: PgInlineSql) -> Self {
        self.inline.add_statement(projection);
        self
    }

    /// How the store spends connections and statements (see [`PgStoreTuning`]).
    pub fn tuning(mut self, tuning: PgStoreTuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// The store.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName) for a schema name outside the
    /// accepted alphabet, or an inline projection's name of more than 128 bytes or
    /// holding whitespace or control characters.
    pub fn build(self) -> Result<PgEventStore> {
        let schema = SchemaName::parse(&self.schema)?;
        self.inline.check_names()?;
        Ok(PgEventStore::from_parts(Parts {
            pool: self.pool,
            schema,
            notify: self.notify,
            inline: self.inline,
            tuning: self.tuning,
        }))
    }
}

/// A configuration that passed its checks.
pub(super) struct Parts {
    pool: PgPool,
    schema: SchemaName,
    notify: PgNotify,
    inline: Inline,
    tuning: PgStoreTuning,
}

impl Parts {
    /// The default configuration on `pool`.
    pub(super) fn defaults(pool: PgPool) -> Self {
        let schema = match SchemaName::parse(DEFAULT_SCHEMA) {
            Ok(schema) => schema,
            Err(error) => unreachable!("the default schema name is valid: {error}"),
        };
        Self {
            pool,
            schema,
            notify: PgNotify::default(),
            inline: Inline::default(),
            tuning: PgStoreTuning::default(),
        }
    }

    /// The store's parts: its statements rendered once, its connections and queues.
    pub(super) fn into_inner(self) -> Inner {
        let Self {
            pool,
            schema,
            notify,
            inline,
            tuning,
        } = self;
        let statements = Arc::new(inline.statements(&schema));
        let max = tuning.command_connections.unwrap_or_else(|| {
            usize::try_from(pool.options().get_max_connections()).unwrap_or(usize::MAX)
        });
        Inner {
            channel: events_channel(&schema),
            // With no connections of its own for commands, none for notifications.
            notifier: Notifier::new(max > 0, Arc::clone(&statements)),
            commands: CommandConnections::new(max, schema.session_search_path().into()),
            batcher: Batcher::new(tuning.append_batches),
            // Registered in the projections table of this store's schema.
            inline: inline.for_store(&schema),
            statements,
            pool,
            schema,
            notify,
            tuning,
        }
    }
}
