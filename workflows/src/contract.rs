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
    ErrorCode, GameId, HostId, ImageRef, LeaseToken, OpKind, Outcome, RuntimeRecord, RuntimeStatus,
    StopReport, StopSignal,
};

macro_rules! activity_contract {
    ($($(#[$meta:meta])* $marker:ident = $name:literal : $input:ty => $output:ty;)+) => {$(
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
    )+};
}

activity_contract!(
    /// Takes the game's lease with a fresh fence, or re-confirms it when this secret already
    /// holds it (a retried attempt).
    AcquireLease = "AcquireLease": AcquireLeaseInput => LeaseOutcome;
    /// Whether Redis holds exactly this token as the game's lease now: how an operation that
    /// inherits a parent's token proves the token is real and current before it does anything.
    CheckLease = "CheckLease": CheckLeaseInput => bool;
    /// Gives the lease back if, and only if, this token still holds it (compare-and-delete).
    ReleaseLease = "ReleaseLease": ReleaseLeaseInput => bool;
    /// Reads the runtime record; `None` when the game has none.
    LoadRecord = "LoadRecord": LoadRecordInput => Option<LoadedRecord>;
    /// Chooses the host a start runs on: the one the game's container lives on, else the one
    /// the request names, else the policy's pick among the active hosts with room. Runs under
    /// the game's lease, so two starts of one game never place it twice.
    PlaceGame = "PlaceGame": PlaceGameInput => Placement;
    /// What became of the container a `running` record names: still running, exited (with its
    /// exit code), or gone. A start checks it before it trusts the record.
    InspectGame = "InspectGame": InspectGameInput => ContainerState;
    /// One reconcile round's view of a host: each `running` record of the host against its
    /// container (games whose lease is held are skipped), and the labelled containers of this
    /// deployment that no record names (orphans), with how long each has been one.
    ScanHost = "ScanHost": ScanHostInput => HostScan;
    /// Removes an orphan container, unless a record names it or its game's lease is held by
    /// now; returns whether it removed it.
    RemoveOrphan = "RemoveOrphan": RemoveOrphanInput => bool;
    /// Stops the game's container gracefully, after checking it carries the game's labels.
    /// Renews the lease while Docker works.
    StopContainer = "StopContainer": StopContainerInput => ContainerStopOutcome;
    /// Creates (or adopts, by its per-operation name) and starts the game's container, then
    /// checks it is still running after a short settle time. Returns the container id.
    EnsureContainer = "EnsureContainer": EnsureContainerInput => String;
    /// Upserts the record to `running` with the new container, unless it is running already
    /// or a newer lease holder (higher fence) wrote it.
    RecordRunning = "RecordRunning": RecordRunningInput => UpdateStatusOutcome;
    /// Removes one of the game's containers (force), after checking its labels; a missing
    /// container is already removed.
    RemoveContainer = "RemoveContainer": RemoveContainerInput => ();
    /// Removes every container labelled for the game except `keep`; returns how many.
    RemoveStaleContainers = "RemoveStaleContainers": RemoveContainerInput => u32;
    /// Compare-and-swap of a record's status, guarded by the expected status and container id.
    UpdateStatus = "UpdateStatus": UpdateStatusInput => UpdateStatusOutcome;
    /// Publishes one health event to `runtime:health_events` and upserts `health_snapshots`.
    /// Best effort, and idempotent per operation.
    PublishHealth = "PublishHealth": HealthEvent => ();
    /// Appends the operation's audit row (at most one per operation) and records its telemetry.
    /// Best effort.
    AppendOperationLog = "AppendOperationLog": OperationEntry => ();
);

/// Input of [`AcquireLease`]. The TTL is the worker's configuration, applied by the activity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcquireLeaseInput {
    /// The game whose lease key (`<prefix>lease:<game>`) is taken.
    pub game_id: GameId,
    /// The holder's secret; the issued token is `<fence>:<secret>`.
    pub secret: String,
}

/// Input of [`CheckLease`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckLeaseInput {
    /// The game whose lease key is read.
    pub game_id: GameId,
    /// The inherited token; only an exact match of the key's value passes.
    pub token: LeaseToken,
}

