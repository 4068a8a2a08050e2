//! `#[derive(Event)]`.
//!
//! An enum stores one type per variant: the payload is the variant's fields, serialised
//! through private helper structs (module `payload`), so the enum itself needs no serde
//! impls and no type tag ends up in the payload. A struct is one type whose payload is
//! the struct's own serde form.

use darling::ast::{Data, Fields};
use darling::{Error, FromDeriveInput};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, Index, Member, Path};

use crate::attr::{self, EventField, EventInput, EventVariant};
use crate::output;
use crate::payload;
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
        Shape::Enum(variants) => generate_enum(model, variants),
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

fn generate_enum(model: &Model, variants: &[VariantModel]) -> TokenStream {
    let Model { root, ident, .. } = model;
    let types = types(root, variants.iter().map(|variant| &variant.ty));
    let helpers = variants
        .iter()
        .map(|variant| payload::helpers(root, &variant.ident, &variant.fields, &variant.payload));
    let names = variants.iter().map(|variant| {
        let (variant, name) = (&variant.ident, &variant.ty.name);
        quote!(Self::#variant { .. } => #name)
    });
    let versions = variants.iter().map(|variant| {
        let (variant, version) = (&variant.ident, variant.ty.version);
        quote!(Self::#variant { .. } => #version)
    });
    let encodes = variants.iter().map(|variant| {
        let name = &variant.ident;
        if variant.fields.is_empty() {
            return quote! {
                Self::#name { .. } => ::core::result::Result::Ok(#root::__private::empty_payload())
            };
        }
        let members = members(&variant.fields);
        let bindings: Vec<_> = (0..members.len()).map(|i| format_ident!("__f{i}")).collect();
        let refs = payload::ref_ident(&variant.ident);
        quote! {
            Self::#name { #(#members: #bindings),* } => #root::codec::encode(&#refs { #(#members: #bindings),* })
        }
    });
    let decodes = variants.iter().map(|variant| {
        let (name, ty) = (&variant.ident, &variant.ty);
        let (type_name, version) = (&ty.name, ty.version);
        let upcast = upcast(root, ty);
        let owned = payload::payload_ident(&variant.ident);
        let build = if !payload::reads_payload(&variant.fields, &variant.payload) {
            quote! {
                let _ = payload;
                ::core::result::Result::Ok(Self::#name {})
            }
        } else if variant.fields.is_empty() {
            quote! {
                #root::codec::decode::<#owned>(event_type, #version, payload)?;
                ::core::result::Result::Ok(Self::#name {})
            }
        } else {
            let members = members(&variant.fields);
            quote! {
                let __payload: #owned = #root::codec::decode(event_type, #version, payload)?;
                ::core::result::Result::Ok(Self::#name { #(#members: __payload.#members),* })
            }
        };
        quote! {
            #type_name => {
                #upcast
                #build
            }
        }
    });
    // Payloads at their type's current version deserialise straight from the text; older
    // ones go through `decode` and its upcasters.
    let older = decode_older(root);
    let json_decodes = variants.iter().map(|variant| {
        let (name, ty) = (&variant.ident, &variant.ty);
        let (type_name, version) = (&ty.name, ty.version);
        let owned = payload::payload_ident(&variant.ident);
        if !payload::reads_payload(&variant.fields, &variant.payload) {
            return quote! {
                (#type_name, #version) => ::core::result::Result::Ok(Self::#name {}),
            };
        }
        if variant.fields.is_empty() {
            return quote! {
                (#type_name, #version) => {
                    #root::codec::decode_json::<#owned>(event_type, #version, payload)?;
                    ::core::result::Result::Ok(Self::#name {})
                }
            };
        }
        let members = members(&variant.fields);
        quote! {
            (#type_name, #version) => {
                let __payload: #owned = #root::codec::decode_json(event_type, #version, payload)?;
                ::core::result::Result::Ok(Self::#name { #(#members: __payload.#members),* })
            }
        }
    });
    quote! {
        #(#helpers)*

        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #root::Event for #ident {
            const TYPES: &'static [#root::EventType] = #types;

            fn event_type(&self) -> &'static str {
                match self {
                    #(#names,)*
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    #(#versions,)*
                }
            }

            fn encode(
                &self,
            ) -> ::core::result::Result<#root::__private::serde_json::Value, #root::CodecError> {
                match self {
                    #(#encodes,)*
                }
            }

            fn decode(
                event_type: &str,
                schema_version: u32,
                payload: #root::__private::serde_json::Value,
            ) -> ::core::result::Result<Self, #root::CodecError> {
                match event_type {
                    #(#decodes)*
                    _ => ::core::result::Result::Err(#root::__private::unknown_type(event_type)),
                }
            }

            fn decode_json(
                event_type: &str,
                schema_version: u32,
                payload: &str,
            ) -> ::core::result::Result<Self, #root::CodecError> {
                match (event_type, schema_version) {
                    #(#json_decodes)*
                    _ => #older,
                }
            }
        }
    }
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
mod tests {
    use syn::parse_quote;

    use super::*;

    /// Every message, one a line.
    fn error_of(input: &DeriveInput) -> String {
        match expand(input) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(error) => error.into_iter().map(|e| e.to_string() + "\n").collect(),
        }
    }

    #[test]
    fn names_default_to_variants_and_versions_to_one() {
        let model = parse(&parse_quote! {
            enum E {
                Opened { owner: String },
                #[cqrs(name = "MoneyWithdrawn", version = 2, upcast(v1 = up))]
                Withdrawn(u64),
                Closed,
            }
        })
        .expect("valid input");
        let Shape::Enum(variants) = model.shape else {
            panic!("an enum")
        };
        let summary: Vec<_> = variants
            .iter()
            .map(|v| {
                (
                    v.ty.name.as_str(),
                    v.ty.version,
                    v.ty.chain.first,
                    v.ty.chain.steps.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("Opened", 1, 1, 0),
                ("MoneyWithdrawn", 2, 1, 1),
                ("Closed", 1, 1, 0)
            ]
        );
    }

    #[test]
    fn expansion_lists_types_and_uses_absolute_paths() {
        let tokens = expand(&parse_quote! {
            enum E { A { x: u8 }, #[cqrs(version = 3, upcast(v2 = b))] B }
        })
        .expect("valid input")
        .to_string();
        assert!(tokens.starts_with("const _ : () ="), "{tokens}");
        assert!(tokens.contains("name : \"A\" , version : 1u32"), "{tokens}");
        assert!(tokens.contains("name : \"B\" , version : 3u32"), "{tokens}");
        assert!(
            tokens.contains(":: cqrs_core :: codec :: upcast (event_type , schema_version , 2u32")
        );
        let unqualified = tokens.replace(":: core :: result :: Result", "");
        assert!(
            !unqualified.contains("Result"),
            "unqualified path in {tokens}"
        );
    }

    #[test]
    fn crate_override_changes_the_root() {
        let tokens = expand(&parse_quote! {
            #[cqrs(crate = "my::cqrs")]
            struct Ping;
        })
        .expect("valid input")
        .to_string();
        assert!(
            tokens.contains("impl my :: cqrs :: Event for Ping"),
            "{tokens}"
        );
        assert!(!tokens.contains("cqrs_core"), "{tokens}");
    }

    #[test]
    fn duplicate_names_and_version_zero_are_all_reported() {
        let message = error_of(&parse_quote! {
            enum E {
                A,
                #[cqrs(name = "A", version = 0)]
                B,
            }
        });
        assert!(
            message.contains("duplicate event type name `A`"),
            "{message}"
        );
        assert!(message.contains("version = 0"), "{message}");
        assert_eq!(message.lines().count(), 2, "{message}");
    }

    #[test]
    fn upcast_gaps_and_misfits_are_errors() {
        let message = error_of(&parse_quote! {
            enum E { #[cqrs(version = 4, upcast(v1 = a, v3 = c))] A }
        });
        assert!(message.contains("no `v2` upcaster"), "{message}");
        let message = error_of(&parse_quote! {
            enum E { #[cqrs(version = 2, upcast(v2 = a))] A }
        });
        assert!(message.contains("upcaster `v2` does not fit"), "{message}");
        let message = error_of(&parse_quote! {
            enum E { #[cqrs(upcast(v1 = a))] A }
        });
        assert!(message.contains("above 1"), "{message}");
        let message = error_of(&parse_quote! {
            enum E { #[cqrs(version = 2, upcast(one = a))] A }
        });
        assert!(message.contains("like `v1`"), "{message}");
    }

    #[test]
    fn shapes_and_generics_are_checked() {
        assert!(
            error_of(&parse_quote!(
                enum E {}
            ))
            .contains("at least one variant")
        );
        assert!(
            error_of(&parse_quote!(
                enum E<T> {
                    A(T),
                }
            ))
            .contains("generic")
        );
        assert!(error_of(&parse_quote!(union U { a: u8 })).contains("union"));
        let message = error_of(&parse_quote! {
            #[cqrs(version = 2)]
            enum E { A }
        });
        assert!(message.contains("goes on each variant"), "{message}");
    }
}
