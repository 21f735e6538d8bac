//! Whether a lease holder's workflow run is still open, asked of Temporal
//! (`DescribeWorkflowExecution`). The activities use it to take over a lease whose holder was
//! terminated or timed out instead of waiting out the lease TTL.

use futures::future::BoxFuture;
use temporalio_client::{
    errors::WorkflowInteractionError, Client, UntypedWorkflow, WorkflowDescribeOptions,
    WorkflowExecutionInfo, WorkflowExecutionStatus, WorkflowHandle,
};

use rtmanager_activities::{HolderLiveness, HolderState, LeaseHolder};

/// [`HolderLiveness`] through the worker's Temporal client.
pub struct TemporalLiveness {
    client: Client,
    namespace: String,
}

impl TemporalLiveness {
    /// `namespace` must be the one the holders' workflows run in: a holder looked up elsewhere
    /// reads as unknown, so closed, and its lease is taken over.
    pub fn new(client: Client, namespace: String) -> Self {
        Self { client, namespace }
    }
}

impl HolderLiveness for TemporalLiveness {
    fn state<'a>(&'a self, holder: &'a LeaseHolder) -> BoxFuture<'a, anyhow::Result<HolderState>> {
        Box::pin(async move {
            let handle: WorkflowHandle<Client, UntypedWorkflow> = WorkflowHandle::new(
                self.client.clone(),
                WorkflowExecutionInfo::builder()
                    .namespace(self.namespace.clone())
                    .workflow_id(holder.workflow_id.clone())
                    .maybe_run_id(Some(holder.run_id.clone()).filter(|r| !r.is_empty()))
                    .build(),
            );
            match handle.describe(WorkflowDescribeOptions::default()).await {
                Ok(description) if description.status() == WorkflowExecutionStatus::Running => {
                    Ok(HolderState::Running)
                }
                Ok(description) => Ok(HolderState::Closed {
                    closed_at: description.close_time(),
                }),
                // Past retention, or never a workflow: nobody can still act under this lease
                // but a step in flight, which the lock-delay lets end.
                Err(WorkflowInteractionError::NotFound(_)) => {
                    Ok(HolderState::Closed { closed_at: None })
                }
                Err(err) => Err(anyhow::anyhow!("describe lease holder: {err}")),
            }
        })
    }
}
