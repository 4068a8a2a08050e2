//! The loop that runs one projection while its runner owns it: read a batch, decide
//! what to do with it (`plan.rs`), do it (`batch.rs`), wait for more.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::{BoxError, EventFilter, Position, ProjectionError, error_chain};
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info, warn};

use super::batch::{self, Abandon, Ahead, Applied, Decoded, hook_failed};
use super::guard::guarded;
use super::plan::{self, Commit, Plan, Row};
use super::shared::Shared;
use super::view::PgView;
use crate::db::{Advance, Error, Result, Window};

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

    /// Goes on from `position`, with a fresh set of attempts.
    fn go_on_from(&mut self, position: Position) {
        self.position = position;
        self.until = None;
        self.attempts = 0;
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
                        warn!(error = %error_chain(&error), "cannot take up the projection; trying again");
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
        let projections = &shared.projections;
        let mut tx = batch::begin(&shared).await?;
        let mut claimed = projections
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
            projections
                .register(&mut conn, V::NAME, V::VERSION, &self.filter, false)
                .await?;
            drop(conn);
            tx = batch::begin(&shared).await?;
            claimed = projections
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
        let setup = Abandon::new(&mut self.view, &mut self.ahead);
        if let Err(source) = guarded(setup.view.setup(&mut tx)).await {
            return Err(hook_failed::<V>("setup", source));
        }
        if active && let Err(source) = guarded(setup.view.activate(&mut tx)).await {
            return Err(hook_failed::<V>("activate", source));
        }
        tx.commit()
            .await
            .map_err(|e| Error::database("commit", e))?;
        setup.disarm();
        self.go_on_from(position);
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
                        error = %error_chain(&error),
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

    /// One batch: read a window of the log, decide, apply the events it wants and move
    /// the checkpoint.
    async fn step(&mut self) -> Result<Step> {
        let span = tracing::debug_span!(
            "cqrs_postgres.projection.batch",
            projection = V::NAME,
            position = %self.position,
            events = tracing::field::Empty,
        );
        async move {
            let (batch, read_ahead) = self.next_batch().await?;
            let header = batch.header.as_ref();
            let window = plan::Window {
                at: self.position,
                until: self.until,
                read_ahead,
                scanned: header.map_or(0, |h| h.scanned),
                covered: header.and_then(|h| h.covered),
                wanted: batch.events.len(),
                limit: self.shared.config.batch_size,
            };
            match plan::plan(Row::of(header), window, V::VERSION) {
                Plan::Missing => Ok(Step::Missing),
                Plan::Rebuild => self.rebuild().await,
                Plan::Failed => Ok(Step::Failed),
                Plan::Moved(position) => {
                    debug!(%position, "checkpoint moved elsewhere");
                    self.go_on_from(position);
                    Ok(Step::Progress)
                }
                Plan::Idle { head } => Ok(Step::Idle {
                    head,
                    applied: false,
                }),
                Plan::Commit(commit) => {
                    tracing::Span::current().record("events", batch.events.len());
                    self.commit(batch, commit).await
                }
            }
        }
        .instrument(span)
        .await
    }

    /// The batch after the checkpoint: the one read ahead if it starts there (and the
    /// window is not cut short), else one read now; and whether it was read ahead.
    async fn next_batch(&mut self) -> Result<(Decoded<V::Event>, bool)> {
        let ahead = self.ahead.take();
        let read_ahead =
            self.until.is_none() && ahead.as_ref().is_some_and(|a| a.after == self.position);
        let window = Window {
            after: self.position,
            limit: self.shared.config.batch_size,
            until: self.until,
        };
        if let Some(mut ahead) = ahead.filter(|_| read_ahead) {
            match (&mut ahead.task).await {
                Ok(batch) => return Ok((batch?, true)),
                // The read ahead was cancelled or panicked: read the window now.
                Err(_) => debug!("the batch read ahead is lost; reading it again"),
            }
        }
        let batch = self.read(window).await?;
        Ok((batch, false))
    }

    fn read(&self, window: Window) -> impl Future<Output = Result<Decoded<V::Event>>> + use<V> {
        batch::read::<V::Event>(
            Arc::clone(&self.shared),
            Arc::clone(&self.filter),
            V::NAME,
            V::VERSION,
            window,
        )
    }

    /// Commits a batch as `commit` says.
    async fn commit(&mut self, batch: Decoded<V::Event>, commit: Commit) -> Result<Step> {
        let shared = Arc::clone(&self.shared);
        if commit.read_next {
            // Read the next window while this one is applied.
            let window = Window {
                after: commit.to,
                limit: shared.config.batch_size,
                until: None,
            };
            self.ahead = Some(Ahead {
                after: commit.to,
                task: tokio::spawn(self.read(window)),
            });
        }
        let advance = Advance {
            name: V::NAME,
            version: V::VERSION,
            from: self.position,
            to: commit.to,
            state: commit.state.as_str(),
            rebuilding: commit.rebuilding,
        };
        let applied = {
            let batch_of = Abandon::new(&mut self.view, &mut self.ahead);
            if commit.needs_view(batch.events.len()) {
                batch::apply(&shared, batch_of, batch.events, commit.serve, advance).await?
            } else {
                // Nothing to apply: the checkpoint moves on its own.
                match shared.projections.advance(&shared.pool, advance).await? {
                    Some(_) => {
                        batch_of.disarm();
                        Applied::Committed { served: false }
                    }
                    None => Applied::Fenced,
                }
            }
        };
        match applied {
            Applied::Committed { served } => {
                if served {
                    info!(position = %commit.to, "new version caught up; now served");
                }
                if commit.ends_rebuild {
                    info!(position = %commit.to, "rebuild caught up");
                }
                debug!(position = %commit.to, "projection batch committed");
                self.go_on_from(commit.to);
                // A switch put off because the served version was ahead: read again at
                // once, up to where it is now.
                let put_off = commit.serve && !served;
                Ok(if commit.caught_up && !put_off {
                    Step::Idle {
                        head: commit.head,
                        applied: true,
                    }
                } else {
                    Step::Progress
                })
            }
            Applied::Fenced => {
                // The checkpoint moved under the batch; the next read (not read ahead)
                // finds out why.
                warn!("checkpoint moved during the batch; batch dropped");
                Ok(Step::Progress)
            }
            Applied::HandlerFailed {
                before,
                position,
                source,
            } => self.handler_failed(before, position, source).await,
            Applied::HookFailed {
                hook,
                positions,
                source,
            } => match positions.as_slice() {
                [] => Err(hook_failed::<V>(hook, source)),
                [only] => self.handler_failed(None, *only, source).await,
                several => {
                    // Narrow the batch down to the event the hook fails on.
                    self.until = Some(several[several.len() / 2 - 1]);
                    Ok(Step::Progress)
                }
            },
        }
    }

    /// Resets the view and the checkpoint, as an operator asked.
    async fn rebuild(&mut self) -> Result<Step> {
        let shared = Arc::clone(&self.shared);
        let reset = Abandon::new(&mut self.view, &mut self.ahead);
        let mut tx = batch::begin(&shared).await?;
        if let Err(source) = guarded(reset.view.reset(&mut tx)).await {
            let error = hook_failed::<V>("reset", source);
            warn!(error = %error_chain(&error), "resetting the view for a rebuild failed; retrying");
            return Ok(Step::Retry(shared.config.poll_interval));
        }
        if !shared
            .projections
            .reset(&mut tx, V::NAME, V::VERSION)
            .await?
        {
            return Ok(Step::Progress);
        }
        tx.commit()
            .await
            .map_err(|e| Error::database("commit", e))?;
        // Nothing read before the reset is of use: the view starts over.
        drop(reset);
        info!("view reset; rebuilding from the start of the log");
        self.go_on_from(Position::START);
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
        let error = ProjectionError::Handler {
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
                .min(config.max_backoff);
            warn!(
                error = %error_chain(&error),
                attempt = self.attempts,
                "projection handler failed; retrying"
            );
            // The next window holds this event and nothing it wants before it.
            self.until = Some(position);
            return Ok(Step::Retry(delay));
        }
        let message = error_chain(&error);
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

/// Makes a worker for `view` and runs it as a task.
pub(crate) fn spawn<V: PgView>(
    view: V,
    shared: Arc<Shared>,
    owned: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(Worker::new(view, shared, owned).run())
}
