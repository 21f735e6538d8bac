//! The seed's branches the other suites do not reach: a compare-and-swap refused by a newer
//! fence, the vanished-container path meeting a moved, deleted or unwritable record, store
//! errors at the load and at the compare-and-swap, a container Docker reports already stopped,
//! and the best-effort steps (health publish, lease release) failing without changing the
//! outcome. Faults come from the real services (revoked privileges, a Redis key of the wrong
//! type) or, to hit a window between two steps, from a worker process stalled at a fault point.

use std::time::Duration;

use crate::common::{
    assert_outcome, finish_within, stop_json, worker_process_with, TestApp, STALLING,
};
use bollard::query_parameters::StopContainerOptions;
use diesel_async::RunQueryDsl;
use redis::AsyncCommands;
use rtmanager_domain::{ErrorCode, OpKind, OperationOutput, Outcome, RuntimeStatus};

/// A handle on the services without an in-process worker: the test runs a worker process that
/// stalls at a fault point.
async fn app() -> TestApp {
    TestApp::spawn_without_worker(|_| {}).await
}

/// [`app`] and a game in it whose container is already gone: the set-up of the tests that stall
/// the vanished path. Returns the app, the game and its (removed) container.
async fn vanished_game(prefix: &str) -> (TestApp, String, String) {
    let mut app = app().await;
    let (game, cid) = app.vanished_game(prefix).await;
    (app, game, cid)
}

/// Runs a stop on a worker process stalled by `fault`; `meanwhile` runs once the worker has
/// stalled `stalls` times there (each stall is long enough for it to act inside the window).
async fn stop_with_stall(
    app: &TestApp,
    game: &str,
    fault: &str,
    stalls: usize,
    meanwhile: impl std::future::Future<Output = ()>,
) -> OperationOutput {
    let worker = worker_process_with(app.config(), &[("RTMANAGER_FAULTS", fault)]);
    let handle = app.start_workflow(OpKind::Stop, &stop_json(game)).await;
    worker.await_log(STALLING, stalls).await;
    meanwhile.await;
    finish_within(&handle, Duration::from_secs(90), "the stop completes").await
}

/// A stall before the stop's compare-and-swap: its record is loaded, its Docker step done.
const BEFORE_THE_CAS: &str = "before:UpdateStatus=sleep:4000";

async fn sql(app: &TestApp, statement: &str) {
    diesel::sql_query(statement)
        .execute(&mut app.pg().await)
        .await
        .unwrap_or_else(|err| panic!("{statement}: {err}"));
}

/// A running game (its container gone first if `vanished`) stopped while the store refuses
/// `privilege` on runtime_records: the three store-error tests' common part. The stop fails as
/// `internal` at the step its message starts with, and releases the lease.
async fn stop_refused_by_the_store(
    privilege: &str,
    vanished: bool,
    step: &str,
) -> (TestApp, String, String) {
    let mut app = TestApp::spawn().await;
    let (game, cid) = if vanished {
        app.vanished_game("store-error").await
    } else {
        app.running_game("store-error").await
    };
    sql(
        &app,
        &format!("REVOKE {privilege} ON runtime_records FROM CURRENT_USER"),
    )
    .await;

    let out = app.stop(&game).await;

    assert_outcome(&out, Outcome::Failure, Some(ErrorCode::Internal));
    let message = out.error_message.unwrap();
    assert!(message.starts_with(step), "{message}");
    assert_eq!(app.lease_holder(&game).await, None);
    (app, game, cid)
}

/// Makes the health stream a string key: every XADD to it fails with WRONGTYPE.
async fn break_the_health_stream(app: &TestApp) {
    let stream = &app.config().health_stream;
    let _: () = app.redis.clone().set(stream, "not a stream").await.unwrap();
}

