//! The Docker events watcher of one host: tells crashes from intended stops, as they happen.
//!
//! It follows the engine's events for managed containers (`die`, `oom`). An exit counts as a
//! crash when nothing asked for it: the game's record still says `running` with that very
//! container on this host, and no operation holds the game's lease (a stop, restart or patch
//! holds it until its record write is done). A crash is published as `container_exited` (with
//! the exit code) or `container_oom`, to `runtime:health_events` and `health_snapshots`, once
//! per container: the reconciler publishes under the same key when it finds the exit first.
//!
//! Nothing is lost across restarts. The watcher keeps Docker's time of the last event it
//! handled in `hosts.events_since_ns` and resumes from a little before it with `since`; events
//! read twice publish once. Each time it (re)connects it also compares the `running` records of
//! the host with their containers, for exits it could not see (a dockerd restart keeps no
//! event history).
//!
//! With `RTMANAGER_RESTART_ON_CRASH` a crashed game is restarted through `RestartRuntime`
//! (`op_source` `reconciler`, one restart per crashed container), after a backoff that doubles
//! with each crash in the window; past `RTMANAGER_CRASH_LOOP_LIMIT` crashes within
//! `RTMANAGER_CRASH_LOOP_WINDOW_SECS` it is left stopped and `crash_loop` is published.

use std::{collections::HashSet, future::Future, time::Duration};

use bollard::{models::EventMessage, query_parameters::EventsOptions};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use rtmanager_activities::Dependencies;
use rtmanager_domain::{GameId, HostId, LifecycleRequest, OpSource, ReplaceRequest, RuntimeStatus};
use rtmanager_workflows::contract::{crash_event, ContainerState, HealthEvent, CRASH_LOOP};

use crate::client::{self, Operation, Origin, Router};

/// Events read again after a restart, before the saved cursor: Docker's clock and the order of
/// events near the cursor need not be exact.
const RESUME_OVERLAP: Duration = Duration::from_secs(2);

/// What the watcher does about crashes beyond reporting them.
#[derive(Clone)]
pub struct CrashRestarts {
    /// Starts the restarts.
    pub client: temporalio_client::Client,
    /// Routes them to the game's host.
    pub router: Router,
    /// Crashes within `window` after which a game is left stopped.
    pub limit: u32,
    /// The crash-loop window.
    pub window: Duration,
}

/// One host's watcher.
pub struct Watcher {
    deps: Dependencies,
    host: HostId,
    restarts: Option<CrashRestarts>,
    /// Containers the kernel OOM-killed, until their `die` arrives: that crash is
    /// `container_oom`.
    oomed: HashSet<String>,
}

impl Watcher {
    /// A watcher of `host`'s engine (the one `deps.docker` drives).
    pub fn new(deps: Dependencies, host: HostId, restarts: Option<CrashRestarts>) -> Self {
        Self {
            deps,
            host,
            restarts,
            oomed: HashSet::new(),
        }
    }

