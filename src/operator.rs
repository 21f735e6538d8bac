//! The operator's client commands: `stop` (one game or many, with a progress bar and a summary),
//! `start`, `restart`, `patch`, `status` and `reset-fence`. Each lifecycle command builds one
//! [`LifecycleRequest`] and runs it through the one client call ([`crate::client::run`]);
//! `rtmanager`'s `main` only parses the command line and dispatches here.

use secrecy::ExposeSecret;
use std::{collections::BTreeMap, process::ExitCode, sync::Arc};

use clap::Args;
use futures::StreamExt;

use rtmanager_activities::store::Store;
use rtmanager_domain::{
    stop_timeout_secs, GameId, HostId, ImageRef, LifecycleRequest, OpSource, OperationOutput,
    ReplaceRequest, RuntimeRecord, SourceRef, StartRequest, StopReason, StopRequest, StopSignal,
};

use crate::{
    client::{self, Operation, Origin, Router},
    worker, Config,
};

/// `rtmanager stop`'s arguments: which games, why, and how many at once.
#[derive(Args)]
pub struct StopArgs {
    /// Games to stop.
    game_ids: Vec<String>,
    /// Stop every game whose record says running.
    #[arg(long, conflicts_with_all = ["game_ids", "from_file"])]
    all_running: bool,
    /// Stop the games listed in a file, one id per line (`#` comments allowed).
    #[arg(long, conflicts_with = "game_ids")]
    from_file: Option<std::path::PathBuf>,
    /// The stop reason recorded for every game (`admin`, `finished`, `timeout`, ...).
    #[arg(long, default_value = "admin")]
    reason: String,
    /// A reference shared by every stop of this invocation (e.g. a ticket).
    #[arg(long)]
    source_ref: Option<String>,
    /// The signal sent first (SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2); default:
    /// the container's `rtmanager.stop_signal` label, else SIGTERM.
    #[arg(long)]
    signal: Option<String>,
    /// Seconds to wait for the process after the signal before it is killed (0-3600);
    /// default: the container's `rtmanager.stop_timeout` label, else the worker's setting.
    #[arg(long = "timeout")]
    timeout_secs: Option<u64>,
    /// Stops in flight at once during a mass stop.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

/// The operator's `--request-id`: the same id through the bridge (`X-Request-Id`) or the stream
/// (`request_id`) names the same operation.
pub fn parse_request_id(raw: Option<String>) -> anyhow::Result<Option<SourceRef>> {
    raw.as_deref()
        .map(|raw| {
            SourceRef::parse(raw)
                .ok()
                .filter(|id| id.as_str().chars().all(|c| c.is_ascii_graphic()))
                .ok_or_else(|| {
                    anyhow::anyhow!("--request-id must be 1-256 visible ASCII characters")
                })
        })
        .transpose()
}

/// `rtmanager start <game> --image <ref>`, as a request from an operator.
pub fn start_request(
    game_id: &str,
    image: &str,
    source_ref: Option<String>,
    host: Option<&str>,
) -> anyhow::Result<LifecycleRequest> {
    Ok(LifecycleRequest::Start(StartRequest {
        game_id: GameId::parse(game_id)?,
        image_ref: ImageRef::parse(image).map_err(anyhow::Error::msg)?,
        op_source: OpSource::Admin,
        source_ref: parse_source_ref(source_ref)?,
        lease_token: None,
        host: host
            .map(HostId::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
    }))
}

/// `rtmanager restart <game>` (no image) or `rtmanager patch <game> --image <ref>`.
pub fn replace_request(
    game_id: &str,
    image: Option<&str>,
    source_ref: Option<String>,
) -> anyhow::Result<LifecycleRequest> {
    let request = ReplaceRequest {
        game_id: GameId::parse(game_id)?,
        image_ref: image
            .map(ImageRef::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        op_source: OpSource::Admin,
        source_ref: parse_source_ref(source_ref)?,
    };
    Ok(if request.image_ref.is_some() {
        LifecycleRequest::Patch(request)
    } else {
        LifecycleRequest::Restart(request)
    })
}

/// `rtmanager reset-fence`: takes the game's lease like any operation (so nothing else runs on
/// the game meanwhile), writes that lease's fence, freshly issued by the counter, into the
/// record, and releases the lease. Every later operation's fence is higher again.
pub async fn reset_fence(config: &Config, game_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    use rtmanager_activities::{Acquire, LeaseHolder, RedisStore};
    let game_id = GameId::parse(game_id)?;
    let redis = RedisStore::new(config.redis_url.expose_secret(), config.redis_keys())?;
    let store = Store::new(config.database_url.expose_secret(), 1)?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    // No run id: not a workflow, so no acquire takes this lease over as a closed holder's.
    let holder = LeaseHolder {
        workflow_id: "rtmanager reset-fence".to_owned(),
        run_id: String::new(),
    };
    let fence = match redis
        .acquire_lease(&game_id, &secret, &holder, config.lease_ttl)
        .await?
    {
        Acquire::Acquired { fence } => fence,
        Acquire::Held { holder, .. } => {
            let by = holder.map_or_else(|| "an unnamed holder".to_owned(), |h| h.workflow_id);
            eprintln!(
                "rtmanager: {game_id}: the game's lease is held by {by}; try again once it ends"
            );
            return Ok(ExitCode::from(1));
        }
    };
    let token = rtmanager_domain::LeaseToken::issued(fence, &secret);
    // Still ours right before the write (the lease TTL bounds how long it could have waited).
    if !redis.lease_is_held_by(&game_id, &token).await? {
        eprintln!("rtmanager: {game_id}: the game's lease was lost before the repair; try again");
        return Ok(ExitCode::from(1));
    }
    let replaced = store.reset_fence(&game_id, fence).await;
    redis.release_lease(&game_id, &token).await?;
    let Some(previous) = replaced? else {
        eprintln!("rtmanager: {game_id}: no runtime record");
        return Ok(ExitCode::from(1));
    };
    if json {
        let out =
            serde_json::json!({"game_id": game_id, "previous_fence": previous, "fence": fence});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{game_id}: record fence {previous} -> {fence}");
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_source_ref(raw: Option<String>) -> anyhow::Result<Option<SourceRef>> {
    raw.as_deref()
        .map(SourceRef::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
}

/// Runs one operation and reports it.
pub async fn operate(
    config: &Config,
    request: LifecycleRequest,
    request_id: Option<SourceRef>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let temporal = worker::connect_temporal(config).await?;
    let output = run_one(&temporal, &router(config)?, &request, request_id).await?;
    Ok(report(&[(request.game_id().clone(), output)], json))
}

async fn run_one(
    temporal: &temporalio_client::Client,
    router: &Router,
    request: &LifecycleRequest,
    request_id: Option<SourceRef>,
) -> anyhow::Result<OperationOutput> {
    let operation = Operation::new(request, &Origin::Cli { request_id });
    client::run(temporal, router, &operation).await
}

/// The CLI's router: a small pool of its own (one CLI call, a few statements).
fn router(config: &Config) -> anyhow::Result<Router> {
    let store = Store::new(config.database_url.expose_secret(), 4)?;
    Ok(
        Router::new(store, config.task_queue.clone(), config.host_down_after)
            .with_search_attributes(config.search_attributes),
    )
}

/// Stops one game or many: many run with bounded concurrency behind a progress bar, then a
/// summary by outcome.
pub async fn stop(
    config: &Config,
    args: StopArgs,
    request_id: Option<SourceRef>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let how = StopHow {
        reason: args.reason.parse::<StopReason>()?,
        source_ref: parse_source_ref(args.source_ref)?,
        timeout_secs: args
            .timeout_secs
            .map(stop_timeout_secs)
            .transpose()
            .map_err(|_| anyhow::anyhow!("--timeout must be 0-3600 seconds"))?,
        signal: args
            .signal
            .map(|raw| raw.parse::<StopSignal>())
            .transpose()?,
    };
    let games: Vec<GameId> = if args.all_running {
        Store::new(config.database_url.expose_secret(), 2)?
            .running_game_ids_on(None)
            .await?
    } else if let Some(path) = &args.from_file {
        std::fs::read_to_string(path)?
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|id| GameId::parse(id).map_err(|e| anyhow::anyhow!("{id:?}: {e}")))
            .collect::<anyhow::Result<_>>()?
    } else {
        args.game_ids
            .iter()
            .map(|id| GameId::parse(id).map_err(|e| anyhow::anyhow!("{id:?}: {e}")))
            .collect::<anyhow::Result<_>>()?
    };
    stop_games(config, games, how, args.concurrency, json, request_id).await
}

/// How `rtmanager stop` stops each game: the reason and reference on the audit row, and the
/// signal and timeout (`None`: the container's labels, else the worker's defaults).
struct StopHow {
    reason: StopReason,
    source_ref: Option<SourceRef>,
    timeout_secs: Option<u32>,
    signal: Option<StopSignal>,
}

/// Stops `games` with at most `concurrency` in flight behind a progress bar, then prints a
/// summary by host and outcome.
async fn stop_games(
    config: &Config,
    games: Vec<GameId>,
    how: StopHow,
    concurrency: usize,
    json: bool,
    request_id: Option<SourceRef>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!games.is_empty(), "no game to stop");
    let temporal = Arc::new(worker::connect_temporal(config).await?);
    let router = router(config)?;
    let store = Store::new(config.database_url.expose_secret(), 2)?;
    let mut hosts: BTreeMap<GameId, String> = BTreeMap::new();
    for game in &games {
        let host = store.game_host(game, config.host_down_after).await?;
        let host = host.map_or_else(|| "(no record)".to_owned(), |h| h.host_id.to_string());
        hosts.insert(game.clone(), host);
    }
    let bar = if games.len() > 1 && !json {
        indicatif::ProgressBar::new(games.len() as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} stopped, {elapsed} elapsed, eta {eta}",
            )
            .expect("static template"),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let results: Vec<(GameId, OperationOutput)> = futures::stream::iter(games)
        .map(|game_id| {
            let (temporal, router, how) = (temporal.clone(), &router, &how);
            let request = LifecycleRequest::Stop(StopRequest {
                timeout_secs: how.timeout_secs,
                signal: how.signal,
                ..StopRequest::new(
                    game_id.clone(),
                    how.reason,
                    OpSource::Admin,
                    how.source_ref.clone(),
                )
            });
            let (bar, request_id) = (bar.clone(), request_id.clone());
            async move {
                let output = run_one(&temporal, router, &request, request_id)
                    .await
                    .unwrap_or_else(|err| {
                        OperationOutput::failure(
                            rtmanager_domain::ErrorCode::ServiceUnavailable,
                            format!("{err:#}"),
                        )
                    });
                bar.inc(1);
                (game_id, output)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let code = report(&results, json);
    if results.len() > 1 && !json {
        let mut summary: BTreeMap<(&str, String), usize> = BTreeMap::new();
        for (game, output) in &results {
            let key = match output.error_code {
                Some(code) => format!("{} ({code})", output.outcome),
                None => output.outcome.to_string(),
            };
            let host = hosts.get(game).map_or("", String::as_str);
            *summary.entry((host, key)).or_default() += 1;
        }
        println!();
        println!("{:<24} {:>6}  OUTCOME", "HOST", "GAMES");
        for ((host, key), count) in summary {
            println!("{host:<24} {count:>6}  {key}");
        }
    }
    Ok(code)
}

/// `rtmanager host drain|undrain <host>`.
#[derive(Debug, clap::Subcommand)]
pub enum HostAction {
    /// Place no new game on the host; with --stop-games, also stop its running games.
    Drain {
        /// The host to drain.
        host_id: String,
        /// Also stop every game running on the host (reason `admin`).
        #[arg(long)]
        stop_games: bool,
        /// Stops in flight at once with --stop-games.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Place games on the host again.
    Undrain {
        /// The host to undrain.
        host_id: String,
    },
}

/// `rtmanager hosts`: every host with its state, heartbeat age and game counts.
pub async fn hosts(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::new(config.database_url.expose_secret(), 2)?;
    let hosts = store.list_hosts(config.host_down_after).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&hosts)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<9} {:>10} {:>8} {:>8} {:>6}  TASK QUEUE",
        "HOST", "STATE", "HEARTBEAT", "RUNNING", "CAPACITY", "GAMES"
    );
    for host in &hosts {
        println!(
            "{:<20} {:<9} {:>9.1}s {:>8} {:>8} {:>6}  {}",
            host.id,
            host.state,
            host.heartbeat_age_secs,
            host.running_games,
            host.capacity,
            host.games,
            host.task_queue
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `rtmanager host drain|undrain`: exit 1 when the host is not registered.
pub async fn host(config: &Config, action: HostAction, json: bool) -> anyhow::Result<ExitCode> {
    let (raw, draining) = match &action {
        HostAction::Drain { host_id, .. } => (host_id, true),
        HostAction::Undrain { host_id } => (host_id, false),
    };
    let host = HostId::parse(raw).map_err(anyhow::Error::msg)?;
    let store = Store::new(config.database_url.expose_secret(), 2)?;
    let Some(status) = store
        .set_draining(&host, draining, config.host_down_after)
        .await?
    else {
        eprintln!("rtmanager: host {host} is not registered");
        return Ok(ExitCode::from(1));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("host {host}: {}", status.state);
    }
    if let HostAction::Drain {
        stop_games: true,
        concurrency,
        ..
    } = action
    {
        let games = store.running_game_ids_on(Some(&host)).await?;
        if games.is_empty() {
            println!("no game runs on host {host}");
            return Ok(ExitCode::SUCCESS);
        }
        let how = StopHow {
            reason: StopReason::Admin,
            source_ref: None,
            timeout_secs: None,
            signal: None,
        };
        return stop_games(config, games, how, concurrency, json, None).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// `rtmanager reconcile [--host H]`: a round on each active host (or on `host`), each
/// reported; exit 1 when a round could not scan its host.
pub async fn reconcile(
    config: &Config,
    host: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let hosts: Vec<HostId> = match host {
        Some(raw) => vec![HostId::parse(raw).map_err(anyhow::Error::msg)?],
        None => {
            let store = Store::new(config.database_url.expose_secret(), 2)?;
            store
                .list_hosts(config.host_down_after)
                .await?
                .into_iter()
                .filter(|h| {
                    h.state != "down"
                        && h.task_queue.starts_with(&format!("{}@", config.task_queue))
                })
                .filter_map(|h| HostId::parse(&h.id).ok())
                .collect()
        }
    };
    anyhow::ensure!(!hosts.is_empty(), "no live host to reconcile");
    let temporal = worker::connect_temporal(config).await?;
    let mut reports = Vec::new();
    for host in &hosts {
        reports.push(client::reconcile(&temporal, &config.task_queue, host).await?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for report in &reports {
            println!(
                "host {}: {} running records and {} containers checked",
                report.host_id, report.records_checked, report.containers_checked
            );
            if let Some(error) = &report.error {
                println!("  could not scan: {error}");
            }
            for repair in &report.repaired {
                println!(
                    "  repaired {} (container {} {:?}): {}{}",
                    repair.game_id,
                    short(&repair.container_id),
                    repair.found,
                    repair.outcome,
                    repair
                        .error_code
                        .as_deref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default()
                );
            }
            for orphan in &report.orphans {
                println!(
                    "  orphan {} (game label {}, {} s): {}",
                    short(&orphan.container_id),
                    orphan.game_label,
                    orphan.orphan_for_secs,
                    if orphan.removed {
                        "removed"
                    } else {
                        "reported"
                    }
                );
            }
            for game in &report.busy {
                println!("  skipped {game}: an operation holds its lease");
            }
        }
    }
    Ok(if reports.iter().any(|r| r.error.is_some()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn short(container: &str) -> &str {
    &container[..container.len().min(12)]
}

/// `rtmanager status --operation`: each game's running operations and their progress.
async fn operations(
    config: &Config,
    game_ids: Vec<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let temporal = worker::connect_temporal(config).await?;
    let mut all = BTreeMap::new();
    for raw in game_ids {
        let game = GameId::parse(&raw).map_err(|e| anyhow::anyhow!("{raw:?}: {e}"))?;
        let running = client::running_operations(&temporal, &game).await?;
        all.insert(game.to_string(), running);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (game, running) in &all {
        if running.is_empty() {
            println!("{game}: no operation running");
        }
        for op in running {
            let progress = op.progress.as_ref().map_or_else(
                || "(no answer to the progress query)".to_owned(),
                ToString::to_string,
            );
            println!("{game}: {} {} {progress}", op.workflow_type, op.workflow_id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `rtmanager status`: the records of the games named.
pub async fn status(
    config: &Config,
    game_ids: Vec<String>,
    operation: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if operation {
        return operations(config, game_ids, json).await;
    }
    let store = Store::new(config.database_url.expose_secret(), 2)?;
    let mut found: Vec<RuntimeRecord> = Vec::new();
    let mut missing = Vec::new();
    for raw in game_ids {
        let id = GameId::parse(&raw).map_err(|e| anyhow::anyhow!("{raw:?}: {e}"))?;
        match store.get_record(&id).await? {
            Some(record) => found.push(record),
            None => missing.push(id),
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        println!(
            "{:<24} {:<8} {:<12} {:<14} {:<28} LAST OP",
            "GAME", "STATUS", "HOST", "CONTAINER", "IMAGE"
        );
        for r in &found {
            println!(
                "{:<24} {:<8} {:<12} {:<14} {:<28} {}",
                r.game_id,
                r.status,
                r.host_id,
                r.current_container_id
                    .as_deref()
                    .map_or("-", |c| &c[..c.len().min(12)]),
                r.current_image_ref.as_deref().unwrap_or("-"),
                r.last_op_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        }
    }
    for id in &missing {
        eprintln!("rtmanager: no runtime record for game {id}");
    }
    Ok(if missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints operation outputs (a table, or JSON: the output itself for one, an array for many);
/// exit code 1 when any failed.
/// Prints each output (a table, or JSON) and exits 1 when one is not a success.
/// How a stop ended, in words: `SIGTERM, exited within 10s` or `SIGTERM, killed after 10s`.
fn stop_summary(stop: rtmanager_domain::StopReport) -> String {
    let (signal, secs) = (stop.signal, stop.timeout_secs);
    match stop.ended {
        rtmanager_domain::StopEnded::Graceful => format!("{signal}, exited within {secs}s"),
        rtmanager_domain::StopEnded::Killed => format!("{signal}, killed after {secs}s"),
    }
}

fn report(results: &[(GameId, OperationOutput)], json: bool) -> ExitCode {
    if json {
        let text = if let [(_, output)] = results {
            serde_json::to_string_pretty(output)
        } else {
            let items: Vec<_> = results
                .iter()
                .map(|(game, output)| serde_json::json!({ "game_id": game, "output": output }))
                .collect();
            serde_json::to_string_pretty(&items)
        };
        println!("{}", text.expect("outputs serialise"));
    } else {
        println!(
            "{:<24} {:<8} {:<20} {:<8} MESSAGE",
            "GAME", "OUTCOME", "CODE", "STATUS"
        );
        for (game, output) in results {
            println!(
                "{:<24} {:<8} {:<20} {:<8} {}",
                game,
                output.outcome,
                output.error_code.map_or("-", |c| c.as_str()),
                output.record.as_ref().map_or("-", |r| r.status.as_str()),
                output
                    .error_message
                    .clone()
                    .or_else(|| output.stop.map(stop_summary))
                    .unwrap_or_default(),
            );
        }
    }
    if results.iter().all(|(_, o)| o.is_success()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
