//! Given/when/then tests for process managers: [`ProcessFixture`].

use std::fmt::Debug;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use crate::process::{Effects, ProcessManager, TimerChange};
use crate::{Event, EventEnvelope, Metadata, Position};

const STREAM_TYPE: &str = "fixture";
const STREAM_ID: &str = "fixture-1";

/// Given/when/then tests for one instance of a process manager: given events it heard,
/// when an event arrives (or time passes, or a command it sent is refused), then these
/// commands, these timers, this state.
///
/// Events make the round trip through their encoding, and events whose
/// [`correlation_key`](ProcessManager::correlation_key) is `None` are passed by, as a
/// runner does. Time is the fixture's own: it starts at zero and moves only in
/// [`when_time_passes`](Self::when_time_passes).
///
/// ```
/// # use std::time::Duration;
/// # use cqrs_core::prelude::*;
/// # use cqrs_core::process::Effects;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// # enum OrderEvent { Placed { order: String }, Paid { order: String } }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # enum Send { Ship(String), Cancel(String) }
/// # #[derive(Debug, Default, Serialize, Deserialize, ProcessManager)]
/// # #[cqrs(name = "payment_window", event = OrderEvent, command = Send)]
/// # struct PaymentWindow { order: String }
/// # impl React for PaymentWindow {
/// #     fn correlate(event: &EventEnvelope<OrderEvent>) -> Option<String> {
/// #         match &event.payload { OrderEvent::Placed { order } | OrderEvent::Paid { order } => Some(order.clone()) }
/// #     }
/// #     fn react(&mut self, event: &EventEnvelope<OrderEvent>, effects: &mut Effects<Send>) {
/// #         match &event.payload {
/// #             OrderEvent::Placed { order } => { self.order = order.clone(); effects.schedule("unpaid", Duration::from_secs(1800)); }
/// #             OrderEvent::Paid { order } => { effects.send(Send::Ship(order.clone())); effects.finish(); }
/// #         }
/// #     }
/// #     fn on_timer(&mut self, _: &str, effects: &mut Effects<Send>) {
/// #         effects.send(Send::Cancel(self.order.clone()));
/// #         effects.finish();
/// #     }
/// # }
/// use cqrs_core::testing::ProcessFixture;
///
/// let placed = OrderEvent::Placed { order: "o-1".into() };
///
/// ProcessFixture::<PaymentWindow>::new()
///     .when(placed.clone())
///     .then_no_commands()
///     .then_timers([("unpaid", Duration::from_secs(1800))]);
///
/// ProcessFixture::<PaymentWindow>::new()
///     .given([placed.clone()])
///     .when(OrderEvent::Paid { order: "o-1".into() })
///     .then_commands([Send::Ship("o-1".into())])
///     .then_finished();
///
/// ProcessFixture::<PaymentWindow>::new()
///     .given([placed])
///     .when_time_passes(Duration::from_secs(1800))
///     .then_commands([Send::Cancel("o-1".into())])
///     .then_timers([]);
/// ```
pub struct ProcessFixture<P: ProcessManager> {
    instance: Instance<P>,
    stream: (String, String),
}

impl<P: ProcessManager> Debug for ProcessFixture<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessFixture")
            .field("manager", &P::NAME)
            .field("now", &self.instance.now)
            .field("finished", &self.instance.finished)
            .finish_non_exhaustive()
    }
}

struct Instance<P: ProcessManager> {
    state: P,
    key: Option<String>,
    finished: bool,
    now: Duration,
    /// Pending timers: name and when due.
    timers: Vec<(String, Duration)>,
    events: u64,
}

impl<P: ProcessManager> Default for ProcessFixture<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: ProcessManager> ProcessFixture<P> {
    /// A fixture around a new instance.
    #[must_use]
    pub fn new() -> Self {
        Self {
            instance: Instance {
                state: P::default(),
                key: None,
                finished: false,
                now: Duration::ZERO,
                timers: Vec::new(),
                events: 0,
            },
            stream: (STREAM_TYPE.to_owned(), STREAM_ID.to_owned()),
        }
    }

