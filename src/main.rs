//! `rtmanager`: the worker and operator commands.

use clap::{Parser, Subcommand};

use rtmanager::{client, config::Config, telemetry::init_logging, worker};
use rtmanager_domain::{GameId, OpSource, StopReason, StopRequest};

#[derive(Parser)]
#[command(
    name = "rtmanager",
    version,
    about = "Runtime manager for game-server containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Temporal worker (configured by RTMANAGER_* variables; see .env.example).
    Worker,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Stop a game's runtime through the StopRuntime workflow and print the result as JSON.
    Stop {
        game_id: String,
        #[arg(long, default_value = "admin")]
        reason: String,
        /// Correlation reference recorded in operation_log (default: none).
        #[arg(long)]
        source_ref: Option<String>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("rtmanager: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let config = Config::from_env()?;
    match cli.command {
        Command::Worker => {
            let telemetry = rtmanager_activities::Telemetry::new();
            worker::run_worker(&config, telemetry, shutdown_signal()).await?;
        }
        Command::Migrate => {
            let applied =
                rtmanager_activities::store::run_migrations(config.database_url.expose()).await?;
            println!("applied {} migration(s)", applied.len());
        }
        Command::Stop {
            game_id,
            reason,
            source_ref,
        } => {
            let request = StopRequest {
                game_id: GameId::parse(&game_id)?,
                reason: reason.parse::<StopReason>()?,
                op_source: OpSource::Admin,
                source_ref: source_ref
                    .as_deref()
                    .map(rtmanager_domain::SourceRef::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                lease_token: None,
            };
            let temporal = worker::connect_temporal(&config).await?;
            let workflow_id = format!("stop-{}-{}", request.game_id, uuid::Uuid::new_v4());
            let output = client::execute(
                &temporal,
                &config.task_queue,
                "StopRuntime",
                &workflow_id,
                client::json_input(request.to_json().to_string().as_bytes()),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&output)?);
            if !output.is_success() {
                return Ok(std::process::ExitCode::from(1));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
