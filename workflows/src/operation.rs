//! What every lifecycle operation shares, whatever its verb: its identity (operation id, start
//! time), its steps, its audit row, and the game's lease. Each workflow builds one [`Op`], runs
//! every step through it ([`Op::step`], [`Op::best_effort`], [`Op::docker`], and the shared
//! steps [`Op::load_record`], [`Op::acquire_lease`], [`Op::inherited_lease`]) and ends through
//! exactly one of [`Op::success`], [`Op::replay_no_op`] or [`Op::failure`] (also reached from
//! [`Op::parse`]), which append the operation's single operation_log row.

use chrono::{DateTime, Utc};
use temporalio_workflow::{
    common::data_converters::RawValue, ActivityExecutionError, WorkflowContext,
};

use rtmanager_domain::{
    request::RequestEcho, truncate_chars, Addressed, ErrorCode, GameId, HostId, InvalidRequest,
    LeaseToken, OpKind, OpSource, OperationOutput, Outcome, RuntimeRecord, RuntimeStatus,
    StopReport,
};

use temporalio_workflow::common::ActivityDefinition;

use crate::{
    contract::{
        AcquireLease, AcquireLeaseInput, AppendOperationLog, CheckLease, CheckLeaseInput,
        HostRoute, LeaseOutcome, LoadRecord, LoadRecordInput, LoadedRecord, OperationEntry,
        PlaceGame, PlaceGameInput, Placement, ReleaseLease, ReleaseLeaseInput, UpdateStatus,
        UpdateStatusInput, UpdateStatusOutcome,
    },
    progress::Progress,
    support::{
        operation_id, request_bytes, run_step, workflow_now, Cancel, Step, StepFailure, StepShape,
        FAST_STEP_TIMEOUT,
    },
    StepSettings,
};

/// The patch id that marks histories in which an inherited lease token is checked against
/// Redis: histories recorded before the check replay without it.
pub const INHERITED_LEASE_CHECK: &str = "check-inherited-lease";

/// The patch id that marks start histories in which the game is placed on a host
/// (`PlaceGame`): histories recorded before hosts replay without the step.
pub const PLACE_ON_HOST: &str = "place-on-host";

/// The patch id that marks histories in which the workflow sets its search attributes.
pub const SEARCH_ATTRIBUTES: &str = "search-attributes";

/// The patch id that marks histories in which the workflow leaves the `GameId`, `OpKind` and
/// `OpSource` search attributes to the start that already carried them.
pub const SEARCH_ATTRIBUTES_FROM_START: &str = "search-attributes-from-start";

/// The patch id that marks start histories in which a `running` record's container is
/// inspected (`InspectGame`) before the record is trusted.
pub const START_CHECKS_CONTAINER: &str = "start-checks-container";

/// Best-effort steps (audit row, health event, cleanup) get few attempts: their failure is
/// logged by the activity and never changes the outcome.
pub const BEST_EFFORT_ATTEMPTS: u32 = 3;

/// The container and image an audit row refers to.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    /// The container the operation acted on (or found), if any.
    pub container_id: Option<String>,
    /// The image that container runs, or the one a start asked for.
    pub image_ref: Option<String>,
    /// What a Docker stop did to that container; carried to the audit row and the output.
    pub stop: Option<StopReport>,
}

impl Touched {
    /// What a record names: its current container and image.
    pub fn of(record: &RuntimeRecord) -> Self {
        Self {
            container_id: record.current_container_id.clone(),
            image_ref: record.current_image_ref.clone(),
            stop: None,
        }
    }

    /// The same, with what the Docker stop did.
    pub fn stopped(self, stop: Option<StopReport>) -> Self {
        Self { stop, ..self }
    }
}

/// The fields of the audit row that come from the request.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// Raw and truncated when the request did not parse: invalid requests are audited too.
    pub game_id: String,
    /// Raw and truncated, like `game_id`.
    pub op_source: String,
    /// The caller's reference, shared by a restart's or patch's three rows.
    pub source_ref: Option<String>,
    /// Metric label: the stop reason, `none` for other verbs, `invalid` when unparsable.
    pub reason_label: String,
    /// Metric label: the op source, or `invalid`.
    pub op_source_label: String,
}

