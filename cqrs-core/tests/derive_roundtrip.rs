//! `#[derive(Event)]` payloads: every event of a small bank-account domain encodes and
//! decodes, older schema versions upcast to the current shape, and unknown types or
//! versions are typed errors.
#![cfg(feature = "derive")]

use cqrs_core::{CodecError, Command, Event, EventType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Reason {
    Fraud,
    Request,
}

fn withdrawn_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    payload["reference"] = json!("unknown");
    Ok(payload)
}

fn withdrawn_v2_to_v3(mut payload: Value) -> Result<Value, String> {
    let amount = payload["amount"].take();
    let cents = amount.as_u64().ok_or("amount is not a number")?;
    payload["amount"] = json!({ "cents": cents });
    Ok(payload)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Money {
    cents: u64,
}

#[derive(Debug, Clone, PartialEq, Event)]
enum AccountEvent {
    Opened {
        owner: String,
    },
    Deposited {
        amount: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    #[cqrs(
        name = "MoneyWithdrawn",
        version = 3,
        upcast(v1 = withdrawn_v1_to_v2, v2 = withdrawn_v2_to_v3)
    )]
    Withdrawn {
        amount: Money,
        reference: String,
    },
    Frozen(Reason),
    Moved(String, String),
    Closed,
}

fn every_event() -> Vec<AccountEvent> {
    vec![
        AccountEvent::Opened {
            owner: "ada".to_owned(),
        },
        AccountEvent::Deposited {
            amount: 10,
            note: None,
        },
        AccountEvent::Deposited {
            amount: 5,
            note: Some("gift".to_owned()),
        },
        AccountEvent::Withdrawn {
            amount: Money { cents: 3 },
            reference: "atm".to_owned(),
        },
        AccountEvent::Frozen(Reason::Fraud),
        AccountEvent::Moved("here".to_owned(), "there".to_owned()),
        AccountEvent::Closed,
    ]
}

#[test]
fn types_list_every_name_with_its_version() {
    let names: Vec<_> = AccountEvent::TYPES
        .iter()
        .map(|t| (t.name, t.version))
        .collect();
    assert_eq!(
        names,
        [
            ("Opened", 1),
            ("Deposited", 1),
            ("MoneyWithdrawn", 3),
            ("Frozen", 1),
            ("Moved", 1),
            ("Closed", 1),
        ]
    );
    assert_eq!(AccountEvent::current_version("MoneyWithdrawn"), Some(3));
    assert_eq!(AccountEvent::current_version("Withdrawn"), None);
}

#[test]
fn every_event_round_trips() -> Result<(), CodecError> {
    for event in every_event() {
        let payload = event.encode()?;
        let decoded = AccountEvent::decode(event.event_type(), event.schema_version(), payload)?;
        assert_eq!(decoded, event);
    }
    Ok(())
}

#[test]
fn payloads_carry_fields_without_a_type_tag() -> Result<(), CodecError> {
    let payloads: Vec<_> = every_event()
        .iter()
        .map(Event::encode)
        .collect::<Result<_, _>>()?;
    assert_eq!(
        payloads,
        [
            json!({ "owner": "ada" }),
            json!({ "amount": 10 }),
            json!({ "amount": 5, "note": "gift" }),
            json!({ "amount": { "cents": 3 }, "reference": "atm" }),
            json!("Fraud"),
            json!(["here", "there"]),
            json!({}),
        ]
    );
    Ok(())
}

#[test]
fn old_versions_upcast_to_the_current_variant() -> Result<(), CodecError> {
    let current = AccountEvent::Withdrawn {
        amount: Money { cents: 7 },
        reference: "unknown".to_owned(),
    };
    let v1 = AccountEvent::decode("MoneyWithdrawn", 1, json!({ "amount": 7 }))?;
    assert_eq!(v1, current);
    let v2 = AccountEvent::decode(
        "MoneyWithdrawn",
        2,
        json!({ "amount": 7, "reference": "unknown" }),
    )?;
    assert_eq!(v2, current);
    Ok(())
}

#[test]
fn unknown_types_and_versions_are_typed_errors() {
    assert!(matches!(
        AccountEvent::decode("Withdrawn", 1, json!({})),
        Err(CodecError::UnknownType { event_type }) if event_type == "Withdrawn"
    ));
    assert!(matches!(
        AccountEvent::decode("MoneyWithdrawn", 4, json!({})),
        Err(CodecError::UnknownVersion {
            version: 4,
            current: 3,
            ..
        })
    ));
    assert!(matches!(
        AccountEvent::decode("Opened", 0, json!({ "owner": "ada" })),
        Err(CodecError::UnknownVersion {
            version: 0,
            current: 1,
            ..
        })
    ));
    assert!(matches!(
        AccountEvent::decode("Opened", 2, json!({ "owner": "ada" })),
        Err(CodecError::UnknownVersion {
            version: 2,
            current: 1,
            ..
        })
    ));
}

#[test]
fn failing_upcasters_and_bad_payloads_are_typed_errors() {
    assert!(matches!(
        AccountEvent::decode("MoneyWithdrawn", 2, json!({ "amount": "seven" })),
        Err(CodecError::Upcast { from: 2, .. })
    ));
    assert!(matches!(
        AccountEvent::decode("Opened", 1, json!({ "owner": 5 })),
        Err(CodecError::Payload { version: 1, .. })
    ));
}

/// A struct is one event type; its payload is its own serde form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[cqrs(name = "InterestPaid", version = 2, upcast(v1 = interest_v1_to_v2))]
struct Interest {
    cents: u64,
    rate_bp: u32,
}

