//! Composition, once per process: the Temporal connection and the adapters (PostgreSQL pool,
//! Redis, Docker, metrics) are built here and nowhere else. `rtmanager worker`, `serve` and
//! `run` each build one [`Parts`] and pick what to run on it, so `run` gives its worker and its
//! bridge one client (eager workflow start) and one set of adapters.

use rtmanager_activities::{Dependencies, Telemetry};
use temporalio_client::Client;

use crate::{worker, Config};

/// What a long-running process runs on.
pub struct Parts {
    /// The one Temporal client of the process.
    pub client: Client,
    /// The adapters, shared by the worker's activities and the bridge.
    pub deps: Dependencies,
}

/// Connects to Temporal and builds the adapters. Connections to PostgreSQL and Redis are opened
/// lazily, so a process starts while they are down and its steps retry until they are back.
pub async fn build(config: &Config) -> anyhow::Result<Parts> {
    let client = worker::connect_temporal(config).await?;
    let deps = worker::build_dependencies(config, Telemetry::new(), &client)?;
    Ok(Parts { client, deps })
}
