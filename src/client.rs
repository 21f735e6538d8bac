//! Starting rtmanager's workflows from Rust: the CLI's client commands and the tests. Inputs
//! are sent as raw JSON so that exactly what a `temporal` CLI user would send can be sent here
//! too, including input the workflow must reject.

use std::collections::HashMap;

use temporalio_client::{
    errors::WorkflowStartError, Client, UntypedWorkflow, WorkflowGetResultOptions, WorkflowHandle,
    WorkflowIdReusePolicy, WorkflowStartOptions,
};
use temporalio_common::{
    data_converters::RawValue,
    protos::{temporal::api::common::v1::Payload, ENCODING_PAYLOAD_KEY, JSON_ENCODING_VAL},
};

use rtmanager_domain::OperationOutput;

/// Wraps JSON bytes as the single `json/plain` payload the workflows expect.
pub fn json_input(json: &[u8]) -> RawValue {
    RawValue::new(vec![Payload {
        metadata: HashMap::from([(
            ENCODING_PAYLOAD_KEY.to_owned(),
            JSON_ENCODING_VAL.as_bytes().to_vec(),
        )]),
        data: json.to_vec(),
        ..Default::default()
    }])
}

/// A started rtmanager workflow.
pub type Handle = WorkflowHandle<Client, UntypedWorkflow>;

/// Starts `workflow_type` (e.g. `StopRuntime`) with `input` on `task_queue`.
pub async fn start(
    client: &Client,
    task_queue: &str,
    workflow_type: &str,
    workflow_id: &str,
    input: RawValue,
) -> anyhow::Result<Handle> {
    let options = WorkflowStartOptions::new(task_queue, workflow_id).build();
    Ok(client
        .start_workflow(UntypedWorkflow::new(workflow_type), input, options)
        .await?)
}

/// Waits for a workflow's output and decodes the contract JSON.
pub async fn result(handle: &Handle) -> anyhow::Result<OperationOutput> {
    let raw = handle
        .get_result(WorkflowGetResultOptions::default())
        .await?;
    let payload = raw
        .payloads
        .first()
        .ok_or_else(|| anyhow::anyhow!("workflow completed without a result"))?;
    Ok(serde_json::from_slice(&payload.data)?)
}

/// Starts a workflow and waits for its output.
pub async fn execute(
    client: &Client,
    task_queue: &str,
    workflow_type: &str,
    workflow_id: &str,
    input: RawValue,
) -> anyhow::Result<OperationOutput> {
    let handle = start(client, task_queue, workflow_type, workflow_id, input).await?;
    result(&handle).await
}

/// Starts the workflow `workflow_id` unless it exists, then waits for its output: one id is one
/// operation. Whether the workflow with that id is running or closed (`RejectDuplicate`: never
/// re-run), the start answers "already started" and its output is awaited instead. This is what makes an HTTP retry
/// with the same `X-Request-Id`, or a redelivered stream entry, safe.
pub async fn run_once(
    client: &Client,
    task_queue: &str,
    workflow_type: &str,
    workflow_id: &str,
    input: RawValue,
) -> anyhow::Result<OperationOutput> {
    let started = std::time::Instant::now();
    let handle = start_once(client, task_queue, workflow_type, workflow_id, input).await?;
    let start_ms = started.elapsed().as_secs_f64() * 1000.0;
    let output = result(&handle).await;
    tracing::debug!(
        workflow_id,
        start_ms,
        total_ms = started.elapsed().as_secs_f64() * 1000.0,
        "workflow round trip"
    );
    output
}

/// The durable half of [`run_once`]: returns once the workflow exists.
pub async fn start_once(
    client: &Client,
    task_queue: &str,
    workflow_type: &str,
    workflow_id: &str,
    input: RawValue,
) -> anyhow::Result<Handle> {
    let options = WorkflowStartOptions::new(task_queue, workflow_id)
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        // Taken only when a worker on this client has a free slot (`rtmanager run`).
        .enable_eager_workflow_start(true)
        .build();
    match client
        .start_workflow(UntypedWorkflow::new(workflow_type), input, options)
        .await
    {
        Ok(handle) => Ok(handle),
        Err(WorkflowStartError::AlreadyStarted { .. }) => {
            Ok(client.get_workflow_handle::<UntypedWorkflow>(workflow_id))
        }
        Err(err) => Err(err.into()),
    }
}
