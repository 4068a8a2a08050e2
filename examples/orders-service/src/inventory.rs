//! The inventory context: a warehouse that keeps stock per product and reserves it for
//! orders. It knows orders only through the events it reacts to.

use std::collections::BTreeMap;

use cqrs_core::prelude::*;
use cqrs_core::{Apply, Handle};
use serde::{Deserialize, Serialize};

use crate::orders::OrderLine;

/// The one warehouse of this example.
pub const WAREHOUSE: &str = "main";

/// Something that happened in the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Event)]
pub enum InventoryEvent {
    /// Stock arrived.
    Restocked {
        /// The product.
        sku: String,
        /// How many arrived.
        quantity: u32,
    },
    /// Stock was set aside for an order.
    StockReserved {
        /// The order it is for.
        order_id: String,
        /// What was set aside.
        lines: Vec<OrderLine>,
    },
    /// An order asked for more than the warehouse has.
    ReservationRefused {
        /// The order.
        order_id: String,
        /// Why.
        reason: String,
    },
}

/// What can be asked of the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Command)]
pub enum InventoryCommand {
    /// Add stock.
    Restock {
        /// The product.
        sku: String,
        /// How many.
        quantity: u32,
    },
    /// Set stock aside for an order, all lines or none.
    Reserve {
        /// The order.
        order_id: String,
        /// What it needs.
        lines: Vec<OrderLine>,
    },
}

/// Why the warehouse refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// A restock of nothing, or of no product.
    #[error("a restock needs a product and a positive quantity")]
    InvalidRestock,
    /// More stock than the warehouse can count.
    #[error("the stock of {0} would overflow")]
    Overflow(String),
}

/// The warehouse: stock per product, and the orders it has answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[cqrs(
    name = "warehouse",
    command = InventoryCommand,
    event = InventoryEvent,
    error = InventoryError,
    snapshot_every = 100
)]
pub struct Warehouse {
    /// Units on hand per product.
    pub stock: BTreeMap<String, u32>,
    /// Orders already answered (a repeated reservation is answered once).
    pub answered: std::collections::BTreeSet<String>,
}

impl Handle<InventoryCommand> for Warehouse {
    async fn handle(
        &self,
        command: &InventoryCommand,
        (): &(),
    ) -> Result<Vec<InventoryEvent>, InventoryError> {
        match command {
            InventoryCommand::Restock { sku, quantity } => {
                if sku.trim().is_empty() || *quantity == 0 {
                    return Err(InventoryError::InvalidRestock);
                }
                let on_hand = self.stock.get(sku).copied().unwrap_or(0);
                if on_hand.checked_add(*quantity).is_none() {
                    return Err(InventoryError::Overflow(sku.clone()));
                }
                Ok(vec![InventoryEvent::Restocked {
                    sku: sku.clone(),
                    quantity: *quantity,
                }])
            }
            InventoryCommand::Reserve { order_id, lines } => {
                if self.answered.contains(order_id) {
                    return Ok(Vec::new());
                }
                let mut needed: BTreeMap<&str, u64> = BTreeMap::new();
                for line in lines {
                    *needed.entry(line.sku.as_str()).or_default() += u64::from(line.quantity);
                }
                let short = needed.iter().find(|(sku, quantity)| {
                    u64::from(self.stock.get(**sku).copied().unwrap_or(0)) < **quantity
                });
                Ok(vec![match short {
                    Some((sku, _)) => InventoryEvent::ReservationRefused {
                        order_id: order_id.clone(),
                        reason: format!("not enough {sku} in stock"),
                    },
                    None => InventoryEvent::StockReserved {
                        order_id: order_id.clone(),
                        lines: lines.clone(),
                    },
                }])
            }
        }
    }
}

impl Apply<InventoryEvent> for Warehouse {
    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::Restocked { sku, quantity } => {
                let on_hand = self.stock.entry(sku.clone()).or_default();
                *on_hand = on_hand.saturating_add(*quantity);
            }
            InventoryEvent::StockReserved { order_id, lines } => {
                for line in lines {
                    let on_hand = self.stock.entry(line.sku.clone()).or_default();
                    *on_hand = on_hand.saturating_sub(line.quantity);
                }
                self.answered.insert(order_id.clone());
            }
            InventoryEvent::ReservationRefused { order_id, .. } => {
                self.answered.insert(order_id.clone());
            }
        }
    }
}
