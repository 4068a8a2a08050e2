//! What each subcommand does.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use cqrs_core::store::RecordedEvent;
use cqrs_core::{EventFilter, EventStore, Position, error_chain};
use cqrs_postgres::sqlx::postgres::PgPoolOptions;
use cqrs_postgres::{PgEventStore, PgOperations, PgProjectionState, PgProjectionStatus};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::cli::{Cli, Command};
use crate::output::{Table, duration, event_line, json};
use crate::{Admin, exit};

/// Why a command stopped short.
pub(crate) enum Failure {
    /// Bad input: exit 2.
    Usage(String),
    /// The database or the output failed: exit 1.
    Error(String),
}

impl Failure {
    pub(crate) fn code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Error(_) => exit::ERROR,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Error(message) => f.write_str(message),
        }
    }
}

impl From<cqrs_postgres::Error> for Failure {
    fn from(error: cqrs_postgres::Error) -> Self {
        Self::Error(error_chain(&error))
    }
}

impl From<cqrs_core::Error> for Failure {
    fn from(error: cqrs_core::Error) -> Self {
        Self::Error(error_chain(&error))
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Self::Error(format!("cannot write the output: {error}"))
    }
}

type Outcome = Result<u8, Failure>;

pub(crate) async fn run(admin: &Admin, cli: Cli, out: &mut dyn Write) -> Outcome {
    let store = connect(&cli.database_url, &cli.schema).await?;
    let ops = store.operations();
    let json_out = cli.json;
    match cli.command {
        Command::Streams {
            stream_type,
            after,
            limit,
        } => {
            streams(
                &ops,
                stream_type.as_deref(),
                after.as_deref(),
                limit,
                json_out,
                out,
            )
            .await
        }
        Command::Events {
            stream_type,
            stream_id,
            after,
            limit,
        } => {
            let events = store.load(&stream_type, &stream_id, after).await?;
            let events: Vec<_> = events.into_iter().take(limit).collect();
            print_events(admin, &events, json_out, out)?;
            Ok(if events.is_empty() {
                exit::NOTHING
            } else {
                exit::OK
            })
        }
        Command::Tail { from, count } => tail(&store, from.as_deref(), count, json_out, out).await,
        Command::Projections => projections(&ops, json_out, out).await,
        Command::Retry { name, version } => {
            let version = version_of(&ops, &name, version).await?;
            let Some(version) = version else {
                return nothing(out, &format!("no projection named {name}"));
            };
            if ops.retry(&name, version).await? {
                writeln!(out, "{name} v{version}: retrying the event it failed on")?;
                Ok(exit::OK)
            } else {
                nothing(
                    out,
                    &format!("{name} v{version} has not failed: nothing to retry"),
                )
            }
        }
        Command::Skip { name, version } => {
            let Some(version) = version_of(&ops, &name, version).await? else {
                return nothing(out, &format!("no projection named {name}"));
            };
            match ops.skip(&name, version).await? {
                Some(position) => {
                    writeln!(out, "{name} v{version}: skipped the event at {position}")?;
                    Ok(exit::OK)
                }
                None => nothing(
                    out,
                    &format!("{name} v{version} has not failed: nothing to skip"),
                ),
            }
        }
        Command::Rebuild {
            name,
            version,
            no_wait,
            timeout,
        } => {
            let Some(version) = version_of(&ops, &name, version).await? else {
                return nothing(out, &format!("no projection named {name}"));
            };
            let before = ops
                .projection(&name)
                .await?
                .into_iter()
                .find(|s| s.version == version)
                .map(|s| s.updated_at);
            if !ops.rebuild(&name, version).await? {
                return nothing(out, &format!("no projection {name} v{version}"));
            }
            writeln!(out, "{name} v{version}: rebuild requested")?;
            if no_wait {
                return Ok(exit::OK);
            }
            let watch = Watch {
                name: &name,
                version,
                goal: Goal::Rebuilt(before),
                timeout: Duration::from_secs(timeout),
            };
            watch.run(&ops, out).await
        }
        Command::Progress {
            name,
            version,
            timeout,
        } => {
            let watch = Watch {
                name: &name,
                version,
                goal: Goal::Served,
                timeout: Duration::from_secs(timeout),
            };
            watch.run(&ops, out).await
        }
        Command::Processes => processes(&ops, json_out, out).await,
        Command::Parked => parked(&store, json_out, out).await,
        Command::Serve { listen } => serve(ops, &listen, out).await,
        Command::Check { show } => check(admin, &store, &ops, show, json_out, out).await,
    }
}

