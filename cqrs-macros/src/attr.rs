//! The `#[cqrs(...)]` keys each derive accepts, as darling receivers.
//!
//! darling turns unknown keys ("did you mean ...?"), duplicate keys and values of the
//! wrong type into spanned errors; the cross-key rules live in [`crate::validate`].

use darling::ast::{Data, Fields, NestedMeta};
use darling::util::{Flag, SpannedValue};
use darling::{FromDeriveInput, FromField, FromMeta, FromVariant};
use proc_macro2::Span;
use syn::{Attribute, Generics, Ident, Path, Type};

/// `#[derive(Event)]` on an enum (one stored type per variant) or a struct (one type).
#[derive(Debug, FromDeriveInput)]
#[darling(attributes(cqrs), supports(enum_any, struct_any), forward_attrs(serde))]
pub(crate) struct EventInput {
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    pub(crate) data: Data<EventVariant, EventField>,
    /// The `#[serde]` attributes: on an enum, checked and applied to every variant's
    /// payload (module `payload`); on a struct, left to the struct's own serde derives.
    pub(crate) attrs: Vec<Attribute>,
    /// `crate = "path"`: where cqrs-core is, for crates that re-export it.
    #[darling(rename = "crate")]
    pub(crate) krate: Option<Path>,
    /// On a struct: the stored type name (default: the struct's name).
    pub(crate) name: Option<SpannedValue<String>>,
    /// On a struct: the current schema version (default 1).
    pub(crate) version: Option<SpannedValue<u32>>,
    /// On a struct: `upcast(v1 = f, v2 = g)`.
    pub(crate) upcast: Option<SpannedValue<Upcasts>>,
}

/// One variant of an event enum.
#[derive(Debug, FromVariant)]
#[darling(attributes(cqrs), forward_attrs(serde))]
pub(crate) struct EventVariant {
    pub(crate) ident: Ident,
    pub(crate) fields: Fields<EventField>,
    /// The `#[serde]` attributes, checked and applied to the variant's payload.
    pub(crate) attrs: Vec<Attribute>,
    /// The stored type name (default: the variant's name).
    pub(crate) name: Option<SpannedValue<String>>,
    /// The current schema version (default 1).
    pub(crate) version: Option<SpannedValue<u32>>,
    /// `upcast(v1 = f, v2 = g)`: functions from each older version to the next.
    pub(crate) upcast: Option<SpannedValue<Upcasts>>,
}

/// A field of an event variant. It takes no `#[cqrs]` keys; its `#[serde]` attributes
/// are carried over to the payload.
#[derive(Debug, FromField)]
#[darling(attributes(cqrs), forward_attrs(serde))]
pub(crate) struct EventField {
    pub(crate) ident: Option<Ident>,
    pub(crate) ty: Type,
    pub(crate) attrs: Vec<Attribute>,
}

/// `upcast(v1 = f, v2 = g)`: `vK = path` names the function turning version K into K + 1.
#[derive(Debug, Clone)]
pub(crate) struct Upcasts {
    pub(crate) steps: Vec<UpcastStep>,
}

/// One step of an upcast chain.
#[derive(Debug, Clone)]
pub(crate) struct UpcastStep {
    /// The version the function reads.
    pub(crate) from: u32,
    /// The `vK` key, for error spans.
    pub(crate) key: Ident,
    /// The function.
    pub(crate) func: Path,
}

impl FromMeta for Upcasts {
    fn from_list(items: &[NestedMeta]) -> darling::Result<Self> {
        let mut errors = darling::Error::accumulator();
        let mut steps = Vec::new();
        for item in items {
            let NestedMeta::Meta(syn::Meta::NameValue(pair)) = item else {
                errors.push(
                    darling::Error::custom(
                        "expected `vN = function` in `upcast(...)`, e.g. `upcast(v1 = v1_to_v2)`",
                    )
                    .with_span(item),
                );
                continue;
            };
            let Some(key) = pair.path.get_ident() else {
                errors.push(
                    darling::Error::custom("expected a key like `v1` in `upcast(...)`")
                        .with_span(&pair.path),
                );
                continue;
            };
            let from = key
                .to_string()
                .strip_prefix('v')
                .and_then(|digits| digits.parse::<u32>().ok());
            let Some(from) = from else {
                errors.push(
                    darling::Error::custom(format!(
                        "`upcast` keys name the version an upcaster reads, like `v1`, not `{key}`"
                    ))
                    .with_span(key),
                );
                continue;
            };
            if let Some(func) = errors.handle(Path::from_expr(&pair.value)) {
                steps.push(UpcastStep {
                    from,
                    key: key.clone(),
                    func,
                });
            }
        }
        errors.finish_with(Self { steps })
    }
}