    /// The stream the next given or `when` events are recorded in (default
    /// `fixture`/`fixture-1`), for a manager that reads where its events come from.
    #[must_use]
    pub fn in_stream(mut self, stream_type: &str, stream_id: &str) -> Self {
        self.stream = (stream_type.to_owned(), stream_id.to_owned());
        self
    }

    /// Events the instance already heard; what it decided then is forgotten, but its
    /// timers stay pending.
    ///
    /// # Panics
    ///
    /// When an event does not round-trip through its encoding, or events belong to
    /// different instances.
    #[must_use]
    #[track_caller]
    pub fn given(mut self, events: impl IntoIterator<Item = P::Event>) -> Self {
        for event in events {
            let envelope = self.envelope(&event);
            drop(self.instance.hear(&envelope));
        }
        self
    }

    /// An event arrives.
    ///
    /// # Panics
    ///
    /// As [`given`](Self::given).
    #[track_caller]
    pub fn when(mut self, event: P::Event) -> ProcessOutcome<P> {
        let envelope = self.envelope(&event);
        let effects = self.instance.hear(&envelope);
        self.instance.outcome(effects)
    }

    /// Time passes: every timer due by then fires, soonest first (those a firing timer
    /// schedules too, when due in the window).
    #[must_use]
    pub fn when_time_passes(mut self, by: Duration) -> ProcessOutcome<P> {
        let until = self.instance.now.saturating_add(by);
        let mut all = Effects::new();
        loop {
            let due = self
                .instance
                .timers
                .iter()
                .enumerate()
                .filter(|(_, (_, due))| *due <= until)
                .min_by_key(|(_, (_, due))| *due)
                .map(|(i, _)| i);
            let Some(i) = due else { break };
            let (name, due) = self.instance.timers.remove(i);
            self.instance.now = due;
            let effects = self
                .instance
                .react(|state, effects| state.handle_timer(&name, effects));
            merge(&mut all, effects);
            if self.instance.finished {
                break;
            }
        }
        self.instance.now = until;
        self.instance.outcome(all)
    }

    /// A command the instance sent is refused by its aggregate.
    #[must_use]
    pub fn when_refused(mut self, command: P::Command, reason: &str) -> ProcessOutcome<P> {
        let effects = self
            .instance
            .react(|state, effects| state.handle_refusal(&command, reason, effects));
        self.instance.outcome(effects)
    }

    #[track_caller]
    fn envelope(&mut self, event: &P::Event) -> EventEnvelope<P::Event> {
        let encoded = match event.encode() {
            Ok(encoded) => encoded,
            Err(error) => panic!("the event {event:?} does not encode: {error}"),
        };
        let payload = match P::Event::decode(event.event_type(), event.schema_version(), encoded) {
            Ok(payload) => payload,
            Err(error) => panic!("the event {event:?} does not decode after encoding: {error}"),
        };
        self.instance.events += 1;
        EventEnvelope {
            event_id: Uuid::new_v4(),
            stream_type: self.stream.0.clone(),
            stream_id: self.stream.1.clone(),
            stream_version: self.instance.events,
            position: Position::new(self.instance.events, self.instance.events),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            metadata: Metadata::default(),
            recorded_at: Utc::now(),
            payload,
        }
    }
}

impl<P: ProcessManager> Instance<P> {
    #[track_caller]
    fn hear(&mut self, event: &EventEnvelope<P::Event>) -> Effects<P::Command> {
        let Some(key) = P::correlation_key(event) else {
            return Effects::new();
        };
        match &self.key {
            Some(known) if *known != key => panic!(
                "the fixture runs one instance: {:?} belongs to {key:?}, the events before it to \
                 {known:?}",
                event.payload
            ),
            _ => self.key = Some(key),
        }
        self.react(|state, effects| state.handle_event(event, effects))
    }

