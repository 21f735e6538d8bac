//! rtmanager's domain vocabulary, free of I/O so that the deterministic workflow crate, the
//! activity adapters and every edge (HTTP, stream, CLI, workflow input) share one definition.
//!
//! Everything that crosses an edge is parsed once into a type that cannot hold an invalid value
//! ([`GameId`], the enums in [`vocabulary`]) — the rest of the code never re-validates.

#![warn(missing_docs)]

/// The impls a validated string id has besides its `parse`: `as_str`, `Display`,
/// `AsRef<str>`, and serde through `parse` (`try_from`) and back (`into`), so no invalid id
/// enters from JSON.
macro_rules! string_id {
    ($id:ident, $error:ty) => {
        impl $id {
            /// The id, safe to splice unescaped into keys, queue names and container names.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $id {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(&self.0)
            }
        }

        impl AsRef<str> for $id {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$id> for String {
            fn from(id: $id) -> Self {
                id.0
            }
        }

        impl TryFrom<String> for $id {
            type Error = $error;

            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }
    };
}

pub mod game_id;
pub mod host;
pub mod lifecycle;
pub mod output;
pub mod record;
pub mod request;
pub mod vocabulary;

pub use game_id::{GameId, GameIdError};
pub use host::HostId;
pub use lifecycle::LifecycleRequest;
pub use output::OperationOutput;
pub use record::RuntimeRecord;
pub use request::{
    Addressed, ImageRef, InvalidRequest, LeaseToken, ReplaceRequest, SourceRef, StartRequest,
    StopRequest, Who,
};
pub use vocabulary::{
    stop_timeout_secs, ErrorCode, OpKind, OpSource, Outcome, RuntimeStatus, StopEnded, StopReason,
    StopReport, StopSignal, STOP_TIMEOUT_MAX_SECS,
};

/// Truncates `value` to at most `max` characters (on a char boundary). Used where raw, possibly
/// hostile input is echoed into logs or audit rows.
pub fn truncate_chars(value: &str, max: usize) -> String {
    value.chars().take(max).collect()
}
