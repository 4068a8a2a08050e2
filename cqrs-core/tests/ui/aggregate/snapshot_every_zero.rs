use cqrs_core::{Aggregate, Apply, Command, Event, Handle};
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
#[cqrs(command = AccountCommand, event = AccountEvent, error = std::fmt::Error, snapshot_every = 0)]
struct Account {
    balance: u64,
}

impl Handle<AccountCommand> for Account {
    async fn handle(&self, command: &AccountCommand, _: &()) -> Result<Vec<AccountEvent>, std::fmt::Error> {
        let AccountCommand::Deposit { amount } = command;
        Ok(vec![AccountEvent::Deposited { amount: *amount }])
    }
}

impl Apply<AccountEvent> for Account {
    fn apply(&mut self, event: &AccountEvent) {
        let AccountEvent::Deposited { amount } = event;
        self.balance += amount;
    }
}

fn main() {}