impl Audit {
    /// The audit fields of a parsed request; `reason` for a stop.
    pub fn of(request: &impl Addressed, reason: Option<&str>) -> Self {
        let who = request.who();
        Self {
            game_id: who.game_id.as_str().to_owned(),
            op_source: who.op_source.as_str().to_owned(),
            source_ref: who.source_ref.map(|s| s.as_str().to_owned()),
            reason_label: reason.unwrap_or("none").to_owned(),
            op_source_label: who.op_source.as_str().to_owned(),
        }
    }

    /// What could be read from a request that did not parse.
    fn of_echo(echo: &RequestEcho, reason_known: bool) -> Self {
        let known = |value: Option<&str>, parse: fn(&str) -> bool| match value {
            Some(v) if parse(v) => v.to_owned(),
            _ => "invalid".to_owned(),
        };
        Self {
            game_id: truncate_chars(&echo.game_id, 128),
            op_source: truncate_chars(&echo.op_source, 32),
            source_ref: echo.source_ref.as_ref().map(|s| truncate_chars(s, 256)),
            reason_label: if reason_known {
                known(echo.reason.as_deref(), |r| {
                    r.parse::<rtmanager_domain::StopReason>().is_ok()
                })
            } else {
                "none".to_owned()
            },
            op_source_label: known(Some(&echo.op_source), |s| s.parse::<OpSource>().is_ok()),
        }
    }
}

/// A parsed request as [`Op::handle`] runs it: one impl per verb, so that every workflow is
/// parse, then handle.
#[allow(async_fn_in_trait)] // Workflow futures are polled on one thread: no `Send` bound wanted.
pub trait Handled: Addressed {
    /// Fills what the request left to the operation, before the audit (a restart's or patch's
    /// `source_ref`, shared by its three rows).
    fn prepare(&mut self, _workflow_id: &str) {}
    /// The stop reason the audit row carries; `None` for the other verbs.
    fn reason(&self) -> Option<&str> {
        None
    }
    /// The parent's lease this operation runs under (the seed's `Run`), if any.
    fn inherited(&self) -> Option<&LeaseToken> {
        None
    }
    /// The operation, under the game's lease.
    async fn run<W>(&self, op: &Op<'_, W>, lease: &LeaseToken) -> OperationOutput;
}

/// One lifecycle operation in flight.
pub struct Op<'a, W> {
    /// The workflow's context: its time, random stream and commands.
    pub ctx: &'a WorkflowContext<W>,
    /// The worker's step options (local or normal activities, retries, timeouts).
    pub settings: &'a StepSettings,
    /// The verb, for the audit row.
    pub kind: OpKind,
    /// `workflow_id/run_id`: the idempotency key of everything the operation writes once.
    pub operation_id: String,
    /// The workflow task's time when the operation began (deterministic on replay).
    pub started_at: DateTime<Utc>,
    audit: Audit,
    /// The lease this operation took, released together with the audit row (the two steps are
    /// independent, so they run at once).
    held: std::cell::RefCell<Option<(GameId, LeaseToken)>>,
    /// The host the game's Docker steps run on, once the record or the placement named it.
    host: std::cell::RefCell<Option<HostRoute>>,
    /// What the `progress` query answers, kept here and copied into the workflow's state.
    progress: std::cell::RefCell<Progress>,
    report: fn(&mut W, &Progress),
    /// Which search attributes this workflow sets itself.
    search_attributes: SearchAttributeUpserts,
}

/// The search attributes a workflow sets itself. A client that starts it with `GameId`,
/// `OpKind` and `OpSource` (rtmanager's own) spares it those upserts: only `Outcome` is left,
/// one history event and one visibility write instead of three.
#[derive(Debug, Clone, Copy)]
struct SearchAttributeUpserts {
    /// `GameId`, `OpKind` and `OpSource`: the start did not carry them.
    identity: bool,
    /// `Outcome`, once the operation ends.
    outcome: bool,
}

