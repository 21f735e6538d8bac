//! The one door from a way in to a workflow. The HTTP bridge, the stream consumer and the CLI
//! hand it a parsed [`LifecycleRequest`] and the [`Origin`] it came from; this module alone knows
//! the workflow type of each verb, how workflow ids are derived, the id-reuse policy that makes
//! a repeated request join its first run, eager start, and which task queue (the game's
//! host's, or the shared one) an operation starts on ([`Router`]).
//!
//! Inputs go as raw JSON, so that exactly what a `temporal` CLI user would send can be sent here
//! too (the tests send input the workflow must reject through [`start_raw`]). Nothing outside
//! this module asks for a workflow type; the names themselves are only in the workflows'
//! `#[run(name = ...)]` pins.

use std::{collections::HashMap, time::Duration};

use serde_json::Value;
use temporalio_client::{
    errors::{WorkflowGetResultError, WorkflowStartError},
    Client, UntypedWorkflow, WorkflowGetResultOptions, WorkflowHandle, WorkflowIdReusePolicy,
    WorkflowStartOptions,
};
use temporalio_common::{
    data_converters::RawValue,
    protos::{temporal::api::common::v1::Payload, ENCODING_PAYLOAD_KEY, JSON_ENCODING_VAL},
    search_attributes::SearchAttributes,
};

use rtmanager_activities::{GameHost, Store};
use rtmanager_domain::{GameId, HostId, LifecycleRequest, OpKind, OperationOutput, SourceRef};
use rtmanager_workflows::{
    PatchRuntimeWorkflow, ReconcileHostWorkflow, ReconcileReport, RestartRuntimeWorkflow,
    StartRuntimeWorkflow, StopRuntimeWorkflow,
};

/// A started rtmanager workflow.
pub type Handle = WorkflowHandle<Client, UntypedWorkflow>;

/// The workflow type Temporal stores for each verb: the name each workflow pins with
/// `#[run(name = ...)]`, read from the workflow itself.
pub fn workflow_type(kind: OpKind) -> &'static str {
    match kind {
        OpKind::Start => StartRuntimeWorkflow::name(),
        OpKind::Stop => StopRuntimeWorkflow::name(),
        OpKind::Restart => RestartRuntimeWorkflow::name(),
        OpKind::Patch => PatchRuntimeWorkflow::name(),
    }
}

/// Where an operation came from, with its idempotency key: together with the verb and the game
/// it names the workflow. A request id the caller gave (HTTP `X-Request-Id`, a stream entry's
/// `request_id`, the CLI's `--request-id`) names the same workflow whichever way it came in, so
/// one request sent through two ways in runs once; without one, each way keeps its own key.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The HTTP bridge.
    Http {
        /// The caller's `X-Request-Id`, or a fresh one.
        request_id: SourceRef,
        /// Whether the caller gave it (a fresh one names no other way in's operation).
        given: bool,
    },
    /// A `runtime:stop_jobs` entry; `attempt` counts the retries after a held lease.
    Stream {
        /// The stream's name (`runtime:stop_jobs` by contract).
        stream: String,
        /// The entry id: the same entry redelivered joins the same workflow.
        entry_id: String,
        /// 0 for the first run; each retry after a held lease is a new operation.
        attempt: u32,
        /// The entry's `request_id` field, if any.
        request_id: Option<SourceRef>,
    },
    /// An operator's CLI invocation: its `--request-id`, else a fresh id each time.
    Cli {
        /// The operator's `--request-id`, if any.
        request_id: Option<SourceRef>,
    },
    /// The events watcher restarting a game after its container `container_id` crashed: one
    /// restart per crash, however often the watcher reads the event again.
    Crash {
        /// The container that crashed.
        container_id: String,
    },
}

