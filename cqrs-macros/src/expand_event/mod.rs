//! `#[derive(Event)]`.
//!
//! An enum stores one type per variant: the payload is the variant's fields, serialised
//! through private helper structs (module `payload`), so the enum itself needs no serde
//! impls and no type tag ends up in the payload. A struct is one type whose payload is
//! the struct's own serde form.

use darling::ast::{Data, Fields};
use darling::{Error, FromDeriveInput};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, Index, Member, Path};

mod enums;

use crate::attr::{self, EventField, EventInput, EventVariant};
use crate::output;
use crate::serde_attr::{EnumSerde, PayloadAttrs, VariantSerde};
use crate::validate::{self, Chain};

/// The validated input.
struct Model {
    root: Path,
    ident: Ident,
    shape: Shape,
}

enum Shape {
    Enum(Vec<VariantModel>),
    Struct(TypeModel),
}

/// One stored event type.
struct TypeModel {
    name: String,
    version: u32,
    chain: Chain,
}

struct VariantModel {
    ident: Ident,
    fields: Fields<EventField>,
    ty: TypeModel,
    /// What its `#[serde]` attributes and the enum's make of its helper structs.
    payload: PayloadAttrs,
}

/// Expands `#[derive(Event)]`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    validate::not_union(input, "Event")?;
    let model = parse(input)?;
    Ok(output::wrap(&generate(&model)))
}

/// The impl emitted after an error: it compiles whatever the input was.
pub(crate) fn stub(input: &DeriveInput) -> TokenStream {
    let root = stub_root(input);
    let ident = &input.ident;
    let (impl_generics, ty_generics, _) = input.generics.split_for_impl();
    // Generic parameters are an error already; bounding `Self` keeps the stub from
    // adding "`T` cannot be sent between threads" on top.
    let mut generics = input.generics.clone();
    if !generics.params.is_empty() {
        generics
            .make_where_clause()
            .predicates
            .push(syn::parse_quote! {
                Self: ::core::fmt::Debug + ::core::marker::Send + ::core::marker::Sync + 'static
            });
    }
    let where_clause = &generics.where_clause;
    output::wrap(&quote! {
        #[automatically_derived]
        #[allow(unused_qualifications, unused_variables)]
        impl #impl_generics #root::Event for #ident #ty_generics #where_clause {
            const TYPES: &'static [#root::EventType] = &[];
            fn event_type(&self) -> &'static str {
                ::core::unreachable!()
            }
            fn schema_version(&self) -> u32 {
                ::core::unreachable!()
            }
            fn encode(
                &self,
            ) -> ::core::result::Result<#root::__private::serde_json::Value, #root::CodecError> {
                ::core::unreachable!()
            }
            fn decode(
                event_type: &str,
                schema_version: u32,
                payload: #root::__private::serde_json::Value,
            ) -> ::core::result::Result<Self, #root::CodecError> {
                ::core::unreachable!()
            }
        }
    })
}

fn stub_root(input: &DeriveInput) -> Path {
    let krate = EventInput::from_derive_input(input)
        .ok()
        .and_then(|opts| opts.krate);
    attr::root(krate.as_ref())
}

fn parse(input: &DeriveInput) -> darling::Result<Model> {
    let opts = EventInput::from_derive_input(input)?;
    let mut errors = Error::accumulator();
    validate::no_generics(&opts.generics, "Event", &mut errors);
    let shape = match opts.data {
        Data::Enum(variants) => {
            let hint = "on an event enum it goes on each variant";
            validate::misplaced(opts.name.as_ref(), "name", hint, &mut errors);
            validate::misplaced(opts.version.as_ref(), "version", hint, &mut errors);
            validate::misplaced(opts.upcast.as_ref(), "upcast", hint, &mut errors);
            if variants.is_empty() {
                errors.push(
                    Error::custom(
                        "`#[derive(Event)]` needs at least one variant: an empty enum has no event \
                         to store",
                    )
                    .with_span(&opts.ident),
                );
            }
            let serde = EnumSerde::parse(&opts.attrs, &mut errors);
            let mut names = Vec::new();
            let variants = variants
                .into_iter()
                .map(|variant| {
                    let ty = type_model(&variant, &mut errors);
                    names.push(attr::name_of(variant.name.as_ref(), &variant.ident));
                    let payload = serde.payload(&VariantSerde::parse(&variant.attrs, &mut errors));
                    VariantModel {
                        ident: variant.ident,
                        fields: variant.fields,
                        ty,
                        payload,
                    }
                })
                .collect();
            validate::unique_names(&names, "event type", &mut errors);
            Shape::Enum(variants)
        }
        Data::Struct(_) => {
            validate::name(opts.name.as_ref(), &mut errors);
            let version = validate::version(opts.version.as_ref(), "version", &mut errors);
            let chain = validate::chain(version, opts.upcast.as_ref(), &mut errors);
            let (name, _) = attr::name_of(opts.name.as_ref(), &opts.ident);
            Shape::Struct(TypeModel {
                name,
                version,
                chain,
            })
        }
    };
    errors.finish_with(Model {
        root: attr::root(opts.krate.as_ref()),
        ident: opts.ident,
        shape,
    })
}

