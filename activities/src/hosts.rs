//! The `hosts` table: registration and heartbeats of each host's worker, the placement policy,
//! draining, the listing operators read, and the routing lookup clients make before they
//! start a workflow. Liveness is judged by PostgreSQL's clock alone (`now()` in every
//! statement), so workers whose clocks drift do not disagree about who is down.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::{
    sql_types::{Bool, Double, Int4, Int8, Jsonb, Nullable, Text, Timestamptz},
    OptionalExtension, QueryableByName,
};
use diesel_async::RunQueryDsl;
use serde::Serialize;

use rtmanager_domain::{ErrorCode, GameId, HostId};
use rtmanager_workflows::contract::{HostRoute, Placement};

use crate::store::{Store, StoreError};

/// What a worker says about its host each time it heartbeats.
#[derive(Debug, Clone)]
pub struct HostRegistration {
    /// The host this worker serves.
    pub id: HostId,
    /// The task queue it polls for this host.
    pub task_queue: String,
    /// Running games the placement policy puts here at most.
    pub capacity: u32,
    /// Free-form labels for operators (e.g. `zone=eu-1`).
    pub labels: serde_json::Value,
    /// The Docker endpoint the worker drives (shown to operators; never a secret).
    pub docker_host: String,
}

/// One row of `GET /api/v1/internal/hosts` and `rtmanager hosts`: the host as stored, its
/// state as of now, and how many games it has.
#[derive(Debug, Clone, Serialize, QueryableByName)]
pub struct HostStatus {
    /// The host id.
    #[diesel(sql_type = Text)]
    pub id: String,
    /// The task queue its worker polls.
    #[diesel(sql_type = Text)]
    pub task_queue: String,
    /// Running games the placement policy puts here at most.
    #[diesel(sql_type = Int4)]
    pub capacity: i32,
    /// Operator labels.
    #[diesel(sql_type = Jsonb)]
    pub labels: serde_json::Value,
    /// `active`, `draining` or `down` (a heartbeat older than the limit is `down` even before
    /// a worker has written it).
    #[diesel(sql_type = Text)]
    pub state: String,
    /// The Docker endpoint its worker drives.
    #[diesel(sql_type = Nullable<Text>)]
    pub docker_host: Option<String>,
    /// When its worker last heartbeat.
    #[diesel(sql_type = Timestamptz)]
    pub last_heartbeat_at: DateTime<Utc>,
    /// Seconds since then, by PostgreSQL's clock.
    #[diesel(sql_type = Double)]
    pub heartbeat_age_secs: f64,
    /// Games whose record says `running` here.
    #[diesel(sql_type = Int8)]
    pub running_games: i64,
    /// Games recorded here in any status.
    #[diesel(sql_type = Int8)]
    pub games: i64,
}

/// Where a client sends a game's operation: the game's host, and whether that host's worker is
/// alive (heartbeat within the limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GameHost {
    /// The host the record names.
    pub host_id: HostId,
    /// False when the host is unknown or its heartbeat is too old.
    pub alive: bool,
}

/// The effective state of a host row as of now: `down` once its heartbeat is older than `$1`
/// seconds.
const EFFECTIVE_STATE: &str = "CASE WHEN h.last_heartbeat_at < now() - make_interval(secs => $1) \
     THEN 'down' WHEN h.draining THEN 'draining' ELSE 'active' END";

impl Store {
    /// Registers the host or renews its heartbeat; a host coming back from `down` is `active`
    /// again, or `draining` if an operator drained it.
    pub async fn heartbeat_host(&self, host: &HostRegistration) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        diesel::sql_query(
            "INSERT INTO hosts (id, task_queue, capacity, labels, docker_host, last_heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, now()) \
             ON CONFLICT (id) DO UPDATE SET task_queue = EXCLUDED.task_queue, \
               capacity = EXCLUDED.capacity, labels = EXCLUDED.labels, \
               docker_host = EXCLUDED.docker_host, last_heartbeat_at = now(), \
               state = CASE WHEN hosts.draining THEN 'draining' ELSE 'active' END",
        )
        .bind::<Text, _>(host.id.as_str())
        .bind::<Text, _>(&host.task_queue)
        .bind::<Int4, _>(i32::try_from(host.capacity).unwrap_or(i32::MAX))
        .bind::<Jsonb, _>(&host.labels)
        .bind::<Text, _>(&host.docker_host)
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Writes `down` on every host whose heartbeat is older than `down_after`: what any live
    /// worker does for the others each time it heartbeats. Returns the hosts it marked.
    pub async fn mark_down_hosts(&self, down_after: Duration) -> Result<Vec<String>, StoreError> {
        #[derive(QueryableByName)]
        struct Marked {
            #[diesel(sql_type = Text)]
            id: String,
        }
        let mut conn = self.conn().await?;
        let marked: Vec<Marked> = diesel::sql_query(
            "UPDATE hosts SET state = 'down' \
             WHERE state <> 'down' AND last_heartbeat_at < now() - make_interval(secs => $1) \
             RETURNING id",
        )
        .bind::<Double, _>(down_after.as_secs_f64())
        .load(&mut conn)
        .await?;
        Ok(marked.into_iter().map(|m| m.id).collect())
    }

