//! Configuration from `RTMANAGER_*` environment variables, each with a documented default
//! (see `.env.example`). Parsed once at start; a bad value stops the process with its name.
//! Secrets (the database and Redis URLs, the API token) are `secrecy` strings: `Debug` never
//! shows them, and reading one takes an explicit `expose_secret()`.

use std::time::Duration;

use rtmanager_workflows::StepSettings;
pub use secrecy::{ExposeSecret, SecretString};

/// The worker's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Temporal frontend, e.g. `http://127.0.0.1:7233`.
    pub temporal_address: String,
    /// Temporal namespace the worker polls and the bridge and consumer start workflows in.
    pub namespace: String,
    /// The worker polls it; the bridge, consumer and CLI start workflows on it. One per test.
    pub task_queue: String,
    /// PostgreSQL; it carries a password, so `Debug` shows none of it.
    pub database_url: SecretString,
    /// PostgreSQL connections per process; must be positive.
    pub database_pool_size: usize,
    /// Leases, health events and the stop jobs stream all live in this Redis.
    pub redis_url: SecretString,
    /// Prefix of rtmanager's Redis keys (leases, publish markers).
    pub redis_prefix: String,
    /// `runtime:health_events` by contract; a test gets one of its own.
    pub health_stream: String,
    /// `unix:///var/run/docker.sock` or `tcp://host:port`.
    pub docker_host: String,
    /// Docker's graceful stop timeout (SIGTERM, then SIGKILL).
    pub stop_timeout: Duration,
    /// Per-game lease TTL; must exceed the graceful stop timeout (Docker steps renew it every
    /// 2 s while they run, but a stop must not outlive a lease that nobody renews).
    pub lease_ttl: Duration,
    /// How long after its holder workflow closed (terminated, timed out) a lease may be taken
    /// over by the next operation, instead of waiting out the TTL.
    pub lease_lock_delay: Duration,
    /// Run the sub-millisecond steps as local activities.
    pub local_fast_steps: bool,
    /// Run the Docker steps as local activities too.
    pub local_docker_steps: bool,
    /// Docker network mode of the game containers StartRuntime creates.
    pub container_network: String,
    /// How long a started container must stay up before the start counts.
    pub start_settle: Duration,
    /// Concurrent workflow-task polls: a new workflow waits in the server until a poll is open.
    pub workflow_pollers: usize,
    /// How long a workflow task waits on a (possibly dead) worker's sticky queue.
    pub sticky_queue_timeout: Duration,
    /// Worker build id (skips hashing the executable at start).
    pub build_id: String,
    /// Where the HTTP bridge listens.
    pub http_addr: std::net::SocketAddr,
    /// The bridge's bearer token; the bridge refuses to start without one.
    pub api_token: Option<SecretString>,
    /// How long an HTTP request waits for its workflow before answering 503.
    pub http_wait: Duration,
    /// Largest HTTP request body accepted.
    pub http_body_limit: usize,
    /// The stop jobs stream and its consumer group.
    pub stop_stream: String,
    /// Shared by every rtmanager process reading the stream; created if missing.
    pub stop_group: String,
    /// This process's consumer name in the group.
    pub stream_consumer: String,
    /// Pending entries idle this long are claimed from their (dead) consumer.
    pub stream_claim_idle: Duration,
    /// Retries of a stream stop that met `conflict`, and the first wait before one.
    pub stream_conflict_retries: u32,
    /// The first of those waits; each retry doubles it, up to 10 s.
    pub stream_conflict_backoff: Duration,
    /// Stream entries processed at once by this process.
    pub stream_concurrency: usize,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |name: &str, default: &str| lookup(name).unwrap_or_else(|| default.to_owned());
        let num = |name: &str, default: u64| -> anyhow::Result<u64> {
            match lookup(name) {
                None => Ok(default),
                Some(raw) => raw
                    .trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{name}={raw:?} is not a whole number")),
            }
        };
        let flag = |name: &str, default: bool| -> anyhow::Result<bool> {
            match lookup(name).as_deref().map(str::trim) {
                None => Ok(default),
                Some("1" | "true" | "yes") => Ok(true),
                Some("0" | "false" | "no") => Ok(false),
                Some(raw) => anyhow::bail!("{name}={raw:?} is not true/false"),
            }
        };
        let config = Self {
            temporal_address: get("RTMANAGER_TEMPORAL_ADDRESS", "http://127.0.0.1:7233"),
            namespace: get("RTMANAGER_NAMESPACE", "default"),
            task_queue: get("RTMANAGER_TASK_QUEUE", "rtmanager"),
            database_url: SecretString::from(get(
                "RTMANAGER_DATABASE_URL",
                "postgres://rtmanager:rtmanager@127.0.0.1:5432/rtmanager",
            )),
            database_pool_size: num("RTMANAGER_DATABASE_POOL_SIZE", 16)? as usize,
            redis_url: SecretString::from(get("RTMANAGER_REDIS_URL", "redis://127.0.0.1:6379")),
            redis_prefix: get("RTMANAGER_REDIS_PREFIX", "rtmanager:"),
            health_stream: get("RTMANAGER_HEALTH_STREAM", "runtime:health_events"),
            docker_host: get("RTMANAGER_DOCKER_HOST", "unix:///var/run/docker.sock"),
            stop_timeout: Duration::from_secs(num("RTMANAGER_STOP_TIMEOUT_SECS", 10)?),
            lease_ttl: Duration::from_secs(num("RTMANAGER_LEASE_TTL_SECS", 120)?),
            lease_lock_delay: Duration::from_millis(num("RTMANAGER_LEASE_LOCK_DELAY_MS", 3000)?),
            local_fast_steps: flag("RTMANAGER_LOCAL_FAST_STEPS", true)?,
            local_docker_steps: flag("RTMANAGER_LOCAL_DOCKER_STEPS", true)?,
            container_network: get("RTMANAGER_CONTAINER_NETWORK", "bridge"),
            start_settle: Duration::from_millis(num("RTMANAGER_START_SETTLE_MS", 300)?),
            workflow_pollers: num("RTMANAGER_WORKFLOW_POLLERS", 10)?.max(2) as usize,
            sticky_queue_timeout: Duration::from_millis(num(
                "RTMANAGER_STICKY_QUEUE_TIMEOUT_MS",
                3000,
            )?),
            build_id: get(
                "RTMANAGER_BUILD_ID",
                concat!("rtmanager-", env!("CARGO_PKG_VERSION")),
            ),
            http_addr: {
                let raw = get("RTMANAGER_HTTP_ADDR", "127.0.0.1:8080");
                raw.parse()
                    .map_err(|_| anyhow::anyhow!("RTMANAGER_HTTP_ADDR={raw:?} is not host:port"))?
            },
            api_token: lookup("RTMANAGER_API_TOKEN")
                .filter(|t| !t.is_empty())
                .map(SecretString::from),
            http_wait: Duration::from_secs(num("RTMANAGER_HTTP_WAIT_SECS", 120)?),
            http_body_limit: num("RTMANAGER_HTTP_BODY_LIMIT_BYTES", 16 * 1024)? as usize,
            stop_stream: get("RTMANAGER_STOP_STREAM", "runtime:stop_jobs"),
            stop_group: get("RTMANAGER_STOP_GROUP", "rtmanager"),
            stream_consumer: lookup("RTMANAGER_STREAM_CONSUMER").unwrap_or_else(default_consumer),
            stream_claim_idle: Duration::from_millis(num(
                "RTMANAGER_STREAM_CLAIM_IDLE_MS",
                30_000,
            )?),
            stream_conflict_retries: num("RTMANAGER_STREAM_CONFLICT_RETRIES", 20)? as u32,
            stream_conflict_backoff: Duration::from_millis(num(
                "RTMANAGER_STREAM_CONFLICT_BACKOFF_MS",
                500,
            )?),
            stream_concurrency: num("RTMANAGER_STREAM_CONCURRENCY", 64)? as usize,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.task_queue.is_empty() && !self.namespace.is_empty(),
            "RTMANAGER_TASK_QUEUE and RTMANAGER_NAMESPACE must not be empty"
        );
        anyhow::ensure!(
            self.database_pool_size > 0,
            "RTMANAGER_DATABASE_POOL_SIZE must be positive"
        );
        // Docker steps renew the lease every 2 s; the TTL must leave room for a missed renewal.
        anyhow::ensure!(
            self.lease_ttl >= Duration::from_secs(5),
            "RTMANAGER_LEASE_TTL_SECS ({}s) must be at least 5 s: Docker steps renew the lease \
             every 2 s",
            self.lease_ttl.as_secs()
        );
        // A lease that outlives nothing: a stop still waiting on Docker's graceful timeout
        // would lose it to the next operation.
        anyhow::ensure!(
            self.lease_ttl > self.stop_timeout,
            "RTMANAGER_LEASE_TTL_SECS ({}s) must exceed RTMANAGER_STOP_TIMEOUT_SECS ({}s): a stop \
             waits up to the graceful timeout and must still hold the game's lease",
            self.lease_ttl.as_secs(),
            self.stop_timeout.as_secs()
        );
        anyhow::ensure!(
            self.lease_lock_delay < self.lease_ttl
                && self.lease_lock_delay <= Duration::from_secs(60),
            "RTMANAGER_LEASE_LOCK_DELAY_MS ({} ms) must be below the lease TTL and at most 60 s: \
             an acquire waits it out while it holds a workflow task",
            self.lease_lock_delay.as_millis()
        );
        url::Url::parse(&self.temporal_address).map_err(|err| {
            anyhow::anyhow!(
                "RTMANAGER_TEMPORAL_ADDRESS={:?}: {err}",
                self.temporal_address
            )
        })?;
        Ok(())
    }

    /// The stream consumer's settings.
    pub fn stream_settings(&self) -> crate::stream::StreamSettings {
        crate::stream::StreamSettings {
            stream: self.stop_stream.clone(),
            group: self.stop_group.clone(),
            consumer: self.stream_consumer.clone(),
            claim_idle: self.stream_claim_idle,
            conflict_retries: self.stream_conflict_retries,
            conflict_backoff: self.stream_conflict_backoff,
            concurrency: self.stream_concurrency,
        }
    }

    /// The names of rtmanager's Redis keys and its health stream.
    pub fn redis_keys(&self) -> rtmanager_activities::RedisKeys {
        rtmanager_activities::RedisKeys {
            prefix: self.redis_prefix.clone(),
            health_stream: self.health_stream.clone(),
            health_stream_maxlen: 100_000,
        }
    }

    /// The workflows' step settings derived from this configuration.
    pub fn step_settings(&self) -> StepSettings {
        StepSettings {
            graceful_stop_timeout: self.stop_timeout,
            local_fast_steps: self.local_fast_steps,
            local_docker_steps: self.local_docker_steps,
            lease_lock_delay: self.lease_lock_delay,
            ..StepSettings::default()
        }
    }
}

