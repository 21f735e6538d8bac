//! `StopRuntime`: the stop lifecycle operation, ported branch for branch from the seed
//! (`stopruntime.go`).
//!
//! Callers: the `temporal` CLI, the Rust client (`rtmanager stop`), and — as a child holding the
//! parent's lease — the restart and patch workflows. With `lease_token` in the input the
//! workflow runs under that lease (the seed's `Run`); without it, it acquires and releases the
//! game's lease itself (the seed's `Handle`).
//!
//! Every business outcome completes the workflow with an [`OperationOutput`]; the workflow
//! itself never fails on bad input or a failing dependency.

use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{common::data_converters::RawValue, WorkflowContext, WorkflowResult};

use rtmanager_domain::{
    request::RequestEcho, truncate_chars, ErrorCode, GameId, InvalidRequest, LeaseToken, OpKind,
    OpSource, OperationOutput, Outcome, RuntimeRecord, RuntimeStatus, StopReason, StopRequest,
};

use crate::{
    contract::{
        AcquireLease, AcquireLeaseInput, AppendOperationLog, ContainerStopOutcome, HealthEvent,
        LeaseOutcome, LoadRecord, OperationEntry, PublishHealth, ReleaseLease, ReleaseLeaseInput,
        StopContainer, StopContainerInput, UpdateStatus, UpdateStatusInput, UpdateStatusOutcome,
        CONTAINER_DISAPPEARED,
    },
    support::{
        docker_step, fast_step, operation_id, request_bytes, workflow_now, Cancel, StepFailure,
    },
    StepSettings,
};

/// Best-effort steps (audit row, health event) get few attempts: their failure is logged by the
/// activity and never changes the outcome.
const BEST_EFFORT_ATTEMPTS: u32 = 3;

/// The `StopRuntime` workflow. Registered with a factory that carries the worker's
/// [`StepSettings`] (the `Default` is for replay tests and tools).
#[workflow]
#[derive(Default)]
pub struct StopRuntimeWorkflow {
    settings: StepSettings,
}

impl StopRuntimeWorkflow {
    pub fn new(settings: StepSettings) -> Self {
        Self { settings }
    }
}

#[workflow_methods]
impl StopRuntimeWorkflow {
    /// Input: `{"game_id", "reason", "op_source", "source_ref"?, "lease_token"?}` as raw JSON.
    #[run(name = "StopRuntime")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: RawValue,
    ) -> WorkflowResult<OperationOutput> {
        let settings = ctx.state(|s| s.settings.clone());
        let op = Operation {
            ctx,
            settings: &settings,
            operation_id: operation_id(ctx),
            started_at: workflow_now(ctx),
        };
        let parsed = request_bytes(&input)
            .map_err(|message| InvalidRequest {
                message,
                echo: RequestEcho::default(),
            })
            .and_then(StopRequest::from_json);
        let request = match parsed {
            Ok(request) => request,
            Err(invalid) => return Ok(op.invalid_request(invalid).await),
        };
        Ok(op.handle(&request).await)
    }
}

/// One stop operation in flight: the workflow context plus what every audit row needs.
struct Operation<'a> {
    ctx: &'a WorkflowContext<StopRuntimeWorkflow>,
    settings: &'a StepSettings,
    operation_id: String,
    started_at: chrono::DateTime<chrono::Utc>,
}

/// The container a failure row refers to, when the failure happened after the record was read.
#[derive(Default)]
struct Touched {
    container_id: Option<String>,
    image_ref: Option<String>,
}

impl Touched {
    fn of(record: &RuntimeRecord) -> Self {
        Self {
            container_id: record.current_container_id.clone(),
            image_ref: record.current_image_ref.clone(),
        }
    }
}

