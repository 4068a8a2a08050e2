//! The HTTP API: commands answer 202 with a consistency token; reads given that token
//! wait until the view has caught up with it.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cqrs_core::{CommandError, CommandMetadata, CommandOutcome, Position};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use cqrs_core::Cqrs;
use cqrs_postgres::{PgEventStore, PgProjectionRunner};

use crate::app::App;
use crate::inventory::{InventoryCommand, InventoryError, WAREHOUSE, Warehouse};
use crate::orders::{Order, OrderCommand, OrderError, OrderLine};

/// The header carrying a consistency token, on command replies and on reads.
pub const CONSISTENCY_HEADER: &str = "x-consistency-token";

/// How long a read waits for the view to reach the client's token.
pub const READ_WAIT: Duration = Duration::from_secs(5);

/// The routes of the service.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .route("/inventory/{sku}/restock", post(restock))
        .route("/inventory/{sku}", get(get_stock))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(app)
}

/// A JSON body whose rejection is answered in JSON too.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}

/// An error answer: a status and `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn internal(error: &dyn std::error::Error) -> Self {
        tracing::error!(%error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the service failed; retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            "unsupported_media_type"
        } else {
            "invalid_json"
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

pub(crate) fn order_error(error: CommandError<OrderError>) -> ApiError {
    match error {
        CommandError::Rejected(rejection) => {
            let (status, code) = match &rejection {
                OrderError::NotFound => (StatusCode::NOT_FOUND, "order_not_found"),
                OrderError::AlreadyPlaced => (StatusCode::CONFLICT, "order_exists"),
                OrderError::NotPending(_) => (StatusCode::CONFLICT, "order_not_pending"),
                OrderError::NoLines | OrderError::NoCustomer | OrderError::InvalidLine { .. } => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_order")
                }
            };
            ApiError::new(status, code, rejection.to_string())
        }
        CommandError::Conflict { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the order is changing too often; retry",
        ),
        other => ApiError::internal(&other),
    }
}

pub(crate) fn inventory_error(error: CommandError<InventoryError>) -> ApiError {
    match error {
        CommandError::Rejected(rejection) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_restock",
            rejection.to_string(),
        ),
        CommandError::Conflict { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the warehouse is busy; retry",
        ),
        other => ApiError::internal(&other),
    }
}

/// What a command answers: 202 Accepted, the stream version and the consistency token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Accepted {
    /// The aggregate the command went to.
    pub id: String,
    /// Its version after the command.
    pub stream_version: u64,
    /// Pass it back (`?after=` or the `x-consistency-token` header) to read this write.
    pub token: Option<String>,
    /// Ties together everything this request causes, across both contexts.
    pub correlation_id: Uuid,
    /// `true` when the same idempotency key was already executed.
    pub duplicate: bool,
}

pub(crate) fn accepted<E>(id: String, outcome: &CommandOutcome<E>) -> Response {
    let token = outcome.position.map(|p| p.to_string());
    let mut headers = HeaderMap::new();
    if let Some(value) = token.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(CONSISTENCY_HEADER, value);
    }
    let body = Accepted {
        id,
        stream_version: outcome.stream_version,
        token,
        correlation_id: outcome.correlation_id,
        duplicate: outcome.duplicate,
    };
    (StatusCode::ACCEPTED, headers, Json(body)).into_response()
}

/// `Idempotency-Key` header → a command id, so a retried request is applied once.
pub(crate) fn metadata(headers: &HeaderMap) -> Result<CommandMetadata, ApiError> {
    let mut meta = CommandMetadata::new();
    if let Some(key) = headers.get("idempotency-key") {
        let key = key.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                "Idempotency-Key is not text",
            )
        })?;
        meta = meta.with_command_id(Uuid::new_v5(&Uuid::NAMESPACE_URL, key.as_bytes()));
    }
    if let Some(user) = headers.get("x-user").and_then(|v| v.to_str().ok()) {
        meta = meta.with_header("user", user);
    }
    Ok(meta)
}

/// The body of `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// Who orders.
    pub customer: String,
    /// What.
    pub lines: Vec<OrderLine>,
}

