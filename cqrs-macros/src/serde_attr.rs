//! The `#[serde(...)]` attributes of an event enum and its variants.
//!
//! A variant's payload is its fields alone, written as serde writes an equivalent struct.
//! So the attributes honoured are those that shape such a struct: `rename_all_fields` and
//! `deny_unknown_fields` on the enum (for every variant), `rename_all` on a variant (which
//! wins over the enum's `rename_all_fields`, as in serde) and any attribute on a field
//! (carried over by [`crate::payload`]). Every other `#[serde]` attribute on the enum or a
//! variant would shape only the enum's own serde form, which is not what is stored, so it
//! is a compile error rather than a silent no-op.

use darling::Error;
use darling::error::Accumulator;
use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprLit, Lit, LitStr, Meta, MetaNameValue, Path, Token};

/// The rules serde's `rename_all` knows.
const RULES: &[&str] = &[
    "lowercase",
    "UPPERCASE",
    "PascalCase",
    "camelCase",
    "snake_case",
    "SCREAMING_SNAKE_CASE",
    "kebab-case",
    "SCREAMING-KEBAB-CASE",
];

/// A rename rule for each direction, as `rename_all = "..."` or
/// `rename_all(serialize = "...", deserialize = "...")` gives them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rename {
    pub(crate) serialize: Option<LitStr>,
    pub(crate) deserialize: Option<LitStr>,
}

impl Rename {
    /// This rule in each direction that has one, `fallback`'s in the others: serde's
    /// precedence of a variant's `rename_all` over the enum's `rename_all_fields`.
    fn or(&self, fallback: &Self) -> Self {
        Self {
            serialize: self
                .serialize
                .clone()
                .or_else(|| fallback.serialize.clone()),
            deserialize: self
                .deserialize
                .clone()
                .or_else(|| fallback.deserialize.clone()),
        }
    }
}

/// What an event enum's `#[serde]` attributes do to every variant's payload.
#[derive(Debug, Default)]
pub(crate) struct EnumSerde {
    rename_all_fields: Rename,
    deny_unknown_fields: bool,
}

/// What a variant's `#[serde]` attributes do to its payload.
#[derive(Debug, Default)]
pub(crate) struct VariantSerde {
    rename_all: Rename,
}

/// The container attributes of one variant's helper structs.
#[derive(Debug, Default)]
pub(crate) struct PayloadAttrs {
    pub(crate) rename: Rename,
    pub(crate) deny_unknown_fields: bool,
}

impl EnumSerde {
    /// Reads the enum's `#[serde]` attributes, rejecting those that do not shape payloads.
    pub(crate) fn parse(attrs: &[Attribute], errors: &mut Accumulator) -> Self {
        let mut parsed = Self::default();
        for meta in items(attrs, errors) {
            let path = meta.path();
            if path.is_ident("rename_all_fields") {
                rename(
                    &meta,
                    "rename_all_fields",
                    &mut parsed.rename_all_fields,
                    errors,
                );
            } else if path.is_ident("deny_unknown_fields") {
                flag(&meta, &mut parsed.deny_unknown_fields, errors);
            } else {
                errors.push(
                    Error::custom(format!(
                        "`{}` is not allowed on an event enum: {}",
                        shown(&meta),
                        enum_rule(path)
                    ))
                    .with_span(&meta),
                );
            }
        }
        parsed
    }

    /// The attributes of a variant's helper structs.
    pub(crate) fn payload(&self, variant: &VariantSerde) -> PayloadAttrs {
        PayloadAttrs {
            rename: variant.rename_all.or(&self.rename_all_fields),
            deny_unknown_fields: self.deny_unknown_fields,
        }
    }
}

impl VariantSerde {
    /// Reads a variant's `#[serde]` attributes, rejecting those that do not shape its
    /// payload.
    pub(crate) fn parse(attrs: &[Attribute], errors: &mut Accumulator) -> Self {
        let mut parsed = Self::default();
        for meta in items(attrs, errors) {
            let path = meta.path();
            if path.is_ident("rename_all") {
                rename(&meta, "rename_all", &mut parsed.rename_all, errors);
            } else {
                errors.push(
                    Error::custom(format!(
                        "`{}` is not allowed on an event variant: {}",
                        shown(&meta),
                        variant_rule(path)
                    ))
                    .with_span(&meta),
                );
            }
        }
        parsed
    }
}

