//! Redis: the per-game lease and the `runtime:health_events` stream.
//!
//! The lease is one key per game holding the holder's token with a TTL. Acquire and release
//! are Lua scripts so that "is it mine?" and the write happen atomically; release is a
//! compare-and-delete, so only the holder can give a lease back.

use std::time::Duration;

use redis::{aio::ConnectionManager, aio::ConnectionManagerConfig, Script};
use tokio::sync::OnceCell;

use rtmanager_domain::{GameId, LeaseToken};
use rtmanager_workflows::contract::HealthEvent;

/// Takes the lease, or refreshes it when this token already holds it (a retried attempt).
const ACQUIRE: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Compare-and-delete.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Publishes a health event once per (operation, event type): the marker key and the XADD
/// happen atomically, so a retried activity never publishes twice.
const PUBLISH_ONCE: &str = r"
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
    'game_id', ARGV[3], 'container_id', ARGV[4], 'event_type', ARGV[5],
    'occurred_at', ARGV[6], 'details', ARGV[7])
end
return false
";

/// How long the publish-once marker is kept: far beyond any retry of the same operation.
const PUBLISH_MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Key names, so tests and several deployments can share one Redis.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    /// Prefix of lease and marker keys, e.g. `rtmanager:`.
    pub prefix: String,
    /// The health events stream, `runtime:health_events` by contract.
    pub health_stream: String,
    /// Approximate cap on the health stream's length.
    pub health_stream_maxlen: u64,
}

impl RedisKeys {
    pub fn lease(&self, game_id: &GameId) -> String {
        format!("{}lease:{}", self.prefix, game_id)
    }

    fn publish_marker(&self, event: &HealthEvent) -> String {
        format!(
            "{}health_published:{}:{}",
            self.prefix, event.operation_id, event.event_type
        )
    }
}

/// A lazily connected, auto-reconnecting Redis handle: the worker starts while Redis is down
/// and each step retries until it is back.
pub struct RedisStore {
    client: redis::Client,
    manager: OnceCell<ConnectionManager>,
    keys: RedisKeys,
    acquire: Script,
    release: Script,
    publish_once: Script,
}

impl RedisStore {
    pub fn new(url: &str, keys: RedisKeys) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            manager: OnceCell::new(),
            keys,
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
            publish_once: Script::new(PUBLISH_ONCE),
        })
    }

    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    async fn conn(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        self.manager
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .cloned()
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }

    /// Returns whether the lease is now held by `token`.
    pub async fn acquire_lease(
        &self,
        game_id: &GameId,
        token: &LeaseToken,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn().await?;
        let acquired: i64 = self
            .acquire
            .key(self.keys.lease(game_id))
            .arg(token.as_str())
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(acquired == 1)
    }

    /// Returns whether a lease held by `token` was deleted.
    pub async fn release_lease(
        &self,
        game_id: &GameId,
        token: &LeaseToken,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn().await?;
        let deleted: i64 = self
            .release
            .key(self.keys.lease(game_id))
            .arg(token.as_str())
            .invoke_async(&mut conn)
            .await?;
        Ok(deleted == 1)
    }

    /// XADDs the event unless this operation already published it; returns whether it added.
    pub async fn publish_health_once(&self, event: &HealthEvent) -> redis::RedisResult<bool> {
        let mut conn = self.conn().await?;
        let id: Option<String> = self
            .publish_once
            .key(&self.keys.health_stream)
            .key(self.keys.publish_marker(event))
            .arg(PUBLISH_MARKER_TTL.as_millis() as u64)
            .arg(self.keys.health_stream_maxlen)
            .arg(event.game_id.as_str())
            .arg(event.container_id.as_deref().unwrap_or(""))
            .arg(&event.event_type)
            .arg(
                event
                    .occurred_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            )
            .arg(event.details.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(id.is_some())
    }
}
