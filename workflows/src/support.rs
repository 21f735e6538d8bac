//! How a step runs, for every lifecycle workflow: raw input, workflow time, the activity options
//! of each kind of step (local or normal, timeouts, retries, cancellation), and decoding an
//! activity's failure into an error code. Workflows do not call these directly: [`Op`] is their
//! one door to the steps.
//!
//! [`Op`]: crate::operation::Op

use std::time::{Duration, SystemTime};

use chrono::{DateTime, SubsecRound, Utc};
use futures::future::Either;
use temporalio_workflow::{
    common::{
        data_converters::RawValue,
        protos::{
            temporal::api::{
                enums::v1::TimeoutType,
                failure::v1::{failure::FailureInfo, Failure},
            },
            ENCODING_PAYLOAD_KEY, JSON_ENCODING_VAL,
        },
        ActivityDefinition, RetryPolicy,
    },
    ActivityExecutionError, ActivityOptions, LocalActivityOptions, WorkflowCancellationToken,
    WorkflowContext,
};

use rtmanager_domain::ErrorCode;

use crate::StepSettings;

/// The JSON bytes of a workflow's single `json/plain` input payload.
pub fn request_bytes(input: &RawValue) -> Result<&[u8], String> {
    match input.payloads.as_slice() {
        [payload] => {
            let encoding = payload.metadata.get(ENCODING_PAYLOAD_KEY);
            if encoding.map(Vec::as_slice) == Some(JSON_ENCODING_VAL.as_bytes()) {
                Ok(&payload.data)
            } else {
                Err("request must be one json/plain payload (a JSON object)".into())
            }
        }
        [] => Err("request is missing: pass one JSON object as input".into()),
        _ => Err("request must be exactly one JSON object, not several arguments".into()),
    }
}

/// Deterministic "now": the workflow task's timestamp, truncated to PostgreSQL's microseconds.
pub fn workflow_now<W>(ctx: &WorkflowContext<W>) -> DateTime<Utc> {
    let now: DateTime<Utc> = ctx.workflow_time().unwrap_or(SystemTime::UNIX_EPOCH).into();
    now.trunc_subsecs(6)
}

/// `workflow_id/run_id`: the idempotency key of everything the operation writes once.
pub fn operation_id<W>(ctx: &WorkflowContext<W>) -> String {
    format!("{}/{}", ctx.workflow_id(), ctx.run_id())
}

/// Which cancellation a step obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The step is cancelled with the workflow (the main steps).
    WithWorkflow,
    /// The step runs even after the workflow was cancelled (audit, health, lease release): the
    /// seed's "release on a fresh context".
    Detached,
}

fn retry(attempts: u32, initial: Duration, max: Duration) -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(initial)
        .backoff_coefficient(2.0)
        .maximum_interval(max)
        .maximum_attempts(attempts.max(1))
        .build()
}

/// One attempt of a fast step: Redis and PostgreSQL answer in well under a millisecond, so
/// this only bounds a dependency that hangs.
pub const FAST_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How one step runs: as a local or a normal activity, on which task queue, with which
/// timeouts, retries and cancellation. [`StepShape::fast`] and [`StepShape::docker`] are the
/// two kinds; [`run_step`] runs a step in either.
#[derive(Debug, Clone)]
pub struct StepShape<'q> {
    local: bool,
    attempts: u32,
    attempt_timeout: Duration,
    backoff: (Duration, Duration),
    cancel: Cancel,
    /// Docker steps heartbeat as normal activities and are cancelled with `TryCancel` as local
    /// ones.
    docker: bool,
    /// Another host's task queue, and how long its worker may take to pick the step up.
    remote: Option<(&'q str, Duration)>,
    /// Give the step its input as its summary (`StepSettings::step_summaries`).
    summary: bool,
}

impl StepShape<'static> {
    /// A sub-millisecond step (Redis or PostgreSQL): local or normal as the settings say
    /// (`StepSettings::local_fast_steps`), with `attempt_timeout` per attempt (the lease
    /// acquire's is longer: it may wait out a lock-delay) and bounded retries.
    pub fn fast(
        settings: &StepSettings,
        attempts: u32,
        cancel: Cancel,
        attempt_timeout: Duration,
    ) -> Self {
        Self {
            local: settings.local_fast_steps,
            attempts,
            attempt_timeout,
            backoff: (Duration::from_millis(100), Duration::from_secs(2)),
            cancel,
            docker: false,
            remote: None,
            summary: settings.step_summaries,
        }
    }
}

