//! `StartRuntime`: create and start a game's container from `image_ref` and record it running.
//!
//! Callers: the `temporal` CLI, the Rust client, and — under the parent's lease — `RestartRuntime`
//! and `PatchRuntime`. Lease semantics are the stop's: acquire and release, or run under an
//! inherited `lease_token`.
//!
//! Convergence: the container name is derived from the operation id, so a retry after a crash
//! between "created" and "recorded" adopts the container its first attempt created; a container
//! this operation created but could not record is removed; the container the record named
//! before (stopped) is removed once the new one is recorded.

use rtmanager_domain::{
    ErrorCode, GameId, LeaseToken, OpKind, OperationOutput, RuntimeRecord, RuntimeStatus,
    StartRequest,
};

use crate::{
    contract::{
        crash_event, ContainerState, EnsureContainer, EnsureContainerInput, HealthEvent,
        InspectGame, InspectGameInput, PublishHealth, RecordRunning, RecordRunningInput,
        RemoveContainer, RemoveContainerInput, RemoveStaleContainers, UpdateStatusOutcome,
        CONTAINER_DISAPPEARED,
    },
    operation::{Handled, Op, Touched, PLACE_ON_HOST, START_CHECKS_CONTAINER},
    support::{short_digest, Cancel, StepFailure},
};

lifecycle_workflow!(
    /// The `StartRuntime` workflow.
    StartRuntimeWorkflow("StartRuntime", OpKind::Start): StartRequest::from_json,
    "Input: `{\"game_id\", \"image_ref\", \"op_source\", \"source_ref\"?, \"lease_token\"?, \"host\"?}`.",
);

impl Handled for StartRequest {
    fn inherited(&self) -> Option<&LeaseToken> {
        self.lease_token.as_ref()
    }

    /// Acquire (or inherit), start, always release: the seed's `Handle` for a start.
    async fn run<W>(&self, op: &Op<'_, W>, lease: &LeaseToken) -> OperationOutput {
        let game_id = &self.game_id;
        let image = self.image_ref.as_str();
        let touched = |container_id: Option<&str>| Touched {
            container_id: container_id.map(str::to_owned),
            image_ref: Some(image.to_owned()),
            stop: None,
        };
        let loaded = op.load_record(game_id).await;
        let existing = match loaded {
            // Re-running after a crash that followed this operation's own write: finish it.
            Ok(Some(loaded)) if loaded.written_by_this_operation => {
                let record = loaded.record;
                if let Some(kept) = record.current_container_id.clone() {
                    remove_stale_containers(op, game_id, kept.clone()).await;
                    return op.success(record, touched(Some(&kept))).await;
                }
                return op.success(record, touched(None)).await;
            }
            Ok(loaded) => loaded.map(|l| l.record),
            Err(err) => return op.record_unreadable(err, touched(None)).await,
        };
        let mut existing = existing;
        if let Some(record) = existing.clone() {
            if record.status == RuntimeStatus::Running && op.ctx.patched(START_CHECKS_CONTAINER) {
                // A `running` record is trusted only while its container runs: a crashed or removed
                // one is repaired first (as the reconciler would), then the start goes on.
                match repair_stale_running(op, lease, &record).await {
                    Ok(repaired) => existing = repaired,
                    Err(output) => return output,
                }
            }
        }
        if let Some(record) = &existing {
            if record.status == RuntimeStatus::Running {
                if let Some(asked) = self.host.as_ref().filter(|h| **h != record.host_id) {
                    let message = format!(
                        "game is running on host {}, not on host {asked}; start it without a host",
                        record.host_id
                    );
                    return op
                        .failure(ErrorCode::Conflict, message, Touched::of(record))
                        .await;
                }
                if record.current_image_ref.as_deref() == Some(image) {
                    return op.replay_no_op(record.clone()).await;
                }
                let message = format!(
                    "game is running image {:?}; patch it to change its image",
                    record.current_image_ref.as_deref().unwrap_or("")
                );
                return op
                    .failure(ErrorCode::Conflict, message, Touched::of(record))
                    .await;
            }
        }

        let host = if op.ctx.patched(PLACE_ON_HOST) {
            match op.place(game_id, self.host.clone(), touched(None)).await {
                Ok(route) => Some(route.host_id),
                Err(output) => return output,
            }
        } else {
            None
        };

        let name = format!("rtm-{}-{}", game_id, short_digest(&op.operation_id));
        let ensured = op
            .docker(
                EnsureContainer,
                EnsureContainerInput {
                    game_id: game_id.clone(),
                    image_ref: self.image_ref.clone(),
                    name,
                    lease: lease.clone(),
                },
                Cancel::WithWorkflow,
                None,
            )
            .await;
        let container_id = match ensured {
            Ok(id) => {
                op.note_container(&id);
                id
            }
            Err(err) => {
                let failure = StepFailure::from(err);
                let code = failure.code_or(ErrorCode::ServiceUnavailable);
                let message = format!("docker start: {}", failure.message);
                return op.failure(code, message, touched(None)).await;
            }
        };

        let recorded = op
            .step(
                RecordRunning,
                RecordRunningInput {
                    game_id: game_id.clone(),
                    operation_id: op.operation_id.clone(),
                    fence: lease.fence().unwrap_or_default(),
                    lease: Some(lease.clone()),
                    container_id: container_id.clone(),
                    image_ref: self.image_ref.clone(),
                    host_id: host,
                },
                // The container runs: record it even if the caller gave up meanwhile.
                Cancel::Detached,
            )
            .await
            .map_err(StepFailure::from);
        match recorded {
            Ok(UpdateStatusOutcome::Updated { record }) => {
                // The superseded container, and any other this game may have left behind.
                remove_stale_containers(op, game_id, container_id.clone()).await;
                op.success(record, touched(Some(&container_id))).await
            }
            Ok(
                outcome @ (UpdateStatusOutcome::Conflict { .. }
                | UpdateStatusOutcome::Fenced { .. }
                | UpdateStatusOutcome::LeaseLost),
            ) => {
                // Never leave a container nobody records.
                remove_container(op, game_id, container_id.clone()).await;
                let message = match outcome {
                    UpdateStatusOutcome::Fenced { .. } => {
                        "the game's lease expired during the start and a newer operation wrote the \
                         record; this stale write was refused and its container removed"
                            .to_owned()
                    }
                    UpdateStatusOutcome::LeaseLost => {
                        "the game's lease is no longer held by this operation (it expired, and \
                         another operation may hold it); this stale write was refused and its \
                         container removed"
                            .to_owned()
                    }
                    _ => "the runtime record changed during the start; its container was removed"
                        .to_owned(),
                };
                op.failure(ErrorCode::Conflict, message, touched(Some(&container_id)))
                    .await
            }
            Ok(UpdateStatusOutcome::NotFound) => {
                remove_container(op, game_id, container_id.clone()).await;
                let message = "the runtime record could not be written".to_owned();
                op.failure(ErrorCode::Internal, message, touched(Some(&container_id)))
                    .await
            }
            Err(failure) => {
                // The write may or may not have committed: keep the container (the record may name
                // it) and say so.
                let code = failure.code_or(ErrorCode::Internal);
                let message = format!(
                    "record running: {} (container {container_id} left in place)",
                    failure.message
                );
                op.failure(code, message, touched(Some(&container_id)))
                    .await
            }
        }
    }
}