async fn place_order(
    State(app): State<App>,
    headers: HeaderMap,
    Body(body): Body<PlaceOrder>,
) -> Result<Response, ApiError> {
    place_with(&app.orders, &headers, body).await
}

/// Places the order `body` through `orders` (the handler of both services' `POST /orders`).
pub(crate) async fn place_with(
    orders: &Cqrs<Order, PgEventStore>,
    headers: &HeaderMap,
    body: PlaceOrder,
) -> Result<Response, ApiError> {
    let meta = metadata(headers)?;
    // With an idempotency key, a retried request targets the same order id.
    let id = match meta.command_id {
        Some(key) => key.to_string(),
        None => Uuid::new_v4().to_string(),
    };
    let command = OrderCommand::Place {
        customer: body.customer,
        lines: body.lines,
    };
    let outcome = orders
        .execute_with(&id, command, meta)
        .await
        .map_err(order_error)?;
    Ok(accepted(id, &outcome))
}

async fn cancel_order(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let meta = metadata(&headers)?;
    let outcome = app
        .orders
        .execute_with(&id, OrderCommand::Cancel, meta)
        .await
        .map_err(order_error)?;
    Ok(accepted(id, &outcome))
}

/// The body of `POST /inventory/{sku}/restock`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    /// How many units arrived.
    pub quantity: u32,
}

async fn restock(
    State(app): State<App>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    Body(body): Body<Restock>,
) -> Result<Response, ApiError> {
    restock_with(&app.warehouse, sku, &headers, body).await
}

/// Restocks `sku` through `warehouse` (the handler of both services' restock).
pub(crate) async fn restock_with(
    warehouse: &Cqrs<Warehouse, PgEventStore>,
    sku: String,
    headers: &HeaderMap,
    body: Restock,
) -> Result<Response, ApiError> {
    let meta = metadata(headers)?;
    let command = InventoryCommand::Restock {
        sku,
        quantity: body.quantity,
    };
    let outcome = warehouse
        .execute_with(WAREHOUSE, command, meta)
        .await
        .map_err(inventory_error)?;
    Ok(accepted(WAREHOUSE.to_owned(), &outcome))
}

/// The query of a read: `?after=<token>` waits for the view to reach it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    /// A consistency token from a command's answer.
    pub after: Option<String>,
}

/// The token a read must wait for, from `?after=` or the header.
pub(crate) fn token(query: &ReadQuery, headers: &HeaderMap) -> Result<Option<Position>, ApiError> {
    let text = match (&query.after, headers.get(CONSISTENCY_HEADER)) {
        (Some(text), _) => text.clone(),
        (None, Some(value)) => value
            .to_str()
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_token", "not text"))?
            .to_owned(),
        (None, None) => return Ok(None),
    };
    text.parse()
        .map(Some)
        .map_err(|error: cqrs_core::ParsePositionError| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_token", error.to_string())
        })
}

async fn get_order(
    State(app): State<App>,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if let Some(position) = token(&query, &headers)? {
        app.wait_for_orders(position).await?;
    }
    match app
        .order_view(&id)
        .await
        .map_err(|e| ApiError::internal(&e))?
    {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            "there is no such order",
        )),
    }
}

async fn get_stock(
    State(app): State<App>,
    Path(sku): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    if let Some(position) = token(&query, &headers)? {
        app.wait_for_stock(position).await?;
    }
    let on_hand = app
        .stock_view(&sku)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({ "sku": sku, "on_hand": on_hand })).into_response())
}

/// The answer to a read whose view did not reach the token in time.
/// Waits until `runner`'s view `V` has passed `position`: `504` when it does not within
/// `wait`.
pub(crate) async fn wait_for_view<V: cqrs_core::Projection>(
    runner: &PgProjectionRunner,
    position: Position,
    wait: Duration,
) -> Result<(), ApiError> {
    match runner.wait_for::<V>(position, wait).await {
        Ok(()) => Ok(()),
        Err(cqrs_core::ProjectionError::Timeout { .. }) => Err(view_lagging(position)),
        Err(error) => Err(ApiError::internal(&error)),
    }
}

pub(crate) fn view_lagging(position: Position) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "view_lagging",
        format!("the view has not reached {position} yet; retry the read"),
    )
}
