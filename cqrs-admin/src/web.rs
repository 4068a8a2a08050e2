//! The status page: an axum router serving a live page of the projections and process
//! managers, a JSON API behind it, and metrics in the Prometheus text format.

use std::fmt::Write as _;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

use cqrs_core::{Aggregate, Cqrs, CqrsStats, EventStore};
use cqrs_postgres::{PgOperations, PgProjectionState};
use serde_json::{Value, json};

const PAGE: &str = include_str!("status.html");

/// The status page and its API, to serve on its own (`cqrs-admin serve`) or to nest in a
/// service's own router (`Router::new().nest("/cqrs", cqrs_admin::router(ops))`).
///
/// - `GET /`: the page, which refreshes itself twice a second: each projection's state,
///   position, lag and owner, the failing event of a failed one, buttons to rebuild,
///   retry and skip, a rebuild's progress; and the process managers.
/// - `GET /api/projections`, `GET /api/processes`: what the page shows, as JSON.
/// - `POST /api/projections/{name}/{version}/{rebuild|retry|skip}`: the requests
///   (`200` with `{"done": true}` when recorded, `{"done": false}` when there was
///   nothing to do).
/// - `GET /metrics`: the Prometheus text format, names in [`METRICS`].
///
/// It reads and writes through `ops` only; put it behind your own authentication when
/// it is reachable by others. [`StatusPage`] adds the command pipelines of the process
/// it runs in to the metrics.
pub fn router(ops: PgOperations) -> Router {
    StatusPage::new(ops).router()
}

type Source = Arc<dyn Fn() -> CqrsStats + Send + Sync>;

/// The status page of [`router`], with the command pipelines of this process counted
/// in its metrics (commands, refusals, conflicts, append latency: see [`METRICS`]).
///
/// ```no_run
/// # use cqrs_core::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize, Event)]
/// # enum Ticked { Ticked }
/// # #[derive(Debug, Command)]
/// # struct Tick;
/// # #[derive(Debug, Default, Serialize, Deserialize, Aggregate)]
/// # #[cqrs(name = "clock", command = Tick, event = Ticked, error = std::convert::Infallible)]
/// # struct Clock;
/// # impl Apply<Ticked> for Clock { fn apply(&mut self, _: &Ticked) {} }
/// # impl Handle<Tick> for Clock {
/// #     async fn handle(&self, _: &Tick, (): &()) -> Result<Vec<Ticked>, std::convert::Infallible> { Ok(vec![]) }
/// # }
/// # async fn run(store: cqrs_postgres::PgEventStore) {
/// let clocks = Cqrs::<Clock, _>::new(store.clone());
/// let status = cqrs_admin::StatusPage::new(store.operations())
///     .pipeline(&clocks)
///     .router();
/// # let _ = status;
/// # }
/// ```
#[derive(Clone)]
pub struct StatusPage {
    ops: PgOperations,
    pipelines: Vec<Source>,
}

impl std::fmt::Debug for StatusPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusPage")
            .field("store", &self.ops.store().schema())
            .field("pipelines", &self.pipelines.len())
            .finish()
    }
}

impl StatusPage {
    /// The page over `ops`, counting no pipeline yet.
    #[must_use]
    pub fn new(ops: PgOperations) -> Self {
        Self {
            ops,
            pipelines: Vec::new(),
        }
    }

    /// Counts `cqrs` (and its clones) in the metrics, labelled with its aggregate type.
    #[must_use]
    pub fn pipeline<A, S>(mut self, cqrs: &Cqrs<A, S>) -> Self
    where
        A: Aggregate,
        S: EventStore + ?Sized + 'static,
    {
        let cqrs = cqrs.clone();
        self.pipelines.push(Arc::new(move || cqrs.stats()));
        self
    }

    /// The router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/api/projections", get(projections))
            .route("/api/processes", get(processes))
            .route("/api/parked", get(parked))
            .route("/api/projections/{name}/{version}/{action}", post(request))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self))
    }
}

type Page = State<Arc<StatusPage>>;

/// The metrics `GET /metrics` exposes: name, type and meaning. Names are stable.
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "cqrs_projection_lag_events",
        "gauge",
        "Events the projection version wants that are past its checkpoint.",
    ),
    (
        "cqrs_projection_lag_seconds",
        "gauge",
        "How long the oldest of those has been in the log.",
    ),
    (
        "cqrs_projection_position",
        "counter",
        "The store-wide sequence number at the checkpoint; its rate is the projection's throughput through the log.",
    ),
    (
        "cqrs_projection_failed",
        "gauge",
        "1 when the projection version stopped at a failing event.",
    ),
    (
        "cqrs_projection_served",
        "gauge",
        "1 for the version readers are served.",
    ),
    (
        "cqrs_commands_total",
        "counter",
        "Commands executed by a pipeline of this process (label aggregate).",
    ),
    (
        "cqrs_command_rejections_total",
        "counter",
        "Of those, the ones the aggregate refused.",
    ),
    (
        "cqrs_append_conflicts_total",
        "counter",
        "Appends that met a concurrent write (retried, or reported once retries ran out).",
    ),
    (
        "cqrs_append_seconds",
        "histogram",
        "How long appends (atomic units count once) took, from sending to outcome.",
    ),
    (
        "cqrs_process_instances_running",
        "gauge",
        "Process manager instances running.",
    ),
    (
        "cqrs_process_commands_waiting",
        "gauge",
        "Process manager commands waiting to be sent.",
    ),
    (
        "cqrs_process_commands_failing",
        "gauge",
        "Of those, the ones that could not be carried out at least once.",
    ),
    (
        "cqrs_process_timers_overdue",
        "gauge",
        "Process manager timers more than a second past due.",
    ),
];