impl Operation<'_> {
    /// The seed's `Handle` (no lease token: acquire, run, always release) or `Run` (a parent's
    /// lease token: run only).
    async fn handle(&self, request: &StopRequest) -> OperationOutput {
        if request.lease_token.is_some() {
            return self.run_under_lease(request).await;
        }
        let token = self.new_lease_token();
        let acquired = fast_step(
            self.ctx,
            self.settings,
            AcquireLease,
            AcquireLeaseInput {
                game_id: request.game_id.clone(),
                token: token.clone(),
            },
            self.settings.fast_step_attempts,
            Cancel::WithWorkflow,
        )
        .await;
        match acquired {
            Ok(LeaseOutcome::Acquired) => {}
            Ok(LeaseOutcome::HeldByOther) => {
                return self
                    .failure(
                        request,
                        ErrorCode::Conflict,
                        "another lifecycle operation is in progress for this game".into(),
                        Touched::default(),
                    )
                    .await
            }
            Err(err) => {
                let failure = StepFailure::from(err);
                let output = self
                    .failure(
                        request,
                        failure.code_or(ErrorCode::ServiceUnavailable),
                        format!("acquire game lease: {}", failure.message),
                        Touched::default(),
                    )
                    .await;
                // A cancelled or timed-out acquire may still have written the key: release it.
                self.release_lease(&request.game_id, token).await;
                return output;
            }
        }
        let output = self.run_under_lease(request).await;
        self.release_lease(&request.game_id, token).await;
        output
    }

    /// The seed's `runUnderLease`: load, branch on status, stop, compare-and-swap.
    async fn run_under_lease(&self, request: &StopRequest) -> OperationOutput {
        let loaded = fast_step(
            self.ctx,
            self.settings,
            LoadRecord,
            request.game_id.clone(),
            self.settings.fast_step_attempts,
            Cancel::WithWorkflow,
        )
        .await;
        let existing = match loaded {
            Ok(Some(record)) => record,
            Ok(None) => {
                let message = format!(
                    "runtime record for game {:?} does not exist",
                    request.game_id.as_str()
                );
                return self
                    .failure(request, ErrorCode::NotFound, message, Touched::default())
                    .await;
            }
            Err(err) => {
                let failure = StepFailure::from(err);
                return self
                    .failure(
                        request,
                        failure.code_or(ErrorCode::Internal),
                        format!("load runtime record: {}", failure.message),
                        Touched::default(),
                    )
                    .await;
            }
        };

        match existing.status {
            RuntimeStatus::Stopped | RuntimeStatus::Removed => {
                return self.replay_no_op(request, existing).await
            }
            RuntimeStatus::Running => {}
        }
        let Some(container_id) = existing.current_container_id.clone() else {
            let message = "runtime record is running but names no container".to_string();
            return self
                .failure(
                    request,
                    ErrorCode::Internal,
                    message,
                    Touched::of(&existing),
                )
                .await;
        };

        let stopped = docker_step(
            self.ctx,
            self.settings,
            StopContainer,
            StopContainerInput {
                game_id: request.game_id.clone(),
                container_id: container_id.clone(),
            },
        )
        .await;
        match stopped {
            Ok(ContainerStopOutcome::Stopped | ContainerStopOutcome::AlreadyStopped) => {}
            Ok(ContainerStopOutcome::Vanished) => {
                return self.handle_vanished(request, existing, container_id).await
            }
            Err(err) => {
                let failure = StepFailure::from(err);
                return self
                    .failure(
                        request,
                        failure.code_or(ErrorCode::ServiceUnavailable),
                        format!("docker stop: {}", failure.message),
                        Touched::of(&existing),
                    )
                    .await;
            }
        }

        let updated = self
            .update_status(request, &existing, container_id, RuntimeStatus::Stopped)
            .await;
        match updated {
            Ok(UpdateStatusOutcome::Updated { record }) => {
                self.success(request, record, Touched::of(&existing)).await
            }
            // CAS race: a concurrent reconciler or restart moved the record first; the desired
            // terminal state was reached by another path.
            Ok(UpdateStatusOutcome::Conflict { current }) => {
                self.replay_no_op(request, current).await
            }
            Ok(UpdateStatusOutcome::NotFound) => {
                let message = format!(
                    "runtime record for game {:?} vanished mid-stop",
                    request.game_id.as_str()
                );
                self.failure(
                    request,
                    ErrorCode::NotFound,
                    message,
                    Touched::of(&existing),
                )
                .await
            }
            Err(failure) => {
                self.failure(
                    request,
                    failure.code_or(ErrorCode::Internal),
                    format!("update runtime status: {}", failure.message),
                    Touched::of(&existing),
                )
                .await
            }
        }
    }

    /// The container is gone: the record moves to `removed`, `container_disappeared` is
    /// published, and the stop succeeds.
    async fn handle_vanished(
        &self,
        request: &StopRequest,
        existing: RuntimeRecord,
        container_id: String,
    ) -> OperationOutput {
        let updated = self
            .update_status(
                request,
                &existing,
                container_id.clone(),
                RuntimeStatus::Removed,
            )
            .await;
        let now = workflow_now(self.ctx);
        let record = match updated {
            Ok(UpdateStatusOutcome::Updated { record }) => record,
            Ok(UpdateStatusOutcome::Conflict { current }) => {
                return self.replay_no_op(request, current).await
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
                return self
                    .failure(
                        request,
                        failure.code_or(ErrorCode::Internal),
                        format!("update runtime status to removed: {}", failure.message),
                        Touched::of(&existing),
                    )
                    .await
            }
        };
        let event = HealthEvent {
            operation_id: self.operation_id.clone(),
            game_id: request.game_id.clone(),
            container_id: Some(container_id),
            event_type: CONTAINER_DISAPPEARED.into(),
            occurred_at: record.removed_at.unwrap_or(now),
            details: serde_json::json!({}),
        };
        // Best effort: the activity logs a failure; the record stays the source of truth.
        let _ = fast_step(
            self.ctx,
            self.settings,
            PublishHealth,
            event,
            BEST_EFFORT_ATTEMPTS,
            Cancel::Detached,
        )
        .await;
        self.success(request, record, Touched::of(&existing)).await
    }

    async fn update_status(
        &self,
        request: &StopRequest,
        existing: &RuntimeRecord,
        container_id: String,
        to: RuntimeStatus,
    ) -> Result<UpdateStatusOutcome, StepFailure> {
        fast_step(
            self.ctx,
            self.settings,
            UpdateStatus,
            UpdateStatusInput {
                game_id: request.game_id.clone(),
                operation_id: self.operation_id.clone(),
                expected_from: existing.status,
                expected_container_id: Some(container_id),
                to,
            },
            self.settings.fast_step_attempts,
            // The container is already stopped: record it even if the caller gave up meanwhile.
            Cancel::Detached,
        )
        .await
        .map_err(StepFailure::from)
    }

    async fn success(
        &self,
        request: &StopRequest,
        record: RuntimeRecord,
        touched: Touched,
    ) -> OperationOutput {
        self.append(self.entry(request, Outcome::Success, None, None, touched))
            .await;
        OperationOutput::success(record)
    }

    async fn replay_no_op(&self, request: &StopRequest, record: RuntimeRecord) -> OperationOutput {
        let touched = Touched::of(&record);
        self.append(self.entry(
            request,
            Outcome::Success,
            Some(ErrorCode::ReplayNoOp),
            None,
            touched,
        ))
        .await;
        OperationOutput::replay_no_op(record)
    }

    async fn failure(
        &self,
        request: &StopRequest,
        code: ErrorCode,
        message: String,
        touched: Touched,
    ) -> OperationOutput {
        self.append(self.entry(
            request,
            Outcome::Failure,
            Some(code),
            Some(message.clone()),
            touched,
        ))
        .await;
        OperationOutput::failure(code, message)
    }

    /// Input that did not parse: audited with whatever could be read, no lease taken.
    async fn invalid_request(&self, invalid: InvalidRequest) -> OperationOutput {
        let echo = invalid.echo;
        self.append(OperationEntry {
            operation_id: self.operation_id.clone(),
            game_id: truncate_chars(&echo.game_id, 128),
            op_kind: OpKind::Stop,
            op_source: truncate_chars(&echo.op_source, 32),
            source_ref: echo.source_ref.map(|s| truncate_chars(&s, 256)),
            image_ref: None,
            container_id: None,
            outcome: Outcome::Failure,
            error_code: Some(ErrorCode::InvalidRequest),
            error_message: Some(invalid.message.clone()),
            started_at: self.started_at,
            reason_label: label(echo.reason.and_then(|r| r.parse::<StopReason>().ok())),
            op_source_label: label(echo.op_source.parse::<OpSource>().ok()),
        })
        .await;
        OperationOutput::failure(ErrorCode::InvalidRequest, invalid.message)
    }

    fn entry(
        &self,
        request: &StopRequest,
        outcome: Outcome,
        error_code: Option<ErrorCode>,
        error_message: Option<String>,
        touched: Touched,
    ) -> OperationEntry {
        OperationEntry {
            operation_id: self.operation_id.clone(),
            game_id: request.game_id.as_str().to_owned(),
            op_kind: OpKind::Stop,
            op_source: request.op_source.as_str().to_owned(),
            source_ref: request.source_ref.as_ref().map(|s| s.as_str().to_owned()),
            image_ref: touched.image_ref,
            container_id: touched.container_id,
            outcome,
            error_code,
            error_message,
            started_at: self.started_at,
            reason_label: request.reason.as_str().to_owned(),
            op_source_label: request.op_source.as_str().to_owned(),
        }
    }

    /// Best effort: the activity logs a failure and the outcome stands.
    async fn append(&self, entry: OperationEntry) {
        let _ = fast_step(
            self.ctx,
            self.settings,
            AppendOperationLog,
            entry,
            BEST_EFFORT_ATTEMPTS,
            Cancel::Detached,
        )
        .await;
    }

    /// Releases the lease even when the workflow was cancelled (the seed's fresh context).
    async fn release_lease(&self, game_id: &GameId, token: LeaseToken) {
        let _ = fast_step(
            self.ctx,
            self.settings,
            ReleaseLease,
            ReleaseLeaseInput {
                game_id: game_id.clone(),
                token,
            },
            self.settings.fast_step_attempts,
            Cancel::Detached,
        )
        .await;
    }

    /// A 244-bit token from the workflow's seeded random stream: deterministic on replay (so a
    /// retried acquire recognises its own lease), unpredictable to anyone without the history.
    fn new_lease_token(&self) -> LeaseToken {
        let raw = format!("{}{}", self.ctx.uuid4(), self.ctx.uuid4()).replace('-', "");
        LeaseToken::parse(&raw).expect("uuid hex is a valid token")
    }
}

fn label<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "invalid".to_owned(), |v| v.to_string())
}
