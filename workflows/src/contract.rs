//! Activity contracts: the name Temporal stores in history plus the input and output types.
//!
//! Workflows call activities through these markers; `rtmanager-activities` implements each one
//! with `#[activity(definition = contract::X)]`, which checks at compile time that the
//! implementation's types match. Outcomes a workflow branches on (lease held by another, record
//! absent, container vanished, CAS lost) are `Ok` values, so they are never retried; only
//! transient infrastructure faults are errors.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use temporalio_workflow::common::ActivityDefinition;

use rtmanager_domain::{
    ErrorCode, GameId, ImageRef, LeaseToken, OpKind, Outcome, RuntimeRecord, RuntimeStatus,
};

macro_rules! activity_contract {
    ($(#[$meta:meta])* $marker:ident = $name:literal : $input:ty => $output:ty) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $marker;

        impl ActivityDefinition for $marker {
            type Input = $input;
            type Output = $output;
            fn name(&self) -> &str {
                $name
            }
        }
    };
}

activity_contract!(
    /// Takes the game's lease with a fresh fence, or re-confirms it when this secret already
    /// holds it (a retried attempt).
    AcquireLease = "AcquireLease": AcquireLeaseInput => LeaseOutcome
);
activity_contract!(
    /// Whether Redis holds exactly this token as the game's lease now: how an operation that
    /// inherits a parent's token proves the token is real and current before it does anything.
    CheckLease = "CheckLease": CheckLeaseInput => bool
);
activity_contract!(
    /// Gives the lease back if, and only if, this token still holds it (compare-and-delete).
    ReleaseLease = "ReleaseLease": ReleaseLeaseInput => bool
);
activity_contract!(
    /// Reads the runtime record; `None` when the game has none.
    LoadRecord = "LoadRecord": LoadRecordInput => Option<LoadedRecord>
);
activity_contract!(
    /// Stops the game's container gracefully, after checking it carries the game's labels.
    /// Renews the lease while Docker works.
    StopContainer = "StopContainer": StopContainerInput => ContainerStopOutcome
);
activity_contract!(
    /// Creates (or adopts, by its per-operation name) and starts the game's container, then
    /// checks it is still running after a short settle time. Returns the container id.
    EnsureContainer = "EnsureContainer": EnsureContainerInput => String
);
activity_contract!(
    /// Upserts the record to `running` with the new container, unless it is running already
    /// or a newer lease holder (higher fence) wrote it.
    RecordRunning = "RecordRunning": RecordRunningInput => UpdateStatusOutcome
);
activity_contract!(
    /// Removes one of the game's containers (force), after checking its labels; a missing
    /// container is already removed.
    RemoveContainer = "RemoveContainer": RemoveContainerInput => ()
);
activity_contract!(
    /// Removes every container labelled for the game except `keep`; returns how many.
    RemoveStaleContainers = "RemoveStaleContainers": RemoveContainerInput => u32
);
activity_contract!(
    /// Compare-and-swap of a record's status, guarded by the expected status and container id.
    UpdateStatus = "UpdateStatus": UpdateStatusInput => UpdateStatusOutcome
);
activity_contract!(
    /// Publishes one health event to `runtime:health_events` and upserts `health_snapshots`.
    /// Best effort, and idempotent per operation.
    PublishHealth = "PublishHealth": HealthEvent => ()
);
activity_contract!(
    /// Appends the operation's audit row (at most one per operation) and records its telemetry.
    /// Best effort.
    AppendOperationLog = "AppendOperationLog": OperationEntry => ()
);

/// Input of [`AcquireLease`]. The TTL is the worker's configuration, applied by the activity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcquireLeaseInput {
    pub game_id: GameId,
    /// The holder's secret; the issued token is `<fence>:<secret>`.
    pub secret: String,
}

/// Input of [`CheckLease`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckLeaseInput {
    pub game_id: GameId,
    pub token: LeaseToken,
}

/// Result of [`AcquireLease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LeaseOutcome {
    /// Held, with the monotonic fence every record write of this holder carries.
    Acquired {
        fence: u64,
    },
    HeldByOther,
}

/// Input of [`LoadRecord`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRecordInput {
    pub game_id: GameId,
    pub operation_id: String,
}

/// Result of [`LoadRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedRecord {
    pub record: RuntimeRecord,
    /// This very operation wrote the row last: the step is re-running after a crash (local
    /// activities re-run whole) and must continue from its own write, not mistake it for
    /// another operation's.
    pub written_by_this_operation: bool,
    /// The container the last write acted on. A removal clears the record's container, so a
    /// re-run after a crash that followed its own removal reads the container it found here.
    #[serde(default)]
    pub last_container_id: Option<String>,
}

/// Input of [`ReleaseLease`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseLeaseInput {
    pub game_id: GameId,
    pub token: LeaseToken,
}

