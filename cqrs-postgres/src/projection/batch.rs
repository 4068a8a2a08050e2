//! One batch of a projection: read (now, or ahead while the previous one is applied),
//! then applied to the view in one transaction with the checkpoint's move.

use std::sync::Arc;

use cqrs_core::{BoxError, Event, EventEnvelope, EventFilter, Position, Projection};
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use tokio::task::JoinHandle;
use tracing::debug;

use super::guard::guarded;
use super::plan::{Stored, may_take_over};
use super::shared::Shared;
use super::view::PgView;
use crate::db::{Advance, Error, Header, Result, Window};

/// The events of a batch, each with its position, decoded (or why not).
pub(super) type Events<E> = Vec<(Position, Result<EventEnvelope<E>, BoxError>)>;

/// A batch of decoded events with the projection's row, as read in one snapshot.
pub(super) struct Decoded<E> {
    pub(super) header: Option<Header>,
    pub(super) events: Events<E>,
}

/// Reads a batch on a connection of its own and decodes it.
pub(super) async fn read<E: Event>(
    shared: Arc<Shared>,
    filter: Arc<EventFilter>,
    name: &'static str,
    version: u32,
    window: Window,
) -> Result<Decoded<E>> {
    let mut conn = shared
        .pool
        .acquire()
        .await
        .map_err(|e| Error::database("acquire", e))?;
    let batch = shared
        .projections
        .read_batch(&mut conn, name, version, &filter, window)
        .await?;
    drop(conn);
    let events = batch
        .events
        .into_iter()
        .map(|(position, event)| {
            let event = event
                .and_then(EventEnvelope::into_decoded_json::<E>)
                .map_err(|error| Box::new(error) as BoxError);
            (position, event)
        })
        .collect();
    Ok(Decoded {
        header: batch.header,
        events,
    })
}

/// A batch being read ahead, after `after`. Dropping it stops the read.
pub(super) struct Ahead<E> {
    pub(super) after: Position,
    pub(super) task: JoinHandle<Result<Decoded<E>>>,
}

impl<E> Drop for Ahead<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forgets a batch that did not commit when dropped armed: what the view buffered, and
/// the batch read ahead of it (which read past a checkpoint that did not move).
pub(super) struct Abandon<'w, V: PgView> {
    pub(super) view: &'w mut V,
    ahead: &'w mut Option<Ahead<V::Event>>,
    armed: bool,
}

impl<'w, V: PgView> Abandon<'w, V> {
    pub(super) fn new(view: &'w mut V, ahead: &'w mut Option<Ahead<V::Event>>) -> Self {
        Self {
            view,
            ahead,
            armed: true,
        }
    }

    /// The batch committed: nothing to forget.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl<V: PgView> Drop for Abandon<'_, V> {
    fn drop(&mut self) {
        if self.armed {
            self.view.discard();
            *self.ahead = None;
        }
    }
}

/// How applying a batch ended.
pub(super) enum Applied {
    /// The view's changes and the checkpoint committed; `served`: the version became
    /// the served one with them.
    Committed { served: bool },
    /// The handler (or the decoding before it) failed on the event at `position`;
    /// `before` is the batch's event just before it, if any.
    HandlerFailed {
        before: Option<Position>,
        position: Position,
        source: BoxError,
    },
    /// The view's `hook` (`prepare` or `flush`) failed on the batch of `positions`.
    HookFailed {
        hook: &'static str,
        positions: Vec<Position>,
        source: BoxError,
    },
    /// The checkpoint moved under the batch: nothing committed.
    Fenced,
}

/// Applies `events` to the view in one transaction, makes the version the served one if
/// `serve`, moves the checkpoint as `advance` says and commits. Whatever does not
/// commit is forgotten (see [`Abandon`]).
pub(super) async fn apply<V: PgView>(
    shared: &Shared,
    mut batch: Abandon<'_, V>,
    events: Events<V::Event>,
    serve: bool,
    advance: Advance<'_>,
) -> Result<Applied> {
    let positions: Vec<Position> = events.iter().map(|(p, _)| *p).collect();
    let mut tx = begin(shared).await?;
    let decoded: Vec<&EventEnvelope<V::Event>> = events
        .iter()
        .map_while(|(_, event)| event.as_ref().ok())
        .collect();
    if let Err(source) = guarded(batch.view.prepare(&mut tx, &decoded)).await {
        return Ok(Applied::HookFailed {
            hook: "prepare",
            positions,
            source,
        });
    }
    drop(decoded);
    for (index, (position, event)) in events.into_iter().enumerate() {
        let outcome = match event {
            Ok(event) => guarded(batch.view.handle(&mut tx, &event)).await,
            Err(error) => Err(error),
        };
        if let Err(source) = outcome {
            let before = index.checked_sub(1).map(|i| positions[i]);
            return Ok(Applied::HandlerFailed {
                before,
                position,
                source,
            });
        }
    }
    if let Err(source) = guarded(batch.view.flush(&mut tx)).await {
        return Ok(Applied::HookFailed {
            hook: "flush",
            positions,
            source,
        });
    }
    let mut advance = advance;
    let served = serve && take_over(shared, &mut tx, &mut batch, advance.to).await?;
    if serve && !served {
        // Not served yet: still built beside the served version.
        advance.state = Stored::Rebuilding.as_str();
    }
    if shared
        .projections
        .advance(&mut *tx, advance)
        .await?
        .is_none()
    {
        return Ok(Applied::Fenced);
    }
    tx.commit()
        .await
        .map_err(|e| Error::database("commit", e))?;
    batch.disarm();
    Ok(Applied::Committed { served })
}

/// Makes the version the served one, in the batch's transaction, if the served version
/// (whose row this locks until the commit) is older and not ahead of `to`; returns
/// whether it did. Otherwise the version stays beside it, and the next batch that
/// catches up tries again.
async fn take_over<V: PgView>(
    shared: &Shared,
    tx: &mut Transaction<'static, Postgres>,
    batch: &mut Abandon<'_, V>,
    to: Position,
) -> Result<bool> {
    let served = shared.projections.lock_served(tx, V::NAME).await?;
    if !may_take_over(served, V::VERSION, to) {
        if let Some((version, at)) = served {
            debug!(
                served = version,
                served_at = %at,
                at = %to,
                "the served version is ahead or newer; not switching yet"
            );
        }
        return Ok(false);
    }
    if let Err(source) = guarded(batch.view.activate(tx)).await {
        return Err(hook_failed::<V>("activate", source));
    }
    shared.projections.switch(tx, V::NAME, V::VERSION).await?;
    Ok(true)
}

/// The error of a view's hook.
pub(super) fn hook_failed<V: Projection>(hook: &'static str, source: BoxError) -> Error {
    Error::Hook {
        projection: V::NAME,
        hook,
        source,
    }
}

/// Opens a batch's transaction, with the store's schema first on `search_path` (so the
/// view's unqualified names resolve there). Unless configured otherwise, its commit does
/// not wait for the WAL flush: a server crash can only lose a batch together with its
/// checkpoint, which the worker then applies again (see
/// [`PgRunnerTuning::synchronous_commit`](crate::PgRunnerTuning::synchronous_commit)).
pub(crate) async fn begin(shared: &Shared) -> Result<Transaction<'static, Postgres>> {
    shared
        .pool
        .begin_with(AssertSqlSafe(Arc::clone(&shared.begin)))
        .await
        .map_err(|e| Error::database("begin", e))
}
