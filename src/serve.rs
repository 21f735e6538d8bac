//! `rtmanager serve`: the two ways in that listen — the HTTP bridge and the `runtime:stop_jobs`
//! consumer — in one process, sharing one Temporal client. `rtmanager run` adds the worker.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use rtmanager_activities::Telemetry;

use crate::{
    http::{self, ApiToken, BridgeState},
    stream::Consumer,
    worker, Config,
};

/// Runs the bridge and the consumer until `shutdown` is cancelled. Fails at once when no API
/// token is configured: the bridge never runs open.
pub async fn serve(
    config: &Config,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = worker::connect_temporal(config).await?;
    serve_with(config, telemetry, client, shutdown).await
}

/// [`serve`] on a given client (`rtmanager run` shares the worker's, for eager start).
pub async fn serve_with(
    config: &Config,
    telemetry: Telemetry,
    client: temporalio_client::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let token = ApiToken::new(
        config
            .api_token
            .as_ref()
            .map(|t| t.expose().to_owned())
            .unwrap_or_default(),
    )?;
    let deps = worker::build_dependencies(config, telemetry.clone(), &client)?;
    let state = Arc::new(BridgeState::new(
        client.clone(),
        config.task_queue.clone(),
        deps.store,
        deps.redis,
        deps.docker,
        token,
        telemetry,
        config.http_wait,
        config.http_body_limit,
    ));
    let consumer = Consumer::new(
        config.stream_settings(),
        client,
        config.task_queue.clone(),
        config.redis_url.expose(),
    )?;
    let bridge = http::serve(config.http_addr, state, shutdown.clone().cancelled_owned());
    let consume = consumer.run(shutdown.clone());
    let (bridge, consume) = tokio::join!(
        async {
            let result = bridge.await;
            // A bridge that cannot serve takes the process down with it.
            shutdown.cancel();
            result
        },
        consume
    );
    bridge.and(consume)
}