/// Best effort: removes every container of the game but `keep`.
async fn remove_stale_containers<W>(op: &Op<'_, W>, game_id: &GameId, keep: String) {
    let input = RemoveContainerInput {
        game_id: game_id.clone(),
        container_id: keep,
    };
    let _ = op
        .docker(RemoveStaleContainers, input, Cancel::Detached, None)
        .await;
}

/// Best effort: a container left behind is logged by the activity.
async fn remove_container<W>(op: &Op<'_, W>, game_id: &GameId, container_id: String) {
    let input = RemoveContainerInput {
        game_id: game_id.clone(),
        container_id,
    };
    let _ = op
        .docker(RemoveContainer, input, Cancel::Detached, None)
        .await;
}

/// A `running` record whose container no longer runs, repaired before a start: `stopped` (and
/// `container_exited`) when the container exited, `removed` (and `container_disappeared`) when
/// it is gone. Returns the record to start from: unchanged while the container runs.
async fn repair_stale_running<W>(
    op: &Op<'_, W>,
    lease: &LeaseToken,
    record: &RuntimeRecord,
) -> Result<Option<RuntimeRecord>, OperationOutput> {
    let Some(container_id) = record.current_container_id.clone() else {
        return Ok(Some(record.clone()));
    };
    let inspected = op
        .docker(
            InspectGame,
            InspectGameInput {
                game_id: record.game_id.clone(),
                container_id: container_id.clone(),
            },
            Cancel::WithWorkflow,
            None,
        )
        .await;
    let (to, event) = match inspected {
        Ok(ContainerState::Running) => return Ok(Some(record.clone())),
        Ok(ContainerState::Exited {
            exit_code,
            oom_killed,
        }) => (
            RuntimeStatus::Stopped,
            crash_event(
                &record.game_id,
                &container_id,
                exit_code,
                oom_killed,
                crate::support::workflow_now(op.ctx),
            ),
        ),
        Ok(ContainerState::Gone) => (
            RuntimeStatus::Removed,
            HealthEvent {
                operation_id: op.operation_id.clone(),
                game_id: record.game_id.clone(),
                container_id: Some(container_id.clone()),
                event_type: CONTAINER_DISAPPEARED.into(),
                occurred_at: crate::support::workflow_now(op.ctx),
                details: serde_json::json!({}),
            },
        ),
        Err(err) => {
            let failure = StepFailure::from(err);
            let code = failure.code_or(ErrorCode::ServiceUnavailable);
            let message = format!("docker inspect: {}", failure.message);
            return Err(op.failure(code, message, Touched::of(record)).await);
        }
    };
    let from = (RuntimeStatus::Running, container_id);
    let updated = op
        .update_status(&record.game_id, from, to, lease, Cancel::WithWorkflow)
        .await;
    match updated {
        Ok(UpdateStatusOutcome::Updated { record: repaired }) => {
            op.best_effort(PublishHealth, event).await;
            Ok(Some(repaired))
        }
        // Another path moved it first: start from what it left.
        Ok(UpdateStatusOutcome::Conflict { current }) => Ok(Some(current)),
        Ok(UpdateStatusOutcome::NotFound) => Ok(None),
        Ok(UpdateStatusOutcome::Fenced { .. } | UpdateStatusOutcome::LeaseLost) => {
            let message = "the game's lease was lost while a stale record was repaired; nothing \
                           was started"
                .to_owned();
            Err(op
                .failure(ErrorCode::Conflict, message, Touched::of(record))
                .await)
        }
        Err(failure) => {
            let code = failure.code_or(ErrorCode::Internal);
            let message = format!("repair stale running record: {}", failure.message);
            Err(op.failure(code, message, Touched::of(record)).await)
        }
    }
}
