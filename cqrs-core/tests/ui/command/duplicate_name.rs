use cqrs_core::Command;

#[derive(Debug, Command)]
enum AccountCommand {
    #[cqrs(name = "deposit")]
    Deposit { amount: u64 },
    #[cqrs(name = "deposit")]
    Credit { amount: u64 },
}

fn main() {}
