//! The output every lifecycle workflow completes with. Business failures are values of this type,
//! never workflow failures.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Outcome, RuntimeRecord, StopReport};

/// `{"outcome", "error_code", "error_message", "record"}`: `record` is present on success and
/// replay, null on failure. A stop that reached Docker adds `"stop"`: the signal, the timeout
/// and how the container ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationOutput {
    /// A failure still completes the workflow; only this field says it failed.
    pub outcome: Outcome,
    /// `None` on a fresh success, `replay_no_op` on an idempotent one, always set on failure.
    pub error_code: Option<ErrorCode>,
    /// Human-readable cause; set only on failure.
    pub error_message: Option<String>,
    /// As the operation left it (on a replay, as it was found).
    pub record: Option<RuntimeRecord>,
    /// What the Docker stop did, when the operation stopped a running container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopReport>,
}

impl OperationOutput {
    /// A fresh success.
    pub fn success(record: RuntimeRecord) -> Self {
        Self {
            outcome: Outcome::Success,
            error_code: None,
            error_message: None,
            record: Some(record),
            stop: None,
        }
    }

    /// An idempotent replay: the desired state already held.
    pub fn replay_no_op(record: RuntimeRecord) -> Self {
        Self {
            outcome: Outcome::Success,
            error_code: Some(ErrorCode::ReplayNoOp),
            error_message: None,
            record: Some(record),
            stop: None,
        }
    }

    /// A business failure with its stable code.
    pub fn failure(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failure,
            error_code: Some(code),
            error_message: Some(message.into()),
            record: None,
            stop: None,
        }
    }

    /// True for replays too: a caller that needs to know whether anything changed checks
    /// `error_code`.
    pub fn is_success(&self) -> bool {
        self.outcome == Outcome::Success
    }
}
