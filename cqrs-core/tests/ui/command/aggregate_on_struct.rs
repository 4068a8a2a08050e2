use cqrs_core::Command;

#[derive(Debug)]
struct Account;

#[derive(Debug, Command)]
#[cqrs(aggregate = Account)]
struct Deposit {
    #[cqrs(id)]
    account: String,
}

fn main() {}
