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
use serde::{Deserialize, Serialize};

/// The workflow run that took a lease: stored beside the lease so that an acquire meeting a
/// lease can ask Temporal whether its holder is still running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHolder {
    /// The workflow Temporal is asked about before a takeover; a tool puts its own name here.
    pub workflow_id: String,
    /// Empty when unknown: Temporal is then asked about the workflow's latest run.
    pub run_id: String,
}

/// What a takeover did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// The lease is the new holder's.
    Taken {
        /// The new holder's fence, above the dead holder's.
        fence: u64,
    },
    /// The dead holder's lease was renewed too recently: something still keeps it alive.
    RenewedRecently {
        /// How long until that renewal is old enough.
        quiet_in: Duration,
    },
    /// Another token holds the lease now.
    HeldByOther,
}

/// What an acquire found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The lease is this secret's, with its fence.
    Acquired {
        /// Monotonic per game, never below the clock in microseconds; every record write of
        /// this holder carries it.
        fence: u64,
    },
    /// Another token holds it; `holder` is `None` when the lease names no holder (taken by an
    /// older rtmanager, or by an operator tool).
    Held {
        /// The holder's whole `<fence>:<secret>` token: a takeover replaces only this value.
        token: String,
        /// The run to ask Temporal about, when the lease names one.
        holder: Option<LeaseHolder>,
    },
}

/// The Lua both lease-taking scripts share: `take` sets the lease (KEYS[1]) to
/// `<fence>:<secret>` with a fresh fence from the counter (KEYS[2]), never below `floor`, and
/// names the holder (KEYS[3]); it returns the fence and the token.
macro_rules! take_lua {
    () => {
        r"
local function take(secret, ttl, floor, holder)
  local fence = redis.call('INCR', KEYS[2])
  if fence < tonumber(floor) then
    redis.call('SET', KEYS[2], floor)
    fence = tonumber(floor)
  end
  -- Lua numbers are doubles: format the fence as an integer, never as 1.7e+15.
  local fenced = string.format('%.0f', fence)
  local token = fenced .. ':' .. secret
  redis.call('SET', KEYS[1], token, 'PX', ttl)
  redis.call('SET', KEYS[3], holder, 'PX', ttl)
  return fenced, token
end
"
    };
}

/// Takes the lease, or refreshes it when this secret already holds it (a retried attempt).
/// The stored value is `<fence>:<secret>`; the fence comes from a per-game counter that never
/// goes below the current time in microseconds, so it keeps growing even if Redis loses the
/// counter (a restart without persistence). A companion key names the holder (its workflow id
/// and run id) with the same TTL, so that a later acquire can tell a live holder from a closed
/// one. Returns `{fence, token, holder}`: fence `0` when another holder has the lease, with
/// that holder's token and name.
const ACQUIRE: &str = concat!(
    take_lua!(),
    r"
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ':', 1, true)
  if sep and string.sub(current, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
    return {string.sub(current, 1, sep - 1), current, ARGV[4]}
  end
  return {'0', current, redis.call('GET', KEYS[3]) or ''}
end
local fence, token = take(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return {fence, token, ARGV[4]}
"
);

/// Takes over a lease from a holder known to be gone: only if the key still holds exactly the
/// dead holder's token (or nothing any more), with a fresh fence from the counter (higher than
/// the dead holder's). A lease renewed within the last `ARGV[6]` ms is still being kept alive
/// by a step of the dead holder that has not noticed its workflow closed (a Docker stop in
/// flight renews every 2 s): it is not taken, and the script answers `-<ms>`, how long until
/// that renewal is old enough. `'0'`: another token holds the lease.
const TAKE_OVER: &str = concat!(
    take_lua!(),
    r"
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return '0'
end
if current then
  local renewed_ago = tonumber(ARGV[3]) - redis.call('PTTL', KEYS[1])
  if renewed_ago < tonumber(ARGV[6]) then
    return '-' .. string.format('%.0f', tonumber(ARGV[6]) - renewed_ago)
  end
end
local fence = take(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
return fence
"
);

/// Compare-and-delete by secret (the holder key goes with it).
const RELEASE: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ':', 1, true)
  if sep and string.sub(current, sep + 1) == ARGV[1] then
    redis.call('DEL', KEYS[2])
    return redis.call('DEL', KEYS[1])
  end
end
return 0
";

/// Compare-and-extend: a holder that lost its lease never renews it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Publishes a health event once per (operation, event type): the marker check, the XADD and
/// the marker happen atomically, so a retried activity never publishes twice. The marker is set
/// only after the XADD succeeded: a failed XADD (the script stops at the error, keeping what it
/// already wrote) leaves no marker, and the retry publishes.
const PUBLISH_ONCE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
  'game_id', ARGV[3], 'container_id', ARGV[4], 'event_type', ARGV[5],
  'occurred_at', ARGV[6], 'details', ARGV[7])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return id
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
    /// `<prefix>lease:<game>`, holding the `<fence>:<secret>` token with the lease TTL.
    pub fn lease(&self, game_id: &GameId) -> String {
        format!("{}lease:{}", self.prefix, game_id)
    }

    fn fence(&self, game_id: &GameId) -> String {
        format!("{}fence:{}", self.prefix, game_id)
    }

    /// The companion key naming the lease's holder.
    pub fn lease_holder(&self, game_id: &GameId) -> String {
        format!("{}lease_holder:{}", self.prefix, game_id)
    }

    fn publish_marker(&self, event: &HealthEvent) -> String {
        format!(
            "{}health_published:{}:{}",
            self.prefix, event.operation_id, event.event_type
        )
    }
}

