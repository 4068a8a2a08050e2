//! The in-memory runner's form of a [`Document`] view: a sorted map from key to document.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;

use crate::{Document, DocumentQuery, EventEnvelope, EventFilter, Projection, QueryError};

/// The documents of `D`, one per key, held in memory: the projection to run a
/// [`Document`] under a [`Projector`](super::Projector).
///
/// The same `D` runs on a backend as that backend's document view, so a test of the view
/// in memory tests the view served in production (see [`Document`]).
pub struct Documents<D> {
    documents: BTreeMap<String, D>,
}

impl<D> Default for Documents<D> {
    fn default() -> Self {
        Self {
            documents: BTreeMap::new(),
        }
    }
}

/// Documents as they stand, for instance folded elsewhere, to query in memory.
impl<D> From<BTreeMap<String, D>> for Documents<D> {
    fn from(documents: BTreeMap<String, D>) -> Self {
        Self { documents }
    }
}

impl<D: fmt::Debug> fmt::Debug for Documents<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.documents.iter()).finish()
    }
}

impl<D> Documents<D> {
    /// The document of `key`, if any event was folded into it.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&D> {
        self.documents.get(key)
    }

    /// Every document, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &D)> {
        self.documents.iter().map(|(key, d)| (key.as_str(), d))
    }

    /// How many documents there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.documents.len()
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    /// The documents, ordered by key.
    #[must_use]
    pub fn into_map(self) -> BTreeMap<String, D> {
        self.documents
    }
}

impl<D: Document> Documents<D> {
    /// The documents `query` selects, in its order.
    ///
    /// # Errors
    ///
    /// [`QueryError::Serialise`] when a document does not turn into JSON.
    pub fn query(&self, query: &DocumentQuery) -> Result<Vec<(&str, &D)>, QueryError> {
        let mut selected = Vec::new();
        for (key, document) in &self.documents {
            let json = serde_json::to_value(document).map_err(|e| QueryError::Serialise {
                view: D::NAME,
                key: key.clone(),
                reason: e.to_string(),
            })?;
            if query.matches(&json) {
                selected.push((key.as_str(), json, document));
            }
        }
        selected.sort_by(|a, b| query.compare((a.0, &a.1), (b.0, &b.1)));
        Ok(selected
            .into_iter()
            .skip(query.offset)
            .take(query.limit.unwrap_or(usize::MAX))
            .map(|(key, _, document)| (key, document))
            .collect())
    }

    /// Folds one event into the document of its key, as every runner does.
    pub fn apply(&mut self, event: &EventEnvelope<D::Event>) {
        if let Some(key) = D::key(event) {
            self.documents.entry(key).or_default().apply(event);
        }
    }
}

impl<D: Document> Projection for Documents<D> {
    const NAME: &'static str = D::NAME;
    const VERSION: u32 = D::VERSION;
    type Event = D::Event;
    type Context = ();
    type Error = Infallible;

    fn filter() -> EventFilter {
        D::filter()
    }

    async fn handle(
        &mut self,
        (): &mut (),
        event: &EventEnvelope<D::Event>,
    ) -> Result<(), Infallible> {
        self.apply(event);
        Ok(())
    }
}