/// Removes the string key [`break_the_health_stream`] left: XADD creates the stream again.
async fn mend_the_health_stream(app: &TestApp) {
    let _: () = app
        .redis
        .clone()
        .del(&app.config().health_stream)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_swap_refused_by_a_newer_fence_is_a_conflict() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.running_game("newer-fence").await;
    // A newer lease holder wrote the record (its fence is above any this stop can get).
    app.set_record_fence(&game, i64::MAX - 1).await;

    let out = app.stop(&game).await;

    assert_outcome(&out, Outcome::Failure, Some(ErrorCode::Conflict));
    assert!(out
        .error_message
        .unwrap()
        .contains("stale write was refused"));
    assert_eq!(
        app.status(&game).await,
        RuntimeStatus::Running,
        "not written"
    );
    assert_eq!(app.record_fence(&game).await, i64::MAX - 1);
    let rows = app.op_log(&game).await;
    assert_eq!(rows[0].result.error_code.as_deref(), Some("conflict"));
    assert_eq!(rows[0].refs.container_id.as_deref(), Some(cid.as_str()));
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vanished_path_meeting_a_moved_record_is_a_replay_no_op() {
    let (app, game, _) = vanished_game("vanish-moved").await;

    let out = stop_with_stall(&app, &game, BEFORE_THE_CAS, 1, app.mark_stopped(&game)).await;

    assert_outcome(&out, Outcome::Success, Some(ErrorCode::ReplayNoOp));
    assert_eq!(
        out.record.unwrap().status,
        RuntimeStatus::Stopped,
        "the record as it is now"
    );
    assert!(
        app.disappeared_events().await.is_empty(),
        "nothing published: another path moved it"
    );
    let code = app.first_error_code(&game).await;
    assert_eq!(code.as_deref(), Some("replay_no_op"));
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vanished_path_meeting_a_deleted_record_still_reports_the_removal() {
    let (app, game, cid) = vanished_game("vanish-deleted").await;

    let out = stop_with_stall(&app, &game, BEFORE_THE_CAS, 1, app.delete_record(&game)).await;

    // The seed goes on: the container is gone and so is the row.
    assert_outcome(&out, Outcome::Success, None);
    let record = out.record.unwrap();
    assert_eq!(record.status, RuntimeStatus::Removed);
    assert_eq!(record.current_container_id, None);
    let events = app.disappeared_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event_type"], "container_disappeared");
    assert_eq!(events[0]["container_id"], cid);
    assert!(app.record(&game).await.is_none(), "no row is invented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vanished_path_meeting_a_store_error_is_internal() {
    let prefix = "update runtime status to removed:";
    let (app, game, _) = stop_refused_by_the_store("UPDATE", true, prefix).await;

    assert_eq!(app.status(&game).await, RuntimeStatus::Running);
    assert!(
        app.disappeared_events().await.is_empty(),
        "no event for a removal not recorded"
    );
    let code = app.first_error_code(&game).await;
    assert_eq!(code.as_deref(), Some("internal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_cannot_be_loaded_is_internal() {
    let (app, game, cid) = stop_refused_by_the_store("SELECT", false, "load runtime record:").await;
    let docker_untouched = app.container_running(&cid).await;
    assert_eq!(docker_untouched, Some(true), "Docker untouched");

    // Once the store answers again, the same stop goes through.
    sql(&app, "GRANT SELECT ON runtime_records TO CURRENT_USER").await;
    let out = app.stop(&game).await;
    assert_outcome(&out, Outcome::Success, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_swap_store_error_is_internal() {
    let prefix = "update runtime status:";
    let (app, game, cid) = stop_refused_by_the_store("UPDATE", false, prefix).await;

    let docker_stopped = app.container_running(&cid).await;
    assert_eq!(docker_stopped, Some(false), "Docker stopped it");
    assert_eq!(
        app.status(&game).await,
        RuntimeStatus::Running,
        "not recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_docker_reports_already_stopped_is_a_successful_stop() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.running_game("already-stopped").await;
    app.docker
        .stop_container(&cid, None::<StopContainerOptions>)
        .await
        .unwrap();
    assert_eq!(app.container_running(&cid).await, Some(false));

    let out = app.stop(&game).await;

    // Docker answers 304 and the stop counts it as done (not the vanished path).
    assert_outcome(&out, Outcome::Success, None);
    let record = out.record.unwrap();
    assert_eq!(record.status, RuntimeStatus::Stopped);
    assert_eq!(record.current_container_id.as_deref(), Some(cid.as_str()));
    assert!(app.disappeared_events().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_publish_does_not_change_the_outcome() {
    let mut app = TestApp::spawn().await;
    let (game, _) = app.vanished_game("no-health").await;
    // XADD fails on every attempt.
    break_the_health_stream(&app).await;

    let out = app.stop(&game).await;

    assert_outcome(&out, Outcome::Success, None);
    assert_eq!(app.status(&game).await, RuntimeStatus::Removed);
    assert_eq!(app.op_log(&game).await[0].result.outcome, "success");
    assert_eq!(
        app.telemetry.health_event_count("container_disappeared"),
        0,
        "never published"
    );
    assert_eq!(app.lease_holder(&game).await, None);
    mend_the_health_stream(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_publish_that_failed_once_is_published_by_its_retry() {
    let (app, game, cid) = vanished_game("health-retry").await;
    break_the_health_stream(&app).await;

    // Each attempt stalls 1 s, upserts the snapshot, then XADDs: the first attempt's XADD fails
    // on the broken stream, and once the second attempt stalls the stream is mended before its
    // XADD.
    let fault = "before:PublishHealth=sleep:1000";
    let out = stop_with_stall(&app, &game, fault, 2, mend_the_health_stream(&app)).await;

    assert_outcome(&out, Outcome::Success, None);
    let events = app.disappeared_events().await;
    assert_eq!(events.len(), 1, "the retry published the event: {events:?}");
    assert_eq!(events[0]["container_id"], cid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_lease_release_does_not_change_the_outcome() {
    let mut app = app().await;
    let (game, cid) = app.running_game("no-release").await;
    let key = app.lease_key(&game);

    // Once the stop recorded its result, and while its release stalls, the lease key becomes a
    // list: every release attempt's GET then fails with WRONGTYPE.
    let fault = "before:ReleaseLease=sleep:800";
    let out = stop_with_stall(&app, &game, fault, 1, async {
        assert_eq!(app.status(&game).await, RuntimeStatus::Stopped, "recorded");
        let mut redis = app.redis.clone();
        let _: () = redis.del(&key).await.unwrap();
        let _: () = redis.rpush(&key, "not a lease").await.unwrap();
    })
    .await;

    assert_outcome(&out, Outcome::Success, None);
    assert_eq!(app.status(&game).await, RuntimeStatus::Stopped);
    assert_eq!(app.container_running(&cid).await, Some(false));
    let rows = app.op_log(&game).await;
    assert_eq!(
        (rows.len(), rows[0].result.outcome.as_str()),
        (1, "success")
    );
    let kind: String = redis::cmd("TYPE")
        .arg(&key)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    assert_eq!(kind, "list", "the release really failed");
    let _: () = app.redis.clone().del(&key).await.unwrap();
}
