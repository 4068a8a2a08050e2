//! Compile-fail tests: every misuse of the derives is a compile error spanned on the
//! offending token. The expected output lives beside each case in `tests/ui/<topic>/`;
//! regenerate it with `TRYBUILD=overwrite` and review the diff.
//!
//! Diagnostics change between compiler releases, so the cases run only on the stable
//! release CI uses.
#![cfg(feature = "derive")]

#[rustversion::attr(not(stable(1.95)), ignore = "expected output is pinned to rustc 1.95")]
#[test]
fn derive_misuse_is_a_spanned_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*/*.rs");
}
