use cqrs_core::Event;

#[derive(Debug, Event)]
enum AccountEvent {
    #[cqrs(version = 0)]
    Opened { owner: String },
}

fn main() {}