    /// Every host with its state as of now and its game counts, by id.
    pub async fn list_hosts(&self, down_after: Duration) -> Result<Vec<HostStatus>, StoreError> {
        let mut conn = self.conn().await?;
        let query = format!(
            "SELECT h.id, h.task_queue, h.capacity, h.labels, {EFFECTIVE_STATE} AS state, \
               h.docker_host, h.last_heartbeat_at, \
               EXTRACT(EPOCH FROM now() - h.last_heartbeat_at)::float8 AS heartbeat_age_secs, \
               COALESCE(c.running, 0) AS running_games, COALESCE(c.games, 0) AS games \
             FROM hosts h LEFT JOIN ( \
               SELECT host_id, count(*) FILTER (WHERE status = 'running') AS running, \
                 count(*) AS games \
               FROM runtime_records GROUP BY host_id) c ON c.host_id = h.id \
             ORDER BY h.id"
        );
        Ok(diesel::sql_query(query)
            .bind::<Double, _>(down_after.as_secs_f64())
            .load(&mut conn)
            .await?)
    }

    /// Sets or clears the operator's drain of `host`; `None` when no such host is registered.
    pub async fn set_draining(
        &self,
        host: &HostId,
        draining: bool,
        down_after: Duration,
    ) -> Result<Option<HostStatus>, StoreError> {
        let mut conn = self.conn().await?;
        let updated = diesel::sql_query(
            "UPDATE hosts SET draining = $2, \
               state = CASE WHEN state = 'down' THEN 'down' WHEN $2 THEN 'draining' \
                 ELSE 'active' END \
             WHERE id = $1",
        )
        .bind::<Text, _>(host.as_str())
        .bind::<Bool, _>(draining)
        .execute(&mut conn)
        .await?;
        drop(conn);
        if updated == 0 {
            return Ok(None);
        }
        let hosts = self.list_hosts(down_after).await?;
        Ok(hosts.into_iter().find(|h| h.id == host.as_str()))
    }

