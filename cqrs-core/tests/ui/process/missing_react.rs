use cqrs_core::{Event, ProcessManager};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
enum OrderEvent {
    Placed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum ShippingCommand {
    Ship,
}

#[derive(Debug, Default, Serialize, Deserialize, ProcessManager)]
#[cqrs(name = "shipping", event = OrderEvent, command = ShippingCommand)]
struct Shipping {
    placed: bool,
}

fn main() {}
