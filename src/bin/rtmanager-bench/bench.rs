//! `rtmanager bench`: what durability costs a stop, measured against the running stack.
//!
//! It starts nothing itself: it needs `scripts/dev up` (build with `RTMANAGER_DEV_PROFILE=release`
//! to measure the release worker). It creates its own containers from the local game image and
//! removes them afterwards. It compares a stop through rtmanager's HTTP bridge (the "HTTP" side)
//! with a bare bollard stop of the same kind of container (the "bollard" side), and it keeps the
//! two sides in the same Docker state, because dockerd's stop slows down with the number of
//! containers it has running:
//!
//! - Every bench container is created alike: the game image, the `--network` mode, the labels of
//!   a managed game (`rtmanager.game_id`, `rtmanager.managed=true`) and the run's
//!   `rtmanager.bench` label. An HTTP-side game also gets a `running` runtime record naming its
//!   container; a bollard-side container has no record and is stopped by id.
//! - A side's containers are created right before its stop. The stop begins only once exactly
//!   those containers are the run's containers on the host (nothing of the other side, running
//!   or stopped) and every one of them is running, then after a settle pause (100 ms for a single
//!   stop, 1 s for a mass run) so that the game has its SIGTERM trap in place and dockerd has
//!   finished the starts. Right after the stop the side's containers are removed, so the next
//!   side starts from the same state. Containers that are not the bench's (the dev stack's own,
//!   for instance) are the same for both sides.
//! - Single stops: one container up per stop. Round `i` stops HTTP then bollard when `i` is even
//!   and bollard then HTTP when it is odd (H B, B H, H B, ...). The first 3 rounds warm up and
//!   are not recorded.
//! - Replays: the single stops' games stopped through HTTP again; their records already say
//!   stopped, so there is no Docker call and no container.
//! - Mass stops: `--mass-rounds` rounds of one run per side, each run with `--mass` containers
//!   of its own up and all of them stopped at once. Odd rounds run bollard then HTTP, even rounds
//!   HTTP then bollard (B H H B ...), so with an even number of rounds each side goes first
//!   equally often. Every run is reported; a side's throughput is the mean of its runs' stops/s
//!   and the ratio is the HTTP mean over the bollard mean.
//! - The worker's peak RSS (VmHWM, reset before each HTTP mass run) and CPU per stop are taken
//!   over the HTTP mass runs only, from the first request to the last response of each. CPU per
//!   single stop (worker, and the Temporal server when it runs here) is taken over the measured
//!   HTTP single stops only, each from just before its request to just after its container's
//!   removal (so that work trailing the response counts), and averaged.
//!
//! - Two-host mass stops (when `RTMANAGER_DEV_HOST_IDS` and `RTMANAGER_DEV_DOCKER_HOSTS` name a
//!   second Docker host, as `scripts/dev up` writes them): `--mass` games spread round-robin
//!   over the hosts' engines, each with a record naming its host, in the same ABBA rounds; the
//!   bollard side stops each container on its own engine. They measure the routing to each
//!   host's worker against the same raw stops on both engines.
//!
//! - Crash detection: `--kills` games (container and record), one at a time, SIGKILLed; the
//!   time from the kill to the watcher's `container_exited` on the health stream.
//! - One reconcile round over `--reconcile-games` games whose containers all run (nothing
//!   drifted): its wall time, from the start of `ReconcileHost` to its report.
//!
//! Noise still hits each run differently: compare the ratios of one bench run, and look at the
//! spread between the rounds.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use bollard::{
    models::{ContainerCreateBody, ContainerSummaryStateEnum, HostConfig},
    query_parameters::{
        CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
    },
    Docker,
};
use futures::{future::BoxFuture, stream, FutureExt, Stream, StreamExt};
use secrecy::ExposeSecret;
use serde::Serialize;

use rtmanager_activities::store::Store;
use rtmanager_domain::{GameId, HostId};

use rtmanager::Config;

/// Label marking the containers a bench run created (removed at the end).
const BENCH_LABEL: &str = "rtmanager.bench";
/// Unrecorded single-stop rounds before the measured ones.
const WARM_UP_ROUNDS: usize = 3;
/// Pause between a single stop's container running and its stop.
const SETTLE_SINGLE: Duration = Duration::from_millis(100);
/// Pause between a mass run's containers all running and the mass stop.
const SETTLE_MASS: Duration = Duration::from_secs(1);
/// How long a side's containers may take to be running.
const UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Containers created or removed at once while a side is prepared or cleared.
const DOCKER_CONCURRENCY: usize = 8;

