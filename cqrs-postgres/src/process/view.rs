//! The event side of a process manager: a view the projection runner drives, whose
//! "tables" are the manager's instances, commands and timers.

use cqrs_core::process::{ProcessManager, StepInput};
use cqrs_core::{EventEnvelope, EventFilter, Projection};
use sqlx::PgConnection;

use super::instances::{Cause, Reactions};
use crate::PgView;
use crate::db::{Error, Sql};

/// Reacts to each event in the batch's transaction, which moves the checkpoint: the
/// reactions' steps, states, commands and timers commit with it, or the events are read
/// again. The batch's instances are locked and loaded in one statement before its
/// events are handled, and what the reactions decided is written in a few more at the
/// end.
pub(crate) struct ProcessView<P: ProcessManager> {
    reactions: Reactions<P>,
}

impl<P: ProcessManager> ProcessView<P> {
    pub(crate) fn new() -> Self {
        Self {
            reactions: Reactions::default(),
        }
    }
}

impl<P: ProcessManager> Projection for ProcessView<P> {
    const NAME: &'static str = P::NAME;
    type Event = P::Event;
    type Context = PgConnection;
    type Error = Error;

    fn filter() -> EventFilter {
        P::filter()
    }

    async fn handle(
        &mut self,
        cx: &mut PgConnection,
        event: &EventEnvelope<P::Event>,
    ) -> Result<(), Error> {
        let Some(key) = P::correlation_key(event) else {
            return Ok(());
        };
        let input = StepInput::event(event).map_err(|error| Error::ProcessStep {
            manager: P::NAME.to_owned(),
            key: key.clone(),
            source: Box::new(error),
        })?;
        let cause = Cause {
            input,
            correlation_id: event.metadata.correlation_id.or(Some(event.event_id)),
        };
        // Locked by `prepare`; a key it did not see is locked now.
        self.reactions.lock(cx, std::slice::from_ref(&key)).await?;
        self.reactions.react(&key, &cause, |state, effects| {
            state.handle_event(event, effects);
        })?;
        Ok(())
    }
}

impl<P: ProcessManager> PgView for ProcessView<P> {
    /// A rebuild starts the manager over: instances, timers and waiting commands are
    /// dropped, and replaying the log sends the same commands with the same ids, which
    /// the command pipeline recognises as already executed.
    async fn reset(&mut self, cx: &mut PgConnection) -> Result<(), Error> {
        for (name, sql) in [
            (
                "process_reset_outbox",
                "DELETE FROM process_outbox WHERE manager = $1",
            ),
            (
                "process_reset_timers",
                "DELETE FROM process_timers WHERE manager = $1",
            ),
            (
                "process_reset_steps",
                "DELETE FROM process_steps WHERE manager = $1",
            ),
            (
                "process_reset_instances",
                "DELETE FROM process_instances WHERE manager = $1",
            ),
        ] {
            Sql::new(name, sql).bind(P::NAME).execute(&mut *cx).await?;
        }
        Ok(())
    }

    async fn prepare(
        &mut self,
        cx: &mut PgConnection,
        events: &[&EventEnvelope<P::Event>],
    ) -> Result<(), Error> {
        // A new transaction: what the last one locked is not locked any more.
        self.reactions.clear();
        let keys: Vec<String> = events
            .iter()
            .filter_map(|e| P::correlation_key(e))
            .collect();
        self.reactions.lock(cx, &keys).await
    }

    async fn flush(&mut self, cx: &mut PgConnection) -> Result<(), Error> {
        self.reactions.write(cx).await?;
        // The batch commits next: its locks go with it, so nothing of it may be reused.
        self.reactions.clear();
        Ok(())
    }

    fn discard(&mut self) {
        self.reactions.clear();
    }
}
