//! Docker through bollard: the label check and the graceful stop (signal, wait, kill).
//!
//! rtmanager never stops or removes a container that does not carry both
//! `rtmanager.game_id=<game>` and `rtmanager.managed=true`: a record pointing elsewhere is a
//! fault for an operator, not something to act on.

use std::time::Duration;

use std::collections::HashMap;

use bollard::{
    errors::Error as BollardError,
    models::{ContainerCreateBody, ContainerInspectResponse, HostConfig},
    query_parameters::{
        CreateContainerOptions, InspectContainerOptions, KillContainerOptions,
        RemoveContainerOptions, StartContainerOptions, StopContainerOptions, WaitContainerOptions,
    },
    Docker, API_DEFAULT_VERSION,
};

use futures::StreamExt;
use rtmanager_domain::{stop_timeout_secs, GameId, ImageRef, StopEnded, StopReport, StopSignal};
use rtmanager_workflows::contract::{ContainerState, ContainerStopOutcome};

/// Docker operations in flight at once unless configured (`RTMANAGER_DOCKER_CONCURRENCY`).
pub const DEFAULT_CONCURRENCY: usize = 32;

/// Label naming the game a container belongs to.
pub const LABEL_GAME_ID: &str = "rtmanager.game_id";
/// Label marking a container as rtmanager's.
pub const LABEL_MANAGED: &str = "rtmanager.managed";
/// Label naming the deployment (its shared task queue) that created the container: the
/// reconciler reports and removes orphans of its own deployment only, never another's that
/// shares the engine.
pub const LABEL_POOL: &str = "rtmanager.pool";
/// Label (set on the game's image or container) naming the signal a stop sends first, when
/// the request names none.
pub const LABEL_STOP_SIGNAL: &str = "rtmanager.stop_signal";
/// Label with the seconds a stop waits after the signal before it kills, when the request
/// names none.
pub const LABEL_STOP_TIMEOUT: &str = "rtmanager.stop_timeout";

/// What a stop request asks for; what it leaves out comes from the container's labels, then
/// the worker's configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct StopAsk {
    /// Seconds between the signal and the kill.
    pub timeout_secs: Option<u32>,
    /// The signal sent first.
    pub signal: Option<StopSignal>,
}

/// Why a Docker step did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// Definitive: the container is not this game's managed container.
    #[error("{0}")]
    Refused(String),
    /// Definitive: the image is not available to the engine.
    #[error("{0}")]
    ImageMissing(String),
    /// Definitive: the engine rejects the image reference itself.
    #[error("{0}")]
    InvalidImage(String),
    /// Definitive: the container did not keep running after its start.
    #[error("{0}")]
    Crashed(String),
    /// Worth retrying: the daemon is unreachable or answered with an error.
    #[error("{0}")]
    Unavailable(String),
}

/// How game containers are created.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    /// Docker network mode of game containers (`bridge`, `none`, a network name).
    pub network: String,
    /// How long a started container must stay up before the start counts.
    pub settle: Duration,
    /// This deployment's name on its containers ([`LABEL_POOL`]).
    pub pool: String,
}

/// A managed container, as the reconciler lists them.
#[derive(Debug, Clone)]
pub struct ListedContainer {
    /// The container id.
    pub id: String,
    /// Its [`LABEL_GAME_ID`].
    pub game_label: String,
    /// Its [`LABEL_POOL`], if it has one (containers from before the label have none).
    pub pool: Option<String>,
    /// Whether its process runs.
    pub running: bool,
}

/// One bollard client shared by every activity.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    graceful_stop_timeout: Duration,
    /// A call's timeout beyond the wait for the game's process (dockerd's queueing).
    call_slack: Duration,
    containers: ContainerSettings,
    /// Bounds the Docker calls in flight: the rest queue here (counted in `waiting`), so that
    /// a mass operation does not open hundreds of connections to dockerd at once.
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    waiting: Option<prometheus::IntGauge>,
}

