//! PostgreSQL through diesel-async: the runtime records, the operation log and the health
//! snapshots. Every statement is built by diesel's query builder with bound parameters.

use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{
    pooled_connection::{deadpool::Pool, AsyncDieselConnectionManager},
    AsyncPgConnection, RunQueryDsl,
};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use rtmanager_domain::{GameId, HostId, RuntimeRecord, RuntimeStatus};
use rtmanager_workflows::contract::{HealthEvent, OperationEntry, UpdateStatusOutcome};

use crate::schema::{operation_log, runtime_records};

/// The migrations in the repository's `migrations/`, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Serialises concurrent migration runs (several workers or test binaries starting at once).
const MIGRATION_LOCK_KEY: i64 = 0x7274_6d61_6e61_6765; // "rtmanage"

/// A store error. [`StoreError::Corrupt`] is definitive; the rest are worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    /// No connection within the pool's timeouts: PostgreSQL is down or the pool exhausted.
    Pool(String),
    #[error("database query failed: {0}")]
    /// A statement failed, e.g. the connection dropped mid-query.
    Query(#[from] diesel::result::Error),
    #[error("{0}")]
    /// A row no runtime record can be (bad game id or status), or a write the store never
    /// makes; the activity fails it as `internal`.
    Corrupt(String),
}

/// What the last write of a record left behind, beside the record itself.
#[derive(Debug, Clone, Default)]
pub struct LastWrite {
    /// The operation (`workflow_id/run_id`) that wrote the row last.
    pub last_op_id: Option<String>,
    /// The container that write acted on (kept after a removal cleared the record's).
    pub last_container_id: Option<String>,
}

/// A pool of PostgreSQL connections shared by every activity.
#[derive(Clone)]
pub struct Store {
    pool: Pool<AsyncPgConnection>,
}

