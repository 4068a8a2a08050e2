use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, warn};

use super::MemoryEventStore;
use crate::{
    EventFilter, EventStore, Position, Projection, ProjectionError, ReadYourWrites, Token,
};

/// Runs a [`Projection`] whose view lives in memory (`Context = ()`) over a
/// [`MemoryEventStore`] (woken by every append), or over any other [`EventStore`]
/// (polling it: [`Projector::polling`]).
///
/// The checkpoint lives beside the view, so view and checkpoint always agree: every
/// event after the checkpoint is applied exactly once, in log order. Call
/// [`catch_up`](Self::catch_up) to process what is there, or [`spawn`](Self::spawn) to
/// follow the log live.
///
/// ```
/// # use std::convert::Infallible;
/// use cqrs_core::memory::{MemoryEventStore, Projector};
/// use cqrs_core::{Event, EventEnvelope, EventStore, Project, Projection};
/// use cqrs_core::store::{AppendRequest, NewEvent};
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
/// struct Deposited {
///     amount: u64,
/// }
///
/// #[derive(Debug, Default, Projection)]
/// #[cqrs(name = "total", event = Deposited)]
/// struct Total(u64);
///
/// impl Project for Total {
///     async fn project(&mut self, _: &mut (), e: &EventEnvelope<Deposited>) -> Result<(), Infallible> {
///         self.0 += e.payload.amount;
///         Ok(())
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = MemoryEventStore::new();
/// let projector = Projector::new(store.clone(), Total::default());
/// let deposit = NewEvent::new("Deposited", 1, serde_json::json!({ "amount": 5 }));
/// let outcome = store.append(AppendRequest::new("account", "a-1", 0, vec![deposit])).await?;
/// projector.catch_up().await?;
/// assert_eq!(projector.read(|total| total.0).await, 5);
/// assert!(projector.checkpoint().await >= outcome.position);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Projector<P, S: ?Sized = MemoryEventStore> {
    store: Arc<S>,
    wake: Wake,
    inner: Arc<Mutex<Inner<P>>>,
    reached: watch::Sender<Position>,
    filter: Arc<EventFilter>,
    batch_size: usize,
}

struct Inner<P> {
    projection: P,
    checkpoint: Position,
}

/// How a projector learns that the log has grown.
#[derive(Debug, Clone)]
enum Wake {
    /// The store announces every append.
    Watch(watch::Receiver<Position>),
    /// The store is asked again after an interval.
    Poll(Duration),
}

impl Wake {
    /// A wake-up source that fires only for appends after this call.
    fn fresh(&self) -> Self {
        match self {
            Self::Watch(head) => {
                let mut head = head.clone();
                head.borrow_and_update();
                Self::Watch(head)
            }
            Self::Poll(interval) => Self::Poll(*interval),
        }
    }

    /// Returns when the log may have grown; `false` when it never will again.
    async fn next(&mut self) -> bool {
        match self {
            Self::Watch(head) => head.changed().await.is_ok(),
            Self::Poll(interval) => {
                tokio::time::sleep(*interval).await;
                true
            }
        }
    }
}

impl<P, S: ?Sized> fmt::Debug for Projector<P, S>
where
    P: Projection,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projector")
            .field("projection", &P::NAME)
            .field("reached", &*self.reached.borrow())
            .finish_non_exhaustive()
    }
}

impl<P, S: ?Sized> Clone for Projector<P, S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            wake: self.wake.clone(),
            inner: Arc::clone(&self.inner),
            reached: self.reached.clone(),
            filter: Arc::clone(&self.filter),
            batch_size: self.batch_size,
        }
    }
}

impl<P> Projector<P>
where
    P: Projection<Context = ()>,
{
    /// A projector at the start of the log of an in-memory store, woken by every append.
    pub fn new(store: MemoryEventStore, projection: P) -> Self {
        let wake = Wake::Watch(store.subscribe());
        Projector::build(Arc::new(store), wake, projection)
    }
}

