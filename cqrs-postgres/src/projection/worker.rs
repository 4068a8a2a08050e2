//! The loop that runs one projection while its runner owns it.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::{BoxError, Event, EventEnvelope, EventFilter, Position, Projection};
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, warn};

use super::guard::{chain, guarded};
use super::shared::Shared;
use super::view::PgView;
use crate::db::{Advance, Error, Header, Window};

type Result<T, E = Error> = std::result::Result<T, E>;

/// What one step of the loop found.
#[derive(Debug)]
enum Step {
    /// More may be readable at once.
    Progress,
    /// Everything readable is applied; `head` is the newest readable event, `applied`
    /// whether this step committed anything.
    Idle { head: Position, applied: bool },
    /// The projection is stopped at a failing event until an operator acts.
    Failed,
    /// A handler failed; try again after the delay.
    Retry(Duration),
    /// The projection's row is gone: register and claim it again.
    Missing,
}

/// Runs one projection: waits for its runner to own it, then applies batches until
/// ownership is lost or the runner shuts down.
pub(crate) struct Worker<V: PgView> {
    view: V,
    shared: Arc<Shared>,
    owned: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    filter: Arc<EventFilter>,
    position: Position,
    /// Where the next window stops, while a failing event is being narrowed down.
    until: Option<Position>,
    attempts: u32,
    /// The next batch, read while the current one is applied.
    ahead: Option<Ahead<V::Event>>,
}

/// A batch of decoded events with the projection's row, as read in one snapshot.
struct Decoded<E> {
    header: Option<Header>,
    events: Vec<(Position, Result<EventEnvelope<E>, BoxError>)>,
}

/// A batch being read ahead, after `after`. Dropping it stops the read.
struct Ahead<E> {
    after: Position,
    task: JoinHandle<Result<Decoded<E>>>,
}

