//! `cqrs-admin`: operating a cqrs store on PostgreSQL from the command line.
//!
//! ```text
//! cqrs-admin --database-url postgres://… --schema cqrs projections
//! cqrs-admin streams --type bank_account
//! cqrs-admin events bank_account acc-1
//! cqrs-admin tail
//! cqrs-admin retry balances        # or skip, rebuild (with progress), progress --version 2
//! cqrs-admin processes
//! cqrs-admin check
//! cqrs-admin serve --listen 127.0.0.1:8080   # the status page, its JSON API, /metrics
//! ```
//!
//! The status page is also a router to nest in a service of your own: [`router`].
//!
//! Tables by default, `--json` for scripts. Exit codes ([`exit`]): 0 done, 1 an error
//! (the database cannot be reached, a query failed), 2 a usage error, 3 nothing to do
//! (no such projection, nothing failed), 4 problems found (a failed projection, a
//! failing command, an event that no longer decodes), 5 gave up waiting.
//!
//! The installed binary knows no event types: it shows payloads as stored and counts
//! them. To check that every stored event still decodes, build the tool into a binary of
//! your own with your event types:
//!
//! ```no_run
//! # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, cqrs_core::Event)]
//! # enum AccountEvent { Opened }
//! fn main() -> std::process::ExitCode {
//!     cqrs_admin::Admin::new().event::<AccountEvent>().main()
//! }
//! ```

mod cli;
mod commands;
mod output;
mod web;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use cqrs_core::Event;
use serde_json::Value;
pub use web::{METRICS, StatusPage, router};

/// The exit codes.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// An error: the database cannot be reached, a query failed.
    pub const ERROR: u8 = 1;
    /// A usage error (an unknown option, a malformed argument).
    pub const USAGE: u8 = 2;
    /// Nothing to do: no such projection, or it had not failed.
    pub const NOTHING: u8 = 3;
    /// Problems found: a failed projection, a failing command, an event that no longer
    /// decodes.
    pub const PROBLEMS: u8 = 4;
    /// Gave up waiting.
    pub const TIMEOUT: u8 = 5;
}

type Check = Box<dyn Fn(&str, u32, Value) -> Result<(), String> + Send + Sync>;

/// The tool, with the event types it checks decoding against.
#[derive(Default)]
pub struct Admin {
    /// Decoders by stored type name.
    decoders: HashMap<&'static str, Check>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.decoders.keys().collect();
        names.sort();
        f.debug_struct("Admin")
            .field("event_types", &names)
            .finish()
    }
}

impl Admin {
    /// The tool knowing no event types.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the event types of `E` (every name in [`Event::TYPES`]): `check` decodes the
    /// stored events of those names with `E::decode`, upcasters included, and `events`
    /// says whether each decodes.
    #[must_use]
    pub fn event<E: Event>(mut self) -> Self {
        for event_type in E::TYPES {
            self.decoders.insert(
                event_type.name,
                Box::new(|name: &str, version: u32, payload: Value| {
                    E::decode(name, version, payload)
                        .map(drop)
                        .map_err(|error| cqrs_core::error_chain(&error))
                }),
            );
        }
        self
    }

    /// Whether a stored event decodes: `None` when no registered type has its name.
    pub(crate) fn decodes(
        &self,
        name: &str,
        version: u32,
        payload: &Value,
    ) -> Option<Result<(), String>> {
        self.decoders
            .get(name)
            .map(|decode| decode(name, version, payload.clone()))
    }

    pub(crate) fn knows_types(&self) -> bool {
        !self.decoders.is_empty()
    }

    /// Runs with the process's arguments, printing to standard output, and returns the
    /// exit code.
    pub fn main(self) -> ExitCode {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("cqrs-admin: cannot start: {error}");
                return ExitCode::from(exit::ERROR);
            }
        };
        let mut stdout = std::io::stdout().lock();
        let code = runtime.block_on(self.run(std::env::args_os(), &mut stdout));
        ExitCode::from(code)
    }

    /// Runs with `args` (the first is the program's name), printing to `out` (progress
    /// and errors go to standard error), and returns the exit code.
    pub async fn run<I, T>(&self, args: I, out: &mut dyn Write) -> u8
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = match cli::Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(error) => {
                let code = if error.use_stderr() {
                    exit::USAGE
                } else {
                    exit::OK
                };
                // --help and --version print to standard output.
                let text = error.render().to_string();
                if code == exit::OK {
                    let _ = write!(out, "{text}");
                } else {
                    eprint!("{text}");
                }
                return code;
            }
        };
        match commands::run(self, cli, out).await {
            Ok(code) => code,
            Err(failure) => {
                eprintln!("cqrs-admin: {failure}");
                failure.code()
            }
        }
    }
}
