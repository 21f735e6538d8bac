//! The closed vocabularies of the contract. Each enum serialises as its contract spelling and parses with [`std::str::FromStr`], so an unknown value is rejected at the edge.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// An unknown value for one of the closed vocabularies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?} is unsupported (expected one of: {expected})")]
pub struct UnknownValue {
    /// The contract field's name, e.g. `reason`.
    pub field: &'static str,
    /// The rejected input, truncated to 64 characters: it may be hostile and is logged.
    pub value: String,
    /// Every accepted spelling, comma-separated, so the caller can fix the request.
    pub expected: String,
}

macro_rules! vocabulary {
    (
        $(#[$meta:meta])* $name:ident, $field:literal,
        { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vmeta])* #[serde(rename = $text)] $variant),+ }

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
        /// The game ended normally.
        Finished => "finished",
        /// The game was called off before it ended.
        Cancelled => "cancelled",
        /// An operator asked for it.
        Admin => "admin",
        /// The game overran its time limit.
        Timeout => "timeout",
        /// Set by `RestartRuntime` on its child stop.
        Restart => "restart",
        /// Set by `PatchRuntime` on its child stop.
        Patch => "patch",
    }
);

vocabulary!(
    /// How a request entered rtmanager. Every operation_log row carries one.
    OpSource, "op_source", {
        /// The `runtime:stop_jobs` consumer; `source_ref` is the stream entry id.
        Stream => "stream",
        /// The HTTP bridge; `source_ref` is the request id.
        Rest => "rest",
        /// An operator, through the `rtmanager` CLI or a direct workflow start.
        Admin => "admin",
        /// Reserved for a drift reconciler; nothing in rtmanager sends it yet.
        Reconciler => "reconciler",
    }
);

vocabulary!(
    /// The lifecycle verb an operation_log row records.
    OpKind, "op_kind", {
        /// `StartRuntime`, run alone or as the child of a restart or patch.
        Start => "start",
        /// `StopRuntime`, run alone or as the child of a restart or patch.
        Stop => "stop",
        /// The parent row of `RestartRuntime`; its children write `stop` and `start` rows.
        Restart => "restart",
        /// The parent row of `PatchRuntime`; its children write `stop` and `start` rows.
        Patch => "patch",
    }
);

vocabulary!(
    /// Whether an operation reached its goal.
    Outcome, "outcome", {
        /// The desired state holds, freshly reached or already there (`replay_no_op`).
        Success => "success",
        /// The desired state was not reached; `error_code` says why.
        Failure => "failure",
    }
);

vocabulary!(
    /// The durable status of a runtime record.
    RuntimeStatus, "status", {
        /// A container was started and recorded; the record is trusted, not re-checked.
        Running => "running",
        /// The container is stopped but kept; the next start removes it.
        Stopped => "stopped",
        /// The container is gone; the record keeps no container id.
        Removed => "removed",
    }
);

vocabulary!(
    /// Stable error codes. On a success the code is absent or [`ErrorCode::ReplayNoOp`].
    ErrorCode, "error_code", {
        /// Unparsable input, or an image the engine rejects or that exits at once (400).
        InvalidRequest => "invalid_request",
        /// No runtime record, or an image the engine does not have (404).
        NotFound => "not_found",
        /// Another operation holds the lease, or the record's state forbids the verb (409).
        Conflict => "conflict",
        /// Redis, PostgreSQL or Docker stayed unreachable through the retries, or the
        /// workflow was cancelled (503).
        ServiceUnavailable => "service_unavailable",
        /// Needs an operator, e.g. a container without the game's labels (500).
        Internal => "internal",
        /// Success without a change: the desired state already held (200).
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

vocabulary!(
    /// The signal a stop sends first; Docker kills the process if it has not exited when the
    /// stop's timeout runs out.
    StopSignal, "signal", {
        /// The default: "terminate".
        Term => "SIGTERM",
        /// What a terminal's Ctrl-C sends; some servers save state only on it.
        Int => "SIGINT",
        /// Quit, often with a core dump or a thread dump.
        Quit => "SIGQUIT",
        /// Hang up.
        Hup => "SIGHUP",
        /// Left to the game server's own meaning.
        Usr1 => "SIGUSR1",
        /// Left to the game server's own meaning.
        Usr2 => "SIGUSR2",
    }
);

vocabulary!(
    /// How a stop that reached Docker ended.
    StopEnded, "ended", {
        /// The process exited within the timeout after the signal.
        Graceful => "graceful",
        /// The timeout ran out and Docker killed the process (SIGKILL).
        Killed => "killed",
    }
);

impl StopSignal {
    /// Reads an image's or container's stop signal as Docker spells it (`SIGTERM`, `TERM`,
    /// `15`, any case); `None` for a signal outside the six.
    pub fn from_docker(raw: &str) -> Option<Self> {
        let raw = raw.trim().to_ascii_uppercase();
        let name = match raw.as_str() {
            "15" => "SIGTERM",
            "2" => "SIGINT",
            "3" => "SIGQUIT",
            "1" => "SIGHUP",
            "10" => "SIGUSR1",
            "12" => "SIGUSR2",
            other => other,
        };
        let name = if name.starts_with("SIG") {
            name.to_owned()
        } else {
            format!("SIG{name}")
        };
        name.parse().ok()
    }
}

/// The largest stop timeout a request or a label may ask for, in seconds.
pub const STOP_TIMEOUT_MAX_SECS: u32 = 3600;

/// Parses a stop timeout in seconds, `0..=3600` (`0`: kill right after the signal).
pub fn stop_timeout_secs(raw: u64) -> Result<u32, String> {
    u32::try_from(raw)
        .ok()
        .filter(|secs| *secs <= STOP_TIMEOUT_MAX_SECS)
        .ok_or_else(|| format!("timeout_secs must be 0-{STOP_TIMEOUT_MAX_SECS}, not {raw}"))
}

/// What a stop that reached Docker did: the signal it sent, how long it waited, how the
/// container ended. In the stop's output (`"stop"`), its audit row and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopReport {
    /// The signal sent first.
    pub signal: StopSignal,
    /// How long Docker waited for the process to exit before killing it.
    pub timeout_secs: u32,
    /// Whether the process exited within the timeout or was killed.
    pub ended: StopEnded,
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
    fn docker_spellings_of_a_stop_signal_are_read() {
        for raw in ["SIGQUIT", "QUIT", "quit", "3", " sigquit "] {
            assert_eq!(
                StopSignal::from_docker(raw),
                Some(StopSignal::Quit),
                "{raw}"
            );
        }
        for raw in ["SIGKILL", "9", "SIGRTMIN+3", ""] {
            assert_eq!(StopSignal::from_docker(raw), None, "{raw}");
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
