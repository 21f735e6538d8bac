//! The Temporal worker: runs the migrations, builds the adapters once, registers the workflows
//! and activities on the configured task queue, and runs until `shutdown` resolves.
//!
//! Callers: `rtmanager worker` (with SIGTERM/SIGINT as `shutdown`) and the integration tests
//! (one worker per test, on its own task queue).

use secrecy::ExposeSecret;
use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use temporalio_client::{Client, ClientOptions, ClientTlsOptions, ConnectionOptions, TlsOptions};
use temporalio_common::worker::WorkerDeploymentOptions;
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

use rtmanager_activities::{
    ContainerSettings, Dependencies, DockerRuntime, RedisStore, RuntimeActivities, Store, Telemetry,
};
use rtmanager_workflows::{
    PatchRuntimeWorkflow, ReconcileHostWorkflow, RestartRuntimeWorkflow, StartRuntimeWorkflow,
    StopRuntimeWorkflow,
};

use crate::{
    client::{self, Router},
    liveness::TemporalLiveness,
    watcher::{CrashRestarts, Watcher},
    Config,
};

/// Connects a Temporal client for `config`'s address and namespace, over TLS (and with an API
/// key) when configured: a production cluster or Temporal Cloud.
pub async fn connect_temporal(config: &Config) -> anyhow::Result<Client> {
    let url = url::Url::parse(&config.temporal_address)?;
    let connection = ConnectionOptions::new(url)
        .identity(format!("rtmanager@{}", std::process::id()))
        .connect_timeout(Duration::from_secs(5))
        .maybe_tls_options(temporal_tls(config)?)
        .maybe_api_key(
            config
                .temporal_api_key
                .as_ref()
                .map(|key| key.expose_secret().to_owned()),
        )
        .build();
    let client = Client::connect(
        connection,
        ClientOptions::new(config.namespace.clone()).build(),
    )
    .await
    .with_context(|| format!("connect to Temporal at {}", config.temporal_address))?;
    Ok(client)
}

/// TLS settings for the Temporal connection: `None` for a plain `http://` address with no TLS
/// setting (the local dev server). A file that cannot be read stops the process with its name.
pub fn temporal_tls(config: &Config) -> anyhow::Result<Option<TlsOptions>> {
    let wanted = config.temporal_address.starts_with("https://")
        || config.temporal_tls_ca.is_some()
        || config.temporal_tls_cert.is_some()
        || config.temporal_tls_domain.is_some()
        || config.temporal_api_key.is_some();
    if !wanted {
        return Ok(None);
    }
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("read the Temporal {what} {}", path.display()))
    };
    let client = match (&config.temporal_tls_cert, &config.temporal_tls_key) {
        (Some(cert), Some(key)) => Some(
            ClientTlsOptions::builder()
                .client_cert(read(cert, "client certificate")?)
                .client_private_key(read(key, "client key")?)
                .build(),
        ),
        (None, None) => None,
        _ => {
            anyhow::bail!("RTMANAGER_TEMPORAL_TLS_CERT and RTMANAGER_TEMPORAL_TLS_KEY go together")
        }
    };
    let ca = config
        .temporal_tls_ca
        .as_deref()
        .map(|path| read(path, "CA certificate"))
        .transpose()?;
    Ok(Some(
        TlsOptions::builder()
            .maybe_server_root_ca_cert(ca)
            .maybe_domain(config.temporal_tls_domain.clone())
            .maybe_client_tls_options(client)
            .build(),
    ))
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
        settings.graceful_stop_timeout + settings.docker_queue_allowance + Duration::from_secs(5),
        config.stop_timeout,
        ContainerSettings {
            network: config.container_network.clone(),
            settle: config.start_settle,
            pool: config.task_queue.clone(),
        },
    )
    .with_context(|| format!("docker at {}", config.docker_host))?
    .limited(config.docker_concurrency, &telemetry);
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
        hosts: config.host_settings(),
        reconcile: rtmanager_activities::ReconcileSettings {
            remove_orphans: config.remove_orphans,
            orphan_grace: config.orphan_grace,
        },
    })
}