impl SearchAttributeUpserts {
    fn of<W>(ctx: &WorkflowContext<W>, settings: &StepSettings) -> Self {
        if !settings.search_attributes {
            return Self {
                identity: false,
                outcome: false,
            };
        }
        if ctx.patched(SEARCH_ATTRIBUTES_FROM_START) {
            let at_start = ctx.search_attributes();
            let started_with = [search::GAME_ID, search::OP_KIND, search::OP_SOURCE]
                .iter()
                .all(|key| at_start.contains_key(key));
            return Self {
                identity: !started_with,
                outcome: true,
            };
        }
        // Histories from before: every attribute upserted, or none before they existed.
        let all = ctx.patched(SEARCH_ATTRIBUTES);
        Self {
            identity: all,
            outcome: all,
        }
    }
}

/// The search attributes every lifecycle workflow sets (Keyword), so that an operator lists a
/// game's operations in the Web UI or with `temporal workflow list --query "GameId='g'"`.
pub mod search {
    use temporalio_workflow::common::search_attributes::SearchAttributeKey;

    /// The game the operation is for.
    pub const GAME_ID: SearchAttributeKey<String> = SearchAttributeKey::keyword("GameId");
    /// `start`, `stop`, `restart` or `patch`.
    pub const OP_KIND: SearchAttributeKey<String> = SearchAttributeKey::keyword("OpKind");
    /// `rest`, `stream`, `admin` or `reconciler`.
    pub const OP_SOURCE: SearchAttributeKey<String> = SearchAttributeKey::keyword("OpSource");
    /// `success` or `failure`, once the operation ended.
    pub const OUTCOME: SearchAttributeKey<String> = SearchAttributeKey::keyword("Outcome");
    /// Every name, for registering them on a namespace.
    pub const NAMES: [&str; 4] = ["GameId", "OpKind", "OpSource", "Outcome"];
}

impl<'a, W> Op<'a, W> {
    /// An operation of `kind` in the workflow of `ctx`; nothing is audited until it ends.
    /// `report` copies the operation's progress into the workflow's state, where the
    /// `progress` query reads it.
    pub fn new(
        ctx: &'a WorkflowContext<W>,
        settings: &'a StepSettings,
        kind: OpKind,
        report: fn(&mut W, &Progress),
    ) -> Self {
        let search_attributes = SearchAttributeUpserts::of(ctx, settings);
        if search_attributes.identity {
            ctx.upsert_search_attributes([search::OP_KIND.value_set(kind.as_str().to_owned())]);
        }
        let op = Self {
            ctx,
            settings,
            kind,
            operation_id: operation_id(ctx),
            started_at: workflow_now(ctx),
            audit: Audit::default(),
            held: std::cell::RefCell::new(None),
            host: std::cell::RefCell::new(None),
            progress: std::cell::RefCell::new(Progress {
                op_kind: Some(kind.as_str().to_owned()),
                step: "Parse".to_owned(),
                ..Progress::default()
            }),
            report,
            search_attributes,
        };
        op.track(|_| {});
        op
    }

    /// Updates the operation's progress and hands it to the workflow's state.
    pub fn track(&self, update: impl FnOnce(&mut Progress)) {
        let snapshot = {
            let mut progress = self.progress.borrow_mut();
            update(&mut progress);
            progress.clone()
        };
        self.ctx.set_current_details(snapshot.line());
        self.ctx.state_mut(|w| (self.report)(w, &snapshot));
    }

    fn begin(&self, step: &str) {
        self.track(|p| {
            p.step = step.to_owned();
            p.steps_begun += 1;
        });
    }