impl<'q> StepShape<'q> {
    /// A Docker step: a local activity, or a normal activity that heartbeats so a crashed
    /// worker is noticed within the heartbeat timeout (`StepSettings::local_docker_steps`).
    ///
    /// `remote` is the task queue of the game's host when the workflow runs elsewhere (the
    /// shared queue, or another host's): the step then goes there as a normal activity,
    /// whatever the settings, and waits at most `StepSettings::host_wait` for that host's
    /// worker to take it, so a host that is down answers `service_unavailable` in bounded time.
    /// An attempt may take `grace` (how long Docker may wait for the process) plus
    /// `StepSettings::docker_queue_allowance`.
    pub fn docker(
        settings: &StepSettings,
        cancel: Cancel,
        remote: Option<&'q str>,
        grace: Duration,
    ) -> Self {
        Self {
            local: settings.local_docker_steps && remote.is_none(),
            attempts: settings.docker_attempts,
            attempt_timeout: grace + settings.docker_queue_allowance,
            backoff: (Duration::from_millis(500), Duration::from_secs(5)),
            cancel,
            docker: true,
            remote: remote.map(|queue| (queue, settings.host_wait)),
            summary: settings.step_summaries,
        }
    }
}

/// Longest step summary shown in the Web UI.
const SUMMARY_MAX_CHARS: usize = 200;

/// Input fields that carry a lease's secret: never shown in a summary.
const SECRET_FIELDS: [&str; 4] = ["lease", "lease_token", "token", "secret"];

/// What a step is asked, in one line for the Web UI and `temporal workflow show` (the step's
/// user metadata; a local activity's marker carries it): its input as compact JSON, without
/// the lease secrets, cut at 200 characters.
pub fn step_summary(input: &impl serde::Serialize) -> Option<String> {
    let mut value = serde_json::to_value(input).ok()?;
    if let serde_json::Value::Object(map) = &mut value {
        for field in SECRET_FIELDS {
            map.remove(field);
        }
    }
    let text = value.to_string();
    Some(match text.char_indices().nth(SUMMARY_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    })
}

/// An activity a workflow runs as a step: its input is shown as the step's summary, its
/// output comes back as JSON.
pub trait Step:
    ActivityDefinition<
    Input: serde::Serialize,
    Output: temporalio_workflow::common::data_converters::TemporalDeserializable,
>
{
}

impl<T> Step for T
where
    T: ActivityDefinition,
    T::Input: serde::Serialize,
    T::Output: temporalio_workflow::common::data_converters::TemporalDeserializable,
{
}

/// Runs one step in the given shape.
pub async fn run_step<W, AD: Step>(
    ctx: &WorkflowContext<W>,
    activity: AD,
    input: AD::Input,
    shape: StepShape<'_>,
) -> Result<AD::Output, ActivityExecutionError> {
    let policy = retry(shape.attempts, shape.backoff.0, shape.backoff.1);
    let token = match shape.cancel {
        Cancel::WithWorkflow => None,
        Cancel::Detached => Some(WorkflowCancellationToken::new()),
    };
    let summary = shape.summary.then(|| step_summary(&input)).flatten();
    let attempt_timeout = shape.attempt_timeout;
    let future = if shape.local {
        let try_cancel = temporalio_workflow::ActivityCancellationType::TryCancel;
        let opts = LocalActivityOptions::builder()
            .start_to_close_timeout(attempt_timeout)
            .schedule_to_close_timeout(attempt_timeout * (shape.attempts.max(1) + 1))
            .retry_policy(policy)
            .maybe_cancel_type(shape.docker.then_some(try_cancel))
            .maybe_cancellation_token(token)
            .maybe_summary(summary)
            .build();
        Either::Left(ctx.execute_local_activity(activity, input, opts))
    } else {
        let opts = ActivityOptions::with_start_to_close_timeout(attempt_timeout)
            .maybe_heartbeat_timeout(shape.docker.then_some(Duration::from_secs(10)))
            .retry_policy(policy)
            .maybe_cancellation_token(token)
            .maybe_task_queue(shape.remote.map(|(queue, _)| queue.to_owned()))
            .maybe_schedule_to_start_timeout(shape.remote.map(|(_, wait)| wait))
            .maybe_summary(summary)
            .build();
        Either::Right(ctx.execute_activity(activity, input, opts))
    };
    future.await
}

