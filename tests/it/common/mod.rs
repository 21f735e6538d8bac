//! The integration-test harness: every test gets its own database, task queue, Redis key prefix
//! and health stream, its own in-process worker, and its own labelled containers, all removed
//! when the [`TestApp`] is dropped. Services come from `.dev/env` (written by `scripts/dev`).
#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bollard::{
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{CreateContainerOptions, RemoveContainerOptions},
    Docker,
};
use diesel::{prelude::*, PgConnection};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use redis::AsyncCommands;
use rtmanager::config::ExposeSecret;
use temporalio_client::Client;
use tokio::sync::oneshot;

use rtmanager::{client, worker, Config};
use rtmanager_activities::{schema, store::Store, Telemetry};
use rtmanager_domain::{
    ErrorCode, GameId, OpKind, OperationOutput, Outcome, RuntimeRecord, RuntimeStatus,
};

/// Loads `.dev/env` into the process environment for variables not already set.
pub fn load_dev_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".dev/env");
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        for line in text.lines() {
            if let Some((key, value)) = line.split_once('=') {
                if std::env::var_os(key).is_none() {
                    // SAFETY: runs once, before any test thread reads the environment here.
                    unsafe { std::env::set_var(key, value) };
                }
            }
        }
    });
}

/// Logs go through the test writer (shown only for failing tests); `RTMANAGER_LOG` filters.
pub fn init_test_logging() {
    let filter = std::env::var("RTMANAGER_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The local game image (exits promptly on SIGTERM).
pub fn game_image() -> String {
    load_dev_env();
    std::env::var("RTMANAGER_DEMO_IMAGE").unwrap_or_else(|_| "rtmanager-game:dev".into())
}

/// The `temporal` CLI installed by `scripts/dev`.
pub fn temporal_cli() -> String {
    load_dev_env();
    std::env::var("RTMANAGER_TEMPORAL_CLI").unwrap_or_else(|_| "temporal".into())
}

/// `temporal <args> --address <config's server>`: the CLI aimed at the test's Temporal (the
/// flag belongs to the subcommand, so it follows `args`; the caller adds the rest).
pub fn temporal_command(config: &Config, args: &[&str]) -> Command {
    let address = config.temporal_address.trim_start_matches("http://");
    let mut command = Command::new(temporal_cli());
    command.args(args).args(["--address", address]);
    command
}

/// The local stack's Docker hosts (`RTMANAGER_DEV_HOST_IDS` in `.dev/env`): two-host tests need
/// two and say so.
pub fn dev_host_ids() -> Vec<String> {
    dev_list("RTMANAGER_DEV_HOST_IDS")
}

/// Their Docker endpoints, in the same order (`RTMANAGER_DEV_DOCKER_HOSTS`).
pub fn dev_docker_hosts() -> Vec<String> {
    dev_list("RTMANAGER_DEV_DOCKER_HOSTS")
}

fn dev_list(name: &str) -> Vec<String> {
    load_dev_env();
    let list: Vec<String> = std::env::var(name)
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(
        list.len() >= 2,
        "two-host tests need two Docker engines: {name} in .dev/env names {list:?} \
         (scripts/dev up runs the second one unless RTMANAGER_DEV_SECOND_HOST=0)"
    );
    list
}

/// A test's private configuration: its own database, task queue and Redis names.
pub struct TestConfig {
    pub config: Config,
    admin_url: String,
    database: String,
}

impl TestConfig {
    pub fn new() -> Self {
        load_dev_env();
        let mut config = Config::from_env().expect("configuration from .dev/env");
        let database = unique("rtm_test").replace('-', "_");
        let admin_url = config.database_url.expose_secret().to_owned();
        let mut conn = PgConnection::establish(&admin_url).expect("connect to PostgreSQL");
        diesel::RunQueryDsl::execute(
            diesel::sql_query(format!("CREATE DATABASE {database}")),
            &mut conn,
        )
        .expect("create the test database");
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&database);
        let id = unique("t");
        config = Config {
            database_url: rtmanager::config::SecretString::from(url.as_str()),
            task_queue: format!("rtmanager-{id}"),
            redis_prefix: format!("rtm-{id}:"),
            health_stream: format!("rtm-{id}:health_events"),
            database_pool_size: 4,
            build_id: format!("test-{id}"),
            container_network: "none".into(),
            start_settle: Duration::from_millis(200),
            // No Schedule per test; the reconciler tests run rounds themselves (or turn it on).
            reconcile_interval: Duration::ZERO,
            // Worker processes serve no metrics port unless a test asks (they would collide).
            metrics_addr: rtmanager::config::OptionalAddr(None),
            ..config
        };
        Self {
            config,
            admin_url,
            database,
        }
    }
}

impl Drop for TestConfig {
    fn drop(&mut self) {
        let (admin, db) = (self.admin_url.clone(), self.database.clone());
        // Dropped from async tests: do the blocking work on a plain thread.
        let _ = std::thread::spawn(move || {
            if let Ok(mut conn) = PgConnection::establish(&admin) {
                let _ = diesel::RunQueryDsl::execute(
                    diesel::sql_query(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")),
                    &mut conn,
                );
            }
        })
        .join();
    }
}

/// One test's running rtmanager: an in-process worker plus handles on every service.
pub struct TestApp {
    pub cfg: TestConfig,
    pub client: Client,
    pub telemetry: Telemetry,
    pub docker: Docker,
    pub redis: redis::aio::ConnectionManager,
    pub store: Store,
    shutdown: Option<oneshot::Sender<()>>,
    worker: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    containers: Vec<String>,
    games: Vec<String>,
}

impl TestApp {
    /// A worker with the default configuration.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A worker whose configuration `adjust` may change first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = TestConfig::new();
        adjust(&mut cfg.config);
        let mut app = Self::prepared(cfg).await;
        app.start_worker();
        app
    }

    /// Logging, migrations and every handle, no worker yet.
    async fn prepared(cfg: TestConfig) -> Self {
        Self::without_worker(cfg).await
    }

    /// [`TestApp::without_worker`] on a fresh configuration that `adjust` may change first: the
    /// set-up of every test that runs worker processes.
    pub async fn spawn_without_worker(adjust: impl FnOnce(&mut Config)) -> Self {
        let mut cfg = TestConfig::new();
        adjust(&mut cfg.config);
        Self::without_worker(cfg).await
    }

    /// The test's database migrated and handles on every service, but no worker (for tests
    /// that run the worker binary).
    pub async fn without_worker(cfg: TestConfig) -> Self {
        init_test_logging();
        rtmanager_activities::store::run_migrations(cfg.config.database_url.expose_secret())
            .await
            .expect("migrations");
        let client = worker::connect_temporal(&cfg.config)
            .await
            .expect("Temporal");
        let docker = Docker::connect_with_local_defaults().expect("docker");
        // The harness's own handle uses the real Redis even when a test breaks the worker's.
        let redis_url = std::env::var("RTMANAGER_REDIS_URL")
            .unwrap_or_else(|_| cfg.config.redis_url.expose_secret().to_owned());
        // Reconnects by itself: the restart tests take Redis down under it.
        let redis = redis::Client::open(redis_url)
            .unwrap()
            .get_connection_manager()
            .await
            .expect("redis");
        let store = Store::new(cfg.config.database_url.expose_secret(), 2).unwrap();
        Self {
            cfg,
            client,
            telemetry: Telemetry::new(),
            docker,
            redis,
            store,
            shutdown: None,
            worker: None,
            containers: Vec::new(),
            games: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg.config
    }

    /// A worker on the harness's own client, as `rtmanager run` shares one client between the
    /// bridge and the worker: workflows this app starts are eligible for eager start.
    pub async fn spawn_sharing_client() -> Self {
        let mut app = Self::prepared(TestConfig::new()).await;
        app.launch_worker(Some(app.client.clone()));
        app
    }

    pub fn start_worker(&mut self) {
        self.launch_worker(None);
    }

    /// A worker with a client of its own, or on `client`.
    fn launch_worker(&mut self, client: Option<temporalio_client::Client>) {
        let (tx, rx) = oneshot::channel::<()>();
        let config = self.cfg.config.clone();
        let telemetry = self.telemetry.clone();
        // The SDK's worker future is not `Send`: it gets a thread and a runtime of its own.
        self.worker = Some(std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let shutdown = async {
                let _ = rx.await;
            };
            runtime.block_on(async {
                let client = match client {
                    Some(client) => client,
                    None => worker::connect_temporal(&config).await?,
                };
                let deps = worker::build_dependencies(&config, telemetry, &client)?;
                worker::run_worker(&config, client, deps, shutdown).await
            })
        }));
        self.shutdown = Some(tx);
    }

    /// The games this app created (their containers are removed with it).
    pub fn game_ids(&self) -> Vec<String> {
        self.games.clone()
    }

    /// Routes operations like the bridge and the consumer of this app's configuration.
    pub fn router(&self) -> client::Router {
        let config = self.config();
        client::Router::new(
            self.store.clone(),
            config.task_queue.clone(),
            config.host_down_after,
        )
    }

    /// A fresh game id whose containers (whoever creates them) are removed with the app.
    pub fn new_game(&mut self, prefix: &str) -> String {
        let game = unique(prefix);
        self.games.push(game.clone());
        game
    }

    /// A fresh game with a running labelled container and a `running` record naming it, as
    /// StartRuntime would have left it: `(game id, container id)`.
    pub async fn running_game(&mut self, prefix: &str) -> (String, String) {
        let game = self.new_game(prefix);
        let container = self.game_container(&game, None).await;
        self.insert_record(&game, "running", Some(&container)).await;
        (game, container)
    }

    /// A fresh game started through `StartRuntime` of the game image (the real path, where
    /// [`TestApp::running_game`] inserts a record): `(game id, the started record)`.
    pub async fn started_game(&mut self, prefix: &str) -> (String, RuntimeRecord) {
        let game = self.new_game(prefix);
        let out = self.start(&game, &game_image()).await;
        assert_outcome(&out, Outcome::Success, None);
        (game, out.record.expect("the started record"))
    }

    /// [`TestApp::started_game`] for the tests that act on its container: `(game id, container
    /// id)`.
    pub async fn started_container(&mut self, prefix: &str) -> (String, String) {
        let (game, record) = self.started_game(prefix).await;
        let container = record.current_container_id.expect("the started container");
        (game, container)
    }

    /// [`TestApp::running_game`] whose lease `token` holds: another operation's, or a parent's
    /// that a child inherits.
    pub async fn leased_game(&mut self, prefix: &str, token: &str) -> (String, String) {
        let (game, container) = self.running_game(prefix).await;
        self.hold_lease(&game, token).await;
        (game, container)
    }

    /// [`TestApp::running_game`] whose container is already gone: the stop's vanished path.
    pub async fn vanished_game(&mut self, prefix: &str) -> (String, String) {
        let (game, container) = self.running_game(prefix).await;
        self.remove_container(&container).await;
        (game, container)
    }

    /// [`TestApp::running_game`] whose container ignores SIGTERM, so that a stop of it takes
    /// the whole graceful timeout: the window a test acts in while the stop is under way.
    pub async fn slow_game(&mut self, prefix: &str) -> (String, String) {
        let game = self.new_game(prefix);
        let container = self
            .game_container(&game, Some(IGNORES_SIGTERM.to_vec()))
            .await;
        self.insert_record(&game, "running", Some(&container)).await;
        (game, container)
    }

    /// Starts `StopRuntime` for `game` (reason and source `admin`) and returns its handle once
    /// the stop holds the game's lease.
    pub async fn stop_holding_lease(&self, game: &str) -> client::Handle {
        let handle = self.start_workflow(OpKind::Stop, &stop_json(game)).await;
        self.await_lease(game).await;
        handle
    }

    /// Starts `StopRuntime` for `game` and returns its handle once Docker is stopping `container`:
    /// the window (a slow game's whole graceful timeout) in which a test crashes, cancels or
    /// restarts something under a stop.
    pub async fn stop_under_way(&self, game: &str, container: &str) -> client::Handle {
        let handle = self.stop_holding_lease(game).await;
        self.await_stop_signal(container).await;
        handle
    }

    /// Runs the workflow of `kind` with `json` on a worker process that aborts after `step`,
    /// then on a fresh one: the crash tests' common part. Returns the operation's output.
    pub async fn crash_after(&self, step: &str, kind: OpKind, json: &str) -> OperationOutput {
        let fault = format!("after:{step}=abort");
        let mut doomed = worker_process_with(self.config(), &[("RTMANAGER_FAULTS", &fault)]);
        let handle = self.start_workflow(kind, json).await;
        let exited = doomed
            .exit_status(&format!("the worker to reach {step}"))
            .await;
        assert!(!exited.success(), "the worker aborted after {step}");
        let mut fresh = worker_process(self.config());
        let what = format!("the operation finishes after a crash at {step}");
        let out = finish_within(&handle, Duration::from_secs(120), &what).await;
        let _ = fresh.kill();
        out
    }

    /// Runs `StopRuntime` for `game` (as [`TestApp::stop`]) and, once it holds the game's lease,
    /// `meanwhile`: a stop racing another actor. Returns both results.
    pub async fn stop_meanwhile<T>(
        &self,
        game: &str,
        meanwhile: impl std::future::Future<Output = T>,
    ) -> (OperationOutput, T) {
        let once_leased = async {
            self.await_lease(game).await;
            meanwhile.await
        };
        tokio::join!(self.stop(game), once_leased)
    }

    /// Asserts that `out`, a stop of `game` (container `cid`) that met `holder`'s lease, was
    /// refused as a conflict that touched nothing: the container runs, the record still says
    /// `running`, and the lease is still `holder`'s.
    pub async fn assert_refused_by_lease(
        &self,
        out: &OperationOutput,
        game: &str,
        cid: &str,
        holder: &str,
    ) {
        assert_eq!(out.error_code, Some(ErrorCode::Conflict), "{out:?}");
        assert_eq!(self.container_running(cid).await, Some(true));
        assert_eq!(self.status(game).await, RuntimeStatus::Running);
        let lease = self.lease_holder(game).await;
        assert_eq!(
            lease.as_deref(),
            Some(holder),
            "the holder's lease is not touched"
        );
    }

    /// Asserts the end state of an operation that must have run exactly once: one audit row for
    /// `game`, and its lease released (`context` names the case in a failure).
    pub async fn assert_ran_once(&self, game: &str, context: &str) {
        let rows = self.op_log(game).await;
        assert_eq!(rows.len(), 1, "{context}: exactly one audit row: {rows:?}");
        let holder = self.lease_holder(game).await;
        assert_eq!(holder, None, "{context}: lease released");
    }

    /// Asserts the stop-outcome metric under `[outcome, reason, op_source]` reads `expected`:
    /// every stop must be counted once, whatever way it came in.
    #[track_caller]
    pub fn assert_stops_counted(&self, labels: [&str; 3], expected: u64) {
        let [outcome, reason, op_source] = labels;
        let counted = self
            .telemetry
            .stop_outcome_count(outcome, reason, op_source);
        assert_eq!(counted, expected, "stops counted as {labels:?}");
    }

    /// Waits (30 s at most) until some operation holds `game`'s lease; returns its token.
    pub async fn await_lease(&self, game: &str) -> String {
        let what = "the game's lease to be taken";
        eventually(what, Duration::from_secs(30), || self.lease_holder(game)).await
    }

    /// Waits (30 s at most) until Docker has sent `container` its stop signal, as its event log
    /// shows: the operation stopping it loaded its record and is inside its Docker step.
    pub async fn await_stop_signal(&self, container: &str) {
        use futures::StreamExt;
        let options = bollard::query_parameters::EventsOptions {
            // Docker keeps recent events: one sent before this call is found too.
            since: Some("0".into()),
            until: None,
            filters: Some(HashMap::from([
                ("container".to_owned(), vec![container.to_owned()]),
                ("event".to_owned(), vec!["kill".to_owned()]),
            ])),
        };
        let mut events = self.docker.events(Some(options));
        let event = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for Docker to signal {container}"));
        event
            .expect("the event stream ended")
            .expect("read Docker's events");
    }

    /// Every container labelled for `game`, with whether it runs.
    pub async fn containers_of(&self, game: &str) -> Vec<(String, bool)> {
        list_game_containers(&self.docker, game).await
    }

    /// Runs `StartRuntime` of `image` for `game` from source `admin`.
    pub async fn start(&self, game: &str, image: &str) -> OperationOutput {
        self.execute(OpKind::Start, &image_json(game, image)).await
    }

    /// Runs `PatchRuntime` of `game` to `image` from source `admin`.
    pub async fn patch(&self, game: &str, image: &str) -> OperationOutput {
        self.execute(OpKind::Patch, &image_json(game, image)).await
    }

    /// Starts the workflow of `kind` with raw JSON input on this app's task queue; returns its
    /// handle.
    pub async fn start_workflow(&self, kind: OpKind, json: &str) -> client::Handle {
        self.start_workflow_as(kind, &unique("wf"), json).await
    }

    /// [`TestApp::start_workflow`] with the workflow id `workflow_id`, for tests that look up
    /// its children by the ids derived from it.
    pub async fn start_workflow_as(
        &self,
        kind: OpKind,
        workflow_id: &str,
        json: &str,
    ) -> client::Handle {
        // The host's own queue, where the client routes a game's operations (the `temporal`
        // CLI tests use the shared queue).
        let queue = &self.config().host_task_queue();
        let input = client::json_input(json.as_bytes());
        client::start_raw(&self.client, queue, kind, workflow_id, input)
            .await
            .expect("start the workflow")
    }

    /// Runs `StopRuntime` with raw JSON input and waits for its output.
    pub async fn stop_raw(&self, json: &str) -> OperationOutput {
        self.execute(OpKind::Stop, json).await
    }

    pub async fn execute(&self, kind: OpKind, json: &str) -> OperationOutput {
        let handle = self.start_workflow(kind, json).await;
        client::result(&handle).await.expect("workflow result")
    }

    /// Runs `StopRuntime` for `game_id` with reason `admin` from source `admin`.
    pub async fn stop(&self, game_id: &str) -> OperationOutput {
        self.stop_raw(&stop_json(game_id)).await
    }

    /// Runs a child's `StopRuntime` for `game_id` (reason `restart`) under the inherited `token`.
    pub async fn stop_inheriting(&self, game_id: &str, token: &str) -> OperationOutput {
        self.stop_raw(&inherited_stop_json(game_id, token)).await
    }

    /// Creates and starts a container labelled for `game_id` as StartRuntime labels it (`cmd`
    /// overrides the image's).
    pub async fn game_container(&mut self, game_id: &str, cmd: Option<Vec<&str>>) -> String {
        let labels = self.game_labels(game_id);
        self.container(labels, cmd).await
    }

    /// The labels StartRuntime gives `game_id`'s containers in this app's deployment.
    pub fn game_labels(&self, game_id: &str) -> HashMap<String, String> {
        HashMap::from([
            ("rtmanager.game_id".to_string(), game_id.to_string()),
            ("rtmanager.managed".to_string(), "true".to_string()),
            (
                "rtmanager.pool".to_string(),
                self.config().task_queue.clone(),
            ),
        ])
    }

    /// Creates and starts a container with exactly `labels`.
    pub async fn container(
        &mut self,
        labels: HashMap<String, String>,
        cmd: Option<Vec<&str>>,
    ) -> String {
        self.container_limited(labels, cmd, None).await
    }

    /// [`TestApp::container`] with a memory limit (no swap beyond it): the OOM test's.
    pub async fn container_limited(
        &mut self,
        labels: HashMap<String, String>,
        cmd: Option<Vec<&str>>,
        memory_bytes: Option<i64>,
    ) -> String {
        self.container_shaped(labels, cmd, |body| {
            let host = body.host_config.get_or_insert_with(Default::default);
            host.memory = memory_bytes;
            host.memory_swap = memory_bytes;
        })
        .await
    }

    /// [`TestApp::container`], with `shape` applied to the create request (a memory limit, a
    /// stop signal).
    pub async fn container_shaped(
        &mut self,
        labels: HashMap<String, String>,
        cmd: Option<Vec<&str>>,
        shape: impl FnOnce(&mut ContainerCreateBody),
    ) -> String {
        let mut body = ContainerCreateBody {
            image: Some(game_image()),
            cmd: cmd.map(|c| c.into_iter().map(String::from).collect()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        shape(&mut body);
        let name = unique("rtm-test");
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .expect("create container");
        self.containers.push(created.id.clone());
        self.docker
            .start_container(&created.id, None)
            .await
            .expect("start container");
        created.id
    }

    pub async fn container_running(&self, id: &str) -> Option<bool> {
        self.docker
            .inspect_container(id, None)
            .await
            .ok()
            .and_then(|c| c.state.and_then(|s| s.running))
    }

    pub async fn remove_container(&self, id: &str) {
        let _ = self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }

    pub async fn pg(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(self.config().database_url.expose_secret())
            .await
            .expect("connect to the test database")
    }

    /// Inserts a runtime record as StartRuntime would have.
    pub async fn insert_record(&self, game_id: &str, status: &str, container_id: Option<&str>) {
        use schema::runtime_records::dsl as r;
        let now = chrono::Utc::now();
        diesel::insert_into(r::runtime_records)
            .values((
                r::game_id.eq(game_id),
                r::status.eq(status),
                r::current_container_id.eq(container_id),
                r::current_image_ref.eq(game_image()),
                r::started_at.eq(now),
                r::last_op_at.eq(now),
                r::host_id.eq(self.config().host_id.as_str()),
            ))
            .execute(&mut self.pg().await)
            .await
            .expect("insert record");
    }

    pub async fn record(&self, game_id: &str) -> Option<RuntimeRecord> {
        self.store
            .get_record(&GameId::parse(game_id).unwrap())
            .await
            .expect("load record")
    }

    /// The stored record's status: what most end-state checks look at (the record must exist).
    pub async fn status(&self, game_id: &str) -> RuntimeStatus {
        self.record(game_id).await.expect("a record").status
    }

    /// Deletes the record behind the operations' backs, as an operator or another path would.
    pub async fn delete_record(&self, game_id: &str) {
        use schema::runtime_records::dsl as r;
        diesel::delete(r::runtime_records.find(game_id))
            .execute(&mut self.pg().await)
            .await
            .expect("delete the record");
    }

    /// Moves the record to `stopped` as a reconciler would, behind a running operation's back.
    pub async fn mark_stopped(&self, game_id: &str) {
        self.mark_stopped_by(game_id, "reconciler").await;
    }

    /// Moves the record to `stopped` as the operation `operation_id` (`workflow_id/run_id`)
    /// would have written it.
    pub async fn mark_stopped_by(&self, game_id: &str, operation_id: &str) {
        use schema::runtime_records::dsl as r;
        diesel::update(r::runtime_records.find(game_id))
            .set((r::status.eq("stopped"), r::last_op_id.eq(operation_id)))
            .execute(&mut self.pg().await)
            .await
            .expect("move the record");
    }

    /// `game_id`'s audit rows, oldest first, each as an [`OpRow`] (its nested tuples select
    /// the [`OpResult`], [`OpRefs`] and [`OpStop`] column groups).
    pub async fn op_log(&self, game_id: &str) -> Vec<OpRow> {
        use schema::operation_log::dsl as o;
        o::operation_log
            .filter(o::game_id.eq(game_id))
            .order(o::id)
            .select((
                o::op_kind,
                o::op_source,
                (
                    o::outcome,
                    o::error_code,
                    o::error_message,
                    o::finished_at.is_not_null(),
                ),
                (o::container_id, o::image_ref, o::source_ref),
                (o::stop_signal, o::stop_timeout_secs, o::stop_ended),
            ))
            .load::<OpRow>(&mut self.pg().await)
            .await
            .expect("read operation_log")
    }

    /// The error code of `game_id`'s first audit row (the row must exist).
    pub async fn first_error_code(&self, game_id: &str) -> Option<String> {
        self.op_log(game_id).await[0].result.error_code.clone()
    }

    pub async fn op_log_count(&self) -> i64 {
        use schema::operation_log::dsl as o;
        o::operation_log
            .count()
            .get_result(&mut self.pg().await)
            .await
            .unwrap()
    }

    /// The record's lease fence, as stored.
    pub async fn record_fence(&self, game_id: &str) -> i64 {
        use schema::runtime_records::dsl as r;
        r::runtime_records
            .find(game_id)
            .select(r::fence)
            .first(&mut self.pg().await)
            .await
            .expect("read the record's fence")
    }

    /// Overwrites the record's fence (to set up a record written under some fence).
    pub async fn set_record_fence(&self, game_id: &str, fence: i64) {
        use schema::runtime_records::dsl as r;
        diesel::update(r::runtime_records.find(game_id))
            .set(r::fence.eq(fence))
            .execute(&mut self.pg().await)
            .await
            .expect("write the record's fence");
    }

    pub fn lease_key(&self, game_id: &str) -> String {
        format!("{}lease:{game_id}", self.config().redis_prefix)
    }

    pub async fn lease_holder(&self, game_id: &str) -> Option<String> {
        // Retried: right after a Redis restart the first call reports the broken connection.
        let key = self.lease_key(game_id);
        eventually("Redis to answer", Duration::from_secs(4), || async {
            self.redis.clone().get::<_, Option<String>>(&key).await.ok()
        })
        .await
    }

    /// Sets `game_id`'s lease to `token` for 60 s, as another operation holding it would.
    pub async fn hold_lease(&self, game_id: &str, token: &str) {
        let _: () = self
            .redis
            .clone()
            .set_ex(self.lease_key(game_id), token, 60)
            .await
            .expect("set the lease");
    }

    /// Every entry of this test's health stream, as field maps.
    pub async fn health_events(&self) -> Vec<HashMap<String, String>> {
        let reply: redis::streams::StreamRangeReply = self
            .redis
            .clone()
            .xrange_all(&self.config().health_stream)
            .await
            .expect("XRANGE");
        reply
            .ids
            .into_iter()
            .map(|entry| {
                entry
                    .map
                    .into_iter()
                    .map(|(k, v)| (k, redis::from_redis_value(v).unwrap_or_default()))
                    .collect()
            })
            .collect()
    }

    /// The `container_disappeared` events: what a stop's vanished path publishes. A container
    /// removed or stopped behind rtmanager's back is also a crash to the events watcher
    /// (`container_exited`), which the stop tests leave to `tests/it/watch.rs`.
    pub async fn disappeared_events(&self) -> Vec<HashMap<String, String>> {
        let mut events = self.health_events().await;
        events.retain(|e| e.get("event_type").map(String::as_str) == Some("container_disappeared"));
        events
    }

    /// Stops the in-process worker and waits for it to drain.
    pub async fn shutdown_worker(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(worker) = self.worker.take() {
            let joined = tokio::task::spawn_blocking(move || worker.join());
            let _ = tokio::time::timeout(Duration::from_secs(30), joined).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let mut ids = std::mem::take(&mut self.containers);
        let games = std::mem::take(&mut self.games);
        let docker = self.docker.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for game in games {
                    ids.extend(
                        list_game_containers(&docker, &game)
                            .await
                            .into_iter()
                            .map(|c| c.0),
                    );
                }
                for id in ids {
                    let _ = docker
                        .remove_container(
                            &id,
                            Some(RemoveContainerOptions {
                                force: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn list_game_containers(docker: &Docker, game: &str) -> Vec<(String, bool)> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("rtmanager.game_id={game}")],
    )]);
    docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list containers")
        .into_iter()
        .map(|c| {
            let running = c.state.map(|s| s.to_string()) == Some("running".to_string());
            (c.id.unwrap_or_default(), running)
        })
        .collect()
}

/// One operation_log row as the tests look at it: which operation, from where, and its
/// columns grouped by what they tell (selected as nested tuples by [`TestApp::op_log`]).
#[derive(Debug, Clone, Queryable)]
pub struct OpRow {
    pub op_kind: String,
    pub op_source: String,
    pub result: OpResult,
    pub refs: OpRefs,
    pub stop: OpStop,
}

/// How an audited operation ended: its outcome, its error, and whether `finished_at` is set.
#[derive(Debug, Clone, Queryable)]
pub struct OpResult {
    pub outcome: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub finished: bool,
}

/// What an audit row names: the container, the image and the caller's correlation id.
#[derive(Debug, Clone, Queryable)]
pub struct OpRefs {
    pub container_id: Option<String>,
    pub image_ref: Option<String>,
    pub source_ref: Option<String>,
}

/// A stop's own columns (`stop_signal`, `stop_timeout_secs`, `stop_ended`), `None` elsewhere.
#[derive(Debug, Clone, Queryable)]
pub struct OpStop {
    pub signal: Option<String>,
    pub timeout_secs: Option<i32>,
    pub ended: Option<String>,
}

/// Asserts an operation's outcome and error code, showing the whole output when they differ.
#[track_caller]
pub fn assert_outcome(out: &OperationOutput, outcome: Outcome, error_code: Option<ErrorCode>) {
    assert_eq!(
        (out.outcome, out.error_code),
        (outcome, error_code),
        "{out:?}"
    );
}

/// A game server that ignores SIGTERM: only the graceful timeout's SIGKILL stops it.
pub const IGNORES_SIGTERM: &[&str] = &["sleep", "3600"];

/// `StopRuntime`'s input for `game`, reason and source `admin`.
pub fn stop_json(game: &str) -> String {
    format!(r#"{{"game_id":"{game}","reason":"admin","op_source":"admin"}}"#)
}

/// A child's `StopRuntime` input for `game`: reason `restart`, under the parent's lease `token`.
pub fn inherited_stop_json(game: &str, token: &str) -> String {
    format!(
        r#"{{"game_id":"{game}","reason":"restart","op_source":"admin","lease_token":"{token}"}}"#
    )
}

/// The input `StartRuntime` and `PatchRuntime` share: `game` to `image`, source `admin`.
pub fn image_json(game: &str, image: &str) -> String {
    format!(r#"{{"game_id":"{game}","image_ref":"{image}","op_source":"admin"}}"#)
}

/// `RestartRuntime`'s input for `game`, source `admin`.
pub fn restart_json(game: &str) -> String {
    format!(r#"{{"game_id":"{game}","op_source":"admin"}}"#)
}

/// Cancels the workflow and returns its output, failing the test with `what` unless it
/// completes within 30 s (a cancelled operation must still end with a result).
pub async fn cancel_and_finish(handle: &client::Handle, what: &str) -> OperationOutput {
    let options = temporalio_client::WorkflowCancelOptions::default();
    handle.cancel(options).await.expect("cancel the workflow");
    finish_within(handle, Duration::from_secs(30), what).await
}

/// The workflow's output, failing the test with `what` unless it completes within `timeout`
/// (an operation must end, not stay running).
pub async fn finish_within(
    handle: &client::Handle,
    timeout: Duration,
    what: &str,
) -> OperationOutput {
    tokio::time::timeout(timeout, client::result(handle))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {timeout:?}"))
        .expect("workflow result")
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Pacing between checks: this is the poll.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `rtmanager worker` binary, configured like `config`, as a child process.
pub fn worker_process(config: &Config) -> WorkerProcess {
    worker_process_with(config, &[])
}

/// [`worker_process`] with extra environment (e.g. `RTMANAGER_FAULTS`).
pub fn worker_process_with(config: &Config, extra: &[(&str, &str)]) -> WorkerProcess {
    let mut command = rtmanager_command(config);
    command
        .envs(extra.iter().copied())
        .arg("worker")
        .env("RTMANAGER_LOG", "warn")
        .stdin(Stdio::null());
    WorkerProcess::spawn(command)
}

/// What a worker logs when it stalls at a `sleep:<ms>` fault point (see `RTMANAGER_FAULTS`).
pub const STALLING: &str = "fault injection: stalling";

/// An `rtmanager worker` child process whose log is kept, so that a test waits for a line (a
/// fault point reached) instead of sleeping; it is killed when dropped, by a failing test too.
pub struct WorkerProcess {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl WorkerProcess {
    fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the rtmanager worker");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, log }
    }

    /// SIGKILLs the worker and reaps it.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        self.child.kill()?;
        self.child.wait()
    }

    /// Waits (60 s at most, else fails with `what`) for the worker to exit by itself, as a
    /// fault's `abort` makes it.
    pub async fn exit_status(&mut self, what: &str) -> ExitStatus {
        let child = &mut self.child;
        eventually(what, Duration::from_secs(60), || {
            std::future::ready(child.try_wait().expect("wait for the worker"))
        })
        .await
    }

    /// Waits (30 s at most) until `count` lines of the worker's log contain `needle`.
    pub async fn await_log(&self, needle: &str, count: usize) {
        let what = format!("{count} log lines with {needle:?}");
        eventually(&what, Duration::from_secs(30), || async {
            let log = self.log.lock().unwrap();
            (log.lines().filter(|line| line.contains(needle)).count() >= count).then_some(())
        })
        .await
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Runs `command` (`what`, for the message) to its end and fails the test, showing its stdout
/// and stderr, unless it succeeded: what every test driving a command-line tool checks first.
pub fn run_ok(command: &mut Command, what: &str) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|err| panic!("run {what}: {err}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {stdout}\n{stderr}");
    out
}

/// [`run_ok`]'s stdout as text: for the tests that read what a tool printed.
pub fn run_ok_stdout(command: &mut Command, what: &str) -> String {
    let out = run_ok(command, what);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback address whose port was free a moment ago: for a server the test starts itself.
pub fn free_local_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .to_string()
}

/// Sends one raw HTTP/1.1 `request` to `addr` and reads the whole response as text; `None`
/// while nothing answers there (yet), so that [`eventually`] can poll a server coming up.
pub async fn http_exchange(addr: &str, request: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// The rtmanager binary with the environment that makes it use `config`: each setting below as
/// its `RTMANAGER_<name>` variable.
pub fn rtmanager_command(config: &Config) -> Command {
    let secs = |d: Duration| d.as_secs().to_string();
    let ms = |d: Duration| d.as_millis().to_string();
    let (database_url, redis_url) = (&config.database_url, &config.redis_url);
    let metrics_addr = config.metrics_addr.0.map(|a| a.to_string());
    let settings = [
        ("TEMPORAL_ADDRESS", config.temporal_address.clone()),
        ("NAMESPACE", config.namespace.clone()),
        ("TASK_QUEUE", config.task_queue.clone()),
        ("DATABASE_URL", database_url.expose_secret().to_owned()),
        ("DATABASE_POOL_SIZE", "4".to_owned()),
        ("REDIS_URL", redis_url.expose_secret().to_owned()),
        ("REDIS_PREFIX", config.redis_prefix.clone()),
        ("HEALTH_STREAM", config.health_stream.clone()),
        ("DOCKER_HOST", config.docker_host.clone()),
        ("STOP_TIMEOUT_SECS", secs(config.stop_timeout)),
        ("LEASE_TTL_SECS", secs(config.lease_ttl)),
        ("LEASE_LOCK_DELAY_MS", ms(config.lease_lock_delay)),
        ("LOCAL_FAST_STEPS", config.local_fast_steps.to_string()),
        ("LOCAL_DOCKER_STEPS", config.local_docker_steps.to_string()),
        ("CONTAINER_NETWORK", config.container_network.clone()),
        ("START_SETTLE_MS", ms(config.start_settle)),
        ("STICKY_QUEUE_TIMEOUT_MS", ms(config.sticky_queue_timeout)),
        ("BUILD_ID", config.build_id.clone()),
        ("HOST_ID", config.host_id.to_string()),
        ("HOST_HEARTBEAT_MS", ms(config.host_heartbeat)),
        ("HOST_DOWN_AFTER_SECS", secs(config.host_down_after)),
        ("HOST_WAIT_SECS", secs(config.host_wait)),
        ("RECONCILE_INTERVAL_SECS", secs(config.reconcile_interval)),
        ("WATCH_EVENTS", config.watch_events.to_string()),
        ("METRICS_ADDR", metrics_addr.unwrap_or_default()),
        ("SEARCH_ATTRIBUTES", config.search_attributes.to_string()),
        ("STEP_SUMMARIES", config.step_summaries.to_string()),
        ("REMOVE_ORPHANS", config.remove_orphans.to_string()),
        ("ORPHAN_GRACE_SECS", secs(config.orphan_grace)),
        ("RESTART_ON_CRASH", config.restart_on_crash.to_string()),
        ("CRASH_LOOP_LIMIT", config.crash_loop_limit.to_string()),
        ("CRASH_LOOP_WINDOW_SECS", secs(config.crash_loop_window)),
    ];
    let mut command = Command::new(env!("CARGO_BIN_EXE_rtmanager"));
    command.envs(settings.map(|(name, value)| (format!("RTMANAGER_{name}"), value)));
    command
}

/// A running HTTP bridge for a test.
pub struct Bridge {
    pub addr: std::net::SocketAddr,
    pub token: String,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    /// Serves the HTTP bridge for this app's worker on an ephemeral loopback port.
    pub async fn spawn_bridge(&self) -> Bridge {
        let token = format!("test-token-{}", unique("t"));
        let deps = worker::build_dependencies(self.config(), self.telemetry.clone(), &self.client)
            .unwrap();
        let state = std::sync::Arc::new(rtmanager::http::BridgeState::new(
            self.client.clone(),
            self.router(),
            deps.store,
            deps.redis,
            deps.docker,
            rtmanager::http::ApiToken::new(token.clone()).unwrap(),
            self.telemetry.clone(),
            Duration::from_secs(60),
            16 * 1024,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(rtmanager::http::serve_on(
            listener,
            state,
            shutdown.clone().cancelled_owned(),
        ));
        Bridge {
            addr,
            token,
            shutdown,
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Bridge {
    /// `POST /api/v1/internal/runtimes/<game>/<verb>` with a JSON `body`, and `X-Request-Id`
    /// when `request_id` is given.
    pub async fn operate(
        &self,
        verb: &str,
        game: &str,
        request_id: Option<&str>,
        body: &str,
    ) -> HttpResponse {
        let path = format!("/api/v1/internal/runtimes/{game}/{verb}");
        let headers: Vec<(&str, &str)> = request_id
            .map(|id| ("X-Request-Id", id))
            .into_iter()
            .collect();
        self.call("POST", &path, &headers, Some(body)).await
    }

    /// [`Bridge::operate`], which must answer 200: its JSON body.
    pub async fn operate_ok(
        &self,
        verb: &str,
        game: &str,
        request_id: Option<&str>,
        body: &str,
    ) -> serde_json::Value {
        let response = self.operate(verb, game, request_id, body).await;
        assert_eq!(response.status, 200, "{verb} {game}: {}", response.body);
        response.json()
    }

    /// `method path` with the bridge's token, optional extra headers and a JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        json_body: Option<&str>,
    ) -> HttpResponse {
        let mut all: Vec<(String, String)> =
            vec![("Authorization".into(), format!("Bearer {}", self.token))];
        if json_body.is_some() {
            all.push(("Content-Type".into(), "application/json".into()));
        }
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.raw(method, path, &all, json_body.unwrap_or("").as_bytes())
            .await
    }

    /// A request with exactly these headers (tests of auth and malformed input).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> HttpResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        parse_response(&raw)
    }
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
