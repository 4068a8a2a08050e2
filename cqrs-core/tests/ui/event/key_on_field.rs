use cqrs_core::Event;

#[derive(Debug, Event)]
enum AccountEvent {
    Opened {
        #[cqrs(id)]
        account: String,
    },
}

fn main() {}
