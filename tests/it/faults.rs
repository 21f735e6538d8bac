//! Worker crash at every step: a worker aborts right after one step's side effect (the
//! `RTMANAGER_FAULTS` hook of debug builds), a fresh worker finishes the operation, and the end
//! state is checked: exactly one audit row per operation, no duplicate health event, one
//! container, the lease released.

use crate::common;

use crate::common::{assert_outcome, image_json, stop_json, TestApp};
use rtmanager_domain::{OpKind, Outcome, RuntimeStatus};

async fn app() -> TestApp {
    TestApp::spawn_without_worker(|_| {}).await
}

async fn check_stop_crash(step: &str) {
    let mut app = app().await;
    let (game, cid) = app.running_game("crash-stop").await;

    let out = app.crash_after(step, OpKind::Stop, &stop_json(&game)).await;

    assert_eq!(out.outcome, Outcome::Success, "{step}: {out:?}");
    assert_eq!(app.status(&game).await, RuntimeStatus::Stopped, "{step}");
    assert_eq!(app.container_running(&cid).await, Some(false), "{step}");
    app.assert_ran_once(&game, step).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_survives_a_crash_after_acquiring_the_lease() {
    check_stop_crash("AcquireLease").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_survives_a_crash_after_loading_the_record() {
    check_stop_crash("LoadRecord").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_survives_a_crash_after_the_docker_stop() {
    check_stop_crash("StopContainer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_survives_a_crash_after_the_compare_and_swap() {
    check_stop_crash("UpdateStatus").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_survives_a_crash_after_the_audit_row() {
    check_stop_crash("AppendOperationLog").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_survives_a_crash_after_releasing_the_lease() {
    check_stop_crash("ReleaseLease").await;
}

/// A vanished stop (its container removed first) rerun after a crash at `step`: it ends
/// `removed` with one health event and one audit row, both naming the container, and the lease
/// released. Returns the app and the game for the caller's own checks.
async fn check_vanished_crash(step: &str) -> (TestApp, String) {
    let mut app = app().await;
    let (game, cid) = app.vanished_game("crash-vanish").await;

    let out = app.crash_after(step, OpKind::Stop, &stop_json(&game)).await;

    assert_outcome(&out, Outcome::Success, None);
    let record = app.record(&game).await.unwrap();
    assert_eq!(record.status, RuntimeStatus::Removed);
    let events = app.disappeared_events().await;
    assert_eq!(events.len(), 1, "no duplicate health event: {events:?}");
    assert_eq!(
        events[0]["container_id"], cid,
        "the event names the container"
    );
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1);
    let row_names = rows[0].refs.container_id.as_deref();
    assert_eq!(row_names, Some(cid.as_str()), "the row names it too");
    assert_eq!(app.lease_holder(&game).await, None);
    (app, game)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_stop_publishes_once_despite_a_crash_after_publishing() {
    check_vanished_crash("PublishHealth").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_stop_rerun_after_the_removal_names_the_container_it_found() {
    // The removal CAS clears the record's container; the re-run after a crash right after it
    // must still name the container in its health event and audit row.
    let (app, game) = check_vanished_crash("UpdateStatus").await;

    let record = app.record(&game).await.unwrap();
    assert_eq!(
        record.current_container_id, None,
        "a removed record has no container"
    );
    let events = app.disappeared_events().await;
    assert_eq!(events[0]["event_type"], "container_disappeared");
}

async fn check_start_crash(step: &str) {
    let mut app = app().await;
    let game = app.new_game("crash-start");
    // A stopped game with an old container, so the start also removes a superseded one.
    let old = app.game_container(&game, None).await;
    app.insert_record(&game, "stopped", Some(&old)).await;
    let input = image_json(&game, &common::game_image());

    let out = app.crash_after(step, OpKind::Start, &input).await;

    assert_outcome(&out, Outcome::Success, None);
    let record = app.record(&game).await.unwrap();
    assert_eq!(record.status, RuntimeStatus::Running, "{step}");
    let containers = app.containers_of(&game).await;
    assert_eq!(
        containers,
        vec![(record.current_container_id.unwrap(), true)],
        "{step}: one container"
    );
    app.assert_ran_once(&game, step).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_survives_a_crash_after_creating_the_container() {
    check_start_crash("EnsureContainer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_survives_a_crash_after_recording_it_running() {
    check_start_crash("RecordRunning").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_survives_a_crash_after_removing_the_old_container() {
    check_start_crash("RemoveStaleContainers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_survives_a_crash_after_the_audit_row() {
    check_start_crash("AppendOperationLog").await;
}

async fn check_restart_crash(step: &str) {
    let mut app = app().await;
    let (game, _) = app.running_game("crash-restart").await;
    let input = format!(r#"{{"game_id":"{game}","op_source":"admin","source_ref":"r-1"}}"#);

    let out = app.crash_after(step, OpKind::Restart, &input).await;

    assert_eq!(out.outcome, Outcome::Success, "{step}: {out:?}");
    let record = app.record(&game).await.unwrap();
    assert_eq!(record.status, RuntimeStatus::Running);
    assert_eq!(
        app.containers_of(&game).await,
        vec![(record.current_container_id.unwrap(), true)],
        "{step}"
    );
    let rows = app.op_log(&game).await;
    let kinds: Vec<_> = rows.iter().map(|r| r.op_kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["stop", "start", "restart"],
        "{step}: one row per operation"
    );
    assert!(rows
        .iter()
        .all(|r| r.refs.source_ref.as_deref() == Some("r-1")));
    assert_eq!(app.lease_holder(&game).await, None, "{step}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_survives_a_crash_between_its_children() {
    // The stop child's audit row is its last step: the crash falls between the two children.
    check_restart_crash("AppendOperationLog").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_survives_a_crash_inside_the_start_child() {
    check_restart_crash("EnsureContainer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_survives_a_crash_inside_the_stop_child() {
    let mut app = app().await;
    let (game, _) = app.running_game("crash-patch").await;
    let target = "rtmanager-game:v2";

    let out = app
        .crash_after("StopContainer", OpKind::Patch, &image_json(&game, target))
        .await;

    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    let record = app.record(&game).await.unwrap();
    assert_eq!(record.current_image_ref.as_deref(), Some(target));
    assert_eq!(app.containers_of(&game).await.len(), 1);
    assert_eq!(app.op_log(&game).await.len(), 3);
    assert_eq!(app.lease_holder(&game).await, None);
}
