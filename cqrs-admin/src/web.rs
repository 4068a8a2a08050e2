//! The status page: an axum router serving a live page of the projections and process
//! managers, a JSON API behind it, and metrics in the Prometheus text format.

use std::fmt::Write as _;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use cqrs_postgres::{PgOperations, PgProjectionState, PgProjectionStatus};
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
/// it is reachable by others.
pub fn router(ops: PgOperations) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/projections", get(projections))
        .route("/api/processes", get(processes))
        .route("/api/projections/{name}/{version}/{action}", post(request))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

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
        Self(crate::commands::chain(&error))
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

pub(crate) fn projection_json(s: &PgProjectionStatus) -> Value {
    json!({
        "name": s.name,
        "version": s.version,
        "served": s.active,
        "state": s.state.as_str(),
        "position": s.position.to_string(),
        "lag_events": s.lag_events,
        "lag_seconds": s.lag.as_secs_f64(),
        "owner": s.owner,
        "error": s.error,
        "failed_at": s.failed_at.map(|p| p.to_string()),
        "updated_at": s.updated_at,
    })
}

async fn projections(State(ops): State<PgOperations>) -> Result<Json<Value>, ApiError> {
    let all = ops.projections().await?;
    let mut values = Vec::with_capacity(all.len());
    for status in &all {
        let mut value = projection_json(status);
        if let (PgProjectionState::Failed, Some(at)) = (status.state, status.failed_at)
            && let Some(event) = ops.event_at(at).await?
        {
            value["failed_event"] = json!({
                "stream_type": event.stream_type,
                "stream_id": event.stream_id,
                "stream_version": event.stream_version,
                "event_type": event.event_type,
                "schema_version": event.schema_version,
                "payload": event.payload,
            });
        }
        values.push(value);
    }
    Ok(Json(Value::Array(values)))
}

async fn processes(State(ops): State<PgOperations>) -> Result<Json<Value>, ApiError> {
    let all = ops.processes().await?;
    Ok(Json(serde_json::to_value(all).unwrap_or(Value::Null)))
}

async fn request(
    State(ops): State<PgOperations>,
    Path((name, version, action)): Path<(String, u32, String)>,
) -> Result<Response, ApiError> {
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

async fn metrics(State(ops): State<PgOperations>) -> Result<Response, ApiError> {
    let projections = ops.projections().await?;
    let processes = ops.processes().await?;
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
        } else {
            for p in &processes {
                let value = match *name {
                    "cqrs_process_instances_running" => p.running,
                    "cqrs_process_commands_waiting" => p.waiting,
                    "cqrs_process_commands_failing" => p.failing,
                    _ => p.overdue,
                };
                let _ = writeln!(text, "{name}{{manager=\"{}\"}} {value}", escape(&p.manager));
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