/// Runs this host's worker on `client` with the adapters in `deps` until `shutdown` resolves,
/// then drains in-flight tasks. It polls two task queues with the same workflows and
/// activities: the host's own (`<task queue>@<host>`), where clients send the operations of
/// games on this host and every Docker step for this host lands, and the shared one, where
/// workflows started without a host in mind (the `temporal` CLI, new games) run until they
/// know the game's host. It registers its host and heartbeats it meanwhile.
///
/// A bridge that starts workflows through the same client gets eager workflow start: the
/// server hands the first workflow task straight to this worker instead of dispatching it
/// through the task queue.
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
    if config.search_attributes {
        ensure_search_attributes(&client, &config.namespace).await?;
    }
    let telemetry = temporalio_common::telemetry::TelemetryOptions::builder()
        .maybe_metrics(crate::telemetry::sdk::meter())
        .build();
    let options = temporalio_sdk::runtime::RuntimeOptions::builder()
        .telemetry_options(telemetry)
        .build()
        .map_err(anyhow::Error::msg)?;
    let runtime = Runtime::from_current_tokio(options)?;
    // Registered before the first poll: a start this worker picks up can be placed here.
    let registration = config.host_registration();
    if let Err(err) = deps.store.heartbeat_host(&registration).await {
        tracing::warn!(host = %registration.id, err = %err, "register the host");
    }
    let heartbeat = tokio::spawn(heartbeat(
        deps.store.clone(),
        config.host_registration(),
        config.host_heartbeat,
        config.host_down_after,
    ));
    let host_queue = config.host_task_queue();
    let mut host_worker = Worker::new(
        &runtime,
        client.clone(),
        worker_options(config, &host_queue, deps.clone())?,
    )?;
    let mut shared_worker = Worker::new(
        &runtime,
        client.clone(),
        worker_options(config, &config.task_queue, deps.clone())?,
    )?;
    let (stop_host, stop_shared) = (
        host_worker.shutdown_handle(),
        shared_worker.shutdown_handle(),
    );
    let stopping = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down the worker: finishing in-flight tasks");
            stopping.cancel();
            stop_host();
            stop_shared();
        }
    });
    if config.watch_events {
        let restarts = config.restart_on_crash.then(|| CrashRestarts {
            client: client.clone(),
            router: Router::new(
                deps.store.clone(),
                config.task_queue.clone(),
                config.host_down_after,
            )
            .with_search_attributes(config.search_attributes),
            limit: config.crash_loop_limit,
            window: config.crash_loop_window,
        });
        let watcher = Watcher::new(deps.clone(), config.host_id.clone(), restarts);
        tokio::spawn(watcher.run(stopping.clone().cancelled_owned()));
    }
    if !config.reconcile_interval.is_zero() {
        let every = config.reconcile_interval;
        if let Err(err) =
            client::ensure_reconcile_schedule(&client, &config.task_queue, &config.host_id, every)
                .await
        {
            // The worker still serves operations; the next start tries again.
            tracing::error!(err = %format!("{err:#}"), "create the reconcile schedule");
        }
    }
    tracing::info!(
        host = %config.host_id,
        host_task_queue = %host_queue,
        task_queue = %config.task_queue,
        namespace = %config.namespace,
        temporal = %config.temporal_address,
        "rtmanager worker started"
    );
    let ran = tokio::try_join!(host_worker.run(), shared_worker.run());
    heartbeat.abort();
    ran?;
    tracing::info!("rtmanager worker stopped");
    Ok(())
}

/// Registers the search attributes the workflows set (Keyword) on `namespace` unless they are
/// there. A workflow that sets an unregistered one fails its workflow task and stays stuck, so
/// a worker that cannot register them refuses to start, saying how to do it by hand.
pub async fn ensure_search_attributes(client: &Client, namespace: &str) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use temporalio_client::tonic::Request;
    use temporalio_common::protos::temporal::api::{
        enums::v1::IndexedValueType,
        operatorservice::v1::{AddSearchAttributesRequest, ListSearchAttributesRequest},
    };
    let names = rtmanager_workflows::operation::search::NAMES;
    let mut service = client.connection().operator_service();
    let list = || ListSearchAttributesRequest {
        namespace: namespace.to_owned(),
    };
    let listed = service
        .list_search_attributes(Request::new(list()))
        .await
        .context("list the namespace's search attributes")?
        .into_inner();
    let missing: HashMap<String, i32> = names
        .iter()
        .filter(|name| !listed.custom_attributes.contains_key(**name))
        .map(|name| ((*name).to_owned(), IndexedValueType::Keyword as i32))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let added = service
        .add_search_attributes(Request::new(AddSearchAttributesRequest {
            search_attributes: missing.clone(),
            namespace: namespace.to_owned(),
        }))
        .await;
    if let Err(err) = added {
        // Another worker may have added them meanwhile.
        let listed = service
            .list_search_attributes(Request::new(list()))
            .await?
            .into_inner();
        if missing
            .keys()
            .any(|n| !listed.custom_attributes.contains_key(n))
        {
            anyhow::bail!(
                "the search attributes {names:?} are not registered on namespace {namespace} and \
                 could not be added ({}): register them (`temporal operator search-attribute \
                 create --namespace {namespace} --name GameId --type Keyword`, likewise OpKind, \
                 OpSource and Outcome) or set RTMANAGER_SEARCH_ATTRIBUTES=false",
                err.message()
            );
        }
    }
    tracing::info!(added = ?missing.keys().collect::<Vec<_>>(), "registered search attributes");
    Ok(())
}

