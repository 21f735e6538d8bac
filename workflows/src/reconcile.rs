//! `ReconcileHost`: one round of repairing the drift between a host's records and its Docker
//! engine. A Temporal Schedule starts it per host (`RTMANAGER_RECONCILE_INTERVAL_SECS`, overlap
//! policy skip); `rtmanager reconcile` starts one at once.
//!
//! The round scans the host (`ScanHost`, on the host: its Docker engine answers). Each
//! `running` record whose container exited or is gone is repaired by a `StopRuntime` child with
//! `op_source` `reconciler`: one operation, one audit row, under the game's lease and its fence,
//! like any stop. A gone container takes the stop's vanished path (`removed`,
//! `container_disappeared`); an exited one is recorded `stopped` and `container_exited` is
//! published, once per container whoever saw it first (the events watcher or this round). A game
//! whose lease is held is left for the next round. Orphans (labelled containers of this
//! deployment that no record names) are reported as `orphan_container` and removed only when the
//! worker says so (`RTMANAGER_REMOVE_ORPHANS`, after `RTMANAGER_ORPHAN_GRACE_SECS`).
//!
//! The round itself writes no audit row: its repairs do. Its output is the [`ReconcileReport`].

use serde::{Deserialize, Serialize};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_workflow::{common::data_converters::RawValue, WorkflowContext, WorkflowResult};

use rtmanager_domain::{
    GameId, HostId, LifecycleRequest, OpSource, Outcome, SourceRef, StopReason, StopRequest,
};

use crate::{
    contract::{
        crash_event, ContainerState, HealthEvent, HostScan, PublishHealth, RemoveOrphan,
        RemoveOrphanInput, ScanHost, ScanHostInput, ORPHAN_CONTAINER,
    },
    operation::BEST_EFFORT_ATTEMPTS,
    stop::StopRuntimeWorkflow,
    support::{
        request_bytes, run_child, run_step, workflow_now, Cancel, StepFailure, StepShape,
        FAST_STEP_TIMEOUT,
    },
    StepSettings,
};

/// What one round found and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// The host reconciled.
    pub host_id: String,
    /// `running` records compared with Docker.
    pub records_checked: u32,
    /// Labelled containers of this deployment on the host's engine.
    pub containers_checked: u32,
    /// Each drifted record and how its repair ended.
    pub repaired: Vec<Repair>,
    /// Each orphan and whether the round removed it.
    pub orphans: Vec<OrphanReport>,
    /// Games skipped because an operation held their lease.
    pub busy: Vec<String>,
    /// Why the round could not scan the host (bad input, host down); `None` when it ran.
    pub error: Option<String>,
}

/// One repair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repair {
    /// The game.
    pub game_id: String,
    /// The container its record named.
    pub container_id: String,
    /// What had become of it.
    pub found: ContainerState,
    /// The repair's outcome (`success`: the record now says so).
    pub outcome: Outcome,
    /// The repair's error code, if any (`conflict`: the game's lease was taken meanwhile).
    pub error_code: Option<String>,
}

/// One orphan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrphanReport {
    /// The container.
    pub container_id: String,
    /// Its game label.
    pub game_label: String,
    /// Seconds since it was first seen as an orphan.
    pub orphan_for_secs: u64,
    /// Whether this round removed it.
    pub removed: bool,
}

/// The `ReconcileHost` workflow; input `{"host_id"}`.
#[workflow]
#[derive(Default)]
pub struct ReconcileHostWorkflow {
    settings: StepSettings,
}

