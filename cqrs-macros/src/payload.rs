//! The helper structs an event enum's variant is stored through: a borrowing one to
//! serialise the payload and an owning one to deserialise it, so the enum itself needs no
//! serde impls and no type tag ends up in the payload. They carry the fields' `#[serde]`
//! attributes, and the container attributes [`crate::serde_attr`] reads.

use darling::ast::{Fields, Style};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::{Ident, LitStr, Path};

use crate::attr::EventField;
use crate::serde_attr::PayloadAttrs;

/// The helper struct a variant's payload is serialised through.
pub(crate) fn ref_ident(variant: &Ident) -> Ident {
    format_ident!("__{}Ref", variant)
}

/// The helper struct a variant's payload is deserialised into.
pub(crate) fn payload_ident(variant: &Ident) -> Ident {
    format_ident!("__{}Payload", variant)
}

/// Whether decoding a variant goes through its payload struct: always when it has
/// fields, and without fields only to refuse unknown ones.
pub(crate) fn reads_payload(fields: &Fields<EventField>, attrs: &PayloadAttrs) -> bool {
    !fields.is_empty() || attrs.deny_unknown_fields
}

/// The helper structs of one variant: a borrowing one to serialise and an owning one to
/// deserialise, each with the fields' `#[serde]` attributes and the rename rule of its
/// direction; the owning one also denies unknown fields when the enum does. A variant
/// without fields has only the owning one, and only when it denies unknown fields.
pub(crate) fn helpers(
    root: &Path,
    variant: &Ident,
    fields: &Fields<EventField>,
    attrs: &PayloadAttrs,
) -> TokenStream {
    if !reads_payload(fields, attrs) {
        return TokenStream::new();
    }
    let serde = quote!(#root::__private::serde);
    let serde_path = serde.to_string();
    let refs = ref_ident(variant);
    let owned = payload_ident(variant);
    let deny = attrs
        .deny_unknown_fields
        .then(|| quote!(#[serde(deny_unknown_fields)]));
    let rename = |rule: Option<&LitStr>| rule.map(|rule| quote!(#[serde(rename_all = #rule)]));
    let (ser_rename, de_rename) = (
        rename(attrs.rename.serialize.as_ref()),
        rename(attrs.rename.deserialize.as_ref()),
    );
    let owned_fields = fields.iter().map(|field| {
        let (attrs, ty) = (&field.attrs, &field.ty);
        match &field.ident {
            Some(ident) => quote!(#(#attrs)* #ident: #ty),
            None => quote!(#(#attrs)* #ty),
        }
    });
    // Without fields, braces: `{}` is what an empty payload is.
    let owned_body = match fields.style {
        Style::Tuple if !fields.is_empty() => quote!((#(#owned_fields),*);),
        Style::Tuple | Style::Struct | Style::Unit => quote!({ #(#owned_fields),* }),
    };
    let owned = quote! {
        #[derive(#serde::Deserialize)]
        #[serde(crate = #serde_path)]
        #de_rename
        #deny
        struct #owned #owned_body
    };
    if fields.is_empty() {
        return owned;
    }
    let ref_fields = fields.iter().map(|field| {
        let (attrs, ty) = (&field.attrs, &field.ty);
        match &field.ident {
            Some(ident) => quote!(#(#attrs)* #ident: &'__a #ty),
            None => quote!(#(#attrs)* &'__a #ty),
        }
    });
    let ref_body = match fields.style {
        Style::Tuple => quote!((#(#ref_fields),*);),
        Style::Struct | Style::Unit => quote!({ #(#ref_fields),* }),
    };
    quote! {
        #[derive(#serde::Serialize)]
        #[serde(crate = #serde_path)]
        #ser_rename
        struct #refs<'__a> #ref_body

        #owned
    }
}

#[cfg(test)]
mod tests {
    use syn::{Variant, parse_quote};

    use super::*;
    use crate::serde_attr::Rename;

    #[test]
    fn helpers_carry_each_direction_s_rule_and_deny_only_when_reading() {
        let attrs = PayloadAttrs {
            rename: Rename {
                serialize: Some(parse_quote!("kebab-case")),
                deserialize: Some(parse_quote!("camelCase")),
            },
            deny_unknown_fields: true,
        };
        let variant: Variant = parse_quote!(A { first_name: String });
        let fields = Fields::new(
            Style::Struct,
            variant
                .fields
                .iter()
                .map(|field| EventField {
                    ident: field.ident.clone(),
                    ty: field.ty.clone(),
                    attrs: Vec::new(),
                })
                .collect(),
        );
        let tokens =
            helpers(&parse_quote!(::cqrs_core), &variant.ident, &fields, &attrs).to_string();
        let (refs, owned) = tokens
            .split_once("struct __ARef")
            .and_then(|(_, rest)| rest.split_once("struct __APayload"))
            .expect("both helper structs");
        assert!(tokens.starts_with("# [derive (:: cqrs_core :: __private :: serde :: Serialize)]"));
        assert!(
            refs.ends_with(
                "# [serde (rename_all = \"camelCase\")] # [serde (deny_unknown_fields)] "
            ),
            "{tokens}"
        );
        assert!(tokens.contains("# [serde (rename_all = \"kebab-case\")] struct __ARef"));
        assert!(owned.contains("first_name : String"), "{tokens}");

        // Without fields: only the owning struct, braced, to refuse unknown fields.
        let empty = Fields::new(Style::Tuple, Vec::new());
        let tokens =
            helpers(&parse_quote!(::cqrs_core), &variant.ident, &empty, &attrs).to_string();
        assert!(!tokens.contains("__ARef"), "{tokens}");
        assert!(tokens.ends_with("struct __APayload { }"), "{tokens}");
        // Without fields and without `deny_unknown_fields`: nothing to read.
        let tokens = helpers(
            &parse_quote!(::cqrs_core),
            &variant.ident,
            &empty,
            &PayloadAttrs::default(),
        );
        assert!(tokens.is_empty(), "{tokens}");
    }
}
