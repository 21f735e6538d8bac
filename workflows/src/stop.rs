//! `StopRuntime`: the stop lifecycle operation, ported branch for branch from the seed
//! (`stopruntime.go`).
//!
//! Callers: the `temporal` CLI, the Rust client (`rtmanager stop`), and — as a child holding the
//! parent's lease — `RestartRuntime` and `PatchRuntime`. With `lease_token` in the input the
//! workflow runs under that lease (the seed's `Run`); without it, it acquires and releases the
//! game's lease itself (the seed's `Handle`).
//!
//! Every business outcome completes the workflow with an [`OperationOutput`]; the workflow
//! itself never fails on bad input or a failing dependency.

use std::time::Duration;

use rtmanager_domain::{
    ErrorCode, LeaseToken, OpKind, OperationOutput, RuntimeRecord, RuntimeStatus, StopRequest,
    STOP_TIMEOUT_MAX_SECS,
};

use crate::{
    contract::{
        ContainerStopOutcome, HealthEvent, LoadedRecord, PublishHealth, StopContainer,
        StopContainerInput, UpdateStatusOutcome, CONTAINER_DISAPPEARED,
    },
    operation::{Handled, Op, Touched},
    support::{workflow_now, Cancel, StepFailure},
};

lifecycle_workflow!(
    /// The `StopRuntime` workflow. Registered with a factory that carries the worker's
    /// [`crate::StepSettings`] (the `Default` is for replay tests and tools).
    StopRuntimeWorkflow("StopRuntime", OpKind::Stop): StopRequest::from_json,
    "Input: `{\"game_id\", \"reason\", \"op_source\", \"source_ref\"?, \"lease_token\"?, \"timeout_secs\"?, \"signal\"?}` as raw JSON.",
);

impl Handled for StopRequest {
    fn reason(&self) -> Option<&str> {
        Some(self.reason.as_str())
    }

    fn inherited(&self) -> Option<&LeaseToken> {
        self.lease_token.as_ref()
    }

    /// The seed's `runUnderLease`: load, branch on status, stop, compare-and-swap.
    async fn run<W>(&self, op: &Op<'_, W>, lease: &LeaseToken) -> OperationOutput {
        let game_id = &self.game_id;
        let loaded = op.load_record(game_id).await;
        let existing = match loaded {
            // Re-running after a crash that followed this operation's own write: finish as the
            // first run would have (the health event is published at most once per operation).
            Ok(Some(loaded)) if loaded.written_by_this_operation => {
                return finish_own_write(op, self, loaded).await
            }
            Ok(Some(loaded)) => loaded.record,
            Ok(None) => return op.record_missing(game_id).await,
            Err(err) => return op.record_unreadable(err, Touched::default()).await,
        };

        match existing.status {
            RuntimeStatus::Stopped | RuntimeStatus::Removed => {
                return op.replay_no_op(existing).await
            }
            RuntimeStatus::Running => {}
        }
        let Some(container_id) = existing.current_container_id.clone() else {
            let message = "runtime record is running but names no container".to_string();
            return op
                .failure(ErrorCode::Internal, message, Touched::of(&existing))
                .await;
        };

        op.note_container(&container_id);
        // The container's label may ask for any timeout up to the maximum: without a requested
        // one, the attempt allows for the longest.
        let grace = self.timeout_secs.map_or_else(
            || {
                Duration::from_secs(STOP_TIMEOUT_MAX_SECS.into())
                    .max(op.settings.graceful_stop_timeout)
            },
            |secs| Duration::from_secs(secs.into()),
        );
        let stopped = op
            .docker(
                StopContainer,
                StopContainerInput {
                    game_id: game_id.clone(),
                    container_id: container_id.clone(),
                    lease: lease.clone(),
                    timeout_secs: self.timeout_secs,
                    signal: self.signal,
                },
                Cancel::WithWorkflow,
                Some(grace),
            )
            .await;
        let report = match stopped {
            Ok(ContainerStopOutcome::StoppedAs(report)) => Some(report),
            Ok(ContainerStopOutcome::Stopped | ContainerStopOutcome::AlreadyStopped) => None,
            Ok(ContainerStopOutcome::Vanished) => {
                return handle_vanished(op, self, lease, existing, container_id).await
            }
            Err(err) => {
                let failure = StepFailure::from(err);
                let code = failure.code_or(ErrorCode::ServiceUnavailable);
                // The lease went while Docker worked. Under a workflow task that timed out and
                // ran again (an overloaded worker), the other holder may be this very operation's
                // first run, which finished the stop: then finish as it did.
                if code == ErrorCode::Conflict && op.ctx.patched(RECHECK_OWN_WRITE) {
                    if let Ok(Some(loaded)) = op.load_record(game_id).await {
                        if loaded.written_by_this_operation {
                            return finish_own_write(op, self, loaded).await;
                        }
                    }
                }
                let message = format!("docker stop: {}", failure.message);
                return op.failure(code, message, Touched::of(&existing)).await;
            }
        };
        let touched = Touched::of(&existing).stopped(report);

        let from = (existing.status, container_id);
        // The container is already stopped: record it even if the caller gave up meanwhile.
        let updated = op
            .update_status(
                game_id,
                from,
                RuntimeStatus::Stopped,
                lease,
                Cancel::Detached,
            )
            .await;
        match updated {
            Ok(UpdateStatusOutcome::Updated { record }) => op.success(record, touched).await,
            // CAS race: a concurrent reconciler or restart moved the record first; the desired
            // terminal state was reached by another path.
            Ok(UpdateStatusOutcome::Conflict { current }) => op.replay_no_op(current).await,
            Ok(refused @ (UpdateStatusOutcome::Fenced { .. } | UpdateStatusOutcome::LeaseLost)) => {
                let message = stale_write_message(&refused);
                op.failure(ErrorCode::Conflict, message, touched).await
            }
            Ok(UpdateStatusOutcome::NotFound) => {
                let message = format!(
                    "runtime record for game {:?} vanished mid-stop",
                    game_id.as_str()
                );
                op.failure(ErrorCode::NotFound, message, touched).await
            }
            Err(failure) => {
                let code = failure.code_or(ErrorCode::Internal);
                let message = format!("update runtime status: {}", failure.message);
                op.failure(code, message, touched).await
            }
        }
    }
}

