//! A ready-made view: one JSON document per key, in a table the runner manages.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use cqrs_core::{Document, DocumentQuery, EventEnvelope, EventFilter, Projection};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection};

use super::document_query;
use super::view::PgView;
use crate::db::{Error, SchemaName, Sql, check_identifier};
use crate::store::PgEventStore;

/// Names a document view may not take: the store's own tables.
const RESERVED: &[&str] = &[
    "events",
    "commands",
    "snapshots",
    "projections",
    "_cqrs_migrations",
];

/// The [`PgView`] that keeps a [`Document`] per key in a table: run it with
/// [`PgProjectionRunnerBuilder::view`](crate::PgProjectionRunnerBuilder::view), read it
/// with [`get`](Self::get) and [`all`](Self::all), or with SQL from the view `NAME`.
///
/// Each version's documents live in the table `<NAME>_v<VERSION>` (`id text PRIMARY KEY,
/// document jsonb, updated_at timestamptz`), created when a runner first takes the
/// projection up; the SQL view `<NAME>` selects from the served version's table. A batch
/// reads each document it touches once and writes them all back with one statement.
///
/// ```no_run
/// # use cqrs_core::EventEnvelope;
/// # use cqrs_core::Document;
/// # use serde::{Deserialize, Serialize};
/// # use cqrs_core::{CodecError, Event, EventType, codec};
/// # #[derive(Debug, Clone, Serialize, Deserialize)]
/// # struct Deposited { amount: u64 }
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
/// # #[derive(Debug, Default, Serialize, Deserialize)]
/// # struct AccountSummary { balance: u64 }
/// # impl Document for AccountSummary {
/// #     const NAME: &'static str = "account_summaries";
/// #     type Event = Deposited;
/// #     fn apply(&mut self, event: &EventEnvelope<Deposited>) {
/// #         self.balance += event.payload.amount;
/// #     }
/// # }
/// use cqrs_postgres::{PgDocumentView, PgEventStore, PgProjectionRunner};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PgEventStore::connect("postgres://postgres@localhost/app").await?;
/// let runner = PgProjectionRunner::builder(store.clone())
///     .view(PgDocumentView::<AccountSummary>::new(&store)?)
///     .start()
///     .await?;
/// // ... after a command on account "a-1" and a wait_for on its position:
/// let summary: Option<AccountSummary> = PgDocumentView::get(&store, "a-1").await?;
/// # drop((runner, summary));
/// # Ok(())
/// # }
/// ```
pub struct PgDocumentView<D> {
    sql: Arc<Statements>,
    /// Documents touched by the current batch, written back by `flush`.
    buffer: HashMap<String, D>,
    /// Kept inline: the keys a transaction touches are locked before they are read.
    lock: bool,
    _document: PhantomData<fn() -> D>,
}

/// A copy with an empty buffer: what an inline view runs each append on.
impl<D> Clone for PgDocumentView<D> {
    fn clone(&self) -> Self {
        Self {
            sql: Arc::clone(&self.sql),
            buffer: HashMap::new(),
            lock: self.lock,
            _document: PhantomData,
        }
    }
}

impl<D> fmt::Debug for PgDocumentView<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgDocumentView")
            .field("table", &self.sql.table)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

/// The view's statements, with the schema and table names spliced in once.
#[derive(Debug)]
struct Statements {
    table: String,
    /// The indexes `D` declares, created with the table.
    indexes: Vec<String>,
    create: Arc<str>,
    load: Arc<str>,
    load_many: Arc<str>,
    lock: Arc<str>,
    store: Arc<str>,
    truncate: Arc<str>,
    activate: Arc<str>,
}

