use cqrs_core::Aggregate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[cqrs(command = (), event = (), error = std::fmt::Error, state_version = "two")]
struct Account {
    balance: u64,
}

fn main() {}
