//! The view conformance suite of cqrs-core on PostgreSQL: the same `Document` views the
//! in-memory runner passes with, kept as `PgDocumentView`s by the projection runner and
//! inline in the append's transaction, each test in a fresh schema.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::eventually;
use cqrs_core::testing::views::{self, DocumentRunner, SuiteDocument};
use cqrs_core::{BoxError, DocumentQuery, EventStore, Token};
use cqrs_postgres::{PgDocumentView, PgEventStore, PgProjectionRunner, PgProjectionState};
use sqlx::PgPool;

/// A fresh, migrated store in a schema of its own, recorded for the cleanup.
async fn fresh_store(pool: &PgPool, schemas: &Mutex<Vec<String>>, prefix: &str) -> PgEventStore {
    let schema = common::unique_schema(prefix);
    schemas.lock().expect("schema list").push(schema.clone());
    let store = PgEventStore::builder(pool.clone())
        .schema(&schema)
        .build()
        .expect("a valid schema name");
    store.migrate().await.expect("migrate");
    store
}

/// Each view kept by a projection runner of its own.
struct RunnerDocuments {
    store: PgEventStore,
    runners: HashMap<&'static str, PgProjectionRunner>,
}

impl RunnerDocuments {
    fn runner<D: SuiteDocument>(&self) -> Result<&PgProjectionRunner, BoxError> {
        self.runners
            .get(D::NAME)
            .ok_or_else(|| format!("no runner keeps `{}`", D::NAME).into())
    }
}

async fn all<D: SuiteDocument>(store: &PgEventStore) -> Result<BTreeMap<String, D>, BoxError> {
    Ok(PgDocumentView::<D>::all(store).await?.into_iter().collect())
}

impl DocumentRunner for RunnerDocuments {
    type Store = PgEventStore;

    fn store(&self) -> PgEventStore {
        self.store.clone()
    }

    async fn keep<D: SuiteDocument>(&mut self) -> Result<(), BoxError> {
        let runner = PgProjectionRunner::builder(self.store.clone())
            .view(PgDocumentView::<D>::new(&self.store)?)
            .start()
            .await?;
        self.runners.insert(D::NAME, runner);
        Ok(())
    }

    async fn wait_for<D: SuiteDocument>(
        &self,
        token: Token,
        timeout: Duration,
    ) -> Result<(), BoxError> {
        self.runner::<D>()?
            .wait_for::<PgDocumentView<D>>(token, timeout)
            .await?;
        Ok(())
    }

    async fn documents<D: SuiteDocument>(&self) -> Result<BTreeMap<String, D>, BoxError> {
        all::<D>(&self.store).await
    }

    async fn query<D: SuiteDocument>(
        &self,
        query: &DocumentQuery,
    ) -> Result<Vec<(String, D)>, BoxError> {
        Ok(PgDocumentView::<D>::query(&self.store, query).await?)
    }

    async fn rebuild<D: SuiteDocument>(&mut self) -> Result<bool, BoxError> {
        let runner = self.runner::<D>()?;
        if !runner.rebuild::<PgDocumentView<D>>().await? {
            return Err(format!("no projection `{}` to rebuild", D::NAME).into());
        }
        let head = self.store.head().await?;
        let rebuilt = eventually(views::WAIT, || async {
            let status = runner.status_of(D::NAME).await.ok()?;
            status
                .iter()
                .any(|s| s.state == PgProjectionState::CaughtUp && s.position >= head)
                .then_some(())
        })
        .await;
        if rebuilt.is_none() {
            return Err(format!("the rebuild of `{}` did not catch up", D::NAME).into());
        }
        Ok(true)
    }
}

/// Each view kept inline, in the transaction of every append through the store.
struct InlineDocuments {
    store: PgEventStore,
    /// Waits through the runners' interface, which returns at once for inline views.
    waiter: Option<PgProjectionRunner>,
}

impl DocumentRunner for InlineDocuments {
    type Store = PgEventStore;

    fn store(&self) -> PgEventStore {
        self.store.clone()
    }

    async fn keep<D: SuiteDocument>(&mut self) -> Result<(), BoxError> {
        self.store = self
            .store
            .to_builder()
            .inline(PgDocumentView::<D>::in_schema(self.store.schema())?)
            .build()?;
        // Up front: the view's table and row before the first append.
        self.store.register_inline().await?;
        if let Some(waiter) = self.waiter.take() {
            waiter.shutdown().await;
        }
        self.waiter = Some(
            PgProjectionRunner::builder(self.store.clone())
                .start()
                .await?,
        );
        Ok(())
    }

    async fn wait_for<D: SuiteDocument>(
        &self,
        token: Token,
        timeout: Duration,
    ) -> Result<(), BoxError> {
        let waiter = self.waiter.as_ref().ok_or("no view is kept")?;
        waiter.wait_for::<PgDocumentView<D>>(token, timeout).await?;
        Ok(())
    }

    async fn documents<D: SuiteDocument>(&self) -> Result<BTreeMap<String, D>, BoxError> {
        all::<D>(&self.store).await
    }

    async fn query<D: SuiteDocument>(
        &self,
        query: &DocumentQuery,
    ) -> Result<Vec<(String, D)>, BoxError> {
        Ok(PgDocumentView::<D>::query(&self.store, query).await?)
    }

    /// Concurrent appends reach a document in the order they lock it.
    fn folds_in_log_order(&self) -> bool {
        false
    }

    /// An inline view is built from the log by a runner, not by itself.
    async fn rebuild<D: SuiteDocument>(&mut self) -> Result<bool, BoxError> {
        Ok(false)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn document_views_conform_under_the_runner_and_inline() {
    let pool = common::pool(24, "view_conformance").await;
    let schemas = Arc::new(Mutex::new(Vec::new()));
    let suite = {
        let (pool, schemas) = (pool.clone(), Arc::clone(&schemas));
        common::catch_unwind(async move {
            views::run(|| {
                let (pool, schemas) = (pool.clone(), Arc::clone(&schemas));
                async move {
                    RunnerDocuments {
                        store: fresh_store(&pool, &schemas, "views_runner").await,
                        runners: HashMap::new(),
                    }
                }
            })
            .await;
            views::run(|| {
                let (pool, schemas) = (pool.clone(), Arc::clone(&schemas));
                async move {
                    InlineDocuments {
                        store: fresh_store(&pool, &schemas, "views_inline").await,
                        waiter: None,
                    }
                }
            })
            .await;
        })
        .await
    };
    let names = schemas.lock().expect("schema list").clone();
    for schema in names {
        common::drop_schema(&pool, &schema).await;
    }
    if let Err(panic) = suite {
        std::panic::resume_unwind(panic);
    }
}