/// What to measure (`rtmanager bench`'s options).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Single stops per side (after 3 unrecorded warm-up rounds).
    #[arg(long, default_value_t = 30)]
    pub single: usize,
    /// Games in each mass run (each run has exactly its own games' containers up).
    #[arg(long, default_value_t = 200)]
    pub mass: usize,
    /// Mass rounds, each one run per side: bollard first in odd rounds, HTTP first in even ones
    /// (an even number balances the order).
    #[arg(long, default_value_t = 2)]
    pub mass_rounds: usize,
    /// Docker network mode of the bench containers.
    #[arg(long, default_value = "bridge")]
    pub network: String,
    /// The game image.
    #[arg(
        long,
        env = "RTMANAGER_DEMO_IMAGE",
        default_value = "rtmanager-game:dev"
    )]
    pub image: String,
    /// The rtmanager process to watch for RSS and CPU (`.dev/rtmanager.pid` by default).
    #[arg(long)]
    pub worker_pid: Option<u32>,
    /// Containers killed to measure crash detection (from the kill to the health event).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Games in the reconcile round measured (nothing drifted); 0 skips it.
    #[arg(long, default_value_t = 500)]
    pub reconcile_games: usize,
    /// The hosts of a two-host mass stop, in the order of `--docker-hosts` (the first is the
    /// one `RTMANAGER_HOST_ID` names); with fewer than two, no two-host mass stop runs.
    #[arg(long, env = "RTMANAGER_DEV_HOST_IDS", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// The Docker endpoints of those hosts.
    #[arg(long, env = "RTMANAGER_DEV_DOCKER_HOSTS", value_delimiter = ',')]
    pub docker_hosts: Vec<String>,
    /// Growth runs: for each N, N stops through HTTP in flight at once (comma-separated;
    /// `--growth 0` skips them).
    #[arg(long, value_delimiter = ',', default_value = "10,100,500,1000")]
    pub growth: Vec<usize>,
}

/// What a load (many stops sent at once) cost; the mass and growth runs report it alike.
#[derive(Debug, Clone, Serialize)]
pub struct LoadCost {
    /// From the first stop request to the last answer.
    pub wall_s: f64,
    /// Stops that did not end in success.
    pub failed: usize,
    /// The worker's peak RSS during the load (HTTP loads; null for bollard ones).
    pub worker_peak_rss_mib: Option<f64>,
    /// The worker's CPU per stop (HTTP loads; null for bollard ones).
    pub worker_cpu_ms_per_stop: Option<f64>,
    /// The Temporal server's CPU per stop (HTTP loads, when the server runs on this machine).
    pub temporal_cpu_ms_per_stop: Option<f64>,
}

/// One growth run: `in_flight` stops sent through HTTP at once, what each took and what the
/// worker and the Temporal server spent.
#[derive(Debug, Clone, Serialize)]
pub struct GrowthRun {
    /// Stops in flight at once.
    pub in_flight: usize,
    /// Each stop's latency, from its first request to its answer (a stop still running when
    /// the bridge's wait ends is asked again with the same request id, which joins it).
    pub latency: Percentiles,
    /// What the run cost.
    #[serde(flatten)]
    pub cost: LoadCost,
}

/// The two sides of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// A stop through rtmanager's HTTP bridge.
    Http,
    /// A bare bollard stop of the container.
    Bollard,
}

impl Side {
    /// The side's name in the table and the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Side::Http => "http",
            Side::Bollard => "bollard",
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median latency.
    pub p50_ms: f64,
    /// 95th percentile latency.
    pub p95_ms: f64,
    /// How many stops the percentiles come from.
    pub samples: usize,
}

/// One mass run: `games` containers of one side, all stopped at once while exactly they were up.
#[derive(Debug, Clone, Serialize)]
pub struct MassRun {
    /// Position among all mass runs, from 1.
    pub order: usize,
    /// The round, from 1; every round has one run per side.
    pub round: usize,
    /// Which side ran.
    pub side: Side,
    /// Containers stopped at once.
    pub games: usize,
    /// Successful stops per second of wall time.
    pub stops_per_s: f64,
    /// What the run cost.
    #[serde(flatten)]
    pub cost: LoadCost,
}

/// Mass runs of both sides, in the order they ran (ABBA), and what they add up to.
#[derive(Debug, Clone, Serialize)]
pub struct MassSummary {
    /// Every run, in the order they ran.
    pub runs: Vec<MassRun>,
    /// Mean of the HTTP runs' stops/s.
    pub http_mean_stops_per_s: f64,
    /// Mean of the bollard runs' stops/s.
    pub bollard_mean_stops_per_s: f64,
    /// `http_mean_stops_per_s / bollard_mean_stops_per_s`.
    pub throughput_ratio: f64,
    /// The worker's peak RSS over the HTTP runs.
    pub worker_peak_rss_mib: Option<f64>,
    /// The worker's CPU per stop over the HTTP runs, weighted by their games.
    pub worker_cpu_ms_per_stop: Option<f64>,
}

impl MassSummary {
    fn of(runs: Vec<MassRun>) -> Self {
        let http: Vec<&MassRun> = runs.iter().filter(|r| r.side == Side::Http).collect();
        let mean_of = |side: Side| {
            let of_side = runs.iter().filter(|run| run.side == side);
            mean(of_side.map(|run| run.stops_per_s))
        };
        let stops: usize = http.iter().map(|run| run.games).sum();
        let worker_cpu_ms_per_stop = http
            .iter()
            .map(|run| (run.cost.worker_cpu_ms_per_stop).map(|ms| ms * run.games as f64))
            .sum::<Option<f64>>()
            .filter(|_| stops > 0)
            .map(|total_ms| total_ms / stops as f64);
        let worker_peak_rss_mib = http
            .iter()
            .filter_map(|run| run.cost.worker_peak_rss_mib)
            .reduce(f64::max);
        let (http_mean, bollard_mean) = (mean_of(Side::Http), mean_of(Side::Bollard));
        Self {
            http_mean_stops_per_s: http_mean,
            bollard_mean_stops_per_s: bollard_mean,
            throughput_ratio: http_mean / bollard_mean,
            worker_peak_rss_mib,
            worker_cpu_ms_per_stop,
            runs,
        }
    }
}