    /// Parses the raw input with `parse`; on failure, audits `invalid_request` and returns the
    /// output to complete with.
    pub async fn parse<T>(
        &mut self,
        input: &RawValue,
        parse: impl FnOnce(&[u8]) -> Result<T, InvalidRequest>,
    ) -> Result<T, OperationOutput> {
        let parsed = request_bytes(input)
            .map_err(|message| InvalidRequest {
                message,
                echo: Box::default(),
            })
            .and_then(parse);
        match parsed {
            Ok(request) => Ok(request),
            Err(invalid) => {
                self.audit = Audit::of_echo(&invalid.echo, self.kind == OpKind::Stop);
                let code = ErrorCode::InvalidRequest;
                Err(self
                    .failure(code, invalid.message, Touched::default())
                    .await)
            }
        }
    }

    /// The compare-and-swap of the game's record under `lease` (`UpdateStatus`): from the
    /// status and container the operation found to `to`.
    pub async fn update_status(
        &self,
        game_id: &GameId,
        (expected_from, container_id): (RuntimeStatus, String),
        to: RuntimeStatus,
        lease: &LeaseToken,
        cancel: Cancel,
    ) -> Result<UpdateStatusOutcome, StepFailure> {
        let input = UpdateStatusInput {
            game_id: game_id.clone(),
            operation_id: self.operation_id.clone(),
            expected_from,
            expected_container_id: Some(container_id),
            to,
            fence: lease.fence().unwrap_or_default(),
            lease: Some(lease.clone()),
        };
        let updated = self.step(UpdateStatus, input, cancel).await;
        updated.map_err(StepFailure::from)
    }

    /// Runs a sub-millisecond step (Redis, PostgreSQL) with the worker's fast-step options.
    pub async fn step<AD: Step>(
        &self,
        activity: AD,
        input: AD::Input,
        cancel: Cancel,
    ) -> Result<AD::Output, ActivityExecutionError> {
        let attempts = self.settings.fast_step_attempts;
        self.fast(activity, input, attempts, cancel).await
    }

    /// Runs a best-effort step (audit row, health event): few attempts, detached from a
    /// cancellation; its failure is logged by the activity and never changes the outcome.
    pub async fn best_effort<AD: Step>(&self, activity: AD, input: AD::Input) {
        let attempts = BEST_EFFORT_ATTEMPTS;
        let _ = self.fast(activity, input, attempts, Cancel::Detached).await;
    }

    async fn fast<AD: Step>(
        &self,
        activity: AD,
        input: AD::Input,
        attempts: u32,
        cancel: Cancel,
    ) -> Result<AD::Output, ActivityExecutionError> {
        self.begin(activity.name());
        let shape = StepShape::fast(self.settings, attempts, cancel, FAST_STEP_TIMEOUT);
        run_step(self.ctx, activity, input, shape).await
    }

    /// Runs a Docker step on the game's host: here, when the workflow runs on that host's task
    /// queue (or no host is known: histories from before hosts), else sent to that host's queue.
    /// `grace`: how long Docker may wait for the game's process during the step (a stop with a
    /// long timeout), each attempt allowed that plus the queue allowance; `None`: the worker's
    /// graceful stop timeout.
    pub async fn docker<AD: Step>(
        &self,
        activity: AD,
        input: AD::Input,
        cancel: Cancel,
        grace: Option<std::time::Duration>,
    ) -> Result<AD::Output, ActivityExecutionError> {
        let grace = grace.unwrap_or(self.settings.graceful_stop_timeout);
        let remote = self
            .host
            .borrow()
            .as_ref()
            .map(|route| route.task_queue.clone())
            .filter(|queue| queue != self.ctx.task_queue());
        self.begin(activity.name());
        let shape = StepShape::docker(self.settings, cancel, remote.as_deref(), grace);
        run_step(self.ctx, activity, input, shape).await
    }

    /// From now on, Docker steps run on this host.
    pub fn route_to(&self, route: HostRoute) {
        self.track(|p| p.host = Some(route.host_id.to_string()));
        *self.host.borrow_mut() = Some(route);
    }

    /// The container the operation acts on, for its progress.
    pub fn note_container(&self, container_id: &str) {
        self.track(|p| p.container_id = Some(container_id.to_owned()));
    }