impl Statements {
    fn new<D: Document>(schema: &str) -> Result<Self, Error> {
        check_identifier("table", D::NAME, 48)?;
        if RESERVED.contains(&D::NAME) {
            return Err(Error::InvalidName {
                what: "table",
                name: D::NAME.to_owned(),
                reason: "it is the name of one of the store's tables",
            });
        }
        // The schema passed the store's own check; neither name needs escaping.
        let stem = format!("{}_v{}", D::NAME, D::VERSION);
        let table = format!("\"{schema}\".\"{stem}\"");
        let view = format!("\"{schema}\".\"{}\"", D::NAME);
        Ok(Self {
            indexes: document_query::index_statements::<D>(&table, &stem)?,
            create: Arc::from(format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                 id text PRIMARY KEY, \
                 document jsonb NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT now())"
            )),
            load: Arc::from(format!("SELECT document FROM {table} WHERE id = $1::text")),
            load_many: Arc::from(format!(
                "SELECT id, document FROM {table} WHERE id = ANY($1::text[])"
            )),
            // Transaction-scoped advisory locks, one per key (a hash of it, in the class
            // of this table), taken in the order of their numbers by every transaction:
            // no two appends wait on each other in a circle.
            lock: Arc::from(format!(
                "SELECT count(*) FROM (\
                 SELECT pg_advisory_xact_lock(hashtext('{table}'), h) FROM (\
                 SELECT DISTINCT hashtext(k) AS h FROM unnest($1::text[]) AS k ORDER BY h\
                 ) AS keys) AS locked"
            )),
            store: Arc::from(format!(
                "INSERT INTO {table} AS t (id, document) \
                 SELECT * FROM unnest($1::text[], $2::jsonb[]) \
                 ON CONFLICT (id) DO UPDATE \
                 SET document = excluded.document, updated_at = now()"
            )),
            truncate: Arc::from(format!("TRUNCATE {table}")),
            activate: Arc::from(format!(
                "CREATE OR REPLACE VIEW {view} AS SELECT id, document, updated_at FROM {table}"
            )),
            table,
        })
    }
}

fn view_name<D: Document>(store: &PgEventStore) -> Result<String, Error> {
    check_identifier("table", D::NAME, 48)?;
    Ok(format!("\"{}\".\"{}\"", store.schema(), D::NAME))
}

impl<D: Document> PgDocumentView<D> {
    /// The view of `D` in `store`'s schema.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] when [`D::NAME`](Document::NAME) is not a plain
    /// identifier of at most 48 characters, or names one of the store's tables.
    pub fn new(store: &PgEventStore) -> Result<Self, Error> {
        Self::in_schema(store.schema())
    }

    /// The view of `D` in the schema `schema`: for a store still being built, to keep
    /// the view [inline](crate::PgEventStoreBuilder::inline).
    ///
    /// ```no_run
    /// # use cqrs_core::{Document, EventEnvelope};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, Serialize, Deserialize, cqrs_core::Event)]
    /// # struct Deposited { amount: u64 }
    /// # #[derive(Debug, Default, Serialize, Deserialize)]
    /// # struct Balance { amount: u64 }
    /// # impl Document for Balance {
    /// #     const NAME: &'static str = "balances";
    /// #     type Event = Deposited;
    /// #     fn apply(&mut self, event: &EventEnvelope<Deposited>) { self.amount += event.payload.amount; }
    /// # }
    /// use cqrs_postgres::{PgDocumentView, PgEventStore};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = sqlx::PgPool::connect("postgres://postgres@localhost/app").await?;
    /// let store = PgEventStore::builder(pool)
    ///     .schema("bank")
    ///     .inline(PgDocumentView::<Balance>::in_schema("bank")?)
    ///     .build()?;
    /// store.migrate().await?; // creates the view's table too
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] for a schema name outside the accepted alphabet, and as
    /// for [`new`](Self::new).
    pub fn in_schema(schema: &str) -> Result<Self, Error> {
        let schema = SchemaName::parse(schema)?;
        Ok(Self {
            sql: Arc::new(Statements::new::<D>(schema.as_str())?),
            buffer: HashMap::new(),
            lock: false,
            _document: PhantomData,
        })
    }

    /// The served document of `key`, if any.
    ///
    /// # Errors
    ///
    /// [`cqrs_core::Error::Backend`] with a [`Error`]: `Database` when the
    /// query fails (also before any runner took the view up: the SQL view does not exist
    /// yet), `Document` when the stored document does not deserialise.
    pub async fn get(store: &PgEventStore, key: &str) -> cqrs_core::Result<Option<D>> {
        let sql = format!(
            "SELECT document FROM {} WHERE id = $1::text",
            view_name::<D>(store)?
        );
        let row: Option<(Json<serde_json::Value>,)> = Sql::new("document_get", AssertSqlSafe(sql))
            .bind(key)
            .fetch_optional(store.pool())
            .await?;
        row.map(|(Json(document),)| decode::<D>(key, document))
            .transpose()
            .map_err(Into::into)
    }

    /// Every served document, ordered by key.
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get).
    pub async fn all(store: &PgEventStore) -> cqrs_core::Result<Vec<(String, D)>> {
        let sql = format!(
            "SELECT id, document FROM {} ORDER BY id",
            view_name::<D>(store)?
        );
        let rows: Vec<(String, Json<serde_json::Value>)> =
            Sql::new("document_all", AssertSqlSafe(sql))
                .fetch_all(store.pool())
                .await?;
        rows.into_iter()
            .map(|(key, Json(document))| {
                let document = decode::<D>(&key, document)?;
                Ok((key, document))
            })
            .collect()
    }
}

