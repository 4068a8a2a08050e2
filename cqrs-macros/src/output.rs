//! What every derive does with its output: wrap it, attach the stub on error, print it
//! on request.

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

/// Puts generated items in an anonymous const, so their helper names stay private.
pub(crate) fn wrap(items: &TokenStream) -> TokenStream {
    quote! {
        const _: () = {
            #items
        };
    }
}

/// The final output: the expansion, or the errors plus a stub impl (so that one mistake
/// does not cascade into "trait not implemented" errors wherever the type is used).
pub(crate) fn finish(
    derive: &str,
    input: &DeriveInput,
    expanded: syn::Result<TokenStream>,
    stub: fn(&DeriveInput) -> TokenStream,
) -> TokenStream {
    let tokens = match expanded {
        Ok(tokens) => tokens,
        Err(errors) => {
            let mut tokens = errors.into_compile_error();
            // A union cannot be made to fit any of the traits; a stub would only add errors.
            if !matches!(input.data, syn::Data::Union(_)) {
                tokens.extend(stub(input));
            }
            tokens
        }
    };
    if std::env::var_os("CQRS_MACROS_DEBUG").is_some_and(|value| value == "1") {
        eprintln!("// #[derive({derive})] on `{}`\n{tokens}", input.ident);
    }
    tokens
}