impl DockerRuntime {
    /// Connects to `host` (`unix:///path` or `tcp://host:port`). `request_timeout` bounds one
    /// API call and must exceed the graceful stop timeout plus dockerd's queueing.
    pub fn connect(
        host: &str,
        request_timeout: Duration,
        graceful_stop_timeout: Duration,
        containers: ContainerSettings,
    ) -> anyhow::Result<Self> {
        let secs = request_timeout.as_secs().max(1);
        let docker = if host.starts_with("unix://") || host.starts_with('/') {
            Docker::connect_with_unix(host, secs, API_DEFAULT_VERSION)?
        } else {
            Docker::connect_with_http(host, secs, API_DEFAULT_VERSION)?
        };
        Ok(Self {
            docker,
            graceful_stop_timeout,
            call_slack: request_timeout.saturating_sub(graceful_stop_timeout),
            containers,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(DEFAULT_CONCURRENCY)),
            waiting: None,
        })
    }

    /// At most `calls` Docker operations at once (`RTMANAGER_DOCKER_CONCURRENCY`); the number
    /// waiting for a turn is the `rtmanager_docker_calls_waiting` gauge of `telemetry`.
    pub fn limited(mut self, calls: usize, telemetry: &crate::Telemetry) -> Self {
        self.permits = std::sync::Arc::new(tokio::sync::Semaphore::new(calls.max(1)));
        self.waiting = Some(telemetry.docker_calls_waiting());
        self
    }

    /// A turn to call Docker, held for the whole operation (a stop's graceful wait included).
    async fn turn(&self) -> tokio::sync::OwnedSemaphorePermit {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return permit;
        }
        if let Some(gauge) = &self.waiting {
            gauge.inc();
        }
        let permit = self.permits.clone().acquire_owned().await;
        if let Some(gauge) = &self.waiting {
            gauge.dec();
        }
        permit.expect("the Docker semaphore is never closed")
    }

    /// The bollard client underneath; calls made through it skip the label check.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Readiness probe; any failure is [`DockerError::Unavailable`].
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|err| DockerError::Unavailable(err.to_string()))
    }

    /// Stops the game's container: sends the signal, waits up to the timeout for the process
    /// to exit, then kills it, and says which it was. A missing container is
    /// [`ContainerStopOutcome::Vanished`]; one that is not running (Docker's 304) is
    /// [`ContainerStopOutcome::AlreadyStopped`].
    ///
    /// When the signal is the container's own stop signal and the wait is no longer than the
    /// worker's default, Docker's stop does all three in one call. Otherwise the signal is sent
    /// with a kill, the exit is waited for without holding a Docker turn (a stop that waits an
    /// hour must not keep other games' Docker steps waiting), then SIGKILL follows. The engines
    /// this runs on predate the stop's `signal` parameter.
    pub async fn stop(
        &self,
        game_id: &GameId,
        container_id: &str,
        ask: StopAsk,
    ) -> Result<ContainerStopOutcome, DockerError> {
        let turn = self.turn().await;
        let inspected = match self
            .docker
            .inspect_container(container_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspected) => inspected,
            Err(err) if is_not_found(&err) => return Ok(ContainerStopOutcome::Vanished),
            Err(err) => return Err(DockerError::Unavailable(format!("inspect: {err}"))),
        };
        check_labels(&inspected, game_id, container_id, "stop")?;
        if !is_running(&inspected) {
            return Ok(ContainerStopOutcome::AlreadyStopped);
        }
        let (signal, timeout_secs) = self.resolve(&inspected, container_id, ask);
        let grace = Duration::from_secs(timeout_secs.into());
        let own_signal = inspected
            .config
            .as_ref()
            .and_then(|c| c.stop_signal.as_deref())
            .and_then(StopSignal::from_docker)
            .unwrap_or(StopSignal::Term);
        let ended = if signal == own_signal && grace <= self.graceful_stop_timeout {
            let stopped = self.docker_stop(container_id, timeout_secs).await?;
            drop(turn);
            match stopped {
                Some(ended) => ended,
                None => return Ok(ContainerStopOutcome::Vanished),
            }
        } else {
            drop(turn);
            match self.signal_wait_kill(container_id, signal, grace).await? {
                Some(ended) => ended,
                None => return Ok(ContainerStopOutcome::Vanished),
            }
        };
        Ok(ContainerStopOutcome::StoppedAs(StopReport {
            signal,
            timeout_secs,
            ended,
        }))
    }

    /// Docker's stop: the container's own signal, `timeout_secs`, then SIGKILL; `None` when
    /// the container disappeared.
    async fn docker_stop(
        &self,
        container_id: &str,
        timeout_secs: u32,
    ) -> Result<Option<StopEnded>, DockerError> {
        let grace = Duration::from_secs(timeout_secs.into());
        // The call waits for the process: its own timeout follows the stop's.
        let docker = self.docker.clone().with_timeout(grace + self.call_slack);
        let options = StopContainerOptions {
            t: Some(i32::try_from(timeout_secs).unwrap_or(i32::MAX)),
            signal: None,
        };
        let began = std::time::Instant::now();
        match docker.stop_container(container_id, Some(options)).await {
            Ok(()) => {}
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => return Err(DockerError::Unavailable(format!("stop: {err}"))),
        }
        if began.elapsed() < grace {
            return Ok(Some(StopEnded::Graceful));
        }
        // Docker waited the whole timeout: killed, unless the process exited at the last
        // moment (its exit code is then its own, not SIGKILL's 137). The container is stopped
        // either way, so an inspect that fails does not fail the stop.
        let after = self.inspect(container_id).await.ok().flatten();
        Ok(Some(match after {
            Some(after) if exit_code(&after).is_some_and(|code| code != 137) => StopEnded::Graceful,
            _ => StopEnded::Killed,
        }))
    }

    /// The signal and timeout of a stop: the request's, else the container's labels, else the
    /// container's own stop signal (when it is one of the six) and the worker's timeout. A label
    /// that does not parse is logged and passed over.
    fn resolve(
        &self,
        inspected: &ContainerInspectResponse,
        container_id: &str,
        ask: StopAsk,
    ) -> (StopSignal, u32) {
        let config = inspected.config.as_ref();
        let labels = config.and_then(|config| config.labels.as_ref());
        let label = |name: &str| {
            labels
                .and_then(|l| l.get(name))
                .map(|v| v.trim().to_owned())
        };
        let signal = ask.signal.or_else(|| {
            let raw = label(LABEL_STOP_SIGNAL)?;
            raw.parse::<StopSignal>()
                .map_err(
                    |err| tracing::warn!(container_id, %err, "ignoring label {LABEL_STOP_SIGNAL}"),
                )
                .ok()
        });
        let timeout = ask.timeout_secs.or_else(|| {
            let raw = label(LABEL_STOP_TIMEOUT)?;
            raw.parse::<u64>()
                .map_err(|err| err.to_string())
                .and_then(stop_timeout_secs)
                .map_err(
                    |err| tracing::warn!(container_id, %err, "ignoring label {LABEL_STOP_TIMEOUT}"),
                )
                .ok()
        });
        let own = config
            .and_then(|c| c.stop_signal.as_deref())
            .and_then(StopSignal::from_docker);
        let default_timeout =
            u32::try_from(self.graceful_stop_timeout.as_secs()).unwrap_or(u32::MAX);
        (
            signal.or(own).unwrap_or(StopSignal::Term),
            timeout.unwrap_or(default_timeout),
        )
    }

    /// Sends `signal`, waits up to `grace` for the process to exit, then SIGKILLs it; `None`
    /// when the container disappeared meanwhile. Each Docker call takes its own turn; the wait
    /// holds none.
    async fn signal_wait_kill(
        &self,
        container_id: &str,
        signal: StopSignal,
        grace: Duration,
    ) -> Result<Option<StopEnded>, DockerError> {
        match self.kill(container_id, signal.as_str()).await? {
            Delivered::Yes => {}
            Delivered::NotRunning => return Ok(Some(StopEnded::Graceful)),
            Delivered::Gone => return Ok(None),
        }
        if tokio::time::timeout(grace, self.wait_not_running(container_id, grace))
            .await
            .is_ok_and(|exited| exited.is_ok())
        {
            return Ok(Some(StopEnded::Graceful));
        }
        // The timeout ran out, or the wait could not tell: what Docker says now decides.
        match self.kill(container_id, "SIGKILL").await? {
            Delivered::Yes => {}
            Delivered::NotRunning => return Ok(Some(StopEnded::Graceful)),
            Delivered::Gone => return Ok(None),
        }
        let slack = self.call_slack;
        if self.wait_not_running(container_id, slack).await.is_err() {
            match self.inspect(container_id).await? {
                Some(after) if is_running(&after) => {
                    return Err(DockerError::Unavailable(format!(
                        "container {container_id} still runs after SIGKILL"
                    )))
                }
                Some(_) => {}
                None => return Ok(None),
            }
        }
        Ok(Some(StopEnded::Killed))
    }

    /// Sends `signal` to the container's process, in a Docker turn of its own.
    async fn kill(&self, container_id: &str, signal: &str) -> Result<Delivered, DockerError> {
        let _turn = self.turn().await;
        let options = KillContainerOptions {
            signal: signal.to_owned(),
        };
        match self
            .docker
            .kill_container(container_id, Some(options))
            .await
        {
            Ok(()) => Ok(Delivered::Yes),
            Err(err) if is_not_found(&err) => Ok(Delivered::Gone),
            // 409: it is not running (it exited between the last look and the signal).
            Err(err) if status(&err) == Some(409) => Ok(Delivered::NotRunning),
            Err(err) => Err(DockerError::Unavailable(format!("kill -{signal}: {err}"))),
        }
    }

    /// Waits (at most `within` plus the call slack) until the container's process is not
    /// running. An error means the wait could not tell (the container may still run).
    async fn wait_not_running(&self, container_id: &str, within: Duration) -> Result<(), String> {
        let docker = self.docker.clone().with_timeout(within + self.call_slack);
        let options = WaitContainerOptions {
            condition: "not-running".to_owned(),
        };
        match docker
            .wait_container(container_id, Some(options))
            .next()
            .await
        {
            // bollard reports a non-zero exit code as an error: the process exited all the same.
            Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) => Ok(()),
            Some(Err(err)) => Err(err.to_string()),
            None => Err("the wait ended without an answer".to_owned()),
        }
    }

    /// Creates the container `name` from `image` (or adopts it: a retried attempt finds the one
    /// its first attempt created), starts it, and checks it is still running after the settle
    /// time. A container that dies at once is removed and reported as [`DockerError::Crashed`].
    pub async fn ensure_running(
        &self,
        game_id: &GameId,
        image: &ImageRef,
        name: &str,
    ) -> Result<String, DockerError> {
        let _turn = self.turn().await;
        let id = match self.inspect(name).await? {
            Some(existing) => {
                check_labels(&existing, game_id, name, "adopt")?;
                existing.id.unwrap_or_else(|| name.to_owned())
            }
            None => self.create(game_id, image, name).await?,
        };
        match self
            .docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => {}
            Err(
                err @ BollardError::DockerResponseServerError {
                    status_code: 400..=500,
                    ..
                },
            ) if !is_not_found(&err) => {
                self.force_remove(&id).await;
                return Err(DockerError::Crashed(format!("start {image}: {err}")));
            }
            Err(err) => return Err(DockerError::Unavailable(format!("start: {err}"))),
        }
        tokio::time::sleep(self.containers.settle).await;
        match self.inspect(&id).await? {
            Some(started) if is_running(&started) => Ok(id),
            Some(started) => {
                let code = started.state.and_then(|s| s.exit_code).unwrap_or_default();
                self.force_remove(&id).await;
                Err(DockerError::Crashed(format!(
                    "container from {image} exited with code {code} right after its start"
                )))
            }
            None => Err(DockerError::Crashed(format!(
                "container from {image} disappeared right after its start"
            ))),
        }
    }

    /// Removes one of the game's containers (running or not); a missing one is fine.
    pub async fn remove(&self, game_id: &GameId, container_id: &str) -> Result<(), DockerError> {
        let _turn = self.turn().await;
        let Some(inspected) = self.inspect(container_id).await? else {
            return Ok(());
        };
        check_labels(&inspected, game_id, container_id, "remove")?;
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self
            .docker
            .remove_container(container_id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(DockerError::Unavailable(format!("remove: {err}"))),
        }
    }

    /// Removes every container labelled for the game except `keep`; returns how many.
    pub async fn remove_stale(&self, game_id: &GameId, keep: &str) -> Result<u32, DockerError> {
        let labels = vec![
            format!("{LABEL_GAME_ID}={game_id}"),
            format!("{LABEL_MANAGED}=true"),
        ];
        let listed = self.list(labels).await?;
        let mut removed = 0;
        for id in listed.into_iter().filter_map(|c| c.id) {
            if id != keep && !keep.is_empty() && !id.starts_with(keep) {
                self.remove(game_id, &id).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// What became of the game's container: running, exited with its code, or gone (also when
    /// the id names a container that is not the game's).
    pub async fn state_of(
        &self,
        game_id: &GameId,
        container_id: &str,
    ) -> Result<ContainerState, DockerError> {
        let _turn = self.turn().await;
        let Some(inspected) = self.inspect(container_id).await? else {
            return Ok(ContainerState::Gone);
        };
        if check_labels(&inspected, game_id, container_id, "inspect").is_err() {
            return Ok(ContainerState::Gone);
        }
        if is_running(&inspected) {
            return Ok(ContainerState::Running);
        }
        let state = inspected.state.unwrap_or_default();
        Ok(ContainerState::Exited {
            exit_code: state.exit_code.unwrap_or(-1),
            oom_killed: state.oom_killed.unwrap_or(false),
        })
    }

    /// Every managed container on the engine, running or not, with its deployment label: one
    /// list call.
    pub async fn list_managed(&self) -> Result<Vec<ListedContainer>, DockerError> {
        let listed = self.list(vec![format!("{LABEL_MANAGED}=true")]).await?;
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.as_ref()?;
                let game_label = labels.get(LABEL_GAME_ID)?.clone();
                let pool = labels.get(LABEL_POOL).cloned();
                let running = c.state.map(|s| s.to_string()) == Some("running".to_owned());
                Some(ListedContainer {
                    id: c.id?,
                    game_label,
                    pool,
                    running,
                })
            })
            .collect())
    }

    /// Every container (running or not) carrying all of `labels` (`key=value`): one call.
    async fn list(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let filters = HashMap::from([("label".to_owned(), labels)]);
        self.docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|err| DockerError::Unavailable(format!("list: {err}")))
    }

    /// This deployment's name on its containers.
    pub fn pool(&self) -> &str {
        &self.containers.pool
    }

    /// Removes an orphan: only a managed container of this deployment labelled `game_label`.
    pub async fn remove_orphan(
        &self,
        container_id: &str,
        game_label: &str,
    ) -> Result<bool, DockerError> {
        let Some(inspected) = self.inspect(container_id).await? else {
            return Ok(false);
        };
        let labels = inspected.config.as_ref().and_then(|c| c.labels.as_ref());
        let label = |name: &str| labels.and_then(|l| l.get(name)).map(String::as_str);
        if label(LABEL_GAME_ID) != Some(game_label)
            || label(LABEL_MANAGED) != Some("true")
            || label(LABEL_POOL) != Some(self.containers.pool.as_str())
        {
            return Err(DockerError::Refused(format!(
                "container {container_id} is not a managed container of this deployment \
                 labelled {LABEL_GAME_ID}={game_label}; refusing to remove it"
            )));
        }
        self.force_remove(container_id).await;
        Ok(true)
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspected) => Ok(Some(inspected)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(DockerError::Unavailable(format!("inspect: {err}"))),
        }
    }

    async fn create(
        &self,
        game_id: &GameId,
        image: &ImageRef,
        name: &str,
    ) -> Result<String, DockerError> {
        let labels = HashMap::from([
            (LABEL_GAME_ID.to_owned(), game_id.as_str().to_owned()),
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_POOL.to_owned(), self.containers.pool.clone()),
        ]);
        let body = ContainerCreateBody {
            image: Some(image.as_str().to_owned()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(self.containers.network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        match self.docker.create_container(Some(options), body).await {
            Ok(created) => Ok(created.id),
            Err(err) if is_not_found(&err) => Err(DockerError::ImageMissing(format!(
                "image {image} is not available to the Docker engine"
            ))),
            Err(BollardError::DockerResponseServerError {
                status_code: 400,
                message,
            }) => Err(DockerError::InvalidImage(format!(
                "the Docker engine rejects image {image}: {message}"
            ))),
            // Another attempt created it meanwhile: adopt it.
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => match self.inspect(name).await? {
                Some(existing) => {
                    check_labels(&existing, game_id, name, "adopt")?;
                    Ok(existing.id.unwrap_or_else(|| name.to_owned()))
                }
                None => Err(DockerError::Unavailable(format!(
                    "container {name} conflicted on create but is gone"
                ))),
            },
            Err(err) => Err(DockerError::Unavailable(format!("create: {err}"))),
        }
    }

    async fn force_remove(&self, id: &str) {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        if let Err(err) = self.docker.remove_container(id, Some(options)).await {
            tracing::warn!(container_id = id, err = %err, "remove a failed container");
        }
    }
}

/// Whether a signal reached the container's process.
enum Delivered {
    /// Docker sent it.
    Yes,
    /// The container exists but its process does not run.
    NotRunning,
    /// No such container.
    Gone,
}

/// The exit code of a container that has stopped.
fn exit_code(inspected: &ContainerInspectResponse) -> Option<i64> {
    inspected.state.as_ref().and_then(|state| state.exit_code)
}

/// The HTTP status of a Docker error answer.
fn status(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Refuses any container that is not this game's managed container.
fn check_labels(
    inspected: &ContainerInspectResponse,
    game_id: &GameId,
    container_id: &str,
    verb: &str,
) -> Result<(), DockerError> {
    let labels = inspected
        .config
        .as_ref()
        .and_then(|config| config.labels.as_ref());
    let label = |name: &str| labels.and_then(|l| l.get(name)).map(String::as_str);
    if label(LABEL_GAME_ID) != Some(game_id.as_str()) || label(LABEL_MANAGED) != Some("true") {
        return Err(DockerError::Refused(format!(
            "container {container_id} is not labelled {LABEL_GAME_ID}={game_id} and \
             {LABEL_MANAGED}=true; refusing to {verb} it"
        )));
    }
    Ok(())
}

fn is_running(inspected: &ContainerInspectResponse) -> bool {
    inspected
        .state
        .as_ref()
        .and_then(|state| state.running)
        .unwrap_or(false)
}

fn is_not_found(err: &BollardError) -> bool {
    matches!(
        err,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