/// Why an enum-level attribute is refused, and what to write instead.
fn enum_rule(path: &Path) -> &'static str {
    let is = |key: &str| path.is_ident(key);
    if is("rename_all") {
        "it renames variants, and a variant's name is not in its payload: the stored type \
         name comes from `#[cqrs(name = \"...\")]` or the variant's name, and renaming it \
         orphans stored events; to rename every variant's fields, use \
         `#[serde(rename_all_fields = \"...\")]`"
    } else if is("tag") || is("content") || is("untagged") {
        "a payload holds only the variant's fields, with no tag: the stored type name is \
         kept beside it, set with `#[cqrs(name = \"...\")]` on the variant"
    } else if is("rename") || is("alias") {
        "the enum's name is not stored: each variant's stored type name comes from \
         `#[cqrs(name = \"...\")]` or the variant's name"
    } else {
        "it would not shape the stored payloads; an event enum takes only \
         `#[serde(rename_all_fields = \"...\")]` and `#[serde(deny_unknown_fields)]`, a \
         variant `#[serde(rename_all = \"...\")]`, and a field any serde field attribute"
    }
}

/// Why a variant-level attribute is refused, and what to write instead.
fn variant_rule(path: &Path) -> &'static str {
    let is = |key: &str| path.is_ident(key);
    if is("rename") {
        "a variant's name is not in its payload; to store the variant under another type \
         name use `#[cqrs(name = \"...\")]`, knowing that renaming a stored type orphans \
         the events stored under the old name"
    } else if is("alias") {
        "stored type names have no aliases; to rename a variant and still read its stored \
         events, keep the stored name with `#[cqrs(name = \"OldName\")]`"
    } else if is("skip") || is("skip_serializing") || is("skip_deserializing") {
        "every variant is an event type that is stored and read back; leave the variant out \
         of the event enum instead"
    } else if is("other") {
        "a stored type name the enum does not know is a `CodecError::UnknownType` when \
         decoded, never a fallback variant; handle that error where unknown events may \
         appear"
    } else if is("untagged") {
        "a payload holds only the variant's fields, with no tag: the stored type name is \
         kept beside it, set with `#[cqrs(name = \"...\")]`"
    } else if is("with") || is("serialize_with") || is("deserialize_with") {
        "put it on the variant's fields, which are what the payload holds"
    } else if is("deny_unknown_fields") || is("rename_all_fields") {
        "put it on the enum, where it applies to every variant"
    } else {
        "it would not shape the stored payload; a variant takes only \
         `#[serde(rename_all = \"...\")]`, and its fields any serde field attribute"
    }
}

/// Every item of every `#[serde(...)]` attribute.
fn items(attrs: &[Attribute], errors: &mut Accumulator) -> Vec<Meta> {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("serde"))
        .flat_map(|attr| {
            errors
                .handle(
                    attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
                        .map_err(Error::from),
                )
                .into_iter()
                .flatten()
        })
        .collect()
}

/// How an item is quoted in a message: `#[serde(key)]`, `#[serde(key = ...)]` or
/// `#[serde(key(...))]`.
fn shown(meta: &Meta) -> String {
    let key = meta.path().to_token_stream().to_string().replace(' ', "");
    match meta {
        Meta::Path(_) => format!("#[serde({key})]"),
        Meta::NameValue(_) => format!("#[serde({key} = ...)]"),
        Meta::List(_) => format!("#[serde({key}(...))]"),
    }
}

/// `deny_unknown_fields`: a flag, given once.
fn flag(meta: &Meta, set: &mut bool, errors: &mut Accumulator) {
    let Meta::Path(path) = meta else {
        errors.push(
            Error::custom(format!(
                "`{}` takes no value: write `#[serde(deny_unknown_fields)]`",
                shown(meta)
            ))
            .with_span(meta),
        );
        return;
    };
    if *set {
        errors.push(Error::custom("duplicate `#[serde(deny_unknown_fields)]`").with_span(path));
    }
    *set = true;
}

