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

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{MatchedPath, Path, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;
use temporalio_client::Client;

use rtmanager_activities::{DockerRuntime, RedisStore, Store, Telemetry};
use rtmanager_domain::{
    ErrorCode, GameId, OperationOutput, ReplaceRequest, SourceRef, StartRequest, StopRequest,
};

use crate::client;

/// The request header carrying the caller's idempotency key; echoed on every response.
pub const REQUEST_ID: &str = "x-request-id";

/// The OpenAPI document of this API, kept in the repository.
pub const OPENAPI: &str = include_str!("../docs/openapi.json");

/// A bearer token: never printed.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    /// Refuses an empty or short token: the bridge must not run open.
    pub fn new(raw: String) -> anyhow::Result<Self> {
        anyhow::ensure!(
            raw.len() >= 16,
            "RTMANAGER_API_TOKEN must be set (16 characters or more) to serve the HTTP bridge"
        );
        Ok(Self(raw))
    }

    fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

/// What the bridge needs.
pub struct BridgeState {
    pub client: Client,
    pub task_queue: String,
    pub store: Store,
    pub redis: Arc<RedisStore>,
    pub docker: DockerRuntime,
    pub token: ApiToken,
    pub telemetry: Telemetry,
    /// How long a request waits for its workflow before answering 503 (the workflow goes on).
    pub wait: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    metrics: HttpMetrics,
}

impl BridgeState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        task_queue: String,
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
            task_queue,
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
        let requests = IntCounterVec::new(
            Opts::new(
                "rtmanager_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("static metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new("rtmanager_http_request_seconds", "HTTP request latency").buckets(
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
                ],
            ),
            &["method", "route"],
        )
        .expect("static metric definition");
        // A second bridge on the same registry (tests) reuses the first one's collectors.
        let _ = telemetry.registry().register(Box::new(requests.clone()));
        let _ = telemetry.registry().register(Box::new(latency.clone()));
        Self { requests, latency }
    }
}

/// The bridge's routes.
pub fn router(state: Arc<BridgeState>) -> Router {
    let runtimes = "/api/v1/internal/runtimes";
    Router::new()
        .route(&format!("{runtimes}/{{game_id}}/stop"), post(stop))
        .route(&format!("{runtimes}/{{game_id}}/start"), post(start))
        .route(&format!("{runtimes}/{{game_id}}/restart"), post(restart))
        .route(&format!("{runtimes}/{{game_id}}/patch"), post(patch))
        .route(&format!("{runtimes}/{{game_id}}"), get(get_record))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
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
fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    let body = json!({ "error": error, "message": message.into() });
    (status, Json(body)).into_response()
}

/// An operation refused at the edge: the workflow output's shape, `invalid_request`.
fn invalid(status: StatusCode, message: impl Into<String>) -> Response {
    let output = OperationOutput::failure(ErrorCode::InvalidRequest, message);
    (status, Json(output)).into_response()
}

