//! Running a process manager in memory: [`ProcessRunner`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tracing::{debug, warn};
use uuid::Uuid;

use super::MemoryEventStore;
use crate::process::{
    Dispatch, Effects, ManualClock, ProcessError, ProcessManager, Refusal, Step, StepInput,
    TimerChange, command_id, command_metadata,
};
use crate::{EventStore, Position};

const BATCH: usize = 256;

/// Runs a process manager over a store's log in memory, with timers on a
/// [`ManualClock`]: for tests and for single-process programs that accept losing their
/// process state on exit.
///
/// [`run_until_idle`](Self::run_until_idle) reacts to the new events of the log, fires
/// the timers that are due, and sends the commands decided, over and over until nothing
/// is left to do; [`advance`](Self::advance) moves the clock first.
///
/// ```
/// # use std::time::Duration;
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::process::Effects;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// # enum OrderEvent { Placed, Cancelled }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
/// # enum OrderCommand { Place { #[cqrs(id)] id: String }, Cancel { #[cqrs(id)] id: String } }
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("no")]
/// # struct No;
/// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// # #[cqrs(name = "order", command = OrderCommand, event = OrderEvent, error = No)]
/// # struct Order;
/// # impl Apply<OrderEvent> for Order { fn apply(&mut self, _: &OrderEvent) {} }
/// # impl Handle<OrderCommand> for Order {
/// #     async fn handle(&self, c: &OrderCommand, (): &()) -> Result<Vec<OrderEvent>, No> {
/// #         Ok(vec![match c { OrderCommand::Place { .. } => OrderEvent::Placed, OrderCommand::Cancel { .. } => OrderEvent::Cancelled }])
/// #     }
/// # }
/// /// Cancels an order nobody paid within an hour.
/// #[derive(Debug, Default, Serialize, Deserialize, ProcessManager)]
/// #[cqrs(name = "unpaid_orders", event = OrderEvent, command = OrderCommand)]
/// struct Unpaid {
///     order: String,
/// }
///
/// impl React for Unpaid {
///     fn correlate(event: &EventEnvelope<OrderEvent>) -> Option<String> {
///         Some(event.stream_id.clone())
///     }
///
///     fn react(&mut self, event: &EventEnvelope<OrderEvent>, effects: &mut Effects<OrderCommand>) {
///         match event.payload {
///             OrderEvent::Placed => {
///                 self.order = event.stream_id.clone();
///                 effects.schedule("unpaid", Duration::from_secs(3600));
///             }
///             OrderEvent::Cancelled => effects.finish(),
///         }
///     }
///
///     fn on_timer(&mut self, _: &str, effects: &mut Effects<OrderCommand>) {
///         effects.send(OrderCommand::Cancel { id: self.order.clone() });
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use cqrs_core::memory::ProcessRunner;
///
/// let store = MemoryEventStore::new();
/// let orders = Cqrs::<Order, _>::new(store.clone());
/// let runner = ProcessRunner::<Unpaid, _>::new(store.clone(), orders.clone());
///
/// orders.execute("o-1", OrderCommand::Place { id: "o-1".into() }).await?;
/// runner.run_until_idle().await?;
/// assert_eq!(orders.load("o-1").await?.version, 1);
///
/// runner.advance(Duration::from_secs(3600)).await?;
/// assert_eq!(orders.load("o-1").await?.version, 2, "cancelled");
/// assert!(runner.is_finished("o-1").await);
/// # Ok(())
/// # }
/// ```
pub struct ProcessRunner<P: ProcessManager, D, S: ?Sized = MemoryEventStore> {
    store: Arc<S>,
    dispatcher: D,
    clock: ManualClock,
    inner: Mutex<Inner<P::Command>>,
}

impl<P: ProcessManager, D, S: ?Sized> fmt::Debug for ProcessRunner<P, D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessRunner")
            .field("manager", &P::NAME)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// An instance's state, kept encoded (as a durable runner keeps it).
enum Instance {
    Running(serde_json::Value),
    Finished,
}

struct Outgoing<C> {
    id: Uuid,
    key: String,
    command: C,
    correlation_id: Option<Uuid>,
}

struct Timer {
    id: Uuid,
    key: String,
    name: String,
    due: Duration,
}

struct Inner<C> {
    checkpoint: Position,
    instances: HashMap<String, Instance>,
    history: HashMap<String, Vec<Step>>,
    outbox: VecDeque<Outgoing<C>>,
    timers: Vec<Timer>,
}

/// What caused a reaction.
struct Cause {
    input: StepInput,
    correlation_id: Option<Uuid>,
}

