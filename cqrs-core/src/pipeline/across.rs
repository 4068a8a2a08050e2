//! A command that decides over two aggregates and appends to both as one atomic unit.

use tracing::{Instrument, debug};

use super::run::Ids;
use super::{CommandError, CommandOutcome, Cqrs, Loaded};
use crate::store::{AppendOutcome, AppendRequest, AtomicAppendRequest, NewEvent};
use crate::{Aggregate, CommandMetadata, Error, EventStore, Metadata};

/// The outcomes of a command over two aggregates: one per aggregate, in the order given.
pub type AcrossOutcome<EA, EB> = (CommandOutcome<EA>, CommandOutcome<EB>);

/// What each side of a decision over two aggregates records.
pub type Decided<EA, EB> = (Vec<EA>, Vec<EB>);

impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    S: EventStore + ?Sized,
{
    /// Runs a decision over aggregate `id` of this pipeline and aggregate `other_id` of
    /// `other` (which may be this pipeline, for two aggregates of one type): both are
    /// loaded, `decide` sees both states and returns the events of each, and those are
    /// appended as one [atomic unit](EventStore::append_atomic): both streams at the
    /// versions `decide` saw, or neither. On a conflict on either stream, both are loaded
    /// again and `decide` runs again, as this pipeline's
    /// [`RetryPolicy`](crate::RetryPolicy) allows; `decide` must therefore be pure.
    ///
    /// A side that records no events is not appended to, so its version is not checked:
    /// when the rule depends on an aggregate, record an event on it (the reservation
    /// pattern). A command id in `metadata` names the unit: sent again, nothing is
    /// written and the original outcomes come back with `duplicate: true`.
    ///
    /// ```
    /// # use cqrs_core::prelude::*;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    /// # enum AccountEvent { Deposited { amount: u64 }, Withdrawn { amount: u64 } }
    /// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
    /// # enum AccountCommand { Deposit { amount: u64 } }
    /// # #[derive(Debug, thiserror::Error)]
    /// # #[error("insufficient funds")]
    /// # struct Insufficient;
    /// # #[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
    /// # #[cqrs(name = "account", command = AccountCommand, event = AccountEvent, error = Insufficient)]
    /// # struct Account { balance: u64 }
    /// # impl Apply<AccountEvent> for Account {
    /// #     fn apply(&mut self, e: &AccountEvent) {
    /// #         match e { AccountEvent::Deposited { amount } => self.balance += amount,
    /// #                   AccountEvent::Withdrawn { amount } => self.balance -= amount }
    /// #     }
    /// # }
    /// # impl Handle<AccountCommand> for Account {
    /// #     async fn handle(&self, c: &AccountCommand, _: &()) -> Result<Vec<AccountEvent>, Insufficient> {
    /// #         let AccountCommand::Deposit { amount } = c;
    /// #         Ok(vec![AccountEvent::Deposited { amount: *amount }])
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let accounts = Cqrs::<Account, _>::new(MemoryEventStore::new());
    /// accounts.execute("a-1", AccountCommand::Deposit { amount: 100 }).await?;
    /// // A transfer: money leaves one account and arrives in the other, or neither.
    /// let (from, to) = accounts
    ///     .execute_across("a-1", &accounts, "a-2", CommandMetadata::default(), |a, _b| {
    ///         if a.balance < 30 {
    ///             return Err(Insufficient);
    ///         }
    ///         Ok((
    ///             vec![AccountEvent::Withdrawn { amount: 30 }],
    ///             vec![AccountEvent::Deposited { amount: 30 }],
    ///         ))
    ///     })
    ///     .await?;
    /// assert_eq!((from.stream_version, to.stream_version), (2, 1));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`CommandError::Rejected`] with `decide`'s refusal (nothing written);
    /// [`CommandError::Conflict`] naming the aggregate whose stream kept changing once
    /// the retries ran out; [`CommandError::Store`] for the storage's failures (among
    /// them [`Error::InvalidAppend`] for the same stream on both sides, and
    /// [`Error::Unsupported`] for a store without atomic appends).
    pub async fn execute_across<B, E, F>(
        &self,
        id: &str,
        other: &Cqrs<B, S>,
        other_id: &str,
        metadata: CommandMetadata,
        decide: F,
    ) -> Result<AcrossOutcome<A::Event, B::Event>, CommandError<E>>
    where
        B: Aggregate,
        E: std::fmt::Display,
        F: Fn(&A, &B) -> Result<Decided<A::Event, B::Event>, E>,
    {
        let span = tracing::debug_span!(
            "cqrs.across",
            aggregate_type = A::TYPE,
            aggregate_id = %id,
            other_type = B::TYPE,
            other_id = %other_id,
        );
        self.across(id, other, other_id, metadata, decide)
            .instrument(span)
            .await
    }

    async fn across<B, E, F>(
        &self,
        id: &str,
        other: &Cqrs<B, S>,
        other_id: &str,
        metadata: CommandMetadata,
        decide: F,
    ) -> Result<AcrossOutcome<A::Event, B::Event>, CommandError<E>>
    where
        B: Aggregate,
        E: std::fmt::Display,
        F: Fn(&A, &B) -> Result<Decided<A::Event, B::Event>, E>,
    {
        let (ids, event_metadata) = Ids::of(metadata);
        self.stats.command();
        let mut retries = 0;
        loop {
            let mine = self.current(id).await?;
            let theirs = other.current(other_id).await?;
            let (events, other_events) = match decide(&mine.state, &theirs.state) {
                Ok(decided) => decided,
                Err(refusal) => {
                    self.stats.rejected();
                    debug!(error = %refusal, "command rejected");
                    self.keep(id, mine.state, mine.version);
                    other.keep(other_id, theirs.state, theirs.version);
                    return Err(CommandError::Rejected(refusal));
                }
            };
            let sides = [
                side::<A>(id, mine.version, &events, &event_metadata)?,
                side::<B>(other_id, theirs.version, &other_events, &event_metadata)?,
            ];
            let appends: Vec<AppendRequest> = sides.iter().flatten().cloned().collect();
            if appends.is_empty() {
                self.keep(id, mine.state, mine.version);
                other.keep(other_id, theirs.state, theirs.version);
                return Ok((
                    nothing(mine.version, ids, retries),
                    nothing(theirs.version, ids, retries),
                ));
            }
            let mut unit = AtomicAppendRequest::new(appends);
            unit.command_id = ids.key;
            match self.counted(self.store.append_atomic(unit)).await {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    let mine_outcome = sides[0].as_ref().and_then(|_| outcomes.next());
                    let their_outcome = sides[1].as_ref().and_then(|_| outcomes.next());
                    let duplicate = mine_outcome.or(their_outcome).is_some_and(|o| o.duplicate);
                    if duplicate {
                        // The original unit's events are what the outcomes report.
                        let first = match mine_outcome {
                            Some(o) => self.duplicate(id, o, ids).await?,
                            None => nothing(mine.version, ids, 0),
                        };
                        let second = match their_outcome {
                            Some(o) => other.duplicate(other_id, o, ids).await?,
                            None => nothing(theirs.version, ids, 0),
                        };
                        return Ok((first, second));
                    }
                    return Ok((
                        self.settled(id, mine, events, mine_outcome, ids, retries),
                        other.settled(other_id, theirs, other_events, their_outcome, ids, retries),
                    ));
                }
                Err(Error::Conflict {
                    stream_type,
                    stream_id,
                    ..
                }) => {
                    if self.retried(&mut retries, &stream_id).await {
                        continue;
                    }
                    let aggregate_type = if stream_type == A::TYPE && stream_id == id {
                        A::TYPE
                    } else {
                        B::TYPE
                    };
                    return Err(CommandError::Conflict {
                        aggregate_type,
                        aggregate_id: stream_id,
                        attempts: retries + 1,
                    });
                }
                Err(error) => return Err(CommandError::Store(error)),
            }
        }
    }

    /// The outcome of one side of a unit that was written: the state it leads to is
    /// kept (snapshots are left to the aggregate's own commands).
    fn settled(
        &self,
        id: &str,
        loaded: Loaded<A>,
        events: Vec<A::Event>,
        outcome: Option<AppendOutcome>,
        ids: Ids,
        retries: u32,
    ) -> CommandOutcome<A::Event> {
        let Some(outcome) = outcome else {
            self.keep(id, loaded.state, loaded.version);
            return nothing(loaded.version, ids, retries);
        };
        let mut state = loaded.state;
        for event in &events {
            state.apply_event(event);
        }
        self.keep(id, state, outcome.stream_version);
        CommandOutcome {
            stream_version: outcome.stream_version,
            events,
            position: Some(outcome.position),
            command_id: ids.command,
            correlation_id: ids.correlation,
            duplicate: false,
            retries,
        }
    }
}

