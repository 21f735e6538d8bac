//! `rtmanager bench`: what durability costs a stop, measured against the running stack.
//!
//! It starts nothing itself: it needs `scripts/dev up` (build with `RTMANAGER_DEV_PROFILE=release`
//! to measure the release worker). It creates its own labelled containers from the local game
//! image and removes them afterwards, and it interleaves the two sides of every comparison (HTTP
//! through rtmanager versus a bare bollard stop of the same kind of container) so that machine
//! noise hits both alike. Ratios taken in one run are the figures to compare.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bollard::{
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
    },
    Docker,
};
use futures::{stream, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use rtmanager_activities::store::Store;
use rtmanager_domain::GameId;

use crate::Config;

/// Label marking the containers a bench run created (removed at the end).
const BENCH_LABEL: &str = "rtmanager.bench";

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Single stops per side (after 3 unrecorded warm-up rounds).
    pub single: usize,
    /// Games in the mass stop.
    pub mass: usize,
    /// Docker network mode of the bench containers.
    pub network: String,
    /// The game image.
    pub image: String,
    /// The rtmanager process to watch for RSS and CPU (`.dev/rtmanager.pid` by default).
    pub worker_pid: Option<u32>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub samples: usize,
}

/// One mass stop.
#[derive(Debug, Clone, Serialize)]
pub struct Mass {
    pub games: usize,
    pub wall_s: f64,
    pub stops_per_s: f64,
    pub failed: usize,
}

/// The whole report (`--json` prints it as is).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    pub network: String,
    pub single_http: Percentiles,
    pub single_bollard: Percentiles,
    pub single_ratio_p50: f64,
    pub replay_http: Percentiles,
    pub mass_http: Mass,
    pub mass_bollard: Mass,
    pub mass_throughput_ratio: f64,
    pub worker_peak_rss_mib: Option<f64>,
    pub worker_cpu_ms_per_stop: Option<f64>,
    /// CPU the worker process spent per single stop through HTTP (bridge and worker).
    pub single_worker_cpu_ms: Option<f64>,
    /// CPU the Temporal server spent per single stop, when it runs on this machine.
    pub single_temporal_cpu_ms: Option<f64>,
}

struct Bench {
    config: Config,
    options: BenchOptions,
    docker: Docker,
    store: Store,
    run_id: String,
    token: String,
}

