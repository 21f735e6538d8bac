//! The `temporal` CLI as a client: `temporal workflow execute --type StopRuntime --input ...`
//! returns the contract JSON, and bad input completes with `invalid_request` within seconds.

use crate::common;

use std::time::Duration;

use crate::common::{image_json, restart_json, run_ok, stop_json, unique, TestApp};

fn execute(app: &TestApp, input: &str) -> serde_json::Value {
    execute_type(app, "StopRuntime", input)
}

/// Runs `temporal workflow execute` for `workflow_type`; the CLI must succeed and the workflow
/// complete (a business failure is a completed workflow too). Returns the workflow's output.
fn execute_type(app: &TestApp, workflow_type: &str, input: &str) -> serde_json::Value {
    let out = run_ok(
        common::temporal_command(app.config(), &["workflow", "execute"])
            .args(["--task-queue", &app.config().task_queue])
            .args(["--type", workflow_type, "--workflow-id", &unique("cli")])
            .args(["--input", input, "--output", "json"]),
        "the temporal CLI",
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(doc["status"], "COMPLETED", "{doc}");
    doc["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_temporal_cli_stops_a_game_and_replays() {
    let mut app = TestApp::spawn().await;
    let (game, _) = app.running_game("cli").await;
    let input = stop_json(&game);

    let first = tokio::task::block_in_place(|| execute(&app, &input));
    assert_eq!(first["outcome"], "success", "{first}");
    assert_eq!(first["error_code"], serde_json::Value::Null);
    assert_eq!(first["record"]["status"], "stopped");
    assert_eq!(first["record"]["game_id"], game.as_str());
    for key in [
        "current_container_id",
        "current_image_ref",
        "started_at",
        "stopped_at",
        "removed_at",
        "last_op_at",
    ] {
        assert!(
            first["record"].get(key).is_some(),
            "record lacks {key}: {first}"
        );
    }

    let again = tokio::task::block_in_place(|| execute(&app, &input));
    assert_eq!(again["outcome"], "success");
    assert_eq!(again["error_code"], "replay_no_op");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_through_the_cli_is_invalid_request_within_seconds() {
    let app = TestApp::spawn().await;
    let started = std::time::Instant::now();
    for input in [
        r#"{"game_id":"no spaces allowed","reason":"admin","op_source":"admin"}"#,
        r#"{"game_id":"g","reason":42,"op_source":"admin"}"#,
        r#"{"gameid":"g"}"#,
    ] {
        let result = tokio::task::block_in_place(|| execute(&app, input));
        assert_eq!(result["outcome"], "failure", "{result}");
        assert_eq!(result["error_code"], "invalid_request", "{result}");
        assert_eq!(result["record"], serde_json::Value::Null);
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_temporal_cli_starts_restarts_and_patches() {
    let mut app = TestApp::spawn().await;
    let game = app.new_game("cli-life");
    let image = common::game_image();
    let exec = |workflow_type: &str, input: String| execute_type(&app, workflow_type, &input);

    let started = tokio::task::block_in_place(|| exec("StartRuntime", image_json(&game, &image)));
    assert_eq!(started["outcome"], "success", "{started}");
    let restarted = tokio::task::block_in_place(|| exec("RestartRuntime", restart_json(&game)));
    assert_eq!(restarted["outcome"], "success", "{restarted}");
    assert_ne!(
        restarted["record"]["current_container_id"],
        started["record"]["current_container_id"]
    );
    let nope = image_json(&game, "rtmanager-game:nope");
    let patched = tokio::task::block_in_place(|| exec("PatchRuntime", nope));
    assert_eq!(patched["outcome"], "failure", "{patched}");
    assert!(patched["error_message"]
        .as_str()
        .unwrap()
        .contains("rolled back"));
}