impl<A, S> Cqrs<A, S>
where
    A: Aggregate,
    S: EventStore + ?Sized,
{
    /// Runs a decision over several aggregates of this pipeline, as
    /// [`execute_across`](Self::execute_across) does over two: all of `ids` are loaded,
    /// `decide` sees their states (in the order of `ids`) and returns the events of each
    /// (one list per id, in the same order), and those are appended as one atomic unit,
    /// retried on a conflict on any of them.
    ///
    /// ```
    /// # use cqrs_core::prelude::*;
    /// # use example_types::*;
    /// # mod example_types {
    /// #     use cqrs_core::prelude::*;
    /// #     use serde::{Deserialize, Serialize};
    /// #     #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
    /// #     pub enum Moved { In { amount: i64 }, Out { amount: i64 } }
    /// #     #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
    /// #     pub enum Noop { Noop }
    /// #     #[derive(Debug, thiserror::Error)]
    /// #     #[error("short")]
    /// #     pub struct Short;
    /// #     #[derive(Debug, Default, Clone, Serialize, Deserialize, Aggregate)]
    /// #     #[cqrs(name = "pot", command = Noop, event = Moved, error = Short)]
    /// #     pub struct Pot { pub amount: i64 }
    /// #     impl Apply<Moved> for Pot {
    /// #         fn apply(&mut self, e: &Moved) {
    /// #             match e { Moved::In { amount } => self.amount += amount, Moved::Out { amount } => self.amount -= amount }
    /// #         }
    /// #     }
    /// #     impl Handle<Noop> for Pot {
    /// #         async fn handle(&self, _: &Noop, (): &()) -> Result<Vec<Moved>, Short> { Ok(vec![]) }
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pots = Cqrs::<Pot, _>::new(MemoryEventStore::new());
    /// // Split 30 from `a` between `b` and `c`, or nothing.
    /// let outcomes = pots
    ///     .execute_many(&["a", "b", "c"], CommandMetadata::default(), |states| {
    ///         let _ = states;
    ///         Ok::<_, Short>(vec![
    ///             vec![Moved::Out { amount: 30 }],
    ///             vec![Moved::In { amount: 10 }],
    ///             vec![Moved::In { amount: 20 }],
    ///         ])
    ///     })
    ///     .await?;
    /// assert_eq!(outcomes.len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`execute_across`](Self::execute_across); also
    /// [`CommandError::Store`] with [`Error::InvalidAppend`] when `decide` returns a
    /// number of lists other than the number of ids, or an id appears twice.
    pub async fn execute_many<E, F>(
        &self,
        ids: &[&str],
        metadata: CommandMetadata,
        decide: F,
    ) -> Result<Vec<CommandOutcome<A::Event>>, CommandError<E>>
    where
        E: std::fmt::Display,
        F: Fn(&[&A]) -> Result<Vec<Vec<A::Event>>, E>,
    {
        let span = tracing::debug_span!(
            "cqrs.many",
            aggregate_type = A::TYPE,
            aggregates = ids.len(),
        );
        self.many(ids, metadata, decide).instrument(span).await
    }

    async fn many<E, F>(
        &self,
        ids: &[&str],
        metadata: CommandMetadata,
        decide: F,
    ) -> Result<Vec<CommandOutcome<A::Event>>, CommandError<E>>
    where
        E: std::fmt::Display,
        F: Fn(&[&A]) -> Result<Vec<Vec<A::Event>>, E>,
    {
        let (ids_of, event_metadata) = Ids::of(metadata);
        self.stats.command();
        let mut retries = 0;
        loop {
            let mut loaded = Vec::with_capacity(ids.len());
            for id in ids {
                loaded.push(self.current(id).await?);
            }
            let states: Vec<&A> = loaded.iter().map(|l| &l.state).collect();
            let decided = decide(&states);
            drop(states);
            let keep_all = |loaded: Vec<Loaded<A>>| {
                for (id, l) in ids.iter().zip(loaded) {
                    self.keep(id, l.state, l.version);
                }
            };
            let events = match decided {
                Ok(events) if events.len() == ids.len() => events,
                Ok(_) => {
                    keep_all(loaded);
                    return Err(CommandError::Store(Error::InvalidAppend {
                        stream_type: A::TYPE.to_owned(),
                        stream_id: ids.join(","),
                        reason: "the decision returned a number of event lists other than the \
                                 number of aggregates",
                    }));
                }
                Err(refusal) => {
                    self.stats.rejected();
                    debug!(error = %refusal, "command rejected");
                    keep_all(loaded);
                    return Err(CommandError::Rejected(refusal));
                }
            };
            let sides = ids
                .iter()
                .zip(&loaded)
                .zip(&events)
                .map(|((id, l), events)| side::<A>(id, l.version, events, &event_metadata))
                .collect::<Result<Vec<_>, _>>()?;
            let appends: Vec<AppendRequest> = sides.iter().flatten().cloned().collect();
            if appends.is_empty() {
                let outcomes = loaded
                    .iter()
                    .map(|l| nothing(l.version, ids_of, retries))
                    .collect();
                keep_all(loaded);
                return Ok(outcomes);
            }
            let mut unit = AtomicAppendRequest::new(appends);
            unit.command_id = ids_of.key;
            match self.counted(self.store.append_atomic(unit)).await {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    let mut results = Vec::with_capacity(ids.len());
                    let duplicate_run = sides.iter().any(Option::is_some)
                        && outcomes.as_slice().first().is_some_and(|o| o.duplicate);
                    for (((id, l), events), side) in ids.iter().zip(loaded).zip(events).zip(&sides)
                    {
                        let outcome = side.as_ref().and_then(|_| outcomes.next());
                        results.push(match outcome {
                            Some(o) if duplicate_run => self.duplicate(id, o, ids_of).await?,
                            outcome => self.settled(id, l, events, outcome, ids_of, retries),
                        });
                    }
                    return Ok(results);
                }
                Err(Error::Conflict { stream_id, .. }) => {
                    if self.retried(&mut retries, &stream_id).await {
                        continue;
                    }
                    return Err(CommandError::Conflict {
                        aggregate_type: A::TYPE,
                        aggregate_id: stream_id,
                        attempts: retries + 1,
                    });
                }
                Err(error) => return Err(CommandError::Store(error)),
            }
        }
    }
}

/// The append of one side, if it records anything.
fn side<X: Aggregate>(
    id: &str,
    version: u64,
    events: &[X::Event],
    metadata: &Metadata,
) -> Result<Option<AppendRequest>, Error> {
    if events.is_empty() {
        return Ok(None);
    }
    let events = events
        .iter()
        .map(|event| NewEvent::from_event(event, metadata.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(AppendRequest::new(X::TYPE, id, version, events)))
}

/// The outcome of a side that recorded nothing.
fn nothing<E>(version: u64, ids: Ids, retries: u32) -> CommandOutcome<E> {
    CommandOutcome {
        stream_version: version,
        events: Vec::new(),
        position: None,
        command_id: ids.command,
        correlation_id: ids.correlation,
        duplicate: false,
        retries,
    }
}
