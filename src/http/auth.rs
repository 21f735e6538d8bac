//! The bearer token every `/api/` route requires, compared in constant time.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::Response,
};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::{error, BridgeState};

/// The bridge's bearer token: a secret (`Debug` never shows it) that is long enough to guard
/// the API, compared in constant time.
#[derive(Clone, Debug)]
pub struct ApiToken(SecretString);

impl ApiToken {
    /// Refuses an empty or short token: the bridge must not run open.
    pub fn new(raw: String) -> anyhow::Result<Self> {
        anyhow::ensure!(
            raw.len() >= 16,
            "RTMANAGER_API_TOKEN must be set (16 characters or more) to serve the HTTP bridge"
        );
        Ok(Self(SecretString::from(raw)))
    }

    fn matches(&self, presented: &str) -> bool {
        let expected = self.0.expose_secret().as_bytes();
        expected.ct_eq(presented.as_bytes()).into()
    }
}

/// Lets a request through to `/api/` only with `Authorization: Bearer <the token>`; anything
/// else is 401 and reaches no handler.
pub(super) async fn require_token(
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
