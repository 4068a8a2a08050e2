//! `#[derive(Aggregate)]`.
//!
//! Fills in the aggregate's stored type name, state version, snapshot policy and
//! associated types from `#[cqrs(...)]`, and forwards `handle_command` to the type's
//! `Handle<Command>` impl and `apply_event` to its `Apply<Event>` impl, which hold the
//! logic.

use darling::util::SpannedValue;
use darling::{Error, FromDeriveInput};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Generics, Ident, Path, Type};

use crate::attr::{self, AggregateInput};
use crate::output;
use crate::validate;

struct Model {
    root: Path,
    ident: Ident,
    generics: Generics,
    name: String,
    command: Type,
    event: Type,
    error: Type,
    services: Option<Type>,
    snapshot_every: Option<u64>,
    state_version: Option<u32>,
}

/// Expands `#[derive(Aggregate)]`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    validate::not_union(input, "Aggregate")?;
    let model = parse(input)?;
    Ok(output::wrap(&generate(&model)))
}

/// A required type key, or an error on the type's name.
pub(crate) fn required(
    value: Option<&Type>,
    key: &str,
    what: &str,
    derive: &str,
    ident: &Ident,
    errors: &mut darling::error::Accumulator,
) -> Option<Type> {
    if value.is_none() {
        errors.push(
            Error::custom(format!(
                "missing `#[cqrs({key} = ...)]`: `#[derive({derive})]` needs {what}"
            ))
            .with_span(ident),
        );
    }
    value.cloned()
}

fn parse(input: &DeriveInput) -> darling::Result<Model> {
    let opts = AggregateInput::from_derive_input(input)?;
    let mut errors = Error::accumulator();
    validate::name(opts.name.as_ref(), &mut errors);
    let ident = &opts.ident;
    let command = required(
        opts.command.as_ref(),
        "command",
        "the type of the commands it decides on",
        "Aggregate",
        ident,
        &mut errors,
    );
    let event = required(
        opts.event.as_ref(),
        "event",
        "the type of the events it records",
        "Aggregate",
        ident,
        &mut errors,
    );
    let error = required(
        opts.error.as_ref(),
        "error",
        "the type of its domain errors",
        "Aggregate",
        ident,
        &mut errors,
    );
    let state_version = opts
        .state_version
        .as_ref()
        .map(|value| validate::version(Some(value), "state_version", &mut errors));
    let snapshot_every = opts.snapshot_every.as_ref().map(|every| {
        if **every == 0 {
            errors.push(
                Error::custom(
                    "`#[cqrs(snapshot_every = 0)]` would never snapshot: leave the key out instead",
                )
                .with_span(&every.span()),
            );
        }
        **every
    });
    errors.finish()?;
    let (Some(command), Some(event), Some(error)) = (command, event, error) else {
        return Err(Error::custom("missing aggregate types").with_span(ident));
    };
    Ok(Model {
        root: attr::root(opts.krate.as_ref()),
        name: attr::name_of(opts.name.as_ref(), ident).0,
        ident: opts.ident,
        generics: opts.generics,
        command,
        event,
        error,
        services: opts.services,
        snapshot_every,
        state_version,
    })
}

fn generate(model: &Model) -> TokenStream {
    let Model {
        root,
        ident,
        generics,
        name,
        command,
        event,
        error,
        ..
    } = model;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let services = model
        .services
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(()));
    let state_version = model
        .state_version
        .map(|version| quote!(const STATE_VERSION: u32 = #version;));
    let snapshot_policy = model.snapshot_every.map(|every| {
        quote! {
            fn snapshot_policy() -> #root::SnapshotPolicy {
                #root::SnapshotPolicy::every(#every)
            }
        }
    });
    let handle = quote_spanned! {command.span()=>
        <Self as #root::Handle<#command>>::handle(self, command, services)
    };
    let apply = quote_spanned! {event.span()=>
        <Self as #root::Apply<#event>>::apply(self, event)
    };
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #impl_generics #root::Aggregate for #ident #ty_generics #where_clause {
            const TYPE: &'static str = #name;
            #state_version

            type Command = #command;
            type Event = #event;
            type Error = #error;
            type Services = #services;

            #snapshot_policy

            fn handle_command(
                &self,
                command: &Self::Command,
                services: &Self::Services,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<::std::vec::Vec<Self::Event>, Self::Error>,
            > + ::core::marker::Send {
                #handle
            }

            fn apply_event(&mut self, event: &Self::Event) {
                #apply
            }
        }
    }
}