/// `<hostname>-<pid>-<random>`: unique per process, recognisable in `XINFO CONSUMERS`.
fn default_consumer() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rtmanager".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = config(&[]).unwrap();
        assert_eq!(c.task_queue, "rtmanager");
        assert_eq!(c.namespace, "default");
        assert_eq!(c.health_stream, "runtime:health_events");
        assert_eq!(c.stop_timeout, Duration::from_secs(10));
        assert!(c.local_fast_steps);
        assert!(
            c.http_addr.ip().is_loopback(),
            "the bridge binds to loopback by default"
        );
        assert_eq!(c.stop_stream, "runtime:stop_jobs");
        assert!(c.api_token.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = config(&[("RTMANAGER_STOP_TIMEOUT_SECS", "ten")]).unwrap_err();
        assert!(err.to_string().contains("RTMANAGER_STOP_TIMEOUT_SECS"));
        let err = config(&[("RTMANAGER_LOCAL_FAST_STEPS", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("RTMANAGER_LOCAL_FAST_STEPS"));
        let err = config(&[("RTMANAGER_HTTP_ADDR", "localhost")]).unwrap_err();
        assert!(err.to_string().contains("RTMANAGER_HTTP_ADDR"));
        let err = config(&[("RTMANAGER_LEASE_TTL_SECS", "4")]).unwrap_err();
        assert!(err.to_string().contains("at least 5"));
        let err = config(&[("RTMANAGER_LEASE_LOCK_DELAY_MS", "soon")]).unwrap_err();
        assert!(err.to_string().contains("RTMANAGER_LEASE_LOCK_DELAY_MS"));
    }

    #[test]
    fn a_lease_ttl_within_the_graceful_stop_timeout_is_refused() {
        let err = config(&[
            ("RTMANAGER_STOP_TIMEOUT_SECS", "30"),
            ("RTMANAGER_LEASE_TTL_SECS", "30"),
        ])
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("RTMANAGER_LEASE_TTL_SECS") && message.contains("must exceed"),
            "{message}"
        );
        assert!(config(&[
            ("RTMANAGER_STOP_TIMEOUT_SECS", "30"),
            ("RTMANAGER_LEASE_TTL_SECS", "31"),
        ])
        .is_ok());
        let err = config(&[
            ("RTMANAGER_LEASE_TTL_SECS", "20"),
            ("RTMANAGER_LEASE_LOCK_DELAY_MS", "20000"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("below the lease TTL"), "{err}");
    }

    #[test]
    fn debug_hides_passwords() {
        let c = config(&[
            ("RTMANAGER_DATABASE_URL", "postgres://u:hunter2@h/db"),
            ("RTMANAGER_API_TOKEN", "hunter2hunter2hunter2"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
