use cqrs_core::Aggregate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[cqrs(name = "account")]
struct Account {
    balance: u64,
}

fn main() {}
