//! The command line: options and subcommands.

use clap::{Parser, Subcommand};

/// Operate a cqrs store on PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "cqrs-admin", version, about, long_about = None)]
pub(crate) struct Cli {
    /// The database, as a `postgres://` URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        global = true
    )]
    pub(crate) database_url: String,

    /// The store's schema.
    #[arg(long, env = "CQRS_SCHEMA", default_value = "cqrs", global = true)]
    pub(crate) schema: String,

    /// Print JSON (one document, or one line per event for `tail`) instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List streams, by type and id, a page at a time.
    Streams {
        /// Only streams of this type.
        #[arg(long = "type")]
        stream_type: Option<String>,
        /// Start after this stream (`TYPE/ID`, the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show the events of one stream, with metadata, as stored.
    Events {
        /// The stream's type.
        stream_type: String,
        /// The stream's id.
        stream_id: String,
        /// Only events after this version.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Follow the global log: print each event as it is committed.
    Tail {
        /// Start after this position (`COMMIT.SEQUENCE`); default: the end of the log.
        #[arg(long)]
        from: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// The projections (and process managers): position, lag, state, owner, errors.
    Projections,
    /// Resume a failed projection at the event it failed on.
    Retry {
        /// The projection.
        name: String,
        /// Its version (default: the served one).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Resume a failed projection after the event it failed on, which it never applies.
    Skip {
        /// The projection.
        name: String,
        /// Its version (default: the served one).
        #[arg(long)]
        version: Option<u32>,
    },
    /// Rebuild a projection from the start of the log, showing progress until it has
    /// caught up.
    Rebuild {
        /// The projection.
        name: String,
        /// Its version (default: the served one).
        #[arg(long)]
        version: Option<u32>,
        /// Ask for the rebuild and return at once.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Follow a version being built beside the served one (blue/green) until it is
    /// served.
    Progress {
        /// The projection.
        name: String,
        /// The version being built.
        #[arg(long)]
        version: u32,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Process managers: instances, commands waiting or failing, timers.
    Processes,
    /// Messages that JetStream consumers could not apply and parked, with their errors
    /// (exit 4 when there are any).
    Parked,
    /// Serve the status page (and its JSON API and Prometheus metrics) until interrupted.
    Serve {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Count the stored events by type and version, and check that each still decodes
    /// (with the event types the tool was built with).
    Check {
        /// How many failures to show.
        #[arg(long, default_value_t = 10)]
        show: usize,
    },
}
