//! The HTTP bridge against the real stack: status codes from error codes, authentication,
//! idempotent request ids, malformed requests, health, metrics and the OpenAPI document.

use crate::common;

use std::{collections::HashMap, time::Duration};

use crate::common::{eventually, unique, Bridge, HttpResponse, TestApp};
use proptest::{prelude::*, strategy::ValueTree};
use rtmanager_domain::RuntimeStatus;

const RUNTIMES: &str = "/api/v1/internal/runtimes";

/// `POST .../{game}/{verb}` with an optional JSON body and no extra header: every operation's
/// request.
async fn post(bridge: &Bridge, game: &str, verb: &str, body: Option<&str>) -> HttpResponse {
    let path = format!("{RUNTIMES}/{game}/{verb}");
    bridge.call("POST", &path, &[], body).await
}

/// `POST .../stop` with `{"reason":"admin"}` and no extra header.
async fn stop_as_admin(bridge: &Bridge, game: &str) -> HttpResponse {
    let path = stop_path(game);
    bridge
        .call("POST", &path, &[], Some(r#"{"reason":"admin"}"#))
        .await
}

/// A game for a test of the bridge: a running container and its record.
async fn running_game(app: &mut TestApp) -> (String, String) {
    app.running_game("http").await
}

/// What most bridge tests start from: a worker configured by `adjust`, its bridge, and a
/// running game: `(app, bridge, game id, container id)`.
async fn setup(adjust: impl FnOnce(&mut rtmanager::Config)) -> (TestApp, Bridge, String, String) {
    let mut app = TestApp::spawn_with(adjust).await;
    let bridge = app.spawn_bridge().await;
    let (game, cid) = running_game(&mut app).await;
    (app, bridge, game, cid)
}

/// The path of `game`'s stop.
fn stop_path(game: &str) -> String {
    format!("{RUNTIMES}/{game}/stop")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_answer_with_the_workflow_output_and_its_status() {
    let (mut app, bridge, game, cid) = setup(|_| {}).await;

    let ok = stop_as_admin(&bridge, &game).await;
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
        (
            rows[0].op_source.as_str(),
            rows[0].refs.source_ref.as_deref()
        ),
        ("rest", ok.header("x-request-id"))
    );

    let replay = stop_as_admin(&bridge, &game).await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.json()["error_code"], "replay_no_op");

    let record = bridge
        .call("GET", &format!("{RUNTIMES}/{game}"), &[], None)
        .await;
    assert_eq!(record.status, 200);
    assert_eq!(record.json()["current_container_id"], cid.as_str());

    let missing = stop_as_admin(&bridge, &unique("none")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error_code"], "not_found");
    assert_eq!(
        bridge
            .call("GET", &format!("{RUNTIMES}/{}", unique("none")), &[], None)
            .await
            .status,
        404
    );

    let (busy, _) = app.leased_game("http", "1:other").await;
    let conflict = stop_as_admin(&bridge, &busy).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.json()["error_code"], "conflict");

    let mislabelled = app.new_game("mislabel");
    let foreign = app.container(HashMap::new(), None).await;
    app.insert_record(&mislabelled, "running", Some(&foreign))
        .await;
    let internal = stop_as_admin(&bridge, &mislabelled).await;
    assert_eq!(internal.status, 500);
    assert_eq!(internal.json()["error_code"], "internal");

    let image = common::game_image();
    let fresh = app.new_game("http-start");
    let start_body = format!(r#"{{"image_ref":"{image}"}}"#);
    let started = post(&bridge, &fresh, "start", Some(&start_body)).await;
    assert_eq!(started.status, 200, "{}", started.body);
    let restarted = post(&bridge, &fresh, "restart", None).await;
    assert_eq!(restarted.status, 200, "{}", restarted.body);
    let absent = Some(r#"{"image_ref":"rtmanager-game:absent"}"#);
    let patched = post(&bridge, &fresh, "patch", absent).await;
    assert_eq!(patched.status, 404, "{}", patched.body);
    assert!(patched.json()["error_message"]
        .as_str()
        .unwrap()
        .contains("rolled back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dependency_is_503() {
    let (_app, bridge, game, _) = setup(|c| c.docker_host = "tcp://127.0.0.1:1".into()).await;
    let out = stop_as_admin(&bridge, &game).await;
    assert_eq!(out.status, 503, "{}", out.body);
    assert_eq!(out.json()["error_code"], "service_unavailable");
    let ready = bridge.call("GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["failing"], serde_json::json!(["docker"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_token_nothing_is_started_or_written() {
    let (app, bridge, game, cid) = setup(|_| {}).await;
    let stop = stop_path(&game);
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
    let (app, bridge, game, _) = setup(|_| {}).await;
    let stop = stop_path(&game);
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
    assert_eq!(rows[0].refs.source_ref.as_deref(), Some("req-123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_json_4xx() {
    let (app, bridge, game, cid) = setup(|_| {}).await;
    let stop = stop_path(&game);
    let auth = (
        "Authorization".to_string(),
        format!("Bearer {}", bridge.token),
    );
    let (json, admin) = (
        Some("application/json"),
        br#"{"reason":"admin"}"#.as_slice(),
    );
    let long_id = format!("{RUNTIMES}/{}/stop", "a".repeat(200));
    /// Path, Content-Type, X-Request-Id, body and the expected status.
    type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8], u16);
    let cases: [Case; 16] = [
        (&stop, json, None, b"{not json", 400),
        (&stop, json, None, b"[1]", 400),
        (&stop, json, None, br#"{"reason":"reboot"}"#, 400),
        (
            &stop,
            json,
            None,
            br#"{"reason":"admin","force":true}"#,
            400,
        ),
        (&stop, json, None, br#"{}"#, 400),
        (&stop, json, None, br#"{"reason":7}"#, 400),
        (&stop, None, None, admin, 415),
        (&stop, Some("text/plain"), None, admin, 415),
        (&stop, json, None, &[b' '; 20_000], 413),
        (&format!("{RUNTIMES}/bad%20id/stop"), json, None, admin, 400),
        (&format!("{RUNTIMES}/-x/stop"), json, None, admin, 400),
        (&long_id, json, None, admin, 400),
        (
            &format!("{RUNTIMES}/{game}/start"),
            json,
            None,
            br#"{"image_ref":"no spaces"}"#,
            400,
        ),
        (
            &format!("{RUNTIMES}/{game}/restart"),
            json,
            None,
            br#"{"image_ref":"x"}"#,
            400,
        ),
        (&stop, json, Some("has space"), admin, 400),
        (
            &format!("{RUNTIMES}/{game}/explode"),
            json,
            None,
            b"{}",
            404,
        ),
    ];
    for (path, content_type, request_id, body, status) in cases {
        let mut headers = vec![auth.clone()];
        headers.extend(content_type.map(|t| ("Content-Type".to_string(), t.to_string())));
        headers.extend(request_id.map(|id| ("X-Request-Id".to_string(), id.to_string())));
        let out = bridge.raw("POST", path, &headers, body).await;
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
        // The bridge started the stop: it holds the game's lease.
        app.await_lease(&game).await;
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
    let (_app, bridge, game, _) = setup(|_| {}).await;
    post(&bridge, &game, "stop", Some(r#"{"reason":"timeout"}"#)).await;

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
