//! `#[derive(Projection)]`.
//!
//! Fills in the projection's checkpoint name, version and associated types from
//! `#[cqrs(...)]`, narrows its filter to the stream types of the aggregates it names, and
//! forwards `handle` to the type's `Project` impl, which holds the logic.

use darling::util::SpannedValue;
use darling::{Error, FromDeriveInput};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Generics, Ident, Path, Type};

use crate::attr::{self, ProjectionInput};
use crate::expand_aggregate::required;
use crate::output;
use crate::validate;

struct Model {
    root: Path,
    ident: Ident,
    generics: Generics,
    name: String,
    version: Option<u32>,
    event: Type,
    context: Option<Type>,
    error: Option<Type>,
    aggregates: Vec<Type>,
}

/// Expands `#[derive(Projection)]`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    validate::not_union(input, "Projection")?;
    let model = parse(input)?;
    Ok(output::wrap(&generate(&model)))
}

fn parse(input: &DeriveInput) -> darling::Result<Model> {
    let opts = ProjectionInput::from_derive_input(input)?;
    let mut errors = Error::accumulator();
    validate::name(opts.name.as_ref(), &mut errors);
    let version = opts
        .version
        .as_ref()
        .map(|value| validate::version(Some(value), "version", &mut errors));
    let event = required(
        opts.event.as_ref(),
        "event",
        "the event type it consumes",
        "Projection",
        &opts.ident,
        &mut errors,
    );
    errors.finish()?;
    let Some(event) = event else {
        return Err(Error::custom("missing event type").with_span(&opts.ident));
    };
    Ok(Model {
        root: attr::root(opts.krate.as_ref()),
        name: attr::name_of(opts.name.as_ref(), &opts.ident).0,
        ident: opts.ident,
        generics: opts.generics,
        version,
        event,
        context: opts.context,
        error: opts.error,
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
        ..
    } = model;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let version = model
        .version
        .map(|version| quote!(const VERSION: u32 = #version;));
    let context = model
        .context
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(()));
    let error = model
        .error
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::core::convert::Infallible));
    let filter = filter(root, event, &model.aggregates);
    let project = quote_spanned!(ident.span()=> <Self as #root::Project>::project(self, cx, event));
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #impl_generics #root::Projection for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            #version

            type Event = #event;
            type Context = #context;
            type Error = #error;

            #filter

            fn handle(
                &mut self,
                cx: &mut Self::Context,
                event: &#root::EventEnvelope<Self::Event>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), Self::Error>,
            > + ::core::marker::Send {
                #project
            }
        }
    }
}

/// `fn filter()` narrowed to the stream types of `aggregates`, or nothing (the trait's
/// default, every stream) when there are none. Shared with `#[derive(ProcessManager)]`.
pub(crate) fn filter(root: &Path, event: &Type, aggregates: &[Type]) -> Option<TokenStream> {
    (!aggregates.is_empty()).then(|| {
        let streams = aggregates.iter().map(|aggregate| {
            quote_spanned!(aggregate.span()=> .and_stream_type(<#aggregate as #root::Aggregate>::TYPE))
        });
        quote! {
            fn filter() -> #root::EventFilter {
                #root::EventFilter::event_types(<#event as #root::Event>::TYPES)
                    #(#streams)*
            }
        }
    })
}

/// The impl emitted after an error.
pub(crate) fn stub(input: &DeriveInput) -> TokenStream {
    let opts = ProjectionInput::from_derive_input(input).ok();
    let root = attr::root(opts.as_ref().and_then(|opts| opts.krate.as_ref()));
    let pick = |get: fn(&ProjectionInput) -> Option<&Type>, default: Type| {
        opts.as_ref().and_then(get).cloned().unwrap_or(default)
    };
    let event = pick(
        |opts| opts.event.as_ref(),
        syn::parse_quote!(#root::__private::Unknown),
    );
    let context = pick(|opts| opts.context.as_ref(), syn::parse_quote!(()));
    let error = pick(
        |opts| opts.error.as_ref(),
        syn::parse_quote!(::core::convert::Infallible),
    );
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
        impl #impl_generics #root::Projection for #ident #ty_generics #where_clause {
            const NAME: &'static str = #name;
            type Event = #event;
            type Context = #context;
            type Error = #error;

            fn handle(
                &mut self,
                cx: &mut Self::Context,
                event: &#root::EventEnvelope<Self::Event>,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<(), Self::Error>,
            > + ::core::marker::Send {
                ::core::future::ready::<::core::result::Result<(), Self::Error>>(
                    ::core::unreachable!(),
                )
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use syn::parse_quote;

    use super::*;

    #[test]
    fn keys_become_constants_types_and_filter() {
        let tokens = expand(&parse_quote! {
            #[cqrs(name = "balances", version = 3, event = E, context = Tx, error = DbError,
                   aggregate = Account, aggregate = Savings)]
            struct Balances;
        })
        .expect("valid input")
        .to_string();
        for expected in [
            "const NAME : & 'static str = \"balances\"",
            "const VERSION : u32 = 3u32",
            "type Context = Tx",
            "type Error = DbError",
            ". and_stream_type (< Account as :: cqrs_core :: Aggregate > :: TYPE)",
            ". and_stream_type (< Savings as :: cqrs_core :: Aggregate > :: TYPE)",
        ] {
            assert!(
                tokens.contains(expected),
                "{expected} missing from {tokens}"
            );
        }
    }

    #[test]
    fn defaults() {
        let tokens = expand(&parse_quote! {
            #[cqrs(event = E)]
            struct Totals(u64);
        })
        .expect("valid input")
        .to_string();
        assert!(tokens.contains("\"Totals\""), "{tokens}");
        assert!(
            tokens.contains("type Error = :: core :: convert :: Infallible"),
            "{tokens}"
        );
        assert!(!tokens.contains("fn filter"), "{tokens}");
    }

    #[test]
    fn misuse_is_reported() {
        let message = expand(&parse_quote! {
            #[cqrs(version = 0)]
            struct Totals;
        })
        .expect_err("invalid")
        .to_string();
        assert!(message.contains("version = 0"), "{message}");
        let message = expand(&parse_quote! {
            #[cqrs(event = E, evnt = F)]
            struct Totals;
        })
        .expect_err("invalid")
        .to_string();
        assert!(message.contains("evnt"), "{message}");
    }
}
