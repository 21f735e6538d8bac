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

#![warn(missing_docs)]

pub mod docker;
pub mod fault;
pub mod holder;
pub mod hosts;
mod reconcile;
pub mod redis_store;
// diesel's `table!` generates undocumented items.
#[allow(missing_docs)]
pub mod schema;
pub mod store;
pub mod telemetry;

use std::{sync::Arc, time::Duration};

use temporalio_common::error::ApplicationFailure;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tracing::Instrument;

use rtmanager_domain::{ErrorCode, GameId, LeaseToken, OpKind, Outcome, RuntimeStatus};
use rtmanager_workflows::contract::{
    self, failure_type, AcquireLeaseInput, CheckLeaseInput, ContainerState, ContainerStopOutcome,
    EnsureContainerInput, HealthEvent, HostRoute, HostScan, InspectGameInput, LeaseOutcome,
    LoadRecordInput, LoadedRecord, OperationEntry, PlaceGameInput, Placement, RecordRunningInput,
    ReleaseLeaseInput, RemoveContainerInput, RemoveOrphanInput, ScanHostInput, StopContainerInput,
    UpdateStatusInput, UpdateStatusOutcome,
};

pub use docker::{ContainerSettings, DockerRuntime, StopAsk};
pub use holder::{HolderLiveness, HolderState};
pub use hosts::{GameHost, HostRegistration, HostStatus};
pub use redis_store::{Acquire, LeaseHolder, RedisKeys, RedisStore, TakeOver};
pub use store::Store;
pub use telemetry::Telemetry;

use crate::{docker::DockerError, store::StoreError};

/// How often the Docker stop heartbeats; the workflow's heartbeat timeout is a few of these.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The collaborators every activity needs.
#[derive(Clone)]
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
    /// Tells a lease held by a closed workflow from one held by a live operation.
    pub liveness: Arc<dyn HolderLiveness>,
    /// How long after its holder closed a lease may be taken over: a step of the dead holder
    /// still in flight on some worker ends (or is fenced out) meanwhile.
    pub lease_lock_delay: Duration,
    /// The deployment's shared task queue and when a silent host counts as down: what the
    /// record load and the placement need to name a host's task queue and judge it.
    pub hosts: HostSettings,
    /// What a reconcile round may do to orphans.
    pub reconcile: ReconcileSettings,
}

/// What a reconcile round may do to orphans.
#[derive(Debug, Clone, Default)]
pub struct ReconcileSettings {
    /// Remove orphans (`RTMANAGER_REMOVE_ORPHANS`); otherwise they are only reported.
    pub remove_orphans: bool,
    /// How long a container must have been an orphan before it is removed.
    pub orphan_grace: Duration,
}

/// How a deployment names and judges its hosts.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// The shared task queue (`rtmanager`); each host's queue is derived from it.
    pub shared_queue: String,
    /// A host whose heartbeat is older than this is down.
    pub down_after: Duration,
}

/// The activity implementer registered with the worker.
pub struct RuntimeActivities {
    deps: Dependencies,
}

impl RuntimeActivities {
    /// The activities over the adapters the composition root built once.
    pub fn new(deps: Dependencies) -> Self {
        Self { deps }
    }
}

/// Writes the `#[activities]` impl. Each entry names its method, its contract, its input and
/// output, the game its span names, and its work (a future); the macro adds the signature the
/// SDK wants and runs the work inside [`RuntimeActivities::step`] (span and fault points), so
/// no activity spells either again. `#[activities]` generates an undocumented constant per
/// activity and copies each method's `#[allow]` onto it, hence the `allow(missing_docs)`.
macro_rules! activity_impls {
    ($(
        $method:ident = $contract:ident($this:ident, $ctx:ident, $input:ident: $in:ty) -> $out:ty,
            game $game:expr => $work:expr;
    )*) => {
        #[activities]
        impl RuntimeActivities {$(
            #[doc = concat!("[`contract::", stringify!($contract), "`].")]
            #[allow(missing_docs)]
            #[activity(definition = contract::$contract)]
            pub async fn $method(
                $this: Arc<Self>,
                $ctx: ActivityContext,
                $input: $in,
            ) -> Result<$out, ActivityError> {
                $this.step(&$ctx, $game, $work).await
            }
        )*}
    };
}

