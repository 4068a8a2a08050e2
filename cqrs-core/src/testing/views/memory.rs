//! The in-memory runner as the suite drives it.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::{DocumentRunner, SuiteDocument};
use crate::memory::{Documents, MemoryEventStore, Projector, ProjectorTask};
use crate::{BoxError, Document, DocumentQuery, ReadYourWrites, Token};

/// [`Document`] views kept in memory, each by a spawned [`Projector`] of
/// [`Documents`]: the in-memory [`DocumentRunner`].
#[derive(Debug)]
pub struct MemoryDocuments {
    store: MemoryEventStore,
    /// By view name: the projector (a `Projector<Documents<D>, MemoryEventStore>`) and
    /// the task that keeps it following the log.
    views: HashMap<&'static str, (Box<dyn Any + Send + Sync>, ProjectorTask)>,
}

impl MemoryDocuments {
    /// A runner over `store`, keeping no view yet.
    #[must_use]
    pub fn new(store: MemoryEventStore) -> Self {
        Self {
            store,
            views: HashMap::new(),
        }
    }

    fn projector<D: Document>(
        &self,
    ) -> Result<&Projector<Documents<D>, MemoryEventStore>, BoxError> {
        self.views
            .get(D::NAME)
            .and_then(|(projector, _)| projector.downcast_ref())
            .ok_or_else(|| format!("no view `{}` is kept", D::NAME).into())
    }

    /// Starts a projector of `D` from the start of the log, replacing any.
    fn start<D: Document>(&mut self) {
        let projector = Projector::new(self.store.clone(), Documents::<D>::default());
        let task = projector.spawn();
        self.views.insert(D::NAME, (Box::new(projector), task));
    }
}

impl DocumentRunner for MemoryDocuments {
    type Store = MemoryEventStore;

    fn store(&self) -> MemoryEventStore {
        self.store.clone()
    }

    async fn keep<D: SuiteDocument>(&mut self) -> Result<(), BoxError> {
        self.start::<D>();
        Ok(())
    }

    async fn wait_for<D: SuiteDocument>(
        &self,
        token: Token,
        timeout: Duration,
    ) -> Result<(), BoxError> {
        self.projector::<D>()?
            .wait_for::<Documents<D>>(token, timeout)
            .await?;
        Ok(())
    }

    async fn documents<D: SuiteDocument>(&self) -> Result<BTreeMap<String, D>, BoxError> {
        let projector = self.projector::<D>()?;
        Ok(projector
            .read(|view| {
                view.iter()
                    .map(|(key, document)| (key.to_owned(), document.clone()))
                    .collect()
            })
            .await)
    }

    async fn query<D: SuiteDocument>(
        &self,
        query: &DocumentQuery,
    ) -> Result<Vec<(String, D)>, BoxError> {
        let projector = self.projector::<D>()?;
        let selected = projector
            .read(|view| {
                view.query(query).map(|documents| {
                    documents
                        .into_iter()
                        .map(|(key, document)| (key.to_owned(), document.clone()))
                        .collect()
                })
            })
            .await?;
        Ok(selected)
    }

    async fn rebuild<D: SuiteDocument>(&mut self) -> Result<bool, BoxError> {
        self.start::<D>();
        let head = crate::EventStore::head(&self.store).await?;
        self.wait_for::<D>(head.into(), super::WAIT).await?;
        Ok(true)
    }
}
