//! Views kept inline: a [`PgView`] run inside the transaction of every append, through
//! the store's hook for them ([`InlineHandler`]).

use std::sync::Arc;

use cqrs_core::EventFilter;
use cqrs_core::store::RecordedEvent;
use sqlx::PgConnection;

use super::guard::guarded;
use super::view::PgView;
use crate::db::Error;
use crate::store::{BoxFuture, InlineHandler, PgEventStoreBuilder};

/// A view as the store runs it inline.
struct ViewHandler<P> {
    view: P,
    filter: EventFilter,
}

impl<P: PgView + Clone + Sync> InlineHandler for ViewHandler<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn version(&self) -> u32 {
        P::VERSION
    }

    fn filter(&self) -> &EventFilter {
        &self.filter
    }

    fn setup<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let hook_failed = |hook, source| Error::Hook {
                projection: P::NAME,
                hook,
                source,
            };
            let mut view = self.view.clone();
            guarded(view.setup(&mut *conn))
                .await
                .map_err(|source| hook_failed("setup", source))?;
            guarded(view.activate(&mut *conn))
                .await
                .map_err(|source| hook_failed("activate", source))
        })
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, cqrs_core::Result<()>> {
        Box::pin(async move {
            // Each append gets its own copy, so concurrent appends never wait on it.
            let mut view = self.view.clone();
            let decoded = events
                .iter()
                .filter(|e| self.filter.matches(&e.stream_type, &e.event_type))
                .map(|event| event.decode::<P::Event>())
                .collect::<cqrs_core::Result<Vec<_>>>()?;
            let (Some(first), Some(last)) = (decoded.first(), decoded.last()) else {
                return Ok(());
            };
            let failed = |position, source: P::Error| Error::InlineHandler {
                projection: P::NAME,
                position,
                source: Box::new(source),
            };
            let (first, last) = (first.position, last.position);
            let all: Vec<_> = decoded.iter().collect();
            view.prepare(&mut *conn, &all)
                .await
                .map_err(|source| failed(first, source))?;
            for event in &decoded {
                view.handle(&mut *conn, event)
                    .await
                    .map_err(|source| failed(event.position, source))?;
            }
            view.flush(&mut *conn)
                .await
                .map_err(|source| failed(last, source))?;
            Ok(())
        })
    }
}

impl PgEventStoreBuilder {
    /// Also keeps `view` inside the transaction of every append: it is updated in the
    /// same commit as the events, so it never lags.
    ///
    /// The append becomes a transaction of a few statements instead of one, with the
    /// store's schema first on `search_path`. The view gets the transaction and each
    /// appended event its [`filter`](cqrs_core::Projection::filter) keeps, then
    /// [`flush`](PgView::flush) writes what it buffered; it runs on a clone of `view`, so
    /// concurrent appends do not wait on each other. If it fails, the append fails with
    /// [`Error::InlineHandler`] and nothing is written: an inline view can refuse
    /// writes, so keep it simple. Any [`PgView`] runs inline, a
    /// [`PgDocumentView`](crate::PgDocumentView) among them.
    ///
    /// Inline views are registered up front, by
    /// [`PgEventStore::migrate`](crate::PgEventStore::migrate) and by a runner's start
    /// (else by the store's first append): their [`setup`](PgView::setup) and
    /// [`activate`](PgView::activate) run then,
    /// [`PgProjectionRunner::status`](crate::PgProjectionRunner::status) reports them as
    /// [`Inline`](crate::PgProjectionState::Inline), and
    /// [`wait_for`](crate::PgProjectionRunner::wait_for) returns at once for them. Events
    /// appended before the view was added are not applied: build it from the log first
    /// (for instance with a runner, before switching to inline).
    pub fn inline<P>(self, mut view: P) -> Self
    where
        P: PgView + Clone + Sync,
    {
        view.kept_inline();
        self.inline_handler(Arc::new(ViewHandler {
            view,
            filter: P::filter(),
        }))
    }
}
