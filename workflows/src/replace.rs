//! `RestartRuntime` and `PatchRuntime`: stop, then start, as child workflows under the parent's
//! lease (the seed's `Run` inside an outer `Handle`).
//!
//! The parent takes the game's lease and hands its token and `source_ref` to both children, so
//! the three operation_log rows (stop, start, restart|patch) share one `source_ref`. Child
//! workflow ids derive from the parent's, so a replayed parent never starts a second child; a
//! cancelled parent cancels its running child (and the children never release a lease they did
//! not take), then releases the lease itself.
//!
//! A patch whose new image fails to start brings the previous image back up (automatic
//! rollback) and reports the failure, saying so in `error_message` and in the audit row.

use temporalio_workflow::common::data_converters::RawValue;

use rtmanager_domain::{
    ErrorCode, ImageRef, LeaseToken, LifecycleRequest, OpKind, OperationOutput, ReplaceRequest,
    RuntimeStatus, StartRequest, StopReason, StopRequest,
};

use crate::{
    operation::{Handled, Op, Touched},
    start::StartRuntimeWorkflow,
    stop::StopRuntimeWorkflow,
    support::run_child,
};

lifecycle_workflow!(
    /// The `RestartRuntime` workflow: stop, then start the same image.
    RestartRuntimeWorkflow("RestartRuntime", OpKind::Restart): ReplaceRequest::restart_from_json,
    "Input: `{\"game_id\", \"op_source\", \"source_ref\"?}`.",
);

lifecycle_workflow!(
    /// The `PatchRuntime` workflow: stop, then start a new image; roll back on failure.
    PatchRuntimeWorkflow("PatchRuntime", OpKind::Patch): ReplaceRequest::patch_from_json,
    "Input: `{\"game_id\", \"image_ref\", \"op_source\", \"source_ref\"?}`.",
);

impl Handled for ReplaceRequest {
    // The three rows share one source_ref: the caller's, or this operation's own id.
    fn prepare(&mut self, workflow_id: &str) {
        if self.source_ref.is_none() {
            self.source_ref = rtmanager_domain::SourceRef::parse(workflow_id).ok();
        }
    }

    /// One lease over both children: the seed's `Handle` for a restart or a patch.
    async fn run<W>(&self, op: &Op<'_, W>, lease: &LeaseToken) -> OperationOutput {
        let game_id = &self.game_id;
        let loaded = op.load_record(game_id).await;
        let existing = match loaded {
            Ok(Some(loaded)) => loaded.record,
            Ok(None) => return op.record_missing(game_id).await,
            Err(err) => return op.record_unreadable(err, Touched::default()).await,
        };
        let Some(previous_image) = existing
            .current_image_ref
            .as_deref()
            .and_then(|image| ImageRef::parse(image).ok())
        else {
            let message = "runtime record names no image to start".to_owned();
            return op
                .failure(ErrorCode::Internal, message, Touched::of(&existing))
                .await;
        };
        let target = self
            .image_ref
            .clone()
            .unwrap_or_else(|| previous_image.clone());
        let patching = op.kind == OpKind::Patch;
        if patching && existing.status == RuntimeStatus::Running && target == previous_image {
            return op.replay_no_op(existing).await;
        }

        let reason = if patching {
            StopReason::Patch
        } else {
            StopReason::Restart
        };
        let stop = StopRequest {
            lease_token: Some(lease.clone()),
            ..StopRequest::new(
                game_id.clone(),
                reason,
                self.op_source,
                self.source_ref.clone(),
            )
        };
        let stopped = child(
            op,
            StopRuntimeWorkflow::run,
            "stop",
            LifecycleRequest::Stop(stop),
        )
        .await;
        if !stopped.is_success() {
            let code = stopped.error_code.unwrap_or(ErrorCode::Internal);
            let message = format!("stop: {}", stopped.error_message.unwrap_or_default());
            return op.failure(code, message, Touched::of(&existing)).await;
        }

        let started = start(op, self, lease, &target, "start").await;
        if started.is_success() {
            // A successful start carries its record; a child that broke that contract is a fault
            // to report, not a reason to fail the workflow task.
            return match started.record {
                Some(record) => op.success(record.clone(), Touched::of(&record)).await,
                None => {
                    let message = "start child succeeded without a record".to_owned();
                    op.failure(ErrorCode::Internal, message, Touched::of(&existing))
                        .await
                }
            };
        }
        let code = started.error_code.unwrap_or(ErrorCode::Internal);
        let cause = started.error_message.unwrap_or_default();
        if !patching {
            let message = format!("start after stop failed: {cause}; the runtime is stopped");
            return op.failure(code, message, Touched::of(&existing)).await;
        }

        // Automatic rollback: bring the previous image back up.
        let rolled_back = start(op, self, lease, &previous_image, "rollback").await;
        let message = if rolled_back.is_success() {
            format!(
                "patch to {target} failed: {cause}; rolled back to {previous_image}, which is running"
            )
        } else {
            format!(
                "patch to {target} failed: {cause}; rollback to {previous_image} failed too: {}; \
                 the runtime is stopped",
                rolled_back.error_message.unwrap_or_default()
            )
        };
        let touched = rolled_back
            .record
            .as_ref()
            .map_or_else(|| Touched::of(&existing), Touched::of);
        op.failure(code, message, touched).await
    }
}

async fn start<W>(
    op: &Op<'_, W>,
    request: &ReplaceRequest,
    lease: &LeaseToken,
    image: &ImageRef,
    step: &str,
) -> OperationOutput {
    let start = StartRequest {
        game_id: request.game_id.clone(),
        image_ref: image.clone(),
        op_source: request.op_source,
        source_ref: request.source_ref.clone(),
        lease_token: Some(lease.clone()),
        // The start keeps the game on the host its record names.
        host: None,
    };
    child(
        op,
        StartRuntimeWorkflow::run,
        step,
        LifecycleRequest::Start(start),
    )
    .await
}

/// Runs one child workflow `<parent id>/<step>` to completion.
async fn child<W, C>(
    op: &Op<'_, W>,
    workflow: C,
    step: &str,
    request: LifecycleRequest,
) -> OperationOutput
where
    C: temporalio_workflow::common::WorkflowDefinition<Input = RawValue, Output = OperationOutput>
        + 'static,
{
    let child_id = format!("{}/{step}", op.ctx.workflow_id());
    op.note_child(Some(&child_id));
    let output = run_child(op.ctx, workflow, child_id, &request).await;
    op.note_child(None);
    output
}