activity_impls! {
    acquire_lease = AcquireLease(self, ctx, input: AcquireLeaseInput) -> LeaseOutcome,
        game input.game_id.as_str() => async {
            let started = std::time::Instant::now();
            let holder = LeaseHolder {
                workflow_id: ctx.info().workflow_id.clone().unwrap_or_default(),
                run_id: ctx.info().workflow_run_id.clone().unwrap_or_default(),
            };
            let result = self.acquire_or_take_over(&input, &holder).await;
            let label = match &result {
                Ok((LeaseOutcome::Acquired { .. }, true)) => "taken_over",
                Ok((LeaseOutcome::Acquired { .. }, false)) => "acquired",
                Ok((LeaseOutcome::HeldByOther, _)) => "held_by_other",
                Err(_) => "error",
            };
            self.deps.telemetry.record_lease_acquire(label, started.elapsed());
            result.map(|(outcome, _)| outcome).map_err(redis_error)
        };

    check_lease = CheckLease(self, ctx, input: CheckLeaseInput) -> bool,
        game input.game_id.as_str() => async {
            let held = self.deps.redis.lease_is_held_by(&input.game_id, &input.token).await;
            held.map_err(redis_error)
        };

    release_lease = ReleaseLease(self, ctx, input: ReleaseLeaseInput) -> bool,
        game input.game_id.as_str() => async {
            let released = self.deps.redis.release_lease(&input.game_id, &input.token).await;
            let released = released.map_err(|err| {
                tracing::warn!(err = %err, "release game lease");
                redis_error(err)
            })?;
            if !released {
                tracing::debug!("lease was no longer held by this operation");
            }
            Ok(released)
        };

    load_record = LoadRecord(self, ctx, input: LoadRecordInput) -> Option<LoadedRecord>,
        game input.game_id.as_str() => async {
            let loaded = self.deps.store.get_record_with_writer(&input.game_id).await;
            let shared = &self.deps.hosts.shared_queue;
            Ok(loaded.map_err(store_error)?.map(|(record, writer)| LoadedRecord {
                host: Some(HostRoute {
                    task_queue: record.host_id.task_queue(shared),
                    host_id: record.host_id.clone(),
                }),
                record,
                written_by_this_operation: writer.last_op_id.as_deref()
                    == Some(&input.operation_id),
                last_container_id: writer.last_container_id,
            }))
        };

    inspect_game = InspectGame(self, ctx, input: InspectGameInput) -> ContainerState,
        game input.game_id.as_str() => async {
            let state = self.deps.docker.state_of(&input.game_id, &input.container_id).await;
            docker_result(state, &ctx, &input.container_id)
        };

    scan_host = ScanHost(self, ctx, input: ScanHostInput) -> HostScan,
        game "" => self.scan(&ctx, &input.host_id);

    remove_orphan = RemoveOrphan(self, ctx, input: RemoveOrphanInput) -> bool,
        game &input.game_label => async {
            // Adopted meanwhile (a start recorded it, or an operation on the game is under
            // way): not an orphan any more.
            if let Ok(game_id) = GameId::parse(&input.game_label) {
                let record = self.deps.store.get_record(&game_id).await;
                let named = record.map_err(store_error)?.is_some_and(|r| {
                    r.current_container_id.as_deref() == Some(input.container_id.as_str())
                });
                let busy = self.deps.redis.lease_is_held(&game_id).await;
                if named || busy.map_err(redis_error)? {
                    return Ok(false);
                }
            }
            let docker = &self.deps.docker;
            let removed = docker.remove_orphan(&input.container_id, &input.game_label).await;
            let removed = docker_result(removed, &ctx, &input.container_id)?;
            if removed {
                tracing::warn!(container_id = %input.container_id, game = %input.game_label,
                    "removed an orphan container");
            }
            Ok(removed)
        };

    place_game = PlaceGame(self, ctx, input: PlaceGameInput) -> Placement,
        game input.game_id.as_str() => async {
            let hosts = &self.deps.hosts;
            let placement = self
                .deps
                .store
                .place_game(&input.game_id, input.host.as_ref(), &hosts.shared_queue, hosts.down_after)
                .await
                .map_err(store_error)?;
            match &placement {
                Placement::Placed { route } => tracing::info!(host = %route.host_id, "placed"),
                Placement::Refused { message, .. } => tracing::info!(message, "not placed"),
            }
            Ok(placement)
        };

    stop_container = StopContainer(self, ctx, input: StopContainerInput) -> ContainerStopOutcome,
        game input.game_id.as_str() => async {
            let ask = StopAsk { timeout_secs: input.timeout_secs, signal: input.signal };
            let stop = self.deps.docker.stop(&input.game_id, &input.container_id, ask);
            let result = self.keeping_lease(&ctx, &input.game_id, &input.lease, stop).await?;
            docker_result(result, &ctx, &input.container_id)
        };

    ensure_container = EnsureContainer(self, ctx, input: EnsureContainerInput) -> String,
        game input.game_id.as_str() => async {
            let docker = &self.deps.docker;
            let ensure = docker.ensure_running(&input.game_id, &input.image_ref, &input.name);
            let result = self.keeping_lease(&ctx, &input.game_id, &input.lease, ensure).await?;
            docker_result(result, &ctx, &input.name)
        };

    remove_container = RemoveContainer(self, ctx, input: RemoveContainerInput) -> (),
        game input.game_id.as_str() => async {
            let removed = self.deps.docker.remove(&input.game_id, &input.container_id).await;
            docker_result(removed, &ctx, &input.container_id)
        };

    remove_stale_containers = RemoveStaleContainers(self, ctx, input: RemoveContainerInput) -> u32,
        game input.game_id.as_str() => async {
            let docker = &self.deps.docker;
            let removed = docker.remove_stale(&input.game_id, &input.container_id).await;
            docker_result(removed, &ctx, &input.container_id)
        };

    record_running = RecordRunning(self, ctx, input: RecordRunningInput) -> UpdateStatusOutcome,
        game input.game_id.as_str() => self.write_under_lease(
            &input.game_id,
            input.lease.as_ref(),
            (input.operation_id.as_str(), RuntimeStatus::Running),
            self.deps.store.record_running(
                &input.game_id,
                &input.operation_id,
                input.fence,
                &input.container_id,
                input.image_ref.as_str(),
                input.host_id.as_ref(),
            ),
        );

    update_status = UpdateStatus(self, ctx, input: UpdateStatusInput) -> UpdateStatusOutcome,
        game input.game_id.as_str() => self.write_under_lease(
            &input.game_id,
            input.lease.as_ref(),
            (input.operation_id.as_str(), input.to),
            self.deps.store.update_status(
                &input.game_id,
                &input.operation_id,
                input.expected_from,
                input.expected_container_id.as_deref(),
                input.to,
                input.fence,
            ),
        );

    publish_health = PublishHealth(self, ctx, event: HealthEvent) -> (),
        game event.game_id.as_str() => async {
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
                    Err(redis_error(err))
                }
            }
        };

    // The raw game id: invalid requests are audited too.
    append_operation_log = AppendOperationLog(self, ctx, entry: OperationEntry) -> (),
        game &entry.game_id => async {
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
                self.record_outcome(&entry);
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
        };
}

