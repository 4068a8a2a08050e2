use cqrs_core::Command;

#[derive(Debug, Command)]
enum AccountCommand {
    Deposit {
        #[cqrs(id)]
        account: u64,
        amount: u64,
    },
}

fn main() {}