    /// The child workflow in flight (`None` once it ended), for its progress.
    pub fn note_child(&self, child: Option<&str>) {
        self.track(|p| p.child = child.map(str::to_owned));
    }

    /// The host the Docker steps run on, once known.
    pub fn host(&self) -> Option<HostRoute> {
        self.host.borrow().clone()
    }

    /// Loads the game's record (`LoadRecord`), telling whether this operation wrote it last,
    /// and routes the Docker steps to the host the record names.
    pub async fn load_record(
        &self,
        game_id: &GameId,
    ) -> Result<Option<LoadedRecord>, ActivityExecutionError> {
        let input = LoadRecordInput {
            game_id: game_id.clone(),
            operation_id: self.operation_id.clone(),
        };
        let loaded = self.step(LoadRecord, input, Cancel::WithWorkflow).await;
        if let Ok(Some(LoadedRecord {
            host: Some(route), ..
        })) = &loaded
        {
            self.route_to(route.clone());
        }
        loaded
    }

    /// Chooses the host a start runs on (`PlaceGame`) and routes the Docker steps there; on a
    /// refusal or a failed step, the output to complete with.
    pub async fn place(
        &self,
        game_id: &GameId,
        host: Option<HostId>,
        touched: Touched,
    ) -> Result<HostRoute, OperationOutput> {
        let input = PlaceGameInput {
            game_id: game_id.clone(),
            host,
        };
        let (code, message) = match self.step(PlaceGame, input, Cancel::WithWorkflow).await {
            Ok(Placement::Placed { route }) => {
                self.route_to(route.clone());
                return Ok(route);
            }
            Ok(Placement::Refused { code, message }) => (code, message),
            Err(err) => {
                let failure = StepFailure::from(err);
                let code = failure.code_or(ErrorCode::ServiceUnavailable);
                (code, format!("place game: {}", failure.message))
            }
        };
        Err(self.failure(code, message, touched).await)
    }

    /// Checks a lease token handed down by a parent (the seed's `Run`): it must have the shape
    /// of a token rtmanager issues (it carries the fence every record write needs), and Redis
    /// must hold exactly this token as the game's lease right now. Anything else (a forged
    /// token, a parent's token after its lease expired) is a `conflict` and the operation does
    /// nothing.
    pub async fn inherited_lease(
        &self,
        game_id: &GameId,
        token: &LeaseToken,
    ) -> Result<LeaseToken, OperationOutput> {
        if token.fence().is_none() {
            let message = "lease_token is not a token rtmanager issued (expected <fence>:<secret>)";
            return Err(self
                .failure(
                    ErrorCode::InvalidRequest,
                    message.into(),
                    Touched::default(),
                )
                .await);
        }
        self.track(|p| p.fence = token.fence());
        if !self.ctx.patched(INHERITED_LEASE_CHECK) {
            return Ok(token.clone());
        }
        let input = CheckLeaseInput {
            game_id: game_id.clone(),
            token: token.clone(),
        };
        let (code, message) = match self.step(CheckLease, input, Cancel::WithWorkflow).await {
            Ok(true) => return Ok(token.clone()),
            Ok(false) => (
                ErrorCode::Conflict,
                "lease_token is not the game's current lease (Redis holds another token or \
                 none): only the operation holding the lease may act under it; nothing was done"
                    .to_owned(),
            ),
            Err(err) => {
                let failure = StepFailure::from(err);
                (
                    failure.code_or(ErrorCode::ServiceUnavailable),
                    format!("check inherited lease: {}", failure.message),
                )
            }
        };
        Err(self.failure(code, message, Touched::default()).await)
    }

    /// Sets the audit fields (and the `GameId` and `OpSource` search attributes) once the
    /// request parsed.
    pub fn audit(&mut self, audit: Audit) {
        if self.search_attributes.identity {
            self.ctx.upsert_search_attributes([
                search::GAME_ID.value_set(audit.game_id.clone()),
                search::OP_SOURCE.value_set(audit.op_source.clone()),
            ]);
        }
        let game = audit.game_id.clone();
        self.track(|p| p.game_id = Some(game));
        self.audit = audit;
    }