/// Result of [`AcquireLease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LeaseOutcome {
    /// Held, with the monotonic fence every record write of this holder carries.
    Acquired {
        /// Monotonic per game; the holder's token is `<fence>:<secret>`.
        fence: u64,
    },
    /// Another holder keeps it (running, unnamed, or Temporal could not say): the workflow
    /// answers `conflict`.
    HeldByOther,
}

/// Input of [`LoadRecord`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRecordInput {
    /// The record's primary key.
    pub game_id: GameId,
    /// Compared with the row's last writer to set [`LoadedRecord::written_by_this_operation`].
    pub operation_id: String,
}

/// Result of [`LoadRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedRecord {
    /// The row as stored now.
    pub record: RuntimeRecord,
    /// This very operation wrote the row last: the step is re-running after a crash (local
    /// activities re-run whole) and must continue from its own write, not mistake it for
    /// another operation's.
    pub written_by_this_operation: bool,
    /// The container the last write acted on. A removal clears the record's container, so a
    /// re-run after a crash that followed its own removal reads the container it found here.
    #[serde(default)]
    pub last_container_id: Option<String>,
    /// Where the game's Docker steps run: the record's host and that host's task queue. `None`
    /// in histories recorded before hosts existed (their Docker steps ran where the workflow
    /// ran).
    #[serde(default)]
    pub host: Option<HostRoute>,
}

/// A host and the task queue its worker polls: a Docker step for a game on this host runs as a
/// local activity when the workflow itself runs on that queue, else as a normal activity sent
/// there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    /// The Docker host.
    pub host_id: HostId,
    /// The task queue only that host's worker polls.
    pub task_queue: String,
}

/// Input of [`PlaceGame`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceGameInput {
    /// The game to place; a game whose record names a host stays there.
    pub game_id: GameId,
    /// The host the request asked for, if any.
    pub host: Option<HostId>,
}

/// Result of [`PlaceGame`]: a host, or why none may take the game (a business outcome, not
/// retried).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "placement")]
pub enum Placement {
    /// Start the game there.
    Placed {
        /// The chosen host.
        route: HostRoute,
    },
    /// No host may take it: an unknown host asked for (`invalid_request`), a draining one or
    /// another host than the game's own (`conflict`), none up with room
    /// (`service_unavailable`).
    Refused {
        /// The stable code the start ends with.
        code: ErrorCode,
        /// Why, for the caller.
        message: String,
    },
}

/// Input of [`ReleaseLease`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseLeaseInput {
    /// The game whose lease key is deleted.
    pub game_id: GameId,
    /// The releasing holder's token; a lease another holder took since stays untouched.
    pub token: LeaseToken,
}

/// Input of [`StopContainer`]. A signal or timeout the request leaves out comes from the
/// container's labels (`rtmanager.stop_signal`, `rtmanager.stop_timeout`), else the worker's
/// configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StopContainerInput {
    /// Must match the container's `rtmanager.game_id` label, or the stop is refused.
    pub game_id: GameId,
    /// The record's current container.
    pub container_id: String,
    /// The lease to keep alive while Docker works (a stop may outlast the lease TTL).
    pub lease: LeaseToken,
    /// The request's timeout, in seconds (absent in histories from before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
    /// The request's signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<StopSignal>,
}

/// Input of [`EnsureContainer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnsureContainerInput {
    /// Set as the new container's `rtmanager.game_id` label; an adopted one must carry it.
    pub game_id: GameId,
    /// Used only when the container is created; an adopted container keeps its image.
    pub image_ref: ImageRef,
    /// Derived from the operation id: a retry after a crash finds and adopts the container its
    /// first attempt created instead of creating a second one.
    pub name: String,
    /// The lease to keep alive while Docker creates, starts and watches the container.
    pub lease: LeaseToken,
}

/// Input of [`RecordRunning`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordRunningInput {
    /// The record's primary key; the row is inserted when the game has none.
    pub game_id: GameId,
    /// Stamped as the row's last writer, so a retry whose first try committed reads `Updated`.
    pub operation_id: String,
    /// The writer's lease fence: a row written under a higher fence is not overwritten.
    pub fence: u64,
    /// The writer's lease: the write happens only while Redis holds exactly this token.
    #[serde(default)]
    pub lease: Option<LeaseToken>,
    /// The container [`EnsureContainer`] returned: the record's new current container.
    pub container_id: String,
    /// Becomes the record's `current_image_ref`.
    pub image_ref: ImageRef,
    /// The host the container runs on, written to the record; `None` (histories from before
    /// hosts) leaves the record's host as it is.
    #[serde(default)]
    pub host_id: Option<HostId>,
}