async fn connect(url: &str, schema: &str) -> Result<PgEventStore, Failure> {
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|error| {
            Failure::Error(format!("cannot connect to {url}: {}", error_chain(&error)))
        })?;
    PgEventStore::builder(pool)
        .schema(schema)
        .build()
        .map_err(|error| Failure::Usage(error_chain(&error)))
}

fn nothing(out: &mut dyn Write, message: &str) -> Outcome {
    writeln!(out, "{message}")?;
    Ok(exit::NOTHING)
}

/// `version`, or the served version of `name`; `None` when there is no such projection.
async fn version_of(
    ops: &PgOperations,
    name: &str,
    version: Option<u32>,
) -> Result<Option<u32>, Failure> {
    let versions = ops.projection(name).await?;
    Ok(match version {
        Some(version) => versions
            .iter()
            .any(|s| s.version == version)
            .then_some(version),
        None => versions.iter().find(|s| s.active).map(|s| s.version),
    })
}

async fn streams(
    ops: &PgOperations,
    stream_type: Option<&str>,
    after: Option<&str>,
    limit: u32,
    json_out: bool,
    out: &mut dyn Write,
) -> Outcome {
    let after = match after {
        Some(after) => Some(after.split_once('/').ok_or_else(|| {
            Failure::Usage(format!(
                "--after takes TYPE/ID (the last stream of a page), not {after:?}"
            ))
        })?),
        None => None,
    };
    let streams = ops.streams(stream_type, after, limit).await?;
    if json_out {
        json(out, &streams)?;
        return Ok(exit::OK);
    }
    let mut table = Table::new(vec!["TYPE", "ID", "VERSION", "CREATED", "UPDATED"]);
    for s in &streams {
        table.row(vec![
            s.stream_type.clone(),
            s.stream_id.clone(),
            s.version.to_string(),
            s.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            s.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        ]);
    }
    if table.is_empty() {
        writeln!(out, "no streams")?;
        return Ok(exit::OK);
    }
    table.print(out)?;
    if let Some(last) = streams.last()
        && streams.len() == usize::try_from(limit).unwrap_or(usize::MAX)
    {
        writeln!(
            out,
            "next page: --after '{}/{}'",
            last.stream_type, last.stream_id
        )?;
    }
    Ok(exit::OK)
}

fn event_json(admin: &Admin, event: &RecordedEvent) -> Value {
    let mut value = json!({
        "position": event.position.to_string(),
        "stream_type": event.stream_type,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "recorded_at": event.recorded_at,
        "metadata": event.metadata,
        "payload": event.payload,
    });
    if let Some(decodes) = admin.decodes(&event.event_type, event.schema_version, &event.payload) {
        value["decodes"] = match decodes {
            Ok(()) => json!(true),
            Err(error) => json!(error),
        };
    }
    value
}

fn print_events(
    admin: &Admin,
    events: &[RecordedEvent],
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    if json_out {
        let values: Vec<Value> = events.iter().map(|e| event_json(admin, e)).collect();
        json(out, &values)?;
        return Ok(());
    }
    if events.is_empty() {
        writeln!(out, "no events")?;
    }
    for event in events {
        writeln!(
            out,
            "#{}  {} v{}  at {}  {}",
            event.stream_version,
            event.event_type,
            event.schema_version,
            event.position,
            event.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f")
        )?;
        writeln!(out, "    id        {}", event.event_id)?;
        writeln!(
            out,
            "    metadata  {}",
            serde_json::to_string(&event.metadata).unwrap_or_default()
        )?;
        writeln!(out, "    payload   {}", event.payload)?;
        if let Some(decodes) =
            admin.decodes(&event.event_type, event.schema_version, &event.payload)
        {
            match decodes {
                Ok(()) => writeln!(out, "    decodes   yes")?,
                Err(error) => writeln!(out, "    decodes   NO: {error}")?,
            }
        }
    }
    Ok(())
}