fn type_model(variant: &EventVariant, errors: &mut darling::error::Accumulator) -> TypeModel {
    validate::name(variant.name.as_ref(), errors);
    let version = validate::version(variant.version.as_ref(), "version", errors);
    let chain = validate::chain(version, variant.upcast.as_ref(), errors);
    let (name, _) = attr::name_of(variant.name.as_ref(), &variant.ident);
    TypeModel {
        name,
        version,
        chain,
    }
}

fn generate(model: &Model) -> TokenStream {
    match &model.shape {
        Shape::Enum(variants) => enums::generate_enum(model, variants),
        Shape::Struct(ty) => generate_struct(model, ty),
    }
}

/// `&[EventType { .. }, ..]`.
fn types<'a>(root: &Path, types: impl IntoIterator<Item = &'a TypeModel>) -> TokenStream {
    let types = types.into_iter().map(|ty| {
        let (name, version) = (&ty.name, ty.version);
        quote!(#root::EventType { name: #name, version: #version })
    });
    quote!(&[#(#types),*])
}

/// Upcasts a stored payload to the current version: binds `payload` anew.
/// The body of a derived `decode_json` for a payload not at its type's current version:
/// parse the text, then `decode` (with its upcasters and errors).
fn decode_older(root: &Path) -> TokenStream {
    quote! {
        <Self as #root::Event>::decode(
            event_type,
            schema_version,
            #root::codec::decode_json::<#root::__private::serde_json::Value>(
                event_type,
                schema_version,
                payload,
            )?,
        )
    }
}

fn upcast(root: &Path, ty: &TypeModel) -> TokenStream {
    let first = ty.chain.first;
    let steps = ty.chain.steps.iter().map(|func| {
        quote_spanned! {func.span()=>
            {
                let __step: #root::Upcaster = #func;
                __step
            }
        }
    });
    quote! {
        let payload = #root::codec::upcast(
            event_type,
            schema_version,
            #first,
            &[#(#steps),*],
            payload,
        )?;
    }
}

fn members(fields: &Fields<EventField>) -> Vec<Member> {
    fields
        .iter()
        .enumerate()
        .map(|(index, field)| match &field.ident {
            Some(ident) => Member::Named(ident.clone()),
            None => Member::Unnamed(Index {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                span: Span::call_site(),
            }),
        })
        .collect()
}

fn generate_struct(model: &Model, ty: &TypeModel) -> TokenStream {
    let Model { root, ident, .. } = model;
    let types = types(root, [ty]);
    let (name, version) = (&ty.name, ty.version);
    let upcast = upcast(root, ty);
    let encode = quote_spanned!(ident.span()=> #root::codec::encode(self));
    let decode = quote_spanned!(ident.span()=> #root::codec::decode(event_type, #version, payload));
    let decode_json =
        quote_spanned!(ident.span()=> #root::codec::decode_json(event_type, #version, payload));
    let older = decode_older(root);
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #root::Event for #ident {
            const TYPES: &'static [#root::EventType] = #types;

            fn event_type(&self) -> &'static str {
                #name
            }

            fn schema_version(&self) -> u32 {
                #version
            }

            fn encode(
                &self,
            ) -> ::core::result::Result<#root::__private::serde_json::Value, #root::CodecError> {
                #encode
            }

            fn decode(
                event_type: &str,
                schema_version: u32,
                payload: #root::__private::serde_json::Value,
            ) -> ::core::result::Result<Self, #root::CodecError> {
                if event_type != #name {
                    return ::core::result::Result::Err(#root::__private::unknown_type(event_type));
                }
                #upcast
                #decode
            }

            fn decode_json(
                event_type: &str,
                schema_version: u32,
                payload: &str,
            ) -> ::core::result::Result<Self, #root::CodecError> {
                // At the current version, straight from the text; older ones are upcast.
                if event_type == #name && schema_version == #version {
                    return #decode_json;
                }
                #older
            }
        }
    }
}

#[cfg(test)]
mod tests;