impl<P, D> ProcessRunner<P, D>
where
    P: ProcessManager,
    D: Dispatch<P::Command>,
{
    /// A runner over `store`'s log from its start, sending commands to `dispatcher`,
    /// with a clock at zero.
    pub fn new(store: MemoryEventStore, dispatcher: D) -> Self {
        Self::over(Arc::new(store), dispatcher)
    }
}

impl<P, D, S> ProcessRunner<P, D, S>
where
    P: ProcessManager,
    D: Dispatch<P::Command>,
    S: EventStore + ?Sized,
{
    /// A runner over any store's log.
    pub fn over(store: Arc<S>, dispatcher: D) -> Self {
        Self {
            store,
            dispatcher,
            clock: ManualClock::new(),
            inner: Mutex::new(Inner {
                checkpoint: Position::START,
                instances: HashMap::new(),
                history: HashMap::new(),
                outbox: VecDeque::new(),
                timers: Vec::new(),
            }),
        }
    }

    /// Uses `clock` for timers (clones share the time).
    #[must_use]
    pub fn with_clock(mut self, clock: ManualClock) -> Self {
        self.clock = clock;
        self
    }

    /// The clock timers run on.
    pub fn clock(&self) -> &ManualClock {
        &self.clock
    }

    /// Moves the clock forward, then [`run_until_idle`](Self::run_until_idle).
    ///
    /// # Errors
    ///
    /// As for [`run_until_idle`](Self::run_until_idle).
    pub async fn advance(&self, by: Duration) -> Result<(), ProcessError> {
        self.clock.advance(by);
        self.run_until_idle().await
    }

    /// Reacts to new events, fires due timers and sends commands until nothing is left
    /// to do.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Store`] when reading the log fails or an event does not decode;
    /// [`ProcessError::State`] when an instance's state does not encode or decode;
    /// [`ProcessError::Dispatch`] when a command could not be carried out
    /// ([`Refusal::Failed`]): it stays first in line and is sent again by the next call.
    pub async fn run_until_idle(&self) -> Result<(), ProcessError> {
        let mut inner = self.inner.lock().await;
        loop {
            let events = self.catch_up(&mut inner).await?;
            let timers = self.fire_due(&mut inner)?;
            let sent = self.send_all(&mut inner).await?;
            if !(events || timers || sent) {
                return Ok(());
            }
        }
    }

    /// The state of the instance `key`; `None` when it has not started or has finished.
    ///
    /// # Errors
    ///
    /// [`ProcessError::State`] when the stored state does not decode.
    pub async fn state(&self, key: &str) -> Result<Option<P>, ProcessError> {
        match self.inner.lock().await.instances.get(key) {
            Some(Instance::Running(state)) => decode::<P>(key, state.clone()).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether the instance `key` has finished.
    pub async fn is_finished(&self, key: &str) -> bool {
        matches!(
            self.inner.lock().await.instances.get(key),
            Some(Instance::Finished)
        )
    }

    /// The pending timers of instance `key`: name and time left, soonest first.
    pub async fn timers(&self, key: &str) -> Vec<(String, Duration)> {
        let now = self.clock.now();
        let inner = self.inner.lock().await;
        let mut timers: Vec<_> = inner
            .timers
            .iter()
            .filter(|t| t.key == key)
            .map(|t| (t.name.clone(), t.due.saturating_sub(now)))
            .collect();
        timers.sort_by_key(|(_, left)| *left);
        timers
    }

    /// The history of instance `key`: one step per reaction, oldest first. Folded with
    /// [`replay`](crate::process::replay), it gives the instance's state.
    pub async fn history(&self, key: &str) -> Vec<Step> {
        self.inner
            .lock()
            .await
            .history
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// How many commands wait to be sent.
    pub async fn pending_commands(&self) -> usize {
        self.inner.lock().await.outbox.len()
    }

    async fn catch_up(&self, inner: &mut Inner<P::Command>) -> Result<bool, ProcessError> {
        let filter = P::filter();
        let mut any = false;
        loop {
            let batch = self
                .store
                .read_all(inner.checkpoint, BATCH, &filter)
                .await?;
            if batch.is_empty() {
                return Ok(any);
            }
            for raw in batch {
                let position = raw.position;
                let event = raw.into_decoded::<P::Event>()?;
                if let Some(key) = P::correlation_key(&event) {
                    let cause = Cause {
                        input: StepInput::event(&event)?,
                        correlation_id: event.metadata.correlation_id.or(Some(event.event_id)),
                    };
                    self.react(inner, &key, cause, |state, effects| {
                        state.handle_event(&event, effects);
                    })?;
                }
                inner.checkpoint = position;
                any = true;
            }
        }
    }

    fn fire_due(&self, inner: &mut Inner<P::Command>) -> Result<bool, ProcessError> {
        let now = self.clock.now();
        let mut any = false;
        loop {
            let Some(i) = inner
                .timers
                .iter()
                .enumerate()
                .filter(|(_, t)| t.due <= now)
                .min_by_key(|(_, t)| t.due)
                .map(|(i, _)| i)
            else {
                return Ok(any);
            };
            let timer = inner.timers.swap_remove(i);
            debug!(manager = P::NAME, key = %timer.key, timer = %timer.name, "timer fired");
            let cause = Cause {
                input: StepInput::Timer {
                    timer_id: timer.id,
                    name: timer.name.clone(),
                },
                correlation_id: None,
            };
            self.react(inner, &timer.key, cause, |state, effects| {
                state.handle_timer(&timer.name, effects);
            })?;
            any = true;
        }
    }

    async fn send_all(&self, inner: &mut Inner<P::Command>) -> Result<bool, ProcessError> {
        let mut any = false;
        while let Some(outgoing) = inner.outbox.pop_front() {
            any = true;
            let metadata =
                command_metadata(P::NAME, &outgoing.key, outgoing.id, outgoing.correlation_id);
            match self
                .dispatcher
                .dispatch(outgoing.command.clone(), metadata)
                .await
            {
                Ok(()) => {}
                Err(Refusal::Rejected(reason)) => {
                    debug!(manager = P::NAME, key = %outgoing.key, %reason, "command refused");
                    let command = serde_json::to_value(&outgoing.command).map_err(|source| {
                        ProcessError::State {
                            manager: P::NAME,
                            key: outgoing.key.clone(),
                            source,
                        }
                    })?;
                    let cause = Cause {
                        input: StepInput::Refused {
                            command_id: outgoing.id,
                            command,
                            reason: reason.clone(),
                        },
                        correlation_id: outgoing.correlation_id,
                    };
                    self.react(inner, &outgoing.key, cause, |state, effects| {
                        state.handle_refusal(&outgoing.command, &reason, effects);
                    })?;
                }
                Err(Refusal::Failed(source)) => {
                    warn!(manager = P::NAME, key = %outgoing.key, error = %source, "command not carried out");
                    let command = format!("{:?}", outgoing.command);
                    inner.outbox.push_front(outgoing);
                    return Err(ProcessError::Dispatch {
                        manager: P::NAME,
                        command,
                        source,
                    });
                }
            }
        }
        Ok(any)
    }

    /// Runs one reaction of instance `key` and records what it decided.
    fn react(
        &self,
        inner: &mut Inner<P::Command>,
        key: &str,
        cause: Cause,
        reaction: impl FnOnce(&mut P, &mut Effects<P::Command>),
    ) -> Result<(), ProcessError> {
        let mut state = match inner.instances.get(key) {
            Some(Instance::Finished) => return Ok(()),
            Some(Instance::Running(state)) => decode::<P>(key, state.clone())?,
            None => P::default(),
        };
        let mut effects = Effects::new();
        reaction(&mut state, &mut effects);
        let (commands, timers, finished) = effects.into_parts();
        let encoded = if finished {
            Instance::Finished
        } else {
            Instance::Running(serde_json::to_value(&state).map_err(|source| {
                ProcessError::State {
                    manager: P::NAME,
                    key: key.to_owned(),
                    source,
                }
            })?)
        };
        inner.instances.insert(key.to_owned(), encoded);
        let cause_id = cause.input.id();
        let mut sent = Vec::with_capacity(commands.len());
        for (index, command) in commands.into_iter().enumerate() {
            let id = command_id(P::NAME, cause_id, index);
            sent.push(id);
            inner.outbox.push_back(Outgoing {
                id,
                key: key.to_owned(),
                command,
                correlation_id: cause.correlation_id,
            });
        }
        let history = inner.history.entry(key.to_owned()).or_default();
        history.push(Step {
            version: history.len() as u64 + 1,
            input: cause.input,
            sent,
            finished,
        });
        let now = self.clock.now();
        for change in timers {
            match change {
                TimerChange::Schedule { name, after } => {
                    inner.timers.retain(|t| !(t.key == key && t.name == name));
                    inner.timers.push(Timer {
                        id: Uuid::new_v4(),
                        key: key.to_owned(),
                        name,
                        due: now.saturating_add(after),
                    });
                }
                TimerChange::Cancel { name } => {
                    inner.timers.retain(|t| !(t.key == key && t.name == name));
                }
            }
        }
        if finished {
            inner.timers.retain(|t| t.key != key);
        }
        Ok(())
    }
}

fn decode<P: ProcessManager>(key: &str, state: serde_json::Value) -> Result<P, ProcessError> {
    serde_json::from_value(state).map_err(|source| ProcessError::State {
        manager: P::NAME,
        key: key.to_owned(),
        source,
    })
}