async fn tail(
    store: &PgEventStore,
    from: Option<&str>,
    count: Option<u64>,
    json_out: bool,
    out: &mut dyn Write,
) -> Outcome {
    let mut position = match from {
        Some(from) => from
            .parse::<Position>()
            .map_err(|error| Failure::Usage(format!("--from: {error}")))?,
        None => store.head().await?,
    };
    let filter = EventFilter::all();
    let mut seen = 0_u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let batch = store.read_all(position, 256, &filter).await?;
        for event in &batch {
            if json_out {
                let line = json!({
                    "position": event.position.to_string(),
                    "stream_type": event.stream_type,
                    "stream_id": event.stream_id,
                    "stream_version": event.stream_version,
                    "event_type": event.event_type,
                    "schema_version": event.schema_version,
                    "recorded_at": event.recorded_at,
                    "payload": event.payload,
                });
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{}  {}", event.position, event_line(event))?;
            }
            position = event.position;
            seen += 1;
            if count.is_some_and(|count| seen >= count) {
                out.flush()?;
                return Ok(exit::OK);
            }
        }
        out.flush()?;
        if batch.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = &mut interrupted => return Ok(exit::OK),
            }
        }
    }
}

async fn projections(ops: &PgOperations, json_out: bool, out: &mut dyn Write) -> Outcome {
    let all = ops.projections().await?;
    let mut failing = Vec::new();
    for status in all.iter().filter(|s| s.state == PgProjectionState::Failed) {
        let event = match status.failed_at {
            Some(position) => ops.event_at(position).await?,
            None => None,
        };
        failing.push((status, event));
    }
    if json_out {
        let values: Vec<Value> = all
            .iter()
            .map(|s| {
                let mut value = crate::output::projection_json(s);
                if let Some(event) = failing
                    .iter()
                    .find(|(f, _)| f.name == s.name && f.version == s.version)
                    .and_then(|(_, e)| e.as_ref())
                {
                    value["failed_event"] = crate::output::failed_event_json(event);
                }
                value
            })
            .collect();
        json(out, &values)?;
    } else if all.is_empty() {
        writeln!(out, "no projections")?;
    } else {
        let mut table = Table::new(vec![
            "NAME", "VERSION", "SERVED", "STATE", "POSITION", "LAG", "BEHIND", "OWNER",
        ]);
        for s in &all {
            table.row(vec![
                s.name.clone(),
                s.version.to_string(),
                if s.active { "yes" } else { "no" }.to_owned(),
                s.state.to_string(),
                s.position.to_string(),
                format!("{} events", s.lag_events),
                duration(s.lag),
                s.owner.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        table.print(out)?;
        for (status, event) in &failing {
            write_failure(out, status, event.as_ref())?;
        }
    }
    Ok(if failing.is_empty() {
        exit::OK
    } else {
        exit::PROBLEMS
    })
}

fn write_failure(
    out: &mut dyn Write,
    status: &PgProjectionStatus,
    event: Option<&RecordedEvent>,
) -> std::io::Result<()> {
    let at = status
        .failed_at
        .map_or_else(|| "?".to_owned(), |p| p.to_string());
    writeln!(out)?;
    writeln!(
        out,
        "{} v{} FAILED at {at}: {}",
        status.name,
        status.version,
        status.error.as_deref().unwrap_or("?")
    )?;
    if let Some(event) = event {
        writeln!(out, "    event {}", event_line(event))?;
    }
    writeln!(
        out,
        "    cqrs-admin retry {0} --version {1}   or   cqrs-admin skip {0} --version {1}",
        status.name, status.version
    )
}

/// What a watch waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// The version rebuilt and caught up; its row's last change before the request.
    Rebuilt(Option<chrono::DateTime<chrono::Utc>>),
    /// The version served (a blue/green build).
    Served,
}

/// Follows one projection version, with progress and an ETA, until its goal.
struct Watch<'a> {
    name: &'a str,
    version: u32,
    goal: Goal,
    timeout: Duration,
}

impl Watch<'_> {
    async fn run(&self, ops: &PgOperations, out: &mut dyn Write) -> Outcome {
        let started = Instant::now();
        let terminal = std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} events, {per_sec}, eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(format!("{} v{}", self.name, self.version));
            bar
        });
        let mut total = 0_u64;
        let mut rebuilding_seen = false;
        let mut last_line = Instant::now() - Duration::from_secs(1);
        loop {
            let status = ops
                .projection(self.name)
                .await?
                .into_iter()
                .find(|s| s.version == self.version);
            let Some(status) = status else {
                return nothing(
                    out,
                    &format!("no projection {} v{}", self.name, self.version),
                );
            };
            if status.state == PgProjectionState::Failed {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                let event = match status.failed_at {
                    Some(position) => ops.event_at(position).await?,
                    None => None,
                };
                write_failure(out, &status, event.as_ref())?;
                return Ok(exit::PROBLEMS);
            }
            rebuilding_seen |= status.state == PgProjectionState::Rebuilding;
            total = total.max(status.lag_events);
            let done = total.saturating_sub(status.lag_events);
            let finished = match self.goal {
                // Caught up after the request: seen rebuilding, or its row changed since
                // (a rebuild quicker than one look).
                Goal::Rebuilt(before) => {
                    status.state == PgProjectionState::CaughtUp
                        && (rebuilding_seen || before.is_none_or(|b| status.updated_at > b))
                }
                Goal::Served => status.active,
            };
            let elapsed = started.elapsed();
            match &bar {
                Some(bar) => {
                    bar.set_length(total);
                    bar.set_position(done);
                }
                None if finished || last_line.elapsed() >= Duration::from_secs(1) => {
                    last_line = Instant::now();
                    eprintln!(
                        "{}",
                        progress_line(self.name, self.version, done, total, elapsed, status.state)
                    );
                }
                None => {}
            }
            if finished {
                if let Some(bar) = &bar {
                    bar.finish();
                }
                let what = match self.goal {
                    Goal::Rebuilt(_) => "rebuilt",
                    Goal::Served => "served",
                };
                writeln!(
                    out,
                    "{} v{}: {what} ({} events in {}) at {}",
                    self.name,
                    self.version,
                    total,
                    duration(elapsed),
                    status.position
                )?;
                return Ok(exit::OK);
            }
            if elapsed >= self.timeout {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                writeln!(
                    out,
                    "{} v{}: gave up after {} ({done} of {total} events, {}; owner: {})",
                    self.name,
                    self.version,
                    duration(elapsed),
                    status.state,
                    status.owner.as_deref().unwrap_or("none: start a runner")
                )?;
                return Ok(exit::TIMEOUT);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `balances v1: 45% (450/1000 events), 120 events/s, eta 4.6s (rebuilding)`.
fn progress_line(
    name: &str,
    version: u32,
    done: u64,
    total: u64,
    elapsed: Duration,
    state: PgProjectionState,
) -> String {
    #[allow(clippy::cast_precision_loss, reason = "figures to print")]
    let (rate, percent) = (
        done as f64 / elapsed.as_secs_f64().max(0.001),
        if total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / total as f64
        },
    );
    let eta = if rate > 0.0 {
        #[allow(clippy::cast_precision_loss, reason = "figures to print")]
        let left = total.saturating_sub(done) as f64 / rate;
        duration(Duration::from_secs_f64(left))
    } else {
        "?".to_owned()
    };
    format!(
        "{name} v{version}: {percent:.0}% ({done}/{total} events), {rate:.0} events/s, eta {eta} ({state})"
    )
}

async fn serve(ops: PgOperations, listen: &str, out: &mut dyn Write) -> Outcome {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| Failure::Usage(format!("cannot listen on {listen}: {error}")))?;
    let address = listener
        .local_addr()
        .map_err(|error| Failure::Error(error.to_string()))?;
    writeln!(
        out,
        "status page on http://{address}/ (metrics on /metrics); Ctrl-C stops"
    )?;
    out.flush()?;
    axum::serve(listener, crate::web::router(ops))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|error| Failure::Error(format!("the server stopped: {error}")))?;
    Ok(exit::OK)
}

