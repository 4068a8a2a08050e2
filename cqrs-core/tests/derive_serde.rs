//! `#[serde(...)]` on derived events: a variant's stored payload is exactly what serde
//! writes for a plain struct with the same fields and the same attributes (the enum's
//! `rename_all_fields` and `deny_unknown_fields`, the variant's `rename_all`, the fields'
//! own), and reads back through `decode` and `decode_json`. A struct event's payload is
//! the struct's own serde form, whatever its serde attributes.
#![cfg(feature = "derive")]

use cqrs_core::{CodecError, Event};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Event)]
#[serde(rename_all_fields = "camelCase", deny_unknown_fields)]
enum ProfileEvent {
    /// The enum's `rename_all_fields`.
    Registered {
        first_name: String,
        last_name: String,
    },
    /// The variant's `rename_all` wins over the enum's `rename_all_fields`.
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    Moved {
        street_name: String,
        house_number: u32,
    },
    /// Field attributes on top of the enum's rule.
    Noted {
        #[serde(rename = "text")]
        note_body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pinned_at: Option<u64>,
    },
    /// Tuple fields have no names to rename.
    Tagged(String, u8),
    Closed,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Registered {
    first_name: String,
    last_name: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
struct Moved {
    street_name: String,
    house_number: u32,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Noted {
    #[serde(rename = "text")]
    note_body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pinned_at: Option<u64>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Tagged(String, u8);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Closed {}

/// Each event beside what serde writes for its plain struct.
fn cases() -> Result<Vec<(ProfileEvent, Value)>, serde_json::Error> {
    Ok(vec![
        (
            ProfileEvent::Registered {
                first_name: "Ada".to_owned(),
                last_name: "Lovelace".to_owned(),
            },
            serde_json::to_value(Registered {
                first_name: "Ada".to_owned(),
                last_name: "Lovelace".to_owned(),
            })?,
        ),
        (
            ProfileEvent::Moved {
                street_name: "Main".to_owned(),
                house_number: 7,
            },
            serde_json::to_value(Moved {
                street_name: "Main".to_owned(),
                house_number: 7,
            })?,
        ),
        (
            ProfileEvent::Noted {
                note_body: "hello".to_owned(),
                pinned_at: Some(3),
            },
            serde_json::to_value(Noted {
                note_body: "hello".to_owned(),
                pinned_at: Some(3),
            })?,
        ),
        (
            ProfileEvent::Noted {
                note_body: "bye".to_owned(),
                pinned_at: None,
            },
            serde_json::to_value(Noted {
                note_body: "bye".to_owned(),
                pinned_at: None,
            })?,
        ),
        (
            ProfileEvent::Tagged("vip".to_owned(), 2),
            serde_json::to_value(Tagged("vip".to_owned(), 2))?,
        ),
        (ProfileEvent::Closed, serde_json::to_value(Closed {})?),
    ])
}

#[test]
fn payloads_are_what_serde_writes_for_the_same_struct() -> Result<(), Box<dyn std::error::Error>> {
    for (event, plain) in cases()? {
        assert_eq!(event.encode()?, plain, "{event:?}");
    }
    // The rules did apply: these are not the fields' names as written.
    assert_eq!(
        cases()?[0].1,
        json!({ "firstName": "Ada", "lastName": "Lovelace" })
    );
    assert_eq!(
        cases()?[1].1,
        json!({ "STREET_NAME": "Main", "HOUSE_NUMBER": 7 })
    );
    assert_eq!(cases()?[2].1, json!({ "text": "hello", "pinnedAt": 3 }));
    Ok(())
}

#[test]
fn payloads_read_back_from_a_value_and_from_text() -> Result<(), CodecError> {
    for (event, plain) in cases().map_err(CodecError::Encode)? {
        let (event_type, version) = (event.event_type(), event.schema_version());
        assert_eq!(
            ProfileEvent::decode(event_type, version, plain.clone())?,
            event
        );
        assert_eq!(
            ProfileEvent::decode_json(event_type, version, &plain.to_string())?,
            event
        );
    }
    // An omitted `#[serde(default)]` field under its renamed name.
    assert_eq!(
        ProfileEvent::decode("Noted", 1, json!({ "text": "hi" }))?,
        ProfileEvent::Noted {
            note_body: "hi".to_owned(),
            pinned_at: None
        }
    );
    Ok(())
}

/// `decode` and `decode_json` both refuse the payload as a payload error.
fn refused<E: Event>(event_type: &str, payload: &Value) -> bool {
    let from_value = E::decode(event_type, 1, payload.clone());
    let from_text = E::decode_json(event_type, 1, &payload.to_string());
    matches!(from_value, Err(CodecError::Payload { version: 1, .. }))
        && matches!(from_text, Err(CodecError::Payload { version: 1, .. }))
}

#[test]
fn deny_unknown_fields_refuses_an_extra_field_as_serde_does() {
    let extra = json!({ "firstName": "Ada", "lastName": "Lovelace", "age": 36 });
    assert!(serde_json::from_value::<Registered>(extra.clone()).is_err());
    assert!(refused::<ProfileEvent>("Registered", &extra));
    // Fields under their names as written are unknown too: the rule renamed them.
    let unrenamed = json!({ "first_name": "Ada", "last_name": "Lovelace" });
    assert!(refused::<ProfileEvent>("Registered", &unrenamed));
    let moved = json!({ "STREET_NAME": "Main", "HOUSE_NUMBER": 7, "floor": 2 });
    assert!(refused::<ProfileEvent>("Moved", &moved));
    // A variant without fields reads `{}` and nothing else.
    assert!(serde_json::from_value::<Closed>(json!({ "reason": "left" })).is_err());
    assert!(refused::<ProfileEvent>(
        "Closed",
        &json!({ "reason": "left" })
    ));
}

/// The same shapes without `deny_unknown_fields`: extra fields are ignored.
#[derive(Debug, Clone, PartialEq, Event)]
#[serde(rename_all_fields = "camelCase")]
enum LenientEvent {
    Registered { first_name: String },
    Closed,
}

#[test]
fn without_deny_unknown_fields_extra_fields_are_ignored() -> Result<(), CodecError> {
    let registered = LenientEvent::Registered {
        first_name: "Ada".to_owned(),
    };
    let extra = json!({ "firstName": "Ada", "age": 36 });
    assert_eq!(
        LenientEvent::decode("Registered", 1, extra.clone())?,
        registered
    );
    assert_eq!(
        LenientEvent::decode_json("Registered", 1, &extra.to_string())?,
        registered
    );
    assert_eq!(
        LenientEvent::decode("Closed", 1, json!({ "reason": "left" }))?,
        LenientEvent::Closed
    );
    Ok(())
}

/// A rule for one direction: written one way, read another, as serde does for a struct
/// with the same attribute (the other direction falls back to the enum's rule).
#[derive(Debug, Clone, PartialEq, Event)]
#[serde(rename_all_fields = "camelCase")]
enum RenamingEvent {
    #[serde(rename_all(serialize = "kebab-case"))]
    Renamed { new_name: String },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all(serialize = "kebab-case", deserialize = "camelCase"))]
struct Renamed {
    new_name: String,
}

#[test]
fn a_rule_for_one_direction_keeps_the_enum_rule_for_the_other()
-> Result<(), Box<dyn std::error::Error>> {
    let event = RenamingEvent::Renamed {
        new_name: "Grace".to_owned(),
    };
    let plain = Renamed {
        new_name: "Grace".to_owned(),
    };
    assert_eq!(event.encode()?, serde_json::to_value(&plain)?);
    assert_eq!(event.encode()?, json!({ "new-name": "Grace" }));
    let stored = json!({ "newName": "Grace" });
    assert_eq!(serde_json::from_value::<Renamed>(stored.clone())?, plain);
    assert_eq!(RenamingEvent::decode("Renamed", 1, stored.clone())?, event);
    assert_eq!(
        RenamingEvent::decode_json("Renamed", 1, &stored.to_string())?,
        event
    );
    Ok(())
}

/// A struct event's payload is its own serde form, so its serde container attributes
/// apply, even those an event enum refuses (`rename_all`, `tag`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AddressChanged {
    street_name: String,
    #[serde(rename = "no")]
    house_number: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[serde(tag = "kind")]
#[cqrs(name = "Pinged")]
struct Ping {
    at: u64,
}

#[test]
fn struct_events_keep_their_own_serde_form() -> Result<(), Box<dyn std::error::Error>> {
    let event = AddressChanged {
        street_name: "Main".to_owned(),
        house_number: 7,
    };
    let payload = event.encode()?;
    assert_eq!(payload, serde_json::to_value(&event)?);
    assert_eq!(payload, json!({ "streetName": "Main", "no": 7 }));
    assert_eq!(
        AddressChanged::decode("AddressChanged", 1, payload.clone())?,
        event
    );
    assert_eq!(
        AddressChanged::decode_json("AddressChanged", 1, &payload.to_string())?,
        event
    );
    let extra = json!({ "streetName": "Main", "no": 7, "floor": 2 });
    assert!(refused::<AddressChanged>("AddressChanged", &extra));

    let ping = Ping { at: 5 };
    let payload = ping.encode()?;
    assert_eq!(payload, serde_json::to_value(&ping)?);
    assert_eq!(payload, json!({ "kind": "Ping", "at": 5 }));
    assert_eq!(Ping::decode("Pinged", 1, payload)?, ping);
    Ok(())
}
