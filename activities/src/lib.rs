//! rtmanager's activities and the adapters they own: Redis ([`redis_store`]), PostgreSQL
//! ([`store`]) and Docker ([`docker`]).
//!
//! Each activity implements one contract from `rtmanager_workflows::contract` (checked at compile
//! time through `#[activity(definition = ...)]`). Error tiers: branch outcomes are `Ok` values;
//! transient faults are retryable errors the workflow turns into a code once its retries run
//! out; definitive faults are non-retryable with the error code as their failure type.
//!
//! Every activity is idempotent (local activities re-run whole after a crash): the lease
//! acquire recognises its own token, the CAS its own operation id, the audit row and the health
//! event are written once per operation.
//!
//! Caller: the worker registers one [`RuntimeActivities`].

pub mod docker;
pub mod redis_store;
pub mod schema;
pub mod store;
pub mod telemetry;

use std::{sync::Arc, time::Duration};

use temporalio_common::error::ApplicationFailure;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tracing::Instrument;

use rtmanager_domain::{ErrorCode, GameId, Outcome, RuntimeRecord};
use rtmanager_workflows::contract::{
    self, failure_type, AcquireLeaseInput, ContainerStopOutcome, HealthEvent, LeaseOutcome,
    OperationEntry, ReleaseLeaseInput, StopContainerInput, UpdateStatusInput, UpdateStatusOutcome,
};

pub use docker::DockerRuntime;
pub use redis_store::{RedisKeys, RedisStore};
pub use store::Store;
pub use telemetry::Telemetry;

use crate::{docker::DockerError, store::StoreError};

/// How often the Docker stop heartbeats; the workflow's heartbeat timeout is a few of these.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The collaborators every activity needs.
pub struct Dependencies {
    /// Runtime records, the operation log and health snapshots.
    pub store: Store,
    /// Leases and the health events stream.
    pub redis: Arc<RedisStore>,
    /// The Docker daemon.
    pub docker: DockerRuntime,
    /// Metrics recorded by the activities.
    pub telemetry: Telemetry,
    /// TTL of a game lease. An operation longer than this loses its lease.
    pub lease_ttl: Duration,
}

/// The activity implementer registered with the worker.
pub struct RuntimeActivities {
    deps: Dependencies,
}

impl RuntimeActivities {
    pub fn new(deps: Dependencies) -> Self {
        Self { deps }
    }
}

#[activities]
impl RuntimeActivities {
    #[activity(definition = contract::AcquireLease)]
    pub async fn acquire_lease(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: AcquireLeaseInput,
    ) -> Result<LeaseOutcome, ActivityError> {
        let span = span(&ctx, &input.game_id);
        async move {
            let started = std::time::Instant::now();
            let result = self
                .deps
                .redis
                .acquire_lease(&input.game_id, &input.token, self.deps.lease_ttl)
                .await;
            let label = match &result {
                Ok(true) => "acquired",
                Ok(false) => "held_by_other",
                Err(_) => "error",
            };
            self.deps
                .telemetry
                .record_lease_acquire(label, started.elapsed());
            match result {
                Ok(true) => Ok(LeaseOutcome::Acquired),
                Ok(false) => Ok(LeaseOutcome::HeldByOther),
                Err(err) => Err(retryable(format!("redis: {err}"))),
            }
        }
        .instrument(span)
        .await
    }

    #[activity(definition = contract::ReleaseLease)]
    pub async fn release_lease(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: ReleaseLeaseInput,
    ) -> Result<bool, ActivityError> {
        let span = span(&ctx, &input.game_id);
        async move {
            match self
                .deps
                .redis
                .release_lease(&input.game_id, &input.token)
                .await
            {
                Ok(released) => {
                    if !released {
                        tracing::debug!("lease was no longer held by this operation");
                    }
                    Ok(released)
                }
                Err(err) => {
                    tracing::warn!(err = %err, "release game lease");
                    Err(retryable(format!("redis: {err}")))
                }
            }
        }
        .instrument(span)
        .await
    }

    #[activity(definition = contract::LoadRecord)]
    pub async fn load_record(
        self: Arc<Self>,
        ctx: ActivityContext,
        game_id: GameId,
    ) -> Result<Option<RuntimeRecord>, ActivityError> {
        let span = span(&ctx, &game_id);
        async move {
            self.deps
                .store
                .get_record(&game_id)
                .await
                .map_err(store_error)
        }
        .instrument(span)
        .await
    }

    #[activity(definition = contract::StopContainer)]
    pub async fn stop_container(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: StopContainerInput,
    ) -> Result<ContainerStopOutcome, ActivityError> {
        let span = span(&ctx, &input.game_id);
        async move {
            let stop = self.deps.docker.stop(&input.game_id, &input.container_id);
            tokio::pin!(stop);
            let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
            let result = loop {
                tokio::select! {
                    result = &mut stop => break result,
                    _ = ctx.cancelled() => return Err(ActivityError::cancelled()),
                    _ = beat.tick() => { let _ = ctx.record_heartbeat(()).await; }
                }
            };
            match result {
                Ok(outcome) => Ok(outcome),
                Err(DockerError::Refused(message)) => {
                    tracing::error!(container_id = %input.container_id, "{message}");
                    Err(definitive(failure_type::INTERNAL, message))
                }
                Err(DockerError::Unavailable(message)) => {
                    tracing::warn!(container_id = %input.container_id, attempt = ctx.info().attempt, "docker: {message}");
                    Err(retryable(message))
                }
            }
        }
        .instrument(span)
        .await
    }