/// What a failed step means to the workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// The code an activity attached to a definitive failure, if any.
    pub code: Option<ErrorCode>,
    /// The innermost failure message (the activity's own words).
    pub message: String,
    /// The step ended because the workflow was cancelled.
    pub cancelled: bool,
}

impl StepFailure {
    /// The code to report: the activity's own, else `fallback` (the step's retries-exhausted
    /// code), with cancellation reported as `service_unavailable` like the seed's cancelled
    /// context.
    pub fn code_or(&self, fallback: ErrorCode) -> ErrorCode {
        if self.cancelled {
            ErrorCode::ServiceUnavailable
        } else {
            self.code.unwrap_or(fallback)
        }
    }
}

impl From<ActivityExecutionError> for StepFailure {
    fn from(err: ActivityExecutionError) -> Self {
        let cancelled = matches!(err, ActivityExecutionError::Cancelled(_));
        match err.failure() {
            Some(failure) if waited_for_host(failure) => StepFailure {
                code: Some(ErrorCode::ServiceUnavailable),
                message: "no worker of the game's host took the Docker step in time: the \
                          host is down or overloaded; nothing was done there"
                    .to_owned(),
                cancelled,
            },
            Some(failure) => {
                let innermost = innermost(failure);
                let code = chain(failure).find_map(|f| match &f.failure_info {
                    Some(FailureInfo::ApplicationFailureInfo(info)) => info.r#type.parse().ok(),
                    _ => None,
                });
                let message = if cancelled {
                    format!("operation cancelled: {}", innermost.message)
                } else {
                    innermost.message.clone()
                };
                StepFailure {
                    code,
                    message,
                    cancelled,
                }
            }
            None => StepFailure {
                code: Some(ErrorCode::Internal),
                message: err.to_string(),
                cancelled,
            },
        }
    }
}

/// The step timed out waiting in its host's task queue (schedule-to-start): it never ran.
fn waited_for_host(failure: &Failure) -> bool {
    chain(failure).any(|f| {
        matches!(&f.failure_info, Some(FailureInfo::TimeoutFailureInfo(info))
            if info.timeout_type() == TimeoutType::ScheduleToStart)
    })
}

fn chain(failure: &Failure) -> impl Iterator<Item = &Failure> {
    std::iter::successors(Some(failure), |f| f.cause.as_deref())
}

fn innermost(failure: &Failure) -> &Failure {
    chain(failure).last().unwrap_or(failure)
}

/// A workflow input or child input: one `json/plain` payload.
pub fn json_input(value: &serde_json::Value) -> RawValue {
    use temporalio_workflow::common::protos::temporal::api::common::v1::Payload;
    RawValue::new(vec![Payload {
        metadata: std::collections::HashMap::from([(
            ENCODING_PAYLOAD_KEY.to_owned(),
            JSON_ENCODING_VAL.as_bytes().to_vec(),
        )]),
        data: value.to_string().into_bytes(),
        ..Default::default()
    }])
}

/// Runs one child workflow to completion under `child_id`; if the parent is cancelled or
/// closes, the child is asked to cancel. A child that cannot start or fails is an `internal`
/// output, never a failure of the parent.
pub async fn run_child<W, C>(
    ctx: &WorkflowContext<W>,
    workflow: C,
    child_id: String,
    request: &rtmanager_domain::LifecycleRequest,
) -> rtmanager_domain::OperationOutput
where
    C: temporalio_workflow::common::WorkflowDefinition<
            Input = RawValue,
            Output = rtmanager_domain::OperationOutput,
        > + 'static,
{
    use rtmanager_domain::OperationOutput;
    use temporalio_workflow::{ChildWorkflowOptions, ParentClosePolicy};
    let step = child_id.rsplit('/').next().unwrap_or_default().to_owned();
    let options = ChildWorkflowOptions::builder()
        .workflow_id(child_id)
        .parent_close_policy(ParentClosePolicy::RequestCancel)
        .static_summary(request.summary())
        .static_details(request.details())
        .build();
    let started = match ctx
        .start_child_workflow(workflow, json_input(&request.to_json()), options)
        .await
    {
        Ok(started) => started,
        Err(err) => {
            return OperationOutput::failure(
                ErrorCode::Internal,
                format!("start child workflow {step}: {err}"),
            )
        }
    };
    match started.result().await {
        Ok(output) => output,
        Err(err) => {
            OperationOutput::failure(ErrorCode::Internal, format!("child workflow {step}: {err}"))
        }
    }
}

