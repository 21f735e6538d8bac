//! The HTTP bridge against the real stack: status codes from error codes, authentication,
//! idempotent request ids, malformed requests, health, metrics and the OpenAPI document.

use crate::common;

use std::{collections::HashMap, time::Duration};

use crate::common::{eventually, unique, Bridge, TestApp};
use proptest::{prelude::*, strategy::ValueTree};
use redis::AsyncCommands;
use rtmanager_domain::RuntimeStatus;

const RUNTIMES: &str = "/api/v1/internal/runtimes";

/// `POST .../stop` with `{"reason":"admin"}` and no extra header.
async fn stop_as_admin(bridge: &Bridge, game: &str) -> common::HttpResponse {
    bridge
        .call(
            "POST",
            &format!("{RUNTIMES}/{game}/stop"),
            &[],
            Some(r#"{"reason":"admin"}"#),
        )
        .await
}

async fn running_game(app: &mut TestApp) -> (String, String) {
    let (game, cid) = app.running_game("http").await;
    (game, cid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_answer_with_the_workflow_output_and_its_status() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;
    let (game, cid) = running_game(&mut app).await;
    let stop = format!("{RUNTIMES}/{game}/stop");

    let ok = bridge
        .call("POST", &stop, &[], Some(r#"{"reason":"admin"}"#))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let body = ok.json();
    assert_eq!(body["outcome"], "success");
    assert_eq!(body["record"]["status"], "stopped");
    assert!(
        ok.header("x-request-id").is_some(),
        "a fresh request id is echoed"
    );
    let rows = app.op_log(&game).await;
    assert_eq!(
        (rows[0].op_source.as_str(), rows[0].source_ref.as_deref()),
        ("rest", ok.header("x-request-id"))
    );

    let replay = bridge
        .call("POST", &stop, &[], Some(r#"{"reason":"admin"}"#))
        .await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json()["error_code"], "replay_no_op");

    let record = bridge
        .call("GET", &format!("{RUNTIMES}/{game}"), &[], None)
        .await;
    assert_eq!(record.status, 200);
    assert_eq!(record.json()["current_container_id"], cid.as_str());

    let missing = bridge
        .call(
            "POST",
            &format!("{RUNTIMES}/{}/stop", unique("none")),
            &[],
            Some(r#"{"reason":"admin"}"#),
        )
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error_code"], "not_found");
    assert_eq!(
        bridge
            .call("GET", &format!("{RUNTIMES}/{}", unique("none")), &[], None)
            .await
            .status,
        404
    );

    let (busy, _) = running_game(&mut app).await;
    let _: () = app
        .redis
        .clone()
        .set_ex(app.lease_key(&busy), "1:other", 60)
        .await
        .unwrap();
    let conflict = bridge
        .call(
            "POST",
            &format!("{RUNTIMES}/{busy}/stop"),
            &[],
            Some(r#"{"reason":"admin"}"#),
        )
        .await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.json()["error_code"], "conflict");

    let mislabelled = app.new_game("mislabel");
    let foreign = app.container(HashMap::new(), None).await;
    app.insert_record(&mislabelled, "running", Some(&foreign))
        .await;
    let internal = bridge
        .call(
            "POST",
            &format!("{RUNTIMES}/{mislabelled}/stop"),
            &[],
            Some(r#"{"reason":"admin"}"#),
        )
        .await;
    assert_eq!(internal.status, 500);
    assert_eq!(internal.json()["error_code"], "internal");

    let image = common::game_image();
    let fresh = app.new_game("http-start");
    let started = bridge
        .call(
            "POST",
            &format!("{RUNTIMES}/{fresh}/start"),
            &[],
            Some(&format!(r#"{{"image_ref":"{image}"}}"#)),
        )
        .await;
    assert_eq!(started.status, 200, "{}", started.body);
    let restarted = bridge
        .call("POST", &format!("{RUNTIMES}/{fresh}/restart"), &[], None)
        .await;
    assert_eq!(restarted.status, 200, "{}", restarted.body);
    let patched = bridge
        .call(
            "POST",
            &format!("{RUNTIMES}/{fresh}/patch"),
            &[],
            Some(r#"{"image_ref":"rtmanager-game:absent"}"#),
        )
        .await;
    assert_eq!(patched.status, 404, "{}", patched.body);
    assert!(patched.json()["error_message"]
        .as_str()
        .unwrap()
        .contains("rolled back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dependency_is_503() {
    let mut app = TestApp::spawn_with(|c| c.docker_host = "tcp://127.0.0.1:1".into()).await;
    let bridge = app.spawn_bridge().await;
    let (game, _) = running_game(&mut app).await;
    let out = stop_as_admin(&bridge, &game).await;
    assert_eq!(out.status, 503, "{}", out.body);
    assert_eq!(out.json()["error_code"], "service_unavailable");
    let ready = bridge.call("GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["failing"], serde_json::json!(["docker"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_token_nothing_is_started_or_written() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;
    let (game, cid) = running_game(&mut app).await;
    let stop = format!("{RUNTIMES}/{game}/stop");
    let json = ("Content-Type".to_string(), "application/json".to_string());
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token".to_string()),
        Some(format!("Bearer {}x", bridge.token)),
        Some(format!("Basic {}", bridge.token)),
        Some(format!("bearer {}", bridge.token)),
        Some("Bearer ".to_string()),
    ] {
        let mut headers = vec![json.clone()];
        if let Some(auth) = auth {
            headers.push(("Authorization".into(), auth));
        }
        for (method, path) in [
            ("POST", stop.as_str()),
            ("GET", &format!("{RUNTIMES}/{game}")),
            ("GET", "/api/v1/openapi.json"),
            ("GET", "/api/v1/anything"),
        ] {
            let out = bridge
                .raw(method, path, &headers, br#"{"reason":"admin"}"#)
                .await;
            assert_eq!(out.status, 401, "{method} {path}: {}", out.body);
            assert_eq!(out.json()["error"], "unauthorized");
            assert_eq!(out.header("www-authenticate"), Some("Bearer"));
        }
    }
    assert_eq!(app.op_log_count().await, 0, "nothing written");
    assert_eq!(
        app.container_running(&cid).await,
        Some(true),
        "nothing stopped"
    );
    assert_eq!(
        app.record(&game).await.unwrap().status,
        RuntimeStatus::Running
    );
    // Health and metrics need no token.
    assert_eq!(bridge.call("GET", "/healthz", &[], None).await.status, 200);
    let ready = bridge.call("GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["checks"]["temporal"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_is_one_operation() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;
    let (game, _) = running_game(&mut app).await;
    let stop = format!("{RUNTIMES}/{game}/stop");
    let id = [("X-Request-Id", "req-123")];

    let first = bridge
        .call("POST", &stop, &id, Some(r#"{"reason":"admin"}"#))
        .await;
    let second = bridge
        .call("POST", &stop, &id, Some(r#"{"reason":"admin"}"#))
        .await;

    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    assert_eq!(
        first.body, second.body,
        "the same result, not a replay_no_op"
    );
    assert_eq!(second.json()["error_code"], serde_json::Value::Null);
    assert_eq!(second.header("x-request-id"), Some("req-123"));
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1, "one workflow, one row");
    assert_eq!(rows[0].source_ref.as_deref(), Some("req-123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_json_4xx() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;
    let (game, cid) = running_game(&mut app).await;
    let stop = format!("{RUNTIMES}/{game}/stop");
    let auth = (
        "Authorization".to_string(),
        format!("Bearer {}", bridge.token),
    );
    let json = ("Content-Type".to_string(), "application/json".to_string());
    type Case = (String, Vec<(String, String)>, Vec<u8>, u16);
    let cases: Vec<Case> = vec![
        (
            stop.clone(),
            vec![auth.clone(), json.clone()],
            b"{not json".to_vec(),
            400,
        ),
        (
            stop.clone(),
            vec![auth.clone(), json.clone()],
            b"[1]".to_vec(),
            400,
        ),
        (
            stop.clone(),
            vec![auth.clone(), json.clone()],
            br#"{"reason":"reboot"}"#.to_vec(),
            400,
        ),
        (
            stop.clone(),
            vec![auth.clone(), json.clone()],
            br#"{"reason":"admin","force":true}"#.to_vec(),
            400,
        ),
        (
            stop.clone(),
            vec![auth.clone(), json.clone()],
            br#"{}"#.to_vec(),
            400,
        ),
        (
            stop.clone(),
            vec![auth.clone(), json.clone()],
            br#"{"reason":7}"#.to_vec(),
            400,
        ),
        (
            stop.clone(),
            vec![auth.clone()],
            br#"{"reason":"admin"}"#.to_vec(),
            415,
        ),
        (
            stop.clone(),
            vec![auth.clone(), ("Content-Type".into(), "text/plain".into())],
            br#"{"reason":"admin"}"#.to_vec(),
            415,
        ),
        (
            stop.clone(),
            vec![auth.clone(), json.clone()],
            vec![b' '; 20_000],
            413,
        ),
        (
            format!("{RUNTIMES}/bad%20id/stop"),
            vec![auth.clone(), json.clone()],
            br#"{"reason":"admin"}"#.to_vec(),
            400,
        ),
        (
            format!("{RUNTIMES}/-x/stop"),
            vec![auth.clone(), json.clone()],
            br#"{"reason":"admin"}"#.to_vec(),
            400,
        ),
        (
            format!("{RUNTIMES}/{}/stop", "a".repeat(200)),
            vec![auth.clone(), json.clone()],
            br#"{"reason":"admin"}"#.to_vec(),
            400,
        ),
        (
            format!("{RUNTIMES}/{game}/start"),
            vec![auth.clone(), json.clone()],
            br#"{"image_ref":"no spaces"}"#.to_vec(),
            400,
        ),
        (
            format!("{RUNTIMES}/{game}/restart"),
            vec![auth.clone(), json.clone()],
            br#"{"image_ref":"x"}"#.to_vec(),
            400,
        ),
        (
            stop.clone(),
            vec![
                auth.clone(),
                json.clone(),
                ("X-Request-Id".into(), "has space".into()),
            ],
            br#"{"reason":"admin"}"#.to_vec(),
            400,
        ),
        (
            format!("{RUNTIMES}/{game}/explode"),
            vec![auth.clone(), json.clone()],
            b"{}".to_vec(),
            404,
        ),
    ];
    for (path, headers, body, status) in cases {
        let out = bridge.raw("POST", &path, &headers, &body).await;
        assert_eq!(
            out.status,
            status,
            "{path} {:?}: {}",
            String::from_utf8_lossy(&body[..body.len().min(40)]),
            out.body
        );
        let doc = out.json();
        assert!(
            doc.get("error_code").is_some() || doc.get("error").is_some(),
            "{doc}"
        );
    }
    assert_eq!(
        app.op_log_count().await,
        0,
        "rejected at the edge: no workflow ran"
    );
    assert_eq!(app.container_running(&cid).await, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_does_not_cancel_the_operation() {
    let mut app = TestApp::spawn_with(|c| c.stop_timeout = Duration::from_secs(3)).await;
    let bridge = app.spawn_bridge().await;
    let (game, cid) = app.slow_game("disconnect").await;
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(bridge.addr).await.unwrap();
        let body = r#"{"reason":"admin"}"#;
        let request = format!(
            "POST {RUNTIMES}/{game}/stop HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            bridge.token,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    } // dropped: the client hangs up mid-operation
    eventually(
        "the stop to finish anyway",
        Duration::from_secs(30),
        || async { (app.record(&game).await?.status == RuntimeStatus::Stopped).then_some(()) },
    )
    .await;
    assert_eq!(app.container_running(&cid).await, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_openapi_document_are_served() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;
    let (game, _) = running_game(&mut app).await;
    bridge
        .call(
            "POST",
            &format!("{RUNTIMES}/{game}/stop"),
            &[],
            Some(r#"{"reason":"timeout"}"#),
        )
        .await;

    let metrics = bridge.call("GET", "/metrics", &[], None).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains(r#"rtmanager_stop_outcomes_total{op_source="rest",outcome="success",reason="timeout"} 1"#), "{}", metrics.body);
    assert!(metrics.body.contains("rtmanager_http_requests_total"));
    assert!(metrics
        .body
        .contains("rtmanager_lease_acquire_seconds_bucket"));

    let doc = bridge.call("GET", "/api/v1/openapi.json", &[], None).await;
    assert_eq!(doc.status, 200);
    let served = doc.json();
    let kept: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    assert_eq!(served, kept);
    for path in ["/stop", "/start", "/restart", "/patch"] {
        assert!(served["paths"][format!("{RUNTIMES}/{{game_id}}{path}")]["post"].is_object());
    }
}

/// Arbitrary paths and bodies never produce a 5xx that is not a real outcome.
fn arbitrary_request() -> impl Strategy<Value = (String, String, Vec<u8>)> {
    let segment = prop_oneof![
        "[A-Za-z0-9._-]{1,20}",
        "[ -~]{0,30}",
        Just("..".to_string()),
        Just("%00".to_string()),
    ];
    let verb = prop_oneof![
        Just("stop"),
        Just("start"),
        Just("restart"),
        Just("patch"),
        Just(""),
        Just("x")
    ];
    let body = prop_oneof![
        any::<Vec<u8>>(),
        "[ -~]{0,60}".prop_map(String::into_bytes),
        Just(br#"{"reason":"admin"}"#.to_vec()),
        Just(br#"{"image_ref":"rtmanager-game:none"}"#.to_vec()),
        Just(br#"{"reason":null}"#.to_vec()),
    ];
    let method = prop_oneof![Just("POST"), Just("GET"), Just("PUT"), Just("DELETE")];
    (segment, verb, body, method).prop_map(|(segment, verb, body, method)| {
        let encoded: String = segment
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let path = if verb.is_empty() {
            format!("{RUNTIMES}/{encoded}")
        } else {
            format!("{RUNTIMES}/{encoded}/{verb}")
        };
        (method.to_string(), path, body)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_requests_never_produce_an_unexplained_5xx() {
    let app = TestApp::spawn().await;
    let bridge: Bridge = app.spawn_bridge().await;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    let strategy = arbitrary_request();
    for _ in 0..96 {
        let (method, path, body) = strategy.new_tree(&mut runner).unwrap().current();
        let headers = vec![
            (
                "Authorization".to_string(),
                format!("Bearer {}", bridge.token),
            ),
            ("Content-Type".to_string(), "application/json".to_string()),
        ];
        let out = bridge.raw(&method, &path, &headers, &body).await;
        assert!(out.status >= 200, "{method} {path}: no response");
        if out.status >= 500 {
            let doc = out.json();
            let code = doc["error_code"]
                .as_str()
                .or(doc["error"].as_str())
                .unwrap_or("");
            assert!(
                (out.status == 503 && code == "service_unavailable")
                    || (out.status == 500 && code == "internal"),
                "{method} {path}: unexplained {}: {}",
                out.status,
                out.body
            );
        }
        assert!(
            serde_json::from_str::<serde_json::Value>(&out.body).is_ok() || out.body.is_empty(),
            "{method} {path}: {}",
            out.body
        );
    }
}

/// Whether the server handed the workflow's first task straight back to the starting client's
/// worker (eager workflow start), as its start event records.
async fn started_eagerly(app: &TestApp, workflow_id: &str) -> bool {
    use temporalio_client::{UntypedWorkflow, WorkflowFetchHistoryOptions};
    use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
    let events = app
        .client
        .get_workflow_handle::<UntypedWorkflow>(workflow_id)
        .fetch_history(WorkflowFetchHistoryOptions::default())
        .into_events()
        .await
        .unwrap();
    match &events[0].attributes {
        Some(Attributes::WorkflowExecutionStartedEventAttributes(started)) => {
            started.eager_execution_accepted
        }
        other => panic!("first event is not the start: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_sharing_the_workers_client_starts_workflows_eagerly() {
    // As `rtmanager run`: one client for bridge and worker.
    let mut shared = TestApp::spawn_sharing_client().await;
    // As `rtmanager serve` next to a separate `rtmanager worker`.
    let mut separate = TestApp::spawn().await;
    for (app, eager) in [(&mut shared, true), (&mut separate, false)] {
        let bridge = app.spawn_bridge().await;
        let (game, _) = running_game(app).await;
        let stop = stop_as_admin(&bridge, &game).await;
        assert_eq!(stop.status, 200, "{}", stop.body);
        assert_eq!(stop.json()["outcome"], "success");
        let workflow_id = format!("http-stop-{game}-{}", stop.header("x-request-id").unwrap());
        assert_eq!(
            started_eagerly(app, &workflow_id).await,
            eager,
            "{workflow_id}"
        );
    }
}
