use cqrs_core::Command;

#[derive(Debug)]
struct Account;

#[derive(Debug, Command)]
#[cqrs(aggregate = Account)]
enum AccountCommand {
    Deposit { amount: u64 },
}

fn main() {}
