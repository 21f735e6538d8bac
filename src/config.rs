//! Configuration from `RTMANAGER_*` environment variables, each with a documented default
//! (see `.env.example`). Parsed once at start; a bad value stops the process with its name.
//! Secrets (the database and Redis URLs, the API token) are `secrecy` strings: `Debug` never
//! shows them, and reading one takes an explicit `expose_secret()`.

use std::time::Duration;

use rtmanager_domain::HostId;
use rtmanager_workflows::StepSettings;
pub use secrecy::{ExposeSecret, SecretString};

/// The worker's settings: every field is one `RTMANAGER_*` variable, declared once here with
/// its default and its parser (clap's `env` support reads them; `.env.example` lists them).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Temporal frontend, e.g. `http://127.0.0.1:7233`.
    #[arg(
        long,
        env = "RTMANAGER_TEMPORAL_ADDRESS",
        default_value = "http://127.0.0.1:7233"
    )]
    pub temporal_address: String,
    /// PEM file of the CA that signed the Temporal frontend's certificate (a private CA); with
    /// any TLS setting, or an `https://` address, the connection uses TLS.
    #[arg(long, env = "RTMANAGER_TEMPORAL_TLS_CA")]
    pub temporal_tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for mTLS (with `RTMANAGER_TEMPORAL_TLS_KEY`).
    #[arg(
        long,
        env = "RTMANAGER_TEMPORAL_TLS_CERT",
        requires = "temporal_tls_key"
    )]
    pub temporal_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of that client certificate.
    #[arg(
        long,
        env = "RTMANAGER_TEMPORAL_TLS_KEY",
        requires = "temporal_tls_cert"
    )]
    pub temporal_tls_key: Option<std::path::PathBuf>,
    /// The name to verify the frontend's certificate against, when it is not the address's.
    #[arg(long, env = "RTMANAGER_TEMPORAL_TLS_DOMAIN")]
    pub temporal_tls_domain: Option<String>,
    /// An API key (e.g. Temporal Cloud), sent as a bearer token over TLS.
    #[arg(long, env = "RTMANAGER_TEMPORAL_API_KEY", value_parser = secret, hide_env_values = true)]
    pub temporal_api_key: Option<SecretString>,
    /// Temporal namespace the worker polls and the bridge and consumer start workflows in.
    #[arg(long, env = "RTMANAGER_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The worker polls it; the bridge, consumer and CLI start workflows on it. One per test.
    #[arg(long, env = "RTMANAGER_TASK_QUEUE", default_value = "rtmanager")]
    pub task_queue: String,
    /// PostgreSQL; it carries a password, so `Debug` shows none of it.
    #[arg(
        long,
        env = "RTMANAGER_DATABASE_URL",
        default_value = "postgres://rtmanager:rtmanager@127.0.0.1:5432/rtmanager",
        value_parser = secret,
        hide_env_values = true
    )]
    pub database_url: SecretString,
    /// PostgreSQL connections per process; must be positive.
    #[arg(long, env = "RTMANAGER_DATABASE_POOL_SIZE", default_value_t = 16, value_parser = count)]
    pub database_pool_size: usize,
    /// Leases, health events and the stop jobs stream all live in this Redis.
    #[arg(
        long,
        env = "RTMANAGER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        value_parser = secret,
        hide_env_values = true
    )]
    pub redis_url: SecretString,
    /// Prefix of rtmanager's Redis keys (leases, publish markers).
    #[arg(long, env = "RTMANAGER_REDIS_PREFIX", default_value = "rtmanager:")]
    pub redis_prefix: String,
    /// `runtime:health_events` by contract; a test gets one of its own.
    #[arg(
        long,
        env = "RTMANAGER_HEALTH_STREAM",
        default_value = "runtime:health_events"
    )]
    pub health_stream: String,
    /// `unix:///var/run/docker.sock` or `tcp://host:port`.
    #[arg(
        long,
        env = "RTMANAGER_DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,
    /// The Docker host this worker serves (the game id's alphabet); it polls the host's own
    /// task queue, `<task queue>@<host id>`, beside the shared one.
    #[arg(long, env = "RTMANAGER_HOST_ID", default_value = "local", value_parser = host_id)]
    pub host_id: HostId,
    /// Running games the placement policy puts on this host at most.
    #[arg(long, env = "RTMANAGER_HOST_CAPACITY", default_value_t = 1000, value_parser = count_u32)]
    pub host_capacity: u32,
    /// Operator labels of this host, `key=value` pairs separated by commas (e.g. `zone=eu-1`).
    #[arg(long, env = "RTMANAGER_HOST_LABELS", default_value = "", value_parser = labels)]
    pub host_labels: serde_json::Value,
    /// How often the worker heartbeats its host.
    #[arg(long = "host-heartbeat-ms", env = "RTMANAGER_HOST_HEARTBEAT_MS", default_value = "2000", value_parser = millis)]
    pub host_heartbeat: Duration,
    /// A host whose worker has not heartbeat for this long is `down`: no game is placed there
    /// and clients stop routing to its task queue.
    #[arg(long = "host-down-after-secs", env = "RTMANAGER_HOST_DOWN_AFTER_SECS", default_value = "10", value_parser = secs)]
    pub host_down_after: Duration,
    /// How long a Docker step sent to a host's task queue waits for that host's worker before
    /// the operation answers `service_unavailable` (a host that went away).
    #[arg(long = "host-wait-secs", env = "RTMANAGER_HOST_WAIT_SECS", default_value = "30", value_parser = secs)]
    pub host_wait: Duration,
    /// Set the `GameId`, `OpKind`, `OpSource` and `Outcome` search attributes on every
    /// lifecycle workflow; the worker registers missing ones at start (or refuses to start).
    #[arg(long, env = "RTMANAGER_SEARCH_ATTRIBUTES", default_value = "true", value_parser = flag, action = clap::ArgAction::Set)]
    pub search_attributes: bool,
    /// Give every workflow step its input (lease secrets left out) as the summary the Temporal
    /// Web UI shows.
    #[arg(long, env = "RTMANAGER_STEP_SUMMARIES", default_value = "true", value_parser = flag, action = clap::ArgAction::Set)]
    pub step_summaries: bool,
    /// Follow the host's Docker events and publish crashes (`container_exited`,
    /// `container_oom`) that no operation caused.
    #[arg(long, env = "RTMANAGER_WATCH_EVENTS", default_value = "true", value_parser = flag, action = clap::ArgAction::Set)]
    pub watch_events: bool,
    /// How often a reconcile round runs per host (a Temporal Schedule the worker creates); 0
    /// creates none (`rtmanager reconcile` still runs a round on demand).
    #[arg(long = "reconcile-interval-secs", env = "RTMANAGER_RECONCILE_INTERVAL_SECS", default_value = "60", value_parser = secs)]
    pub reconcile_interval: Duration,
    /// Remove orphan containers (labelled containers of this deployment that no record names)
    /// once they have been orphans for the grace period; otherwise they are only reported.
    #[arg(long, env = "RTMANAGER_REMOVE_ORPHANS", default_value = "false", value_parser = flag, action = clap::ArgAction::Set)]
    pub remove_orphans: bool,
    /// How long a container must have been an orphan before it is removed.
    #[arg(long = "orphan-grace-secs", env = "RTMANAGER_ORPHAN_GRACE_SECS", default_value = "300", value_parser = secs)]
    pub orphan_grace: Duration,
    /// Restart a crashed game (through RestartRuntime, with backoff) instead of only reporting
    /// the crash.
    #[arg(long, env = "RTMANAGER_RESTART_ON_CRASH", default_value = "false", value_parser = flag, action = clap::ArgAction::Set)]
    pub restart_on_crash: bool,
    /// Crashes within the window after which a game is no longer restarted (`crash_loop`).
    #[arg(long, env = "RTMANAGER_CRASH_LOOP_LIMIT", default_value_t = 3, value_parser = count_u32)]
    pub crash_loop_limit: u32,
    /// The crash-loop window.
    #[arg(long = "crash-loop-window-secs", env = "RTMANAGER_CRASH_LOOP_WINDOW_SECS", default_value = "600", value_parser = secs)]
    pub crash_loop_window: Duration,
    /// Docker operations this worker runs at once; the rest wait their turn (a mass stop of
    /// hundreds of games queues here, not in dockerd).
    #[arg(long, env = "RTMANAGER_DOCKER_CONCURRENCY", default_value_t = 32, value_parser = count)]
    pub docker_concurrency: usize,
    /// Docker's graceful stop timeout (SIGTERM, then SIGKILL).
    #[arg(long = "stop-timeout-secs", env = "RTMANAGER_STOP_TIMEOUT_SECS", default_value = "10", value_parser = secs)]
    pub stop_timeout: Duration,
    /// Per-game lease TTL; must exceed the graceful stop timeout (Docker steps renew it every
    /// 2 s while they run, but a stop must not outlive a lease that nobody renews).
    #[arg(long = "lease-ttl-secs", env = "RTMANAGER_LEASE_TTL_SECS", default_value = "120", value_parser = secs)]
    pub lease_ttl: Duration,
    /// How long after its holder workflow closed (terminated, timed out) a lease may be taken
    /// over by the next operation, instead of waiting out the TTL.
    #[arg(long = "lease-lock-delay-ms", env = "RTMANAGER_LEASE_LOCK_DELAY_MS", default_value = "5000", value_parser = millis)]
    pub lease_lock_delay: Duration,
    /// Run the sub-millisecond steps as local activities.
    #[arg(long, env = "RTMANAGER_LOCAL_FAST_STEPS", default_value = "true", value_parser = flag, action = clap::ArgAction::Set)]
    pub local_fast_steps: bool,
    /// Run the Docker steps as local activities too.
    #[arg(long, env = "RTMANAGER_LOCAL_DOCKER_STEPS", default_value = "true", value_parser = flag, action = clap::ArgAction::Set)]
    pub local_docker_steps: bool,
    /// Docker network mode of the game containers StartRuntime creates.
    #[arg(long, env = "RTMANAGER_CONTAINER_NETWORK", default_value = "bridge")]
    pub container_network: String,
    /// How long a started container must stay up before the start counts.
    #[arg(long = "start-settle-ms", env = "RTMANAGER_START_SETTLE_MS", default_value = "300", value_parser = millis)]
    pub start_settle: Duration,
    /// Concurrent workflow-task polls (at least 2): a new workflow waits in the server until a
    /// poll is open.
    #[arg(long, env = "RTMANAGER_WORKFLOW_POLLERS", default_value_t = 10, value_parser = count)]
    pub workflow_pollers: usize,
    /// How long a workflow task waits on a (possibly dead) worker's sticky queue.
    #[arg(long = "sticky-queue-timeout-ms", env = "RTMANAGER_STICKY_QUEUE_TIMEOUT_MS", default_value = "3000", value_parser = millis)]
    pub sticky_queue_timeout: Duration,
    /// Worker build id (skips hashing the executable at start).
    #[arg(long, env = "RTMANAGER_BUILD_ID", default_value = concat!("rtmanager-", env!("CARGO_PKG_VERSION")))]
    pub build_id: String,
    /// Where `rtmanager worker` (which runs no bridge) serves `/metrics`; empty: nowhere.
    /// `serve` and `run` serve it on the bridge.
    #[arg(long, env = "RTMANAGER_METRICS_ADDR", default_value = "127.0.0.1:9464", value_parser = optional_addr)]
    pub metrics_addr: OptionalAddr,
    /// Where the HTTP bridge listens (`host:port`).
    #[arg(long, env = "RTMANAGER_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: std::net::SocketAddr,
    /// The bridge's bearer token; the bridge refuses to start without one.
    #[arg(long, env = "RTMANAGER_API_TOKEN", value_parser = secret, hide_env_values = true)]
    pub api_token: Option<SecretString>,
    /// How long an HTTP request waits for its workflow before answering 503.
    #[arg(long = "http-wait-secs", env = "RTMANAGER_HTTP_WAIT_SECS", default_value = "120", value_parser = secs)]
    pub http_wait: Duration,
    /// Largest HTTP request body accepted, in bytes.
    #[arg(long = "http-body-limit-bytes", env = "RTMANAGER_HTTP_BODY_LIMIT_BYTES", default_value_t = 16 * 1024, value_parser = count)]
    pub http_body_limit: usize,
    /// The stop jobs stream and its consumer group.
    #[arg(
        long,
        env = "RTMANAGER_STOP_STREAM",
        default_value = "runtime:stop_jobs"
    )]
    pub stop_stream: String,
    /// Shared by every rtmanager process reading the stream; created if missing.
    #[arg(long, env = "RTMANAGER_STOP_GROUP", default_value = "rtmanager")]
    pub stop_group: String,
    /// This process's consumer name in the group (`<hostname>-<pid>-<random>` by default).
    #[arg(long, env = "RTMANAGER_STREAM_CONSUMER", default_value_t = default_consumer())]
    pub stream_consumer: String,
    /// Pending entries idle this long are claimed from their (dead) consumer.
    #[arg(long = "stream-claim-idle-ms", env = "RTMANAGER_STREAM_CLAIM_IDLE_MS", default_value = "30000", value_parser = millis)]
    pub stream_claim_idle: Duration,
    /// Retries of a stream stop that met `conflict`, and the first wait before one.
    #[arg(long, env = "RTMANAGER_STREAM_CONFLICT_RETRIES", default_value_t = 20, value_parser = count_u32)]
    pub stream_conflict_retries: u32,
    /// The first of those waits; each retry doubles it, up to 10 s.
    #[arg(long = "stream-conflict-backoff-ms", env = "RTMANAGER_STREAM_CONFLICT_BACKOFF_MS", default_value = "500", value_parser = millis)]
    pub stream_conflict_backoff: Duration,
    /// Stream entries processed at once by this process.
    #[arg(long, env = "RTMANAGER_STREAM_CONCURRENCY", default_value_t = 64, value_parser = count)]
    pub stream_concurrency: usize,
}

