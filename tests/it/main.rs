//! rtmanager's integration tests, in one binary so that a clean build links the SDK once: each
//! module drives the public entry points (workflows through Temporal, the HTTP bridge, the
//! stream, the CLI) against the real services `scripts/dev` runs, with a harness
//! ([`common`]) that gives every test its own database, task queue, Redis key prefix and
//! labelled containers. `tests/restarts.rs` is a binary of its own: it restarts the shared
//! services, so nothing may run beside it.
//!
//! One module: `scripts/dev test --test it stop_runtime::`.

mod common;

mod bench;
mod cli;
mod compose;
mod crash;
mod faults;
mod hosts;
mod http_bridge;
mod leases;
mod lifecycle;
mod normal_activities;
mod openapi_fuzz;
mod operability;
mod races;
mod replay;
mod security;
mod seed_branches;
mod stop_jobs;
mod stop_runtime;
mod stop_signals;
mod temporal_cli;
mod watch;