impl RuntimeActivities {
    /// What every activity does around its work: a span naming the activity, workflow, game and
    /// attempt, and the fault points `before:<Activity>` and, once the work succeeded,
    /// `after:<Activity>` (`RTMANAGER_FAULTS`, debug builds).
    async fn step<T>(
        &self,
        ctx: &ActivityContext,
        game_id: &str,
        work: impl std::future::Future<Output = Result<T, ActivityError>>,
    ) -> Result<T, ActivityError> {
        let info = ctx.info();
        let activity = info.activity_type.as_str();
        let span = tracing::info_span!(
            "activity",
            activity,
            workflow_id = info.workflow_id.as_deref().unwrap_or(""),
            game_id,
            op = info.workflow_type.as_deref().unwrap_or(""),
            attempt = info.attempt,
        );
        async {
            fault::point("before", activity).await;
            let result = work.await;
            if result.is_ok() {
                fault::point("after", activity).await;
            }
            result
        }
        .instrument(span)
        .await
    }

    /// The outcome metrics of one operation, counted once per operation.
    fn record_outcome(&self, entry: &OperationEntry) {
        let telemetry = &self.deps.telemetry;
        let outcome = entry.outcome.as_str();
        telemetry.record_operation_outcome(entry.op_kind.as_str(), outcome, &entry.op_source_label);
        if entry.op_kind == OpKind::Stop {
            telemetry.record_stop_outcome(outcome, &entry.reason_label, &entry.op_source_label);
        }
        if let Some(stop) = entry.stop {
            telemetry.record_container_stop(stop.signal.as_str(), stop.ended.as_str());
        }
    }