    #[activity(definition = contract::UpdateStatus)]
    pub async fn update_status(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: UpdateStatusInput,
    ) -> Result<UpdateStatusOutcome, ActivityError> {
        let span = span(&ctx, &input.game_id);
        async move {
            self.deps
                .store
                .update_status(
                    &input.game_id,
                    &input.operation_id,
                    input.expected_from,
                    input.expected_container_id.as_deref(),
                    input.to,
                )
                .await
                .map_err(store_error)
        }
        .instrument(span)
        .await
    }

    #[activity(definition = contract::PublishHealth)]
    pub async fn publish_health(
        self: Arc<Self>,
        ctx: ActivityContext,
        event: HealthEvent,
    ) -> Result<(), ActivityError> {
        let span = span(&ctx, &event.game_id);
        async move {
            if let Err(err) = self.deps.store.upsert_health_snapshot(&event).await {
                tracing::error!(event_type = %event.event_type, err = %err, "upsert health snapshot");
                return Err(store_error(err));
            }
            match self.deps.redis.publish_health_once(&event).await {
                Ok(added) => {
                    if added {
                        self.deps.telemetry.record_health_event(&event.event_type);
                    }
                    Ok(())
                }
                Err(err) => {
                    tracing::error!(event_type = %event.event_type, err = %err, "publish health event");
                    Err(retryable(format!("redis: {err}")))
                }
            }
        }
        .instrument(span)
        .await
    }

    #[activity(definition = contract::AppendOperationLog)]
    pub async fn append_operation_log(
        self: Arc<Self>,
        ctx: ActivityContext,
        entry: OperationEntry,
    ) -> Result<(), ActivityError> {
        let span = tracing::info_span!(
            "activity",
            activity = %ctx.info().activity_type,
            workflow_id = ctx.info().workflow_id.as_deref().unwrap_or(""),
            game_id = %entry.game_id,
        );
        async move {
            let result = self.deps.store.append_operation(&entry).await;
            let last_attempt = ctx
                .info()
                .retry_policy
                .as_ref()
                .map(|policy| policy.maximum_attempts())
                .is_some_and(|max| max > 0 && ctx.info().attempt >= max);
            // Count each operation once: when its row is written, or when the last attempt to
            // write it failed.
            if matches!(result, Ok(true)) || (result.is_err() && last_attempt) {
                self.deps.telemetry.record_stop_outcome(
                    entry.outcome.as_str(),
                    &entry.reason_label,
                    &entry.op_source_label,
                );
            }
            log_outcome(&entry);
            result.map(|_| ()).map_err(|err| {
                tracing::error!(
                    op_kind = %entry.op_kind,
                    outcome = %entry.outcome,
                    error_code = entry.error_code.map(ErrorCode::as_str).unwrap_or(""),
                    err = %err,
                    "append operation log"
                );
                store_error(err)
            })
        }
        .instrument(span)
        .await
    }
}

/// The seed's per-outcome log lines, emitted once the operation's outcome is known.
fn log_outcome(entry: &OperationEntry) {
    let container_id = entry.container_id.as_deref().unwrap_or("");
    match (entry.outcome, entry.error_code) {
        (Outcome::Success, None) => tracing::info!(
            container_id, reason = %entry.reason_label, op_source = %entry.op_source,
            "runtime {} succeeded", entry.op_kind
        ),
        (Outcome::Success, Some(_)) => tracing::info!(
            container_id, reason = %entry.reason_label, op_source = %entry.op_source,
            "runtime {} replay no-op", entry.op_kind
        ),
        (Outcome::Failure, code) => tracing::warn!(
            reason = %entry.reason_label, op_source = %entry.op_source,
            error_code = code.map(ErrorCode::as_str).unwrap_or(""),
            error_message = entry.error_message.as_deref().unwrap_or(""),
            "runtime {} failed", entry.op_kind
        ),
    }
}

fn span(ctx: &ActivityContext, game_id: &GameId) -> tracing::Span {
    tracing::info_span!(
        "activity",
        activity = %ctx.info().activity_type,
        workflow_id = ctx.info().workflow_id.as_deref().unwrap_or(""),
        game_id = %game_id,
        attempt = ctx.info().attempt,
    )
}

fn retryable(message: impl Into<String>) -> ActivityError {
    ActivityError::application(ApplicationFailure::new(message.into()))
}

fn definitive(code: &str, message: impl Into<String>) -> ActivityError {
    ActivityError::application(
        ApplicationFailure::builder(message.into())
            .type_name(code.to_owned())
            .non_retryable(true)
            .build(),
    )
}

fn store_error(err: StoreError) -> ActivityError {
    match err {
        StoreError::Corrupt(message) => definitive(failure_type::INTERNAL, message),
        other => retryable(other.to_string()),
    }
}
