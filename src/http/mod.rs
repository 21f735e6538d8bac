//! The HTTP-to-workflow bridge: the platform's synchronous way in.
//!
//! Each operation endpoint parses its input at the edge (game id, body, `X-Request-Id`), starts
//! the lifecycle workflow under an id derived from the verb, the game and the request id, and
//! answers with the workflow's output and the status its `error_code` maps to. One request id
//! is one operation: a retry joins the running workflow or gets the stored result. The workflow
//! is started from a task of its own, so a client that disconnects cancels nothing.
//!
//! Every `/api/` route needs `Authorization: Bearer <token>` (compared in constant time); the
//! bridge does not start without a token.
//!
//! Modules by concern: [`auth`] (the bearer token), [`lifecycle`] (the four operations: parse at
//! the edge, one [`crate::client`] call, the status from the outcome), [`ops`] (record reads,
//! health, readiness, metrics, the OpenAPI document).

mod auth;
mod lifecycle;
mod ops;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use prometheus::{HistogramVec, IntCounterVec};
use serde_json::json;
use temporalio_client::Client;

use rtmanager_activities::{DockerRuntime, RedisStore, Store, Telemetry};
use rtmanager_domain::{ErrorCode, OpKind, OperationOutput};

pub use auth::ApiToken;

/// The request header carrying the caller's idempotency key; echoed on every response.
pub const REQUEST_ID: &str = "x-request-id";

/// The OpenAPI document of this API, kept in the repository.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// What the bridge needs.
pub struct BridgeState {
    /// The process's Temporal client (shared with its worker under `rtmanager run`).
    pub client: Client,
    /// Which task queue each operation starts on (the game's host's, or the shared one).
    pub router: crate::client::Router,
    /// Record reads and the readiness check.
    pub store: Store,
    /// The readiness check.
    pub redis: Arc<RedisStore>,
    /// The readiness check.
    pub docker: DockerRuntime,
    /// Every `/api/` request must present it.
    pub token: ApiToken,
    /// Served at `/metrics`, with the HTTP metrics registered into it.
    pub telemetry: Telemetry,
    /// How long a request waits for its workflow before answering 503 (the workflow goes on).
    pub wait: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    metrics: HttpMetrics,
}

impl BridgeState {
    /// The bridge's state; registers the HTTP metrics into `telemetry`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        router: crate::client::Router,
        store: Store,
        redis: Arc<RedisStore>,
        docker: DockerRuntime,
        token: ApiToken,
        telemetry: Telemetry,
        wait: Duration,
        body_limit: usize,
    ) -> Self {
        let metrics = HttpMetrics::register(&telemetry);
        Self {
            client,
            router,
            store,
            redis,
            docker,
            token,
            telemetry,
            wait,
            body_limit,
            metrics,
        }
    }
}

#[derive(Clone)]
struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl HttpMetrics {
    fn register(telemetry: &Telemetry) -> Self {
        use rtmanager_activities::telemetry::{counter, histogram};
        let registry = telemetry.registry();
        let latency_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
        ];
        Self {
            requests: counter(
                registry,
                "rtmanager_http_requests_total",
                "HTTP requests by route and status",
                &["method", "route", "status"],
            ),
            latency: histogram(
                registry,
                ("rtmanager_http_request_seconds", "HTTP request latency"),
                &["method", "route"],
                latency_buckets,
            ),
        }
    }
}

/// The bridge's routes.
pub fn router(state: Arc<BridgeState>) -> Router {
    let runtimes = "/api/v1/internal/runtimes";
    let verbs = [OpKind::Stop, OpKind::Start, OpKind::Restart, OpKind::Patch];
    verbs
        .into_iter()
        .fold(Router::new(), |router, kind| {
            let path = format!("{runtimes}/{{game_id}}/{kind}");
            router.route(&path, lifecycle::route(kind))
        })
        .route(&format!("{runtimes}/{{game_id}}"), get(ops::get_record))
        .route("/api/v1/internal/hosts", get(ops::list_hosts))
        .route(
            "/api/v1/internal/hosts/{host_id}/drain",
            axum::routing::post(|state, path| ops::drain(state, path, true)),
        )
        .route(
            "/api/v1/internal/hosts/{host_id}/undrain",
            axum::routing::post(|state, path| ops::drain(state, path, false)),
        )
        .route("/api/v1/openapi.json", get(ops::openapi))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves the bridge on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: std::net::SocketAddr,
    state: Arc<BridgeState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("bind the HTTP bridge to {addr}: {err}"))?;
    serve_on(listener, state, shutdown).await
}

/// Serves the bridge on a bound listener (tests bind port 0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<BridgeState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    tracing::info!(addr = %listener.local_addr()?, "HTTP bridge listening");
    // No Nagle: a response written in two segments must not wait for the client's delayed ACK
    // (a 40 ms stall measured by `rtmanager bench`).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(err = %err, "set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// A JSON error for everything that is not an operation's output.
pub(crate) fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": error, "message": message.into() });
    (status, Json(body)).into_response()
}

/// An operation refused at the edge: the workflow output's shape, `invalid_request`.
pub(crate) fn invalid(status: StatusCode, message: impl Into<String>) -> Response {
    let output = OperationOutput::failure(ErrorCode::InvalidRequest, message);
    (status, Json(output)).into_response()
}

/// Request metrics, plus the request id echoed on every response.
async fn observe(State(state): State<Arc<BridgeState>>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let echoed = request.headers().get(REQUEST_ID).cloned();
    let mut response = next.run(request).await;
    if let Some(id) = echoed {
        response.headers_mut().entry(REQUEST_ID).or_insert(id);
    }
    let status = response.status().as_u16().to_string();
    let metrics = &state.metrics;
    metrics
        .requests
        .with_label_values(&[&method, &route, &status])
        .inc();
    metrics
        .latency
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn no_route() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such route")
}