    /// The seed's `TryAcquire`, plus the takeover of a lease whose holder workflow closed:
    /// after the lock-delay (counted from the holder's close) the dead holder's exact token is
    /// swapped for this one with a higher fence. Returns the outcome and whether it took over.
    async fn acquire_or_take_over(
        &self,
        input: &AcquireLeaseInput,
        holder: &LeaseHolder,
    ) -> redis::RedisResult<(LeaseOutcome, bool)> {
        let (redis, ttl) = (&self.deps.redis, self.deps.lease_ttl);
        let (token, dead) = match redis
            .acquire_lease(&input.game_id, &input.secret, holder, ttl)
            .await?
        {
            Acquire::Acquired { fence } => return Ok((LeaseOutcome::Acquired { fence }, false)),
            // A holder without a run id is an operator tool, not a workflow: its lease stands
            // until it releases it or the TTL ends.
            Acquire::Held {
                token,
                holder: Some(dead),
            } if dead != *holder && !dead.run_id.is_empty() => (token, dead),
            Acquire::Held { .. } => return Ok((LeaseOutcome::HeldByOther, false)),
        };
        let closed_at = match self.deps.liveness.state(&dead).await {
            Ok(HolderState::Running) => return Ok((LeaseOutcome::HeldByOther, false)),
            Ok(HolderState::Closed { closed_at }) => closed_at,
            Err(err) => {
                tracing::warn!(holder = %dead.workflow_id, err = %err,
                    "cannot tell whether the lease holder still runs; leaving its lease");
                return Ok((LeaseOutcome::HeldByOther, false));
            }
        };
        let since_close = closed_at
            .and_then(|at| std::time::SystemTime::now().duration_since(at).ok())
            .unwrap_or_default();
        let lock_delay = self.deps.lease_lock_delay;
        tokio::time::sleep(lock_delay.saturating_sub(since_close)).await;
        // A step of the dead holder that is still in flight (a Docker stop) keeps renewing the
        // lease: wait until it has been quiet for the lock-delay, once, then give up.
        for last_try in [false, true] {
            let taken = redis
                .take_over_lease(
                    &input.game_id,
                    &token,
                    &input.secret,
                    holder,
                    ttl,
                    lock_delay,
                )
                .await?;
            match taken {
                TakeOver::Taken { fence } => {
                    tracing::warn!(
                        dead_holder = %dead.workflow_id,
                        dead_run = %dead.run_id,
                        fence,
                        "took over the game's lease from a closed workflow"
                    );
                    return Ok((LeaseOutcome::Acquired { fence }, true));
                }
                TakeOver::RenewedRecently { quiet_in } if !last_try => {
                    tokio::time::sleep(quiet_in.min(lock_delay)).await;
                }
                TakeOver::RenewedRecently { .. } | TakeOver::HeldByOther => break,
            }
        }
        Ok((LeaseOutcome::HeldByOther, false))
    }

