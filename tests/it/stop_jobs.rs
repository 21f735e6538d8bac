//! The `runtime:stop_jobs` consumer against real Redis and Temporal: happy path, malformed
//! entries, redelivery after a consumer dies mid-entry, claims of a dead consumer's entries,
//! waiting out a held lease, and several consumers sharing the group.

use std::{sync::Arc, time::Duration};

use crate::common::{eventually, rtmanager_command, unique, TestApp};
use crate::stop_signals::{game_with, EXITS_ON_USR1};
use redis::AsyncCommands;
use rtmanager::stream::{Consumer, StreamSettings};
use rtmanager_domain::RuntimeStatus;
use tokio_util::sync::CancellationToken;

struct Stream {
    name: String,
    group: String,
}

fn settings(stream: &Stream, consumer: &str) -> StreamSettings {
    StreamSettings {
        stream: stream.name.clone(),
        group: stream.group.clone(),
        consumer: consumer.to_owned(),
        claim_idle: Duration::from_secs(2),
        conflict_retries: 20,
        conflict_backoff: Duration::from_millis(200),
        concurrency: 8,
    }
}

/// Runs a consumer until the returned token is cancelled (or its task aborted).
fn consume(
    app: &TestApp,
    stream: &Stream,
    consumer: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let consumer: Arc<Consumer> = Consumer::new(
        settings(stream, consumer),
        app.client.clone(),
        app.router(),
        &std::env::var("RTMANAGER_REDIS_URL").unwrap(),
    )
    .unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn({
        let token = token.clone();
        async move {
            consumer.run(token).await.unwrap();
        }
    });
    (token, task)
}

fn new_stream() -> Stream {
    Stream {
        name: format!("{}:stop_jobs", unique("rtm-test")),
        group: "rtmanager".into(),
    }
}

/// A fresh stream with consumer `c1` already on it: most tests' set-up. Keep the consumer's
/// handles for as long as it should run.
fn stream_with_consumer(
    app: &TestApp,
) -> (Stream, (CancellationToken, tokio::task::JoinHandle<()>)) {
    let stream = new_stream();
    let consumer = consume(app, &stream, "c1");
    (stream, consumer)
}

async fn xadd(app: &TestApp, stream: &Stream, fields: &[(&str, &str)]) -> String {
    app.redis
        .clone()
        .xadd(&stream.name, "*", fields)
        .await
        .unwrap()
}

async fn pending(app: &TestApp, stream: &Stream) -> usize {
    let reply: redis::streams::StreamPendingReply = app
        .redis
        .clone()
        .xpending(&stream.name, &stream.group)
        .await
        .unwrap();
    reply.count()
}

/// Waits until the group has no pending entry left: every entry so far acknowledged.
async fn await_acknowledged(app: &TestApp, stream: &Stream, what: &str, timeout: Duration) {
    eventually(what, timeout, || async {
        (pending(app, stream).await == 0).then_some(())
    })
    .await
}