/// Only the environment (no command line): what `Config::from_env` parses.
#[derive(clap::Parser)]
#[command(no_binary_name = true)]
struct FromEnv {
    #[command(flatten)]
    config: Config,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (tests pass a map): each variable `lookup`
    /// knows is handed to clap as its flag, the process environment itself is not read, and a
    /// bad value is reported with its variable's name.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        use clap::{CommandFactory, FromArgMatches};
        let mut argv = vec![];
        let mut variables: Vec<(String, String)> = vec![];
        let command = FromEnv::command().mut_args(|arg| {
            if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
                let env = env.to_string_lossy().into_owned();
                if let Some(value) = lookup(&env) {
                    argv.push(format!("--{long}={value}"));
                }
                variables.push((format!("--{long}"), env));
            }
            arg.env(None)
        });
        let matches = command.try_get_matches_from(&argv).map_err(|err| {
            let arg = err
                .get(clap::error::ContextKind::InvalidArg)
                .map(ToString::to_string)
                .unwrap_or_default();
            let flag = arg.split_whitespace().next().unwrap_or_default();
            // The flags are how the variables reach clap, not what the operator set: say the
            // variable instead.
            let problem = err.to_string();
            let problem = problem.lines().next().unwrap_or_default();
            let problem = problem
                .trim_start_matches("error: ")
                .replace(&format!(" for '{arg}'"), "");
            match variables.iter().find(|(long, _)| long == flag) {
                Some((_, env)) => anyhow::anyhow!("{env}: {problem}"),
                None => anyhow::anyhow!("configuration: {problem}"),
            }
        })?;
        let mut config = FromEnv::from_arg_matches(&matches)?.config;
        config.workflow_pollers = config.workflow_pollers.max(2);
        // An empty token is no token: the bridge then refuses to start.
        if config
            .api_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().is_empty())
        {
            config.api_token = None;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.task_queue.is_empty() && !self.namespace.is_empty(),
            "RTMANAGER_TASK_QUEUE and RTMANAGER_NAMESPACE must not be empty"
        );
        anyhow::ensure!(
            !self.task_queue.contains('@'),
            "RTMANAGER_TASK_QUEUE must not contain '@': each host's queue is <task queue>@<host>"
        );
        anyhow::ensure!(
            self.host_down_after >= self.host_heartbeat * 2
                && self.host_heartbeat >= Duration::from_millis(100),
            "RTMANAGER_HOST_DOWN_AFTER_SECS ({}s) must be at least two heartbeats              (RTMANAGER_HOST_HEARTBEAT_MS, {} ms, at least 100 ms): one late heartbeat must not              make a host down",
            self.host_down_after.as_secs(),
            self.host_heartbeat.as_millis()
        );
        anyhow::ensure!(
            self.host_wait >= Duration::from_secs(1) && self.host_capacity > 0,
            "RTMANAGER_HOST_WAIT_SECS must be at least 1 and RTMANAGER_HOST_CAPACITY positive"
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
            self.stop_timeout.as_secs() <= u64::from(rtmanager_domain::STOP_TIMEOUT_MAX_SECS),
            "RTMANAGER_STOP_TIMEOUT_SECS ({}s) must be at most {} s, like a request's timeout_secs",
            self.stop_timeout.as_secs(),
            rtmanager_domain::STOP_TIMEOUT_MAX_SECS
        );
        // A lease a live step renews (every 2 s) must never look quiet for the lock-delay.
        anyhow::ensure!(
            self.lease_lock_delay > Duration::from_secs(2)
                && self.lease_lock_delay < self.lease_ttl
                && self.lease_lock_delay <= Duration::from_secs(60),
            "RTMANAGER_LEASE_LOCK_DELAY_MS ({} ms) must exceed the 2 s lease renewal interval, \
             stay below the lease TTL and be at most 60 s: an acquire waits it out while it holds \
             a workflow task",
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

    /// This worker's host: its id, task queue, capacity and labels.
    pub fn host_registration(&self) -> rtmanager_activities::HostRegistration {
        rtmanager_activities::HostRegistration {
            id: self.host_id.clone(),
            task_queue: self.host_task_queue(),
            capacity: self.host_capacity,
            labels: self.host_labels.clone(),
            docker_host: self.docker_host.clone(),
        }
    }

    /// The task queue only this worker's host polls.
    pub fn host_task_queue(&self) -> String {
        self.host_id.task_queue(&self.task_queue)
    }

    /// How the deployment names and judges hosts.
    pub fn host_settings(&self) -> rtmanager_activities::HostSettings {
        rtmanager_activities::HostSettings {
            shared_queue: self.task_queue.clone(),
            down_after: self.host_down_after,
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
            host_wait: self.host_wait,
            search_attributes: self.search_attributes,
            step_summaries: self.step_summaries,
            ..StepSettings::default()
        }
    }
}