impl<D: Document> PgDocumentView<D> {
    /// The served documents `query` selects, in its order: the same answer as
    /// [`Documents::query`](cqrs_core::memory::Documents::query) gives in memory. The
    /// fields in [`Document::INDEXES`] are indexed for it.
    ///
    /// ```no_run
    /// # use cqrs_core::{Document, EventEnvelope};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, Serialize, Deserialize, cqrs_core::Event)]
    /// # struct Opened { owner: String }
    /// # #[derive(Debug, Default, Serialize, Deserialize)]
    /// # struct Account { owner: String, balance: i64 }
    /// # impl Document for Account {
    /// #     const NAME: &'static str = "accounts";
    /// #     const INDEXES: &'static [&'static str] = &["owner", "balance"];
    /// #     type Event = Opened;
    /// #     fn apply(&mut self, e: &EventEnvelope<Opened>) { self.owner.clone_from(&e.payload.owner); }
    /// # }
    /// use cqrs_core::{Comparison, Direction, DocumentQuery};
    /// use cqrs_postgres::{PgDocumentView, PgEventStore};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = PgEventStore::connect("postgres://postgres@localhost/app").await?;
    /// let richest_of_ada = DocumentQuery::new()
    ///     .filter("owner", Comparison::Eq, "Ada")?
    ///     .order_by("balance", Direction::Descending)?
    ///     .limit(10);
    /// for (key, account) in PgDocumentView::<Account>::query(&store, &richest_of_ada).await? {
    ///     println!("{key}: {}", account.balance);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`get`](Self::get).
    pub async fn query(
        store: &PgEventStore,
        query: &DocumentQuery,
    ) -> cqrs_core::Result<Vec<(String, D)>> {
        let rows: Vec<(String, Json<serde_json::Value>)> =
            document_query::select(&view_name::<D>(store)?, query)
                .fetch_all(store.pool())
                .await?;
        rows.into_iter()
            .map(|(key, Json(document))| {
                let document = decode::<D>(&key, document)?;
                Ok((key, document))
            })
            .collect()
    }
}

fn decode<D: Document>(key: &str, document: serde_json::Value) -> Result<D, Error> {
    serde_json::from_value(document).map_err(|source| Error::Document {
        view: D::NAME,
        key: key.to_owned(),
        source,
    })
}

impl<D: Document> Projection for PgDocumentView<D> {
    const NAME: &'static str = D::NAME;
    const VERSION: u32 = D::VERSION;
    type Event = D::Event;
    type Context = PgConnection;
    type Error = Error;

