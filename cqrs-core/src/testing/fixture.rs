use std::collections::HashMap;
use std::fmt::Debug;

use crate::memory::{MemoryEventStore, Projector};
use crate::store::{AppendRequest, NewEvent};
use crate::{
    Aggregate, CommandError, Cqrs, Error, EventStore, Metadata, Projection, ProjectionError,
    RetryPolicy,
};

const FIXTURE_ID: &str = "fixture-aggregate";

/// Given/when/then tests for an aggregate, run through the real command pipeline on the
/// in-memory store (so events also make the round trip through their encoding).
///
/// ```
/// # use cqrs_core::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// # struct Added { n: u64 }
/// # #[derive(Debug, Command)]
/// # struct Add(u64);
/// # #[derive(Debug, PartialEq, thiserror::Error)]
/// # #[error("too big")]
/// # struct TooBig;
/// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// # #[cqrs(name = "counter", command = Add, event = Added, error = TooBig)]
/// # struct Counter { total: u64 }
/// # impl Handle<Add> for Counter {
/// #     async fn handle(&self, c: &Add, _: &()) -> Result<Vec<Added>, TooBig> {
/// #         if self.total + c.0 > 10 { return Err(TooBig) }
/// #         Ok(vec![Added { n: c.0 }])
/// #     }
/// # }
/// # impl Apply<Added> for Counter {
/// #     fn apply(&mut self, e: &Added) { self.total += e.n }
/// # }
/// use cqrs_core::testing::AggregateFixture;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// AggregateFixture::<Counter>::new()
///     .given([Added { n: 4 }])
///     .when(Add(3))
///     .await
///     .then_expect_events([Added { n: 3 }]);
///
/// AggregateFixture::<Counter>::new()
///     .given([Added { n: 9 }])
///     .when(Add(3))
///     .await
///     .then_expect_error(TooBig);
/// # });
/// ```
pub struct AggregateFixture<A: Aggregate> {
    services: A::Services,
    given: Vec<A::Event>,
}

impl<A: Aggregate> Debug for AggregateFixture<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateFixture")
            .field("aggregate", &A::TYPE)
            .field("given", &self.given)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Default for AggregateFixture<A>
where
    A::Services: Default,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> AggregateFixture<A>
where
    A::Services: Default,
{
    /// A fixture with default services and no history.
    #[must_use]
    pub fn new() -> Self {
        Self::with_services(A::Services::default())
    }
}

impl<A: Aggregate> AggregateFixture<A> {
    /// A fixture whose handler consults `services`.
    #[must_use]
    pub fn with_services(services: A::Services) -> Self {
        Self {
            services,
            given: Vec::new(),
        }
    }

    /// The aggregate's history before the command.
    #[must_use]
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        self.given.extend(events);
        self
    }

    /// Runs the command through the pipeline and captures what happened.
    ///
    /// # Panics
    ///
    /// When the given events cannot be stored (they do not encode).
    pub async fn when(self, command: A::Command) -> FixtureResult<A> {
        let store = MemoryEventStore::new();
        if !self.given.is_empty() {
            let history = self
                .given
                .iter()
                .map(|event| NewEvent::from_event(event, Metadata::default()))
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|error| panic!("the given events do not encode: {error}"));
            store
                .append(AppendRequest::new(A::TYPE, FIXTURE_ID, 0, history))
                .await
                .unwrap_or_else(|error| panic!("the given events cannot be stored: {error}"));
        }
        let cqrs = Cqrs::<A, _>::builder(store)
            .services(self.services)
            .retry(RetryPolicy::never())
            .build();
        let result = cqrs
            .execute(FIXTURE_ID, command)
            .await
            .map(|outcome| outcome.events);
        let state = cqrs.load(FIXTURE_ID).await.map(|loaded| loaded.state);
        FixtureResult { result, state }
    }
}

/// What a command did in an [`AggregateFixture`].
pub struct FixtureResult<A: Aggregate> {
    result: Result<Vec<A::Event>, CommandError<A::Error>>,
    state: Result<A, Error>,
}

impl<A: Aggregate> Debug for FixtureResult<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixtureResult")
            .field("result", &self.result)
            .field("state", &self.state)
            .finish()
    }
}

