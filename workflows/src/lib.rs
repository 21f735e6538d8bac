//! rtmanager's Temporal workflows: deterministic orchestration only.
//!
//! This crate holds no adapters (no tokio I/O, bollard, redis or diesel): each side effect is an
//! activity whose contract — name, input and output — lives in [`contract`] and whose
//! implementation lives in `rtmanager-activities`. Workflows parse their own raw input
//! ([`support::request_bytes`]) so bad input completes with `invalid_request` instead of
//! looping on workflow-task failures.
//!
//! Callers: the worker (`rtmanager worker`) registers the workflows; clients start them by the
//! names pinned in `#[run(name = ...)]`.

#![warn(missing_docs)]

pub mod contract;
pub mod operation;
pub mod reconcile;
pub mod replace;
pub mod settings;
pub mod start;
pub mod stop;
pub mod support;

pub use reconcile::{ReconcileHostWorkflow, ReconcileReport};
pub use replace::{PatchRuntimeWorkflow, RestartRuntimeWorkflow};
pub use settings::StepSettings;
pub use start::StartRuntimeWorkflow;
pub use stop::StopRuntimeWorkflow;