/// One SDK worker's options: the four workflows (with the step settings) and the activities.
fn worker_options(
    config: &Config,
    task_queue: &str,
    deps: Dependencies,
) -> anyhow::Result<WorkerOptions> {
    let settings = config.step_settings();
    // Each workflow type gets a factory that hands its instances the worker's step settings.
    macro_rules! with_workflows {
        ($options:expr, $($workflow:ty),+) => {{
            let options = $options;
            $(let options = {
                let settings = settings.clone();
                options.register_workflow_with_factory::<$workflow, _>(move || {
                    <$workflow>::new(settings.clone())
                })?
            };)+
            options
        }};
    }
    let options = WorkerOptions::new(task_queue.to_owned());
    let options = options.register_activities(RuntimeActivities::new(deps));
    Ok(with_workflows!(
        options,
        StopRuntimeWorkflow,
        StartRuntimeWorkflow,
        RestartRuntimeWorkflow,
        PatchRuntimeWorkflow,
        ReconcileHostWorkflow
    )
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
    .build())
}

/// Registers the host and renews its heartbeat every `every`; marks hosts whose heartbeat is
/// older than `down_after` as down. A failed beat is logged and retried at the next tick: a
/// short database outage must not stop the worker (other workers see the host go down only if
/// it lasts `down_after`).
async fn heartbeat(
    store: Store,
    host: rtmanager_activities::HostRegistration,
    every: Duration,
    down_after: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(err) = store.heartbeat_host(&host).await {
            tracing::warn!(host = %host.id, err = %err, "host heartbeat");
            continue;
        }
        match store.mark_down_hosts(down_after).await {
            Ok(marked) if !marked.is_empty() => {
                tracing::warn!(hosts = ?marked, "hosts missed their heartbeats: marked down");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(err = %err, "mark silent hosts down"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn tls_is_off_for_a_plain_address_and_on_for_https_or_any_tls_setting() {
        assert!(temporal_tls(&config(&[]).unwrap()).unwrap().is_none());
        let https = config(&[(
            "RTMANAGER_TEMPORAL_ADDRESS",
            "https://temporal.example:7233",
        )]);
        assert!(temporal_tls(&https.unwrap()).unwrap().is_some());
        let key = config(&[("RTMANAGER_TEMPORAL_API_KEY", "secret-key")]).unwrap();
        assert!(temporal_tls(&key).unwrap().is_some());
        assert!(
            !format!("{key:?}").contains("secret-key"),
            "the key is a secret"
        );
    }

    #[test]
    fn a_tls_file_that_cannot_be_read_is_named() {
        let ca = config(&[("RTMANAGER_TEMPORAL_TLS_CA", "/nonexistent/ca.pem")]).unwrap();
        let err = format!("{:#}", temporal_tls(&ca).unwrap_err());
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        // A client certificate goes with its key.
        let half = config(&[("RTMANAGER_TEMPORAL_TLS_CERT", "/etc/client.pem")]);
        assert!(half.is_err());
        let dir = std::env::temp_dir().join(format!("rtm-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert, "cert").unwrap();
        std::fs::write(&key, "key").unwrap();
        let mtls = config(&[
            ("RTMANAGER_TEMPORAL_TLS_CERT", cert.to_str().unwrap()),
            ("RTMANAGER_TEMPORAL_TLS_KEY", key.to_str().unwrap()),
        ])
        .unwrap();
        let tls = temporal_tls(&mtls).unwrap().expect("mTLS");
        let client = tls.client_tls_options.expect("a client certificate");
        assert_eq!(
            (client.client_cert, client.client_private_key),
            (b"cert".to_vec(), b"key".to_vec())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
