//! Docker through bollard: the label check and the graceful stop.
//!
//! rtmanager never stops or removes a container that does not carry both
//! `rtmanager.game_id=<game>` and `rtmanager.managed=true`: a record pointing elsewhere is a
//! fault for an operator, not something to act on.

use std::time::Duration;

use bollard::{
    errors::Error as BollardError,
    query_parameters::{InspectContainerOptions, StopContainerOptions},
    Docker, API_DEFAULT_VERSION,
};

use rtmanager_domain::GameId;
use rtmanager_workflows::contract::ContainerStopOutcome;

/// Label naming the game a container belongs to.
pub const LABEL_GAME_ID: &str = "rtmanager.game_id";
/// Label marking a container as rtmanager's.
pub const LABEL_MANAGED: &str = "rtmanager.managed";

/// Why a Docker step did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// Definitive: the container is not this game's managed container.
    #[error("{0}")]
    Refused(String),
    /// Worth retrying: the daemon is unreachable or answered with an error.
    #[error("{0}")]
    Unavailable(String),
}

/// One bollard client shared by every activity.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    graceful_stop_timeout: Duration,
}

impl DockerRuntime {
    /// Connects to `host` (`unix:///path` or `tcp://host:port`). `request_timeout` bounds one
    /// API call and must exceed the graceful stop timeout plus dockerd's queueing.
    pub fn connect(
        host: &str,
        request_timeout: Duration,
        graceful_stop_timeout: Duration,
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
        })
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    pub async fn ping(&self) -> Result<(), DockerError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|err| DockerError::Unavailable(err.to_string()))
    }

    /// Stops the game's container with the graceful timeout. A missing container is
    /// [`ContainerStopOutcome::Vanished`]; one that is not running (Docker's 304) is
    /// [`ContainerStopOutcome::AlreadyStopped`].
    pub async fn stop(
        &self,
        game_id: &GameId,
        container_id: &str,
    ) -> Result<ContainerStopOutcome, DockerError> {
        let inspected = match self
            .docker
            .inspect_container(container_id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspected) => inspected,
            Err(err) if is_not_found(&err) => return Ok(ContainerStopOutcome::Vanished),
            Err(err) => return Err(DockerError::Unavailable(format!("inspect: {err}"))),
        };
        let labels = inspected
            .config
            .as_ref()
            .and_then(|config| config.labels.as_ref());
        let label = |name: &str| labels.and_then(|l| l.get(name)).map(String::as_str);
        if label(LABEL_GAME_ID) != Some(game_id.as_str()) || label(LABEL_MANAGED) != Some("true") {
            return Err(DockerError::Refused(format!(
                "container {container_id} is not labelled {LABEL_GAME_ID}={game_id} and \
                 {LABEL_MANAGED}=true; refusing to stop it"
            )));
        }
        let running = inspected
            .state
            .as_ref()
            .and_then(|state| state.running)
            .unwrap_or(false);
        if !running {
            return Ok(ContainerStopOutcome::AlreadyStopped);
        }
        let options = StopContainerOptions {
            t: Some(i32::try_from(self.graceful_stop_timeout.as_secs()).unwrap_or(i32::MAX)),
            signal: None,
        };
        match self
            .docker
            .stop_container(container_id, Some(options))
            .await
        {
            Ok(()) => Ok(ContainerStopOutcome::Stopped),
            Err(err) if is_not_found(&err) => Ok(ContainerStopOutcome::Vanished),
            Err(err) => Err(DockerError::Unavailable(format!("stop: {err}"))),
        }
    }
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