/// One operation ready to start: its verb, workflow input and workflow id, and what routing
/// needs (the game, and the host a start asked for).
#[derive(Debug, Clone)]
pub struct Operation {
    kind: OpKind,
    input: Value,
    workflow_id: String,
    game_id: Option<GameId>,
    host: Option<HostId>,
    /// What the Web UI shows for the workflow: a one-line summary and the request's fields.
    summary: Option<(String, String)>,
}

impl Operation {
    /// The operation for a parsed request.
    pub fn new(request: &LifecycleRequest, origin: &Origin) -> Self {
        let kind = request.kind();
        Self {
            kind,
            input: request.to_json(),
            workflow_id: workflow_id(kind, Some(request.game_id()), origin),
            game_id: Some(request.game_id().clone()),
            host: match request {
                LifecycleRequest::Start(start) => start.host.clone(),
                _ => None,
            },
            summary: Some((request.summary(), request.details())),
        }
    }

    /// A request the edge could not parse but the workflow must still see, so that it is
    /// audited as `invalid_request` (a malformed stream entry, acknowledged afterwards).
    pub fn unparsed(kind: OpKind, input: Value, origin: &Origin) -> Self {
        Self {
            kind,
            workflow_id: workflow_id(kind, None, origin),
            game_id: None,
            host: None,
            summary: Some((
                format!("{kind} (a request that does not parse)"),
                format!("```json\n{input}\n```"),
            )),
            input,
        }
    }

    /// The id the workflow runs under: the operation's identity in Temporal.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The game, or `""` for input that did not parse: a log field.
    pub fn game_id_str(&self) -> &str {
        self.game_id.as_ref().map_or("", GameId::as_str)
    }

    /// The workflow type the operation starts.
    pub fn workflow_type(&self) -> &'static str {
        workflow_type(self.kind)
    }

    /// `GameId`, `OpKind` and `OpSource` from the start, so that visibility lists the operation
    /// while its first workflow task still runs (the workflow sets them too, for starts that do
    /// not come through here, and `Outcome` at its end).
    fn search_attributes(&self) -> Option<SearchAttributes> {
        use rtmanager_workflows::operation::search;
        let game = self.game_id.as_ref()?;
        let source = self.input.get("op_source").and_then(Value::as_str)?;
        Some(SearchAttributes::new([
            search::GAME_ID.value_set(game.to_string()),
            search::OP_KIND.value_set(self.kind.as_str().to_owned()),
            search::OP_SOURCE.value_set(source.to_owned()),
        ]))
    }
}

/// Which task queue an operation starts on. A game whose record names a live host goes to that
/// host's queue: the workflow runs on the worker next to the game's Docker engine and its
/// Docker steps are local activities there (the fast path). Everything else (a new game, a
/// host that is down, a request that did not parse) goes to the shared queue, where any worker
/// runs it and sends its Docker steps to the game's host as normal activities that wait a
/// bounded time for that host. The workflow re-reads the host under the game's lease, so a
/// stale answer here costs speed, never correctness.
#[derive(Clone)]
pub struct Router {
    store: Store,
    shared_queue: String,
    down_after: Duration,
    search_attributes: bool,
}

impl Router {
    /// Routes with `store`'s records and hosts, for the deployment whose shared queue is
    /// `shared_queue`.
    pub fn new(store: Store, shared_queue: impl Into<String>, down_after: Duration) -> Self {
        Self {
            store,
            shared_queue: shared_queue.into(),
            down_after,
            search_attributes: true,
        }
    }

    /// Whether workflows are started with their search attributes (`RTMANAGER_SEARCH_ATTRIBUTES`:
    /// a namespace without them registered refuses a start that sets them).
    pub fn with_search_attributes(mut self, on: bool) -> Self {
        self.search_attributes = on;
        self
    }

    /// The deployment's shared task queue.
    pub fn shared_queue(&self) -> &str {
        &self.shared_queue
    }

    /// How long a silent host takes to count as down.
    pub fn down_after(&self) -> Duration {
        self.down_after
    }