impl<A: Aggregate> FixtureResult<A> {
    /// Asserts that the command recorded exactly these events, in order.
    ///
    /// # Panics
    ///
    /// When the command failed or recorded other events.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> Self
    where
        A::Event: PartialEq,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match &self.result {
            Ok(events) => assert_eq!(
                events, &expected,
                "the command recorded other events than expected"
            ),
            Err(error) => panic!("expected events {expected:?}, but the command failed: {error:?}"),
        }
        self
    }

    /// Asserts that the aggregate refused the command with exactly this error.
    ///
    /// # Panics
    ///
    /// When the command succeeded or failed differently.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error) -> Self
    where
        A::Error: PartialEq,
    {
        match &self.result {
            Err(CommandError::Rejected(error)) => {
                assert_eq!(
                    error, &expected,
                    "the command was refused for another reason"
                );
            }
            Err(other) => panic!("expected rejection {expected:?}, got {other:?}"),
            Ok(events) => {
                panic!("expected rejection {expected:?}, but the command recorded {events:?}")
            }
        }
        self
    }

    /// Asserts that the aggregate refused the command with an error `check` accepts.
    ///
    /// # Panics
    ///
    /// When the command succeeded, failed otherwise, or `check` returns `false`.
    #[track_caller]
    pub fn then_expect_error_matches(self, check: impl FnOnce(&A::Error) -> bool) -> Self {
        match &self.result {
            Err(CommandError::Rejected(error)) => {
                assert!(check(error), "the rejection {error:?} did not match");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        self
    }

    /// Asserts on the aggregate's state after the command.
    ///
    /// # Panics
    ///
    /// When the state could not be loaded, or as `check` does.
    #[track_caller]
    pub fn then_state(self, check: impl FnOnce(&A)) -> Self {
        match &self.state {
            Ok(state) => check(state),
            Err(error) => panic!("the state could not be loaded: {error:?}"),
        }
        self
    }

    /// The raw result: the recorded events or the error.
    pub fn result(&self) -> &Result<Vec<A::Event>, CommandError<A::Error>> {
        &self.result
    }
}

/// Given/then tests for a projection held in memory: the given events are stored in the
/// in-memory store and projected through the real runner (filter, decoding, order).
///
/// ```
/// # use std::convert::Infallible;
/// use cqrs_core::{Event, EventEnvelope, Project, Projection};
///
/// #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, Event)]
/// struct Added {
///     n: u64,
/// }
///
/// #[derive(Debug, Default, Projection)]
/// #[cqrs(name = "sum", event = Added)]
/// struct Sum(u64);
///
/// impl Project for Sum {
///     async fn project(&mut self, _: &mut (), e: &EventEnvelope<Added>) -> Result<(), Infallible> {
///         self.0 += e.payload.n;
///         Ok(())
///     }
/// }
///
/// use cqrs_core::testing::ProjectionFixture;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let view = ProjectionFixture::new(Sum::default())
///     .given("counter", "c-1", [Added { n: 2 }, Added { n: 3 }])
///     .given("counter", "c-2", [Added { n: 10 }])
///     .run()
///     .await?;
/// assert_eq!(view.0, 15);
/// # Ok::<(), cqrs_core::ProjectionError>(())
/// # }).unwrap();
/// ```
pub struct ProjectionFixture<P: Projection> {
    projection: P,
    given: Vec<(String, String, P::Event)>,
}

impl<P: Projection> Debug for ProjectionFixture<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionFixture")
            .field("projection", &P::NAME)
            .field("given", &self.given)
            .finish_non_exhaustive()
    }
}

impl<P: Projection<Context = ()>> ProjectionFixture<P> {
    /// A fixture around a fresh projection.
    pub fn new(projection: P) -> Self {
        Self {
            projection,
            given: Vec::new(),
        }
    }

    /// Events of one stream, appended after those already given (in this order in the
    /// global log).
    #[must_use]
    pub fn given(
        mut self,
        stream_type: &str,
        stream_id: &str,
        events: impl IntoIterator<Item = P::Event>,
    ) -> Self {
        self.given.extend(
            events
                .into_iter()
                .map(|event| (stream_type.to_owned(), stream_id.to_owned(), event)),
        );
        self
    }

    /// Stores the given events, projects them, and returns the projection.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] holding an [`Error::Encode`] for a given event that
    /// does not encode, and the errors of [`Projector::catch_up`] (a failing handler is
    /// [`ProjectionError::Handler`]).
    pub async fn run(self) -> Result<P, ProjectionError> {
        let store = MemoryEventStore::new();
        let mut versions: HashMap<(String, String), u64> = HashMap::new();
        for (stream_type, stream_id, event) in &self.given {
            let version = versions
                .entry((stream_type.clone(), stream_id.clone()))
                .or_default();
            let new = NewEvent::from_event(event, Metadata::default())?;
            store
                .append(AppendRequest::new(
                    stream_type.clone(),
                    stream_id.clone(),
                    *version,
                    vec![new],
                ))
                .await?;
            *version += 1;
        }
        let projector = Projector::new(store, self.projection);
        projector.catch_up().await?;
        match projector.into_projection() {
            Ok(projection) => Ok(projection),
            Err(_) => unreachable!("the fixture's projector has no other handle"),
        }
    }

    /// Stores and projects the given events, then runs `check` on the view.
    ///
    /// # Panics
    ///
    /// When projecting fails, or as `check` does.
    #[track_caller]
    pub fn then(self, check: impl FnOnce(&P)) -> impl std::future::Future<Output = ()> {
        let location = std::panic::Location::caller();
        async move {
            match self.run().await {
                Ok(view) => check(&view),
                Err(error) => panic!("projecting the given events failed ({location}): {error:?}"),
            }
        }
    }
}
