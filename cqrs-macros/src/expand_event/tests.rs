//! Unit tests of `#[derive(Event)]`'s parsing and expansion.

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
    assert!(tokens.contains(":: cqrs_core :: codec :: upcast (event_type , schema_version , 2u32"));
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
