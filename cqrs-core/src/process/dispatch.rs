//! Sending a process manager's commands: [`Dispatch`].

use std::future::Future;
use std::sync::Arc;

use crate::{Aggregate, BoxError, CommandError, CommandMetadata, Cqrs, EventStore};

/// Where a process manager's commands go: usually a [`Cqrs`] pipeline (which implements
/// it for its aggregate's commands), or a router over several that matches on the
/// command.
///
/// The runner passes metadata with a command id derived from the command's cause; pass
/// it on unchanged, so a command sent again after a crash is recognised as the same.
///
/// ```
/// # #![allow(dead_code)]
/// use cqrs_core::process::{Dispatch, Refusal};
/// use cqrs_core::{CommandMetadata, Cqrs};
/// # use cqrs_core::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// # enum StockEvent { Reserved { n: u32 } }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
/// # enum StockCommand { Reserve { #[cqrs(id)] sku: String, n: u32 } }
/// # #[derive(Debug, thiserror::Error)]
/// # #[error("none left")]
/// # struct NoneLeft;
/// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// # #[cqrs(name = "stock", command = StockCommand, event = StockEvent, error = NoneLeft)]
/// # struct Stock;
/// # impl Apply<StockEvent> for Stock { fn apply(&mut self, _: &StockEvent) {} }
/// # impl Handle<StockCommand> for Stock {
/// #     async fn handle(&self, c: &StockCommand, (): &()) -> Result<Vec<StockEvent>, NoneLeft> {
/// #         let StockCommand::Reserve { n, .. } = c;
/// #         Ok(vec![StockEvent::Reserved { n: *n }])
/// #     }
/// # }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Command)]
/// # enum MailCommand { Send { #[cqrs(id)] to: String } }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// # enum MailEvent { Sent }
/// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// # #[cqrs(name = "mail", command = MailCommand, event = MailEvent, error = NoneLeft)]
/// # struct Mail;
/// # impl Apply<MailEvent> for Mail { fn apply(&mut self, _: &MailEvent) {} }
/// # impl Handle<MailCommand> for Mail {
/// #     async fn handle(&self, _: &MailCommand, (): &()) -> Result<Vec<MailEvent>, NoneLeft> {
/// #         Ok(vec![MailEvent::Sent])
/// #     }
/// # }
///
/// /// What an order process sends, to two aggregates.
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
/// enum OrderProcessCommand {
///     Stock(StockCommand),
///     Mail(MailCommand),
/// }
///
/// struct Router {
///     stock: Cqrs<Stock, MemoryEventStore>,
///     mail: Cqrs<Mail, MemoryEventStore>,
/// }
///
/// impl Dispatch<OrderProcessCommand> for Router {
///     async fn dispatch(
///         &self,
///         command: OrderProcessCommand,
///         metadata: CommandMetadata,
///     ) -> Result<(), Refusal> {
///         match command {
///             OrderProcessCommand::Stock(c) => Dispatch::dispatch(&self.stock, c, metadata).await,
///             OrderProcessCommand::Mail(c) => Dispatch::dispatch(&self.mail, c, metadata).await,
///         }
///     }
/// }
/// ```
pub trait Dispatch<C>: Send + Sync + 'static {
    /// Sends one command.
    ///
    /// # Errors
    ///
    /// [`Refusal::Rejected`] when the receiving aggregate refuses it (the process
    /// manager then reacts, see [`React::on_refused`](super::React::on_refused));
    /// [`Refusal::Failed`] when it could not be carried out now (the runner sends it
    /// again later).
    fn dispatch(
        &self,
        command: C,
        metadata: CommandMetadata,
    ) -> impl Future<Output = Result<(), Refusal>> + Send;
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The aggregate refused it; `reason` is its error, as text.
    #[error("refused: {0}")]
    Rejected(String),
    /// It could not be carried out now (store unavailable, retries on conflicts run out);
    /// it is sent again later.
    #[error("not carried out: {0}")]
    Failed(#[source] BoxError),
}

impl<E: std::fmt::Display> From<CommandError<E>> for Refusal {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(reason) => Self::Rejected(reason.to_string()),
            CommandError::MissingAggregateId { command } => {
                Self::Rejected(format!("the command {command} does not name its aggregate"))
            }
            other => Self::Failed(other.to_string().into()),
        }
    }
}

impl<A, S> Dispatch<A::Command> for Cqrs<A, S>
where
    A: Aggregate,
    A::Error: std::fmt::Display,
    S: EventStore + ?Sized + 'static,
{
    async fn dispatch(
        &self,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> Result<(), Refusal> {
        self.dispatch_with(command, metadata)
            .await
            .map(|_| ())
            .map_err(Refusal::from)
    }
}

impl<C, D: Dispatch<C>> Dispatch<C> for Arc<D> {
    fn dispatch(
        &self,
        command: C,
        metadata: CommandMetadata,
    ) -> impl Future<Output = Result<(), Refusal>> + Send {
        (**self).dispatch(command, metadata)
    }
}
