use cqrs_core::Event;

#[derive(Debug, Event)]
enum AccountEvent {
    #[cqrs(name = 42)]
    Opened { owner: String },
}

fn main() {}