async fn require_token(
    State(state): State<Arc<BridgeState>>,
    request: Request,
    next: Next,
) -> Response {
    if !request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if state.token.matches(token) => next.run(request).await,
        _ => {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid Authorization: Bearer <token> header is required",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
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

async fn healthz() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(State(state): State<Arc<BridgeState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.telemetry.render(),
    )
        .into_response()
}

/// Checks every dependency, each with its own deadline; names the failing ones.
async fn readyz(State(state): State<Arc<BridgeState>>) -> Response {
    use temporalio_common::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;
    let deadline = Duration::from_secs(2);
    let check = |result: Result<Result<(), String>, tokio::time::error::Elapsed>| match result {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(err)) => err,
        Err(_) => "timed out".to_owned(),
    };
    let temporal = async {
        let mut service = state.client.connection().workflow_service();
        service
            .get_system_info(temporalio_client::tonic::Request::new(
                GetSystemInfoRequest::default(),
            ))
            .await
            .map(|_| ())
            .map_err(|err| err.message().to_owned())
    };
    let postgres = async { state.store.ping().await.map_err(|err| err.to_string()) };
    let redis = async { state.redis.ping().await.map_err(|err| err.to_string()) };
    let docker = async { state.docker.ping().await.map_err(|err| err.to_string()) };
    let (temporal, postgres, redis, docker) = tokio::join!(
        tokio::time::timeout(deadline, temporal),
        tokio::time::timeout(deadline, postgres),
        tokio::time::timeout(deadline, redis),
        tokio::time::timeout(deadline, docker),
    );
    let checks = json!({
        "temporal": check(temporal),
        "postgres": check(postgres),
        "redis": check(redis),
        "docker": check(docker),
    });
    let failing: Vec<&str> = checks
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| *v != "ok")
        .map(|(k, _)| k.as_str())
        .collect();
    if failing.is_empty() {
        Json(json!({ "status": "ready", "checks": checks })).into_response()
    } else {
        let body = json!({ "status": "not_ready", "failing": failing, "checks": checks });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn get_record(
    State(state): State<Arc<BridgeState>>,
    Path(game_id): Path<String>,
) -> Response {
    let game_id = match GameId::parse(&game_id) {
        Ok(id) => id,
        Err(err) => return error(StatusCode::BAD_REQUEST, "invalid_request", err.to_string()),
    };
    match state.store.get_record(&game_id).await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no runtime record for game {game_id}"),
        ),
        Err(err) => {
            tracing::warn!(err = %err, "read runtime record");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "database unavailable",
            )
        }
    }
}

/// The verbs, with the body fields each accepts.
#[derive(Clone, Copy)]
enum Verb {
    Stop,
    Start,
    Restart,
    Patch,
}

impl Verb {
    fn workflow_type(self) -> &'static str {
        match self {
            Verb::Stop => "StopRuntime",
            Verb::Start => "StartRuntime",
            Verb::Restart => "RestartRuntime",
            Verb::Patch => "PatchRuntime",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Verb::Stop => "stop",
            Verb::Start => "start",
            Verb::Restart => "restart",
            Verb::Patch => "patch",
        }
    }

    fn body_fields(self) -> &'static [&'static str] {
        match self {
            Verb::Stop => &["reason"],
            Verb::Start | Verb::Patch => &["image_ref"],
            Verb::Restart => &[],
        }
    }
}

async fn stop(state: State<Arc<BridgeState>>, path: Path<String>, request: Request) -> Response {
    operate(state, path, request, Verb::Stop).await
}

async fn start(state: State<Arc<BridgeState>>, path: Path<String>, request: Request) -> Response {
    operate(state, path, request, Verb::Start).await
}

async fn restart(state: State<Arc<BridgeState>>, path: Path<String>, request: Request) -> Response {
    operate(state, path, request, Verb::Restart).await
}

async fn patch(state: State<Arc<BridgeState>>, path: Path<String>, request: Request) -> Response {
    operate(state, path, request, Verb::Patch).await
}

async fn operate(
    State(state): State<Arc<BridgeState>>,
    Path(game_id): Path<String>,
    request: Request,
    verb: Verb,
) -> Response {
    let request_id = match request_id(request.headers()) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let with_id = |mut response: Response| {
        if let Ok(value) = HeaderValue::from_str(request_id.as_str()) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        response
    };
    let input = match parse_operation(&state, &game_id, request, verb, &request_id).await {
        Ok(input) => input,
        Err(response) => return with_id(*response),
    };
    let workflow_id = format!("http-{}-{}-{}", verb.name(), game_id, request_id.as_str());
    // A task of its own: the start completes even if the client goes away meanwhile.
    let task = tokio::spawn({
        let state = state.clone();
        let workflow_id = workflow_id.clone();
        async move {
            client::run_once(
                &state.client,
                &state.task_queue,
                verb.workflow_type(),
                &workflow_id,
                client::json_input(input.to_string().as_bytes()),
            )
            .await
        }
    });
    let response = match tokio::time::timeout(state.wait, task).await {
        Ok(Ok(Ok(output))) => {
            let status = output.error_code.map_or(200, ErrorCode::http_status);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(output)).into_response()
        }
        Ok(Ok(Err(err))) => {
            tracing::warn!(workflow_id, err = %format!("{err:#}"), "run workflow");
            let output = OperationOutput::failure(
                ErrorCode::ServiceUnavailable,
                "the workflow service is unavailable; retry with the same X-Request-Id",
            );
            (StatusCode::SERVICE_UNAVAILABLE, Json(output)).into_response()
        }
        Ok(Err(join)) => {
            tracing::error!(workflow_id, err = %join, "workflow task");
            let output = OperationOutput::failure(ErrorCode::Internal, "internal error");
            (StatusCode::INTERNAL_SERVER_ERROR, Json(output)).into_response()
        }
        Err(_) => {
            let output = OperationOutput::failure(
                ErrorCode::ServiceUnavailable,
                format!(
                    "the operation is still running after {}s; retry with the same \
                     X-Request-Id to get its result",
                    state.wait.as_secs()
                ),
            );
            (StatusCode::SERVICE_UNAVAILABLE, Json(output)).into_response()
        }
    };
    with_id(response)
}

