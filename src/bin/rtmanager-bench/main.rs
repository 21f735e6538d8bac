//! `rtmanager-bench` (also reached as `rtmanager bench`): what durability costs a stop, measured
//! against the running stack; see [`bench`] for the method. A binary of its own, next to the
//! service binary, so that the service carries none of the measuring code.

mod bench;

use std::process::ExitCode;

use clap::Parser;

/// Measure stop latency, mass-stop throughput and the worker's footprint against the running
/// stack (`scripts/dev up`); prints a table, or JSON with --json.
#[derive(Parser)]
#[command(name = "rtmanager bench", version)]
struct Cli {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    options: bench::BenchOptions,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rtmanager bench: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = rtmanager::Config::from_env()?;
    let report = bench::run(&config, cli.options).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", bench::table(&report));
    }
    Ok(())
}
