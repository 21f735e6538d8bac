//! `rtmanager`: the worker, the listening ways in, and the operator's client commands.

use std::{collections::BTreeMap, process::ExitCode, sync::Arc};

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use rtmanager::{client, config::Config, serve, telemetry::init_logging, worker};
use rtmanager_activities::{store::Store, Telemetry};
use rtmanager_domain::{
    GameId, ImageRef, OpSource, OperationOutput, ReplaceRequest, RuntimeRecord, SourceRef,
    StartRequest, StopReason, StopRequest,
};

#[derive(Parser)]
#[command(
    name = "rtmanager",
    version,
    about = "Runtime manager for game-server containers"
)]
struct Cli {
    /// Print JSON instead of a table (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Temporal worker (configured by RTMANAGER_* variables; see .env.example).
    Worker,
    /// Serve the HTTP bridge and consume runtime:stop_jobs.
    Serve,
    /// Worker, HTTP bridge and stream consumer in one process.
    Run,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Stop games (StopRuntime): the ones named, every running one, or those listed in a file.
    Stop(StopArgs),
    /// Start a game from an image (StartRuntime).
    Start {
        game_id: String,
        #[arg(long)]
        image: String,
        #[arg(long)]
        source_ref: Option<String>,
    },
    /// Stop and start a game with its current image (RestartRuntime).
    Restart {
        game_id: String,
        #[arg(long)]
        source_ref: Option<String>,
    },
    /// Stop a game and start it from a new image, rolling back on failure (PatchRuntime).
    Patch {
        game_id: String,
        #[arg(long)]
        image: String,
        #[arg(long)]
        source_ref: Option<String>,
    },
    /// Repair a game whose record carries a fence no lease can reach (every write refused as
    /// stale): under the game's lease, set the record's fence to the one that lease was issued.
    ResetFence { game_id: String },
    /// Show the runtime records of games.
    Status {
        #[arg(required = true)]
        game_ids: Vec<String>,
    },
    /// Measure stop latency, mass-stop throughput and the worker's footprint against the running
    /// stack (`scripts/dev up`); prints a table, or JSON with --json.
    Bench {
        /// Single stops per side.
        #[arg(long, default_value_t = 30)]
        single: usize,
        /// Games in each mass run (each run has exactly its own games' containers up).
        #[arg(long, default_value_t = 200)]
        mass: usize,
        /// Mass rounds, each one run per side: bollard first in odd rounds, HTTP first in even
        /// ones (an even number balances the order).
        #[arg(long, default_value_t = 2)]
        mass_rounds: usize,
        /// Docker network mode of the bench containers.
        #[arg(long, default_value = "bridge")]
        network: String,
        /// The game image (default: RTMANAGER_DEMO_IMAGE or rtmanager-game:dev).
        #[arg(long)]
        image: Option<String>,
        /// The rtmanager process to watch (default: the pid in .dev/rtmanager.pid).
        #[arg(long)]
        worker_pid: Option<u32>,
    },
}

