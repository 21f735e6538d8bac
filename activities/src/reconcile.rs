//! A reconcile round's scan of one host, in a bounded number of calls whatever the number of
//! games: one query for the host's `running` records, one Docker list call, one Redis round
//! trip for the leases, one query for the records the listed containers name. Only a container
//! that looks drifted is inspected (for its exit code and OOM verdict), so a round over a host
//! with nothing drifted makes no call per game.

use std::collections::{HashMap, HashSet};

use temporalio_sdk::activities::{ActivityContext, ActivityError};

use rtmanager_domain::{GameId, HostId};
use rtmanager_workflows::contract::{ContainerState, Drift, HostScan, Orphan};

use crate::{docker_result, redis_error, store_error, RuntimeActivities};

impl RuntimeActivities {
    /// One reconcile round's view of `host`: each `running` record against its container, and
    /// this deployment's labelled containers that no record names.
    pub(crate) async fn scan(
        &self,
        ctx: &ActivityContext,
        host: &HostId,
    ) -> Result<HostScan, ActivityError> {
        let (store, docker, redis) = (&self.deps.store, &self.deps.docker, &self.deps.redis);
        let records = store.running_records_on(host).await.map_err(store_error)?;
        let listed = docker_result(docker.list_managed().await, ctx, "")?;
        let pool = docker.pool();
        let ours: Vec<_> = listed
            .iter()
            .filter(|c| c.pool.as_deref() == Some(pool))
            .collect();
        let by_id: HashMap<&str, bool> =
            listed.iter().map(|c| (c.id.as_str(), c.running)).collect();

        // The records the listed containers name, and every lease in play, at once.
        let labelled: Vec<GameId> = ours
            .iter()
            .filter_map(|c| GameId::parse(&c.game_label).ok())
            .collect();
        let named = store.records_of(&labelled).await.map_err(store_error)?;
        let mut games: Vec<GameId> = records.iter().map(|r| r.game_id.clone()).collect();
        games.extend(labelled);
        let held: HashSet<GameId> = redis.leases_held(&games).await.map_err(redis_error)?;

        let mut scan = HostScan {
            records_checked: u32::try_from(records.len()).unwrap_or(u32::MAX),
            containers_checked: u32::try_from(ours.len()).unwrap_or(u32::MAX),
            ..HostScan::default()
        };
        for record in &records {
            let Some(container_id) = record.current_container_id.clone() else {
                continue;
            };
            if held.contains(&record.game_id) {
                scan.busy.push(record.game_id.clone());
                continue;
            }
            if by_id.get(container_id.as_str()) == Some(&true) {
                continue;
            }
            // Looks drifted: Docker's own word, with the exit code.
            let state = docker.state_of(&record.game_id, &container_id).await;
            let state = docker_result(state, ctx, &container_id)?;
            if state != ContainerState::Running {
                scan.drift.push(Drift {
                    game_id: record.game_id.clone(),
                    container_id,
                    state,
                });
            }
        }

        let mut candidates = Vec::new();
        for container in ours {
            if let Ok(game) = GameId::parse(&container.game_label) {
                let record = named.get(&game);
                if record.and_then(|r| r.current_container_id.as_deref()) == Some(&container.id) {
                    continue;
                }
                // An operation on the game may be creating or removing it right now.
                if held.contains(&game) {
                    continue;
                }
            }
            candidates.push(container);
        }
        let ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
        let ages = redis
            .orphan_ages(host.as_str(), &ids)
            .await
            .map_err(redis_error)?;
        let settings = &self.deps.reconcile;
        for container in candidates {
            let orphan_for_secs = ages.get(&container.id).copied().unwrap_or_default();
            scan.orphans.push(Orphan {
                remove: settings.remove_orphans
                    && orphan_for_secs >= settings.orphan_grace.as_secs(),
                container_id: container.id.clone(),
                game_label: container.game_label.clone(),
                running: container.running,
                orphan_for_secs,
            });
        }
        tracing::info!(
            host = %host,
            records = scan.records_checked,
            containers = scan.containers_checked,
            drift = scan.drift.len(),
            orphans = scan.orphans.len(),
            busy = scan.busy.len(),
            "scanned the host"
        );
        Ok(scan)
    }
}