/// A `host:port` to listen on, or none (an empty setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<std::net::SocketAddr>);

/// A `host:port`, or nothing.
fn optional_addr(raw: &str) -> Result<OptionalAddr, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(OptionalAddr(None));
    }
    raw.parse()
        .map(|addr| OptionalAddr(Some(addr)))
        .map_err(|_| format!("{raw:?} is not host:port"))
}

/// A host id.
fn host_id(raw: &str) -> Result<HostId, String> {
    HostId::parse(raw.trim())
}

/// `key=value,key=value` as a JSON object of strings (empty: `{}`).
fn labels(raw: &str) -> Result<serde_json::Value, String> {
    let mut map = serde_json::Map::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        map.insert(key.to_owned(), value.trim().into());
    }
    Ok(serde_json::Value::Object(map))
}

/// A whole number (surrounding blanks allowed, as in a hand-edited env file).
fn count(raw: &str) -> Result<usize, String> {
    raw.trim()
        .parse()
        .map_err(|_| "not a whole number".to_owned())
}

/// [`count`], for the settings that are `u32`.
fn count_u32(raw: &str) -> Result<u32, String> {
    raw.trim()
        .parse()
        .map_err(|_| "not a whole number".to_owned())
}

/// A whole number of seconds.
fn secs(raw: &str) -> Result<Duration, String> {
    raw.trim()
        .parse()
        .map(Duration::from_secs)
        .map_err(|_| "not a whole number of seconds".to_owned())
}

/// A whole number of milliseconds.
fn millis(raw: &str) -> Result<Duration, String> {
    raw.trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| "not a whole number of milliseconds".to_owned())
}

/// `true`/`false`, also as `1`/`0` or `yes`/`no`.
fn flag(raw: &str) -> Result<bool, String> {
    match raw.trim() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err("not true/false".to_owned()),
    }
}

/// A secret: kept out of `Debug` and of clap's own messages (`hide_env_values`).
fn secret(raw: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(raw))
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
