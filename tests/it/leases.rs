//! The game lease against forged, stale and orphaned holders: an inherited `lease_token` must be
//! the one Redis holds, a record wedged by a fence no lease can reach is repaired by
//! `rtmanager reset-fence`, and a lease whose holder workflow closed is taken over after the
//! lock-delay instead of the TTL.

use crate::common;

use std::time::{Duration, Instant};

use crate::common::{
    assert_outcome, image_json, rtmanager_command, run_ok, stop_json, worker_process,
    worker_process_with, TestApp,
};
use rtmanager_domain::{ErrorCode, OpKind, Outcome};
use temporalio_client::WorkflowTerminateOptions;

/// A fence near the top of the column: what a forged `"<n>:<x>"` token would carry.
const FORGED_FENCE: i64 = i64::MAX - 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_inherited_token_is_a_conflict_that_writes_nothing() {
    let mut app = TestApp::spawn().await;
    let (game, _) = app.started_game("forged").await;
    let image = common::game_image();
    let record = app.record(&game).await.unwrap();
    let container = record.current_container_id.clone().unwrap();
    let fence_before = app.record_fence(&game).await;
    let forged = format!("{FORGED_FENCE}:not-issued-by-rtmanager");

    // A plain stop's and a plain start's input, each carrying the forged token.
    let forging = |json: String| json.replace('}', &format!(r#","lease_token":"{forged}"}}"#));
    let stop = app.stop_raw(&forging(stop_json(&game))).await;
    let start_input = forging(image_json(&game, "rtmanager-game:v2"));
    let start = app.execute(OpKind::Start, &start_input).await;

    for out in [&stop, &start] {
        assert_outcome(out, Outcome::Failure, Some(ErrorCode::Conflict));
        assert!(
            out.error_message
                .as_deref()
                .unwrap()
                .contains("not the game's current lease"),
            "{out:?}"
        );
    }
    assert_eq!(
        app.record_fence(&game).await,
        fence_before,
        "fence untouched"
    );
    assert_eq!(app.record(&game).await.unwrap(), record, "record untouched");
    assert_eq!(app.container_running(&container).await, Some(true));
    assert_eq!(
        app.containers_of(&game).await.len(),
        1,
        "no container created"
    );
    assert_eq!(
        app.lease_holder(&game).await,
        None,
        "no lease taken or left"
    );

    // The game still stops and starts normally.
    let out = app.stop(&game).await;
    assert_outcome(&out, Outcome::Success, None);
    let out = app.start(&game, &image).await;
    assert_outcome(&out, Outcome::Success, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_inherited_token_is_a_conflict() {
    let mut app = TestApp::spawn().await;
    // A token that was real once: issued, then replaced by a newer holder's.
    let (game, cid) = app.leased_game("stale", "1000:newer-holder").await;

    let out = app.stop_inheriting(&game, "999:older-holder").await;

    app.assert_refused_by_lease(&out, &game, &cid, "1000:newer-holder")
        .await;
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1, "the refusal is audited");
    assert_eq!(rows[0].result.error_code.as_deref(), Some("conflict"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_fence_repairs_a_record_wedged_by_an_unreachable_fence() {
    let mut app = TestApp::spawn().await;
    let (game, _) = app.started_game("wedged").await;
    let image = common::game_image();
    assert!(app.stop(&game).await.is_success());
    // What a forged token wrote before inherited tokens were checked.
    app.set_record_fence(&game, FORGED_FENCE).await;
    let out = app.start(&game, &image).await;
    assert_eq!(out.error_code, Some(ErrorCode::Conflict), "wedged: {out:?}");

    let repaired = run_ok(
        rtmanager_command(app.config()).args(["--json", "reset-fence", &game]),
        "rtmanager reset-fence",
    );
    let report: serde_json::Value = serde_json::from_slice(&repaired.stdout).unwrap();
    assert_eq!(report["previous_fence"], FORGED_FENCE);
    let fence = app.record_fence(&game).await;
    assert!(fence > 0 && fence < FORGED_FENCE, "fence {fence}");
    assert_eq!(
        app.lease_holder(&game).await,
        None,
        "the repair released its lease"
    );

    let out = app.start(&game, &image).await;
    assert_outcome(&out, Outcome::Success, None);
    assert!(
        app.record_fence(&game).await > fence,
        "the next lease fences higher"
    );
    assert!(app.stop(&game).await.is_success());

    // A game without a record, and a bad id, are refused.
    let missing = rtmanager_command(app.config())
        .args(["reset-fence", "no-such-game"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let bad = rtmanager_command(app.config())
        .args(["reset-fence", "-bad id"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_holders_lease_is_taken_over_after_the_lock_delay() {
    let mut app = TestApp::spawn_without_worker(|c| {
        c.lease_ttl = Duration::from_secs(120);
        c.lease_lock_delay = Duration::from_millis(2500);
    })
    .await;
    let (game, cid) = app.running_game("orphan").await;

    // A stop that takes the lease, then stalls before Docker; the operator terminates it.
    let mut stalled = worker_process_with(
        app.config(),
        &[("RTMANAGER_FAULTS", "before:StopContainer=sleep:600000")],
    );
    let handle = app.start_workflow(OpKind::Stop, &stop_json(&game)).await;
    let dead_token = app.await_lease(&game).await;
    handle
        .terminate(
            WorkflowTerminateOptions::builder()
                .reason("operator gave up")
                .build(),
        )
        .await
        .unwrap();
    let _ = stalled.kill();
    assert_eq!(
        app.lease_holder(&game).await.as_deref(),
        Some(dead_token.as_str()),
        "left behind"
    );

    let mut worker = worker_process(app.config());
    let began = Instant::now();
    let out = app.stop(&game).await;
    let took = began.elapsed();
    let _ = worker.kill();

    assert_outcome(&out, Outcome::Success, None);
    assert!(
        took < Duration::from_secs(30),
        "taken over in {took:?}, not after the TTL"
    );
    assert_eq!(app.container_running(&cid).await, Some(false));
    assert_eq!(
        app.lease_holder(&game).await,
        None,
        "the new holder released it"
    );
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1, "the terminated stop wrote no row: {rows:?}");
    let dead_fence: i64 = dead_token.split(':').next().unwrap().parse().unwrap();
    assert!(
        app.record_fence(&game).await > dead_fence,
        "a higher fence than the dead holder's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_by_a_running_operation_is_not_taken_over() {
    let lock_delay = Duration::from_millis(2500);
    let mut app = TestApp::spawn_without_worker(|c| c.lease_lock_delay = lock_delay).await;
    let (game, _) = app.running_game("alive").await;
    let mut worker = worker_process_with(
        app.config(),
        &[("RTMANAGER_FAULTS", "before:StopContainer=sleep:4000")],
    );
    let first = app.stop_holding_lease(&game).await;

    let second = app.stop(&game).await;
    let first = rtmanager::client::result(&first).await.unwrap();
    let _ = worker.kill();

    assert_eq!(second.error_code, Some(ErrorCode::Conflict), "{second:?}");
    assert_outcome(&first, Outcome::Success, None);
}
