//! The `rtmanager` composition root: configuration, telemetry, the Temporal worker and the
//! client used by the CLI and the tests. It wires `rtmanager-workflows` (deterministic
//! orchestration) to `rtmanager-activities` (adapters) and holds no business logic.

#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod http;
pub mod liveness;
pub mod operator;
pub mod serve;
pub mod startup;
pub mod stream;
pub mod telemetry;
pub mod watcher;
pub mod worker;

pub use config::Config;