/// A short, stable hex digest (FNV-1a 64) for names derived from ids.
pub fn short_digest(value: &str) -> String {
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_step_summary_carries_a_lease_secret() {
        use crate::contract::*;
        use rtmanager_domain::{GameId, ImageRef, LeaseToken, RuntimeStatus};
        let game_id = GameId::parse("g-1").unwrap();
        let lease = LeaseToken::parse("1795779568187930:S3CRET").unwrap();
        let image_ref = ImageRef::parse("game:1").unwrap();
        // Every step input that holds a secret or a lease token.
        let summaries = [
            step_summary(&AcquireLeaseInput {
                game_id: game_id.clone(),
                secret: "S3CRET".into(),
            }),
            step_summary(&CheckLeaseInput {
                game_id: game_id.clone(),
                token: lease.clone(),
            }),
            step_summary(&ReleaseLeaseInput {
                game_id: game_id.clone(),
                token: lease.clone(),
            }),
            step_summary(&StopContainerInput {
                game_id: game_id.clone(),
                container_id: "c".into(),
                lease: lease.clone(),
                timeout_secs: Some(5),
                signal: None,
            }),
            step_summary(&EnsureContainerInput {
                game_id: game_id.clone(),
                image_ref: image_ref.clone(),
                name: "n".into(),
                lease: lease.clone(),
            }),
            step_summary(&RecordRunningInput {
                game_id: game_id.clone(),
                operation_id: "op".into(),
                fence: 1,
                lease: Some(lease.clone()),
                container_id: "c".into(),
                image_ref,
                host_id: None,
            }),
            step_summary(&UpdateStatusInput {
                game_id: game_id.clone(),
                operation_id: "op".into(),
                expected_from: RuntimeStatus::Running,
                expected_container_id: Some("c".into()),
                to: RuntimeStatus::Stopped,
                fence: 1,
                lease: Some(lease),
            }),
        ];
        for summary in summaries {
            let summary = summary.expect("a summary");
            assert!(summary.contains("g-1"), "{summary}");
            assert!(!summary.contains("S3CRET"), "{summary}");
        }
    }

    #[test]
    fn a_workflow_input_must_be_one_json_payload() {
        let one = json_input(&serde_json::json!({"game_id": "g"}));
        assert_eq!(request_bytes(&one).unwrap(), br#"{"game_id":"g"}"#);
        assert!(request_bytes(&RawValue::new(vec![])).is_err());
        let two = RawValue::new([one.payloads.clone(), one.payloads.clone()].concat());
        assert!(request_bytes(&two).unwrap_err().contains("exactly one"));
        let mut binary = one.clone();
        binary.payloads[0].metadata.clear();
        assert!(request_bytes(&binary).unwrap_err().contains("json/plain"));
    }

    #[test]
    fn a_cancelled_step_is_service_unavailable_whatever_its_code() {
        let failure = |code, cancelled| StepFailure {
            code,
            message: String::new(),
            cancelled,
        };
        let fallback = ErrorCode::Internal;
        assert_eq!(failure(None, false).code_or(fallback), ErrorCode::Internal);
        let conflict = Some(ErrorCode::Conflict);
        assert_eq!(
            failure(conflict, false).code_or(fallback),
            ErrorCode::Conflict
        );
        assert_eq!(
            failure(conflict, true).code_or(fallback),
            ErrorCode::ServiceUnavailable
        );
    }

    #[test]
    fn container_names_derive_stably_from_the_operation_id() {
        // The start adopts its own container after a crash by this name: it must not change
        // between builds or runs.
        assert_eq!(short_digest("wf/run"), short_digest("wf/run"));
        assert_ne!(short_digest("wf/run-1"), short_digest("wf/run-2"));
        assert_eq!(short_digest(""), "cbf29ce484222325");
        assert_eq!(short_digest("wf/run").len(), 16);
    }
}