/// Waits until every game in `games` has a `stopped` record.
async fn await_stopped(app: &TestApp, games: &[impl AsRef<str>], timeout: Duration) {
    eventually("the games to stop", timeout, || async {
        for game in games {
            if app.record(game.as_ref()).await?.status != RuntimeStatus::Stopped {
                return None;
            }
        }
        Some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_stops_its_game_and_is_acknowledged() {
    let mut app = TestApp::spawn().await;
    let (stream, _c1) = stream_with_consumer(&app);
    let (game, cid) = app.running_game("job").await;

    let entry = xadd(
        &app,
        &stream,
        &[
            ("game_id", &game),
            ("reason", "finished"),
            ("request_id", "r-9"),
        ],
    )
    .await;

    await_stopped(&app, &[&game], Duration::from_secs(20)).await;
    let what = "the entry to be acknowledged";
    await_acknowledged(&app, &stream, what, Duration::from_secs(10)).await;
    assert_eq!(app.container_running(&cid).await, Some(false));
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].op_source, "stream");
    assert_eq!(rows[0].refs.source_ref.as_deref(), Some(entry.as_str()));
    app.assert_stops_counted(["success", "finished", "stream"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_recorded_and_acknowledged() {
    let app = TestApp::spawn().await;
    let (stream, _c1) = stream_with_consumer(&app);
    let long = "x".repeat(5000);
    let ok = |extra: (&'static str, &'static str)| vec![("game_id", "ok-game"), extra];
    let malformed: Vec<Vec<(&str, &str)>> = vec![
        vec![("reason", "finished")],
        vec![("game_id", "bad id"), ("reason", "finished")],
        ok(("reason", "reboot")),
        vec![("unrelated", "field")],
        [ok(("reason", "admin")), vec![("timeout_secs", "soon")]].concat(),
        [ok(("reason", "admin")), vec![("timeout_secs", "3601")]].concat(),
        [ok(("reason", "admin")), vec![("signal", "SIGKILL")]].concat(),
        vec![("game_id", long.as_str()), ("reason", "finished")],
    ];
    let mut entries = Vec::new();
    for fields in &malformed {
        entries.push(xadd(&app, &stream, fields).await);
    }
    eventually(
        "every entry to be audited",
        Duration::from_secs(30),
        || async { (app.op_log_count().await == entries.len() as i64).then_some(()) },
    )
    .await;
    let what = "every entry to be acknowledged";
    await_acknowledged(&app, &stream, what, Duration::from_secs(10)).await;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use rtmanager_activities::schema::operation_log::dsl as o;
    let codes: Vec<(Option<String>, Option<String>)> = o::operation_log
        .select((o::error_code, o::source_ref))
        .load(&mut app.pg().await)
        .await
        .unwrap();
    assert!(
        codes
            .iter()
            .all(|(code, _)| code.as_deref() == Some("invalid_request")),
        "{codes:?}"
    );
    for entry in &entries {
        assert!(codes
            .iter()
            .any(|(_, source)| source.as_deref() == Some(entry.as_str())));
    }
    // Nothing is redelivered: a fresh consumer finds no work.
    let (_t2, _task2) = consume(&app, &stream, "c2");
    // Deliberately lets time pass: c2 claims (anything idle over 2 s) and reads on its first
    // pass, and a workflow it started would then write its row; a row that must never appear
    // cannot be polled for, and an empty blocking read leaves no trace in Redis to wait on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.op_log_count().await, entries.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_names_the_signal_and_the_timeout() {
    let mut app = TestApp::spawn().await;
    let (stream, _c1) = stream_with_consumer(&app);
    let (game, container) = game_with(&mut app, "job-usr1", EXITS_ON_USR1, &[]).await;
    let fields = [
        ("game_id", game.as_str()),
        ("reason", "finished"),
        ("signal", "SIGUSR1"),
        ("timeout_secs", "120"),
    ];
    xadd(&app, &stream, &fields).await;
    await_stopped(&app, &[&game], Duration::from_secs(30)).await;
    let what = "the entry to be acknowledged";
    await_acknowledged(&app, &stream, what, Duration::from_secs(10)).await;
    assert_eq!(app.container_running(&container).await, Some(false));
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].stop.signal.as_deref(), Some("SIGUSR1"));
    assert_eq!(rows[0].stop.timeout_secs, Some(120));
    assert_eq!(rows[0].stop.ended.as_deref(), Some("graceful"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_left_by_a_killed_consumer_is_finished_once() {
    let mut app = TestApp::spawn_with(|c| c.stop_timeout = Duration::from_secs(4)).await;
    let stream = new_stream();
    // Slow stop: the container ignores SIGTERM.
    let (game, cid) = app.slow_game("job").await;
    let (_a_token, a_task) = consume(&app, &stream, "a");
    let entry = xadd(
        &app,
        &stream,
        &[("game_id", &game), ("reason", "cancelled")],
    )
    .await;
    app.await_lease(&game).await;
    a_task.abort(); // killed mid-entry: nothing acknowledged
    assert_eq!(pending(&app, &stream).await, 1);

    let (_b_token, _b_task) = consume(&app, &stream, "b");
    let what = "consumer b to finish the entry";
    await_acknowledged(&app, &stream, what, Duration::from_secs(40)).await;
    assert_eq!(app.status(&game).await, RuntimeStatus::Stopped);
    assert_eq!(app.container_running(&cid).await, Some(false));
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1, "joined the same workflow: {rows:?}");
    assert_eq!(rows[0].refs.source_ref.as_deref(), Some(entry.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_pending_entry_is_claimed() {
    let mut app = TestApp::spawn().await;
    let stream = new_stream();
    let (game, _) = app.running_game("job").await;
    let _: () = app
        .redis
        .clone()
        .xgroup_create_mkstream(&stream.name, &stream.group, "0")
        .await
        .unwrap();
    xadd(&app, &stream, &[("game_id", &game), ("reason", "timeout")]).await;
    // A consumer that reads the entry and dies without a trace.
    let _: redis::streams::StreamReadReply = app
        .redis
        .clone()
        .xread_options(
            &[&stream.name],
            &[">"],
            &redis::streams::StreamReadOptions::default()
                .group(&stream.group, "ghost")
                .count(1),
        )
        .await
        .unwrap();
    assert_eq!(pending(&app, &stream).await, 1);

    let (_token, _task) = consume(&app, &stream, "survivor");
    let what = "the survivor to claim and finish it";
    await_acknowledged(&app, &stream, what, Duration::from_secs(30)).await;
    assert_eq!(app.status(&game).await, RuntimeStatus::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_held_lease_waits_for_it() {
    let mut app = TestApp::spawn().await;
    let (game, _) = app.leased_game("job", "1:another-operation").await;
    let (stream, _c1) = stream_with_consumer(&app);

    xadd(&app, &stream, &[("game_id", &game), ("reason", "finished")]).await;
    eventually(
        "a first attempt to meet the lease",
        Duration::from_secs(10),
        || async { (!app.op_log(&game).await.is_empty()).then_some(()) },
    )
    .await;
    let _: () = app.redis.clone().del(app.lease_key(&game)).await.unwrap();

    await_stopped(&app, &[&game], Duration::from_secs(30)).await;
    let rows = app.op_log(&game).await;
    assert!(rows[..rows.len() - 1]
        .iter()
        .all(|r| r.result.error_code.as_deref() == Some("conflict")));
    assert_eq!(rows.last().unwrap().result.outcome, "success");
    await_acknowledged(&app, &stream, "acknowledged", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_share_the_group_and_each_entry_runs_once() {
    let mut app = TestApp::spawn().await;
    let stream = new_stream();
    let consumers: Vec<_> = ["one", "two", "three"]
        .iter()
        .map(|name| consume(&app, &stream, name))
        .collect();
    let mut games = Vec::new();
    for _ in 0..12 {
        games.push(app.running_game("job").await.0);
    }
    for game in &games {
        xadd(
            &app,
            &stream,
            &[("game_id", game.as_str()), ("reason", "admin")],
        )
        .await;
    }
    await_stopped(&app, &games, Duration::from_secs(60)).await;
    for game in &games {
        assert_eq!(app.op_log(game).await.len(), 1, "{game} ran once");
    }
    drop(consumers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_through_three_ways_in_is_one_operation() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;
    let (stream, _consumer) = stream_with_consumer(&app);
    let (game, _) = app.running_game("one-id").await;
    let request_id = unique("rid");

    let http = bridge
        .operate("stop", &game, Some(&request_id), r#"{"reason":"admin"}"#)
        .await;
    assert_eq!(http.status, 200, "{}", http.body);
    assert_eq!(
        http.json()["error_code"],
        serde_json::Value::Null,
        "the first runs it"
    );

    let fields = [
        ("game_id", game.as_str()),
        ("reason", "finished"),
        ("request_id", &request_id),
    ];
    xadd(&app, &stream, &fields).await;
    await_acknowledged(&app, &stream, "the entry", Duration::from_secs(30)).await;
    let cli = crate::common::run_ok(
        rtmanager_command(app.config()).args(["stop", &game, "--request-id", &request_id]),
        "rtmanager stop --request-id",
    );
    assert!(cli.status.success());

    // One operation: one audit row, from the first way in; the others joined it.
    let rows = app.op_log(&game).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].op_source, "rest");
    // Without a request id each way keeps its own: a second stop is a replay, audited apart.
    let again = bridge
        .operate("stop", &game, None, r#"{"reason":"admin"}"#)
        .await;
    assert_eq!(again.json()["error_code"], "replay_no_op");
    assert_eq!(app.op_log(&game).await.len(), 2);
}
