use cqrs_core::Aggregate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[cqrs(command = (), event = (), error = std::fmt::Error)]
struct Account {
    #[cqrs(id)]
    id: String,
}

fn main() {}
