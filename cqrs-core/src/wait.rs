//! Read-your-writes: a [`Token`] made from the commands a client ran, and the one
//! interface every projection runner offers to wait on it, [`ReadYourWrites`].

use std::future::Future;
use std::time::Duration;

use crate::{CommandOutcome, Position, Projection, ProjectionError};

/// How far a reader needs a view to be: the position of the last event a client wrote,
/// or of the last of several commands' events.
///
/// ```
/// use cqrs_core::{Position, Token};
///
/// let token = Token::from(Position::new(7, 3)).join(Position::new(9, 1));
/// assert_eq!(token.position(), Position::new(9, 1));
/// let none = Token::default();
/// assert_eq!(none.position(), Position::START, "nothing to wait for");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(Position);

impl Token {
    /// The position a view must have passed.
    #[must_use]
    pub fn position(self) -> Position {
        self.0
    }

    /// The token of both: a view that passed it has passed each.
    #[must_use]
    pub fn join(self, other: impl Into<Token>) -> Self {
        Self(self.0.max(other.into().0))
    }
}

impl From<Position> for Token {
    fn from(position: Position) -> Self {
        Self(position)
    }
}

impl From<Option<Position>> for Token {
    /// A command that recorded nothing has nothing to wait for.
    fn from(position: Option<Position>) -> Self {
        Self(position.unwrap_or(Position::START))
    }
}

impl<E> From<&CommandOutcome<E>> for Token {
    fn from(outcome: &CommandOutcome<E>) -> Self {
        outcome.position.into()
    }
}

impl<T: Into<Token>> FromIterator<T> for Token {
    fn from_iter<I: IntoIterator<Item = T>>(tokens: I) -> Self {
        tokens
            .into_iter()
            .fold(Self::default(), |joined, token| joined.join(token))
    }
}

/// A runner of projections that tells when a view has caught up with a client's writes.
///
/// Every runner implements it: the in-memory [`Projector`](crate::memory::Projector) and
/// the backends' runners. The view is named by its type, never by a string.
///
/// ```
/// use std::time::Duration;
///
/// use cqrs_core::memory::{MemoryEventStore, Projector};
/// use cqrs_core::prelude::*;
/// # use std::convert::Infallible;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// # struct Opened { owner: String }
/// # #[derive(Debug, Default, Projection)]
/// # #[cqrs(name = "owners", event = Opened)]
/// # struct Owners(Vec<String>);
/// # impl Project for Owners {
/// #     async fn project(&mut self, _: &mut (), e: &EventEnvelope<Opened>) -> Result<(), Infallible> {
/// #         self.0.push(e.payload.owner.clone());
/// #         Ok(())
/// #     }
/// # }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryEventStore::new();
/// let owners = Projector::new(store.clone(), Owners::default());
/// let _live = owners.spawn();
/// # use cqrs_core::store::{AppendRequest, NewEvent};
/// # use cqrs_core::Metadata;
/// # let opened = NewEvent::from_event(&Opened { owner: "Ada".into() }, Metadata::default())?;
/// # let outcome = store.append(AppendRequest::new("account", "a-1", 0, vec![opened])).await?;
/// // `outcome`: what an append (or a command) returned.
/// owners.wait_for::<Owners>(outcome.position, Duration::from_secs(1)).await?;
/// assert_eq!(owners.read(|view| view.0.clone()).await, ["Ada"]);
/// # Ok(())
/// # }
/// ```
pub trait ReadYourWrites: Send + Sync {
    /// Waits until projection `P`'s view has passed `token`: a query of the view then
    /// sees the writes behind it.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Timeout`] when the view has not passed it within `timeout`;
    /// [`ProjectionError::Unknown`] when the runner does not know `P` (on a backend:
    /// when no runner has registered it within `timeout`); the runner's own failures.
    fn wait_for<P: Projection>(
        &self,
        token: impl Into<Token> + Send,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send;
}