fn interest_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    payload["rate_bp"] = json!(0);
    Ok(payload)
}

#[test]
fn struct_events_round_trip_and_upcast() -> Result<(), CodecError> {
    assert_eq!(
        Interest::TYPES,
        &[EventType {
            name: "InterestPaid",
            version: 2
        }]
    );
    let event = Interest {
        cents: 4,
        rate_bp: 150,
    };
    assert_eq!(event.event_type(), "InterestPaid");
    assert_eq!(Interest::decode("InterestPaid", 2, event.encode()?)?, event);
    assert_eq!(
        Interest::decode("InterestPaid", 1, json!({ "cents": 4 }))?,
        Interest {
            cents: 4,
            rate_bp: 0
        }
    );
    assert!(matches!(
        Interest::decode("Interest", 2, json!({})),
        Err(CodecError::UnknownType { .. })
    ));
    Ok(())
}

/// What `decode` makes of a payload, and what `decode_json` makes of its text, compared by
/// outcome (errors by their kind and numbers, since sources differ in wording).
fn same_outcome<E: Event + PartialEq>(event_type: &str, version: u32, payload: &Value) {
    let from_value = E::decode(event_type, version, payload.clone());
    let from_text = E::decode_json(event_type, version, &payload.to_string());
    let shape = |result: &Result<E, CodecError>| match result {
        Ok(_) => "ok".to_owned(),
        Err(CodecError::UnknownType { event_type }) => format!("unknown type {event_type}"),
        Err(CodecError::UnknownVersion {
            version, current, ..
        }) => format!("unknown version {version} of {current}"),
        Err(CodecError::Upcast { from, .. }) => format!("upcast from {from}"),
        Err(CodecError::Payload { version, .. }) => format!("payload at {version}"),
        Err(other) => format!("{other:?}"),
    };
    assert_eq!(
        shape(&from_text),
        shape(&from_value),
        "{event_type} v{version} {payload}"
    );
    if let (Ok(text), Ok(value)) = (&from_text, &from_value) {
        assert!(
            text == value,
            "{event_type} v{version}: {text:?} != {value:?}"
        );
    }
}

#[test]
fn decoding_from_json_text_agrees_with_decoding_a_value() -> Result<(), CodecError> {
    // Current versions (straight from the text), older ones (upcast), and every error.
    for event in every_event() {
        same_outcome::<AccountEvent>(event.event_type(), event.schema_version(), &event.encode()?);
    }
    let cases = [
        ("MoneyWithdrawn", 1, json!({ "amount": 7 })),
        (
            "MoneyWithdrawn",
            2,
            json!({ "amount": 7, "reference": "x" }),
        ),
        ("MoneyWithdrawn", 2, json!({ "amount": "seven" })),
        ("MoneyWithdrawn", 4, json!({})),
        ("Withdrawn", 1, json!({})),
        ("Opened", 0, json!({ "owner": "ada" })),
        ("Opened", 2, json!({ "owner": "ada" })),
        ("Opened", 1, json!({ "owner": 5 })),
    ];
    for (event_type, version, payload) in &cases {
        same_outcome::<AccountEvent>(event_type, *version, payload);
    }
    same_outcome::<Interest>("InterestPaid", 2, &json!({ "cents": 4, "rate_bp": 1 }));
    same_outcome::<Interest>("InterestPaid", 1, &json!({ "cents": 4 }));
    same_outcome::<Interest>("InterestPaid", 3, &json!({ "cents": 4 }));
    same_outcome::<Interest>("Interest", 2, &json!({}));
    // Text that is not JSON is a payload error, at the current version or an older one.
    assert!(matches!(
        AccountEvent::decode_json("Opened", 1, "{\"owner\": "),
        Err(CodecError::Payload { version: 1, .. })
    ));
    assert!(matches!(
        AccountEvent::decode_json("MoneyWithdrawn", 1, "not json"),
        Err(CodecError::Payload { version: 1, .. })
    ));
    assert!(matches!(
        Interest::decode_json("InterestPaid", 2, ""),
        Err(CodecError::Payload { version: 2, .. })
    ));
    Ok(())
}

#[derive(Debug, Command)]
enum AccountCommand {
    Open {
        #[cqrs(id)]
        account: String,
        owner: String,
    },
    #[cqrs(name = "deposit_money")]
    Deposit(#[cqrs(id)] String, u64),
    Audit,
}

#[derive(Debug, Command)]
#[cqrs(name = "close_account")]
struct Close {
    #[cqrs(id)]
    account: String,
}

#[test]
fn commands_name_themselves_and_carry_their_id() {
    let open = AccountCommand::Open {
        account: "acc-1".to_owned(),
        owner: "ada".to_owned(),
    };
    assert_eq!((open.name(), open.aggregate_id()), ("Open", Some("acc-1")));
    assert!(matches!(open, AccountCommand::Open { owner, .. } if owner == "ada"));
    let deposit = AccountCommand::Deposit("acc-2".to_owned(), 5);
    assert!(matches!(deposit, AccountCommand::Deposit(_, 5)));
    assert_eq!(
        (deposit.name(), deposit.aggregate_id()),
        ("deposit_money", Some("acc-2"))
    );
    assert_eq!(
        (
            AccountCommand::Audit.name(),
            AccountCommand::Audit.aggregate_id()
        ),
        ("Audit", None)
    );
    let close = Close {
        account: "acc-3".to_owned(),
    };
    assert_eq!(
        (close.name(), close.aggregate_id()),
        ("close_account", Some("acc-3"))
    );
}