    /// Follows the events until `shutdown` resolves, reconnecting (1 s, doubling to 10 s)
    /// whenever the engine or the stream goes away.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_secs(1);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                ended = self.follow() => {
                    if let Err(err) = ended {
                        tracing::warn!(host = %self.host, err = %format!("{err:#}"), "docker events: reconnecting");
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// One connection: the sweep of what may have been missed, then the event stream.
    async fn follow(&mut self) -> anyhow::Result<()> {
        let cursor = self.deps.store.events_cursor(&self.host).await?;
        let since_ns = match cursor {
            Some(ns) => ns - RESUME_OVERLAP.as_nanos() as i64,
            None => Utc::now().timestamp_nanos_opt().unwrap_or_default(),
        };
        let options = EventsOptions {
            since: Some(format!(
                "{}.{:09}",
                since_ns.div_euclid(1_000_000_000),
                since_ns.rem_euclid(1_000_000_000)
            )),
            until: None,
            filters: Some(std::collections::HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                (
                    "label".to_owned(),
                    vec![format!(
                        "{}=true",
                        rtmanager_activities::docker::LABEL_MANAGED
                    )],
                ),
                ("event".to_owned(), vec!["die".to_owned(), "oom".to_owned()]),
            ])),
        };
        let mut events = self.deps.docker.client().events(Some(options));
        self.sweep().await?;
        tracing::info!(host = %self.host, "following Docker events");
        while let Some(event) = events.next().await {
            let event = event?;
            let time_ns = event.time_nano.unwrap_or_default();
            self.handle(event).await;
            if time_ns > 0 {
                if let Err(err) = self
                    .deps
                    .store
                    .advance_events_cursor(&self.host, time_ns)
                    .await
                {
                    tracing::warn!(err = %err, "save the Docker events cursor");
                }
            }
        }
        anyhow::bail!("the Docker event stream ended")
    }

    /// Exits nobody reported: `running` records of this host whose container is not running.
    async fn sweep(&mut self) -> anyhow::Result<()> {
        for record in self.deps.store.running_records_on(&self.host).await? {
            let Some(container) = record.current_container_id.clone() else {
                continue;
            };
            let state = self
                .deps
                .docker
                .state_of(&record.game_id, &container)
                .await?;
            if let ContainerState::Exited {
                exit_code,
                oom_killed,
            } = state
            {
                if self.is_crash(&record.game_id, &container).await {
                    let at = Utc::now();
                    let event = crash_event(&record.game_id, &container, exit_code, oom_killed, at);
                    self.crashed(event).await;
                }
            }
        }
        Ok(())
    }

    async fn handle(&mut self, event: EventMessage) {
        let Some(actor) = event.actor else { return };
        let (Some(container), Some(attributes)) = (actor.id, actor.attributes) else {
            return;
        };
        let label = rtmanager_activities::docker::LABEL_GAME_ID;
        let Some(game) = attributes.get(label).and_then(|g| GameId::parse(g).ok()) else {
            return;
        };
        let at = event
            .time_nano
            .map(DateTime::from_timestamp_nanos)
            .unwrap_or_else(Utc::now);
        match event.action.as_deref() {
            // The kernel's OOM kill: the `die` that follows is the same crash.
            Some("oom") => {
                self.oomed.insert(container);
            }
            Some("die") => {
                let exit_code = attributes
                    .get("exitCode")
                    .and_then(|code| code.parse().ok())
                    .unwrap_or(-1);
                let mut oom_killed = self.oomed.remove(&container);
                if self.is_crash(&game, &container).await {
                    // Docker's own verdict, while the container is still there to ask.
                    if let Ok(ContainerState::Exited {
                        oom_killed: oom, ..
                    }) = self.deps.docker.state_of(&game, &container).await
                    {
                        oom_killed |= oom;
                    }
                    let event = crash_event(&game, &container, exit_code, oom_killed, at);
                    self.crashed(event).await;
                }
            }
            _ => {}
        }
    }

    /// A crash: published, then maybe restarted.
    async fn crashed(&mut self, event: HealthEvent) {
        let container = event.container_id.clone().unwrap_or_default();
        tracing::warn!(
            game_id = %event.game_id,
            container_id = container,
            event_type = event.event_type,
            details = %event.details,
            "game container crashed"
        );
        let (game, at) = (event.game_id.clone(), event.occurred_at);
        self.publish(event).await;
        if let Some(restarts) = self.restarts.clone() {
            self.restart(restarts, game, container, at).await;
        }
    }

    /// Nothing asked for this exit: the record still runs this container here, and no
    /// operation holds the game's lease.
    async fn is_crash(&self, game: &GameId, container: &str) -> bool {
        let record = match self.deps.store.get_record(game).await {
            Ok(Some(record)) => record,
            Ok(None) => return false,
            Err(err) => {
                tracing::warn!(game_id = %game, err = %err, "read the record of an exited container");
                return false;
            }
        };
        let ours = record.status == RuntimeStatus::Running
            && record.host_id == self.host
            && record
                .current_container_id
                .as_deref()
                .is_some_and(|c| c == container || container.starts_with(c));
        if !ours {
            return false;
        }
        match self.deps.redis.lease_is_held(game).await {
            Ok(held) => !held,
            Err(err) => {
                tracing::warn!(game_id = %game, err = %err, "check the lease of an exited container");
                false
            }
        }
    }

    /// Best effort, like every health event: a failure is logged.
    async fn publish(&self, event: HealthEvent) {
        if let Err(err) = self.deps.store.upsert_health_snapshot(&event).await {
            tracing::warn!(event_type = %event.event_type, err = %err, "upsert health snapshot");
        }
        match self.deps.redis.publish_health_once(&event).await {
            Ok(true) => self.deps.telemetry.record_health_event(&event.event_type),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(event_type = %event.event_type, err = %err, "publish health event")
            }
        }
    }

    /// Restarts the game after a backoff, unless it crashed too often lately.
    async fn restart(
        &self,
        restarts: CrashRestarts,
        game: GameId,
        container: String,
        at: DateTime<Utc>,
    ) {
        let crashes = match self
            .deps
            .redis
            .record_crash(&game, &container, restarts.window)
            .await
        {
            Ok(crashes) => crashes,
            Err(err) => {
                tracing::warn!(game_id = %game, err = %err, "count crashes: not restarting");
                return;
            }
        };
        if crashes > u64::from(restarts.limit) {
            let details = serde_json::json!({
                "crashes": crashes,
                "window_secs": restarts.window.as_secs(),
            });
            let key = format!("{CRASH_LOOP}:{container}");
            let event =
                HealthEvent::of_container(key, &game, &container, (CRASH_LOOP, details), at);
            self.publish(event).await;
            tracing::error!(game_id = %game, crashes, "crash loop: the game is left stopped");
            return;
        }
        let backoff = Duration::from_secs(1) * 2u32.saturating_pow(crashes as u32 - 1);
        let backoff = backoff.min(Duration::from_secs(60));
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            let request = LifecycleRequest::Restart(ReplaceRequest {
                game_id: game.clone(),
                image_ref: None,
                op_source: OpSource::Reconciler,
                source_ref: rtmanager_domain::SourceRef::parse(&format!("crash:{container}")).ok(),
            });
            let origin = Origin::Crash {
                container_id: container,
            };
            let operation = Operation::new(&request, &origin);
            match client::run(&restarts.client, &restarts.router, &operation).await {
                Ok(output) => tracing::info!(
                    game_id = %game,
                    outcome = %output.outcome,
                    error_code = ?output.error_code,
                    "restarted a crashed game"
                ),
                Err(err) => {
                    tracing::warn!(game_id = %game, err = %format!("{err:#}"), "restart a crashed game")
                }
            }
        });
    }
}
