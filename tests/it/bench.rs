//! `rtmanager bench` end to end, at its smallest: against an `rtmanager run` of the test's own
//! (task queue, database, stream, HTTP port), it measures every metric, runs the mass stops of
//! both sides in ABBA order with every stop succeeding, and cleans up after itself. The figures
//! themselves are for the benchmark run the README quotes, not for a test.

use crate::common;

use std::{process::Stdio, time::Duration};

use crate::common::{eventually, rtmanager_command, unique, TestConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_measures_every_metric_and_removes_what_it_created() {
    let cfg = TestConfig::new();
    let config = &cfg.config;
    let addr = common::free_local_addr();
    let token = unique("bench-token");
    let stream = format!("{}stop_jobs", config.redis_prefix);
    let with_env = |command: &mut std::process::Command| {
        command
            .env("RTMANAGER_HTTP_ADDR", &addr)
            .env("RTMANAGER_API_TOKEN", &token)
            .env("RTMANAGER_STOP_STREAM", &stream)
            .env("RTMANAGER_CONTAINER_NETWORK", "none")
            .env("RTMANAGER_DEMO_IMAGE", common::game_image())
            .env("RTMANAGER_LOG", "warn")
            .stdin(Stdio::null());
    };
    let mut run = rtmanager_command(config);
    with_env(&mut run);
    let mut run = run.arg("run").spawn().expect("spawn rtmanager run");
    // Host b's worker on the second engine, for the two-host mass stops.
    let (host_ids, docker_hosts) = (common::dev_host_ids(), common::dev_docker_hosts());
    let b_config = rtmanager::Config {
        host_id: rtmanager_domain::HostId::parse(&host_ids[1]).unwrap(),
        docker_host: docker_hosts[1].clone(),
        ..config.clone()
    };
    let _b_worker = common::worker_process(&b_config);
    let ready = format!("http://{addr}/readyz");
    eventually(
        "rtmanager run to be ready",
        Duration::from_secs(60),
        || async { (http_get_status(&ready).await == Some(200)).then_some(()) },
    )
    .await;

    let mut bench = rtmanager_command(config);
    with_env(&mut bench);
    bench
        .env("RTMANAGER_DEV_HOST_IDS", host_ids.join(","))
        .env("RTMANAGER_DEV_DOCKER_HOSTS", docker_hosts.join(","));
    let output = bench
        .args([
            "bench",
            "--json",
            "--single",
            "2",
            "--mass",
            "4",
            "--mass-rounds",
            "2",
            "--network",
            "none",
            "--kills",
            "2",
            "--reconcile-games",
            "4",
            "--growth",
            "5,3",
        ])
        .args(["--worker-pid", &run.id().to_string()])
        .output()
        .expect("run rtmanager bench");
    let _ = run.kill();
    let _ = run.wait();
    assert!(
        output.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let single = &report["single"];
    assert_eq!(single["http"]["samples"], 2, "{report}");
    assert_eq!(single["bollard"]["samples"], 2, "{report}");
    assert_eq!(report["replay_http"]["samples"], 2, "{report}");
    assert_eq!(report["mass_games"], 4, "{report}");
    // ABBA: bollard then HTTP in round 1, HTTP then bollard in round 2, every run complete.
    let mass = &report["mass"];
    let runs = mass["runs"].as_array().expect("mass runs");
    let order: Vec<(u64, &str)> = runs
        .iter()
        .map(|run| {
            (
                run["round"].as_u64().unwrap_or(0),
                run["side"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        order,
        [(1, "bollard"), (1, "http"), (2, "http"), (2, "bollard")],
        "{report}"
    );
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["order"], i + 1, "{report}");
        assert_eq!(run["games"], 4, "{report}");
        assert_eq!(run["failed"], 0, "{report}");
        for metric in ["wall_s", "stops_per_s"] {
            assert!(
                run[metric].as_f64().is_some_and(|v| v > 0.0),
                "run {}: {metric}: {report}",
                i + 1
            );
        }
        // The worker is watched over the HTTP runs only.
        let http = run["side"] == "http";
        for metric in ["worker_peak_rss_mib", "worker_cpu_ms_per_stop"] {
            assert_eq!(
                run[metric].is_number(),
                http,
                "run {}: {metric}: {report}",
                i + 1
            );
        }
    }
    // CPU comes in clock ticks (10 ms), but a stop costs the worker several ms and the Temporal
    // server more, so over 5 single stops and 8 mass stops every figure is some ticks: zero
    // means the wrong process is watched.
    let figures = [
        &single["ratio_p50"],
        &single["cpu_ms"][0],
        &single["cpu_ms"][1],
        &mass["http_mean_stops_per_s"],
        &mass["bollard_mean_stops_per_s"],
        &mass["throughput_ratio"],
        &mass["worker_peak_rss_mib"],
        &mass["worker_cpu_ms_per_stop"],
    ];
    // Growth runs, smallest first, each stop complete and the worker watched.
    let growth = report["growth"].as_array().expect("growth runs");
    let in_flight: Vec<_> = growth.iter().map(|run| run["in_flight"].clone()).collect();
    assert_eq!(in_flight, [3, 5], "{report}");
    for run in growth {
        assert_eq!(run["failed"], 0, "{report}");
        assert_eq!(run["latency"]["samples"], run["in_flight"], "{report}");
        for metric in ["wall_s", "worker_peak_rss_mib", "worker_cpu_ms_per_stop"] {
            assert!(
                run[metric].as_f64().is_some_and(|v| v > 0.0),
                "{metric}: {report}"
            );
        }
    }
    // Crash detection and a reconcile round with nothing drifted.
    assert_eq!(report["crash_detection"]["samples"], 2, "{report}");
    assert!(
        report["crash_detection"]["p50_ms"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{report}"
    );
    assert_eq!(report["reconcile"]["games"], 4, "{report}");
    assert_eq!(report["reconcile"]["records_checked"], 4, "{report}");
    assert_eq!(report["reconcile"]["repaired"], 0, "{report}");
    // The two-host mass stops: the same ABBA rounds over both engines, every stop complete.
    let two = &report["two_host"];
    assert_eq!(two["hosts"], serde_json::json!(host_ids[..2]), "{report}");
    let two_runs = two["runs"].as_array().expect("two-host runs");
    assert_eq!(two_runs.len(), 4, "{report}");
    assert!(
        two_runs
            .iter()
            .all(|run| run["failed"] == 0 && run["games"] == 4),
        "{report}"
    );
    assert!(
        two["throughput_ratio"].as_f64().is_some_and(|v| v > 0.0),
        "{report}"
    );
    for (i, figure) in figures.into_iter().enumerate() {
        assert!(
            figure.as_f64().is_some_and(|v| v > 0.0),
            "figure {i}: {report}"
        );
    }

    let docker = bollard::Docker::connect_with_local_defaults().unwrap();
    let left = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(std::collections::HashMap::from([(
                "label".to_owned(),
                vec!["rtmanager.bench".to_owned()],
            )])),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "bench containers left behind: {}",
        left.len()
    );
}

/// The status of a plain GET, or `None` when nothing answers yet.
async fn http_get_status(url: &str) -> Option<u16> {
    let url = url::Url::parse(url).ok()?;
    let addr = format!("{}:{}", url.host_str()?, url.port()?);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        url.path()
    );
    common::http_exchange(&addr, &request)
        .await?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
