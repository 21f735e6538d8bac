//! The four lifecycle operations: each request is parsed at the edge into a
//! [`LifecycleRequest`] (game id, body, `X-Request-Id`), run through the one client call, and
//! answered with the workflow's output and the status its `error_code` maps to.

use std::sync::Arc;

use axum::{
    extract::{Path, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{Map, Value};

use rtmanager_domain::{ErrorCode, GameId, LifecycleRequest, OpKind, OperationOutput, SourceRef};

use super::{invalid, BridgeState, REQUEST_ID};
use crate::client::{self, Operation, Origin};

/// The body fields each verb takes (the path gives the game, the bridge the source).
fn body_fields(kind: OpKind) -> &'static [&'static str] {
    match kind {
        OpKind::Stop => &["reason", "timeout_secs", "signal"],
        OpKind::Start => &["image_ref", "host"],
        OpKind::Patch => &["image_ref"],
        OpKind::Restart => &[],
    }
}

/// The route of each verb: `POST /api/v1/internal/runtimes/{game_id}/<verb>`.
pub(super) fn route(kind: OpKind) -> axum::routing::MethodRouter<Arc<BridgeState>> {
    axum::routing::post(move |state, path, request| operate(state, path, request, kind))
}

async fn operate(
    State(state): State<Arc<BridgeState>>,
    Path(game_id): Path<String>,
    request: Request,
    kind: OpKind,
) -> Response {
    let given = request.headers().contains_key(REQUEST_ID);
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
    let parsed = parse_operation(&state, &game_id, request, kind, &request_id).await;
    let (operation, wait) = match parsed {
        Ok(request) => (
            Operation::new(
                &request,
                &Origin::Http {
                    request_id: request_id.clone(),
                    given,
                },
            ),
            bridge_wait(state.wait, request_grace(&request)),
        ),
        Err(response) => return with_id(*response),
    };
    let workflow_id = operation.workflow_id().to_owned();
    // A task of its own: the start completes even if the client goes away meanwhile.
    let task = tokio::spawn({
        let state = state.clone();
        async move { client::run(&state.client, &state.router, &operation).await }
    });
    let response = match tokio::time::timeout(wait, task).await {
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
                    wait.as_secs()
                ),
            );
            (StatusCode::SERVICE_UNAVAILABLE, Json(output)).into_response()
        }
    };
    with_id(response)
}

/// How long a request holds its connection: the usual wait plus the time the game's process
/// may take (a stop's requested timeout), at most twice the usual wait, so that a stop asked
/// to wait an hour does not hold a connection (and whatever proxy is in between) for an hour.
/// A longer operation answers 503 "still running", and a retry with the same `X-Request-Id`
/// joins it.
fn bridge_wait(usual: std::time::Duration, grace: std::time::Duration) -> std::time::Duration {
    usual + grace.min(usual)
}

/// How long the game's process may be waited for beyond the usual: a stop's requested timeout.
fn request_grace(request: &LifecycleRequest) -> std::time::Duration {
    match request {
        LifecycleRequest::Stop(stop) => {
            std::time::Duration::from_secs(stop.timeout_secs.unwrap_or(0).into())
        }
        _ => std::time::Duration::ZERO,
    }
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

/// Parses path, headers and body into the lifecycle request, or the 4xx to answer.
async fn parse_operation(
    state: &BridgeState,
    game_id: &str,
    request: Request,
    kind: OpKind,
    request_id: &SourceRef,
) -> Result<LifecycleRequest, Box<Response>> {
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
    let fields: Map<String, Value> = if body.is_empty() && body_fields(kind).is_empty() {
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
        .find(|k| !body_fields(kind).contains(&k.as_str()))
    {
        let message = format!(
            "unknown field {:?}; this operation takes {}",
            rtmanager_domain::truncate_chars(unknown, 40),
            if body_fields(kind).is_empty() {
                "an empty object".to_owned()
            } else {
                body_fields(kind).join(", ")
            }
        );
        return Err(reject(StatusCode::BAD_REQUEST, message));
    }
    let mut input = fields;
    input.insert("game_id".into(), game_id.as_str().into());
    input.insert("op_source".into(), "rest".into());
    input.insert("source_ref".into(), request_id.as_str().into());
    // The workflow parses again with the same parser; parsing here answers 400 without
    // starting anything.
    let bytes = Value::Object(input).to_string();
    LifecycleRequest::from_json(kind, bytes.as_bytes())
        .map_err(|invalid| reject(StatusCode::BAD_REQUEST, invalid.message))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_requested_timeout_extends_the_wait_up_to_twice_the_usual() {
        let usual = Duration::from_secs(120);
        let wait = |grace| super::bridge_wait(usual, Duration::from_secs(grace));
        assert_eq!(wait(0), usual);
        assert_eq!(wait(30), Duration::from_secs(150));
        assert_eq!(wait(120), Duration::from_secs(240));
        assert_eq!(wait(3600), Duration::from_secs(240));
    }
}