    /// The `source_ref` the audit row carries (and a restart's children inherit).
    pub fn source_ref(&self) -> Option<&str> {
        self.audit.source_ref.as_deref()
    }

    /// Takes the game's lease (the seed's `TryAcquire`): a token with its fence, or the output
    /// to complete with (`conflict`, or `service_unavailable` once retries run out).
    pub async fn acquire_lease(&self, game_id: &GameId) -> Result<LeaseToken, OperationOutput> {
        // From the workflow's seeded random stream: deterministic on replay, so a retried
        // acquire recognises its own lease; unpredictable to anyone without the history.
        let secret = format!("{}{}", self.ctx.uuid4(), self.ctx.uuid4()).replace('-', "");
        self.begin(AcquireLease.name());
        let shape = StepShape::fast(
            self.settings,
            self.settings.fast_step_attempts,
            Cancel::WithWorkflow,
            // A takeover waits out the lock-delay, and once more if the dead holder's lease
            // was still being renewed.
            FAST_STEP_TIMEOUT + self.settings.lease_lock_delay * 2,
        );
        let input = AcquireLeaseInput {
            game_id: game_id.clone(),
            secret: secret.clone(),
        };
        let acquired = run_step(self.ctx, AcquireLease, input, shape).await;
        match acquired {
            Ok(LeaseOutcome::Acquired { fence }) => {
                self.track(|p| p.fence = Some(fence));
                Ok(LeaseToken::issued(fence, &secret))
            }
            Ok(LeaseOutcome::HeldByOther) => Err(self
                .failure(
                    ErrorCode::Conflict,
                    "another lifecycle operation is in progress for this game".into(),
                    Touched::default(),
                )
                .await),
            Err(err) => {
                let failure = StepFailure::from(err);
                let output = self
                    .failure(
                        failure.code_or(ErrorCode::ServiceUnavailable),
                        format!("acquire game lease: {}", failure.message),
                        Touched::default(),
                    )
                    .await;
                // A cancelled or timed-out acquire may still have written the key; the secret
                // alone identifies it (no fence is known), so release by the bare secret too.
                self.release_lease(game_id, LeaseToken::issued(u64::MAX, &secret))
                    .await;
                Err(output)
            }
        }
    }

    /// The seed's `Handle`: completes the request, audits it, and runs it under the game's
    /// lease (inherited from a parent, or acquired here and released on every path).
    pub async fn handle<R: Handled>(&mut self, mut request: R) -> OperationOutput {
        request.prepare(self.ctx.workflow_id());
        self.audit(Audit::of(&request, request.reason()));
        let (op, request) = (&*self, &request);
        let game_id = request.who().game_id;
        op.under_lease(game_id, request.inherited(), |token| async move {
            request.run(op, &token).await
        })
        .await
    }

    /// The seed's `Handle` and `Run` in one: runs `body` under the parent's `inherited` token
    /// once it is checked (and leaves it to the parent), else under a lease this operation
    /// acquires and releases on every path.
    pub async fn under_lease<F: std::future::Future<Output = OperationOutput>>(
        &self,
        game_id: &GameId,
        inherited: Option<&LeaseToken>,
        body: impl FnOnce(LeaseToken) -> F,
    ) -> OperationOutput {
        if let Some(token) = inherited {
            return match self.inherited_lease(game_id, token).await {
                Ok(token) => body(token).await,
                Err(output) => output,
            };
        }
        match self.acquire_lease(game_id).await {
            Ok(token) => self.with_lease(game_id, token, body).await,
            Err(output) => output,
        }
    }

