//! The worker's metrics: stop outcomes, lease-acquire latency, health events. Recorded by the
//! activities (never by workflow code, which replays) into a registry the composition root
//! exposes.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// A counter family registered in `registry`. The definitions are static, so a bad one is a
/// bug caught by any test; a name already registered (a second bridge on one registry, in
/// tests) keeps the first family, and the returned one counts unseen.
pub fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let family =
        IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    let _ = registry.register(Box::new(family.clone()));
    family
}

/// A histogram family with `buckets`, in seconds, registered as [`counter`] is.
pub fn histogram(
    registry: &Registry,
    (name, help): (&str, &str),
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    let family = HistogramVec::new(opts, labels).expect("static metric definition");
    let _ = registry.register(Box::new(family.clone()));
    family
}

/// Metric handles plus the registry that owns them.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    stop_outcomes: IntCounterVec,
    operation_outcomes: IntCounterVec,
    lease_acquire_seconds: HistogramVec,
    health_events: IntCounterVec,
    container_stops: IntCounterVec,
    docker_waiting: prometheus::IntGauge,
}

impl Telemetry {
    /// A fresh registry with every metric in it: each process (or test) counts on its own.
    pub fn new() -> Self {
        let registry = Registry::new();
        let docker_waiting = prometheus::IntGauge::new(
            "rtmanager_docker_calls_waiting",
            "Docker calls queued behind RTMANAGER_DOCKER_CONCURRENCY",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(docker_waiting.clone()))
            .expect("the first metric of a fresh registry");
        Self {
            stop_outcomes: counter(
                &registry,
                "rtmanager_stop_outcomes_total",
                "Stop operations by outcome, reason and op_source",
                &["outcome", "reason", "op_source"],
            ),
            lease_acquire_seconds: histogram(
                &registry,
                (
                    "rtmanager_lease_acquire_seconds",
                    "Latency of one game-lease acquire attempt",
                ),
                &["result"],
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
                ],
            ),
            operation_outcomes: counter(
                &registry,
                "rtmanager_operation_outcomes_total",
                "Lifecycle operations by kind, outcome and op_source",
                &["op_kind", "outcome", "op_source"],
            ),
            health_events: counter(
                &registry,
                "rtmanager_health_events_total",
                "Health events published, by event type",
                &["event_type"],
            ),
            container_stops: counter(
                &registry,
                "rtmanager_container_stops_total",
                "Containers stopped, by the signal sent and how they ended (graceful or killed)",
                &["signal", "ended"],
            ),
            docker_waiting,
            registry,
        }
    }

    /// The gauge of Docker calls waiting for a turn.
    pub fn docker_calls_waiting(&self) -> prometheus::IntGauge {
        self.docker_waiting.clone()
    }

    /// Where other components (the HTTP bridge) register their metrics, so `/metrics` has all.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one container a stop operation stopped, once per operation.
    pub fn record_container_stop(&self, signal: &str, ended: &str) {
        self.container_stops
            .with_label_values(&[signal, ended])
            .inc();
    }

    /// Counts one stop; the caller counts each operation once, however often its audit row is
    /// retried.
    pub fn record_stop_outcome(&self, outcome: &str, reason: &str, op_source: &str) {
        self.stop_outcomes
            .with_label_values(&[outcome, reason, op_source])
            .inc();
    }

    /// The current count for one label set, for tests.
    pub fn stop_outcome_count(&self, outcome: &str, reason: &str, op_source: &str) -> u64 {
        self.stop_outcomes
            .with_label_values(&[outcome, reason, op_source])
            .get()
    }

    /// Counts one operation of any verb, under the same once-per-operation rule.
    pub fn record_operation_outcome(&self, op_kind: &str, outcome: &str, op_source: &str) {
        let labels = [op_kind, outcome, op_source];
        self.operation_outcomes.with_label_values(&labels).inc();
    }

    /// The current count for one label set, for tests.
    pub fn operation_outcome_count(&self, op_kind: &str, outcome: &str, op_source: &str) -> u64 {
        let labels = [op_kind, outcome, op_source];
        self.operation_outcomes.with_label_values(&labels).get()
    }

    /// `result`: `acquired`, `taken_over`, `held_by_other` or `error`; `elapsed` covers the whole
    /// attempt, a takeover's lock-delay included.
    pub fn record_lease_acquire(&self, result: &str, elapsed: Duration) {
        self.lease_acquire_seconds
            .with_label_values(&[result])
            .observe(elapsed.as_secs_f64());
    }

    /// How many attempts ended with `result`, for tests.
    pub fn lease_acquire_count(&self, result: &str) -> u64 {
        self.lease_acquire_seconds
            .with_label_values(&[result])
            .get_sample_count()
    }

    /// Counts an event actually added to the stream, never a deduplicated re-publish.
    pub fn record_health_event(&self, event_type: &str) {
        self.health_events.with_label_values(&[event_type]).inc();
    }

    /// How many events of `event_type` were added, for tests.
    pub fn health_event_count(&self, event_type: &str) -> u64 {
        self.health_events.with_label_values(&[event_type]).get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding into a String cannot fail");
        out
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}
