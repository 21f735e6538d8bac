//! The same operations with every step a normal activity (`RTMANAGER_LOCAL_FAST_STEPS=false`,
//! `RTMANAGER_LOCAL_DOCKER_STEPS=false`): what an operator switches to in order to see pending
//! activities and their retries in the Web UI. Each step is then scheduled through the server,
//! and a crashed worker's step is retried elsewhere after its heartbeat timeout.

use crate::common;

use crate::common::{assert_outcome, restart_json, run_ok, stop_json, TestApp};
use rtmanager_domain::{OpKind, Outcome, RuntimeStatus};

fn normal_steps(config: &mut rtmanager::Config) {
    config.local_fast_steps = false;
    config.local_docker_steps = false;
}

/// The activity types scheduled as normal activities in a workflow's history.
async fn scheduled_activities(app: &TestApp, workflow_id: &str) -> Vec<String> {
    let config = app.config();
    let output = run_ok(
        common::temporal_command(config, &["workflow", "show", "--output", "json"])
            .args(["--namespace", &config.namespace])
            .args(["--workflow-id", workflow_id]),
        "temporal workflow show",
    );
    let history: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| {
            event["activityTaskScheduledEventAttributes"]["activityType"]["name"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_restart_and_patch_run_with_normal_activities() {
    let mut app = TestApp::spawn_with(normal_steps).await;
    let game = app.new_game("normal");
    let image = common::game_image();

    let out = app.start(&game, &image).await;
    assert_outcome(&out, Outcome::Success, None);

    let handle = app.start_workflow(OpKind::Stop, &stop_json(&game)).await;
    let out = rtmanager::client::result(&handle).await.unwrap();
    assert_outcome(&out, Outcome::Success, None);
    let steps = scheduled_activities(&app, &handle.info().workflow_id).await;
    for step in [
        "AcquireLease",
        "LoadRecord",
        "StopContainer",
        "UpdateStatus",
        "AppendOperationLog",
        "ReleaseLease",
    ] {
        assert!(
            steps.iter().any(|s| s == step),
            "{step} scheduled as an activity: {steps:?}"
        );
    }

    let out = app.execute(OpKind::Restart, &restart_json(&game)).await;
    assert_outcome(&out, Outcome::Success, None);
    let out = app.patch(&game, "rtmanager-game:v2").await;
    assert_outcome(&out, Outcome::Success, None);
    let record = app.record(&game).await.unwrap();
    assert_eq!(
        record.current_image_ref.as_deref(),
        Some("rtmanager-game:v2")
    );
    assert_eq!(app.containers_of(&game).await.len(), 1);
    let kinds: Vec<String> = app
        .op_log(&game)
        .await
        .into_iter()
        .map(|r| r.op_kind)
        .collect();
    assert_eq!(
        kinds,
        ["start", "stop", "stop", "start", "restart", "stop", "start", "patch"]
    );
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vanished_path_runs_with_normal_activities() {
    let mut app = TestApp::spawn_with(normal_steps).await;
    let (game, cid) = app.vanished_game("normal-vanish").await;

    let out = app.stop(&game).await;

    assert_outcome(&out, Outcome::Success, None);
    assert_eq!(app.status(&game).await, RuntimeStatus::Removed);
    let events = app.disappeared_events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["container_id"], cid);
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_docker_stop_is_retried_elsewhere_with_normal_activities() {
    let mut app = TestApp::spawn_without_worker(normal_steps).await;
    let (game, cid) = app.running_game("normal-crash").await;

    let out = app
        .crash_after("StopContainer", OpKind::Stop, &stop_json(&game))
        .await;

    assert_outcome(&out, Outcome::Success, None);
    assert_eq!(app.status(&game).await, RuntimeStatus::Stopped);
    assert_eq!(app.container_running(&cid).await, Some(false));
    app.assert_ran_once(&game, "after the crash").await;
}
