//! `rtmanager`: the process entry. Parses the command line and runs the long-running commands
//! (`worker`, `serve`, `run`, `migrate`, `bench`); the operator's client commands live in
//! `rtmanager::operator`.

use secrecy::ExposeSecret;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use rtmanager::{config::Config, operator, serve, startup, telemetry::init_logging, worker};

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
    /// The operation's request id: the same id through the HTTP bridge (`X-Request-Id`) or the
    /// stream (`request_id`) for the same verb and game is the same operation, run once.
    #[arg(long, global = true)]
    request_id: Option<String>,
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
    Stop(operator::StopArgs),
    /// Start a game from an image (StartRuntime).
    Start {
        game_id: String,
        #[arg(long)]
        image: String,
        #[arg(long)]
        source_ref: Option<String>,
        /// The host to place a new game on (default: the placement policy's choice).
        #[arg(long)]
        host: Option<String>,
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
    /// List the Docker hosts: state, heartbeat age, capacity and game counts.
    Hosts,
    /// Drain a host (no new games are placed on it) or undrain it.
    Host {
        #[command(subcommand)]
        action: operator::HostAction,
    },
    /// Run a reconcile round now (every active host, or the one named) and print what it
    /// found and did.
    Reconcile {
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
    },
    /// Show the runtime records of games.
    Status {
        #[arg(required = true)]
        game_ids: Vec<String>,
        /// Also show each game's running operation and where it is (its `progress` query).
        #[arg(long)]
        operation: bool,
    },
    /// Measure stop latency, mass-stop throughput and the worker's footprint against the running
    /// stack (`scripts/dev up`); runs the `rtmanager-bench` binary next to this one
    /// (`rtmanager bench --help` lists its options).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
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
    tokio::spawn(return_freed_memory());
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("rtmanager: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// glibc keeps what a process freed for reuse: after a burst (a thousand stops at once) the
/// worker would hold its peak for good. Handing the free pages back every 30 s lets its RSS
/// follow what it holds now (`rtmanager bench`'s peak RSS per run, Performance in the README).
async fn return_freed_memory() {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        // Off the runtime's threads: a trim walks the heap under the allocator's locks.
        // SAFETY: malloc_trim only returns free pages to the kernel; it takes the allocator's
        // own locks.
        let _ = tokio::task::spawn_blocking(|| unsafe {
            libc::malloc_trim(0);
        })
        .await;
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    let json = cli.json;
    let request_id = operator::parse_request_id(cli.request_id)?;
    match cli.command {
        Command::Worker => {
            let shutdown = shutdown_on_signal();
            let parts = startup::build(&config).await?;
            if let Some(addr) = config.metrics_addr.0 {
                let telemetry = parts.deps.telemetry.clone();
                let stop = shutdown.clone().cancelled_owned();
                // A worker whose metrics port is taken still works: say so and go on.
                tokio::spawn(async move {
                    if let Err(err) =
                        rtmanager::telemetry::serve_metrics(addr, telemetry, stop).await
                    {
                        tracing::error!(err = %format!("{err:#}"), "metrics endpoint");
                    }
                });
            }
            worker::run_worker(
                &config,
                parts.client,
                parts.deps,
                shutdown.cancelled_owned(),
            )
            .await?;
        }
        Command::Serve => {
            let shutdown = shutdown_on_signal();
            let parts = startup::build(&config).await?;
            let adapters = serve::Adapters::of(&parts.deps);
            serve::serve(&config, parts.client, adapters, shutdown).await?;
        }
        Command::Run => {
            let shutdown = shutdown_on_signal();
            // One client for both halves: a workflow the bridge starts is handed straight to
            // this worker (eager workflow start) instead of waiting for a task-queue poll.
            let startup::Parts { client, deps } = startup::build(&config).await?;
            let adapters = serve::Adapters::of(&deps);
            let served = serve::serve(&config, client.clone(), adapters, shutdown.clone());
            // A bridge that cannot start (no token, port taken) takes the worker down with it,
            // instead of leaving a process that serves nothing it was asked to.
            let served = async {
                let result = served.await;
                if let Err(err) = &result {
                    tracing::error!(err = %format!("{err:#}"), "the HTTP bridge and consumer stopped");
                    shutdown.cancel();
                }
                result
            };
            let (worker, served) = tokio::join!(
                async {
                    let result = worker::run_worker(
                        &config,
                        client,
                        deps,
                        shutdown.clone().cancelled_owned(),
                    )
                    .await;
                    shutdown.cancel();
                    result
                },
                served,
            );
            worker.and(served)?;
        }
        Command::Migrate => {
            let applied =
                rtmanager_activities::store::run_migrations(config.database_url.expose_secret())
                    .await?;
            println!("applied {} migration(s)", applied.len());
        }
        Command::Stop(args) => return operator::stop(&config, args, request_id, json).await,
        Command::Start {
            game_id,
            image,
            source_ref,
            host,
        } => {
            let request = operator::start_request(&game_id, &image, source_ref, host.as_deref())?;
            return operator::operate(&config, request, request_id, json).await;
        }
        Command::Restart {
            game_id,
            source_ref,
        } => {
            let request = operator::replace_request(&game_id, None, source_ref)?;
            return operator::operate(&config, request, request_id, json).await;
        }
        Command::Patch {
            game_id,
            image,
            source_ref,
        } => {
            let request = operator::replace_request(&game_id, Some(&image), source_ref)?;
            return operator::operate(&config, request, request_id, json).await;
        }
        Command::Hosts => return operator::hosts(&config, json).await,
        Command::Reconcile { host } => {
            return operator::reconcile(&config, host.as_deref(), json).await
        }
        Command::Host { action } => return operator::host(&config, action, json).await,
        Command::Status {
            game_ids,
            operation,
        } => return operator::status(&config, game_ids, operation, json).await,
        Command::ResetFence { game_id } => {
            return operator::reset_fence(&config, &game_id, json).await
        }
        Command::Bench { args } => return bench(args, json),
    }
    Ok(ExitCode::SUCCESS)
}

/// `rtmanager bench ...`: replaced by `rtmanager-bench ...` from the same directory (the
/// benchmark is not part of the service binary).
fn bench(mut args: Vec<std::ffi::OsString>, json: bool) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let program = std::env::current_exe()?.with_file_name("rtmanager-bench");
    if json {
        args.push("--json".into());
    }
    let err = std::process::Command::new(&program).args(args).exec();
    anyhow::bail!(
        "run {}: {err} (build it with `cargo build --bin rtmanager-bench`)",
        program.display()
    )
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
