//! Rules that span several keys or items. Each check pushes its errors into a darling
//! `Accumulator`, so one compile reports every mistake, each on its own token.

use std::collections::BTreeMap;

use darling::Error;
use darling::error::Accumulator;
use darling::util::SpannedValue;
use proc_macro2::Span;
use syn::{Generics, Path};

use crate::attr::Upcasts;

/// A schema or state version: 1 when absent, never 0.
pub(crate) fn version(
    value: Option<&SpannedValue<u32>>,
    key: &str,
    errors: &mut Accumulator,
) -> u32 {
    match value {
        Some(version) if **version == 0 => {
            errors.push(
                Error::custom(format!(
                    "`#[cqrs({key} = 0)]` is not allowed: versions start at 1"
                ))
                .with_span(&version.span()),
            );
            1
        }
        Some(version) => **version,
        None => 1,
    }
}

/// A stored name: never empty.
pub(crate) fn name(value: Option<&SpannedValue<String>>, errors: &mut Accumulator) {
    if let Some(name) = value
        && name.trim().is_empty()
    {
        errors.push(
            Error::custom(
                "`#[cqrs(name = \"\")]` is empty: stored names need at least one character",
            )
            .with_span(&name.span()),
        );
    }
}

/// Each name once: the second use of a name is the error.
pub(crate) fn unique_names<'a>(
    names: impl IntoIterator<Item = &'a (String, Span)>,
    what: &str,
    errors: &mut Accumulator,
) {
    let mut seen = BTreeMap::new();
    for (name, span) in names {
        if seen.insert(name.as_str(), *span).is_some() {
            errors.push(
                Error::custom(format!(
                    "duplicate {what} name `{name}`: rename one with `#[cqrs(name = \"...\")]`"
                ))
                .with_span(span),
            );
        }
    }
}

/// An upcast chain, checked against the current version.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    /// The oldest version the chain reads (the current version when there is no chain).
    pub(crate) first: u32,
    /// The functions, oldest first.
    pub(crate) steps: Vec<Path>,
}

/// Checks that the declared upcasters form one unbroken chain ending at `current`.
pub(crate) fn chain(
    current: u32,
    upcast: Option<&SpannedValue<Upcasts>>,
    errors: &mut Accumulator,
) -> Chain {
    let Some(upcast) = upcast else {
        return Chain {
            first: current,
            steps: Vec::new(),
        };
    };
    let mut by_version = BTreeMap::new();
    for step in &upcast.steps {
        if step.from == 0 || step.from >= current {
            let key = &step.key;
            let message = if current == 1 {
                "`upcast` needs `#[cqrs(version = ...)]` above 1: version 1 has no older \
                 version to upcast"
                    .to_owned()
            } else {
                format!(
                    "upcaster `{key}` does not fit `#[cqrs(version = {current})]`: upcaster \
                     keys run from `v1` to `v{}`",
                    current - 1
                )
            };
            errors.push(Error::custom(message).with_span(key));
            continue;
        }
        if by_version.insert(step.from, step.func.clone()).is_some() {
            errors.push(
                Error::custom(format!("duplicate upcaster `{}`", step.key)).with_span(&step.key),
            );
        }
    }
    let Some(&first) = by_version.keys().next() else {
        if upcast.steps.is_empty() {
            errors.push(
                Error::custom("`upcast(...)` is empty: name at least one `vN = function`")
                    .with_span(&upcast.span()),
            );
        }
        return Chain {
            first: current,
            steps: Vec::new(),
        };
    };
    for missing in (first..current).filter(|k| !by_version.contains_key(k)) {
        // Point at the step after the gap, or at the last step when the chain stops short.
        let near = upcast
            .steps
            .iter()
            .filter(|step| step.from > missing && step.from < current)
            .min_by_key(|step| step.from)
            .or_else(|| upcast.steps.iter().max_by_key(|step| step.from))
            .map_or_else(|| upcast.span(), |step| step.key.span());
        errors.push(
            Error::custom(format!(
                "gap in the `upcast` chain: no `v{missing}` upcaster from version {missing} to {}",
                missing + 1
            ))
            .with_span(&near),
        );
    }
    Chain {
        first,
        steps: by_version.into_values().collect(),
    }
}

/// Event types are stored by name: generic parameters have no place in them.
pub(crate) fn no_generics(generics: &Generics, derive: &str, errors: &mut Accumulator) {
    if !generics.params.is_empty() {
        errors.push(
            Error::custom(format!(
                "`#[derive({derive})]` does not support generic parameters: stored types are concrete"
            ))
            .with_span(&generics.params),
        );
    }
}

/// A key that this position does not accept.
pub(crate) fn misplaced<T>(
    value: Option<&SpannedValue<T>>,
    key: &str,
    hint: &str,
    errors: &mut Accumulator,
) {
    if let Some(value) = value {
        errors.push(
            Error::custom(format!(
                "`#[cqrs({key} = ...)]` is not allowed here: {hint}"
            ))
            .with_span(&value.span()),
        );
    }
}

/// No derive here applies to unions; say so on the `union` keyword.
pub(crate) fn not_union(input: &syn::DeriveInput, derive: &str) -> syn::Result<()> {
    match &input.data {
        syn::Data::Union(data) => Err(syn::Error::new_spanned(
            data.union_token,
            format!("`#[derive({derive})]` supports structs and enums, not unions"),
        )),
        syn::Data::Struct(_) | syn::Data::Enum(_) => Ok(()),
    }
}
