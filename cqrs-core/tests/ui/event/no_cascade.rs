// One mistake, one error: the stub impl keeps the uses below compiling.
use cqrs_core::Event;

#[derive(Debug, Event)]
enum AccountEvent {
    #[cqrs(version = 0)]
    Opened { owner: String },
}

fn needs_event<E: Event>() {}

fn main() {
    needs_event::<AccountEvent>();
}
