//! The seed's branches the other suites do not reach: a compare-and-swap refused by a newer
//! fence, the vanished-container path meeting a moved, deleted or unwritable record, store
//! errors at the load and at the compare-and-swap, a container Docker reports already stopped,
//! and the best-effort steps (health publish, lease release) failing without changing the
//! outcome. Faults come from the real services (revoked privileges, a Redis key of the wrong
//! type) or, to hit a window between two steps, from a worker process stalled at a fault point.

use std::time::Duration;

use crate::common::{
    assert_outcome, eventually, stop_json, worker_process_with, TestApp, TestConfig,
};
use bollard::query_parameters::StopContainerOptions;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use redis::AsyncCommands;
use rtmanager_activities::schema::runtime_records::dsl as r;
use rtmanager_domain::{ErrorCode, OpKind, OperationOutput, Outcome, RuntimeStatus};

/// A handle on the services without an in-process worker: the test runs a worker process that
/// stalls at a fault point.
async fn app() -> TestApp {
    let cfg = TestConfig::new();
    TestApp::without_worker(cfg).await
}

/// Runs a stop on a worker process stalled by `fault`; `meanwhile` runs once the stop holds
/// the game's lease (the stall is long enough for it to act inside the window).
async fn stop_with_stall<F, Fut>(
    app: &TestApp,
    game: &str,
    fault: &str,
    meanwhile: F,
) -> OperationOutput
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut worker = worker_process_with(app.config(), &[("RTMANAGER_FAULTS", fault)]);
    let handle = app.start_workflow(OpKind::Stop, &stop_json(game)).await;
    app.await_lease(game).await;
    meanwhile().await;
    let out = tokio::time::timeout(Duration::from_secs(90), rtmanager::client::result(&handle))
        .await
        .expect("the stop completes")
        .unwrap();
    let _ = worker.kill();
    let _ = worker.wait();
    out
}

