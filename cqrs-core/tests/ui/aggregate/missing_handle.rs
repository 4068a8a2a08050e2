use cqrs_core::{Aggregate, Apply, Command, Event};
use serde::{Deserialize, Serialize};

#[derive(Debug, Command)]
enum AccountCommand {
    Deposit { amount: u64 },
}

#[derive(Debug, Event)]
enum AccountEvent {
    Deposited { amount: u64 },
}

#[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
#[cqrs(command = AccountCommand, event = AccountEvent, error = std::fmt::Error)]
struct Account {
    balance: u64,
}

impl Apply<AccountEvent> for Account {
    fn apply(&mut self, event: &AccountEvent) {
        let AccountEvent::Deposited { amount } = event;
        self.balance += amount;
    }
}

fn main() {}