impl Store {
    /// Builds the pool. Connections are opened lazily, so a worker starts while PostgreSQL is
    /// down and its steps retry until it is back.
    pub fn new(database_url: &str, max_connections: usize) -> anyhow::Result<Self> {
        // Fast recycling: no test query on every checkout (it doubled each step's round trips);
        // a connection that broke meanwhile fails its statement and the step retries.
        let mut manager_config = diesel_async::pooled_connection::ManagerConfig::default();
        manager_config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            database_url,
            manager_config,
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .wait_timeout(Some(std::time::Duration::from_secs(5)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .runtime(deadpool::Runtime::Tokio1)
            .build()?;
        Ok(Self { pool })
    }

    pub(crate) async fn conn(
        &self,
    ) -> Result<diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>, StoreError>
    {
        self.pool
            .get()
            .await
            .map_err(|err| StoreError::Pool(err.to_string()))
    }

    /// Cheap liveness probe for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await?;
        Ok(())
    }

    /// Reads one game's record with what its last write left behind.
    pub async fn get_record_with_writer(
        &self,
        game_id: &GameId,
    ) -> Result<Option<(RuntimeRecord, LastWrite)>, StoreError> {
        let mut conn = self.conn().await?;
        let row = runtime_records::table
            .find(game_id.as_str())
            .select(RecordRow::as_select())
            .first(&mut conn)
            .await
            .optional()?;
        row.map(|row| {
            let writer = LastWrite {
                last_op_id: row.last_op_id.clone(),
                last_container_id: row.last_container_id.clone(),
            };
            row.into_record().map(|record| (record, writer))
        })
        .transpose()
    }

    /// Reads one game's record.
    pub async fn get_record(&self, game_id: &GameId) -> Result<Option<RuntimeRecord>, StoreError> {
        Ok(self
            .get_record_with_writer(game_id)
            .await?
            .map(|(record, _)| record))
    }

    /// Inserts (or resets) a `running` record for a container created outside rtmanager: the
    /// benchmark's and an importer's entry point.
    pub async fn insert_running_record(
        &self,
        game_id: &GameId,
        container_id: &str,
        image_ref: &str,
        host_id: &HostId,
    ) -> Result<(), StoreError> {
        use runtime_records::dsl as r;
        let now = Utc::now().trunc_subsecs(6);
        let mut conn = self.conn().await?;
        diesel::insert_into(r::runtime_records)
            .values((
                r::game_id.eq(game_id.as_str()),
                r::status.eq(RuntimeStatus::Running.as_str()),
                r::current_container_id.eq(container_id),
                r::current_image_ref.eq(image_ref),
                r::started_at.eq(now),
                r::last_op_at.eq(now),
                r::host_id.eq(host_id.as_str()),
            ))
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Deletes every record whose game id starts with `prefix` (benchmark cleanup).
    pub async fn delete_records_with_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        use runtime_records::dsl as r;
        let mut conn = self.conn().await?;
        let pattern = format!(
            "{}%",
            prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        Ok(
            diesel::delete(r::runtime_records.filter(r::game_id.like(pattern)))
                .execute(&mut conn)
                .await?,
        )
    }

    /// The ids of every game whose record says `running`, on `host` or on any host (for mass
    /// operations).
    pub async fn running_game_ids_on(
        &self,
        host: Option<&HostId>,
    ) -> Result<Vec<GameId>, StoreError> {
        use runtime_records::dsl as r;
        let mut conn = self.conn().await?;
        let mut query = r::runtime_records
            .filter(r::status.eq(RuntimeStatus::Running.as_str()))
            .select(r::game_id)
            .order(r::game_id)
            .into_boxed();
        if let Some(host) = host {
            query = query.filter(r::host_id.eq(host.as_str()));
        }
        let ids: Vec<String> = query.load(&mut conn).await?;
        Ok(ids.iter().filter_map(|id| GameId::parse(id).ok()).collect())
    }

    /// Compare-and-swap of the status, guarded by the expected status and container id and by
    /// the writer's lease fence. Idempotent per `operation_id`: a retry whose earlier attempt
    /// committed gets `Updated`.
    pub async fn update_status(
        &self,
        game_id: &GameId,
        operation_id: &str,
        expected_from: RuntimeStatus,
        expected_container_id: Option<&str>,
        to: RuntimeStatus,
        fence: u64,
    ) -> Result<UpdateStatusOutcome, StoreError> {
        use runtime_records::dsl as r;
        let now = Utc::now().trunc_subsecs(6);
        let fence = i64::try_from(fence).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        let target = r::runtime_records
            .filter(r::game_id.eq(game_id.as_str()))
            .filter(r::status.eq(expected_from.as_str()))
            .filter(r::current_container_id.is_not_distinct_from(expected_container_id))
            .filter(r::fence.le(fence));
        // What every move writes: the status, who wrote it under which fence, and the container
        // it acted on (kept after a removal clears the record's).
        let written = (
            r::status.eq(to.as_str()),
            r::last_op_at.eq(now),
            r::last_op_id.eq(operation_id),
            r::last_container_id.eq(expected_container_id),
            r::fence.eq(fence),
        );
        let updated = match to {
            RuntimeStatus::Stopped => {
                diesel::update(target)
                    .set((written, r::stopped_at.eq(now)))
                    .returning(RecordRow::as_returning())
                    .get_result(&mut conn)
                    .await
            }
            RuntimeStatus::Removed => {
                let cleared = r::current_container_id.eq(None::<String>);
                diesel::update(target)
                    .set((written, cleared, r::removed_at.eq(now)))
                    .returning(RecordRow::as_returning())
                    .get_result(&mut conn)
                    .await
            }
            RuntimeStatus::Running => {
                return Err(StoreError::Corrupt(
                    "update_status cannot move a record to running".into(),
                ))
            }
        }
        .optional()?;
        if let Some(row) = updated {
            return Ok(UpdateStatusOutcome::Updated {
                record: row.into_record()?,
            });
        }
        self.explain_refusal(&mut conn, game_id, operation_id, to, fence)
            .await
    }

    /// Upserts the record to `running` with a new container: refused when the record is
    /// running already (unless this operation wrote it: a retry) or a newer lease holder wrote
    /// it.
    pub async fn record_running(
        &self,
        game_id: &GameId,
        operation_id: &str,
        fence: u64,
        container_id: &str,
        image_ref: &str,
        host_id: Option<&HostId>,
    ) -> Result<UpdateStatusOutcome, StoreError> {
        use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
        let now = Utc::now().trunc_subsecs(6);
        let fence = i64::try_from(fence).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        // diesel's upsert builder has no WHERE on DO UPDATE; the same statement, bound.
        let written: Option<RecordRow> = diesel::sql_query(
            "INSERT INTO runtime_records (game_id, status, current_container_id, \
               current_image_ref, started_at, last_op_at, last_op_id, fence, last_container_id, \
               host_id) \
             VALUES ($1, 'running', $2, $3, $4, $4, $5, $6, $2, COALESCE($7, 'local')) \
             ON CONFLICT (game_id) DO UPDATE SET status = 'running', \
               host_id = COALESCE($7, runtime_records.host_id), \
               current_container_id = EXCLUDED.current_container_id, \
               last_container_id = EXCLUDED.current_container_id, \
               current_image_ref = EXCLUDED.current_image_ref, started_at = EXCLUDED.started_at, \
               stopped_at = NULL, removed_at = NULL, last_op_at = EXCLUDED.last_op_at, \
               last_op_id = EXCLUDED.last_op_id, fence = EXCLUDED.fence \
             WHERE runtime_records.status <> 'running' AND runtime_records.fence <= EXCLUDED.fence \
             RETURNING game_id, status, current_container_id, current_image_ref, started_at, \
               stopped_at, removed_at, last_op_at, last_op_id, fence, last_container_id, host_id",
        )
        .bind::<Text, _>(game_id.as_str())
        .bind::<Text, _>(container_id)
        .bind::<Text, _>(image_ref)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(operation_id)
        .bind::<BigInt, _>(fence)
        .bind::<Nullable<Text>, _>(host_id.map(HostId::as_str))
        .get_result(&mut conn)
        .await
        .optional()?;
        if let Some(row) = written {
            return Ok(UpdateStatusOutcome::Updated {
                record: row.into_record()?,
            });
        }
        self.explain_refusal(
            &mut conn,
            game_id,
            operation_id,
            RuntimeStatus::Running,
            fence,
        )
        .await
    }

    /// The record as this operation wrote it, if its last write was this operation's move to
    /// `to`: a retried write whose first attempt committed recognises itself by this, before
    /// anything else (even a lease that is gone since) can call it refused.
    pub async fn own_write(
        &self,
        game_id: &GameId,
        operation_id: &str,
        to: RuntimeStatus,
    ) -> Result<Option<RuntimeRecord>, StoreError> {
        let loaded = self.get_record_with_writer(game_id).await?;
        Ok(loaded
            .filter(|(record, writer)| {
                writer.last_op_id.as_deref() == Some(operation_id) && record.status == to
            })
            .map(|(record, _)| record))
    }

    /// Why a guarded write touched no row: this operation already wrote it (a retry), a newer
    /// lease holder did (fenced), another path moved it (conflict), or it is gone.
    async fn explain_refusal(
        &self,
        conn: &mut AsyncPgConnection,
        game_id: &GameId,
        operation_id: &str,
        to: RuntimeStatus,
        fence: i64,
    ) -> Result<UpdateStatusOutcome, StoreError> {
        let current = runtime_records::table
            .find(game_id.as_str())
            .select(RecordRow::as_select())
            .first(conn)
            .await
            .optional()?;
        Ok(match current {
            None => UpdateStatusOutcome::NotFound,
            Some(row)
                if row.last_op_id.as_deref() == Some(operation_id) && row.status == to.as_str() =>
            {
                UpdateStatusOutcome::Updated {
                    record: row.into_record()?,
                }
            }
            Some(row) if row.fence > fence => UpdateStatusOutcome::Fenced {
                current: row.into_record()?,
            },
            Some(row) => UpdateStatusOutcome::Conflict {
                current: row.into_record()?,
            },
        })
    }

    /// Sets the record's fence to `fence`, whatever it holds now, and returns the fence it
    /// replaced (`None`: the game has no record). The operator's repair for a record that
    /// carries a fence no lease the counter issues can reach; the caller holds the game's lease
    /// and passes that lease's fence.
    pub async fn reset_fence(
        &self,
        game_id: &GameId,
        fence: u64,
    ) -> Result<Option<i64>, StoreError> {
        use diesel::sql_types::{BigInt, Text};
        #[derive(QueryableByName)]
        struct Replaced {
            #[diesel(sql_type = BigInt)]
            previous: i64,
        }
        let fence = i64::try_from(fence).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        let replaced: Option<Replaced> = diesel::sql_query(
            "UPDATE runtime_records AS r SET fence = $2 \
             FROM (SELECT game_id, fence FROM runtime_records WHERE game_id = $1 FOR UPDATE) AS old \
             WHERE r.game_id = old.game_id RETURNING old.fence AS previous",
        )
        .bind::<Text, _>(game_id.as_str())
        .bind::<BigInt, _>(fence)
        .get_result(&mut conn)
        .await
        .optional()?;
        Ok(replaced.map(|r| r.previous))
    }

    /// Inserts the operation's audit row unless it is already there; returns whether it wrote.
    pub async fn append_operation(&self, entry: &OperationEntry) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let row = NewOperation {
            operation_id: &entry.operation_id,
            game_id: &entry.game_id,
            op_kind: entry.op_kind.as_str(),
            op_source: &entry.op_source,
            source_ref: entry.source_ref.as_deref(),
            image_ref: entry.image_ref.as_deref(),
            container_id: entry.container_id.as_deref(),
            outcome: entry.outcome.as_str(),
            error_code: entry.error_code.map(|c| c.as_str()),
            error_message: entry.error_message.as_deref(),
            started_at: entry.started_at,
            finished_at: Some(Utc::now().trunc_subsecs(6)),
            stop_signal: entry.stop.map(|s| s.signal.as_str()),
            stop_timeout_secs: entry
                .stop
                .map(|s| i32::try_from(s.timeout_secs).unwrap_or(i32::MAX)),
            stop_ended: entry.stop.map(|s| s.ended.as_str()),
        };
        let written = diesel::insert_into(operation_log::table)
            .values(&row)
            .on_conflict(operation_log::operation_id)
            .do_nothing()
            .execute(&mut conn)
            .await?;
        Ok(written == 1)
    }

    /// Keeps the latest health event of the game (an older event never overwrites a newer one).
    pub async fn upsert_health_snapshot(&self, event: &HealthEvent) -> Result<(), StoreError> {
        use diesel::sql_types::{Jsonb, Nullable, Text, Timestamptz};
        let mut conn = self.conn().await?;
        // diesel's upsert builder has no WHERE on DO UPDATE; this is the same statement with
        // bound parameters.
        diesel::sql_query(
            "INSERT INTO health_snapshots (game_id, container_id, event_type, occurred_at, details) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (game_id) DO UPDATE SET container_id = EXCLUDED.container_id, \
               event_type = EXCLUDED.event_type, occurred_at = EXCLUDED.occurred_at, \
               details = EXCLUDED.details \
             WHERE health_snapshots.occurred_at <= EXCLUDED.occurred_at",
        )
        .bind::<Text, _>(event.game_id.as_str())
        .bind::<Nullable<Text>, _>(event.container_id.as_deref())
        .bind::<Text, _>(&event.event_type)
        .bind::<Timestamptz, _>(event.occurred_at)
        .bind::<Jsonb, _>(&event.details)
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}

/// Runs the pending migrations, holding an advisory lock so concurrent starters do not race.
pub async fn run_migrations(database_url: &str) -> anyhow::Result<Vec<String>> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        // Through diesel-async's wrapper: the service links no libpq.
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)?;
        let lock = format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})");
        diesel::RunQueryDsl::execute(diesel::sql_query(lock), &mut conn)?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect())
            .map_err(|err| anyhow::anyhow!("run migrations: {err}"));
        let unlock = format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})");
        diesel::RunQueryDsl::execute(diesel::sql_query(unlock), &mut conn)?;
        applied
    })
    .await?
}