/// A Redis client whose TCP connections disable Nagle's algorithm. redis-rs leaves it on by
/// default; a multiplexed connection that writes a second command while the first is unacked
/// then waits for the peer's delayed ACK (up to 40 ms on Linux).
pub fn redis_client(url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    redis::Client::open(info.set_tcp_settings(tcp))
}

/// A lazily connected, auto-reconnecting Redis handle: the worker starts while Redis is down
/// and each step retries until it is back.
pub struct RedisStore {
    client: redis::Client,
    manager: OnceCell<ConnectionManager>,
    keys: RedisKeys,
    acquire: Script,
    take_over: Script,
    release: Script,
    renew: Script,
    publish_once: Script,
}

impl RedisStore {
    /// Parses `url` but connects nothing: the first command does, so a worker starts while Redis
    /// is down.
    pub fn new(url: &str, keys: RedisKeys) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis_client(url)?,
            manager: OnceCell::new(),
            keys,
            acquire: Script::new(ACQUIRE),
            take_over: Script::new(TAKE_OVER),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
            publish_once: Script::new(PUBLISH_ONCE),
        })
    }

    /// The layout this store was built with, so that code inspecting Redis uses the same keys.
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

    /// Runs a prepared script call on the shared connection.
    async fn run<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        let mut conn = self.conn().await?;
        call.invoke_async(&mut conn).await
    }

    /// The acquire and takeover scripts' call: the game's lease, fence and holder keys, `first`
    /// (the takeover's dead token), then the secret, TTL, fence floor and holder.
    fn claim<'a>(
        &self,
        script: &'a Script,
        game_id: &GameId,
        first: Option<&str>,
        (secret, holder): (&str, &LeaseHolder),
        ttl: Duration,
    ) -> redis::ScriptInvocation<'a> {
        let mut call = script.key(self.keys.lease(game_id));
        call.key(self.keys.fence(game_id))
            .key(self.keys.lease_holder(game_id));
        if let Some(first) = first {
            call.arg(first);
        }
        call.arg(secret)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(fence_floor())
            .arg(serde_json::to_string(holder).unwrap_or_default());
        call
    }

    /// Readiness probe; on first use it also opens the shared connection.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }

    /// Takes (or re-confirms) the lease for `secret` on behalf of `holder`.
    pub async fn acquire_lease(
        &self,
        game_id: &GameId,
        secret: &str,
        holder: &LeaseHolder,
        ttl: Duration,
    ) -> redis::RedisResult<Acquire> {
        let call = self.claim(&self.acquire, game_id, None, (secret, holder), ttl);
        let (fence, token, holder): (String, String, String) = self.run(&call).await?;
        Ok(match parse_fence(&fence)? {
            0 => Acquire::Held {
                token,
                holder: serde_json::from_str(&holder).ok(),
            },
            fence => Acquire::Acquired { fence },
        })
    }

    /// Replaces a dead holder's lease (`dead_token`, which must still be the key's value, or
    /// the key must be free) with one for `secret` and a higher fence, unless the lease was
    /// renewed within `quiet` (a step of the dead holder still works).
    pub async fn take_over_lease(
        &self,
        game_id: &GameId,
        dead_token: &str,
        secret: &str,
        holder: &LeaseHolder,
        ttl: Duration,
        quiet: Duration,
    ) -> redis::RedisResult<TakeOver> {
        let first = Some(dead_token);
        let mut call = self.claim(&self.take_over, game_id, first, (secret, holder), ttl);
        call.arg(quiet.as_millis() as u64);
        let answer: String = self.run(&call).await?;
        Ok(match answer.strip_prefix('-') {
            Some(ms) => TakeOver::RenewedRecently {
                quiet_in: Duration::from_millis(parse_fence(ms)?),
            },
            None => match parse_fence(&answer)? {
                0 => TakeOver::HeldByOther,
                fence => TakeOver::Taken { fence },
            },
        })
    }

    /// Whether the game's lease is held by exactly `token` right now: the check that makes an
    /// inherited token, or a write's fence, one the lease counter issued to a live holder.
    pub async fn lease_is_held_by(
        &self,
        game_id: &GameId,
        token: &LeaseToken,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn().await?;
        let current: Option<String> = redis::cmd("GET")
            .arg(self.keys.lease(game_id))
            .query_async(&mut conn)
            .await?;
        Ok(current.as_deref() == Some(token.as_str()))
    }

    /// Whether any operation holds the game's lease right now.
    pub async fn lease_is_held(&self, game_id: &GameId) -> redis::RedisResult<bool> {
        let mut conn = self.conn().await?;
        redis::cmd("EXISTS")
            .arg(self.keys.lease(game_id))
            .query_async(&mut conn)
            .await
    }

    /// The games among `games` whose lease is held right now: one round trip.
    pub async fn leases_held(
        &self,
        games: &[GameId],
    ) -> redis::RedisResult<std::collections::HashSet<GameId>> {
        if games.is_empty() {
            return Ok(Default::default());
        }
        let mut conn = self.conn().await?;
        let keys: Vec<String> = games.iter().map(|g| self.keys.lease(g)).collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        Ok(games
            .iter()
            .zip(values)
            .filter(|(_, value)| value.is_some())
            .map(|(game, _)| game.clone())
            .collect())
    }

    /// How long (seconds) each of `orphans` has been seen as an orphan on `host`: the first
    /// sighting is remembered (`<prefix>orphans:<host>`, a hash of first-seen Unix seconds),
    /// and containers no longer orphans are forgotten.
    pub async fn orphan_ages(
        &self,
        host: &str,
        orphans: &[String],
    ) -> redis::RedisResult<std::collections::HashMap<String, u64>> {
        let mut conn = self.conn().await?;
        let key = format!("{}orphans:{host}", self.keys.prefix);
        let now = unix_secs();
        let mut pipe = redis::pipe();
        for id in orphans {
            pipe.cmd("HSETNX").arg(&key).arg(id).arg(now).ignore();
        }
        pipe.cmd("HGETALL").arg(&key);
        let (seen,): (std::collections::HashMap<String, u64>,) =
            pipe.query_async(&mut conn).await?;
        let gone: Vec<&String> = seen.keys().filter(|id| !orphans.contains(id)).collect();
        if !gone.is_empty() {
            redis::cmd("HDEL")
                .arg(&key)
                .arg(&gone)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(orphans
            .iter()
            .map(|id| {
                let first = seen.get(id).copied().unwrap_or(now);
                (id.clone(), now.saturating_sub(first))
            })
            .collect())
    }

    /// Records a crash of the game now and returns how many it had within `window` (this one
    /// included): what the crash-loop limit counts.
    pub async fn record_crash(
        &self,
        game_id: &GameId,
        crash: &str,
        window: Duration,
    ) -> redis::RedisResult<u64> {
        let mut conn = self.conn().await?;
        let key = format!("{}crashes:{game_id}", self.keys.prefix);
        let now = unix_secs();
        let oldest = now.saturating_sub(window.as_secs());
        let (_, _, count, _): ((), (), u64, ()) = redis::pipe()
            .cmd("ZADD")
            .arg(&key)
            .arg("NX")
            .arg(now)
            .arg(crash)
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({oldest}"))
            .cmd("ZCARD")
            .arg(&key)
            .cmd("EXPIRE")
            .arg(&key)
            .arg(window.as_secs().max(1))
            .query_async(&mut conn)
            .await?;
        Ok(count)
    }

    /// Returns whether a lease held by `token` was deleted.
    pub async fn release_lease(
        &self,
        game_id: &GameId,
        token: &LeaseToken,
    ) -> redis::RedisResult<bool> {
        let mut call = self.release.key(self.keys.lease(game_id));
        call.key(self.keys.lease_holder(game_id))
            .arg(token.secret());
        let deleted: i64 = self.run(&call).await?;
        Ok(deleted == 1)
    }

    /// Extends a lease `token` still holds; returns whether it did.
    pub async fn renew_lease(
        &self,
        game_id: &GameId,
        token: &LeaseToken,
        ttl: Duration,
    ) -> redis::RedisResult<bool> {
        let mut call = self.renew.key(self.keys.lease(game_id));
        call.key(self.keys.lease_holder(game_id))
            .arg(token.as_str())
            .arg(ttl.as_millis().max(1) as u64);
        let renewed: i64 = self.run(&call).await?;
        Ok(renewed == 1)
    }

    /// XADDs the event unless this operation already published it; returns whether it added.
    pub async fn publish_health_once(&self, event: &HealthEvent) -> redis::RedisResult<bool> {
        let mut call = self.publish_once.key(&self.keys.health_stream);
        call.key(self.keys.publish_marker(event))
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
            .arg(event.details.to_string());
        let id: Option<String> = self.run(&call).await?;
        Ok(id.is_some())
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The fence counter's floor: the clock in microseconds, so fences keep growing even after
/// Redis lost the counter.
fn fence_floor() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn parse_fence(raw: &str) -> redis::RedisResult<u64> {
    raw.parse().map_err(|_| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "lease script returned a fence that is not a whole number",
            raw.to_owned(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_come_back_from_lua_as_whole_numbers_only() {
        assert_eq!(
            parse_fence("1795749216590691").unwrap(),
            1_795_749_216_590_691
        );
        assert_eq!(parse_fence("0").unwrap(), 0);
        // What Lua's default number formatting would have produced: refused, not misread.
        assert!(parse_fence("1.7957492165907e+15").is_err());
        assert!(parse_fence("").is_err());
    }

    #[test]
    fn the_lease_and_its_holder_share_the_prefix_and_the_game() {
        let keys = RedisKeys {
            prefix: "rtmanager:".into(),
            health_stream: "runtime:health_events".into(),
            health_stream_maxlen: 10,
        };
        let game = GameId::parse("demo-1").unwrap();
        assert_eq!(keys.lease(&game), "rtmanager:lease:demo-1");
        assert_eq!(keys.lease_holder(&game), "rtmanager:lease_holder:demo-1");
    }
}