/// Runs the benchmark and returns its report; the caller prints it.
pub async fn run(config: &Config, options: BenchOptions) -> anyhow::Result<Report> {
    let token = config
        .api_token
        .as_ref()
        .map(|t| t.expose().to_owned())
        .ok_or_else(|| anyhow::anyhow!("RTMANAGER_API_TOKEN is not set (source .dev/env)"))?;
    let docker = if config.docker_host.starts_with("unix://") {
        Docker::connect_with_unix(&config.docker_host, 300, bollard::API_DEFAULT_VERSION)?
    } else {
        Docker::connect_with_http(&config.docker_host, 300, bollard::API_DEFAULT_VERSION)?
    };
    let bench = Bench {
        config: config.clone(),
        options,
        docker,
        store: Store::new(config.database_url.expose(), 4)?,
        run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        token,
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
        // Single stops, interleaved, alternating which side goes first. The bollard side costs
        // the worker and the Temporal server nothing, so their CPU over the phase is the
        // orchestration's.
        let pid = self.options.worker_pid.or_else(worker_pid);
        let temporal = temporal_server_pid();
        let cpu_at_start = (pid.and_then(cpu_seconds), temporal.and_then(cpu_seconds));
        let mut http = Vec::new();
        let mut bollard = Vec::new();
        let mut stopped_games = Vec::new();
        for i in 0..self.options.single + 3 {
            let game = self.game_id(&format!("s{i}"));
            let rt_container = self.container(Some(&game)).await?;
            self.insert_record(&game, &rt_container).await?;
            let raw_container = self.container(None).await?;
            let (h, b) = if i % 2 == 0 {
                let h = self.stop_http(&game).await?;
                (h, self.stop_bollard(&raw_container).await?)
            } else {
                let b = self.stop_bollard(&raw_container).await?;
                (self.stop_http(&game).await?, b)
            };
            if i >= 3 {
                http.push(h);
                bollard.push(b);
            }
            stopped_games.push(game);
        }
        let rounds = self.options.single + 3;
        let single_worker_cpu_ms = cpu_ms_per(cpu_at_start.0, pid.and_then(cpu_seconds), rounds);
        let single_temporal_cpu_ms =
            cpu_ms_per(cpu_at_start.1, temporal.and_then(cpu_seconds), rounds);
        // Replays: pure orchestration, no Docker stop.
        let mut replay = Vec::new();
        for game in stopped_games
            .iter()
            .cycle()
            .take(self.options.single + 3)
            .skip(3)
        {
            replay.push(self.stop_http(game).await?);
        }

        // Mass stop: the same number of games on each side, prepared first.
        let n = self.options.mass;
        let games: Vec<String> = (0..n).map(|i| self.game_id(&format!("m{i}"))).collect();
        let prepared: Vec<anyhow::Result<String>> = stream::iter(games.iter())
            .map(|game| async move {
                let id = self.container(Some(game)).await?;
                self.insert_record(game, &id).await?;
                Ok(id)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        prepared.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        let raw: Vec<anyhow::Result<String>> = stream::iter(0..n)
            .map(|_| self.container(None))
            .buffer_unordered(8)
            .collect()
            .await;
        let raw = raw.into_iter().collect::<anyhow::Result<Vec<_>>>()?;

        let mass_bollard = self.mass_bollard(&raw).await;
        // VmHWM is a lifetime peak: reset it so it measures the mass stop alone.
        if let Some(pid) = pid {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
        let cpu_before = pid.and_then(cpu_seconds);
        let mass_http = self.mass_http(&games).await;
        let cpu_after = pid.and_then(cpu_seconds);
        let peak = pid.and_then(peak_rss_mib);
        let single_http = percentiles(&http);
        let single_bollard = percentiles(&bollard);
        Ok(Report {
            machine: machine(),
            network: self.options.network.clone(),
            single_ratio_p50: single_http.p50_ms / single_bollard.p50_ms,
            single_http,
            single_bollard,
            replay_http: percentiles(&replay),
            mass_throughput_ratio: mass_http.stops_per_s / mass_bollard.stops_per_s,
            mass_http,
            mass_bollard,
            worker_peak_rss_mib: peak,
            worker_cpu_ms_per_stop: cpu_ms_per(cpu_before, cpu_after, n),
            single_worker_cpu_ms,
            single_temporal_cpu_ms,
        })
    }

    fn game_id(&self, suffix: &str) -> String {
        format!("bench-{}-{suffix}", self.run_id)
    }

    /// A running container of the game image; labelled for `game` when rtmanager will stop it.
    async fn container(&self, game: Option<&str>) -> anyhow::Result<String> {
        let mut labels = HashMap::from([(BENCH_LABEL.to_owned(), self.run_id.clone())]);
        if let Some(game) = game {
            labels.insert("rtmanager.game_id".into(), game.to_owned());
            labels.insert("rtmanager.managed".into(), "true".into());
        }
        let body = ContainerCreateBody {
            image: Some(self.options.image.clone()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(self.options.network.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await?;
        self.docker.start_container(&created.id, None).await?;
        Ok(created.id)
    }

    async fn insert_record(&self, game: &str, container_id: &str) -> anyhow::Result<()> {
        self.store
            .insert_running_record(
                &GameId::parse(game).map_err(anyhow::Error::msg)?,
                container_id,
                &self.options.image,
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

    async fn stop_bollard(&self, container: &str) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let options = StopContainerOptions {
            t: Some(self.config.stop_timeout.as_secs() as i32),
            signal: None,
        };
        self.docker.stop_container(container, Some(options)).await?;
        Ok(started.elapsed())
    }

    async fn mass_http(&self, games: &[String]) -> Mass {
        let started = Instant::now();
        let results: Vec<bool> = stream::iter(games)
            .map(|game| async move { self.stop_http(game).await.is_ok() })
            .buffer_unordered(games.len().max(1))
            .collect()
            .await;
        mass(started.elapsed(), &results)
    }

    async fn mass_bollard(&self, containers: &[String]) -> Mass {
        let started = Instant::now();
        let results: Vec<bool> = stream::iter(containers)
            .map(|id| async move { self.stop_bollard(id).await.is_ok() })
            .buffer_unordered(containers.len().max(1))
            .collect()
            .await;
        mass(started.elapsed(), &results)
    }

    /// A minimal HTTP/1.1 exchange on a fresh loopback connection.
    async fn post(&self, path: &str, method: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(self.config.http_addr).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.config.http_addr,
            self.token,
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    }

    /// Removes every container and record this run created.
    async fn cleanup(&self) {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{BENCH_LABEL}={}", self.run_id)],
        )]);
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap_or_default();
        stream::iter(listed.into_iter().filter_map(|c| c.id))
            .for_each_concurrent(8, |id| async move {
                let options = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                let _ = self.docker.remove_container(&id, Some(options)).await;
            })
            .await;
        if let Err(err) = self
            .store
            .delete_records_with_prefix(&format!("bench-{}-", self.run_id))
            .await
        {
            tracing::warn!(err = %err, "remove bench records");
        }
    }
}

fn mass(elapsed: Duration, results: &[bool]) -> Mass {
    let ok = results.iter().filter(|ok| **ok).count();
    Mass {
        games: results.len(),
        wall_s: elapsed.as_secs_f64(),
        stops_per_s: ok as f64 / elapsed.as_secs_f64(),
        failed: results.len() - ok,
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
        "{:<38} {:>14} {:>14} {:>9}   {}\n",
        "metric", "rtmanager/HTTP", "bollard", "ratio", "target"
    ));
    let row = |name: &str, a: String, b: String, ratio: String, target: &str| {
        format!("{name:<38} {a:>14} {b:>14} {ratio:>9}   {target}\n")
    };
    out.push_str(&row(
        &format!("single stop p50, ms (n={})", r.single_http.samples),
        format!("{:.1}", r.single_http.p50_ms),
        format!("{:.1}", r.single_bollard.p50_ms),
        format!("{:.2}x", r.single_ratio_p50),
        "<= 1.25x",
    ));
    out.push_str(&row(
        "single stop p95, ms",
        format!("{:.1}", r.single_http.p95_ms),
        format!("{:.1}", r.single_bollard.p95_ms),
        format!("{:.2}x", r.single_http.p95_ms / r.single_bollard.p95_ms),
        "",
    ));
    out.push_str(&row(
        "replay stop p50 / p95, ms",
        format!("{:.1} / {:.1}", r.replay_http.p50_ms, r.replay_http.p95_ms),
        "-".into(),
        "".into(),
        "p50 <= 15 ms",
    ));
    out.push_str(&row(
        &format!("mass stop N={}, wall s", r.mass_http.games),
        format!("{:.2}", r.mass_http.wall_s),
        format!("{:.2}", r.mass_bollard.wall_s),
        "".into(),
        "",
    ));
    out.push_str(&row(
        "mass stop throughput, stops/s",
        format!("{:.1}", r.mass_http.stops_per_s),
        format!("{:.1}", r.mass_bollard.stops_per_s),
        format!("{:.2}x", r.mass_throughput_ratio),
        ">= 0.95x",
    ));
    out.push_str(&row(
        "mass stop, stops not ending in success",
        r.mass_http.failed.to_string(),
        r.mass_bollard.failed.to_string(),
        "".into(),
        "0",
    ));
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    out.push_str(&row(
        "worker peak RSS, MiB",
        opt(r.worker_peak_rss_mib, 1),
        "-".into(),
        "".into(),
        "<= 64 MiB",
    ));
    out.push_str(&row(
        "worker CPU per stop (mass), ms",
        opt(r.worker_cpu_ms_per_stop, 2),
        "-".into(),
        "".into(),
        "",
    ));
    out.push_str(&row(
        "CPU per single stop, ms: worker",
        opt(r.single_worker_cpu_ms, 2),
        "-".into(),
        "".into(),
        "",
    ));
    out.push_str(&row(
        "CPU per single stop, ms: Temporal",
        opt(r.single_temporal_cpu_ms, 2),
        "-".into(),
        "".into(),
        "",
    ));
    out
}
