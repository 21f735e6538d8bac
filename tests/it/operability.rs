//! Operating rtmanager from Temporal's side: every lifecycle workflow carries the `GameId`,
//! `OpKind`, `OpSource` and `Outcome` search attributes whatever way it came in, and answers the
//! `progress` query while it runs (also through `rtmanager status --operation`).

use std::time::Duration;

use futures::StreamExt;
use rtmanager_domain::GameId;
use serde_json::Value;

use crate::common::{
    eventually, free_local_addr, http_exchange, rtmanager_command, run_ok, temporal_command,
    TestApp,
};

/// The workflow ids a visibility query lists.
async fn listed(app: &TestApp, query: &str) -> Vec<String> {
    let options = temporalio_client::WorkflowListOptions::default();
    let mut stream = app.client.list_workflows(query.to_owned(), options);
    let mut ids = Vec::new();
    while let Some(execution) = stream.next().await {
        ids.push(execution.expect("list workflows").id().to_owned());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_of_a_game_is_listed_by_its_search_attributes() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;
    let (game, _) = app.started_game("sa").await;
    bridge
        .operate_ok("stop", &game, None, r#"{"reason":"admin"}"#)
        .await;
    // A third way in: the `temporal` CLI, on the shared queue.
    let input = format!(r#"{{"game_id":"{game}","op_source":"admin"}}"#);
    run_ok(
        temporal_command(app.config(), &["workflow", "execute"])
            .args(["--task-queue", &app.config().task_queue])
            .args(["--type", "RestartRuntime", "--input", &input]),
        "temporal workflow execute",
    );

    let by_game = format!("GameId = '{game}'");
    let all = eventually(
        "visibility to list every operation",
        Duration::from_secs(30),
        || async {
            let ids = listed(&app, &by_game).await;
            // start, stop, restart and its two children
            (ids.len() >= 5).then_some(ids)
        },
    )
    .await;
    assert_eq!(all.len(), 5, "{all:?}");
    let count = |query: String| {
        let app = &app;
        async move { listed(app, &query).await.len() }
    };
    assert_eq!(
        count(format!("{by_game} AND OpKind = 'stop'")).await,
        2,
        "the HTTP stop and the restart's"
    );
    assert_eq!(count(format!("{by_game} AND OpSource = 'rest'")).await, 1);
    assert_eq!(count(format!("{by_game} AND OpSource = 'admin'")).await, 4);
    assert_eq!(count(format!("{by_game} AND Outcome = 'success'")).await, 5);
    // The CLI's own listing works the same way.
    let restarts = format!("{by_game} AND OpKind = 'restart'");
    let out = run_ok(
        temporal_command(app.config(), &["workflow", "list"]).args(["--query", &restarts]),
        "temporal workflow list",
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("RestartRuntime"));
}

/// Posts `verb` for `game` through a bridge in a task of its own; returns the task.
fn post_in_background(
    bridge: &std::sync::Arc<crate::common::Bridge>,
    game: &str,
    verb: &str,
    body: &'static str,
) -> tokio::task::JoinHandle<u16> {
    let (bridge, game, verb) = (bridge.clone(), game.to_owned(), verb.to_owned());
    tokio::spawn(async move { bridge.operate(&verb, &game, None, body).await.status })
}

/// An app whose Docker steps are normal activities (the workflow task completes while Docker
/// works, so a query is answered at once) and whose stops wait 6 s, with its bridge.
async fn app_with_normal_docker_steps() -> (TestApp, std::sync::Arc<crate::common::Bridge>) {
    let app = TestApp::spawn_with(|c| {
        c.stop_timeout = Duration::from_secs(6);
        c.local_docker_steps = false;
    })
    .await;
    let bridge = std::sync::Arc::new(app.spawn_bridge().await);
    (app, bridge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_operation_answers_where_it_is() {
    // Normal Docker steps: the workflow task completes while Docker works, so the query is
    // answered at once (with local ones it is answered when the task heartbeats or ends).
    let (mut app, bridge) = app_with_normal_docker_steps().await;
    let (game, container) = app.slow_game("where").await;
    let stop = post_in_background(&bridge, &game, "stop", r#"{"reason":"admin"}"#);
    app.await_stop_signal(&container).await;
    let game_id = GameId::parse(&game).unwrap();
    let running = rtmanager::client::running_operations(&app.client, &game_id)
        .await
        .unwrap();
    assert_eq!(running.len(), 1, "{running:?}");
    let progress = running[0]
        .progress
        .clone()
        .expect("the progress query answers");
    assert_eq!(progress["step"], "StopContainer", "{progress}");
    assert_eq!(progress["container_id"], container.as_str());
    assert_eq!(progress["host"], "local");
    assert_eq!(progress["game_id"], game.as_str());
    assert!(progress["fence"].as_u64().is_some(), "{progress}");
    // The operator's view of the same.
    let out = run_ok(
        rtmanager_command(app.config()).args(["status", &game, "--operation"]),
        "rtmanager status --operation",
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("StopRuntime") && out.contains("StopContainer"),
        "{out}"
    );
    assert_eq!(stop.await.unwrap(), 200);
    let done = eventually(
        "the stop to leave the running list",
        Duration::from_secs(10),
        || async {
            let running = rtmanager::client::running_operations(&app.client, &game_id)
                .await
                .ok()?;
            running.is_empty().then_some(())
        },
    );
    done.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_names_its_child_in_flight() {
    let (mut app, bridge) = app_with_normal_docker_steps().await;
    let (game, container) = app.slow_game("child").await;
    let restart = post_in_background(&bridge, &game, "restart", "{}");
    app.await_stop_signal(&container).await;
    let game_id = GameId::parse(&game).unwrap();
    let running = rtmanager::client::running_operations(&app.client, &game_id)
        .await
        .unwrap();
    let parent = running
        .iter()
        .find(|op| op.workflow_type == "RestartRuntime")
        .expect("the restart runs");
    let progress: &Value = parent.progress.as_ref().expect("an answer");
    let child = progress["child"].as_str().expect("a child in flight");
    assert!(
        child.starts_with(&parent.workflow_id) && child.ends_with("/stop"),
        "{progress}"
    );
    assert!(progress["fence"].as_u64().is_some(), "{progress}");
    assert_eq!(restart.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_calls_beyond_the_cap_wait_their_turn() {
    let mut app = TestApp::spawn_with(|c| {
        c.docker_concurrency = 1;
        c.stop_timeout = Duration::from_secs(4);
    })
    .await;
    let (first, first_container) = app.slow_game("cap-a").await;
    let (second, second_container) = app.slow_game("cap-b").await;
    let first_stop = app.stop_holding_lease(&first).await;
    app.await_stop_signal(&first_container).await;
    let second_stop = app.stop_holding_lease(&second).await;
    // The second stop holds its lease but not a turn: it waits, counted by the gauge.
    let waiting = eventually(
        "the second stop to queue",
        Duration::from_secs(10),
        || async {
            let metrics = app.telemetry.render();
            metrics
                .lines()
                .any(|l| l == "rtmanager_docker_calls_waiting 1")
                .then_some(())
        },
    );
    waiting.await;
    assert_eq!(app.container_running(&second_container).await, Some(true));
    for stop in [first_stop, second_stop] {
        let out = crate::common::finish_within(&stop, Duration::from_secs(60), "a stop").await;
        assert!(out.is_success(), "{out:?}");
    }
    assert!(app
        .telemetry
        .render()
        .contains("rtmanager_docker_calls_waiting 0"));
}

/// The body of `GET http://<addr>/metrics`, once it answers 200.
async fn scrape(addr: &str) -> String {
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    eventually("the metrics endpoint", Duration::from_secs(60), || async {
        let text = http_exchange(addr, &request).await?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_serves_its_metrics_and_the_sdks() {
    let mut app = TestApp::spawn_without_worker(|_| {}).await;
    let addr = free_local_addr();
    app.cfg.config.metrics_addr = rtmanager::config::OptionalAddr(Some(addr.parse().unwrap()));
    let _worker = crate::common::worker_process(app.config());
    let (game, _) = app.running_game("metrics").await;
    let out = app.stop(&game).await;
    assert!(out.is_success(), "{out:?}");
    let metrics = scrape(&addr).await;
    assert!(
        metrics.contains("rtmanager_stop_outcomes_total{op_source=\"admin\",outcome=\"success\",reason=\"admin\"} 1"),
        "rtmanager's own: {metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("temporal_") && l.contains("task_queue")),
        "the SDK's worker metrics: {metrics}"
    );
}

/// The value of `field` on a JSON log line: its own, or its current span's.
fn log_field<'a>(line: &'a Value, field: &str) -> Option<&'a str> {
    line.get(field)
        .or_else(|| line.get("span").and_then(|span| span.get(field)))
        .and_then(Value::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_game_the_workflow_and_the_op_at_every_way_in() {
    use std::io::{BufRead, BufReader};
    let mut app = TestApp::spawn_without_worker(|_| {}).await;
    let addr = free_local_addr();
    let stream = format!("{}stop_jobs", app.config().redis_prefix);
    let mut run = rtmanager_command(app.config())
        .env("RTMANAGER_HTTP_ADDR", &addr)
        .env("RTMANAGER_API_TOKEN", "log-test-token-0123456789")
        .env("RTMANAGER_STOP_STREAM", &stream)
        .env("RTMANAGER_LOG_FORMAT", "json")
        .env("RTMANAGER_LOG", "info")
        .arg("run")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rtmanager run");
    let stderr = run.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let (by_http, _) = app.running_game("log-http").await;
    let (by_stream, _) = app.running_game("log-stream").await;
    let status = eventually(
        "rtmanager run's bridge",
        Duration::from_secs(60),
        || async {
            let body = r#"{"reason":"admin"}"#;
            let request = format!(
                "POST /api/v1/internal/runtimes/{by_http}/stop HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer log-test-token-0123456789\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            http_exchange(&addr, &request)
                .await?
                .split_whitespace()
                .nth(1)
                .map(str::to_owned)
        },
    )
    .await;
    assert_eq!(status, "200");
    let _: String = redis::AsyncCommands::xadd(
        &mut app.redis.clone(),
        &stream,
        "*",
        &[("game_id", by_stream.as_str()), ("reason", "finished")],
    )
    .await
    .unwrap();
    eventually("the stream stop", Duration::from_secs(30), || async {
        (app.status(&by_stream).await == rtmanager_domain::RuntimeStatus::Stopped).then_some(())
    })
    .await;
    // SIGTERM: the process drains and exits, closing its log (SIGKILL if it does not).
    let _ = std::process::Command::new("kill")
        .arg(run.id().to_string())
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while run.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = run.kill();
            panic!("rtmanager run did not exit within 30 s of SIGTERM");
        }
        // Pacing of the poll for the process's exit.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lines = lines.join().unwrap();

    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| {
            assert!(
                !line.contains('\u{1b}'),
                "no colour codes in a log file: {line}"
            );
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        })
        .collect();
    // Every line naming a workflow names its game and its op too.
    for line in &parsed {
        if log_field(line, "workflow_id").is_some_and(|w| !w.is_empty()) {
            assert!(log_field(line, "game_id").is_some(), "{line}");
            assert!(
                log_field(line, "op").is_some_and(|op| !op.is_empty()),
                "{line}"
            );
        }
    }
    let about = |game: &str, target: &str| {
        parsed.iter().any(|line| {
            log_field(line, "game_id") == Some(game)
                && log_field(line, "workflow_id").is_some()
                && line["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(target))
        })
    };
    assert!(about(&by_http, "rtmanager::client"), "the bridge's lines");
    assert!(
        about(&by_http, "rtmanager_activities"),
        "the worker's lines"
    );
    assert!(
        about(&by_stream, "rtmanager::stream"),
        "the consumer's lines"
    );
}

/// `temporal <args> --address <dev server> -o json`, parsed.
fn temporal_json(app: &TestApp, args: &[&str]) -> Value {
    let out = run_ok(
        temporal_command(app.config(), args).args(["-o", "json"]),
        "temporal",
    );
    serde_json::from_slice(&out.stdout).expect("temporal -o json")
}

/// Every `userMetadata.summary` in a workflow's history, in event order.
fn step_summaries(app: &TestApp, workflow_id: &str) -> Vec<String> {
    let history = temporal_json(app, &["workflow", "show", "-w", workflow_id]);
    history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|event| {
            // `show -o json` leaves payloads encoded: base64 of a JSON string.
            use base64::Engine;
            let data = event["userMetadata"]["summary"]["data"].as_str()?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .ok()?;
            serde_json::from_slice::<String>(&bytes).ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_tells_an_operation_without_the_logs() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;
    let (game, container) = app.running_game("ui").await;
    let body = r#"{"reason":"finished","signal":"SIGTERM","timeout_secs":5}"#;
    bridge
        .operate_ok("stop", &game, Some("ui-req-1"), body)
        .await;

    // The workflow's own summary and details: what was asked, by whom.
    let workflow_id = format!("req-stop-{game}-ui-req-1");
    let described = temporal_json(&app, &["workflow", "describe", "-w", &workflow_id]);
    let metadata = &described["executionConfig"]["userMetadata"];
    assert_eq!(
        metadata["summary"],
        format!("stop {game} · reason finished · SIGTERM, 5 s · via rest · ref ui-req-1")
    );
    assert!(metadata["details"]
        .as_str()
        .is_some_and(|d| d.contains("\"timeout_secs\": 5")));
    // Where it ended, as the UI's current details show it.
    let current = temporal_json(&app, &["workflow", "metadata", "-w", &workflow_id]);
    let line = current.to_string();
    assert!(line.contains("done: success"), "{line}");
    assert!(line.contains(&container[..12]), "{line}");

    // Each step's marker carries its input, without the lease's secret.
    let summaries = step_summaries(&app, &workflow_id);
    let docker = format!("\"container_id\":\"{container}\"");
    assert!(
        summaries
            .iter()
            .any(|s| s.contains(&docker) && s.contains("SIGTERM")),
        "{summaries:?}"
    );
    assert!(summaries.len() >= 5, "a summary per step: {summaries:?}");
    for summary in &summaries {
        assert!(
            !summary.contains("lease") && !summary.contains("secret"),
            "{summary}"
        );
    }

    // A restart's children are summarised too.
    bridge
        .operate_ok("restart", &game, Some("ui-req-2"), "{}")
        .await;
    let parent = format!("req-restart-{game}-ui-req-2");
    let summaries = step_summaries(&app, &parent);
    assert!(
        summaries.iter().any(
            |s| s.starts_with(&format!("start {game} · image")) && s.contains("parent's lease")
        ),
        "{summaries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_summaries_can_be_turned_off() {
    let mut app = TestApp::spawn_with(|config| config.step_summaries = false).await;
    let bridge = app.spawn_bridge().await;
    let (game, _container) = app.running_game("nosum").await;
    let body = r#"{"reason":"finished"}"#;
    bridge
        .operate_ok("stop", &game, Some("nosum-1"), body)
        .await;
    // The steps ran with no summary (a step's is its input, a JSON object); the workflow
    // keeps its own.
    let workflow_id = format!("req-stop-{game}-nosum-1");
    let summaries = step_summaries(&app, &workflow_id);
    assert!(
        summaries.iter().all(|s| !s.starts_with('{')),
        "{summaries:?}"
    );
    let described = temporal_json(&app, &["workflow", "describe", "-w", &workflow_id]);
    let summary = &described["executionConfig"]["userMetadata"]["summary"];
    assert!(
        summary.as_str().is_some_and(|s| s.starts_with("stop ")),
        "{described}"
    );
}
