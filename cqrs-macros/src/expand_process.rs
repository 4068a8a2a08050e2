//! `#[derive(ProcessManager)]`.
//!
//! Fills in the process manager's name and the types of what it hears and sends from
//! `#[cqrs(...)]`, narrows its filter to the stream types of the aggregates it names, and
//! forwards every reaction to the type's `React` impl, which holds the logic.

use darling::util::SpannedValue;
use darling::{Error, FromDeriveInput};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{DeriveInput, Generics, Ident, Path, Type};

use crate::attr::{self, ProcessInput};
use crate::expand_aggregate::required;
use crate::expand_projection;
use crate::output;
use crate::validate;

struct Model {
    root: Path,
    ident: Ident,
    generics: Generics,
    name: String,
    event: Type,
    command: Type,
    aggregates: Vec<Type>,
}

/// Expands `#[derive(ProcessManager)]`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    validate::not_union(input, "ProcessManager")?;
    let model = parse(input)?;
    Ok(output::wrap(&generate(&model)))
}

fn parse(input: &DeriveInput) -> darling::Result<Model> {
    let opts = ProcessInput::from_derive_input(input)?;
    let mut errors = Error::accumulator();
    validate::name(opts.name.as_ref(), &mut errors);
    let event = required(
        opts.event.as_ref(),
        "event",
        "the event type it hears",
        "ProcessManager",
        &opts.ident,
        &mut errors,
    );
    let command = required(
        opts.command.as_ref(),
        "command",
        "the type of the commands it sends",
        "ProcessManager",
        &opts.ident,
        &mut errors,
    );
    errors.finish()?;
    let (Some(event), Some(command)) = (event, command) else {
        return Err(Error::custom("missing event or command type").with_span(&opts.ident));
    };
    Ok(Model {
        root: attr::root(opts.krate.as_ref()),
        name: attr::name_of(opts.name.as_ref(), &opts.ident).0,
        ident: opts.ident,
        generics: opts.generics,
        event,
        command,
        aggregates: opts.aggregate,
    })
}

fn generate(model: &Model) -> TokenStream {
    let Model {
        root,
        ident,
        generics,
        name,
        event,
        command,
        aggregates,
    } = model;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let filter = expand_projection::filter(root, event, aggregates);
    // Spanned on the type, so a missing `React` impl is reported there.
    let react = quote!(#root::process::React);
    let correlate = quote_spanned!(ident.span()=> <Self as #react>::correlate(event));
    let on_event = quote_spanned!(ident.span()=> <Self as #react>::react(self, event, effects));
    let on_timer = quote_spanned!(ident.span()=> <Self as #react>::on_timer(self, timer, effects));
    let on_refused =
        quote_spanned!(ident.span()=> <Self as #react>::on_refused(self, command, reason, effects));
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #impl_generics #root::process::ProcessManager for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;

            type Event = #event;
            type Command = #command;

            #filter

            fn correlation_key(
                event: &#root::EventEnvelope<Self::Event>,
            ) -> ::core::option::Option<::std::string::String> {
                #correlate
            }

            fn handle_event(
                &mut self,
                event: &#root::EventEnvelope<Self::Event>,
                effects: &mut #root::process::Effects<Self::Command>,
            ) {
                #on_event
            }

            fn handle_timer(
                &mut self,
                timer: &str,
                effects: &mut #root::process::Effects<Self::Command>,
            ) {
                #on_timer
            }

            fn handle_refusal(
                &mut self,
                command: &Self::Command,
                reason: &str,
                effects: &mut #root::process::Effects<Self::Command>,
            ) {
                #on_refused
            }
        }
    }
}

/// The impl emitted after an error.
pub(crate) fn stub(input: &DeriveInput) -> TokenStream {
    let opts = ProcessInput::from_derive_input(input).ok();
    let root = attr::root(opts.as_ref().and_then(|opts| opts.krate.as_ref()));
    let pick = |get: fn(&ProcessInput) -> Option<&Type>| {
        opts.as_ref()
            .and_then(get)
            .cloned()
            .unwrap_or_else(|| syn::parse_quote!(#root::__private::Unknown))
    };
    let event = pick(|opts| opts.event.as_ref());
    let command = pick(|opts| opts.command.as_ref());
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
        impl #impl_generics #root::process::ProcessManager for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            type Event = #event;
            type Command = #command;

            fn correlation_key(
                _: &#root::EventEnvelope<Self::Event>,
            ) -> ::core::option::Option<::std::string::String> {
                ::core::option::Option::None
            }

            fn handle_event(
                &mut self,
                _: &#root::EventEnvelope<Self::Event>,
                _: &mut #root::process::Effects<Self::Command>,
            ) {
            }

            fn handle_timer(&mut self, _: &str, _: &mut #root::process::Effects<Self::Command>) {}

            fn handle_refusal(
                &mut self,
                _: &Self::Command,
                _: &str,
                _: &mut #root::process::Effects<Self::Command>,
            ) {
            }
        }
    })
}
