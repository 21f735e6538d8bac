//! Is a lease's holder still running? The lease names the workflow run that took it
//! ([`LeaseHolder`]); an acquire that meets a lease asks Temporal about that run through
//! [`HolderLiveness`], so that a lease left behind by a terminated or timed-out workflow is taken
//! over after a short lock-delay instead of blocking the game until the lease TTL runs out.
//!
//! The trait keeps this crate free of a Temporal client: the composition root implements it
//! with `DescribeWorkflowExecution`.

use std::time::SystemTime;

use futures::future::BoxFuture;

pub use crate::redis_store::LeaseHolder;

/// What Temporal says about a lease holder's workflow run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderState {
    /// The run is open: its lease stands.
    Running,
    /// The run closed (completed, failed, terminated, timed out, cancelled), or Temporal does not
    /// know it (`closed_at` is then `None`). Its steps may still be in flight on a worker that
    /// has not noticed yet, hence the lock-delay before a takeover.
    Closed {
        /// The lock-delay counts from here; from the acquire itself when `None`.
        closed_at: Option<SystemTime>,
    },
}

/// Asks whether a lease holder's workflow run is still open.
pub trait HolderLiveness: Send + Sync {
    /// The holder's state; an error (Temporal unreachable) leaves the lease standing.
    fn state<'a>(&'a self, holder: &'a LeaseHolder) -> BoxFuture<'a, anyhow::Result<HolderState>>;
}

/// A liveness source that never reports a holder closed: leases then last until their TTL.
/// For tools that take leases outside a worker.
pub struct NeverClosed;

impl HolderLiveness for NeverClosed {
    fn state<'a>(&'a self, _: &'a LeaseHolder) -> BoxFuture<'a, anyhow::Result<HolderState>> {
        Box::pin(async { Ok(HolderState::Running) })
    }
}
