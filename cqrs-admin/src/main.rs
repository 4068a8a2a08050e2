//! `cqrs-admin`: see the crate's documentation, or `cqrs-admin --help`.

fn main() -> std::process::ExitCode {
    cqrs_admin::Admin::new().main()
}