/// Input of [`RemoveContainer`] (the container to remove) and [`RemoveStaleContainers`] (the
/// one to keep).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveContainerInput {
    /// Only containers labelled for this game are removed.
    pub game_id: GameId,
    /// The one to remove, or the one to keep: a prefix of its id suffices, and an empty value
    /// makes [`RemoveStaleContainers`] remove nothing.
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
    /// It was running and Docker stopped it (what histories from before [`StoppedAs`] say).
    ///
    /// [`StoppedAs`]: ContainerStopOutcome::StoppedAs
    Stopped,
    /// It was running and Docker stopped it: with which signal and timeout, and whether it
    /// exited within the timeout or was killed.
    StoppedAs(StopReport),
    /// It was not running: counts as stopped.
    AlreadyStopped,
    /// No such container: the stop records `removed` and publishes [`CONTAINER_DISAPPEARED`].
    Vanished,
}

/// Input of [`UpdateStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpdateStatusInput {
    /// The record's primary key.
    pub game_id: GameId,
    /// Makes the update idempotent: a retried attempt whose first try committed finds its own
    /// operation id on the row and reports `Updated` instead of a lost race.
    pub operation_id: String,
    /// The status the workflow read; the swap fails if the row moved on since.
    pub expected_from: RuntimeStatus,
    /// Must match too (`None` matches only `None`); kept as the row's last container.
    pub expected_container_id: Option<String>,
    /// `stopped` or `removed`: the store refuses `running`, which is [`RecordRunning`]'s job.
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
    Updated {
        /// As written (on a retry, as the first attempt wrote it).
        record: RuntimeRecord,
    },
    /// Another path moved the row first; carries the row as it is now.
    Conflict {
        /// The row as the other path left it.
        current: RuntimeRecord,
    },
    /// A newer lease holder wrote the row: this holder's lease had expired.
    Fenced {
        /// The row as the newer holder left it.
        current: RuntimeRecord,
    },
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
    /// The stream entry's `game_id` and the `health_snapshots` key.
    pub game_id: GameId,
    /// The container the event concerns; `None` is published as an empty string.
    pub container_id: Option<String>,
    /// E.g. [`CONTAINER_DISAPPEARED`]; also the health-event metric's label.
    pub event_type: String,
    /// When it happened, not when it was published: an older event never replaces a newer
    /// snapshot.
    pub occurred_at: DateTime<Utc>,
    /// Free-form; stored as `jsonb`, published as JSON text.
    pub details: serde_json::Value,
}

/// The event type the vanished-container path publishes.
pub const CONTAINER_DISAPPEARED: &str = "container_disappeared";
/// A managed container exited without an operation asking it to (details `{"exit_code": n}`).
pub const CONTAINER_EXITED: &str = "container_exited";
/// A managed container was killed for running out of memory.
pub const CONTAINER_OOM: &str = "container_oom";
/// A labelled container of this deployment that no record names.
pub const ORPHAN_CONTAINER: &str = "orphan_container";
/// A game that crashed too often within the window: no more automatic restarts.
pub const CRASH_LOOP: &str = "crash_loop";

/// The health event of a crash: `container_oom` when the kernel killed the process for memory,
/// else `container_exited` with the exit code. Keyed by the container, so that whoever sees the
/// crash first (the events watcher, a reconcile round, a start) publishes it and the others
/// publish nothing.
pub fn crash_event(
    game_id: &GameId,
    container_id: &str,
    exit_code: i64,
    oom_killed: bool,
    at: DateTime<Utc>,
) -> HealthEvent {
    let (event_type, details) = if oom_killed {
        (CONTAINER_OOM, serde_json::json!({ "exit_code": exit_code }))
    } else {
        (
            CONTAINER_EXITED,
            serde_json::json!({ "exit_code": exit_code }),
        )
    };
    let key = format!("crash:{container_id}");
    HealthEvent::of_container(key, game_id, container_id, (event_type, details), at)
}