impl<E> Drop for Ahead<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a batch on a connection of its own and decodes it.
async fn read<E: Event>(
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

impl<V: PgView> Worker<V> {
    pub(crate) fn new(view: V, shared: Arc<Shared>, owned: watch::Receiver<bool>) -> Self {
        let shutdown = shared.shutdown.clone();
        Self {
            view,
            shared,
            owned,
            shutdown,
            filter: Arc::new(V::filter()),
            position: Position::START,
            until: None,
            attempts: 0,
            ahead: None,
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn owned(&self) -> bool {
        *self.owned.borrow() && !self.stopping()
    }

    /// Sleeps for `delay`; `false` when ownership was lost or the runner stops meanwhile.
    async fn pause(&mut self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = self.owned.changed() => {}
            _ = self.shutdown.changed() => {}
        }
        self.owned()
    }

    pub(crate) async fn run(mut self) {
        let span = tracing::info_span!(
            "cqrs_postgres.projection",
            projection = V::NAME,
            version = V::VERSION
        );
        async move {
            loop {
                // Wait to be given ownership.
                while !*self.owned.borrow_and_update() {
                    if self.stopping() {
                        return;
                    }
                    tokio::select! {
                        changed = self.owned.changed() => if changed.is_err() { return },
                        _ = self.shutdown.changed() => {}
                    }
                }
                if self.stopping() {
                    return;
                }
                match self.claim().await {
                    Ok(()) => {
                        info!(position = %self.position, "projection owned");
                        self.work().await;
                        self.ahead = None;
                        info!(position = %self.position, "projection released");
                    }
                    Err(error) => {
                        warn!(error = %chain(&error), "cannot take up the projection; trying again");
                        self.pause(self.shared.config.poll_interval).await;
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }

    /// Records the new owner, prepares the view and loads the checkpoint.
    async fn claim(&mut self) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let mut tx = begin(&shared).await?;
        let mut claimed = shared
            .projections
            .claim(&mut tx, V::NAME, V::VERSION, &shared.owner)
            .await?;
        if claimed.is_none() {
            // The row was deleted: register the projection again.
            drop(tx);
            let mut conn = shared
                .pool
                .acquire()
                .await
                .map_err(|e| Error::database("acquire", e))?;
            shared
                .projections
                .register(&mut conn, V::NAME, V::VERSION, &self.filter, false)
                .await?;
            drop(conn);
            tx = begin(&shared).await?;
            claimed = shared
                .projections
                .claim(&mut tx, V::NAME, V::VERSION, &shared.owner)
                .await?;
        }
        let Some((position, active)) = claimed else {
            return Err(Error::UnexpectedRow {
                statement: "projection_claim",
                problem: "the projection's row was gone again right after it was registered"
                    .to_owned(),
            });
        };
        if let Err(source) = guarded(self.view.setup(&mut tx)).await {
            self.view.discard();
            return Err(hook_failed::<V>("setup", source));
        }
        if active && let Err(source) = guarded(self.view.activate(&mut tx)).await {
            self.view.discard();
            return Err(hook_failed::<V>("activate", source));
        }
        tx.commit()
            .await
            .map_err(|e| Error::database("commit", e))?;
        self.position = position;
        self.until = None;
        self.attempts = 0;
        Ok(())
    }

    /// Applies batches while owned.
    async fn work(&mut self) {
        let hub = Arc::clone(&self.shared.hub);
        let mut log = hub.subscribe_log();
        let mut control = hub.subscribe_control();
        let poll = self.shared.config.poll_interval;
        let mut trouble = Duration::from_millis(50);
        let mut nudge = Duration::from_millis(2);
        let mut nudges = 0_u32;
        while self.owned() {
            // Marked seen before reading, so an announcement during the step wakes the
            // next wait at once.
            log.borrow_and_update();
            control.borrow_and_update();
            let step = self.step().await;
            match step {
                Ok(Step::Progress) => {
                    trouble = Duration::from_millis(50);
                }
                Ok(Step::Idle { head, applied }) => {
                    trouble = Duration::from_millis(50);
                    if *log.borrow() > head {
                        if applied {
                            // Announced while the batch ran: read on at once.
                            nudge = Duration::from_millis(2);
                            nudges = 0;
                            continue;
                        }
                        // Announced but not readable yet (an older transaction is still
                        // open): look again soon rather than at the next announcement,
                        // every 2 ms for a while, then less and less often.
                        if !self.pause(nudge).await {
                            return;
                        }
                        nudges += 1;
                        if nudges > 50 {
                            nudge = (nudge * 2).min(poll).min(Duration::from_millis(100));
                        }
                        continue;
                    }
                    nudge = Duration::from_millis(2);
                    nudges = 0;
                    tokio::select! {
                        _ = log.changed() => {}
                        _ = control.changed() => {}
                        _ = self.owned.changed() => {}
                        _ = self.shutdown.changed() => {}
                        () = tokio::time::sleep(poll) => {}
                    }
                }
                Ok(Step::Failed) => {
                    tokio::select! {
                        _ = control.changed() => {}
                        _ = self.owned.changed() => {}
                        _ = self.shutdown.changed() => {}
                        () = tokio::time::sleep(poll) => {}
                    }
                }
                Ok(Step::Retry(delay)) => {
                    if !self.pause(delay).await {
                        return;
                    }
                }
                Ok(Step::Missing) => return,
                Err(error) => {
                    warn!(
                        error = %chain(&error),
                        position = %self.position,
                        "projection batch failed; retrying"
                    );
                    if !self.pause(trouble).await {
                        return;
                    }
                    trouble = (trouble * 2).min(poll.max(Duration::from_secs(1)));
                }
            }
        }
    }

    /// One batch: read a window of the log, apply the events it wants, move the
    /// checkpoint, commit.
    async fn step(&mut self) -> Result<Step> {
        let shared = Arc::clone(&self.shared);
        let span = tracing::debug_span!(
            "cqrs_postgres.projection.batch",
            projection = V::NAME,
            position = %self.position,
            events = tracing::field::Empty,
        );
        async move {
            let limit = shared.config.batch_size;
            let ahead = self.ahead.take();
            let read_ahead =
                self.until.is_none() && ahead.as_ref().is_some_and(|a| a.after == self.position);
            let window = Window {
                after: self.position,
                limit,
                until: self.until,
            };
            let read_now = || {
                read::<V::Event>(
                    Arc::clone(&shared),
                    Arc::clone(&self.filter),
                    V::NAME,
                    V::VERSION,
                    window,
                )
            };
            let batch = match ahead {
                Some(mut ahead) if read_ahead => match (&mut ahead.task).await {
                    Ok(batch) => batch?,
                    // The read ahead was cancelled or panicked: read the window now.
                    Err(_) => read_now().await?,
                },
                _ => read_now().await?,
            };
            let Some(header) = batch.header else {
                return Ok(Step::Missing);
            };
            if header.rebuild_requested {
                return self.rebuild().await;
            }
            if header.failed {
                return Ok(Step::Failed);
            }
            // A batch read ahead saw the row before the previous batch committed; the
            // fence below still catches a checkpoint moved by someone else.
            if !read_ahead && header.position != self.position {
                // Moved by someone else: an operator's skip, or another owner.
                debug!(position = %header.position, "checkpoint moved elsewhere");
                self.position = header.position;
                self.until = None;
                self.attempts = 0;
                return Ok(Step::Progress);
            }
            let count = batch.events.len();
            tracing::Span::current().record("events", count);
            let full = usize::try_from(header.scanned).unwrap_or(usize::MAX) >= limit;
            // Not cut short by the window's size or bound: it covered the log up to the
            // head, and the view is current up to there.
            let caught_up = !full && self.until.is_none();
            let covered = header.covered.unwrap_or(self.position).max(self.position);
            let to = if caught_up {
                covered.max(header.head)
            } else {
                covered
            };
            let version = i32::try_from(V::VERSION).unwrap_or(i32::MAX);
            let switch = caught_up
                && !header.active
                && header.active_version.is_none_or(|served| served < version);
            let finish_rebuild = caught_up && header.rebuilding;
            let rebuilding = header.rebuilding && !caught_up;
            let state = if rebuilding || (!header.active && !switch) {
                "rebuilding"
            } else if caught_up {
                "caught_up"
            } else {
                "running"
            };
            let advance = Advance {
                name: V::NAME,
                version: V::VERSION,
                from: self.position,
                to,
                state,
                rebuilding,
            };
            if count == 0 && to == self.position && !switch && !finish_rebuild {
                return Ok(Step::Idle {
                    head: header.head,
                    applied: false,
                });
            }
            if full && self.until.is_none() {
                // Read the next window while this one is applied.
                self.ahead = Some(Ahead {
                    after: to,
                    task: tokio::spawn(read::<V::Event>(
                        Arc::clone(&shared),
                        Arc::clone(&self.filter),
                        V::NAME,
                        V::VERSION,
                        Window {
                            after: to,
                            limit,
                            until: None,
                        },
                    )),
                });
            }
            if count == 0 && !switch {
                // Nothing to apply: the checkpoint moves on its own.
                return match shared.projections.advance(&shared.pool, advance).await {
                    Ok(Some(_)) => Ok(self.committed(to, caught_up, header.head, finish_rebuild)),
                    Ok(None) => {
                        self.abandon();
                        Ok(Step::Progress)
                    }
                    Err(error) => {
                        self.abandon();
                        Err(error)
                    }
                };
            }
            let positions: Vec<Position> = batch.events.iter().map(|(p, _)| *p).collect();
            let mut tx = begin(&shared).await?;
            for (index, (position, event)) in batch.events.into_iter().enumerate() {
                let outcome = match event {
                    Ok(event) => guarded(self.view.handle(&mut tx, &event)).await,
                    Err(error) => Err(error),
                };
                if let Err(source) = outcome {
                    drop(tx);
                    self.abandon();
                    let before = index.checked_sub(1).map(|i| positions[i]);
                    return self.handler_failed(before, position, source).await;
                }
            }
            if let Err(source) = guarded(self.view.flush(&mut tx)).await {
                drop(tx);
                self.abandon();
                return if count > 1 {
                    // Narrow the batch down to the event the flush fails on.
                    self.until = Some(positions[count / 2 - 1]);
                    Ok(Step::Progress)
                } else {
                    self.handler_failed(None, positions[0], source).await
                };
            }
            if switch {
                if let Err(source) = guarded(self.view.activate(&mut tx)).await {
                    drop(tx);
                    self.abandon();
                    return Err(hook_failed::<V>("activate", source));
                }
                if let Err(error) = shared
                    .projections
                    .switch(&mut tx, V::NAME, V::VERSION)
                    .await
                {
                    drop(tx);
                    self.abandon();
                    return Err(error);
                }
                info!(position = %to, "new version caught up; now served");
            }
            match shared.projections.advance(&mut *tx, advance).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    // Fenced off: the checkpoint moved under us. Nothing commits; the
                    // next read (not read ahead) finds out why.
                    drop(tx);
                    self.abandon();
                    warn!("checkpoint moved during the batch; batch dropped");
                    return Ok(Step::Progress);
                }
                Err(error) => {
                    drop(tx);
                    self.abandon();
                    return Err(error);
                }
            }
            if let Err(error) = tx.commit().await {
                self.abandon();
                return Err(Error::database("commit", error));
            }
            debug!(position = %to, events = count, "projection batch committed");
            Ok(self.committed(to, caught_up, header.head, finish_rebuild))
        }
        .instrument(span)
        .await
    }

    /// The batch up to `to` committed.
    fn committed(
        &mut self,
        to: Position,
        caught_up: bool,
        head: Position,
        finish_rebuild: bool,
    ) -> Step {
        if finish_rebuild {
            info!(position = %to, "rebuild caught up");
        }
        self.position = to;
        self.until = None;
        self.attempts = 0;
        if caught_up {
            Step::Idle {
                head,
                applied: true,
            }
        } else {
            Step::Progress
        }
    }

    /// Forgets a batch that did not commit: what the view buffered, and the batch read
    /// ahead of it.
    fn abandon(&mut self) {
        self.view.discard();
        self.ahead = None;
    }

    /// Resets the view and the checkpoint, as an operator asked.
    async fn rebuild(&mut self) -> Result<Step> {
        self.abandon();
        let mut tx = begin(&self.shared).await?;
        if let Err(source) = guarded(self.view.reset(&mut tx)).await {
            drop(tx);
            self.abandon();
            let error = hook_failed::<V>("reset", source);
            warn!(error = %chain(&error), "resetting the view for a rebuild failed; retrying");
            return Ok(Step::Retry(self.shared.config.poll_interval));
        }
        if !self
            .shared
            .projections
            .reset(&mut tx, V::NAME, V::VERSION)
            .await?
        {
            return Ok(Step::Progress);
        }
        tx.commit()
            .await
            .map_err(|e| Error::database("commit", e))?;
        info!("view reset; rebuilding from the start of the log");
        self.position = Position::START;
        self.until = None;
        self.attempts = 0;
        Ok(Step::Progress)
    }

    /// A handler (or the decoding before it) failed on the event at `position`; `before`
    /// is the batch's event just before it, if any.
    async fn handler_failed(
        &mut self,
        before: Option<Position>,
        position: Position,
        source: BoxError,
    ) -> Result<Step> {
        if let Some(before) = before {
            // Commit the events before it first.
            self.until = Some(before);
            return Ok(Step::Progress);
        }
        self.attempts += 1;
        let error = cqrs_core::ProjectionError::Handler {
            projection: V::NAME,
            position,
            source,
        };
        let config = &self.shared.config;
        if self.attempts < config.max_attempts {
            let exponent = self.attempts.saturating_sub(1).min(16);
            let delay = config
                .backoff
                .saturating_mul(1 << exponent)
                .min(Duration::from_secs(30));
            warn!(
                error = %chain(&error),
                attempt = self.attempts,
                "projection handler failed; retrying"
            );
            // The next window holds this event and nothing it wants before it.
            self.until = Some(position);
            return Ok(Step::Retry(delay));
        }
        let message = chain(&error);
        error!(error = %message, %position, "projection handler keeps failing; projection stopped");
        self.attempts = 0;
        self.until = None;
        self.shared
            .projections
            .fail(
                &self.shared.pool,
                V::NAME,
                V::VERSION,
                self.position,
                position,
                &message,
            )
            .await?;
        Ok(Step::Failed)
    }
}

fn hook_failed<V: Projection>(hook: &'static str, source: BoxError) -> Error {
    Error::Hook {
        projection: V::NAME,
        hook,
        source,
    }
}

/// Opens a batch's transaction. Unless configured otherwise, its commit does not wait
/// for the WAL flush: a server crash can only lose a batch together with its
/// checkpoint, which the worker then applies again (see
/// [`PgProjectionRunnerBuilder::synchronous_commit`](crate::PgProjectionRunnerBuilder::synchronous_commit)).
async fn begin(shared: &Shared) -> Result<Transaction<'static, Postgres>> {
    let begun = if shared.config.synchronous_commit {
        shared.pool.begin().await
    } else {
        shared
            .pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit TO off")
            .await
    };
    begun.map_err(|e| Error::database("begin", e))
}

/// Makes a worker for `view` and runs it as a task.
pub(crate) fn spawn<V: PgView>(
    view: V,
    shared: Arc<Shared>,
    owned: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(Worker::new(view, shared, owned).run())
}