    /// The task queue `operation` starts on. A database that cannot answer means the shared
    /// queue: slower, still correct.
    pub async fn task_queue(&self, operation: &Operation) -> String {
        let host = match (&operation.host, &operation.game_id) {
            (Some(host), _) => match self.store.host_alive(host, self.down_after).await {
                Ok(true) => Some(host.clone()),
                Ok(false) => None,
                Err(err) => {
                    tracing::debug!(err = %err, "route by host: using the shared queue");
                    None
                }
            },
            (None, Some(game)) => match self.store.game_host(game, self.down_after).await {
                Ok(Some(GameHost {
                    host_id,
                    alive: true,
                })) => Some(host_id),
                Ok(_) => None,
                Err(err) => {
                    tracing::debug!(err = %err, "route by record: using the shared queue");
                    None
                }
            },
            (None, None) => None,
        };
        match host {
            Some(host) => host.task_queue(&self.shared_queue),
            None => self.shared_queue.clone(),
        }
    }
}

/// The workflow id. With a request id the caller gave, whichever way in:
/// `req-<verb>-<game>-<request id>`. Without one: HTTP `http-<verb>-<game>-<fresh uuid>`,
/// stream `stream-<verb>-<stream>-<entry id>`, CLI `cli-<verb>-<game>-<uuid>`. A stream retry
/// after a held lease appends `-retry<n>`. A restart after a crash:
/// `crash-restart-<game>-<container>`.
fn workflow_id(kind: OpKind, game: Option<&GameId>, origin: &Origin) -> String {
    let game = game.map_or("", GameId::as_str);
    let given = |request_id: &SourceRef| format!("req-{kind}-{game}-{}", request_id.as_str());
    let retry = |attempt: u32| match attempt {
        0 => String::new(),
        n => format!("-retry{n}"),
    };
    match origin {
        Origin::Http {
            request_id,
            given: true,
        } => given(request_id),
        Origin::Http { request_id, .. } => format!("http-{kind}-{game}-{}", request_id.as_str()),
        Origin::Stream {
            request_id: Some(request_id),
            attempt,
            ..
        } if !game.is_empty() => format!("{}{}", given(request_id), retry(*attempt)),
        Origin::Stream {
            stream,
            entry_id,
            attempt,
            ..
        } => format!("stream-{kind}-{stream}-{entry_id}{}", retry(*attempt)),
        Origin::Cli {
            request_id: Some(request_id),
        } => given(request_id),
        Origin::Cli { request_id: None } => format!("cli-{kind}-{game}-{}", uuid::Uuid::new_v4()),
        Origin::Crash { container_id } => format!("crash-{kind}-{game}-{container_id}"),
    }
}

/// Starts the operation's workflow unless it exists, then waits for its output: one id is one
/// operation. Whether the workflow with that id is running or closed (`RejectDuplicate`: never
/// re-run), the start answers "already started" and its output is awaited instead. This is what
/// makes an HTTP retry with the same `X-Request-Id`, or a redelivered stream entry, safe.
pub async fn run(
    client: &Client,
    router: &Router,
    operation: &Operation,
) -> anyhow::Result<OperationOutput> {
    use tracing::Instrument;
    // Every line logged about the operation at the bridge or the consumer carries these.
    let span = tracing::info_span!(
        "operation",
        game_id = operation.game_id.as_ref().map_or("", GameId::as_str),
        workflow_id = operation.workflow_id.as_str(),
        op = workflow_type(operation.kind),
    );
    async {
        let started = std::time::Instant::now();
        let handle = start(client, router, operation).await?;
        let start_ms = started.elapsed().as_secs_f64() * 1000.0;
        let output = result(&handle).await;
        match &output {
            Ok(output) => tracing::info!(
                outcome = %output.outcome,
                error_code = output.error_code.map_or("", |c| c.as_str()),
                start_ms,
                total_ms = started.elapsed().as_secs_f64() * 1000.0,
                "operation done"
            ),
            Err(err) => tracing::warn!(err = %format!("{err:#}"), "operation result unknown"),
        }
        output
    }
    .instrument(span)
    .await
}

