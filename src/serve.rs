//! `rtmanager serve`: the two ways in that listen — the HTTP bridge and the `runtime:stop_jobs`
//! consumer — in one process, sharing one Temporal client. `rtmanager run` adds the worker.

use secrecy::ExposeSecret;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use rtmanager_activities::{Dependencies, DockerRuntime, RedisStore, Store, Telemetry};

use crate::{
    client::Router,
    http::{self, ApiToken, BridgeState},
    stream::Consumer,
    Config,
};

/// The adapters the bridge reads through (records, readiness checks, metrics): handles on the
/// ones the process built once, shared with its worker under `rtmanager run`.
pub struct Adapters {
    store: Store,
    redis: Arc<RedisStore>,
    docker: DockerRuntime,
    telemetry: Telemetry,
}

impl Adapters {
    /// Handles on `deps`' adapters (pools and clients are shared, not rebuilt).
    pub fn of(deps: &Dependencies) -> Self {
        Self {
            store: deps.store.clone(),
            redis: deps.redis.clone(),
            docker: deps.docker.clone(),
            telemetry: deps.telemetry.clone(),
        }
    }
}

/// Runs the bridge and the consumer on `client` and `adapters` until `shutdown` is cancelled.
/// Fails at once when no API token is configured: the bridge never runs open.
pub async fn serve(
    config: &Config,
    client: temporalio_client::Client,
    adapters: Adapters,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let token = ApiToken::new(
        config
            .api_token
            .as_ref()
            .map(|t| t.expose_secret().to_owned())
            .unwrap_or_default(),
    )?;
    let router = Router::new(
        adapters.store.clone(),
        config.task_queue.clone(),
        config.host_down_after,
    )
    .with_search_attributes(config.search_attributes);
    let state = Arc::new(BridgeState::new(
        client.clone(),
        router.clone(),
        adapters.store,
        adapters.redis,
        adapters.docker,
        token,
        adapters.telemetry,
        config.http_wait,
        config.http_body_limit,
    ));
    let consumer = Consumer::new(
        config.stream_settings(),
        client,
        router,
        config.redis_url.expose_secret(),
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