/// `key = "rule"` or `key(serialize = "rule", deserialize = "rule")`.
fn rename(meta: &Meta, key: &str, rules: &mut Rename, errors: &mut Accumulator) {
    match meta {
        Meta::NameValue(pair) => {
            if let Some(rule) = rule(&pair.value, key, errors) {
                set(&mut rules.serialize, rule.clone(), key, &pair.path, errors);
                set(&mut rules.deserialize, rule, key, &pair.path, errors);
            }
        }
        Meta::List(list) => {
            let pairs = list
                .parse_args_with(Punctuated::<MetaNameValue, Token![,]>::parse_terminated)
                .map_err(Error::from);
            for pair in errors.handle(pairs).into_iter().flatten() {
                let slot = if pair.path.is_ident("serialize") {
                    &mut rules.serialize
                } else if pair.path.is_ident("deserialize") {
                    &mut rules.deserialize
                } else {
                    errors.push(
                        Error::custom(format!(
                            "expected `serialize` or `deserialize` in `#[serde({key}(...))]`"
                        ))
                        .with_span(&pair.path),
                    );
                    continue;
                };
                if let Some(rule) = rule(&pair.value, key, errors) {
                    set(slot, rule, key, &pair.path, errors);
                }
            }
        }
        Meta::Path(path) => errors.push(
            Error::custom(format!(
                "`#[serde({key})]` needs a rule, e.g. `#[serde({key} = \"camelCase\")]`"
            ))
            .with_span(path),
        ),
    }
}

/// One rule, given once per direction.
fn set(slot: &mut Option<LitStr>, rule: LitStr, key: &str, at: &Path, errors: &mut Accumulator) {
    if slot.is_some() {
        errors.push(
            Error::custom(format!(
                "duplicate `#[serde({key} = ...)]`: give each rule once"
            ))
            .with_span(at),
        );
    }
    *slot = Some(rule);
}

/// A rule serde knows, as a string literal.
fn rule(value: &Expr, key: &str, errors: &mut Accumulator) -> Option<LitStr> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(rule),
        ..
    }) = value
    else {
        errors.push(
            Error::custom(format!(
                "expected a string, e.g. `#[serde({key} = \"camelCase\")]`"
            ))
            .with_span(value),
        );
        return None;
    };
    if RULES.contains(&rule.value().as_str()) {
        return Some(rule.clone());
    }
    let known: Vec<_> = RULES.iter().map(|known| format!("\"{known}\"")).collect();
    errors.push(
        Error::custom(format!(
            "unknown rename rule \"{}\" in `#[serde({key} = ...)]`: expected one of {}",
            rule.value(),
            known.join(", ")
        ))
        .with_span(rule),
    );
    None
}

#[cfg(test)]
mod tests {
    use syn::{DeriveInput, Variant, parse_quote};

    use super::*;

    /// The enum's and one variant's attributes, read together: the helper structs'
    /// attributes, or every message.
    fn read(input: &DeriveInput, variant: &Variant) -> Result<PayloadAttrs, Vec<String>> {
        let mut errors = Error::accumulator();
        let on_enum = EnumSerde::parse(&input.attrs, &mut errors);
        let on_variant = VariantSerde::parse(&variant.attrs, &mut errors);
        errors
            .finish_with(on_enum.payload(&on_variant))
            .map_err(|error| error.into_iter().map(|e| e.to_string()).collect())
    }

    fn rules(attrs: &PayloadAttrs) -> (Option<String>, Option<String>) {
        (
            attrs.rename.serialize.as_ref().map(LitStr::value),
            attrs.rename.deserialize.as_ref().map(LitStr::value),
        )
    }

    fn some(ser: &str, de: &str) -> (Option<String>, Option<String>) {
        (Some(ser.to_owned()), Some(de.to_owned()))
    }

    #[test]
    fn a_variant_rule_wins_over_the_enum_rule_direction_by_direction() {
        let input: DeriveInput = parse_quote! {
            #[derive(Debug)]
            #[serde(rename_all_fields = "camelCase")]
            #[serde(deny_unknown_fields)]
            enum E { A }
        };
        let plain = read(&input, &parse_quote!(A)).expect("valid");
        assert_eq!(rules(&plain), some("camelCase", "camelCase"));
        assert!(plain.deny_unknown_fields);
        let both = read(
            &input,
            &parse_quote!(
                #[serde(rename_all = "snake_case")]
                A
            ),
        );
        assert_eq!(
            rules(&both.expect("valid")),
            some("snake_case", "snake_case")
        );
        let one = read(
            &input,
            &parse_quote!(
                #[serde(rename_all(serialize = "kebab-case"))]
                A
            ),
        );
        assert_eq!(rules(&one.expect("valid")), some("kebab-case", "camelCase"));
    }

