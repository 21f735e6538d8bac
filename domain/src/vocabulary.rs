//! The closed vocabularies of the contract. Each enum serialises as its snake_case contract
//! spelling and parses with [`std::str::FromStr`], so an unknown value is rejected at the edge.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// An unknown value for one of the closed vocabularies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?} is unsupported (expected one of: {expected})")]
pub struct UnknownValue {
    pub field: &'static str,
    pub value: String,
    pub expected: String,
}

macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident, $field:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in contract order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The contract spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                match raw {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        field: $field,
                        value: crate::truncate_chars(raw, 64),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

vocabulary!(
    /// Why a stop was asked for.
    StopReason, "reason", {
        Finished => "finished",
        Cancelled => "cancelled",
        Admin => "admin",
        Timeout => "timeout",
        Restart => "restart",
        Patch => "patch",
    }
);

vocabulary!(
    /// How a request entered rtmanager. Every operation_log row carries one.
    OpSource, "op_source", {
        Stream => "stream",
        Rest => "rest",
        Admin => "admin",
        Reconciler => "reconciler",
    }
);

vocabulary!(
    /// The lifecycle verb an operation_log row records.
    OpKind, "op_kind", {
        Start => "start",
        Stop => "stop",
        Restart => "restart",
        Patch => "patch",
    }
);

vocabulary!(
    /// Whether an operation reached its goal.
    Outcome, "outcome", {
        Success => "success",
        Failure => "failure",
    }
);

vocabulary!(
    /// The durable status of a runtime record.
    RuntimeStatus, "status", {
        Running => "running",
        Stopped => "stopped",
        Removed => "removed",
    }
);

vocabulary!(
    /// Stable error codes. On a success the code is absent or [`ErrorCode::ReplayNoOp`].
    ErrorCode, "error_code", {
        InvalidRequest => "invalid_request",
        NotFound => "not_found",
        Conflict => "conflict",
        ServiceUnavailable => "service_unavailable",
        Internal => "internal",
        ReplayNoOp => "replay_no_op",
    }
);

impl ErrorCode {
    /// The HTTP status the bridge answers with for an operation ending in this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ReplayNoOp => 200,
            ErrorCode::InvalidRequest => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::ServiceUnavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text_and_json() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>().unwrap(), *code);
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        for reason in StopReason::ALL {
            assert_eq!(reason.as_str().parse::<StopReason>().unwrap(), *reason);
        }
    }

    #[test]
    fn unknown_values_are_named_in_the_error() {
        let err = "reboot".parse::<StopReason>().unwrap_err();
        assert_eq!(err.field, "reason");
        assert!(err.to_string().contains("finished"));
        assert!("Running".parse::<RuntimeStatus>().is_err());
    }
}
