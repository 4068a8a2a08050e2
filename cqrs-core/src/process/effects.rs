//! What a reaction decides, and the clock tests move by hand.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What a reaction of a process manager decides: commands to send, timers to schedule or
/// cancel, and whether the process is over.
///
/// ```
/// use std::time::Duration;
///
/// use cqrs_core::process::{Effects, TimerChange};
///
/// let mut effects = Effects::new();
/// effects.send("reserve stock");
/// effects.schedule("deadline", Duration::from_secs(60));
/// assert_eq!(effects.commands(), ["reserve stock"]);
/// assert_eq!(
///     effects.timers(),
///     [TimerChange::Schedule { name: "deadline".into(), after: Duration::from_secs(60) }]
/// );
/// assert!(!effects.is_finished());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effects<C> {
    commands: Vec<C>,
    timers: Vec<TimerChange>,
    finished: bool,
}

impl<C> Default for Effects<C> {
    fn default() -> Self {
        Self {
            commands: Vec::new(),
            timers: Vec::new(),
            finished: false,
        }
    }
}

/// A change to an instance's timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerChange {
    /// Fire timer `name` after `after` (from when the reaction is carried out),
    /// replacing a pending timer of that name.
    Schedule {
        /// The timer's name within its instance.
        name: String,
        /// How long from now.
        after: Duration,
    },
    /// Drop the pending timer `name`, if any.
    Cancel {
        /// The timer's name within its instance.
        name: String,
    },
}

impl<C> Effects<C> {
    /// No effects.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends a command, after those sent before it (the commands of one instance go out
    /// in order, each once the one before it was accepted or refused).
    pub fn send(&mut self, command: C) {
        self.commands.push(command);
    }

    /// Fires timer `name` after `after`, replacing a pending timer of that name.
    pub fn schedule(&mut self, name: impl Into<String>, after: Duration) {
        self.timers.push(TimerChange::Schedule {
            name: name.into(),
            after,
        });
    }

    /// Drops the pending timer `name`, if any.
    pub fn cancel(&mut self, name: impl Into<String>) {
        self.timers.push(TimerChange::Cancel { name: name.into() });
    }

    /// Ends the process: its state and pending timers are dropped, and later events for
    /// its key are passed by. Commands sent by this reaction still go out.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The commands to send, in order.
    #[must_use]
    pub fn commands(&self) -> &[C] {
        &self.commands
    }

    /// The timer changes, in order.
    #[must_use]
    pub fn timers(&self) -> &[TimerChange] {
        &self.timers
    }

    /// Whether the process ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The commands and timer changes, taken out.
    #[must_use]
    pub fn into_parts(self) -> (Vec<C>, Vec<TimerChange>, bool) {
        (self.commands, self.timers, self.finished)
    }
}

/// A clock moved by hand, for running process managers' timers in tests: time stands
/// still until [`advance`](Self::advance). Clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<Mutex<Duration>>);

impl ManualClock {
    /// A clock at zero.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.saturating_add(by);
    }

    /// The time since the clock was made.
    #[must_use]
    pub fn now(&self) -> Duration {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
