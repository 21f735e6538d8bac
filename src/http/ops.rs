//! What the bridge answers besides operations: record reads, the hosts and their drain,
//! liveness, readiness (each dependency checked with a deadline), metrics and the OpenAPI
//! document.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use rtmanager_domain::{GameId, HostId};

use super::{error, BridgeState, OPENAPI};

pub(super) async fn healthz() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub(super) async fn metrics(State(state): State<Arc<BridgeState>>) -> Response {
    let mut text = state.telemetry.render();
    // The SDK's worker metrics, when this process runs a worker (`rtmanager run`).
    text.push_str(&crate::telemetry::sdk::render().await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Checks every dependency, each with its own deadline; names the failing ones.
pub(super) async fn readyz(State(state): State<Arc<BridgeState>>) -> Response {
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

pub(super) async fn get_record(
    State(state): State<Arc<BridgeState>>,
    Path(game_id): Path<String>,
) -> Response {
    let game_id = match GameId::parse(&game_id) {
        Ok(id) => id,
        Err(err) => return invalid(err),
    };
    let record = state.store.get_record(&game_id).await;
    found(record, || format!("no runtime record for game {game_id}"))
}

/// `GET /api/v1/internal/hosts`: every host, its state as of now and its game counts.
pub(super) async fn list_hosts(State(state): State<Arc<BridgeState>>) -> Response {
    match state.store.list_hosts(state.router.down_after()).await {
        Ok(hosts) => Json(hosts).into_response(),
        Err(err) => database_unavailable(&err),
    }
}

/// `POST /api/v1/internal/hosts/{host_id}/drain` and `.../undrain`: the host as it is now.
pub(super) async fn drain(
    State(state): State<Arc<BridgeState>>,
    Path(host_id): Path<String>,
    draining: bool,
) -> Response {
    let host = match HostId::parse(&host_id) {
        Ok(host) => host,
        Err(message) => return invalid(message),
    };
    let down_after = state.router.down_after();
    let status = state.store.set_draining(&host, draining, down_after).await;
    found(status, || format!("host {host} is not registered"))
}

/// A path parameter that does not parse: 400 `invalid_request`.
fn invalid(err: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request", err.to_string())
}

/// A read of one thing: the thing, 404 `not_found` with `missing`'s words, or 503.
fn found<T: serde::Serialize, E: std::fmt::Display>(
    read: Result<Option<T>, E>,
    missing: impl FnOnce() -> String,
) -> Response {
    match read {
        Ok(Some(found)) => Json(found).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", missing()),
        Err(err) => database_unavailable(&err),
    }
}

fn database_unavailable(err: &dyn std::fmt::Display) -> Response {
    tracing::warn!(err = %err, "database");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
        "database unavailable",
    )
}