/// Single stops, HTTP and bollard alternating, and what the HTTP ones cost.
#[derive(Debug, Clone, Serialize)]
pub struct SingleSummary {
    /// Through the HTTP bridge.
    pub http: Percentiles,
    /// Bare bollard stops.
    pub bollard: Percentiles,
    /// HTTP p50 over bollard p50: what durability costs a stop.
    pub ratio_p50: f64,
    /// CPU the worker process (bridge and worker) spent per HTTP stop, from the request to
    /// the container's removal; then the same for the Temporal server, when it runs here.
    pub cpu_ms: [Option<f64>; 2],
}

/// The whole report (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Cores, memory and kernel of the machine measured.
    pub machine: String,
    /// Docker network mode of the bench containers.
    pub network: String,
    /// One stop at a time, each side in turn.
    pub single: SingleSummary,
    /// Stops of already stopped games through HTTP (`replay_no_op`): orchestration alone.
    pub replay_http: Percentiles,
    /// Games in each mass run.
    pub mass_games: usize,
    /// The mass runs on one host.
    pub mass: MassSummary,
    /// The two-host mass stops, when a second host is configured.
    pub two_host: Option<TwoHostReport>,
    /// From `docker kill` of a game's container to its `container_exited` on the health
    /// stream.
    pub crash_detection: Percentiles,
    /// The growth runs, by stops in flight.
    pub growth: Vec<GrowthRun>,
    /// One reconcile round over `reconcile_games` games with nothing drifted.
    pub reconcile: Option<ReconcileRun>,
}

/// One measured reconcile round.
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileRun {
    /// Games whose containers ran (plus whatever else the host had).
    pub games: usize,
    /// `running` records the round compared.
    pub records_checked: u32,
    /// Repairs it made (0 expected: nothing drifted).
    pub repaired: usize,
    /// From the round's start to its report.
    pub wall_s: f64,
}

/// Mass stops spread over two Docker hosts (the worker CPU is the process `--worker-pid`
/// names: the bridge and the first host's worker).
#[derive(Debug, Clone, Serialize)]
pub struct TwoHostReport {
    /// The hosts, in the order games were dealt to them.
    pub hosts: Vec<String>,
    /// The runs and what they add up to.
    #[serde(flatten)]
    pub mass: MassSummary,
}

/// One Docker host the bench creates containers on.
struct Engine {
    host: HostId,
    docker: Docker,
}

/// A bench container and the engine it runs on.
#[derive(Debug, Clone)]
struct Placed {
    engine: usize,
    id: String,
}

struct Bench {
    config: Config,
    options: BenchOptions,
    engines: Vec<Engine>,
    store: Store,
    run_id: String,
    token: String,
    http: HttpClient,
}

/// A pooled HTTP/1.1 client of the bridge.
type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<hyper::body::Bytes>,
>;

fn http_client() -> HttpClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// A bollard client for `endpoint` (`unix://...` or `tcp://...`), with a timeout that covers a
/// graceful stop.
fn docker_at(endpoint: &str) -> anyhow::Result<Docker> {
    Ok(if endpoint.starts_with("unix://") {
        Docker::connect_with_unix(endpoint, 300, bollard::API_DEFAULT_VERSION)?
    } else {
        Docker::connect_with_http(endpoint, 300, bollard::API_DEFAULT_VERSION)?
    })
}

/// Runs the benchmark and returns its report; the caller prints it.
pub async fn run(config: &Config, options: BenchOptions) -> anyhow::Result<Report> {
    anyhow::ensure!(
        options.single >= 1 && options.mass >= 1 && options.mass_rounds >= 1,
        "--single, --mass and --mass-rounds must be positive"
    );
    let token = config
        .api_token
        .as_ref()
        .map(|t| t.expose_secret().to_owned())
        .ok_or_else(|| anyhow::anyhow!("RTMANAGER_API_TOKEN is not set (source .dev/env)"))?;
    let mut engines = vec![Engine {
        host: config.host_id.clone(),
        docker: docker_at(&config.docker_host)?,
    }];
    for (host, endpoint) in options.hosts.iter().zip(&options.docker_hosts) {
        let host = HostId::parse(host).map_err(anyhow::Error::msg)?;
        if host != config.host_id {
            engines.push(Engine {
                host,
                docker: docker_at(endpoint)?,
            });
        }
    }
    let bench = Bench {
        config: config.clone(),
        options,
        engines,
        store: Store::new(config.database_url.expose_secret(), 4)?,
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        token,
        http: http_client(),
    };
    let probe = bench.post("/healthz", "GET", "").await;
    anyhow::ensure!(
        probe.is_ok(),
        "the HTTP bridge at {} does not answer: run `scripts/dev up` first",
        config.http_addr
    );
    let result = bench.measure().await;
    bench.cleanup().await;
    result
}

