use cqrs_core::Event;

#[derive(Debug, Event)]
enum AccountEvent {
    #[cqrs(nmae = "Opened")]
    Opened { owner: String },
}

fn main() {}
