//! Drives the orders service over HTTP on a free local port, against PostgreSQL.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use cqrs_core::{EventFilter, EventStore, Position};
use example_orders_service::{App, Config, serve};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::oneshot;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A running service in a schema of its own, dropped at the end.
struct Service {
    app: App,
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    schema: String,
}

impl Service {
    async fn start() -> Self {
        let schema = format!(
            "orders_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut config = Config::new(database_url());
        config.schema.clone_from(&schema);
        config.read_wait = Duration::from_millis(500);
        config.poll_interval = Duration::from_millis(100);
        let app = App::start(config).await.expect("the service starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, app.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            app,
            base,
            http: HyperClient::builder(TokioExecutor::new()).build_http(),
            stop: Some(stop),
            schema,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
            .expect("request");
        let response = self
            .http
            .request(request)
            .await
            .expect("the service answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!("{status}: not JSON: {}", String::from_utf8_lossy(&bytes))
            })
        };
        (status, headers, body)
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, HeaderMap, Value) {
        self.send(Method::POST, path, Some(&body.to_string()), &[])
            .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.send(Method::GET, path, None, &[]).await;
        (status, body)
    }

    async fn restock(&self, sku: &str, quantity: u32) -> String {
        let (status, _, body) = self
            .post(
                &format!("/inventory/{sku}/restock"),
                &json!({ "quantity": quantity }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["token"].as_str().expect("a token").to_owned()
    }

    async fn place(&self, customer: &str, sku: &str, quantity: u32) -> Value {
        let (status, headers, body) = self
            .post(
                "/orders",
                &json!({ "customer": customer, "lines": [{ "sku": sku, "quantity": quantity }] }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(
            headers
                .get("x-consistency-token")
                .and_then(|v| v.to_str().ok()),
            body["token"].as_str(),
            "the token is in the header and the body"
        );
        body
    }

    /// Reads the order until its status is no longer `pending`.
    async fn settled(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.get(&format!("/orders/{id}")).await;
            if status == StatusCode::OK && body["status"] != "pending" {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} never settled: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.app.shutdown().await;
        let pool = sqlx::PgPool::connect(&database_url())
            .await
            .expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{}\" CASCADE",
            self.schema
        )))
        .execute(&pool)
        .await
        .expect("drop the test schema");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_flows_through_both_contexts_and_reads_its_own_write() {
    let service = Service::start().await;
    let restocked = service.restock("tea", 5).await;

    let placed = service.place("ada", "tea", 2).await;
    let id = placed["id"].as_str().expect("an id");
    assert_eq!(placed["stream_version"], 1);

    // Read-your-writes: with the token, the read waits for the view.
    let token = placed["token"].as_str().expect("a token");
    let (status, view) = service.get(&format!("/orders/{id}?after={token}")).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["customer"], "ada");
    assert!(
        view["status"] == "pending" || view["status"] == "confirmed",
        "{view}"
    );

    // The inventory reacts, the order is confirmed, the stock view follows.
    let settled = service.settled(id).await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    // (Read after the restock: the stock view may not have applied the reservation yet.)
    let (_, stock) = service
        .get(&format!("/inventory/tea?after={restocked}"))
        .await;
    assert!(stock["on_hand"] == 3 || stock["on_hand"] == 5, "{stock}");

    // An order the warehouse cannot serve is rejected, with the reason.
    let too_big = service.place("bob", "tea", 50).await;
    let rejected = service.settled(too_big["id"].as_str().expect("id")).await;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["reason"], "not enough tea in stock");

    // Correlation and causation are carried from the HTTP request to the confirmation.
    let correlation = placed["correlation_id"].as_str().expect("correlation id");
    let log = service
        .app
        .store
        .read_all(Position::START, 1_000, &EventFilter::all())
        .await
        .expect("read the log");
    let of_request: Vec<_> = log
        .iter()
        .filter(|e| {
            e.metadata.correlation_id.map(|c| c.to_string()).as_deref() == Some(correlation)
        })
        .collect();
    let types: Vec<&str> = of_request.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["OrderPlaced", "StockReserved", "OrderConfirmed"]);
    let placed_event = of_request[0];
    let reserved = of_request[1];
    assert_eq!(
        reserved.metadata.headers.get("caused_by_event"),
        Some(&placed_event.event_id.to_string()),
        "the reservation names the event that caused it"
    );
    assert_eq!(
        of_request[2].metadata.headers.get("caused_by_event"),
        Some(&reserved.event_id.to_string())
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_clients_always_read_their_own_writes() {
    let service = std::sync::Arc::new(Service::start().await);
    service.restock("coffee", 1_000).await;
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..16 {
        let service = std::sync::Arc::clone(&service);
        clients.spawn(async move {
            for round in 0..5 {
                let customer = format!("client-{client}-{round}");
                let placed = service.place(&customer, "coffee", 1).await;
                let id = placed["id"].as_str().expect("id");
                let token = placed["token"].as_str().expect("token");
                let (status, view) = service.get(&format!("/orders/{id}?after={token}")).await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "client {client} round {round}: {view}"
                );
                assert_eq!(view["customer"], customer.as_str());
            }
        });
    }
    while let Some(joined) = clients.join_next().await {
        joined.expect("a client failed");
    }
    let service = std::sync::Arc::into_inner(service).expect("the clients are done");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_typed_json_errors_never_500() {
    let service = Service::start().await;
    let cases: Vec<(Method, &str, Option<&str>, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/orders",
            Some("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            Method::POST,
            "/orders",
            Some(r#"{"customer": "ada"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            Method::POST,
            "/orders",
            Some(r#"{"customer": "ada", "lines": [], "extra": 1}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            Method::POST,
            "/orders",
            Some(r#"{"customer": "ada", "lines": []}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_order",
        ),
        (
            Method::POST,
            "/orders",
            Some(r#"{"customer": "", "lines": [{"sku": "tea", "quantity": 1}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_order",
        ),
        (
            Method::POST,
            "/orders",
            Some(r#"{"customer": "ada", "lines": [{"sku": "tea", "quantity": 0}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_order",
        ),
        (
            Method::POST,
            "/orders",
            Some(r#"{"customer": "ada", "lines": [{"sku": "tea", "quantity": -1}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            Method::GET,
            "/orders/no-such-order",
            None,
            StatusCode::NOT_FOUND,
            "order_not_found",
        ),
        (
            Method::POST,
            "/orders/no-such-order/cancel",
            None,
            StatusCode::NOT_FOUND,
            "order_not_found",
        ),
        (
            Method::GET,
            "/orders/x?after=yesterday",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_token",
        ),
        (
            Method::GET,
            "/orders/x?unknown=1",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            Method::POST,
            "/inventory/tea/restock",
            Some(r#"{"quantity": 0}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_restock",
        ),
        (
            Method::GET,
            "/no/such/route",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, body, expected, code) in cases {
        let (status, _, answer) = service.send(method.clone(), path, body, &[]).await;
        assert_eq!(status, expected, "{method} {path} {body:?}: {answer}");
        assert_eq!(answer["error"], code, "{method} {path} {body:?}: {answer}");
        assert!(answer["message"].is_string(), "{answer}");
    }

    // A body that is not JSON at all.
    let (status, _, answer) = service
        .send(
            Method::POST,
            "/orders",
            None,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{answer}");

    // A cancelled order cannot be cancelled again.
    service.restock("tea", 1).await;
    let placed = service.place("ada", "tea", 1).await;
    let id = placed["id"].as_str().expect("id");
    let cancel = format!("/orders/{id}/cancel");
    let (first, _, _) = service.send(Method::POST, &cancel, None, &[]).await;
    let (second, _, answer) = service.send(Method::POST, &cancel, None, &[]).await;
    // The reservation may have confirmed the order first; either way, the second is 409.
    assert!(first == StatusCode::ACCEPTED || first == StatusCode::CONFLICT);
    assert_eq!(second, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"], "order_not_pending");

    // A token the view cannot reach in time: 504, with a JSON body.
    let (status, answer) = service
        .get(&format!("/orders/{id}?after=999999999999.1"))
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{answer}");
    assert_eq!(answer["error"], "view_lagging");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_places_one_order() {
    let service = Service::start().await;
    let body = json!({ "customer": "ada", "lines": [{ "sku": "tea", "quantity": 1 }] }).to_string();
    let key = [("idempotency-key", "checkout-42")];
    let (first_status, _, first) = service
        .send(Method::POST, "/orders", Some(&body), &key)
        .await;
    let (second_status, _, second) = service
        .send(Method::POST, "/orders", Some(&body), &key)
        .await;
    assert_eq!(
        (first_status, second_status),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    assert_eq!(
        first["id"], second["id"],
        "the retry targets the same order"
    );
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["duplicate"], true);
    assert_eq!(first["token"], second["token"]);
    let stream = service
        .app
        .store
        .load("order", first["id"].as_str().expect("id"), 0)
        .await
        .expect("load");
    // (The reservation may have confirmed the order meanwhile: a second event, of another
    // type.)
    let types: Vec<&str> = stream.iter().map(|e| e.event_type.as_str()).collect();
    assert!(
        types == ["OrderPlaced"] || types == ["OrderPlaced", "OrderConfirmed"],
        "one order placed: {types:?}"
    );
    service.stop().await;
}
