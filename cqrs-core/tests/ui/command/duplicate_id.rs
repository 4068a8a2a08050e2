use cqrs_core::Command;

#[derive(Debug, Command)]
struct Transfer {
    #[cqrs(id)]
    from: String,
    #[cqrs(id)]
    to: String,
}

fn main() {}