impl Bench {
    async fn measure(&self) -> anyhow::Result<Report> {
        // Single stops, one container up each, alternating which side goes first. The worker's
        // and the Temporal server's CPU is summed over the measured HTTP stops.
        let pid = self.options.worker_pid.or_else(worker_pid);
        let watched = [pid, temporal_server_pid()];
        let mut single_cpu_s = [Some(0.0); 2];
        let rounds = self.options.single + WARM_UP_ROUNDS;
        let mut http = Vec::new();
        let mut bollard = Vec::new();
        let mut stopped_games = Vec::new();
        for i in 0..rounds {
            let sides = if i % 2 == 0 {
                [Side::Http, Side::Bollard]
            } else {
                [Side::Bollard, Side::Http]
            };
            for side in sides {
                let game = self.game_id(&format!("s{i}-{}", side.name()));
                let (took, spent) = self.single_stop(side, &game, watched).await?;
                let measured = i >= WARM_UP_ROUNDS;
                match side {
                    Side::Http => {
                        if measured {
                            http.push(took);
                            for (total, part) in single_cpu_s.iter_mut().zip(spent) {
                                *total = (*total).zip(part).map(|(sum, s)| sum + s);
                            }
                        }
                        stopped_games.push(game);
                    }
                    Side::Bollard => {
                        if measured {
                            bollard.push(took);
                        }
                    }
                }
            }
        }
        let [single_worker_cpu_ms, single_temporal_cpu_ms] =
            single_cpu_s.map(|total| total.map(|s| s * 1000.0 / self.options.single.max(1) as f64));
        // Replays: pure orchestration, no Docker stop (the records already say stopped).
        let mut replay = Vec::new();
        for game in stopped_games.iter().skip(WARM_UP_ROUNDS) {
            replay.push(self.stop_http(game).await?);
        }

        // Mass runs in ABBA order, each with exactly its own containers up.
        let mut mass_runs = Vec::new();
        for (index, (round, side)) in mass_order(self.options.mass_rounds).into_iter().enumerate() {
            mass_runs.push(self.mass_run(index + 1, round, side, pid, 1).await?);
        }
        let two_host = if self.engines.len() >= 2 {
            let mut runs = Vec::new();
            for (index, (round, side)) in
                mass_order(self.options.mass_rounds).into_iter().enumerate()
            {
                let engines = self.engines.len();
                runs.push(self.mass_run(index + 1, round, side, pid, engines).await?);
            }
            Some(TwoHostReport {
                hosts: self.engines.iter().map(|e| e.host.to_string()).collect(),
                mass: MassSummary::of(runs),
            })
        } else {
            None
        };

        let single_http = percentiles(&http);
        let single_bollard = percentiles(&bollard);
        Ok(Report {
            machine: machine(),
            network: self.options.network.clone(),
            single: SingleSummary {
                ratio_p50: single_http.p50_ms / single_bollard.p50_ms,
                http: single_http,
                bollard: single_bollard,
                cpu_ms: [single_worker_cpu_ms, single_temporal_cpu_ms],
            },
            replay_http: percentiles(&replay),
            mass_games: self.options.mass,
            mass: MassSummary::of(mass_runs),
            two_host,
            crash_detection: self.crash_detection().await?,
            growth: self.growth(pid).await?,
            reconcile: self.reconcile_run().await?,
        })
    }

    /// `--kills` crashes, one at a time: a game's container (with its record) is SIGKILLed and
    /// the health stream read until the watcher's `container_exited` for it arrives.
    async fn crash_detection(&self) -> anyhow::Result<Percentiles> {
        use redis::AsyncCommands;
        let client = redis::Client::open(self.config.redis_url.expose_secret())?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let stream = self.config.health_stream.clone();
        let mut samples = Vec::new();
        for i in 0..self.options.kills {
            let game = self.game_id(&format!("k{i}"));
            let placed = self.prepare(Side::Http, &game, 0).await?;
            self.await_only_up(std::slice::from_ref(&placed), SETTLE_SINGLE)
                .await?;
            // The newest entry now: the crash's event comes after it.
            let last: redis::streams::StreamRangeReply =
                redis.xrevrange_count(&stream, "+", "-", 1).await?;
            let mut from = last.ids.first().map_or("0-0".to_owned(), |e| e.id.clone());
            let killed = Instant::now();
            let options = bollard::query_parameters::KillContainerOptions {
                signal: "SIGKILL".into(),
            };
            self.engines[0]
                .docker
                .kill_container(&placed.id, Some(options))
                .await?;
            let found = loop {
                anyhow::ensure!(
                    killed.elapsed() < Duration::from_secs(30),
                    "no container_exited for {} within 30 s: is the worker's events watcher on?",
                    placed.id
                );
                let options = redis::streams::StreamReadOptions::default().block(200);
                let read: redis::streams::StreamReadReply =
                    redis.xread_options(&[&stream], &[&from], &options).await?;
                let entries = read.keys.into_iter().flat_map(|k| k.ids);
                let mut hit = None;
                for entry in entries {
                    from = entry.id.clone();
                    let field = |name: &str| {
                        entry
                            .map
                            .get(name)
                            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                    };
                    if field("container_id").as_deref() == Some(placed.id.as_str())
                        && field("event_type").as_deref() == Some("container_exited")
                    {
                        hit = Some(killed.elapsed());
                    }
                }
                if let Some(took) = hit {
                    break took;
                }
            };
            samples.push(found);
            self.remove(std::slice::from_ref(&placed)).await?;
        }
        // Their records still say running: not drift the reconcile round should meet.
        self.store
            .delete_records_with_prefix(&self.game_id("k"))
            .await?;
        Ok(percentiles(&samples))
    }

