use cqrs_core::Event;

mod cents {
    pub fn serialize<S: serde::Serializer>(amount: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*amount)
    }
}

#[derive(Debug, Event)]
enum AccountEvent {
    #[serde(untagged)]
    Deposited { amount: u64 },
    #[serde(serialize_with = "cents::serialize")]
    Withdrawn(u64),
    #[serde(deny_unknown_fields, rename_all_fields = "camelCase")]
    Moved { new_branch: String },
    #[serde(bound = "")]
    Closed,
}

fn main() {}
