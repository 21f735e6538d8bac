//! Logging setup: `tracing` to stderr, filtered by `RTMANAGER_LOG` (or `RUST_LOG`), as text or
//! JSON (`RTMANAGER_LOG_FORMAT=json`). `RTMANAGER_LOG_SPANS=1` also logs each activity span's
//! busy and idle time when it closes: the cheapest profile of where a stop spends its time.
//! Colours only on a terminal: a log file (`scripts/dev` writes `.dev/logs/rtmanager.log`) gets
//! plain text.

use tracing_subscriber::{fmt, fmt::format::FmtSpan, EnvFilter};

/// Installs the global subscriber once; later calls (tests) are no-ops.
pub fn init_logging() {
    let filter = std::env::var("RTMANAGER_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,temporalio_sdk_core=warn".to_owned());
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("RTMANAGER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let spans = if std::env::var("RTMANAGER_LOG_SPANS").is_ok_and(|v| v == "1") {
        FmtSpan::CLOSE
    } else {
        FmtSpan::NONE
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_span_events(spans)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