    /// `--reconcile-games` games up with their records, then one round of their host.
    async fn reconcile_run(&self) -> anyhow::Result<Option<ReconcileRun>> {
        let n = self.options.reconcile_games;
        if n == 0 {
            return Ok(None);
        }
        let games: Vec<String> = (0..n).map(|i| self.game_id(&format!("r{i}"))).collect();
        let created: Vec<anyhow::Result<Placed>> = stream::iter(games.iter())
            .map(|game| self.prepare(Side::Http, game, 0))
            .buffered(DOCKER_CONCURRENCY)
            .collect()
            .await;
        let containers = created.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        self.await_only_up(&containers, SETTLE_SINGLE).await?;
        let temporal = rtmanager::worker::connect_temporal(&self.config).await?;
        let started = Instant::now();
        let report =
            rtmanager::client::reconcile(&temporal, &self.config.task_queue, &self.engines[0].host)
                .await?;
        let wall_s = started.elapsed().as_secs_f64();
        self.remove(&containers).await?;
        anyhow::ensure!(
            report.error.is_none(),
            "reconcile round: {:?}",
            report.error
        );
        Ok(Some(ReconcileRun {
            games: n,
            records_checked: report.records_checked,
            repaired: report.repaired.len(),
            wall_s,
        }))
    }

    fn game_id(&self, suffix: &str) -> String {
        format!("bench-{}-{suffix}", self.run_id)
    }

    /// One single stop on `side`, its container the only one of this run on the host; the
    /// container is removed afterwards. Returns the stop's latency and the CPU seconds each
    /// `watched` process spent from just before the stop to just after the removal.
    async fn single_stop(
        &self,
        side: Side,
        game: &str,
        watched: [Option<u32>; 2],
    ) -> anyhow::Result<(Duration, [Option<f64>; 2])> {
        let container = self.prepare(side, game, 0).await?;
        let containers = std::slice::from_ref(&container);
        self.await_only_up(containers, SETTLE_SINGLE).await?;
        let before = watched.map(|pid| pid.and_then(cpu_seconds));
        let took = match side {
            Side::Http => self.stop_http(game).await,
            Side::Bollard => self.stop_bollard(&container).await,
        };
        self.remove(containers).await?;
        let after = watched.map(|pid| pid.and_then(cpu_seconds));
        let spent = [0usize, 1].map(|i| Some(after[i]? - before[i]?));
        Ok((took?, spent))
    }

    /// One mass run of `side`: its `--mass` containers are created, dealt round-robin over the
    /// first `engines` engines, and once exactly they are up they are all stopped at once, then
    /// removed. On HTTP runs the worker's peak RSS and CPU are taken over the stop.
    async fn mass_run(
        &self,
        order: usize,
        round: usize,
        side: Side,
        pid: Option<u32>,
        engines: usize,
    ) -> anyhow::Result<MassRun> {
        let n = self.options.mass;
        let tag = if engines > 1 { "h" } else { "m" };
        let games: Vec<String> = (0..n)
            .map(|i| self.game_id(&format!("{tag}{order}-{}-{i}", side.name())))
            .collect();
        let containers = self.bring_up(side, &games, engines).await?;
        let stops = match side {
            Side::Http => {
                let stops = games.iter().map(|game| self.stop_http(game).boxed());
                stream::iter(stops.collect::<Vec<_>>())
            }
            Side::Bollard => {
                let stops = containers
                    .iter()
                    .map(|placed| self.stop_bollard(placed).boxed());
                stream::iter(stops.collect::<Vec<_>>())
            }
        };
        let watched = pid.filter(|_| side == Side::Http);
        let (took, cost) = self.load(watched, stops).await;
        self.remove(&containers).await?;
        Ok(MassRun {
            order,
            round,
            side,
            games: n,
            stops_per_s: took.len() as f64 / cost.wall_s,
            cost,
        })
    }

    /// The growth runs, smallest first.
    async fn growth(&self, pid: Option<u32>) -> anyhow::Result<Vec<GrowthRun>> {
        let mut sizes: Vec<usize> = self
            .options
            .growth
            .iter()
            .copied()
            .filter(|n| *n > 0)
            .collect();
        sizes.sort_unstable();
        let mut runs = Vec::new();
        for n in sizes {
            runs.push(self.growth_run(n, pid).await?);
        }
        Ok(runs)
    }

    /// `n` games up with their records, then `n` stops through HTTP at once.
    async fn growth_run(&self, n: usize, pid: Option<u32>) -> anyhow::Result<GrowthRun> {
        let games: Vec<String> = (0..n).map(|i| self.game_id(&format!("g{n}-{i}"))).collect();
        let containers = self.bring_up(Side::Http, &games, 1).await?;
        let stops = games.iter().map(|game| self.stop_http_joined(game).boxed());
        let (took, cost) = self
            .load(pid, stream::iter(stops.collect::<Vec<_>>()))
            .await;
        self.remove(&containers).await?;
        Ok(GrowthRun {
            in_flight: n,
            latency: percentiles(&took),
            cost,
        })
    }

    /// `games` containers of `side`, dealt round-robin over the first `engines` engines, once
    /// exactly they are up.
    async fn bring_up(
        &self,
        side: Side,
        games: &[String],
        engines: usize,
    ) -> anyhow::Result<Vec<Placed>> {
        let created: Vec<anyhow::Result<Placed>> = stream::iter(games.iter().enumerate())
            .map(|(i, game)| self.prepare(side, game, i % engines.max(1)))
            .buffered(DOCKER_CONCURRENCY)
            .collect()
            .await;
        let containers = created.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        self.await_only_up(&containers, SETTLE_MASS).await?;
        Ok(containers)
    }

