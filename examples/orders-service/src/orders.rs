//! The orders context: customers place orders; an order is confirmed or rejected once
//! the inventory context has answered, and can be cancelled while it waits.

use cqrs_core::prelude::*;
use cqrs_core::{Apply, Handle};
use serde::{Deserialize, Serialize};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// Something that happened to an order.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub enum OrderEvent {
    /// The customer placed the order; it waits for stock.
    #[cqrs(name = "OrderPlaced")]
    Placed {
        /// Who ordered.
        customer: String,
        /// What was ordered.
        lines: Vec<OrderLine>,
    },
    /// Stock was reserved: the order will be shipped.
    #[cqrs(name = "OrderConfirmed")]
    Confirmed,
    /// Stock could not be reserved.
    #[cqrs(name = "OrderRejected")]
    Rejected {
        /// Why.
        reason: String,
    },
    /// The customer cancelled the order before it was confirmed.
    #[cqrs(name = "OrderCancelled")]
    Cancelled,
}

/// What can be asked of an order.
#[derive(Debug, Clone, PartialEq, Eq, Command)]
pub enum OrderCommand {
    /// Place a new order.
    Place {
        /// Who orders.
        customer: String,
        /// What is ordered.
        lines: Vec<OrderLine>,
    },
    /// Confirm the order (the inventory reserved its stock).
    Confirm,
    /// Reject the order (the inventory could not reserve its stock).
    Reject {
        /// Why.
        reason: String,
    },
    /// Cancel the order.
    Cancel,
}

/// Why an order refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// `Place` on an order that exists.
    #[error("the order was already placed")]
    AlreadyPlaced,
    /// Any command but `Place` on an order that does not exist.
    #[error("there is no such order")]
    NotFound,
    /// An order without lines.
    #[error("an order needs at least one line")]
    NoLines,
    /// A line with quantity zero or an empty product.
    #[error("line {line} is invalid: {reason}")]
    InvalidLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A customer name that is empty.
    #[error("the customer is missing")]
    NoCustomer,
    /// Confirm, reject or cancel an order that is no longer pending.
    #[error("the order is already {0}")]
    NotPending(Status),
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never placed.
    #[default]
    New,
    /// Placed, waiting for stock.
    Pending,
    /// Stock reserved.
    Confirmed,
    /// Stock not available.
    Rejected,
    /// Cancelled by the customer.
    Cancelled,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::New => "new",
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        })
    }
}

/// An order: the consistency boundary for its own lifecycle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[cqrs(name = "order", command = OrderCommand, event = OrderEvent, error = OrderError)]
pub struct Order {
    /// Where the order stands.
    pub status: Status,
}

impl Handle<OrderCommand> for Order {
    async fn handle(&self, command: &OrderCommand, (): &()) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { customer, lines } => {
                if self.status != Status::New {
                    return Err(OrderError::AlreadyPlaced);
                }
                if customer.trim().is_empty() {
                    return Err(OrderError::NoCustomer);
                }
                if lines.is_empty() {
                    return Err(OrderError::NoLines);
                }
                for (index, line) in lines.iter().enumerate() {
                    let reason = if line.quantity == 0 {
                        "the quantity is zero"
                    } else if line.sku.trim().is_empty() {
                        "the product is missing"
                    } else {
                        continue;
                    };
                    return Err(OrderError::InvalidLine {
                        line: index + 1,
                        reason,
                    });
                }
                Ok(vec![OrderEvent::Placed {
                    customer: customer.clone(),
                    lines: lines.clone(),
                }])
            }
            OrderCommand::Confirm => self.pending().map(|()| vec![OrderEvent::Confirmed]),
            OrderCommand::Reject { reason } => self.pending().map(|()| {
                vec![OrderEvent::Rejected {
                    reason: reason.clone(),
                }]
            }),
            OrderCommand::Cancel => self.pending().map(|()| vec![OrderEvent::Cancelled]),
        }
    }
}

impl Order {
    fn pending(&self) -> Result<(), OrderError> {
        match self.status {
            Status::New => Err(OrderError::NotFound),
            Status::Pending => Ok(()),
            other => Err(OrderError::NotPending(other)),
        }
    }
}

impl Apply<OrderEvent> for Order {
    fn apply(&mut self, event: &OrderEvent) {
        self.status = match event {
            OrderEvent::Placed { .. } => Status::Pending,
            OrderEvent::Confirmed => Status::Confirmed,
            OrderEvent::Rejected { .. } => Status::Rejected,
            OrderEvent::Cancelled => Status::Cancelled,
        };
    }
}