impl HealthEvent {
    /// An event about one of the game's containers, published at most once per `key`.
    pub fn of_container(
        key: String,
        game_id: &GameId,
        container_id: &str,
        (event_type, details): (&str, serde_json::Value),
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            operation_id: key,
            game_id: game_id.clone(),
            container_id: Some(container_id.to_owned()),
            event_type: event_type.to_owned(),
            occurred_at: at,
            details,
        }
    }
}

/// Input of [`InspectGame`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InspectGameInput {
    /// Only a container labelled for this game counts as the game's.
    pub game_id: GameId,
    /// The container the record names.
    pub container_id: String,
}

/// What a container is doing, as Docker says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ContainerState {
    /// Its process runs.
    Running,
    /// Its process ended (or it never ran): the record's `running` is stale.
    Exited {
        /// The process's exit code (137 for a SIGKILL, e.g. an OOM kill).
        exit_code: i64,
        /// The kernel killed it for running out of memory.
        #[serde(default)]
        oom_killed: bool,
    },
    /// No such container (or not the game's): the record's container is gone.
    Gone,
}

/// Input of [`ScanHost`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanHostInput {
    /// The host whose records and engine are compared.
    pub host_id: HostId,
}

/// A `running` record whose container is not running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// The game.
    pub game_id: GameId,
    /// The container its record names.
    pub container_id: String,
    /// What became of that container.
    pub state: ContainerState,
}

/// A labelled container no record names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    /// The container.
    pub container_id: String,
    /// Its `rtmanager.game_id` label, as written on the container.
    pub game_label: String,
    /// Whether its process runs.
    pub running: bool,
    /// Since when (seconds) the reconciler has seen it as an orphan.
    pub orphan_for_secs: u64,
    /// The worker removes orphans (`RTMANAGER_REMOVE_ORPHANS`) and this one is past the grace
    /// period: the round removes it.
    pub remove: bool,
}

/// Result of [`ScanHost`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostScan {
    /// `running` records of the host compared with Docker.
    pub records_checked: u32,
    /// Labelled containers of this deployment on the host's engine.
    pub containers_checked: u32,
    /// Records to repair.
    pub drift: Vec<Drift>,
    /// Containers no record names.
    pub orphans: Vec<Orphan>,
    /// Games left alone this round because an operation holds their lease.
    pub busy: Vec<GameId>,
}

/// Input of [`RemoveOrphan`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveOrphanInput {
    /// The orphan.
    pub container_id: String,
    /// Its game label (checked against the container again before it is removed).
    pub game_label: String,
}

/// One operation_log row, as the workflow knows it; `finished_at` is stamped by the activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationEntry {
    /// `workflow_id/run_id`; unique in the table, so a retried append writes nothing twice.
    pub operation_id: String,
    /// Raw (possibly invalid, truncated) game id: invalid requests are audited too.
    pub game_id: String,
    /// Stop rows also feed the stop-outcome metric.
    pub op_kind: OpKind,
    /// Raw (possibly invalid, truncated) op source.
    pub op_source: String,
    /// The caller's correlation id (truncated when the request did not parse).
    pub source_ref: Option<String>,
    /// The image the operation ran or found on the record; `None` when it touched none.
    pub image_ref: Option<String>,
    /// The container the operation acted on or found; `None` when it touched none.
    pub container_id: Option<String>,
    /// Mirrors the workflow's output.
    pub outcome: Outcome,
    /// Mirrors the workflow's output: `None` on a fresh success.
    pub error_code: Option<ErrorCode>,
    /// Mirrors the workflow's output: set on failure only.
    pub error_message: Option<String>,
    /// Workflow time when the operation began (deterministic across replays).
    pub started_at: DateTime<Utc>,
    /// Telemetry label: the stop reason (`invalid` when it did not parse, `none` for verbs
    /// without a reason).
    pub reason_label: String,
    /// Telemetry label: the op source, or `invalid` when the request did not parse.
    pub op_source_label: String,
    /// What the Docker stop did (signal, timeout, how the container ended), when the
    /// operation stopped a running container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopReport>,
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