    /// Runs every stop of `stops` at once and what that cost: wall time, failures, and, when
    /// `pid` names the worker, its peak RSS and CPU and the Temporal server's CPU per stop.
    /// Returns the latencies of the stops that succeeded.
    async fn load<'a>(
        &self,
        pid: Option<u32>,
        stops: impl Stream<Item = BoxFuture<'a, anyhow::Result<Duration>>>,
    ) -> (Vec<Duration>, LoadCost) {
        if let Some(pid) = pid {
            // VmHWM is a lifetime peak: reset it so that it measures this load alone.
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
        let watched = [pid, pid.and(temporal_server_pid())];
        let before = watched.map(|pid| pid.and_then(cpu_seconds));
        let started = Instant::now();
        let results: Vec<anyhow::Result<Duration>> =
            stops.buffer_unordered(usize::MAX).collect().await;
        let wall_s = started.elapsed().as_secs_f64();
        let after = watched.map(|pid| pid.and_then(cpu_seconds));
        let n = results.len();
        if let Some(Err(err)) = results.iter().find(|r| r.is_err()) {
            eprintln!("a stop of {n} at once failed: {err:#}");
        }
        let took: Vec<Duration> = results.into_iter().filter_map(Result::ok).collect();
        let cost = LoadCost {
            wall_s,
            failed: n - took.len(),
            worker_peak_rss_mib: pid.and_then(peak_rss_mib),
            worker_cpu_ms_per_stop: cpu_ms_per(before[0], after[0], n),
            temporal_cpu_ms_per_stop: cpu_ms_per(before[1], after[1], n),
        };
        (took, cost)
    }

    /// A stop through the bridge under its own request id, asked again while the bridge answers
    /// 503 (still running, or the workflow service was unavailable; at most 10 times for the
    /// latter): its latency from the first request to its outcome.
    async fn stop_http_joined(&self, game: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let path = format!("/api/v1/internal/runtimes/{game}/stop");
        let request_id = format!("bench-{game}");
        // A 503 says "retry with the same X-Request-Id": the retry joins the same operation.
        let mut unavailable = 0;
        loop {
            let (status, body) = self
                .request(&path, "POST", r#"{"reason":"admin"}"#, Some(&request_id))
                .await?;
            match status {
                200 => return Ok(started.elapsed()),
                503 if body.contains("still running") => continue,
                503 if unavailable < 10 => {
                    unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                _ => anyhow::bail!("stop {game}: {status} {body}"),
            }
        }
    }

    /// A running container for `game` on `side` and engine `engine`, with a `running` runtime
    /// record naming it (and that engine's host) on the HTTP side.
    async fn prepare(&self, side: Side, game: &str, engine: usize) -> anyhow::Result<Placed> {
        let id = self.container(game, engine).await?;
        if side == Side::Http {
            self.insert_record(game, &id, &self.engines[engine].host)
                .await?;
        }
        Ok(Placed { engine, id })
    }

    /// A running container of the game image, labelled as `game`'s managed container (both
    /// sides alike: only the HTTP side gives it a record).
    async fn container(&self, game: &str, engine: usize) -> anyhow::Result<String> {
        let labels = HashMap::from([
            (BENCH_LABEL.to_owned(), self.run_id.clone()),
            ("rtmanager.game_id".to_owned(), game.to_owned()),
            ("rtmanager.managed".to_owned(), "true".to_owned()),
        ]);
        let body = ContainerCreateBody {
            image: Some(self.options.image.clone()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(self.options.network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let docker = &self.engines[engine].docker;
        let created = docker
            .create_container(None::<CreateContainerOptions>, body)
            .await?;
        docker.start_container(&created.id, None).await?;
        Ok(created.id)
    }

    /// Waits until `containers` are exactly this run's containers on the host and every one of
    /// them is running, then for `settle`. Any other container of this run (the previous side's,
    /// stopped or not) is an error: the sides would not be equal.
    async fn await_only_up(&self, containers: &[Placed], settle: Duration) -> anyhow::Result<()> {
        let wanted: HashSet<&str> = containers.iter().map(|p| p.id.as_str()).collect();
        let deadline = Instant::now() + UP_TIMEOUT;
        loop {
            let mut listed = Vec::new();
            for engine in &self.engines {
                listed.extend(
                    engine
                        .docker
                        .list_containers(Some(self.own_containers()))
                        .await?,
                );
            }
            if let Some(other) = listed
                .iter()
                .filter_map(|c| c.id.as_deref())
                .find(|id| !wanted.contains(id))
            {
                anyhow::bail!("bench container {other} is still there while a side is prepared");
            }
            let running = listed
                .iter()
                .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
                .count();
            if running == wanted.len() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {running} of {} bench containers running after {:?}",
                wanted.len(),
                UP_TIMEOUT
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(settle).await;
        Ok(())
    }

    /// Force-removes `containers`, stopped or not, a few at a time.
    async fn remove(&self, containers: &[Placed]) -> anyhow::Result<()> {
        let removed: Vec<Result<(), bollard::errors::Error>> = stream::iter(containers)
            .map(|placed| async move {
                let options = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                let docker = &self.engines[placed.engine].docker;
                docker.remove_container(&placed.id, Some(options)).await
            })
            .buffer_unordered(DOCKER_CONCURRENCY)
            .collect()
            .await;
        for result in removed {
            result?;
        }
        Ok(())
    }

    /// Lists every container of this run, running or not.
    fn own_containers(&self) -> ListContainersOptions {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{BENCH_LABEL}={}", self.run_id)],
        )]);
        ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }
    }

    async fn insert_record(
        &self,
        game: &str,
        container_id: &str,
        host: &HostId,
    ) -> anyhow::Result<()> {
        self.store
            .insert_running_record(
                &GameId::parse(game).map_err(anyhow::Error::msg)?,
                container_id,
                &self.options.image,
                host,
            )
            .await?;
        Ok(())
    }

    /// One stop through the bridge, until the response arrives.
    async fn stop_http(&self, game: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let (status, body) = self
            .post(
                &format!("/api/v1/internal/runtimes/{game}/stop"),
                "POST",
                r#"{"reason":"admin"}"#,
            )
            .await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(status == 200, "stop {game}: {status} {body}");
        Ok(elapsed)
    }

    async fn stop_bollard(&self, container: &Placed) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let options = StopContainerOptions {
            t: Some(self.config.stop_timeout.as_secs() as i32),
            signal: None,
        };
        let docker = &self.engines[container.engine].docker;
        docker.stop_container(&container.id, Some(options)).await?;
        Ok(started.elapsed())
    }

    /// One request to the bridge: its status and body.
    async fn post(&self, path: &str, method: &str, body: &str) -> anyhow::Result<(u16, String)> {
        self.request(path, method, body, None).await
    }

    /// [`Self::post`] with an `X-Request-Id`.
    async fn request(
        &self,
        path: &str,
        method: &str,
        body: &str,
        request_id: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        use http_body_util::BodyExt;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.config.http_addr))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json");
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        let body = http_body_util::Full::new(hyper::body::Bytes::from(body.to_owned()));
        let response = self.http.request(request.body(body)?).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Removes every container and record this run created.
    async fn cleanup(&self) {
        for (engine, docker) in self.engines.iter().map(|e| &e.docker).enumerate() {
            let listed = docker
                .list_containers(Some(self.own_containers()))
                .await
                .unwrap_or_default();
            let placed: Vec<Placed> = listed
                .into_iter()
                .filter_map(|c| c.id)
                .map(|id| Placed { engine, id })
                .collect();
            if let Err(err) = self.remove(&placed).await {
                tracing::warn!(err = %err, "remove bench containers");
            }
        }
        if let Err(err) = self
            .store
            .delete_records_with_prefix(&format!("bench-{}-", self.run_id))
            .await
        {
            tracing::warn!(err = %err, "remove bench records");
        }
    }
}