impl<P, S> Projector<P, S>
where
    P: Projection<Context = ()>,
    S: EventStore + ?Sized,
{
    /// A projector at the start of the log of any store, which it polls every
    /// `interval` when following the log live. Its checkpoint lives in memory: after a
    /// restart the view is rebuilt from the start of the log.
    pub fn polling(store: Arc<S>, projection: P, interval: Duration) -> Self {
        Self::build(store, Wake::Poll(interval), projection)
    }

    fn build(store: Arc<S>, wake: Wake, projection: P) -> Self {
        Self {
            store,
            wake,
            inner: Arc::new(Mutex::new(Inner {
                projection,
                checkpoint: Position::START,
            })),
            reached: watch::channel(Position::START).0,
            filter: Arc::new(P::filter()),
            batch_size: 500,
        }
    }

    /// Sets how many events are read per batch (default 500).
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Applies every event after the checkpoint, in order, and returns the new
    /// checkpoint.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Handler`] when the handler fails: the checkpoint stays just
    /// before the failing event, so the next call retries it.
    /// [`ProjectionError::Store`] when reading the log fails, or holding an
    /// [`Error::Decode`](crate::Error::Decode) for an event that does not decode.
    pub async fn catch_up(&self) -> Result<Position, ProjectionError> {
        let span = tracing::debug_span!("cqrs.projection.catch_up", projection = P::NAME);
        async {
            let mut inner = self.inner.lock().await;
            let head = self.store.head().await?;
            loop {
                let batch = self
                    .store
                    .read_all(inner.checkpoint, self.batch_size, &self.filter)
                    .await?;
                let Some(last) = batch.last().map(|event| event.position) else {
                    break;
                };
                for raw in batch {
                    let position = raw.position;
                    let event = raw.into_decoded::<P::Event>()?;
                    let Inner {
                        projection,
                        checkpoint,
                    } = &mut *inner;
                    projection.handle(&mut (), &event).await.map_err(|source| {
                        ProjectionError::Handler {
                            projection: P::NAME,
                            position,
                            source: Box::new(source),
                        }
                    })?;
                    *checkpoint = position;
                }
                debug!(position = %last, "projection batch applied");
                self.reached.send_replace(last);
            }
            // Events the filter skipped are passed too: the view is current up to `head`.
            if head > inner.checkpoint {
                inner.checkpoint = head;
            }
            self.reached.send_replace(inner.checkpoint);
            Ok(inner.checkpoint)
        }
        .instrument(span)
        .await
    }

    /// The position up to which the view is current.
    pub async fn checkpoint(&self) -> Position {
        self.inner.lock().await.checkpoint
    }

    /// Takes the projection out, if this is the last handle to it (no clone and no
    /// spawned task remains).
    ///
    /// # Errors
    ///
    /// Gives the projector back when other handles still share the projection.
    pub fn into_projection(self) -> std::result::Result<P, Self> {
        let Self {
            store,
            wake,
            inner,
            reached,
            filter,
            batch_size,
        } = self;
        Arc::try_unwrap(inner)
            .map(|inner| inner.into_inner().projection)
            .map_err(|inner| Self {
                store,
                wake,
                inner,
                reached,
                filter,
                batch_size,
            })
    }

    /// Reads the view.
    pub async fn read<R>(&self, read: impl FnOnce(&P) -> R) -> R {
        read(&self.inner.lock().await.projection)
    }

    /// Waits until the view has processed `position`, catching up on the way: what
    /// [`ReadYourWrites::wait_for`] does for this projector's own projection.
    async fn wait_for_position(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let mut reached = self.reached.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Armed before the head is read, so an append in between still wakes us.
            let mut wake = self.wake.fresh();
            if *reached.borrow_and_update() >= position {
                return Ok(());
            }
            if self.store.head().await? >= position {
                self.catch_up().await?;
                continue;
            }
            // The position is not in the log yet: wait for progress.
            tokio::select! {
                _ = reached.changed() => {}
                _ = wake.next() => {}
                () = tokio::time::sleep_until(deadline) => {
                    let at = *reached.borrow();
                    if at >= position {
                        return Ok(());
                    }
                    return Err(ProjectionError::Timeout {
                        projection: P::NAME.to_owned(),
                        target: position,
                        reached: at,
                    });
                }
            }
        }
    }

    /// Follows the log in a background task: catches up now and after every append.
    ///
    /// A failing handler is retried with a growing delay (up to one second) until it
    /// succeeds; the projection never skips the event. Dropping or aborting the returned
    /// handle stops the task.
    #[must_use = "dropping the handle stops the projection"]
    pub fn spawn(&self) -> ProjectorTask {
        let projector = self.clone();
        let mut wake = self.wake.clone();
        let span = tracing::debug_span!("cqrs.projection", projection = P::NAME);
        let task = tokio::spawn(
            async move {
                let mut backoff = Duration::from_millis(10);
                loop {
                    match projector.catch_up().await {
                        Ok(_) => {
                            backoff = Duration::from_millis(10);
                            if !wake.next().await {
                                return;
                            }
                        }
                        Err(error) => {
                            warn!(%error, "projection failed; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            }
            .instrument(span),
        );
        ProjectorTask(task)
    }
}

impl<P, S> ReadYourWrites for Projector<P, S>
where
    P: Projection<Context = ()>,
    S: EventStore + ?Sized,
{
    /// Waits until this projector's view has passed `token`, catching up on the way.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Unknown`] when `Q` is not this projector's projection;
    /// [`ProjectionError::Timeout`] when the view has not reached the token within
    /// `timeout`; the errors of [`catch_up`](Self::catch_up).
    async fn wait_for<Q: Projection>(
        &self,
        token: impl Into<Token> + Send,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        if Q::NAME != P::NAME {
            return Err(ProjectionError::Unknown {
                projection: Q::NAME.to_owned(),
            });
        }
        self.wait_for_position(token.into().position(), timeout)
            .await
    }
}

/// The background task of [`Projector::spawn`]; stops the projection when dropped.
#[derive(Debug)]
pub struct ProjectorTask(JoinHandle<()>);

impl Drop for ProjectorTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
