use cqrs_core::Event;

#[derive(Debug, Event)]
#[cqrs(version = 2)]
enum AccountEvent {
    Opened { owner: String },
}

fn main() {}