    #[test]
    fn nothing_given_means_no_rules() {
        let input: DeriveInput = parse_quote!(
            #[serde()]
            enum E {
                A,
            }
        );
        let attrs = read(&input, &parse_quote!(A)).expect("valid");
        assert_eq!(rules(&attrs), (None, None));
        assert!(!attrs.deny_unknown_fields);
    }

    #[test]
    fn enum_attributes_that_do_not_shape_payloads_are_each_an_error() {
        let input: DeriveInput = parse_quote! {
            #[serde(tag = "type", content = "data")]
            #[serde(untagged, rename_all = "camelCase", expecting = "an event")]
            enum E { A }
        };
        let messages = read(&input, &parse_quote!(A)).expect_err("invalid");
        assert_eq!(messages.len(), 5, "{messages:#?}");
        for (message, shown) in messages.iter().zip([
            "`#[serde(tag = ...)]` is not allowed on an event enum",
            "`#[serde(content = ...)]` is not allowed on an event enum",
            "`#[serde(untagged)]` is not allowed on an event enum",
            "`#[serde(rename_all = ...)]` is not allowed on an event enum",
            "`#[serde(expecting = ...)]` is not allowed on an event enum",
        ]) {
            assert!(message.starts_with(shown), "{message}");
        }
        assert!(messages[0].contains("#[cqrs(name"), "{}", messages[0]);
        assert!(messages[3].contains("rename_all_fields"), "{}", messages[3]);
        assert!(messages[4].contains("takes only"), "{}", messages[4]);
    }

    #[test]
    fn variant_attributes_that_do_not_shape_its_payload_are_each_an_error() {
        let input: DeriveInput = parse_quote!(
            enum E {
                A,
            }
        );
        let variant: Variant = parse_quote! {
            #[serde(rename = "a", alias = "b", skip, other, with = "m")]
            #[serde(deny_unknown_fields, bound(serialize = ""))]
            A
        };
        let messages = read(&input, &variant).expect_err("invalid");
        let expected = [
            ("`#[serde(rename = ...)]`", "#[cqrs(name"),
            ("`#[serde(alias = ...)]`", "#[cqrs(name"),
            ("`#[serde(skip)]`", "leave the variant out"),
            ("`#[serde(other)]`", "UnknownType"),
            ("`#[serde(with = ...)]`", "fields"),
            ("`#[serde(deny_unknown_fields)]`", "on the enum"),
            ("`#[serde(bound(...))]`", "takes only `#[serde(rename_all"),
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (message, (shown, hint)) in messages.iter().zip(expected) {
            assert!(
                message.starts_with(&format!("{shown} is not allowed on an event variant")),
                "{message}"
            );
            assert!(message.contains(hint), "{message}");
        }
    }

    #[test]
    fn rules_are_checked_against_serde_s_list() {
        let input: DeriveInput = parse_quote! {
            #[serde(rename_all_fields = "camel", deny_unknown_fields = true)]
            #[serde(deny_unknown_fields, deny_unknown_fields)]
            enum E { A }
        };
        let variant: Variant = parse_quote! {
            #[serde(rename_all(serialize = "lowercase", other = "x"), rename_all = 5)]
            #[serde(rename_all = "UPPERCASE", rename_all(deserialize = "kebab-case"), rename_all)]
            A
        };
        let messages = read(&input, &variant).expect_err("invalid");
        let expected = [
            "unknown rename rule \"camel\" in `#[serde(rename_all_fields = ...)]`: expected one of \"lowercase\"",
            "`#[serde(deny_unknown_fields = ...)]` takes no value",
            "duplicate `#[serde(deny_unknown_fields)]`",
            "expected `serialize` or `deserialize`",
            "expected a string, e.g. `#[serde(rename_all = \"camelCase\")]`",
            // `UPPERCASE` for serialize, after `lowercase`, and for deserialize, which
            // `kebab-case` then gives again
            "duplicate `#[serde(rename_all = ...)]`",
            "duplicate `#[serde(rename_all = ...)]`",
            "`#[serde(rename_all)]` needs a rule",
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (message, start) in messages.iter().zip(expected) {
            assert!(message.starts_with(start), "{message}");
        }
    }
}