    /// The host a game's record names and whether its worker is alive; `None` for a game with
    /// no record.
    pub async fn game_host(
        &self,
        game_id: &GameId,
        down_after: Duration,
    ) -> Result<Option<GameHost>, StoreError> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            host_id: String,
            #[diesel(sql_type = Bool)]
            alive: bool,
        }
        let mut conn = self.conn().await?;
        let row: Option<Row> = diesel::sql_query(
            "SELECT r.host_id, COALESCE(h.last_heartbeat_at >= now() - make_interval(secs => $2), \
               false) AS alive \
             FROM runtime_records r LEFT JOIN hosts h ON h.id = r.host_id WHERE r.game_id = $1",
        )
        .bind::<Text, _>(game_id.as_str())
        .bind::<Double, _>(down_after.as_secs_f64())
        .get_result(&mut conn)
        .await
        .optional()?;
        row.map(|row| {
            Ok(GameHost {
                host_id: HostId::parse(&row.host_id).map_err(StoreError::Corrupt)?,
                alive: row.alive,
            })
        })
        .transpose()
    }

    /// Whether `host` is registered and its worker alive.
    pub async fn host_alive(
        &self,
        host: &HostId,
        down_after: Duration,
    ) -> Result<bool, StoreError> {
        let hosts = self.list_hosts(down_after).await?;
        Ok(hosts
            .iter()
            .any(|h| h.id == host.as_str() && h.state != "down"))
    }

    /// The `running` records of `host`: what a reconcile round compares with Docker (one
    /// query).
    pub async fn running_records_on(
        &self,
        host: &HostId,
    ) -> Result<Vec<rtmanager_domain::RuntimeRecord>, StoreError> {
        use crate::schema::runtime_records::dsl as r;
        use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
        let mut conn = self.conn().await?;
        let rows: Vec<crate::store::RecordRow> = r::runtime_records
            .filter(r::host_id.eq(host.as_str()))
            .filter(r::status.eq("running"))
            .select(crate::store::RecordRow::as_select())
            .load(&mut conn)
            .await?;
        rows.into_iter()
            .map(crate::store::RecordRow::into_record)
            .collect()
    }

    /// The records of `games` that exist, by game (one query).
    pub async fn records_of(
        &self,
        games: &[GameId],
    ) -> Result<std::collections::HashMap<GameId, rtmanager_domain::RuntimeRecord>, StoreError>
    {
        use crate::schema::runtime_records::dsl as r;
        use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
        if games.is_empty() {
            return Ok(Default::default());
        }
        let ids: Vec<&str> = games.iter().map(GameId::as_str).collect();
        let mut conn = self.conn().await?;
        let rows: Vec<crate::store::RecordRow> = r::runtime_records
            .filter(r::game_id.eq_any(ids))
            .select(crate::store::RecordRow::as_select())
            .load(&mut conn)
            .await?;
        rows.into_iter()
            .map(|row| {
                row.into_record()
                    .map(|record| (record.game_id.clone(), record))
            })
            .collect()
    }

    /// Where `host`'s events watcher stopped reading (Docker's event time in Unix
    /// nanoseconds), if it ever read.
    pub async fn events_cursor(&self, host: &HostId) -> Result<Option<i64>, StoreError> {
        use crate::schema::hosts::dsl as h;
        use diesel::{ExpressionMethods, QueryDsl};
        let mut conn = self.conn().await?;
        let cursor: Option<Option<i64>> = h::hosts
            .filter(h::id.eq(host.as_str()))
            .select(h::events_since_ns)
            .first(&mut conn)
            .await
            .optional()?;
        Ok(cursor.flatten())
    }

    /// Moves `host`'s events cursor forward to `since_ns` (never back).
    pub async fn advance_events_cursor(
        &self,
        host: &HostId,
        since_ns: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        diesel::sql_query(
            "UPDATE hosts SET events_since_ns = $2 \
             WHERE id = $1 AND (events_since_ns IS NULL OR events_since_ns < $2)",
        )
        .bind::<Text, _>(host.as_str())
        .bind::<Int8, _>(since_ns)
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// The placement policy, under the game's lease. A game whose record has a container (any
    /// status but `removed`) stays on its host. Otherwise the requested host, if it serves
    /// `shared_queue`'s deployment and is active; else the active host with the fewest running
    /// games relative to its capacity (ties by id), among those with room.
    pub async fn place_game(
        &self,
        game_id: &GameId,
        requested: Option<&HostId>,
        shared_queue: &str,
        down_after: Duration,
    ) -> Result<Placement, StoreError> {
        let route = |host: HostId| Placement::Placed {
            route: HostRoute {
                task_queue: host.task_queue(shared_queue),
                host_id: host,
            },
        };
        let refused = |code, message: String| Placement::Refused { code, message };
        if let Some((record, _)) = self.get_record_with_writer(game_id).await? {
            if record.status != rtmanager_domain::RuntimeStatus::Removed {
                let home = record.host_id;
                return Ok(match requested {
                    Some(asked) if *asked != home => refused(
                        ErrorCode::Conflict,
                        format!(
                            "game {game_id} has a container on host {home}; it cannot be \
                             started on host {asked} (start it without a host: it starts again \
                             where its container is)"
                        ),
                    ),
                    _ if !self.host_alive(&home, down_after).await? => refused(
                        ErrorCode::ServiceUnavailable,
                        format!("host {home}, where game {game_id} lives, is down"),
                    ),
                    _ => route(home),
                });
            }
        }
        let hosts = self.list_hosts(down_after).await?;
        let ours = |h: &&HostStatus| {
            HostId::parse(&h.id).is_ok_and(|id| h.task_queue == id.task_queue(shared_queue))
        };
        if let Some(asked) = requested {
            let Some(host) = hosts.iter().filter(ours).find(|h| h.id == asked.as_str()) else {
                return Ok(refused(
                    ErrorCode::InvalidRequest,
                    format!("host {asked} is not a registered host of this deployment"),
                ));
            };
            return Ok(match host.state.as_str() {
                "active" => route(asked.clone()),
                "draining" => refused(
                    ErrorCode::Conflict,
                    format!("host {asked} is draining: it takes no new games"),
                ),
                _ => refused(
                    ErrorCode::ServiceUnavailable,
                    format!("host {asked} is down"),
                ),
            });
        }
        let best = hosts
            .iter()
            .filter(ours)
            .filter(|h| h.state == "active" && h.running_games < i64::from(h.capacity))
            .min_by(|a, b| {
                let load = |h: &HostStatus| h.running_games as f64 / f64::from(h.capacity.max(1));
                load(a).total_cmp(&load(b)).then_with(|| a.id.cmp(&b.id))
            });
        Ok(match best.and_then(|h| HostId::parse(&h.id).ok()) {
            Some(host) => route(host),
            None => refused(
                ErrorCode::ServiceUnavailable,
                "no active host of this deployment has room for another game".to_owned(),
            ),
        })
    }
}
