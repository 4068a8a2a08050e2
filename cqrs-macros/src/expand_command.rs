//! `#[derive(Command)]`.
//!
//! Names each command (the variant's or struct's name unless renamed) and reads the
//! aggregate id from the field marked `#[cqrs(id)]`. With `#[cqrs(aggregate = A)]`, an
//! enum whose variants each wrap one command struct also routes every variant to the
//! aggregate's `Handle<ThatStruct>` impl.

use darling::ast::{Data, Fields};
use darling::{Error, FromDeriveInput};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Generics, Ident, Index, Member, Path, Type};

use crate::attr::{self, CommandField, CommandInput};
use crate::output;
use crate::validate;

struct Model {
    root: Path,
    ident: Ident,
    generics: Generics,
    shape: Shape,
    /// `aggregate = A`: route each variant to `A`'s `Handle` impl for its inner type.
    aggregate: Option<Type>,
}

enum Shape {
    Enum(Vec<Variant>),
    Struct { name: String, id: Option<Box<Id>> },
}

struct Variant {
    ident: Ident,
    /// `None` when the name comes from the wrapped command (`aggregate` mode).
    name: Option<String>,
    id: Option<Id>,
    /// The wrapped command (`aggregate` mode).
    inner: Option<Type>,
}

/// The field holding the aggregate id.
struct Id {
    member: Member,
    ty: Type,
}

/// Expands `#[derive(Command)]`.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    validate::not_union(input, "Command")?;
    let model = parse(input)?;
    Ok(output::wrap(&generate(&model)))
}

/// The impl emitted after an error.
pub(crate) fn stub(input: &DeriveInput) -> TokenStream {
    let krate = CommandInput::from_derive_input(input)
        .ok()
        .and_then(|opts| opts.krate);
    let root = attr::root(krate.as_ref());
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    output::wrap(&quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #impl_generics #root::Command for #ident #ty_generics #where_clause {
            fn name(&self) -> &'static str {
                ::core::unreachable!()
            }
        }
    })
}

fn member(field: &CommandField, index: usize) -> Member {
    match &field.ident {
        Some(ident) => Member::Named(ident.clone()),
        None => Member::Unnamed(Index {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            span: field.ty.span(),
        }),
    }
}

/// The `#[cqrs(id)]` field, if any; a second one is an error.
fn find_id(fields: &Fields<CommandField>, errors: &mut darling::error::Accumulator) -> Option<Id> {
    let mut found = None;
    for (index, field) in fields.iter().enumerate() {
        if !field.id.is_present() {
            continue;
        }
        if found.is_some() {
            errors.push(
                Error::custom(
                    "duplicate `#[cqrs(id)]`: a command is for one aggregate, name one id field",
                )
                .with_span(&field.id.span()),
            );
            continue;
        }
        found = Some(Id {
            member: member(field, index),
            ty: field.ty.clone(),
        });
    }
    found
}

fn parse(input: &DeriveInput) -> darling::Result<Model> {
    let opts = CommandInput::from_derive_input(input)?;
    let mut errors = Error::accumulator();
    let shape = match opts.data {
        Data::Enum(variants) => {
            validate::misplaced(
                opts.name.as_ref(),
                "name",
                "on a command enum it goes on each variant",
                &mut errors,
            );
            if variants.is_empty() {
                errors.push(
                    Error::custom("`#[derive(Command)]` needs at least one variant")
                        .with_span(&opts.ident),
                );
            }
            let mut names = Vec::new();
            let mut models = Vec::new();
            for variant in variants {
                validate::name(variant.name.as_ref(), &mut errors);
                let id = find_id(&variant.fields, &mut errors);
                let inner = if opts.aggregate.is_some() {
                    wrapped(&variant.ident, &variant.fields, id.as_ref(), &mut errors)
                } else {
                    None
                };
                let named = variant.name.is_some() || opts.aggregate.is_none();
                if named {
                    names.push(attr::name_of(variant.name.as_ref(), &variant.ident));
                }
                models.push(Variant {
                    name: named.then(|| attr::name_of(variant.name.as_ref(), &variant.ident).0),
                    ident: variant.ident,
                    id,
                    inner,
                });
            }
            validate::unique_names(&names, "command", &mut errors);
            Shape::Enum(models)
        }
        Data::Struct(fields) => {
            if let Some(aggregate) = &opts.aggregate {
                errors.push(
                    Error::custom(
                        "`#[cqrs(aggregate = ...)]` routes the variants of a command enum: on a \
                         command struct, write `impl Handle<ThisCommand> for TheAggregate`",
                    )
                    .with_span(aggregate),
                );
            }
            validate::name(opts.name.as_ref(), &mut errors);
            Shape::Struct {
                name: attr::name_of(opts.name.as_ref(), &opts.ident).0,
                id: find_id(&fields, &mut errors).map(Box::new),
            }
        }
    };
    errors.finish_with(Model {
        root: attr::root(opts.krate.as_ref()),
        ident: opts.ident,
        generics: opts.generics,
        shape,
        aggregate: opts.aggregate,
    })
}