/// The impl emitted after an error: declared types where they parsed, placeholders
/// elsewhere.
pub(crate) fn stub(input: &DeriveInput) -> TokenStream {
    let opts = AggregateInput::from_derive_input(input).ok();
    let root = attr::root(opts.as_ref().and_then(|opts| opts.krate.as_ref()));
    let unknown: Type = syn::parse_quote!(#root::__private::Unknown);
    let pick = |get: fn(&AggregateInput) -> Option<&Type>, default: &Type| {
        opts.as_ref().and_then(get).unwrap_or(default).clone()
    };
    let command = pick(|opts| opts.command.as_ref(), &unknown);
    let event = pick(|opts| opts.event.as_ref(), &unknown);
    let error = pick(|opts| opts.error.as_ref(), &unknown);
    let services = pick(|opts| opts.services.as_ref(), &syn::parse_quote!(()));
    let name = opts
        .as_ref()
        .and_then(|opts| opts.name.as_ref().map(SpannedValue::as_ref))
        .cloned()
        .unwrap_or_else(|| input.ident.to_string());
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    output::wrap(&quote! {
        #[automatically_derived]
        #[allow(unused_qualifications, unreachable_code, unused_variables)]
        impl #impl_generics #root::Aggregate for #ident #ty_generics #where_clause {
            const TYPE: &'static str = #name;
            type Command = #command;
            type Event = #event;
            type Error = #error;
            type Services = #services;

            fn handle_command(
                &self,
                command: &Self::Command,
                services: &Self::Services,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<::std::vec::Vec<Self::Event>, Self::Error>,
            > + ::core::marker::Send {
                ::core::future::ready::<
                    ::core::result::Result<::std::vec::Vec<Self::Event>, Self::Error>,
                >(::core::unreachable!())
            }

            fn apply_event(&mut self, event: &Self::Event) {
                ::core::unreachable!()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use syn::parse_quote;

    use super::*;

    #[test]
    fn keys_become_constants_and_types() {
        let tokens = expand(&parse_quote! {
            #[cqrs(name = "bank_account", command = C, event = E, error = Err,
                   services = Clock, snapshot_every = 50, state_version = 2)]
            struct Account { balance: u64 }
        })
        .expect("valid input")
        .to_string();
        for expected in [
            "const TYPE : & 'static str = \"bank_account\"",
            "const STATE_VERSION : u32 = 2u32",
            "type Services = Clock",
            "SnapshotPolicy :: every (50u64)",
            "< Self as :: cqrs_core :: Handle < C >> :: handle",
            "< Self as :: cqrs_core :: Apply < E >> :: apply",
            "fn handle_command (& self",
            "fn apply_event (& mut self",
        ] {
            assert!(
                tokens.contains(expected),
                "{expected} missing from {tokens}"
            );
        }
    }

    #[test]
    fn defaults_are_left_to_the_trait() {
        let tokens = expand(&parse_quote! {
            #[cqrs(command = C, event = E, error = Err)]
            enum Order { #[default] Draft, Placed }
        })
        .expect("valid input")
        .to_string();
        assert!(tokens.contains("\"Order\""), "{tokens}");
        assert!(tokens.contains("type Services = ()"), "{tokens}");
        assert!(!tokens.contains("STATE_VERSION"), "{tokens}");
        assert!(!tokens.contains("snapshot_policy"), "{tokens}");
    }

    #[test]
    fn every_missing_type_is_reported() {
        let errors = expand(&parse_quote! {
            #[cqrs(snapshot_every = 0)]
            struct Account;
        })
        .expect_err("invalid");
        let messages: Vec<_> = errors.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].contains("missing `#[cqrs(command = ...)]`"));
        assert!(messages[3].contains("snapshot_every = 0"));
    }

    #[test]
    fn stub_fills_unknown_types() {
        let tokens = stub(&parse_quote! {
            #[cqrs(event = E)]
            struct Account;
        })
        .to_string();
        assert!(tokens.contains("type Event = E"), "{tokens}");
        assert!(tokens.contains("type Command = :: cqrs_core :: __private :: Unknown"));
    }
}