/// The mass runs in order, as (round, side) with rounds from 1: bollard first in odd rounds,
/// HTTP first in even ones (B H, H B, B H, ...).
fn mass_order(rounds: usize) -> Vec<(usize, Side)> {
    (1..=rounds)
        .flat_map(|round| {
            let sides = if round % 2 == 1 {
                [Side::Bollard, Side::Http]
            } else {
                [Side::Http, Side::Bollard]
            };
            sides.map(|side| (round, side))
        })
        .collect()
}

/// The arithmetic mean, NaN for no values.
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), v| (sum + v, count + 1));
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

fn percentiles(samples: &[Duration]) -> Percentiles {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| -> f64 {
        if ms.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
        ms[rank - 1]
    };
    Percentiles {
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        samples: ms.len(),
    }
}

fn worker_pid() -> Option<u32> {
    std::fs::read_to_string(".dev/rtmanager.pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The Temporal server, when it runs on this machine (the dev server `scripts/dev` starts).
fn temporal_server_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let program = std::path::Path::new(std::str::from_utf8(args.first()?).ok()?);
            let is_server = program.file_name()? == "temporal"
                && args.iter().any(|arg| *arg == b"server")
                && args.iter().any(|arg| *arg == b"start-dev");
            is_server.then_some(pid)
        })
}

/// CPU milliseconds per operation between two `cpu_seconds` readings.
fn cpu_ms_per(before: Option<f64>, after: Option<f64>, operations: usize) -> Option<f64> {
    Some((after? - before?) * 1000.0 / operations.max(1) as f64)
}

/// User plus system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn status_kib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The process's peak RSS (VmHWM) since the last reset, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_kib(pid, "VmHWM:").map(|kib| kib / 1024.0)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = status_meminfo().unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {memory}, Linux {}", kernel.trim())
}

fn status_meminfo() -> Option<String> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = info
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(format!("{:.0} GiB", kib / 1024.0 / 1024.0))
}