/// The patch id that marks histories in which a Docker stop that lost its lease re-reads the
/// record before it answers `conflict`.
pub const RECHECK_OWN_WRITE: &str = "recheck-own-write";

/// This operation already wrote the record (a re-run, or a second run of the same operation
/// after a timed-out workflow task): finish as the first run did. The health event is published
/// at most once per operation.
async fn finish_own_write<W>(
    op: &Op<'_, W>,
    request: &StopRequest,
    loaded: LoadedRecord,
) -> OperationOutput {
    let record = loaded.record;
    // The removal cleared the record's container: the one this operation found is the one its
    // last write acted on.
    let touched = Touched {
        container_id: record
            .current_container_id
            .clone()
            .or(loaded.last_container_id),
        image_ref: record.current_image_ref.clone(),
        stop: None,
    };
    if record.status == RuntimeStatus::Removed {
        publish_disappeared(op, request, &record, touched.container_id.clone()).await;
    }
    op.success(record, touched).await
}

/// The container is gone: the record moves to `removed`, `container_disappeared` is published,
/// and the stop succeeds.
async fn handle_vanished<W>(
    op: &Op<'_, W>,
    request: &StopRequest,
    lease: &LeaseToken,
    existing: RuntimeRecord,
    container_id: String,
) -> OperationOutput {
    let from = (existing.status, container_id.clone());
    let updated = op
        .update_status(
            &request.game_id,
            from,
            RuntimeStatus::Removed,
            lease,
            Cancel::Detached,
        )
        .await;
    let now = workflow_now(op.ctx);
    let record = match updated {
        Ok(UpdateStatusOutcome::Updated { record }) => record,
        Ok(UpdateStatusOutcome::Conflict { current }) => return op.replay_no_op(current).await,
        Ok(refused @ (UpdateStatusOutcome::Fenced { .. } | UpdateStatusOutcome::LeaseLost)) => {
            let message = stale_write_message(&refused);
            return op
                .failure(ErrorCode::Conflict, message, Touched::of(&existing))
                .await;
        }
        // The seed goes on when the row is gone: the container is gone too.
        Ok(UpdateStatusOutcome::NotFound) => RuntimeRecord {
            status: RuntimeStatus::Removed,
            current_container_id: None,
            removed_at: Some(now),
            last_op_at: now,
            ..existing.clone()
        },
        Err(failure) => {
            let code = failure.code_or(ErrorCode::Internal);
            let message = format!("update runtime status to removed: {}", failure.message);
            return op.failure(code, message, Touched::of(&existing)).await;
        }
    };
    publish_disappeared(op, request, &record, Some(container_id)).await;
    op.success(record, Touched::of(&existing)).await
}

/// Best effort: the activity logs a failure; the record stays the source of truth. Published
/// once per operation, whatever the re-runs.
async fn publish_disappeared<W>(
    op: &Op<'_, W>,
    request: &StopRequest,
    record: &RuntimeRecord,
    container_id: Option<String>,
) {
    let event = HealthEvent {
        operation_id: op.operation_id.clone(),
        game_id: request.game_id.clone(),
        container_id,
        event_type: CONTAINER_DISAPPEARED.into(),
        occurred_at: record.removed_at.unwrap_or(record.last_op_at),
        details: serde_json::json!({}),
    };
    op.best_effort(PublishHealth, event).await;
}

/// Why a stop's record write was refused as stale: its lease is gone from Redis, or a newer
/// lease holder wrote the row.
fn stale_write_message(refused: &UpdateStatusOutcome) -> String {
    match refused {
        UpdateStatusOutcome::LeaseLost => {
            "the game's lease is no longer held by this operation (it expired, and another \
             operation may hold it); this stale write was refused"
        }
        _ => {
            "the game's lease expired during the stop and a newer operation wrote the record; \
             this stale write was refused"
        }
    }
    .into()
}