    fn filter() -> EventFilter {
        D::filter()
    }

    async fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<D::Event>,
    ) -> Result<(), Error> {
        let Some(key) = D::key(event) else {
            return Ok(());
        };
        if let Some(document) = self.buffer.get_mut(&key) {
            document.apply(event);
            return Ok(());
        }
        let stored: Option<(Json<serde_json::Value>,)> =
            Sql::new("document_load", AssertSqlSafe(Arc::clone(&self.sql.load)))
                .bind(&key)
                .fetch_optional(&mut *cx)
                .await?;
        let mut document = match stored {
            Some((Json(stored),)) => decode::<D>(&key, stored)?,
            None => D::default(),
        };
        document.apply(event);
        self.buffer.insert(key, document);
        Ok(())
    }
}

impl<D: Document> PgView for PgDocumentView<D> {
    /// Loads every document the batch touches with one statement; kept inline, locks
    /// their keys first (in a statement of its own, so the load reads what the
    /// transactions that held the locks committed).
    async fn prepare(
        &mut self,
        cx: &mut PgConnection,
        events: &[&EventEnvelope<D::Event>],
    ) -> Result<(), Error> {
        let mut keys: Vec<String> = events
            .iter()
            .filter_map(|event| D::key(event))
            .filter(|key| !self.buffer.contains_key(key))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Ok(());
        }
        if self.lock {
            let _: (i64,) = Sql::new("document_lock", AssertSqlSafe(Arc::clone(&self.sql.lock)))
                .bind(&keys)
                .fetch_one(&mut *cx)
                .await?;
        }
        let stored: Vec<(String, Json<serde_json::Value>)> = Sql::new(
            "document_load",
            AssertSqlSafe(Arc::clone(&self.sql.load_many)),
        )
        .bind(&keys)
        .fetch_all(&mut *cx)
        .await?;
        let mut stored: HashMap<String, serde_json::Value> = stored
            .into_iter()
            .map(|(key, Json(document))| (key, document))
            .collect();
        for key in keys {
            let document = match stored.remove(&key) {
                Some(document) => decode::<D>(&key, document)?,
                None => D::default(),
            };
            self.buffer.insert(key, document);
        }
        Ok(())
    }

    fn kept_inline(&mut self) {
        self.lock = true;
    }

    async fn setup(&mut self, cx: &mut PgConnection) -> Result<(), Error> {
        Sql::new(
            "document_create",
            AssertSqlSafe(Arc::clone(&self.sql.create)),
        )
        .execute(&mut *cx)
        .await?;
        for index in &self.sql.indexes {
            Sql::new("document_index", AssertSqlSafe(index.clone()))
                .execute(&mut *cx)
                .await?;
        }
        Ok(())
    }

    async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), Error> {
        self.buffer.clear();
        Sql::new(
            "document_reset",
            AssertSqlSafe(Arc::clone(&self.sql.truncate)),
        )
        .execute(cx)
        .await?;
        Ok(())
    }

    async fn flush(&mut self, cx: &mut PgConnection) -> Result<(), Error> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(self.buffer.len());
        let mut documents = Vec::with_capacity(self.buffer.len());
        for (key, document) in self.buffer.drain() {
            let value = serde_json::to_value(&document).map_err(|source| Error::Document {
                view: D::NAME,
                key: key.clone(),
                source,
            })?;
            keys.push(key);
            documents.push(Json(value));
        }
        Sql::new("document_store", AssertSqlSafe(Arc::clone(&self.sql.store)))
            .bind(&keys)
            .bind(&documents)
            .execute(cx)
            .await?;
        Ok(())
    }

    fn discard(&mut self) {
        self.buffer.clear();
    }

    async fn activate(&mut self, cx: &mut PgConnection) -> Result<(), Error> {
        Sql::new(
            "document_activate",
            AssertSqlSafe(Arc::clone(&self.sql.activate)),
        )
        .execute(cx)
        .await?;
        Ok(())
    }
}
