//! Derive macros for `cqrs-core`.
//!
//! Not for direct use: depend on `cqrs-core`, which re-exports these derives under its
//! default `derive` feature and documents every `#[cqrs(...)]` key.
//!
//! This file holds the entry points only. Each derive parses its input with darling
//! receivers (module `attr`), checks the rules spanning several keys (module `validate`) and
//! generates code in its `expand_*` module. `#[derive(Event)]` also reads an event enum's
//! `#[serde]` attributes (module `serde_attr`) and stores each variant through helper
//! structs (module `payload`). The workspace uses syn 3 throughout: darling
//! 0.24 moved to it, as thiserror and serde_derive had.

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

mod attr;
mod expand_aggregate;
mod expand_command;
mod expand_event;
mod expand_process;
mod expand_projection;
mod output;
mod payload;
mod serde_attr;
mod validate;

/// Implements `cqrs_core::Event`. See `cqrs_core::derive` for the keys.
#[proc_macro_derive(Event, attributes(cqrs, serde))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    output::finish(
        "Event",
        &input,
        expand_event::expand(&input),
        expand_event::stub,
    )
    .into()
}

/// Implements `cqrs_core::Command`. See `cqrs_core::derive` for the keys.
#[proc_macro_derive(Command, attributes(cqrs))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    output::finish(
        "Command",
        &input,
        expand_command::expand(&input),
        expand_command::stub,
    )
    .into()
}

/// Implements `cqrs_core::Aggregate`. See `cqrs_core::derive` for the keys.
#[proc_macro_derive(Aggregate, attributes(cqrs))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    output::finish(
        "Aggregate",
        &input,
        expand_aggregate::expand(&input),
        expand_aggregate::stub,
    )
    .into()
}

/// Implements `cqrs_core::Projection`. See `cqrs_core::derive` for the keys.
#[proc_macro_derive(Projection, attributes(cqrs))]
pub fn derive_projection(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    output::finish(
        "Projection",
        &input,
        expand_projection::expand(&input),
        expand_projection::stub,
    )
    .into()
}

/// Implements `cqrs_core::process::ProcessManager`. See `cqrs_core::derive` for the keys.
#[proc_macro_derive(ProcessManager, attributes(cqrs))]
pub fn derive_process_manager(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    output::finish(
        "ProcessManager",
        &input,
        expand_process::expand(&input),
        expand_process::stub,
    )
    .into()
}