/// A failure of the API: 500 with the error as text.
struct ApiError(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}

impl From<cqrs_postgres::Error> for ApiError {
    fn from(error: cqrs_postgres::Error) -> Self {
        Self(cqrs_core::error_chain(&error))
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn projections(State(page): Page) -> Result<Json<Value>, ApiError> {
    let ops = &page.ops;
    let all = ops.projections().await?;
    let mut values = Vec::with_capacity(all.len());
    for status in &all {
        let mut value = crate::output::projection_json(status);
        if let (PgProjectionState::Failed, Some(at)) = (status.state, status.failed_at)
            && let Some(event) = ops.event_at(at).await?
        {
            value["failed_event"] = crate::output::failed_event_json(&event);
        }
        values.push(value);
    }
    Ok(Json(Value::Array(values)))
}

async fn processes(State(page): Page) -> Result<Json<Value>, ApiError> {
    let all = page.ops.processes().await?;
    Ok(Json(serde_json::to_value(all).unwrap_or(Value::Null)))
}

async fn parked(State(page): Page) -> Result<Json<Value>, ApiError> {
    let all = cqrs_nats::parked(page.ops.store())
        .await
        .map_err(|e| ApiError(cqrs_core::error_chain(&e)))?;
    Ok(Json(serde_json::to_value(all).unwrap_or(Value::Null)))
}

async fn request(
    State(page): Page,
    Path((name, version, action)): Path<(String, u32, String)>,
) -> Result<Response, ApiError> {
    let ops = &page.ops;
    let done = match action.as_str() {
        "rebuild" => ops.rebuild(&name, version).await?,
        "retry" => ops.retry(&name, version).await?,
        "skip" => ops.skip(&name, version).await?.is_some(),
        other => {
            return Ok((
                StatusCode::NOT_FOUND,
                format!("no action `{other}`: rebuild, retry or skip"),
            )
                .into_response());
        }
    };
    Ok(Json(json!({ "done": done })).into_response())
}

async fn metrics(State(page): Page) -> Result<Response, ApiError> {
    let projections = page.ops.projections().await?;
    let processes = page.ops.processes().await?;
    let pipelines: Vec<CqrsStats> = page.pipelines.iter().map(|stats| stats()).collect();
    let mut text = String::new();
    for (name, kind, help) in METRICS {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        if name.starts_with("cqrs_projection_") {
            for s in &projections {
                let value = match *name {
                    "cqrs_projection_lag_events" => s.lag_events.to_string(),
                    "cqrs_projection_lag_seconds" => format!("{}", s.lag.as_secs_f64()),
                    "cqrs_projection_position" => s.position.sequence().to_string(),
                    "cqrs_projection_failed" => {
                        u8::from(s.state == PgProjectionState::Failed).to_string()
                    }
                    _ => u8::from(s.active).to_string(),
                };
                let _ = writeln!(
                    text,
                    "{name}{{projection=\"{}\",version=\"{}\"}} {value}",
                    escape(&s.name),
                    s.version
                );
            }
        } else if name.starts_with("cqrs_process_") {
            for p in &processes {
                let value = match *name {
                    "cqrs_process_instances_running" => p.running,
                    "cqrs_process_commands_waiting" => p.waiting,
                    "cqrs_process_commands_failing" => p.failing,
                    _ => p.overdue,
                };
                let manager = escape(&p.manager);
                let _ = writeln!(text, "{name}{{manager=\"{manager}\"}} {value}");
            }
        } else {
            for stats in &pipelines {
                let aggregate = escape(stats.aggregate_type);
                match *name {
                    "cqrs_append_seconds" => {
                        for (bound, count) in &stats.append_buckets {
                            let _ = writeln!(
                                text,
                                "{name}_bucket{{aggregate=\"{aggregate}\",le=\"{bound}\"}} {count}"
                            );
                        }
                        let _ = writeln!(
                            text,
                            "{name}_bucket{{aggregate=\"{aggregate}\",le=\"+Inf\"}} {}",
                            stats.appends
                        );
                        let _ = writeln!(
                            text,
                            "{name}_sum{{aggregate=\"{aggregate}\"}} {}",
                            stats.append_seconds_sum
                        );
                        let _ = writeln!(
                            text,
                            "{name}_count{{aggregate=\"{aggregate}\"}} {}",
                            stats.appends
                        );
                    }
                    _ => {
                        let value = match *name {
                            "cqrs_commands_total" => stats.commands,
                            "cqrs_command_rejections_total" => stats.rejected,
                            _ => stats.conflicts,
                        };
                        let _ = writeln!(text, "{name}{{aggregate=\"{aggregate}\"}} {value}");
                    }
                }
            }
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// A label value, escaped as the text format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
