//! StartRuntime, RestartRuntime and PatchRuntime on the real stack: starts and their replays
//! and conflicts, children under the parent's lease, patch rollback, cancellation, fencing of a
//! stale lease holder, and leases that outlive long Docker steps.

use crate::common;

use std::time::Duration;

use crate::common::{
    cancel_and_finish, eventually, finish_within, image_json, restart_json, unique, worker_process,
    worker_process_with, TestApp,
};
use rtmanager::client::Handle;
use rtmanager_domain::{ErrorCode, OpKind, Outcome, RuntimeStatus};
use temporalio_client::{UntypedWorkflow, WorkflowFetchHistoryOptions};

/// A second tag of the game image, so a patch has somewhere to go.
async fn patch_image(app: &TestApp) -> String {
    let tag = "patch-target";
    app.docker
        .tag_image(
            &common::game_image(),
            Some(bollard::query_parameters::TagImageOptions {
                repo: Some("rtmanager-game".into()),
                tag: Some(tag.into()),
            }),
        )
        .await
        .expect("tag the game image");
    format!("rtmanager-game:{tag}")
}

/// An image whose command exits at once, committed from a container of the game image: a start
/// of it dies at start. The caller removes it.
async fn exiting_image(app: &mut TestApp) -> &'static str {
    let container = app
        .game_container(&unique("builder"), Some(vec!["true"]))
        .await;
    app.docker
        .commit_container(
            bollard::query_parameters::CommitContainerOptions {
                container: Some(container),
                repo: Some("rtmanager-game".into()),
                tag: Some("exits".into()),
                changes: Some("CMD [\"/bin/true\"]".into()),
                ..Default::default()
            },
            bollard::models::ContainerConfig::default(),
        )
        .await
        .expect("commit an image that exits");
    "rtmanager-game:exits"
}

/// A worker whose leases live 5 s and a slow game (its stop takes `stop_timeout`): the set-up
/// of the tests of a lease renewed while Docker works. Returns the app and the game.
async fn short_lease_slow_game(prefix: &str, stop_timeout: Duration) -> (TestApp, String) {
    let mut app = TestApp::spawn_with(|c| {
        c.lease_ttl = Duration::from_secs(5);
        c.stop_timeout = stop_timeout;
    })
    .await;
    let (game, _) = app.slow_game(prefix).await;
    (app, game)
}

/// The child `kind` (`stop` or `start`) of the restart or patch `parent`, by its derived id.
fn child_of(app: &TestApp, parent: &str, kind: &str) -> Handle {
    let id = format!("{parent}/{kind}");
    app.client.get_workflow_handle::<UntypedWorkflow>(id)
}