#[derive(Args)]
struct StopArgs {
    /// Games to stop.
    game_ids: Vec<String>,
    /// Stop every game whose record says running.
    #[arg(long, conflicts_with_all = ["game_ids", "from_file"])]
    all_running: bool,
    /// Stop the games listed in a file, one id per line (`#` comments allowed).
    #[arg(long, conflicts_with = "game_ids")]
    from_file: Option<std::path::PathBuf>,
    #[arg(long, default_value = "admin")]
    reason: String,
    #[arg(long)]
    source_ref: Option<String>,
    /// Stops in flight at once during a mass stop.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

fn main() -> ExitCode {
    // glibc gives every thread that allocates its own arena (up to 8 per core), each keeping
    // freed memory: two arenas hold the worker's peak RSS well below that (`rtmanager bench`).
    // Set before the runtime starts any thread.
    // SAFETY: mallopt only tunes the allocator; no allocation is in flight here.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async_main())
}

async fn async_main() -> ExitCode {
    init_logging();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("rtmanager: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    let json = cli.json;
    match cli.command {
        Command::Worker => {
            let shutdown = shutdown_on_signal();
            worker::run_worker(&config, Telemetry::new(), shutdown.cancelled_owned()).await?;
        }
        Command::Serve => {
            let shutdown = shutdown_on_signal();
            serve::serve(&config, Telemetry::new(), shutdown).await?;
        }
        Command::Run => {
            let shutdown = shutdown_on_signal();
            let telemetry = Telemetry::new();
            // One client for both halves: a workflow the bridge starts is handed straight to
            // this worker (eager workflow start) instead of waiting for a task-queue poll.
            let client = worker::connect_temporal(&config).await?;
            let (worker, served) = tokio::join!(
                async {
                    let result = worker::run_worker_with(
                        &config,
                        telemetry.clone(),
                        client.clone(),
                        shutdown.clone().cancelled_owned(),
                    )
                    .await;
                    shutdown.cancel();
                    result
                },
                serve::serve_with(&config, telemetry.clone(), client.clone(), shutdown.clone()),
            );
            worker.and(served)?;
        }
        Command::Migrate => {
            let applied =
                rtmanager_activities::store::run_migrations(config.database_url.expose()).await?;
            println!("applied {} migration(s)", applied.len());
        }
        Command::Stop(args) => return stop(&config, args, json).await,
        Command::Start {
            game_id,
            image,
            source_ref,
        } => {
            let request = StartRequest {
                game_id: GameId::parse(&game_id)?,
                image_ref: ImageRef::parse(&image).map_err(anyhow::Error::msg)?,
                op_source: OpSource::Admin,
                source_ref: parse_source_ref(source_ref)?,
                lease_token: None,
            };
            let game = request.game_id.clone();
            let output = operate(&config, "StartRuntime", &game, request.to_json()).await?;
            return Ok(report(&[(game, output)], json));
        }
        Command::Restart {
            game_id,
            source_ref,
        } => {
            let request = ReplaceRequest {
                game_id: GameId::parse(&game_id)?,
                image_ref: None,
                op_source: OpSource::Admin,
                source_ref: parse_source_ref(source_ref)?,
            };
            let game = request.game_id.clone();
            let output = operate(&config, "RestartRuntime", &game, request.to_json()).await?;
            return Ok(report(&[(game, output)], json));
        }
        Command::Patch {
            game_id,
            image,
            source_ref,
        } => {
            let request = ReplaceRequest {
                game_id: GameId::parse(&game_id)?,
                image_ref: Some(ImageRef::parse(&image).map_err(anyhow::Error::msg)?),
                op_source: OpSource::Admin,
                source_ref: parse_source_ref(source_ref)?,
            };
            let game = request.game_id.clone();
            let output = operate(&config, "PatchRuntime", &game, request.to_json()).await?;
            return Ok(report(&[(game, output)], json));
        }
        Command::Status { game_ids } => return status(&config, game_ids, json).await,
        Command::ResetFence { game_id } => return reset_fence(&config, &game_id, json).await,
        Command::Bench {
            single,
            mass,
            mass_rounds,
            network,
            image,
            worker_pid,
        } => {
            anyhow::ensure!(
                single >= 1 && mass >= 1 && mass_rounds >= 1,
                "--single, --mass and --mass-rounds must be positive"
            );
            let image = image
                .or_else(|| std::env::var("RTMANAGER_DEMO_IMAGE").ok())
                .unwrap_or_else(|| "rtmanager-game:dev".to_owned());
            let options = rtmanager::bench::BenchOptions {
                single,
                mass,
                mass_rounds,
                network,
                image,
                worker_pid,
            };
            let report = rtmanager::bench::run(&config, options).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", rtmanager::bench::table(&report));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `rtmanager reset-fence`: takes the game's lease like any operation (so nothing else runs on
/// the game meanwhile), writes that lease's fence, freshly issued by the counter, into the
/// record, and releases the lease. Every later operation's fence is higher again.
async fn reset_fence(config: &Config, game_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    use rtmanager_activities::{Acquire, LeaseHolder, RedisKeys, RedisStore};
    let game_id = GameId::parse(game_id)?;
    let redis = RedisStore::new(
        config.redis_url.expose(),
        RedisKeys {
            prefix: config.redis_prefix.clone(),
            health_stream: config.health_stream.clone(),
            health_stream_maxlen: 100_000,
        },
    )?;
    let store = Store::new(config.database_url.expose(), 1)?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let holder = LeaseHolder {
        workflow_id: "rtmanager reset-fence".to_owned(),
        run_id: secret.clone(),
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

/// Cancelled on SIGTERM or SIGINT.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        trigger.cancel();
    });
    token
}

fn parse_source_ref(raw: Option<String>) -> anyhow::Result<Option<SourceRef>> {
    raw.as_deref()
        .map(SourceRef::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
}

async fn operate(
    config: &Config,
    workflow_type: &str,
    game_id: &GameId,
    input: serde_json::Value,
) -> anyhow::Result<OperationOutput> {
    let temporal = worker::connect_temporal(config).await?;
    run_one(&temporal, config, workflow_type, game_id, input).await
}

async fn run_one(
    temporal: &temporalio_client::Client,
    config: &Config,
    workflow_type: &str,
    game_id: &GameId,
    input: serde_json::Value,
) -> anyhow::Result<OperationOutput> {
    let verb = workflow_type.trim_end_matches("Runtime").to_lowercase();
    let workflow_id = format!("cli-{verb}-{game_id}-{}", uuid::Uuid::new_v4());
    client::run_once(
        temporal,
        &config.task_queue,
        workflow_type,
        &workflow_id,
        client::json_input(input.to_string().as_bytes()),
    )
    .await
}

/// Stops one game or many: many run with bounded concurrency behind a progress bar, then a
/// summary by outcome.
async fn stop(config: &Config, args: StopArgs, json: bool) -> anyhow::Result<ExitCode> {
    let reason = args.reason.parse::<StopReason>()?;
    let source_ref = parse_source_ref(args.source_ref)?;
    let games: Vec<GameId> = if args.all_running {
        Store::new(config.database_url.expose(), 2)?
            .running_game_ids()
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
    anyhow::ensure!(!games.is_empty(), "no game to stop");
    let temporal = Arc::new(worker::connect_temporal(config).await?);
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
            let temporal = temporal.clone();
            let request = StopRequest {
                game_id: game_id.clone(),
                reason,
                op_source: OpSource::Admin,
                source_ref: source_ref.clone(),
                lease_token: None,
            };
            let bar = bar.clone();
            async move {
                let output = run_one(
                    &temporal,
                    config,
                    "StopRuntime",
                    &game_id,
                    request.to_json(),
                )
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
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    bar.finish_and_clear();
    let code = report(&results, json);
    if results.len() > 1 && !json {
        let mut summary: BTreeMap<String, usize> = BTreeMap::new();
        for (_, output) in &results {
            let key = match output.error_code {
                Some(code) => format!("{} ({code})", output.outcome),
                None => output.outcome.to_string(),
            };
            *summary.entry(key).or_default() += 1;
        }
        println!();
        for (key, count) in summary {
            println!("{count:>6}  {key}");
        }
    }
    Ok(code)
}

async fn status(config: &Config, game_ids: Vec<String>, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::new(config.database_url.expose(), 2)?;
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
            "{:<24} {:<8} {:<14} {:<28} LAST OP",
            "GAME", "STATUS", "CONTAINER", "IMAGE"
        );
        for r in &found {
            println!(
                "{:<24} {:<8} {:<14} {:<28} {}",
                r.game_id,
                r.status,
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
                output.error_message.as_deref().unwrap_or(""),
            );
        }
    }
    if results.iter().all(|(_, o)| o.is_success()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
