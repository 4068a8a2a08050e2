//! The `Event` impl of an event enum: one stored type per variant.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use super::{Model, VariantModel, decode_older, members, types, upcast};
use crate::payload;

pub(super) fn generate_enum(model: &Model, variants: &[VariantModel]) -> TokenStream {
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
