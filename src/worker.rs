//! The Temporal worker: runs the migrations, builds the adapters once, registers the workflows
//! and activities on the configured task queue, and runs until `shutdown` resolves.
//!
//! Callers: `rtmanager worker` (with SIGTERM/SIGINT as `shutdown`) and the integration tests
//! (one worker per test, on its own task queue).

use secrecy::ExposeSecret;
use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use temporalio_client::{Client, ClientOptions, ConnectionOptions};
use temporalio_common::worker::WorkerDeploymentOptions;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

use rtmanager_activities::{
    ContainerSettings, Dependencies, DockerRuntime, RedisStore, RuntimeActivities, Store, Telemetry,
};
use rtmanager_workflows::{
    PatchRuntimeWorkflow, RestartRuntimeWorkflow, StartRuntimeWorkflow, StopRuntimeWorkflow,
};

use crate::{liveness::TemporalLiveness, Config};

/// Connects a Temporal client for `config`'s address and namespace.
pub async fn connect_temporal(config: &Config) -> anyhow::Result<Client> {
    let url = url::Url::parse(&config.temporal_address)?;
    let connection = ConnectionOptions::new(url)
        .identity(format!("rtmanager@{}", std::process::id()))
        .connect_timeout(Duration::from_secs(5))
        .build();
    let client = Client::connect(
        connection,
        ClientOptions::new(config.namespace.clone()).build(),
    )
    .await
    .with_context(|| format!("connect to Temporal at {}", config.temporal_address))?;
    Ok(client)
}

/// The adapters a worker owns, built once and shared by every activity. `client` answers
/// whether a lease holder's workflow still runs.
pub fn build_dependencies(
    config: &Config,
    telemetry: Telemetry,
    client: &Client,
) -> anyhow::Result<Dependencies> {
    let store = Store::new(
        config.database_url.expose_secret(),
        config.database_pool_size,
    )?;
    let redis = RedisStore::new(config.redis_url.expose_secret(), config.redis_keys())?;
    let settings = config.step_settings();
    let docker = DockerRuntime::connect(
        &config.docker_host,
        settings.docker_stop_timeout() + Duration::from_secs(5),
        config.stop_timeout,
        ContainerSettings {
            network: config.container_network.clone(),
            settle: config.start_settle,
        },
    )
    .with_context(|| format!("docker at {}", config.docker_host))?;
    Ok(Dependencies {
        store,
        redis: Arc::new(redis),
        docker,
        telemetry,
        lease_ttl: config.lease_ttl,
        liveness: Arc::new(TemporalLiveness::new(
            client.clone(),
            config.namespace.clone(),
        )),
        lease_lock_delay: config.lease_lock_delay,
    })
}

/// Runs one worker on `client` with the adapters in `deps` until `shutdown` resolves, then
/// drains in-flight tasks. A bridge that starts workflows through the same client gets eager
/// workflow start: the server hands the first workflow task straight to this worker instead of
/// dispatching it through the task queue.
pub async fn run_worker(
    config: &Config,
    client: Client,
    deps: Dependencies,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let applied = rtmanager_activities::store::run_migrations(config.database_url.expose_secret())
        .await
        .context("run database migrations")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied migrations");
    }
    let runtime = Runtime::from_current_tokio(Default::default())?;
    let settings = config.step_settings();
    let (stop, start, restart, patch) = (
        settings.clone(),
        settings.clone(),
        settings.clone(),
        settings,
    );
    let options = WorkerOptions::new(config.task_queue.clone())
        .register_activities(RuntimeActivities::new(deps))
        .register_workflow_with_factory::<StopRuntimeWorkflow, _>(move || {
            StopRuntimeWorkflow::new(stop.clone())
        })?
        .register_workflow_with_factory::<StartRuntimeWorkflow, _>(move || {
            StartRuntimeWorkflow::new(start.clone())
        })?
        .register_workflow_with_factory::<RestartRuntimeWorkflow, _>(move || {
            RestartRuntimeWorkflow::new(restart.clone())
        })?
        .register_workflow_with_factory::<PatchRuntimeWorkflow, _>(move || {
            PatchRuntimeWorkflow::new(patch.clone())
        })?
        .sticky_queue_schedule_to_start_timeout(config.sticky_queue_timeout)
        // Every operation is one workflow task (local activities), so new workflows, which
        // arrive on the normal queue, get as many pollers as sticky ones.
        .nonsticky_to_sticky_poll_ratio(1.0)
        .workflow_task_poller_behavior(temporalio_sdk::runtime::PollerBehavior::SimpleMaximum(
            config.workflow_pollers,
        ))
        .deployment_options(WorkerDeploymentOptions::from_build_id(
            config.build_id.clone(),
        ))
        .graceful_shutdown_period(config.stop_timeout + Duration::from_secs(5))
        .build();
    let mut worker = Worker::new(&runtime, client, options)?;
    let initiate_shutdown = worker.shutdown_handle();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down the worker: finishing in-flight tasks");
        initiate_shutdown();
    });
    tracing::info!(
        task_queue = %config.task_queue,
        namespace = %config.namespace,
        temporal = %config.temporal_address,
        "rtmanager worker started"
    );
    worker.run().await?;
    tracing::info!("rtmanager worker stopped");
    Ok(())
}