    fn react(
        &mut self,
        reaction: impl FnOnce(&mut P, &mut Effects<P::Command>),
    ) -> Effects<P::Command> {
        if self.finished {
            return Effects::new();
        }
        let mut effects = Effects::new();
        reaction(&mut self.state, &mut effects);
        for change in effects.timers() {
            match change {
                TimerChange::Schedule { name, after } => {
                    self.timers.retain(|(pending, _)| pending != name);
                    self.timers
                        .push((name.clone(), self.now.saturating_add(*after)));
                }
                TimerChange::Cancel { name } => self.timers.retain(|(pending, _)| pending != name),
            }
        }
        if effects.is_finished() {
            self.finished = true;
            self.timers.clear();
        }
        effects
    }

    fn outcome(self, effects: Effects<P::Command>) -> ProcessOutcome<P> {
        let mut timers: Vec<(String, Duration)> = self
            .timers
            .iter()
            .map(|(name, due)| (name.clone(), due.saturating_sub(self.now)))
            .collect();
        timers.sort();
        ProcessOutcome {
            state: self.state,
            finished: self.finished,
            timers,
            effects,
        }
    }
}

fn merge<C>(all: &mut Effects<C>, effects: Effects<C>) {
    let (commands, timers, finished) = effects.into_parts();
    for command in commands {
        all.send(command);
    }
    for change in timers {
        match change {
            TimerChange::Schedule { name, after } => all.schedule(name, after),
            TimerChange::Cancel { name } => all.cancel(name),
        }
    }
    if finished {
        all.finish();
    }
}

/// What the instance did in a [`ProcessFixture`]'s `when`, with checks that panic with a
/// readable message.
pub struct ProcessOutcome<P: ProcessManager> {
    state: P,
    finished: bool,
    timers: Vec<(String, Duration)>,
    effects: Effects<P::Command>,
}

impl<P: ProcessManager> Debug for ProcessOutcome<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessOutcome")
            .field("commands", &self.effects.commands())
            .field("timers", &self.timers)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<P: ProcessManager> ProcessOutcome<P> {
    /// Checks the commands sent, in order.
    ///
    /// # Panics
    ///
    /// When they differ.
    #[track_caller]
    pub fn then_commands(self, expected: impl IntoIterator<Item = P::Command>) -> Self
    where
        P::Command: PartialEq,
    {
        let expected: Vec<P::Command> = expected.into_iter().collect();
        assert!(
            self.effects.commands() == expected.as_slice(),
            "{} sent {:#?}\nexpected {:#?}",
            P::NAME,
            self.effects.commands(),
            expected
        );
        self
    }

    /// Checks that no command was sent.
    ///
    /// # Panics
    ///
    /// When one was.
    #[track_caller]
    pub fn then_no_commands(self) -> Self {
        assert!(
            self.effects.commands().is_empty(),
            "{} sent {:#?}, expected none",
            P::NAME,
            self.effects.commands()
        );
        self
    }

    /// Checks the pending timers afterwards: name and time left (in any order).
    ///
    /// # Panics
    ///
    /// When they differ.
    #[track_caller]
    pub fn then_timers<'a>(self, expected: impl IntoIterator<Item = (&'a str, Duration)>) -> Self {
        let mut expected: Vec<(String, Duration)> = expected
            .into_iter()
            .map(|(name, left)| (name.to_owned(), left))
            .collect();
        expected.sort();
        assert!(
            self.timers == expected,
            "{} has pending timers {:?}\nexpected {:?}",
            P::NAME,
            self.timers,
            expected
        );
        self
    }

    /// Checks that the process finished.
    ///
    /// # Panics
    ///
    /// When it did not.
    #[track_caller]
    pub fn then_finished(self) -> Self {
        assert!(self.finished, "{} did not finish", P::NAME);
        self
    }

    /// Runs `check` on the state afterwards.
    pub fn then_state(self, check: impl FnOnce(&P)) -> Self {
        check(&self.state);
        self
    }

    /// The commands sent, in order.
    #[must_use]
    pub fn commands(&self) -> &[P::Command] {
        self.effects.commands()
    }

    /// The state afterwards.
    #[must_use]
    pub fn state(&self) -> &P {
        &self.state
    }
}