#[derive(Queryable, QueryableByName, Selectable)]
#[diesel(table_name = runtime_records, check_for_backend(diesel::pg::Pg))]
pub(crate) struct RecordRow {
    game_id: String,
    status: String,
    current_container_id: Option<String>,
    current_image_ref: Option<String>,
    started_at: Option<DateTime<Utc>>,
    stopped_at: Option<DateTime<Utc>>,
    removed_at: Option<DateTime<Utc>>,
    last_op_at: DateTime<Utc>,
    last_op_id: Option<String>,
    fence: i64,
    last_container_id: Option<String>,
    host_id: String,
}

impl RecordRow {
    pub(crate) fn into_record(self) -> Result<RuntimeRecord, StoreError> {
        let game_id = GameId::parse(&self.game_id).map_err(|err| {
            StoreError::Corrupt(format!("runtime record has invalid game id: {err}"))
        })?;
        let status = self.status.parse::<RuntimeStatus>().map_err(|_| {
            StoreError::Corrupt(format!(
                "runtime record has unsupported status {:?}",
                self.status
            ))
        })?;
        Ok(RuntimeRecord {
            game_id,
            status,
            current_container_id: self.current_container_id,
            current_image_ref: self.current_image_ref,
            started_at: self.started_at,
            stopped_at: self.stopped_at,
            removed_at: self.removed_at,
            last_op_at: self.last_op_at,
            host_id: HostId::parse(&self.host_id).map_err(StoreError::Corrupt)?,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = operation_log)]
struct NewOperation<'a> {
    operation_id: &'a str,
    game_id: &'a str,
    op_kind: &'a str,
    op_source: &'a str,
    source_ref: Option<&'a str>,
    image_ref: Option<&'a str>,
    container_id: Option<&'a str>,
    outcome: &'a str,
    error_code: Option<&'a str>,
    error_message: Option<&'a str>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    stop_signal: Option<&'a str>,
    stop_timeout_secs: Option<i32>,
    stop_ended: Option<&'a str>,
}