impl ReconcileHostWorkflow {
    /// The workflow as the worker's factory builds it, with the worker's step options.
    pub fn new(settings: StepSettings) -> Self {
        Self { settings }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileInput {
    host_id: HostId,
}

// `#[workflow_methods]` generates an undocumented constant per method; it copies each method's
// `#[allow]` attributes onto it, hence the `allow(missing_docs)` on the documented `run`.
#[workflow_methods]
impl ReconcileHostWorkflow {
    /// Input: `{"host_id"}` as raw JSON; output: the [`ReconcileReport`].
    #[allow(missing_docs)]
    #[run(name = "ReconcileHost")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: RawValue,
    ) -> WorkflowResult<ReconcileReport> {
        let settings = ctx.state(|s| s.settings.clone());
        let parsed = request_bytes(&input).and_then(|bytes| {
            serde_json::from_slice::<ReconcileInput>(bytes)
                .map_err(|err| format!("reconcile input: {err}"))
        });
        let host = match parsed {
            Ok(input) => input.host_id,
            Err(error) => {
                return Ok(ReconcileReport {
                    error: Some(error),
                    ..Default::default()
                })
            }
        };
        Ok(reconcile(ctx, &settings, host).await)
    }
}

async fn reconcile<W>(
    ctx: &WorkflowContext<W>,
    settings: &StepSettings,
    host: HostId,
) -> ReconcileReport {
    // The shared queue is this workflow's own, or the one its host queue derives from.
    let own = ctx.task_queue().to_owned();
    let shared = own.split('@').next().unwrap_or_default();
    let host_queue = host.task_queue(shared);
    let remote = (host_queue != own).then_some(host_queue.as_str());
    let mut report = ReconcileReport {
        host_id: host.to_string(),
        ..Default::default()
    };
    let scan_input = ScanHostInput {
        host_id: host.clone(),
    };
    let grace = settings.graceful_stop_timeout;
    let shape = StepShape::docker(settings, Cancel::WithWorkflow, remote, grace);
    let scanned = run_step(ctx, ScanHost, scan_input, shape);
    let scan: HostScan = match scanned.await {
        Ok(scan) => scan,
        Err(err) => {
            report.error = Some(format!(
                "scan host {host}: {}",
                StepFailure::from(err).message
            ));
            return report;
        }
    };
    report.records_checked = scan.records_checked;
    report.containers_checked = scan.containers_checked;
    report.busy = scan.busy.iter().map(|g| g.to_string()).collect();

    for drift in scan.drift {
        let stop = StopRequest::new(
            drift.game_id.clone(),
            StopReason::Finished,
            OpSource::Reconciler,
            SourceRef::parse(ctx.workflow_id()).ok(),
        );
        let child_id = format!("{}/stop-{}", ctx.workflow_id(), drift.game_id);
        let stop = LifecycleRequest::Stop(stop);
        let output = run_child(ctx, StopRuntimeWorkflow::run, child_id, &stop).await;
        let repaired = output.is_success() && output.error_code.is_none();
        if let (
            true,
            ContainerState::Exited {
                exit_code,
                oom_killed,
            },
        ) = (repaired, drift.state)
        {
            let (game, container) = (&drift.game_id, &drift.container_id);
            let event = crash_event(game, container, exit_code, oom_killed, workflow_now(ctx));
            publish(ctx, settings, event).await;
        }
        report.repaired.push(Repair {
            game_id: drift.game_id.to_string(),
            container_id: drift.container_id,
            found: drift.state,
            outcome: output.outcome,
            error_code: output.error_code.map(|code| code.to_string()),
        });
    }

    for orphan in scan.orphans {
        if let Ok(game_id) = GameId::parse(&orphan.game_label) {
            let event = HealthEvent {
                operation_id: format!("orphan:{}", orphan.container_id),
                game_id,
                container_id: Some(orphan.container_id.clone()),
                event_type: ORPHAN_CONTAINER.into(),
                occurred_at: workflow_now(ctx),
                details: serde_json::json!({ "running": orphan.running }),
            };
            publish(ctx, settings, event).await;
        }
        let mut removed = false;
        if orphan.remove {
            let input = RemoveOrphanInput {
                container_id: orphan.container_id.clone(),
                game_label: orphan.game_label.clone(),
            };
            let grace = settings.graceful_stop_timeout;
            let shape = StepShape::docker(settings, Cancel::Detached, remote, grace);
            let step = run_step(ctx, RemoveOrphan, input, shape);
            removed = step.await.unwrap_or(false);
        }
        report.orphans.push(OrphanReport {
            container_id: orphan.container_id,
            game_label: orphan.game_label,
            orphan_for_secs: orphan.orphan_for_secs,
            removed,
        });
    }
    report
}

/// Best effort, like every health event: the activity logs a failure.
async fn publish<W>(ctx: &WorkflowContext<W>, settings: &StepSettings, event: HealthEvent) {
    let attempts = BEST_EFFORT_ATTEMPTS;
    let shape = StepShape::fast(settings, attempts, Cancel::Detached, FAST_STEP_TIMEOUT);
    let _ = run_step(ctx, PublishHealth, event, shape).await;
}
