// `rename_all` on an event enum would rename the variants, which are not in the payload;
// the stub impl keeps the use below compiling.
use cqrs_core::Event;

#[derive(Debug, Event)]
#[serde(rename_all = "snake_case")]
enum AccountEvent {
    MoneyDeposited { amount: u64 },
}

fn needs_event<E: Event>() {}

fn main() {
    needs_event::<AccountEvent>();
}