    /// Runs `body` under a lease this operation took, and releases it on every path: with the
    /// audit row when the body ends through one (always, in practice), else afterwards.
    pub async fn with_lease<F: std::future::Future<Output = OperationOutput>>(
        &self,
        game_id: &GameId,
        token: LeaseToken,
        body: impl FnOnce(LeaseToken) -> F,
    ) -> OperationOutput {
        *self.held.borrow_mut() = Some((game_id.clone(), token.clone()));
        let output = body(token).await;
        let still_held = self.held.borrow_mut().take();
        if let Some((game_id, token)) = still_held {
            self.release_lease(&game_id, token).await;
        }
        output
    }

    /// Releases the lease even when the workflow was cancelled (the seed's fresh context).
    pub async fn release_lease(&self, game_id: &GameId, token: LeaseToken) {
        let _ = self
            .step(
                ReleaseLease,
                ReleaseLeaseInput {
                    game_id: game_id.clone(),
                    token,
                },
                Cancel::Detached,
            )
            .await;
    }

    /// Ends the operation: it changed what it was asked to change.
    pub async fn success(&self, record: RuntimeRecord, touched: Touched) -> OperationOutput {
        let stop = touched.stop;
        self.append(Outcome::Success, None, None, touched).await;
        OperationOutput {
            stop,
            ..OperationOutput::success(record)
        }
    }

    /// Ends the operation: nothing had to change (the seed's `recordReplayNoOp`).
    pub async fn replay_no_op(&self, record: RuntimeRecord) -> OperationOutput {
        let touched = Touched::of(&record);
        self.append(Outcome::Success, Some(ErrorCode::ReplayNoOp), None, touched)
            .await;
        OperationOutput::replay_no_op(record)
    }

    /// Ends the operation with a business failure: a value, never a workflow failure.
    pub async fn failure(
        &self,
        code: ErrorCode,
        message: String,
        touched: Touched,
    ) -> OperationOutput {
        let stop = touched.stop;
        self.append(Outcome::Failure, Some(code), Some(message.clone()), touched)
            .await;
        OperationOutput {
            stop,
            ..OperationOutput::failure(code, message)
        }
    }

    /// Ends the operation: the game has no runtime record.
    pub async fn record_missing(&self, game_id: &GameId) -> OperationOutput {
        let message = format!(
            "runtime record for game {:?} does not exist",
            game_id.as_str()
        );
        self.failure(ErrorCode::NotFound, message, Touched::default())
            .await
    }

    /// Ends the operation: `LoadRecord` failed for good.
    pub async fn record_unreadable(
        &self,
        err: ActivityExecutionError,
        touched: Touched,
    ) -> OperationOutput {
        let failure = StepFailure::from(err);
        let code = failure.code_or(ErrorCode::Internal);
        let message = format!("load runtime record: {}", failure.message);
        self.failure(code, message, touched).await
    }

    /// Best effort: the activity logs a failure and the outcome stands.
    async fn append(
        &self,
        outcome: Outcome,
        error_code: Option<ErrorCode>,
        error_message: Option<String>,
        touched: Touched,
    ) {
        if self.search_attributes.outcome {
            let outcome = search::OUTCOME.value_set(outcome.as_str().to_owned());
            self.ctx.upsert_search_attributes([outcome]);
        }
        self.track(|p| {
            p.step = "done".to_owned();
            p.outcome = Some(outcome.as_str().to_owned());
        });
        let entry = OperationEntry {
            operation_id: self.operation_id.clone(),
            game_id: self.audit.game_id.clone(),
            op_kind: self.kind,
            op_source: self.audit.op_source.clone(),
            source_ref: self.audit.source_ref.clone(),
            image_ref: touched.image_ref,
            container_id: touched.container_id,
            outcome,
            error_code,
            error_message,
            started_at: self.started_at,
            reason_label: self.audit.reason_label.clone(),
            op_source_label: self.audit.op_source_label.clone(),
            stop: touched.stop,
        };
        let append = self.best_effort(AppendOperationLog, entry);
        let held = self.held.borrow_mut().take();
        match held {
            Some((game_id, token)) => {
                let _ = futures::join!(append, self.release_lease(&game_id, token));
            }
            None => {
                let _ = append.await;
            }
        }
    }
}