async fn sql(app: &TestApp, statement: &str) {
    diesel::sql_query(statement)
        .execute(&mut app.pg().await)
        .await
        .unwrap_or_else(|err| panic!("{statement}: {err}"));
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
        app.record(&game).await.unwrap().status,
        RuntimeStatus::Running,
        "not written"
    );
    assert_eq!(app.record_fence(&game).await, i64::MAX - 1);
    let rows = app.op_log(&game).await;
    assert_eq!(rows[0].error_code.as_deref(), Some("conflict"));
    assert_eq!(rows[0].container_id.as_deref(), Some(cid.as_str()));
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vanished_path_meeting_a_moved_record_is_a_replay_no_op() {
    let mut app = app().await;
    let (game, cid) = app.running_game("vanish-moved").await;
    app.remove_container(&cid).await;

    let out = stop_with_stall(&app, &game, "before:UpdateStatus=sleep:4000", || async {
        // Well inside the stall: the record was loaded, the CAS has not run yet.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        diesel::update(r::runtime_records.find(&game))
            .set((r::status.eq("stopped"), r::last_op_id.eq("reconciler")))
            .execute(&mut app.pg().await)
            .await
            .unwrap();
    })
    .await;

    assert_outcome(&out, Outcome::Success, Some(ErrorCode::ReplayNoOp));
    assert_eq!(
        out.record.unwrap().status,
        RuntimeStatus::Stopped,
        "the record as it is now"
    );
    assert!(
        app.health_events().await.is_empty(),
        "nothing published: another path moved it"
    );
    assert_eq!(
        app.op_log(&game).await[0].error_code.as_deref(),
        Some("replay_no_op")
    );
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vanished_path_meeting_a_deleted_record_still_reports_the_removal() {
    let mut app = app().await;
    let (game, cid) = app.running_game("vanish-deleted").await;
    app.remove_container(&cid).await;

    let out = stop_with_stall(&app, &game, "before:UpdateStatus=sleep:4000", || async {
        // Well inside the stall: the record was loaded, the CAS has not run yet.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        diesel::delete(r::runtime_records.find(&game))
            .execute(&mut app.pg().await)
            .await
            .unwrap();
    })
    .await;

    // The seed goes on: the container is gone and so is the row.
    assert_outcome(&out, Outcome::Success, None);
    let record = out.record.unwrap();
    assert_eq!(record.status, RuntimeStatus::Removed);
    assert_eq!(record.current_container_id, None);
    let events = app.health_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event_type"], "container_disappeared");
    assert_eq!(events[0]["container_id"], cid);
    assert!(app.record(&game).await.is_none(), "no row is invented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vanished_path_meeting_a_store_error_is_internal() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.running_game("vanish-store").await;
    app.remove_container(&cid).await;
    sql(&app, "REVOKE UPDATE ON runtime_records FROM CURRENT_USER").await;

    let out = app.stop(&game).await;

    assert_outcome(&out, Outcome::Failure, Some(ErrorCode::Internal));
    assert!(out
        .error_message
        .unwrap()
        .starts_with("update runtime status to removed:"));
    assert_eq!(
        app.record(&game).await.unwrap().status,
        RuntimeStatus::Running
    );
    assert!(
        app.health_events().await.is_empty(),
        "no event for a removal not recorded"
    );
    assert_eq!(
        app.op_log(&game).await[0].error_code.as_deref(),
        Some("internal")
    );
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_cannot_be_loaded_is_internal() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.running_game("load-error").await;
    sql(&app, "REVOKE SELECT ON runtime_records FROM CURRENT_USER").await;

    let out = app.stop(&game).await;

    assert_outcome(&out, Outcome::Failure, Some(ErrorCode::Internal));
    assert!(out
        .error_message
        .unwrap()
        .starts_with("load runtime record:"));
    assert_eq!(
        app.container_running(&cid).await,
        Some(true),
        "Docker untouched"
    );
    assert_eq!(app.lease_holder(&game).await, None);

    // Once the store answers again, the same stop goes through.
    sql(&app, "GRANT SELECT ON runtime_records TO CURRENT_USER").await;
    let out = app.stop(&game).await;
    assert_outcome(&out, Outcome::Success, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compare_and_swap_store_error_is_internal() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.running_game("cas-error").await;
    sql(&app, "REVOKE UPDATE ON runtime_records FROM CURRENT_USER").await;

    let out = app.stop(&game).await;

    assert_outcome(&out, Outcome::Failure, Some(ErrorCode::Internal));
    assert!(out
        .error_message
        .unwrap()
        .starts_with("update runtime status:"));
    assert_eq!(
        app.container_running(&cid).await,
        Some(false),
        "Docker stopped it"
    );
    assert_eq!(
        app.record(&game).await.unwrap().status,
        RuntimeStatus::Running,
        "not recorded"
    );
    assert_eq!(app.lease_holder(&game).await, None);
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
    assert!(app.health_events().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_publish_does_not_change_the_outcome() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.running_game("no-health").await;
    app.remove_container(&cid).await;
    // XADD on a string key fails with WRONGTYPE, on every attempt.
    let stream = app.config().health_stream.clone();
    let _: () = app
        .redis
        .clone()
        .set(&stream, "not a stream")
        .await
        .unwrap();

    let out = app.stop(&game).await;

    assert_outcome(&out, Outcome::Success, None);
    assert_eq!(
        app.record(&game).await.unwrap().status,
        RuntimeStatus::Removed
    );
    assert_eq!(app.op_log(&game).await[0].outcome, "success");
    assert_eq!(
        app.telemetry.health_event_count("container_disappeared"),
        0,
        "never published"
    );
    assert_eq!(app.lease_holder(&game).await, None);
    let _: () = app.redis.clone().del(&stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_publish_that_failed_once_is_published_by_its_retry() {
    let mut app = app().await;
    let (game, cid) = app.running_game("health-retry").await;
    app.remove_container(&cid).await;
    let stream = app.config().health_stream.clone();
    let _: () = app
        .redis
        .clone()
        .set(&stream, "not a stream")
        .await
        .unwrap();

    // Each attempt stalls 1 s, upserts the snapshot, then XADDs: once the first attempt's
    // snapshot is there its XADD has failed (or is about to), and the stream is mended before
    // the second attempt's.
    let out = stop_with_stall(&app, &game, "before:PublishHealth=sleep:1000", || async {
        eventually(
            "the first publish attempt",
            Duration::from_secs(30),
            || async {
                let found: Option<String> = {
                    use rtmanager_activities::schema::health_snapshots::dsl as h;
                    h::health_snapshots
                        .find(&game)
                        .select(h::event_type)
                        .first(&mut app.pg().await)
                        .await
                        .optional()
                        .unwrap()
                };
                found.map(|_| ())
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _: () = app.redis.clone().del(&stream).await.unwrap();
    })
    .await;

    assert_outcome(&out, Outcome::Success, None);
    let events = app.health_events().await;
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
    let out = stop_with_stall(&app, &game, "before:ReleaseLease=sleep:800", || async {
        eventually(
            "the stop to record its result",
            Duration::from_secs(30),
            || async {
                let status = app.record(&game).await.map(|r| r.status);
                (status == Some(RuntimeStatus::Stopped)).then_some(())
            },
        )
        .await;
        let mut redis = app.redis.clone();
        let _: () = redis.del(&key).await.unwrap();
        let _: () = redis.rpush(&key, "not a lease").await.unwrap();
    })
    .await;

    assert_outcome(&out, Outcome::Success, None);
    assert_eq!(
        app.record(&game).await.unwrap().status,
        RuntimeStatus::Stopped
    );
    assert_eq!(app.container_running(&cid).await, Some(false));
    let rows = app.op_log(&game).await;
    assert_eq!((rows.len(), rows[0].outcome.as_str()), (1, "success"));
    let kind: String = redis::cmd("TYPE")
        .arg(&key)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();
    assert_eq!(kind, "list", "the release really failed");
    let _: () = app.redis.clone().del(&key).await.unwrap();
}