/// `#[derive(Command)]` on an enum (one command per variant) or a struct.
#[derive(Debug, FromDeriveInput)]
#[darling(attributes(cqrs), supports(enum_any, struct_any))]
pub(crate) struct CommandInput {
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    pub(crate) data: Data<CommandVariant, CommandField>,
    #[darling(rename = "crate")]
    pub(crate) krate: Option<Path>,
    /// On a struct: the command name (default: the struct's name).
    pub(crate) name: Option<SpannedValue<String>>,
    /// On an enum of newtype variants: the aggregate whose `Handle<Inner>` impls each
    /// variant's inner command is routed to.
    pub(crate) aggregate: Option<Type>,
}

/// One variant of a command enum.
#[derive(Debug, FromVariant)]
#[darling(attributes(cqrs))]
pub(crate) struct CommandVariant {
    pub(crate) ident: Ident,
    pub(crate) fields: Fields<CommandField>,
    /// The command name (default: the variant's name).
    pub(crate) name: Option<SpannedValue<String>>,
}

/// A field of a command.
#[derive(Debug, FromField)]
#[darling(attributes(cqrs))]
pub(crate) struct CommandField {
    pub(crate) ident: Option<Ident>,
    pub(crate) ty: Type,
    /// `#[cqrs(id)]`: this field holds the id of the aggregate the command is for.
    pub(crate) id: Flag,
}

/// `#[derive(Aggregate)]` on the aggregate's state.
#[derive(Debug, FromDeriveInput)]
#[darling(attributes(cqrs), supports(struct_any, enum_any))]
pub(crate) struct AggregateInput {
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    #[allow(
        dead_code,
        reason = "read only to reject `#[cqrs]` on fields and variants"
    )]
    pub(crate) data: Data<NoKeys, NoKeys>,
    #[darling(rename = "crate")]
    pub(crate) krate: Option<Path>,
    /// The stored stream type (default: the type's name).
    pub(crate) name: Option<SpannedValue<String>>,
    pub(crate) command: Option<Type>,
    pub(crate) event: Option<Type>,
    pub(crate) error: Option<Type>,
    /// Default `()`.
    pub(crate) services: Option<Type>,
    pub(crate) snapshot_every: Option<SpannedValue<u64>>,
    pub(crate) state_version: Option<SpannedValue<u32>>,
}

/// `#[derive(Projection)]` on the view.
#[derive(Debug, FromDeriveInput)]
#[darling(attributes(cqrs), supports(struct_any, enum_any))]
pub(crate) struct ProjectionInput {
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    #[allow(
        dead_code,
        reason = "read only to reject `#[cqrs]` on fields and variants"
    )]
    pub(crate) data: Data<NoKeys, NoKeys>,
    #[darling(rename = "crate")]
    pub(crate) krate: Option<Path>,
    /// The checkpoint name (default: the type's name).
    pub(crate) name: Option<SpannedValue<String>>,
    /// Default 1; a new version rebuilds the view.
    pub(crate) version: Option<SpannedValue<u32>>,
    pub(crate) event: Option<Type>,
    /// Default `()`.
    pub(crate) context: Option<Type>,
    /// Default `core::convert::Infallible`.
    pub(crate) error: Option<Type>,
    /// `aggregate = T` (repeatable): only events of streams of `T::TYPE`.
    #[darling(multiple)]
    pub(crate) aggregate: Vec<Type>,
}

/// `#[derive(ProcessManager)]` on the process manager's state.
#[derive(Debug, FromDeriveInput)]
#[darling(attributes(cqrs), supports(struct_any, enum_any))]
pub(crate) struct ProcessInput {
    pub(crate) ident: Ident,
    pub(crate) generics: Generics,
    #[allow(
        dead_code,
        reason = "read only to reject `#[cqrs]` on fields and variants"
    )]
    pub(crate) data: Data<NoKeys, NoKeys>,
    #[darling(rename = "crate")]
    pub(crate) krate: Option<Path>,
    /// The name instances and timers are stored under (default: the type's name).
    pub(crate) name: Option<SpannedValue<String>>,
    pub(crate) event: Option<Type>,
    pub(crate) command: Option<Type>,
    /// `aggregate = T` (repeatable): only events of streams of `T::TYPE`.
    #[darling(multiple)]
    pub(crate) aggregate: Vec<Type>,
}

/// A variant or field that takes no `#[cqrs]` keys: any key on it is an error.
#[derive(Debug, FromField, FromVariant)]
#[darling(attributes(cqrs))]
pub(crate) struct NoKeys {}

/// The span of a name: the `name = "..."` literal when given, else the item's ident.
pub(crate) fn name_of(name: Option<&SpannedValue<String>>, ident: &Ident) -> (String, Span) {
    match name {
        Some(name) => (name.as_ref().clone(), name.span()),
        None => (ident.to_string(), ident.span()),
    }
}

/// The root path of cqrs-core in generated code.
pub(crate) fn root(krate: Option<&Path>) -> Path {
    krate
        .cloned()
        .unwrap_or_else(|| syn::parse_quote!(::cqrs_core))
}
