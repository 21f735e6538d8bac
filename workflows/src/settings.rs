//! Timeouts and retry shapes the workflows give their activities.

use std::time::Duration;

/// Per-worker step settings, captured by the workflow factory at registration.
///
/// They shape activity *options* only (timeouts, retries, local versus normal activity), never
/// the sequence of commands. Changing `local_fast_steps` between a workflow's start and its
/// replay on another worker would change its history shape: change it only with a drained
/// task queue.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSettings {
    /// Docker's graceful stop timeout (signal to SIGKILL) when neither the request nor the
    /// container's label names one. A Docker step's own timeout is derived from the longest
    /// wait it may meet plus `docker_queue_allowance`.
    pub graceful_stop_timeout: Duration,
    /// Extra time a Docker call may wait in dockerd's queue during a mass stop (dockerd tears
    /// containers down one at a time, ~15/s).
    pub docker_queue_allowance: Duration,
    /// Run the sub-millisecond steps (lease, record load, CAS, audit log, health publish) as
    /// local activities: one workflow task instead of a server round trip per step. Every such
    /// step is idempotent, which local activities require (they re-run whole after a crash).
    pub local_fast_steps: bool,
    /// Run the Docker steps as local activities too: the whole operation then completes in one
    /// workflow task instead of paying an activity dispatch, a completion and a second workflow
    /// task (~15 ms measured by `rtmanager bench`). Docker steps are idempotent (a re-run after
    /// a crash finds the container already stopped, or adopts it), renew the lease themselves,
    /// and a long one keeps its workflow task alive through the SDK's heartbeats.
    pub local_docker_steps: bool,
    /// Attempts of each fast step before its failure code is returned.
    pub fast_step_attempts: u32,
    /// Attempts of a Docker call before `service_unavailable` is returned.
    pub docker_attempts: u32,
    /// How long after its holder workflow closed a lease may be taken over; the lease acquire
    /// may wait this long, so its attempt timeout grows by it.
    pub lease_lock_delay: Duration,
    /// How long a Docker step sent to another host's task queue waits for that host's worker
    /// to take it before the operation answers `service_unavailable` (a host that is down).
    pub host_wait: Duration,
    /// Set the `GameId`, `OpKind`, `OpSource` and `Outcome` search attributes (registered on
    /// the namespace: the worker checks at start).
    pub search_attributes: bool,
    /// Give every step its input as its summary, which the Web UI shows (lease secrets left
    /// out); costs up to 200 characters of history per step.
    pub step_summaries: bool,
}

impl Default for StepSettings {
    fn default() -> Self {
        Self {
            graceful_stop_timeout: Duration::from_secs(10),
            docker_queue_allowance: Duration::from_secs(60),
            local_fast_steps: true,
            local_docker_steps: true,
            fast_step_attempts: 5,
            docker_attempts: 4,
            lease_lock_delay: Duration::from_secs(5),
            host_wait: Duration::from_secs(30),
            search_attributes: true,
            step_summaries: true,
        }
    }
}