/// In `aggregate` mode, the one command a variant wraps.
fn wrapped(
    ident: &Ident,
    fields: &Fields<CommandField>,
    id: Option<&Id>,
    errors: &mut darling::error::Accumulator,
) -> Option<Type> {
    if let Some(id) = id {
        errors.push(
            Error::custom(
                "`#[cqrs(id)]` belongs on a field of the wrapped command, not on the variant \
                 that wraps it",
            )
            .with_span(&id.ty),
        );
    }
    match (fields.is_tuple(), fields.fields.as_slice()) {
        (true, [only]) => Some(only.ty.clone()),
        _ => {
            errors.push(
                Error::custom(format!(
                    "with `#[cqrs(aggregate = ...)]` each variant wraps one command, like \
                     `{ident}({ident})`"
                ))
                .with_span(ident),
            );
            None
        }
    }
}

fn generate(model: &Model) -> TokenStream {
    let Model {
        root,
        ident,
        generics,
        ..
    } = model;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let (name, aggregate_id) = match &model.shape {
        Shape::Struct { name, id } => {
            let aggregate_id = id.as_ref().map(|id| {
                let member = &id.member;
                let as_str = as_str(id, &quote!(&self.#member));
                quote! {
                    fn aggregate_id(&self) -> ::core::option::Option<&str> {
                        ::core::option::Option::Some(#as_str)
                    }
                }
            });
            (quote!(#name), aggregate_id)
        }
        Shape::Enum(variants) => {
            let names = variants.iter().map(|variant| {
                let name_of = &variant.ident;
                match &variant.name {
                    Some(name) => quote!(Self::#name_of { .. } => #name),
                    None => {
                        quote!(Self::#name_of { 0: __command } => #root::Command::name(__command))
                    }
                }
            });
            let ids = variants.iter().map(|variant| {
                let name_of = &variant.ident;
                if variant.inner.is_some() {
                    return quote! {
                        Self::#name_of { 0: __command } => #root::Command::aggregate_id(__command)
                    };
                }
                match &variant.id {
                    Some(id) => {
                        let member = &id.member;
                        let as_str = as_str(id, &quote!(__id));
                        quote! {
                            Self::#name_of { #member: __id, .. } => ::core::option::Option::Some(#as_str)
                        }
                    }
                    None => quote!(Self::#name_of { .. } => ::core::option::Option::None),
                }
            });
            let any_id = variants
                .iter()
                .any(|variant| variant.id.is_some() || variant.inner.is_some());
            let aggregate_id = any_id.then(|| {
                quote! {
                    fn aggregate_id(&self) -> ::core::option::Option<&str> {
                        match self {
                            #(#ids,)*
                        }
                    }
                }
            });
            (quote!(match self { #(#names,)* }), aggregate_id)
        }
    };
    let dispatch = dispatch(model);
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #impl_generics #root::Command for #ident #ty_generics #where_clause {
            fn name(&self) -> &'static str {
                #name
            }

            #aggregate_id
        }

        #dispatch
    }
}

/// The id field as `&str`; a type that is not `AsRef<str>` is reported on the field.
fn as_str(id: &Id, value: &TokenStream) -> TokenStream {
    let ty = &id.ty;
    quote_spanned!(ty.span()=> <#ty as ::core::convert::AsRef<str>>::as_ref(#value))
}

/// `aggregate = A`: `impl Handle<ThisEnum> for A` routing each variant.
fn dispatch(model: &Model) -> TokenStream {
    let (Some(aggregate), Shape::Enum(variants)) = (&model.aggregate, &model.shape) else {
        return TokenStream::new();
    };
    let Model {
        root,
        ident,
        generics,
        ..
    } = model;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let arms = variants.iter().filter_map(|variant| {
        let inner = variant.inner.as_ref()?;
        let name = &variant.ident;
        let handle = quote_spanned! {inner.span()=>
            <Self as #root::Handle<#inner>>::handle(self, __command, services)
        };
        Some(quote!(#ident::#name { 0: __command } => #handle.await))
    });
    let aggregate_span = aggregate.span();
    let handle_trait = quote_spanned!(aggregate_span=> #root::Handle<#ident #ty_generics>);
    quote! {
        #[automatically_derived]
        #[allow(unused_qualifications)]
        impl #impl_generics #handle_trait for #aggregate #where_clause {
            fn handle(
                &self,
                command: &#ident #ty_generics,
                services: &<Self as #root::Aggregate>::Services,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<
                    ::std::vec::Vec<<Self as #root::Aggregate>::Event>,
                    <Self as #root::Aggregate>::Error,
                >,
            > + ::core::marker::Send {
                async move {
                    match command {
                        #(#arms,)*
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use syn::parse_quote;

    use super::*;

    fn error_of(input: &DeriveInput) -> String {
        match expand(input) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(error) => error.into_iter().map(|e| e.to_string() + "\n").collect(),
        }
    }

    #[test]
    fn ids_are_read_from_marked_fields() {
        let tokens = expand(&parse_quote! {
            enum C {
                Open { #[cqrs(id)] account: String, owner: String },
                Ping(#[cqrs(id)] String),
                Audit,
            }
        })
        .expect("valid input")
        .to_string();
        assert!(
            tokens.contains("Self :: Open { account : __id , .. }"),
            "{tokens}"
        );
        assert!(
            tokens.contains("Self :: Ping { 0 : __id , .. }"),
            "{tokens}"
        );
        assert!(tokens.contains("Self :: Audit { .. } => :: core :: option :: Option :: None"));
    }

    #[test]
    fn without_ids_the_default_is_kept() {
        let tokens = expand(&parse_quote!(
            struct Ping;
        ))
        .expect("valid")
        .to_string();
        assert!(tokens.contains("\"Ping\""), "{tokens}");
        assert!(!tokens.contains("aggregate_id"), "{tokens}");
    }

    #[test]
    fn aggregate_mode_routes_variants() {
        let tokens = expand(&parse_quote! {
            #[cqrs(aggregate = Account)]
            enum C { Open(Open), #[cqrs(name = "deposit")] Deposit(Deposit) }
        })
        .expect("valid input")
        .to_string();
        assert!(tokens.contains("Handle < C > for Account"), "{tokens}");
        assert!(tokens.contains("Handle < Deposit >"), "{tokens}");
        assert!(tokens.contains("Command :: name (__command)"), "{tokens}");
    }

    #[test]
    fn misuse_is_reported() {
        assert!(
            error_of(&parse_quote! {
                struct C { #[cqrs(id)] a: String, #[cqrs(id)] b: String }
            })
            .contains("duplicate `#[cqrs(id)]`")
        );
        assert!(
            error_of(&parse_quote! {
                #[cqrs(aggregate = A)]
                enum C { Open { owner: String } }
            })
            .contains("each variant wraps one command")
        );
        assert!(
            error_of(&parse_quote! {
                enum C { A, #[cqrs(name = "A")] B }
            })
            .contains("duplicate command name `A`")
        );
        assert!(
            error_of(&parse_quote!(
                struct C {
                    #[cqrs(key)]
                    a: String,
                }
            ))
            .contains("key")
        );
    }
}