/// The report as the table the README quotes.
pub fn table(report: &Report) -> String {
    let r = report;
    let mut out = String::new();
    out.push_str(&format!(
        "rtmanager bench: {} (containers on network {})\n\n",
        r.machine, r.network
    ));
    out.push_str(&format!(
        "{:<42} {:>18} {:>18} {:>9}   {}\n",
        "metric", "rtmanager/HTTP", "bollard", "ratio", "target"
    ));
    let row = |name: &str, a: String, b: String, ratio: String, target: &str| {
        format!("{name:<42} {a:>18} {b:>18} {ratio:>9}   {target}\n")
    };
    out.push_str(&row(
        &format!("single stop p50, ms (n={})", r.single.http.samples),
        format!("{:.1}", r.single.http.p50_ms),
        format!("{:.1}", r.single.bollard.p50_ms),
        format!("{:.2}x", r.single.ratio_p50),
        "<= 1.25x",
    ));
    out.push_str(&row(
        "single stop p95, ms",
        format!("{:.1}", r.single.http.p95_ms),
        format!("{:.1}", r.single.bollard.p95_ms),
        format!("{:.2}x", r.single.http.p95_ms / r.single.bollard.p95_ms),
        "",
    ));
    out.push_str(&row(
        "replay stop p50 / p95, ms",
        format!("{:.1} / {:.1}", r.replay_http.p50_ms, r.replay_http.p95_ms),
        "-".into(),
        "".into(),
        "p50 <= 15 ms",
    ));
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    let heading = format!("mass stop, N={} per run", r.mass_games);
    let targets = [">= 0.95x", "<= 64 MiB"];
    mass_section(&mut out, &heading, &r.mass, targets, &row);
    out.push_str(&row(
        "CPU per single stop, ms: worker",
        opt(r.single.cpu_ms[0], 2),
        "-".into(),
        "".into(),
        "",
    ));
    out.push_str(&row(
        "CPU per single stop, ms: Temporal",
        opt(r.single.cpu_ms[1], 2),
        "-".into(),
        "".into(),
        "",
    ));
    out.push_str(&row(
        &format!(
            "crash detection p50 / p95, ms (n={})",
            r.crash_detection.samples
        ),
        format!(
            "{:.0} / {:.0}",
            r.crash_detection.p50_ms, r.crash_detection.p95_ms
        ),
        "-".into(),
        "".into(),
        "p50 <= 500 ms",
    ));
    if let Some(run) = &r.reconcile {
        out.push_str(&row(
            &format!("reconcile round, {} games up, s", run.games),
            format!(
                "{:.2} ({} checked, {} repaired)",
                run.wall_s, run.records_checked, run.repaired
            ),
            "-".into(),
            "".into(),
            "<= 2 s",
        ));
    }
    if !r.growth.is_empty() {
        out.push_str(
            "growth: N stops through HTTP at once: p50 / p95 ms, wall s, failed, worker peak RSS MiB, \
             CPU ms per stop (worker / Temporal)\n",
        );
        for run in &r.growth {
            out.push_str(&format!(
                "  N={:<5} {:>8.0} / {:<8.0} {:>7.1} s {:>4} failed {:>8} MiB {:>7} / {} ms\n",
                run.in_flight,
                run.latency.p50_ms,
                run.latency.p95_ms,
                run.cost.wall_s,
                run.cost.failed,
                opt(run.cost.worker_peak_rss_mib, 1),
                opt(run.cost.worker_cpu_ms_per_stop, 2),
                opt(run.cost.temporal_cpu_ms_per_stop, 2),
            ));
        }
    }
    if let Some(two) = &r.two_host {
        let heading = format!(
            "two-host mass stop over {}, N={} per run",
            two.hosts.join(" + "),
            r.mass_games
        );
        mass_section(&mut out, &heading, &two.mass, ["", ""], &row);
    }
    out
}

/// The rows of a set of mass runs: each run, then the means, failures, RSS and CPU.
fn mass_section(
    out: &mut String,
    heading: &str,
    mass: &MassSummary,
    [throughput_target, rss_target]: [&str; 2],
    row: &dyn Fn(&str, String, String, String, &str) -> String,
) {
    let rounds = mass.runs.len() / 2;
    out.push_str(&format!(
        "{heading}, {rounds} round(s): wall s / stops/s / failed\n"
    ));
    mass_rows(out, &mass.runs, row);
    out.push_str(&row(
        "  throughput, stops/s, mean",
        format!("{:.1}", mass.http_mean_stops_per_s),
        format!("{:.1}", mass.bollard_mean_stops_per_s),
        format!("{:.2}x", mass.throughput_ratio),
        throughput_target,
    ));
    let failed = |side: Side| {
        let of_side = mass.runs.iter().filter(|run| run.side == side);
        of_side
            .map(|run| run.cost.failed)
            .sum::<usize>()
            .to_string()
    };
    out.push_str(&row(
        "  stops not ending in success",
        failed(Side::Http),
        failed(Side::Bollard),
        "".into(),
        "0",
    ));
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    let worker = format!(
        "{} / {}",
        opt(mass.worker_peak_rss_mib, 1),
        opt(mass.worker_cpu_ms_per_stop, 2)
    );
    out.push_str(&row(
        "  worker peak RSS MiB / CPU ms per stop",
        worker,
        "-".into(),
        "".into(),
        rss_target,
    ));
}

/// One table row per mass run.
fn mass_rows(
    out: &mut String,
    runs: &[MassRun],
    row: &dyn Fn(&str, String, String, String, &str) -> String,
) {
    for run in runs {
        let figures = format!(
            "{:.2} / {:.1} / {}",
            run.cost.wall_s, run.stops_per_s, run.cost.failed
        );
        let (a, b) = match run.side {
            Side::Http => (figures, "-".to_owned()),
            Side::Bollard => ("-".to_owned(), figures),
        };
        let name = format!(
            "  run {} (round {}, {})",
            run.order,
            run.round,
            run.side.name()
        );
        out.push_str(&row(&name, a, b, "".into(), ""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mass_runs_alternate_which_side_goes_first() {
        assert_eq!(mass_order(1), [(1, Side::Bollard), (1, Side::Http)]);
        assert_eq!(
            mass_order(2),
            [
                (1, Side::Bollard),
                (1, Side::Http),
                (2, Side::Http),
                (2, Side::Bollard)
            ]
        );
        let four = mass_order(4);
        for side in [Side::Http, Side::Bollard] {
            let first = four.chunks(2).filter(|round| round[0].1 == side).count();
            assert_eq!(first, 2, "{side:?} goes first in half the rounds");
        }
    }

    #[test]
    fn mean_of_runs() {
        assert_eq!(mean([10.0, 14.0].into_iter()), 12.0);
        assert!(mean(std::iter::empty::<f64>()).is_nan());
    }
}
