use cqrs_core::Event;

#[derive(Debug, Event)]
#[serde(rename_all_fields = "camel", deny_unknown_fields = true)]
enum AccountEvent {
    #[serde(rename_all = 5)]
    Opened { owner_name: String },
    #[serde(rename_all(serialise = "snake_case"))]
    Deposited { amount_cents: u64 },
    #[serde(rename_all)]
    Closed { closed_by: String },
}

fn main() {}