async fn processes(ops: &PgOperations, json_out: bool, out: &mut dyn Write) -> Outcome {
    let all = ops.processes().await?;
    let trouble = all.iter().any(|p| p.failing > 0 || p.overdue > 0);
    if json_out {
        json(out, &all)?;
    } else if all.is_empty() {
        writeln!(out, "no process managers")?;
    } else {
        let mut table = Table::new(vec![
            "MANAGER",
            "RUNNING",
            "FINISHED",
            "WAITING",
            "FAILING",
            "TIMERS",
            "OVERDUE",
            "LAST ERROR",
        ]);
        for p in &all {
            table.row(vec![
                p.manager.clone(),
                p.running.to_string(),
                p.finished.to_string(),
                p.waiting.to_string(),
                p.failing.to_string(),
                p.timers.to_string(),
                p.overdue.to_string(),
                p.last_error.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        table.print(out)?;
    }
    Ok(if trouble { exit::PROBLEMS } else { exit::OK })
}

async fn parked(store: &PgEventStore, json_out: bool, out: &mut dyn Write) -> Outcome {
    let all = cqrs_nats::parked(store)
        .await
        .map_err(|e| Failure::Error(error_chain(&e)))?;
    if json_out {
        json(out, &all)?;
    } else if all.is_empty() {
        writeln!(out, "no parked messages")?;
    } else {
        let mut table = Table::new(vec![
            "CONSUMER", "STREAM", "SEQUENCE", "SUBJECT", "PARKED", "ERROR",
        ]);
        for p in &all {
            table.row(vec![
                p.consumer.clone(),
                p.stream.clone(),
                p.sequence.to_string(),
                p.subject.clone(),
                p.parked_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                p.error.clone(),
            ]);
        }
        table.print(out)?;
    }
    Ok(if all.is_empty() {
        exit::OK
    } else {
        exit::PROBLEMS
    })
}

async fn check(
    admin: &Admin,
    store: &PgEventStore,
    ops: &PgOperations,
    show: usize,
    json_out: bool,
    out: &mut dyn Write,
) -> Outcome {
    let counts = ops.event_counts().await?;
    // (type, version) -> (checked, failed)
    let mut checked: BTreeMap<(String, u32), (u64, u64)> = BTreeMap::new();
    let mut failures = Vec::new();
    if admin.knows_types() {
        let filter = EventFilter::all();
        let head = store.head().await?;
        let mut position = Position::START;
        while position < head {
            let batch = store.read_all(position, 1_000, &filter).await?;
            let Some(last) = batch.last().map(|e| e.position) else {
                break;
            };
            for event in &batch {
                let Some(decodes) =
                    admin.decodes(&event.event_type, event.schema_version, &event.payload)
                else {
                    continue;
                };
                let entry = checked
                    .entry((event.event_type.clone(), event.schema_version))
                    .or_default();
                entry.0 += 1;
                if let Err(error) = decodes {
                    entry.1 += 1;
                    if failures.len() < show {
                        failures.push((event.clone(), error));
                    }
                }
            }
            position = last;
        }
    }
    let failed: u64 = checked.values().map(|(_, failed)| failed).sum();
    if json_out {
        let rows: Vec<Value> = counts
            .iter()
            .map(|c| {
                let (ok, bad) = checked
                    .get(&(c.event_type.clone(), c.schema_version))
                    .copied()
                    .unwrap_or_default();
                json!({
                    "event_type": c.event_type,
                    "schema_version": c.schema_version,
                    "count": c.count,
                    "checked": ok,
                    "failed": bad,
                })
            })
            .collect();
        let shown: Vec<Value> = failures
            .iter()
            .map(|(event, error)| {
                json!({
                    "position": event.position.to_string(),
                    "stream_type": event.stream_type,
                    "stream_id": event.stream_id,
                    "stream_version": event.stream_version,
                    "event_type": event.event_type,
                    "schema_version": event.schema_version,
                    "error": error,
                })
            })
            .collect();
        json(
            out,
            &json!({ "types": rows, "failed": failed, "failures": shown }),
        )?;
    } else {
        let mut table = Table::new(vec!["TYPE", "VERSION", "COUNT", "DECODES"]);
        for c in &counts {
            let decodes = match checked.get(&(c.event_type.clone(), c.schema_version)) {
                Some((_, 0)) => "yes".to_owned(),
                Some((_, bad)) => format!("NO ({bad} failed)"),
                None if admin.knows_types() => "unknown type".to_owned(),
                None => "-".to_owned(),
            };
            table.row(vec![
                c.event_type.clone(),
                c.schema_version.to_string(),
                c.count.to_string(),
                decodes,
            ]);
        }
        if table.is_empty() {
            writeln!(out, "no events")?;
        } else {
            table.print(out)?;
        }
        if !admin.knows_types() {
            writeln!(
                out,
                "\nno event types were built into this tool: counts only (see `cqrs_admin::Admin::event`)"
            )?;
        }
        for (event, error) in &failures {
            writeln!(
                out,
                "\nat {}: {}/{}#{} {} v{} does not decode: {error}",
                event.position,
                event.stream_type,
                event.stream_id,
                event.stream_version,
                event.event_type,
                event.schema_version
            )?;
        }
    }
    Ok(if failed > 0 { exit::PROBLEMS } else { exit::OK })
}
