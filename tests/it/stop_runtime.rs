//! StopRuntime end to end on a real Temporal dev server, PostgreSQL, Redis and Docker: one test
//! per branch of the seed (`stopruntime.go`), each through the workflow's public entry point.

use crate::common;

use std::{collections::HashMap, time::Duration};

use crate::common::{assert_outcome, cancel_and_finish, unique, TestApp};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rtmanager_domain::{ErrorCode, OpKind, OperationOutput, Outcome, RuntimeStatus};

/// Stops a slow game's `cid` and runs `write` once Docker is stopping it: the stop has loaded
/// the record, and `write` changes it before the stop's compare-and-swap.
async fn stop_racing_a_write(
    app: &TestApp,
    game: &str,
    cid: &str,
    write: impl std::future::Future<Output = ()>,
) -> OperationOutput {
    let in_the_docker_step = async {
        app.await_stop_signal(cid).await;
        write.await
    };
    app.stop_meanwhile(game, in_the_docker_step).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_a_running_game() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.running_game("game").await;

    let out = app
        .stop_raw(&format!(
            r#"{{"game_id":"{game}","reason":"finished","op_source":"stream","source_ref":"1-0"}}"#
        ))
        .await;

    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    assert_eq!(out.error_code, None);
    let record = out.record.expect("record on success");
    assert_eq!(record.status, RuntimeStatus::Stopped);
    assert_eq!(record.current_container_id.as_deref(), Some(cid.as_str()));
    assert!(record.stopped_at.is_some());
    assert_eq!(
        app.record(&game).await.unwrap(),
        record,
        "output is the stored row"
    );
    assert_eq!(app.container_running(&cid).await, Some(false));
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].result.outcome, "success");
    assert_eq!(rows[0].result.error_code, None);
    assert_eq!(rows[0].refs.container_id.as_deref(), Some(cid.as_str()));
    assert_eq!(rows[0].refs.source_ref.as_deref(), Some("1-0"));
    assert_eq!(rows[0].op_source, "stream");
    assert!(rows[0].result.finished);
    assert_eq!(app.lease_holder(&game).await, None, "lease released");
    app.assert_stops_counted(["success", "finished", "stream"], 1);
    assert_eq!(app.telemetry.lease_acquire_count("acquired"), 1);
    assert!(app
        .telemetry
        .render()
        .contains("rtmanager_stop_outcomes_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_removed_records_replay_as_no_op() {
    let mut app = TestApp::spawn().await;
    let stopped = unique("stopped");
    let cid = app.game_container(&stopped, None).await;
    app.insert_record(&stopped, "stopped", Some(&cid)).await;
    let removed = unique("removed");
    app.insert_record(&removed, "removed", None).await;

    for (game, status) in [
        (&stopped, RuntimeStatus::Stopped),
        (&removed, RuntimeStatus::Removed),
    ] {
        let out = app.stop(game).await;
        assert_outcome(&out, Outcome::Success, Some(ErrorCode::ReplayNoOp));
        assert_eq!(out.record.unwrap().status, status);
        let rows = app.op_log(game).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].result.error_code.as_deref(), Some("replay_no_op"));
        assert_eq!(app.lease_holder(game).await, None);
    }
    assert_eq!(
        app.container_running(&cid).await,
        Some(true),
        "replay touches nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_without_record_is_not_found() {
    let app = TestApp::spawn().await;
    let game = unique("ghost");
    let out = app.stop(&game).await;
    assert_outcome(&out, Outcome::Failure, Some(ErrorCode::NotFound));
    assert!(out.record.is_none());
    assert!(out.error_message.unwrap().contains("does not exist"));
    let code = app.first_error_code(&game).await;
    assert_eq!(code.as_deref(), Some("not_found"));
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_malformed_input_completes_with_invalid_request() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            r#"{"game_id":"bad id","reason":"admin","op_source":"admin"}"#,
            "game_id",
        ),
        (
            r#"{"game_id":"-x","reason":"admin","op_source":"admin"}"#,
            "game_id",
        ),
        (
            r#"{"game_id":"","reason":"admin","op_source":"admin"}"#,
            "game_id",
        ),
        (
            r#"{"game_id":"ok","reason":"reboot","op_source":"admin"}"#,
            "reason",
        ),
        (
            r#"{"game_id":"ok","reason":"admin","op_source":"cron"}"#,
            "op_source",
        ),
        (
            r#"{"game_id":"ok","reason":"admin"}"#,
            "op_source is required",
        ),
        (
            r#"{"game_id":7,"reason":"admin","op_source":"admin"}"#,
            "game_id must be a string",
        ),
        (
            r#"{"game_id":"ok","reason":"admin","op_source":"admin","extra":1}"#,
            "unknown field",
        ),
        (
            r#"{"game_id":"ok","reason":"admin","op_source":"admin","lease_token":""}"#,
            "lease_token",
        ),
        ("[1,2,3]", "JSON object"),
        ("\"just a string\"", "JSON object"),
        ("{not json", "not valid JSON"),
    ];
    let started = std::time::Instant::now();
    for (input, needle) in cases {
        let out = app.stop_raw(input).await;
        assert_eq!(out.outcome, Outcome::Failure, "{input}");
        assert_eq!(out.error_code, Some(ErrorCode::InvalidRequest), "{input}");
        let message = out.error_message.unwrap();
        assert!(message.contains(needle), "{input}: {message}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "each completes within seconds"
    );
    assert_eq!(
        app.op_log_count().await,
        cases.len() as i64,
        "each is audited once"
    );
    let code = app.first_error_code("bad id").await;
    assert_eq!(code.as_deref(), Some("invalid_request"));
    app.assert_stops_counted(["failure", "admin", "admin"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_that_is_not_one_json_payload_is_invalid_too() {
    let app = TestApp::spawn().await;
    for input in [
        temporalio_common::data_converters::RawValue::new(vec![]),
        temporalio_common::data_converters::RawValue::empty(),
    ] {
        let (queue, id) = (&app.config().task_queue, unique("wf"));
        let handle = rtmanager::client::start_raw(&app.client, queue, OpKind::Stop, &id, input)
            .await
            .unwrap();
        let out = rtmanager::client::result(&handle).await.unwrap();
        assert_eq!(out.error_code, Some(ErrorCode::InvalidRequest), "{out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_by_another_operation_is_a_conflict() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.leased_game("busy", "someone-else").await;

    let out = app.stop(&game).await;

    app.assert_refused_by_lease(&out, &game, &cid, "someone-else")
        .await;
    let code = app.first_error_code(&game).await;
    assert_eq!(code.as_deref(), Some("conflict"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inherited_lease_is_neither_acquired_nor_released() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.leased_game("child", "42:parent-secret").await;

    let out = app.stop_inheriting(&game, "42:parent-secret").await;

    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    assert_eq!(app.container_running(&cid).await, Some(false));
    assert_eq!(
        app.lease_holder(&game).await.as_deref(),
        Some("42:parent-secret")
    );
    assert_eq!(app.telemetry.lease_acquire_count("acquired"), 0);

    // Only tokens rtmanager issued (`<fence>:<secret>`) can be inherited: they carry the fence.
    let out = app.stop_inheriting(&game, "opaque").await;
    assert_eq!(out.error_code, Some(ErrorCode::InvalidRequest), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_docker_is_service_unavailable() {
    let mut app = TestApp::spawn_with(|c| c.docker_host = "tcp://127.0.0.1:1".into()).await;
    let (game, cid) = app.running_game("nodocker").await;

    let out = app.stop(&game).await;

    assert_eq!(
        out.error_code,
        Some(ErrorCode::ServiceUnavailable),
        "{out:?}"
    );
    assert!(out.error_message.unwrap().starts_with("docker stop:"));
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].refs.container_id.as_deref(),
        Some(cid.as_str()),
        "row names the container"
    );
    assert_eq!(
        rows[0].refs.image_ref.as_deref(),
        Some(common::game_image().as_str())
    );
    assert_eq!(app.status(&game).await, RuntimeStatus::Running);
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_service_unavailable() {
    let app = TestApp::spawn_with(|c| {
        c.redis_url = rtmanager::config::SecretString::from("redis://127.0.0.1:1")
    })
    .await;
    let game = unique("noredis");
    app.insert_record(&game, "running", Some("whatever")).await;

    let out = app.stop(&game).await;

    assert_eq!(
        out.error_code,
        Some(ErrorCode::ServiceUnavailable),
        "{out:?}"
    );
    assert!(out
        .error_message
        .unwrap()
        .starts_with("acquire game lease:"));
    assert_eq!(app.status(&game).await, RuntimeStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_container_removes_the_record_and_reports_it() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.vanished_game("vanished").await;

    let out = app.stop(&game).await;

    assert_outcome(&out, Outcome::Success, None);
    let record = out.record.unwrap();
    assert_eq!(record.status, RuntimeStatus::Removed);
    assert_eq!(record.current_container_id, None);
    assert!(record.removed_at.is_some());
    assert_eq!(app.record(&game).await.unwrap(), record);

    let events = app.disappeared_events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["game_id"], game);
    assert_eq!(events[0]["container_id"], cid);
    assert_eq!(events[0]["event_type"], "container_disappeared");
    assert_eq!(events[0]["details"], "{}");
    assert!(chrono::DateTime::parse_from_rfc3339(&events[0]["occurred_at"]).is_ok());

    use rtmanager_activities::schema::health_snapshots::dsl as h;
    let (event_type, container, details): (String, Option<String>, serde_json::Value) =
        h::health_snapshots
            .find(&game)
            .select((h::event_type, h::container_id, h::details))
            .first(&mut app.pg().await)
            .await
            .unwrap();
    assert_eq!(event_type, "container_disappeared");
    assert_eq!(container.as_deref(), Some(cid.as_str()));
    assert_eq!(details, serde_json::json!({}));
    assert_eq!(app.telemetry.health_event_count("container_disappeared"), 1);
    assert_eq!(app.op_log(&game).await[0].result.outcome, "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_compare_and_swap_is_a_replay_no_op() {
    // The container ignores SIGTERM, so the stop takes the graceful timeout; meanwhile another
    // path (a reconciler) moves the record.
    let mut app = TestApp::spawn_with(|c| c.stop_timeout = Duration::from_secs(3)).await;
    let (game, cid) = app.slow_game("race").await;

    let out = stop_racing_a_write(&app, &game, &cid, app.mark_stopped(&game)).await;

    assert_outcome(&out, Outcome::Success, Some(ErrorCode::ReplayNoOp));
    assert_eq!(out.record.unwrap().status, RuntimeStatus::Stopped);
    let code = app.first_error_code(&game).await;
    assert_eq!(code.as_deref(), Some("replay_no_op"));
    assert_eq!(app.lease_holder(&game).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_gone_mid_stop_is_not_found() {
    let mut app = TestApp::spawn_with(|c| c.stop_timeout = Duration::from_secs(3)).await;
    let (game, cid) = app.slow_game("midstop").await;

    let out = stop_racing_a_write(&app, &game, &cid, app.delete_record(&game)).await;

    assert_eq!(out.error_code, Some(ErrorCode::NotFound), "{out:?}");
    assert!(out.error_message.unwrap().contains("vanished mid-stop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_failure_does_not_change_the_outcome() {
    let mut app = TestApp::spawn().await;
    let (game, cid) = app.running_game("noaudit").await;
    diesel::sql_query("REVOKE INSERT ON operation_log FROM CURRENT_USER")
        .execute(&mut app.pg().await)
        .await
        .unwrap();

    let out = app.stop(&game).await;

    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    assert_eq!(app.status(&game).await, RuntimeStatus::Stopped);
    assert_eq!(app.container_running(&cid).await, Some(false));
    assert!(
        app.op_log(&game).await.is_empty(),
        "the insert really failed"
    );
    assert_eq!(app.lease_holder(&game).await, None);
    // The outcome is still counted.
    app.assert_stops_counted(["success", "admin", "admin"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_workflow_releases_the_lease() {
    let mut app = TestApp::spawn_with(|c| c.stop_timeout = Duration::from_secs(60)).await;
    let (game, cid) = app.slow_game("cancel").await;

    let handle = app.stop_under_way(&game, &cid).await;

    let out = cancel_and_finish(&handle, "the cancelled workflow completes promptly").await;
    assert_eq!(
        out.error_code,
        Some(ErrorCode::ServiceUnavailable),
        "{out:?}"
    );
    assert!(out.error_message.unwrap().contains("cancelled"));
    assert_eq!(app.lease_holder(&game).await, None, "lease released");
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].result.outcome, "failure");
    assert_eq!(app.status(&game).await, RuntimeStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_without_the_game_label_is_left_untouched() {
    let mut app = TestApp::spawn().await;
    let game = unique("mislabel");
    let other = app
        .container(
            HashMap::from([
                ("rtmanager.game_id".into(), "someone-else".into()),
                ("rtmanager.managed".into(), "true".into()),
            ]),
            None,
        )
        .await;
    let unlabelled = app.container(HashMap::new(), None).await;
    for cid in [&other, &unlabelled] {
        app.delete_record(&game).await;
        app.insert_record(&game, "running", Some(cid)).await;

        let out = app.stop(&game).await;

        assert_eq!(out.error_code, Some(ErrorCode::Internal), "{out:?}");
        assert!(out.error_message.unwrap().contains("refusing to stop"));
        assert_eq!(app.container_running(cid).await, Some(true), "not stopped");
        assert_eq!(app.status(&game).await, RuntimeStatus::Running);
        assert_eq!(app.lease_holder(&game).await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_status_is_internal() {
    let app = TestApp::spawn().await;
    let game = unique("paused");
    app.insert_record(&game, "paused", Some("abc")).await;
    let out = app.stop(&game).await;
    assert_eq!(out.error_code, Some(ErrorCode::Internal), "{out:?}");
    assert!(out.error_message.unwrap().contains("unsupported status"));
    assert_eq!(app.lease_holder(&game).await, None);
}
