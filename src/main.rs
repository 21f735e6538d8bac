//! `rtmanager`: the worker and operator commands.

use clap::{Parser, Subcommand};

use rtmanager::{client, config::Config, telemetry::init_logging, worker};
use rtmanager_domain::{
    GameId, ImageRef, OpSource, OperationOutput, ReplaceRequest, SourceRef, StartRequest,
    StopReason, StopRequest,
};

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
    /// Stop a game's runtime (StopRuntime) and print the result as JSON.
    Stop {
        game_id: String,
        #[arg(long, default_value = "admin")]
        reason: String,
        /// Correlation reference recorded in operation_log (default: none).
        #[arg(long)]
        source_ref: Option<String>,
    },
    /// Start a game's runtime from an image (StartRuntime) and print the result as JSON.
    Start {
        game_id: String,
        #[arg(long)]
        image: String,
        #[arg(long)]
        source_ref: Option<String>,
    },
    /// Stop and start a game's runtime with its image (RestartRuntime).
    Restart {
        game_id: String,
        #[arg(long)]
        source_ref: Option<String>,
    },
    /// Stop a game's runtime and start it from a new image, rolling back on failure
    /// (PatchRuntime).
    Patch {
        game_id: String,
        #[arg(long)]
        image: String,
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
                source_ref: parse_source_ref(source_ref)?,
                lease_token: None,
            };
            let id = request.game_id.clone();
            return operate(&config, "StopRuntime", &id, request.to_json()).await;
        }
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
            let id = request.game_id.clone();
            return operate(&config, "StartRuntime", &id, request.to_json()).await;
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
            let id = request.game_id.clone();
            return operate(&config, "RestartRuntime", &id, request.to_json()).await;
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
            let id = request.game_id.clone();
            return operate(&config, "PatchRuntime", &id, request.to_json()).await;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn parse_source_ref(raw: Option<String>) -> anyhow::Result<Option<SourceRef>> {
    raw.as_deref()
        .map(SourceRef::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
}

/// Runs one lifecycle workflow, prints its output as JSON; exit code 1 on a business failure.
async fn operate(
    config: &Config,
    workflow_type: &str,
    game_id: &GameId,
    input: serde_json::Value,
) -> anyhow::Result<std::process::ExitCode> {
    let temporal = worker::connect_temporal(config).await?;
    let verb = workflow_type.trim_end_matches("Runtime").to_lowercase();
    let workflow_id = format!("{verb}-{game_id}-{}", uuid::Uuid::new_v4());
    let output: OperationOutput = client::execute(
        &temporal,
        &config.task_queue,
        workflow_type,
        &workflow_id,
        client::json_input(input.to_string().as_bytes()),
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(if output.is_success() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
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