/// The workflow's whole history as JSON text, for tests that look for ids in it.
async fn history_json(handle: &Handle) -> String {
    let history = handle.fetch_history(WorkflowFetchHistoryOptions::default());
    String::from_utf8(history.to_json().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_creates_a_labelled_container_and_replays() {
    let mut app = TestApp::spawn().await;
    let game = app.new_game("start");
    let image = common::game_image();

    let out = app.start(&game, &image).await;

    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    let record = out.record.unwrap();
    assert_eq!(record.status, RuntimeStatus::Running);
    assert_eq!(record.current_image_ref.as_deref(), Some(image.as_str()));
    let cid = record.current_container_id.clone().unwrap();
    assert_eq!(app.containers_of(&game).await, vec![(cid.clone(), true)]);
    let labels = app
        .docker
        .inspect_container(&cid, None)
        .await
        .unwrap()
        .config
        .unwrap()
        .labels
        .unwrap();
    assert_eq!(labels["rtmanager.game_id"], game);
    assert_eq!(labels["rtmanager.managed"], "true");
    assert_eq!(app.record(&game).await.unwrap(), record);
    assert_eq!(app.lease_holder(&game).await, None);

    let again = app.start(&game, &image).await;
    assert_eq!(again.error_code, Some(ErrorCode::ReplayNoOp), "{again:?}");
    assert_eq!(
        app.containers_of(&game).await.len(),
        1,
        "no second container"
    );

    let other = patch_image(&app).await;
    let conflict = app.start(&game, &other).await;
    assert_eq!(
        conflict.error_code,
        Some(ErrorCode::Conflict),
        "{conflict:?}"
    );
    assert!(conflict.error_message.unwrap().contains("patch it"));
    assert_eq!(app.containers_of(&game).await.len(), 1);

    let kinds: Vec<_> = app
        .op_log(&game)
        .await
        .into_iter()
        .map(|r| (r.op_kind, r.result.error_code))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("start".into(), None),
            ("start".into(), Some("replay_no_op".into())),
            ("start".into(), Some("conflict".into())),
        ]
    );
    assert_eq!(
        app.telemetry
            .operation_outcome_count("start", "success", "admin"),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_stopped_game_replaces_its_old_container() {
    let mut app = TestApp::spawn().await;
    let (game, first) = app.started_game("restart-stopped").await;
    assert!(app.stop(&game).await.is_success());

    let second = app.start(&game, &common::game_image()).await;

    assert!(second.is_success(), "{second:?}");
    let second = second.record.unwrap();
    assert_ne!(second.current_container_id, first.current_container_id);
    assert!(second.stopped_at.is_none());
    let containers = app.containers_of(&game).await;
    assert_eq!(
        containers,
        vec![(second.current_container_id.unwrap(), true)],
        "old one removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_not_found_and_leaves_nothing() {
    let mut app = TestApp::spawn().await;
    let game = app.new_game("noimage");
    let out = app.start(&game, "rtmanager-game:does-not-exist").await;
    assert_eq!(out.error_code, Some(ErrorCode::NotFound), "{out:?}");
    assert!(out.error_message.unwrap().contains("not available"));
    assert!(app.containers_of(&game).await.is_empty());
    assert!(app.record(&game).await.is_none());
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_reference_docker_rejects_is_invalid_at_once() {
    let mut app = TestApp::spawn().await;
    let game = app.new_game("badref");
    let started = std::time::Instant::now();
    // Docker wants lowercase repository names: refused by the reference grammar at once.
    let out = app.start(&game, "Rtmanager-Game:dev").await;
    assert_eq!(
        out.error_code,
        Some(rtmanager_domain::ErrorCode::InvalidRequest),
        "{out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "not retried as if Docker were down"
    );
    assert!(app.containers_of(&game).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_dies_at_start_is_a_failure_and_removed() {
    let mut app = TestApp::spawn().await;
    let image = exiting_image(&mut app).await;
    let game = app.new_game("crashes");

    let out = app.start(&game, image).await;

    assert_eq!(out.error_code, Some(ErrorCode::InvalidRequest), "{out:?}");
    assert!(out.error_message.unwrap().contains("exited"));
    assert!(app.containers_of(&game).await.is_empty());
    assert!(app.record(&game).await.is_none());
    // Leave no image behind (a dangling one would answer to short id prefixes).
    let _ = app
        .docker
        .remove_image(
            image,
            Some(bollard::query_parameters::RemoveImageOptions {
                force: true,
                ..Default::default()
            }),
            None,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_runs_stop_and_start_as_children_sharing_one_source_ref() {
    let mut app = TestApp::spawn().await;
    let (game, before) = app.started_game("restart").await;

    let workflow_id = unique("restart");
    let input = format!(r#"{{"game_id":"{game}","op_source":"rest","source_ref":"req-77"}}"#);
    let handle = app
        .start_workflow_as(OpKind::Restart, &workflow_id, &input)
        .await;
    let out = rtmanager::client::result(&handle).await.unwrap();

    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    let after = out.record.unwrap();
    assert_eq!(after.status, RuntimeStatus::Running);
    assert_eq!(after.current_image_ref, before.current_image_ref);
    assert_ne!(after.current_container_id, before.current_container_id);
    assert_eq!(
        app.containers_of(&game).await,
        vec![(after.current_container_id.clone().unwrap(), true)]
    );

    let rows: Vec<_> = app.op_log(&game).await.into_iter().skip(1).collect();
    let kinds: Vec<_> = rows.iter().map(|r| r.op_kind.as_str()).collect();
    assert_eq!(kinds, ["stop", "start", "restart"]);
    assert!(rows
        .iter()
        .all(|r| r.refs.source_ref.as_deref() == Some("req-77") && r.result.outcome == "success"));
    assert_eq!(app.lease_holder(&game).await, None);

    // The children are children of the parent, with ids derived from the parent's.
    let history = history_json(&handle).await;
    for child in ["stop", "start"] {
        assert!(
            history.contains(&format!("\"{workflow_id}/{child}\"")),
            "no child {child}"
        );
    }
    let child_history = history_json(&child_of(&app, &workflow_id, "stop")).await;
    let parent = child_history
        .split("\"parent_workflow_execution\":")
        .nth(1)
        .map(|rest| rest.chars().take(200).collect::<String>())
        .unwrap_or_default();
    assert!(parent.contains(&workflow_id), "parent not named: {parent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_replaces_the_image_and_removes_the_old_container() {
    let mut app = TestApp::spawn().await;
    let (game, before) = app.started_game("patch").await;
    let target = patch_image(&app).await;

    let out = app.patch(&game, &target).await;

    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    let after = out.record.unwrap();
    assert_eq!(after.current_image_ref.as_deref(), Some(target.as_str()));
    let old = before.current_container_id.unwrap();
    assert!(
        app.docker.inspect_container(&old, None).await.is_err(),
        "old container removed"
    );
    assert_eq!(app.containers_of(&game).await.len(), 1);
    let rows = app.op_log(&game).await;
    let source_refs: Vec<_> = rows
        .iter()
        .skip(1)
        .map(|r| r.refs.source_ref.clone())
        .collect();
    assert!(
        source_refs
            .iter()
            .all(|s| s.is_some() && *s == source_refs[0]),
        "{source_refs:?}"
    );

    let again = app.patch(&game, &target).await;
    assert_eq!(again.error_code, Some(ErrorCode::ReplayNoOp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_to_a_broken_image_rolls_back() {
    let mut app = TestApp::spawn().await;
    let (game, _) = app.started_game("rollback").await;
    let image = common::game_image();

    let out = app
        .execute(
            OpKind::Patch,
            &format!(
                r#"{{"game_id":"{game}","image_ref":"rtmanager-game:broken","op_source":"admin","source_ref":"p-1"}}"#
            ),
        )
        .await;

    assert_eq!(out.outcome, Outcome::Failure, "{out:?}");
    assert_eq!(out.error_code, Some(ErrorCode::NotFound));
    let message = out.error_message.unwrap();
    assert!(message.contains("rolled back to"), "{message}");
    let record = app.record(&game).await.unwrap();
    assert_eq!(record.status, RuntimeStatus::Running);
    assert_eq!(record.current_image_ref.as_deref(), Some(image.as_str()));
    assert_eq!(
        app.containers_of(&game).await,
        vec![(record.current_container_id.unwrap(), true)]
    );
    let rows: Vec<_> = app.op_log(&game).await.into_iter().skip(1).collect();
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r.op_kind.as_str(), r.result.outcome.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("stop", "success"),
            ("start", "failure"),
            ("start", "success"),
            ("patch", "failure")
        ]
    );
    assert!(rows[3]
        .result
        .error_message
        .as_deref()
        .unwrap()
        .contains("rolled back"));
    assert!(rows
        .iter()
        .all(|r| r.refs.source_ref.as_deref() == Some("p-1")));
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_restart_releases_the_lease_and_leaves_nothing_running() {
    let mut app = TestApp::spawn_with(|c| c.stop_timeout = Duration::from_secs(60)).await;
    let (game, cid) = app.slow_game("cancel-restart").await;

    let workflow_id = unique("restart");
    let handle = app
        .start_workflow_as(OpKind::Restart, &workflow_id, &restart_json(&game))
        .await;
    // Cancelled while its stop child is inside the Docker stop.
    app.await_stop_signal(&cid).await;

    let out = cancel_and_finish(&handle, "the cancelled restart completes").await;
    assert_eq!(out.outcome, Outcome::Failure, "{out:?}");
    assert_eq!(app.lease_holder(&game).await, None, "lease released");
    let child = child_of(&app, &workflow_id, "stop");
    let child_out = tokio::time::timeout(Duration::from_secs(10), async {
        child.get_result(Default::default()).await
    })
    .await
    .expect("the child is not left running");
    assert!(child_out.is_ok(), "the child completed: {child_out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_start_is_a_conflict() {
    // A long settle time keeps the start (and its lease) busy for a while.
    let mut app = TestApp::spawn_with(|c| c.start_settle = Duration::from_secs(3)).await;
    let game = app.new_game("stop-during-start");
    let image = common::game_image();
    let start = app.start(&game, &image);
    let stop = async {
        app.await_lease(&game).await;
        app.stop(&game).await
    };
    let (started, stopped) = tokio::join!(start, stop);
    assert!(started.is_success(), "{started:?}");
    assert_eq!(stopped.error_code, Some(ErrorCode::Conflict), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_longer_than_the_lease_ttl_keeps_its_lease() {
    let (app, game) = short_lease_slow_game("long-stop", Duration::from_secs(9)).await;

    let watch = async {
        let holder = app.lease_holder(&game).await.expect("the stop's lease");
        // Deliberately lets time pass: the point is that the lease is still held 2 s after its
        // 5 s TTL would have run out, which no poll can show sooner.
        tokio::time::sleep(Duration::from_secs(7)).await;
        app.lease_holder(&game).await == Some(holder)
    };
    let (out, still_held) = app.stop_meanwhile(&game, watch).await;
    assert!(still_held, "the lease outlived its TTL while Docker worked");
    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_lost_its_lease_does_not_renew_it() {
    let (app, game) = short_lease_slow_game("lost-lease", Duration::from_secs(20)).await;

    let steal = app.hold_lease(&game, "1:intruder");
    let (out, ()) = app.stop_meanwhile(&game, steal).await;
    assert_eq!(out.error_code, Some(ErrorCode::Conflict), "{out:?}");
    assert!(out.error_message.unwrap().contains("lease was lost"));
    assert_eq!(
        app.lease_holder(&game).await.as_deref(),
        Some("1:intruder"),
        "not renewed nor released"
    );
    assert_eq!(app.status(&game).await, RuntimeStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_is_fenced_off() {
    // Worker A stalls after creating its container, long enough for its lease to expire; a newer
    // holder (worker B) starts and stops the game meanwhile. A's late write must be refused.
    let mut app = TestApp::spawn_without_worker(|c| {
        c.lease_ttl = Duration::from_secs(5);
        // A worker process refuses a lease TTL within the graceful stop timeout or the
        // lock-delay.
        c.stop_timeout = Duration::from_secs(2);
        c.lease_lock_delay = Duration::from_millis(2500);
    })
    .await;
    let stale_config = app.config().clone();
    let game = app.new_game("fenced");
    let image = common::game_image();

    let mut stale_worker = worker_process_with(
        &stale_config,
        &[("RTMANAGER_FAULTS", "after:EnsureContainer=sleep:9000")],
    );
    let stale = app
        .start_workflow(OpKind::Start, &image_json(&game, &image))
        .await;
    eventually(
        "the stale start's container",
        Duration::from_secs(20),
        || async { (!app.containers_of(&game).await.is_empty()).then_some(()) },
    )
    .await;
    eventually(
        "the stale lease to expire",
        Duration::from_secs(10),
        || async { app.lease_holder(&game).await.is_none().then_some(()) },
    )
    .await;

    // Worker B, on its own task queue, with the same database and Redis.
    app.cfg.config.task_queue = format!("{}-b", stale_config.task_queue);
    // A host of its own too: the stale worker still heartbeats the first one.
    app.cfg.config.host_id = rtmanager_domain::HostId::parse("b").unwrap();
    app.start_worker();
    assert!(app.start(&game, &image).await.is_success());
    assert!(app.stop(&game).await.is_success());

    let out = finish_within(&stale, Duration::from_secs(60), "the stale start completes").await;
    let _ = stale_worker.kill();

    assert_eq!(out.error_code, Some(ErrorCode::Conflict), "{out:?}");
    assert!(out
        .error_message
        .unwrap()
        .contains("stale write was refused"));
    let record = app.record(&game).await.unwrap();
    assert_eq!(
        record.status,
        RuntimeStatus::Stopped,
        "the newer holder's state stands"
    );
    let running: Vec<_> = app
        .containers_of(&game)
        .await
        .into_iter()
        .filter(|c| c.1)
        .collect();
    assert!(
        running.is_empty(),
        "the stale container was removed: {running:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_create_and_record_converges_to_one_container() {
    let mut app = TestApp::spawn_without_worker(|_| {}).await;
    let game = app.new_game("crash-start");
    let image = common::game_image();

    let mut first = worker_process_with(
        app.config(),
        &[("RTMANAGER_FAULTS", "after:EnsureContainer=abort")],
    );
    let handle = app
        .start_workflow(OpKind::Start, &image_json(&game, &image))
        .await;
    let status = first.exit_status("the worker to abort").await;
    assert!(
        !status.success(),
        "the worker crashed after creating the container"
    );
    assert_eq!(
        app.containers_of(&game).await.len(),
        1,
        "created, not recorded"
    );
    assert!(app.record(&game).await.is_none());

    let mut second = worker_process(app.config());
    let what = "the start completes on a new worker";
    let out = finish_within(&handle, Duration::from_secs(90), what).await;
    let _ = second.kill();

    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    let record = out.record.unwrap();
    assert_eq!(
        app.containers_of(&game).await,
        vec![(record.current_container_id.unwrap(), true)]
    );
    assert_eq!(app.op_log(&game).await.len(), 1);
    assert_eq!(app.lease_holder(&game).await, None);
}
