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
        // Event fields at the top level; the spans' fields (game_id, workflow_id, op) under
        // `span` and `spans`.
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// The Temporal SDK's own worker metrics (task slots, poll latencies, activity and workflow task
/// latencies, sticky cache), exported by the SDK's Prometheus exporter on a loopback port of
/// its own and appended to rtmanager's `/metrics`, so one scrape sees both.
pub mod sdk {
    use std::{net::SocketAddr, sync::Arc, sync::OnceLock};

    use temporalio_common::telemetry::{
        metrics::CoreMeter, start_prometheus_metric_exporter, PrometheusExporterOptions,
    };

    struct Exporter {
        meter: Arc<dyn CoreMeter>,
        addr: SocketAddr,
    }

    static EXPORTER: OnceLock<Option<Exporter>> = OnceLock::new();

    /// The process's SDK meter (started on first use, inside a Tokio runtime): every worker
    /// of the process records into it. `None` when the exporter could not start (logged).
    pub fn meter() -> Option<Arc<dyn CoreMeter>> {
        exporter().map(|e| e.meter.clone())
    }

    fn exporter() -> Option<&'static Exporter> {
        EXPORTER
            .get_or_init(|| {
                let options = PrometheusExporterOptions::builder()
                    .socket_addr(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .counters_total_suffix(true)
                    .use_seconds_for_durations(true)
                    .build();
                match start_prometheus_metric_exporter(options) {
                    Ok(started) => Some(Exporter {
                        meter: started.meter,
                        addr: started.bound_addr,
                    }),
                    Err(err) => {
                        tracing::warn!(err = %err, "start the Temporal SDK's metrics exporter");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The SDK's metrics as Prometheus text, empty when no worker of this process runs (or the
    /// exporter does not answer within a second).
    pub async fn render() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Some(exporter) = EXPORTER.get().and_then(Option::as_ref) else {
            return String::new();
        };
        let fetch = async {
            let mut stream = tokio::net::TcpStream::connect(exporter.addr).await?;
            let request = format!(
                "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                exporter.addr
            );
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            std::io::Result::Ok(response)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(1), fetch).await {
            Ok(Ok(response)) => {
                let text = String::from_utf8_lossy(&response);
                text.split_once("\r\n\r\n")
                    .map(|(_, body)| body.to_owned())
                    .unwrap_or_default()
            }
            _ => String::new(),
        }
    }
}

/// `GET /metrics` of a process that runs no HTTP bridge (`rtmanager worker`): rtmanager's
/// metrics and the SDK's on `RTMANAGER_METRICS_ADDR`, plus `/healthz`.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    telemetry: rtmanager_activities::Telemetry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::{http::header, routing::get, Router};
    let metrics = move || {
        let telemetry = telemetry.clone();
        async move {
            let mut text = telemetry.render();
            text.push_str(&sdk::render().await);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
        }
    };
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "alive" }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("bind the metrics endpoint to {addr}: {err}"))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics endpoint listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
