//! The events of several types as one: what a view over several aggregates consumes.

use crate::EventType;

/// Gathers the events of several [`Event`](crate::Event) types into one enum that is an
/// `Event` itself, so one projection (or [`Document`](crate::Document)) folds the events
/// of several aggregates.
///
/// Each variant wraps one event type. A stored event goes to the variant whose type knows
/// its name, so the names must differ across the types gathered: two that share one fail
/// to compile, naming the enum (rename one of them, with an upcaster for stored events).
/// The union's [`TYPES`](crate::Event::TYPES) are all of theirs, so a projection of it
/// reads only those events: its filter goes down to the store's query. Each wrapped type
/// converts into the union with `From`.
///
/// ```
/// use cqrs_core::{Event, event_union};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// # enum BookEvent { Added { title: String }, Lent { member: String } }
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// # enum MemberEvent { Joined { name: String }, Suspended }
///
/// event_union! {
///     /// What the loans view reads: books and members.
///     #[derive(Debug, Clone, PartialEq)]
///     pub enum LibraryEvent {
///         Book(BookEvent),
///         Member(MemberEvent),
///     }
/// }
///
/// let names: Vec<&str> = LibraryEvent::TYPES.iter().map(|t| t.name).collect();
/// assert_eq!(names, ["Added", "Lent", "Joined", "Suspended"]);
/// let payload = serde_json::json!({ "name": "Ada" });
/// let decoded = LibraryEvent::decode("Joined", 1, payload)?;
/// assert_eq!(decoded, LibraryEvent::Member(MemberEvent::Joined { name: "Ada".into() }));
/// # Ok::<(), cqrs_core::CodecError>(())
/// ```
#[macro_export]
macro_rules! event_union {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident($ty:ty)),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$variant_meta])* #[allow(missing_docs)] $variant($ty)),+
        }

        impl $crate::Event for $name {
            const TYPES: &'static [$crate::EventType] = {
                const COUNT: usize = 0 $(+ <$ty as $crate::Event>::TYPES.len())+;
                const ALL: [$crate::EventType; COUNT] = {
                    let mut all = [$crate::EventType { name: "", version: 0 }; COUNT];
                    let mut at = 0;
                    $(
                        let types = <$ty as $crate::Event>::TYPES;
                        let mut i = 0;
                        while i < types.len() {
                            all[at] = types[i];
                            at += 1;
                            i += 1;
                        }
                    )+
                    if !$crate::__private::names_distinct(&all) {
                        panic!(concat!(
                            "two event types gathered in `", stringify!($name),
                            "` share a name: a stored event must go to one of them"
                        ));
                    }
                    all
                };
                &ALL
            };

            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(event) => $crate::Event::event_type(event)),+
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    $(Self::$variant(event) => $crate::Event::schema_version(event)),+
                }
            }

            fn encode(&self) -> ::core::result::Result<
                $crate::__private::serde_json::Value,
                $crate::CodecError,
            > {
                match self {
                    $(Self::$variant(event) => $crate::Event::encode(event)),+
                }
            }

            fn decode(
                event_type: &str,
                schema_version: u32,
                payload: $crate::__private::serde_json::Value,
            ) -> ::core::result::Result<Self, $crate::CodecError> {
                $(
                    if <$ty as $crate::Event>::current_version(event_type).is_some() {
                        return <$ty as $crate::Event>::decode(event_type, schema_version, payload)
                            .map(Self::$variant);
                    }
                )+
                ::core::result::Result::Err($crate::__private::unknown_type(event_type))
            }

            fn decode_json(
                event_type: &str,
                schema_version: u32,
                payload: &str,
            ) -> ::core::result::Result<Self, $crate::CodecError> {
                $(
                    if <$ty as $crate::Event>::current_version(event_type).is_some() {
                        return <$ty as $crate::Event>::decode_json(
                            event_type,
                            schema_version,
                            payload,
                        )
                        .map(Self::$variant);
                    }
                )+
                ::core::result::Result::Err($crate::__private::unknown_type(event_type))
            }
        }

        $(
            impl ::core::convert::From<$ty> for $name {
                fn from(event: $ty) -> Self {
                    Self::$variant(event)
                }
            }
        )+
    };
}

/// Whether every name in `types` differs from the others (for [`event_union!`], at
/// compile time).
#[must_use]
pub const fn names_distinct(types: &[EventType]) -> bool {
    let mut a = 0;
    while a < types.len() {
        let mut b = a + 1;
        while b < types.len() {
            if same(types[a].name, types[b].name) {
                return false;
            }
            b += 1;
        }
        a += 1;
    }
    true
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_told_apart_byte_by_byte() {
        let t = |name| EventType { name, version: 1 };
        assert!(names_distinct(&[]));
        assert!(names_distinct(&[t("Added"), t("Add"), t("added")]));
        assert!(!names_distinct(&[t("Added"), t("Lent"), t("Added")]));
    }
}