/// Input of [`StopContainer`]. The graceful timeout is the worker's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopContainerInput {
    pub game_id: GameId,
    pub container_id: String,
    /// The lease to keep alive while Docker works (a stop may outlast the lease TTL).
    pub lease: LeaseToken,
}

/// Input of [`EnsureContainer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnsureContainerInput {
    pub game_id: GameId,
    pub image_ref: ImageRef,
    /// Derived from the operation id: a retry after a crash finds and adopts the container its
    /// first attempt created instead of creating a second one.
    pub name: String,
    pub lease: LeaseToken,
}

/// Input of [`RecordRunning`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordRunningInput {
    pub game_id: GameId,
    pub operation_id: String,
    pub fence: u64,
    /// The writer's lease: the write happens only while Redis holds exactly this token.
    #[serde(default)]
    pub lease: Option<LeaseToken>,
    pub container_id: String,
    pub image_ref: ImageRef,
}

/// Input of [`RemoveContainer`] (the container to remove) and [`RemoveStaleContainers`] (the
/// one to keep).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveContainerInput {
    pub game_id: GameId,
    pub container_id: String,
}

/// Result of [`StopContainer`]. Docker's 304 ("already stopped") is [`AlreadyStopped`], its 404
/// is [`Vanished`] (the seed's vanished-container path).
///
/// [`AlreadyStopped`]: ContainerStopOutcome::AlreadyStopped
/// [`Vanished`]: ContainerStopOutcome::Vanished
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStopOutcome {
    Stopped,
    AlreadyStopped,
    Vanished,
}

/// Input of [`UpdateStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateStatusInput {
    pub game_id: GameId,
    /// Makes the update idempotent: a retried attempt whose first try committed finds its own
    /// operation id on the row and reports `Updated` instead of a lost race.
    pub operation_id: String,
    pub expected_from: RuntimeStatus,
    pub expected_container_id: Option<String>,
    pub to: RuntimeStatus,
    /// The writer's lease fence: a row written under a higher fence is not overwritten.
    pub fence: u64,
    /// The writer's lease: the write happens only while Redis holds exactly this token, so no
    /// write carries a fence the lease counter did not issue to a live holder.
    #[serde(default)]
    pub lease: Option<LeaseToken>,
}

/// Result of [`UpdateStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum UpdateStatusOutcome {
    /// The row moved; carries it as written.
    Updated { record: RuntimeRecord },
    /// Another path moved the row first; carries the row as it is now.
    Conflict { current: RuntimeRecord },
    /// A newer lease holder wrote the row: this holder's lease had expired.
    Fenced { current: RuntimeRecord },
    /// The row is gone.
    NotFound,
    /// Redis no longer holds the writer's lease (it expired and was taken, or the token was
    /// never issued): nothing was written.
    LeaseLost,
}

/// A health event, as published to `runtime:health_events` and kept in `health_snapshots`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthEvent {
    /// Deduplicates re-published events: one event per operation and event type.
    pub operation_id: String,
    pub game_id: GameId,
    pub container_id: Option<String>,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub details: serde_json::Value,
}

/// The event type the vanished-container path publishes.
pub const CONTAINER_DISAPPEARED: &str = "container_disappeared";

/// One operation_log row, as the workflow knows it; `finished_at` is stamped by the activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationEntry {
    /// `workflow_id/run_id`; unique in the table, so a retried append writes nothing twice.
    pub operation_id: String,
    /// Raw (possibly invalid, truncated) game id: invalid requests are audited too.
    pub game_id: String,
    pub op_kind: OpKind,
    /// Raw (possibly invalid, truncated) op source.
    pub op_source: String,
    pub source_ref: Option<String>,
    pub image_ref: Option<String>,
    pub container_id: Option<String>,
    pub outcome: Outcome,
    pub error_code: Option<ErrorCode>,
    pub error_message: Option<String>,
    pub started_at: DateTime<Utc>,
    /// Telemetry label: the stop reason (`invalid` when it did not parse, `none` for verbs
    /// without a reason).
    pub reason_label: String,
    /// Telemetry label: the op source, or `invalid` when the request did not parse.
    pub op_source_label: String,
}

/// Application failure types raised by activities for definitive faults: the workflow turns
/// them into the matching [`ErrorCode`] without retrying.
pub mod failure_type {
    /// A definitive fault that needs an operator (e.g. a container without the game's label).
    pub const INTERNAL: &str = "internal";
    /// The image to start is not available to the Docker engine.
    pub const NOT_FOUND: &str = "not_found";
    /// The Docker engine rejects the image reference itself.
    pub const INVALID_REQUEST: &str = "invalid_request";
    /// The lease was lost while the step ran (another holder took it).
    pub const CONFLICT: &str = "conflict";
}