    /// A record write proceeds only while Redis holds the writer's exact token: a forged or
    /// stale token writes nothing (`LeaseLost`). PostgreSQL's fence check still keeps out a
    /// stale write that races this check. A retry whose first attempt committed is recognised
    /// first (`Store::own_write`), so a lease lost after the commit cannot turn a done write
    /// into a refusal. Writers without a token (scheduled by an older worker) skip the check.
    /// `write` is lazy: it runs only after the check.
    async fn write_under_lease(
        &self,
        game_id: &GameId,
        lease: Option<&LeaseToken>,
        own: (&str, RuntimeStatus),
        write: impl std::future::Future<Output = Result<UpdateStatusOutcome, StoreError>>,
    ) -> Result<UpdateStatusOutcome, ActivityError> {
        if let Some(token) = lease {
            let held = self
                .deps
                .redis
                .lease_is_held_by(game_id, token)
                .await
                .map_err(redis_error)?;
            if !held {
                let (operation_id, to) = own;
                let done = self.deps.store.own_write(game_id, operation_id, to).await;
                return Ok(match done.map_err(store_error)? {
                    Some(record) => UpdateStatusOutcome::Updated { record },
                    None => UpdateStatusOutcome::LeaseLost,
                });
            }
        }
        write.await.map_err(store_error)
    }

    /// Runs a Docker call while heartbeating (so a dead worker is noticed and a cancellation
    /// arrives) and renewing the game's lease (so a stop longer than the lease TTL keeps it).
    /// A lease found lost is never renewed: the step ends with a definitive `conflict`.
    async fn keeping_lease<T>(
        &self,
        ctx: &ActivityContext,
        game_id: &GameId,
        lease: &LeaseToken,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, ActivityError> {
        tokio::pin!(work);
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        beat.tick().await;
        loop {
            tokio::select! {
                result = &mut work => return Ok(result),
                _ = ctx.cancelled() => return Err(ActivityError::cancelled()),
                _ = beat.tick() => {
                    let _ = ctx.record_heartbeat(()).await;
                    match self.deps.redis.renew_lease(game_id, lease, self.deps.lease_ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let message = "the game's lease was lost while Docker worked \
                                           (another operation took it)";
                            tracing::error!("{message}");
                            return Err(definitive(failure_type::CONFLICT, message));
                        }
                        // Redis briefly unreachable: the lease TTL still covers us.
                        Err(err) => tracing::warn!(err = %err, "renew game lease"),
                    }
                }
            }
        }
    }
}

/// Maps a Docker adapter result onto the activity error tiers.
fn docker_result<T>(
    result: Result<T, DockerError>,
    ctx: &ActivityContext,
    container: &str,
) -> Result<T, ActivityError> {
    match result {
        Ok(value) => Ok(value),
        Err(DockerError::Refused(message)) => {
            tracing::error!(container, "{message}");
            Err(definitive(failure_type::INTERNAL, message))
        }
        Err(DockerError::ImageMissing(message)) => {
            Err(definitive(failure_type::NOT_FOUND, message))
        }
        Err(DockerError::InvalidImage(message)) => {
            Err(definitive(failure_type::INVALID_REQUEST, message))
        }
        // The image does not stay up: the caller's image, not a fault of rtmanager.
        Err(DockerError::Crashed(message)) => {
            tracing::warn!(container, "{message}");
            Err(definitive(failure_type::INVALID_REQUEST, message))
        }
        Err(DockerError::Unavailable(message)) => {
            tracing::warn!(container, attempt = ctx.info().attempt, "docker: {message}");
            Err(retryable(message))
        }
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

/// Redis faults are transient: the step retries them.
fn redis_error(err: redis::RedisError) -> ActivityError {
    retryable(format!("redis: {err}"))
}

fn store_error(err: StoreError) -> ActivityError {
    match err {
        StoreError::Corrupt(message) => definitive(failure_type::INTERNAL, message),
        other => retryable(other.to_string()),
    }
}