/// The caller's request id, or a fresh one.
fn request_id(headers: &HeaderMap) -> Result<SourceRef, Box<Response>> {
    match headers.get(REQUEST_ID) {
        None => Ok(SourceRef::parse(&uuid::Uuid::new_v4().to_string()).expect("a uuid is valid")),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|raw| SourceRef::parse(raw).ok())
            .filter(|id| id.as_str().chars().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| {
                Box::new(invalid(
                    StatusCode::BAD_REQUEST,
                    "X-Request-Id must be 1-256 printable ASCII characters",
                ))
            }),
    }
}

/// Parses path, headers and body into the workflow's input, or the 4xx to answer.
async fn parse_operation(
    state: &BridgeState,
    game_id: &str,
    request: Request,
    verb: Verb,
    request_id: &SourceRef,
) -> Result<Value, Box<Response>> {
    let reject = |status: StatusCode, message: String| Box::new(invalid(status, message));
    let game_id =
        GameId::parse(game_id).map_err(|err| reject(StatusCode::BAD_REQUEST, err.to_string()))?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let body = axum::body::to_bytes(request.into_body(), state.body_limit)
        .await
        .map_err(|_| {
            reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {} bytes", state.body_limit),
            )
        })?;
    let fields: Map<String, Value> = if body.is_empty() && verb.body_fields().is_empty() {
        Map::new()
    } else {
        if content_type.as_deref() != Some("application/json") {
            return Err(reject(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON (Content-Type: application/json)".into(),
            ));
        }
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    "the body must be a JSON object".into(),
                ))
            }
            Err(err) => {
                return Err(reject(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid JSON: {err}"),
                ))
            }
        }
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !verb.body_fields().contains(&k.as_str()))
    {
        let message = format!(
            "unknown field {:?}; this operation takes {}",
            rtmanager_domain::truncate_chars(unknown, 40),
            if verb.body_fields().is_empty() {
                "an empty object".to_owned()
            } else {
                verb.body_fields().join(", ")
            }
        );
        return Err(reject(StatusCode::BAD_REQUEST, message));
    }
    let mut input = fields;
    input.insert("game_id".into(), game_id.as_str().into());
    input.insert("op_source".into(), "rest".into());
    input.insert("source_ref".into(), request_id.as_str().into());
    let input = Value::Object(input);
    // The workflow validates again; parsing here answers 400 without starting anything.
    let bytes = input.to_string();
    let parsed = match verb {
        Verb::Stop => StopRequest::from_json(bytes.as_bytes()).map(|_| ()),
        Verb::Start => StartRequest::from_json(bytes.as_bytes()).map(|_| ()),
        Verb::Restart => ReplaceRequest::restart_from_json(bytes.as_bytes()).map(|_| ()),
        Verb::Patch => ReplaceRequest::patch_from_json(bytes.as_bytes()).map(|_| ()),
    };
    parsed.map_err(|invalid| reject(StatusCode::BAD_REQUEST, invalid.message))?;
    Ok(input)
}