/// The durable half of [`run`]: returns once the workflow exists (started now, or joined).
pub async fn start(
    client: &Client,
    router: &Router,
    operation: &Operation,
) -> anyhow::Result<Handle> {
    let task_queue = router.task_queue(operation).await;
    let options = WorkflowStartOptions::new(task_queue, &operation.workflow_id)
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        // Taken only when a worker on this client has a free slot (`rtmanager run`).
        .enable_eager_workflow_start(true)
        .maybe_search_attributes(
            operation
                .search_attributes()
                .filter(|_| router.search_attributes),
        )
        .maybe_static_summary(operation.summary.as_ref().map(|(line, _)| line.clone()))
        .maybe_static_details(
            operation
                .summary
                .as_ref()
                .map(|(_, details)| details.clone()),
        )
        .build();
    let input = json_input(operation.input.to_string().as_bytes());
    let mut attempt = 0;
    loop {
        let started = client
            .start_workflow(
                UntypedWorkflow::new(workflow_type(operation.kind)),
                input.clone(),
                options.clone(),
            )
            .await;
        match started {
            Ok(handle) => return Ok(handle),
            Err(WorkflowStartError::AlreadyStarted { .. }) => {
                return Ok(client.get_workflow_handle::<UntypedWorkflow>(&operation.workflow_id))
            }
            // The start may have happened: asking again starts it or finds it started.
            Err(WorkflowStartError::Rpc(status))
                if transient(&status) && attempt < TRANSIENT_RETRIES =>
            {
                tracing::warn!(workflow_id = operation.workflow_id, %status, attempt, "start again");
                tokio::time::sleep(transient_pause(attempt)).await;
                attempt += 1;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Starts a workflow of `kind` with exactly `input` under `workflow_id`, without the join
/// policy: for tests and tools that must send what any Temporal client could, including input
/// the workflow must reject.
pub async fn start_raw(
    client: &Client,
    task_queue: &str,
    kind: OpKind,
    workflow_id: &str,
    input: RawValue,
) -> anyhow::Result<Handle> {
    let options = WorkflowStartOptions::new(task_queue, workflow_id).build();
    Ok(client
        .start_workflow(UntypedWorkflow::new(workflow_type(kind)), input, options)
        .await?)
}

/// The id of the Temporal Schedule that reconciles `host_queue`'s host.
pub fn reconcile_schedule_id(host_queue: &str) -> String {
    format!("reconcile-{host_queue}")
}

/// Creates the Schedule that runs `ReconcileHost` for `host` every `every` on the shared queue
/// (overlap policy skip), or brings an existing one to that interval: idempotent, so every
/// start of the host's worker calls it.
pub async fn ensure_reconcile_schedule(
    client: &Client,
    shared_queue: &str,
    host: &HostId,
    every: Duration,
) -> anyhow::Result<()> {
    use temporalio_client::{
        schedules::{
            CreateScheduleOptions, ScheduleAction, ScheduleError, ScheduleOverlapPolicy,
            ScheduleSpec,
        },
        tonic::Code,
        RpcOptions,
    };
    let id = reconcile_schedule_id(&host.task_queue(shared_queue));
    let input = json_input(
        serde_json::json!({ "host_id": host })
            .to_string()
            .as_bytes(),
    );
    let action = ScheduleAction::start_workflow(
        UntypedWorkflow::new(ReconcileHostWorkflow::name()),
        input,
        shared_queue,
        id.clone(),
    );
    let options = CreateScheduleOptions::builder()
        .action(action)
        .spec(ScheduleSpec::from_interval(every))
        .overlap_policy(ScheduleOverlapPolicy::Skip)
        .note(format!("rtmanager: reconcile host {host}"))
        .build();
    match client.create_schedule(&id, options).await {
        Ok(_) => Ok(()),
        Err(ScheduleError::Rpc(status)) if status.code() == Code::AlreadyExists => {
            let handle = client.get_schedule_handle(&id);
            handle
                .update(
                    move |update| {
                        update.set_spec(ScheduleSpec::from_interval(every));
                        update.set_overlap_policy(ScheduleOverlapPolicy::Skip);
                    },
                    RpcOptions::default(),
                )
                .await?;
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

/// Runs one reconcile round of `host` now (`rtmanager reconcile`) and returns its report.
pub async fn reconcile(
    client: &Client,
    shared_queue: &str,
    host: &HostId,
) -> anyhow::Result<ReconcileReport> {
    let workflow_id = format!("reconcile-{host}-{}", uuid::Uuid::new_v4());
    let input = json_input(
        serde_json::json!({ "host_id": host })
            .to_string()
            .as_bytes(),
    );
    let options = WorkflowStartOptions::new(shared_queue, &workflow_id).build();
    let handle = client
        .start_workflow(
            UntypedWorkflow::new(ReconcileHostWorkflow::name()),
            input,
            options,
        )
        .await?;
    decoded(&handle).await
}

/// A lifecycle operation of a game that is still running, with what its `progress` query
/// answered.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunningOperation {
    /// Its workflow id.
    pub workflow_id: String,
    /// Its workflow type (`StopRuntime`, ...).
    pub workflow_type: String,
    /// The `progress` query's answer; `None` when the query failed (e.g. no worker polls its
    /// task queue right now).
    pub progress: Option<Value>,
}

/// The lifecycle operations of `game` still running, found through the `GameId` search
/// attribute, each asked where it is.
pub async fn running_operations(
    client: &Client,
    game: &GameId,
) -> anyhow::Result<Vec<RunningOperation>> {
    use futures::StreamExt;
    use temporalio_client::{UntypedQuery, WorkflowListOptions, WorkflowQueryOptions};
    // A game id holds no quote: its alphabet is parsed at the edge.
    let query = format!("GameId = '{game}' AND ExecutionStatus = 'Running'");
    let mut listed = client.list_workflows(query, WorkflowListOptions::default());
    let mut running = Vec::new();
    while let Some(execution) = listed.next().await {
        let execution = execution?;
        let handle = client.get_workflow_handle::<UntypedWorkflow>(execution.id());
        let answer = handle
            .query(
                UntypedQuery::<UntypedWorkflow>::new("progress"),
                // The query takes no argument; the SDK decodes one JSON `null` as none.
                json_input(b"null"),
                WorkflowQueryOptions::default(),
            )
            .await;
        if let Err(err) = &answer {
            tracing::debug!(workflow_id = execution.id(), err = %err, "progress query");
        }
        let progress = answer.ok().and_then(|raw| {
            let payload = raw.payloads.first()?;
            serde_json::from_slice(&payload.data).ok()
        });
        running.push(RunningOperation {
            workflow_id: execution.id().to_owned(),
            workflow_type: execution.workflow_type().to_owned(),
            progress,
        });
    }
    Ok(running)
}

/// Waits for a workflow's output and decodes the contract JSON.
pub async fn result(handle: &Handle) -> anyhow::Result<OperationOutput> {
    decoded(handle).await
}

/// How often a call that met a slow or briefly absent Temporal server is made again before the
/// error goes to the caller (with growing pauses, ~40 s in all). Asking again is safe: the
/// operation is durable and the same workflow id joins it.
const TRANSIENT_RETRIES: u32 = 8;

/// An RPC error worth asking again: the server took too long or was briefly away.
fn transient(status: &temporalio_client::tonic::Status) -> bool {
    use temporalio_client::tonic::Code;
    matches!(
        status.code(),
        Code::Cancelled | Code::DeadlineExceeded | Code::Unavailable | Code::ResourceExhausted
    )
}

/// The pause before asking again after `attempt` transient errors: 250 ms doubling to 8 s.
fn transient_pause(attempt: u32) -> std::time::Duration {
    std::time::Duration::from_millis(250 << attempt.min(5))
}

/// Waits for a workflow's output and decodes its single JSON payload as `T`; a long poll that
/// times out under load is made again.
async fn decoded<T: serde::de::DeserializeOwned>(handle: &Handle) -> anyhow::Result<T> {
    let mut attempt = 0;
    let raw = loop {
        match handle.get_result(WorkflowGetResultOptions::default()).await {
            Err(WorkflowGetResultError::Rpc(status))
                if transient(&status) && attempt < TRANSIENT_RETRIES =>
            {
                tracing::warn!(workflow_id = handle.info().workflow_id, %status, attempt, "await the result again");
                tokio::time::sleep(transient_pause(attempt)).await;
                attempt += 1;
            }
            other => break other?,
        }
    };
    let payload = raw
        .payloads
        .first()
        .ok_or_else(|| anyhow::anyhow!("workflow completed without a result"))?;
    Ok(serde_json::from_slice(&payload.data)?)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(game: &str) -> LifecycleRequest {
        LifecycleRequest::from_json(
            OpKind::Stop,
            format!(r#"{{"game_id":"{game}","reason":"admin","op_source":"rest"}}"#).as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn the_same_request_id_names_the_same_workflow() {
        let origin = Origin::Http {
            request_id: SourceRef::parse("r-1").unwrap(),
            given: true,
        };
        let a = Operation::new(&stop("g-1"), &origin);
        let b = Operation::new(&stop("g-1"), &origin);
        assert_eq!(a.workflow_id(), b.workflow_id());
        assert_eq!(a.workflow_id(), "req-stop-g-1-r-1");
        // The same request id through the stream or the CLI is the same operation.
        let stream = Origin::Stream {
            stream: "runtime:stop_jobs".into(),
            entry_id: "9-0".into(),
            attempt: 0,
            request_id: SourceRef::parse("r-1").ok(),
        };
        let cli = Origin::Cli {
            request_id: SourceRef::parse("r-1").ok(),
        };
        assert_eq!(
            Operation::new(&stop("g-1"), &stream).workflow_id(),
            a.workflow_id()
        );
        assert_eq!(
            Operation::new(&stop("g-1"), &cli).workflow_id(),
            a.workflow_id()
        );
        // A fresh id the bridge made up names only its own operation.
        let fresh = Origin::Http {
            request_id: SourceRef::parse("r-1").unwrap(),
            given: false,
        };
        assert_eq!(
            Operation::new(&stop("g-1"), &fresh).workflow_id(),
            "http-stop-g-1-r-1"
        );
        assert_ne!(
            a.workflow_id(),
            Operation::new(&stop("g-2"), &origin).workflow_id()
        );
    }

    #[test]
    fn stream_retries_and_cli_calls_get_ids_of_their_own() {
        let entry = |attempt| Origin::Stream {
            stream: "runtime:stop_jobs".into(),
            entry_id: "1-0".into(),
            attempt,
            request_id: None,
        };
        let first = Operation::new(&stop("g"), &entry(0));
        assert_eq!(first.workflow_id(), "stream-stop-runtime:stop_jobs-1-0");
        let retry = Operation::unparsed(OpKind::Stop, Value::Null, &entry(2));
        assert_eq!(
            retry.workflow_id(),
            "stream-stop-runtime:stop_jobs-1-0-retry2"
        );
        let cli = |_| Operation::new(&stop("g"), &Origin::Cli { request_id: None }).workflow_id;
        assert_ne!(cli(1), cli(2));
    }

    #[test]
    fn every_verb_has_the_workflow_type_of_the_contract() {
        let types: Vec<_> = [OpKind::Start, OpKind::Stop, OpKind::Restart, OpKind::Patch]
            .map(workflow_type)
            .to_vec();
        assert_eq!(
            types,
            [
                "StartRuntime",
                "StopRuntime",
                "RestartRuntime",
                "PatchRuntime"
            ]
        );
    }
}
