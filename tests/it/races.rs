//! Races: many concurrent lifecycle requests on one game, through HTTP and the stream. They are
//! serialised by the game's lease: losers get `conflict` (stream stops wait and retry), the final
//! record is the last successful operation's, at most one container exists, and the lease ends
//! free. (The audit rows cannot show lease hold times: `started_at` is when an operation's
//! workflow started, before it tried the lease.)

use crate::common;

use std::{sync::Arc, time::Duration};

use crate::common::{eventually, unique, TestApp};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use redis::AsyncCommands;
use rtmanager::stream::{Consumer, StreamSettings};
use rtmanager_domain::RuntimeStatus;
use tokio_util::sync::CancellationToken;

const RUNTIMES: &str = "/api/v1/internal/runtimes";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_operations_on_one_game_are_serialised() {
    let mut app = TestApp::spawn().await;
    let bridge = Arc::new(app.spawn_bridge().await);
    let game = app.new_game("race");
    let images = [common::game_image(), "rtmanager-game:v2".to_owned()];
    assert!(app.start(&game, &images[0]).await.is_success());

    // Stream stops, waiting out the lease instead of giving up.
    let stream = format!("{}:stop_jobs", unique("rtm-race"));
    let consumer = Consumer::new(
        StreamSettings {
            stream: stream.clone(),
            group: "rtmanager".into(),
            consumer: "race".into(),
            claim_idle: Duration::from_secs(5),
            conflict_retries: 200,
            conflict_backoff: Duration::from_millis(100),
            concurrency: 8,
        },
        app.client.clone(),
        app.router(),
        &std::env::var("RTMANAGER_REDIS_URL").unwrap(),
    )
    .unwrap();
    let stop_consumer = CancellationToken::new();
    tokio::spawn(consumer.run(stop_consumer.clone()));
    for _ in 0..5 {
        let _: String = app
            .redis
            .clone()
            .xadd(
                &stream,
                "*",
                &[("game_id", game.as_str()), ("reason", "finished")],
            )
            .await
            .unwrap();
    }

    // 50 HTTP requests at once: stop, start, restart and patch, each with its own request id.
    let requests: Vec<(String, &str, Option<String>)> = (0..50)
        .map(|i| {
            let id = format!("race-{i}");
            match i % 4 {
                0 => (id, "stop", Some(r#"{"reason":"admin"}"#.to_owned())),
                1 => (
                    id,
                    "start",
                    Some(format!(r#"{{"image_ref":"{}"}}"#, images[i % 2])),
                ),
                2 => (id, "restart", None),
                _ => (
                    id,
                    "patch",
                    Some(format!(r#"{{"image_ref":"{}"}}"#, images[(i / 4) % 2])),
                ),
            }
        })
        .collect();
    let calls = requests.iter().map(|(id, verb, body)| {
        let bridge = bridge.clone();
        let game = game.clone();
        async move {
            let path = format!("{RUNTIMES}/{game}/{verb}");
            bridge
                .call(
                    "POST",
                    &path,
                    &[("X-Request-Id", id.as_str())],
                    body.as_deref(),
                )
                .await
        }
    });
    let responses = futures::future::join_all(calls).await;
    for (response, (id, verb, _)) in responses.iter().zip(&requests) {
        assert!(
            [200, 409, 404].contains(&response.status),
            "{verb} {id}: {} {}",
            response.status,
            response.body
        );
    }
    assert!(responses.iter().any(|r| r.status == 200), "someone won");
    assert!(responses.iter().any(|r| r.status == 409), "someone lost");
    stop_consumer.cancel();
    eventually(
        "the stream stops to finish",
        Duration::from_secs(60),
        || async {
            let reply: redis::streams::StreamPendingReply = app
                .redis
                .clone()
                .xpending(&stream, "rtmanager")
                .await
                .ok()?;
            (reply.count() == 0).then_some(())
        },
    )
    .await;

    // The top-level rows: each request's own verb (restart and patch children share its
    // source_ref but not its kind), and the stream's stops.
    use rtmanager_activities::schema::operation_log::dsl as o;
    type Row = (
        String,
        Option<String>,
        String,
        Option<String>,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<String>,
    );
    let rows: Vec<Row> = o::operation_log
        .filter(o::game_id.eq(&game))
        .select((
            o::op_kind,
            o::source_ref,
            o::outcome,
            o::error_code,
            o::started_at,
            o::finished_at,
            o::image_ref,
        ))
        .order(o::finished_at)
        .load(&mut app.pg().await)
        .await
        .unwrap();
    let top: Vec<&Row> = rows
        .iter()
        .filter(|(kind, source, ..)| match source.as_deref() {
            Some(s) if s.starts_with("race-") => {
                requests.iter().any(|(id, verb, _)| id == s && verb == kind)
            }
            Some(_) => {
                kind == "stop"
                    && !requests
                        .iter()
                        .any(|(id, ..)| Some(id.as_str()) == source.as_deref())
            }
            None => false,
        })
        .collect();
    let wins: Vec<&&Row> = top.iter().filter(|r| r.2 == "success").collect();
    let losses = top
        .iter()
        .filter(|r| r.3.as_deref() == Some("conflict"))
        .count();
    assert!(losses > 0, "the lease turned operations away");
    let last = wins.last().expect("a successful operation");
    let record = app.record(&game).await.unwrap();
    match last.0.as_str() {
        "stop" => assert_ne!(record.status, RuntimeStatus::Running, "{last:?} {record:?}"),
        _ => assert_eq!(record.status, RuntimeStatus::Running, "{last:?} {record:?}"),
    }
    let containers = app.containers_of(&game).await;
    assert!(
        containers.len() <= 1,
        "one container at most: {containers:?}"
    );
    if record.status == RuntimeStatus::Running {
        assert_eq!(
            containers,
            vec![(record.current_container_id.clone().unwrap(), true)]
        );
    }
    assert_eq!(app.lease_holder(&game).await, None);
}

/// A workflow task that timed out under load runs the operation again while its first run
/// still works: the first run stops the game, writes the record and releases the lease, and
/// the second run's Docker step then finds the lease gone. It must answer what the first run
/// did, not `conflict`. Played here by writing the first run's record and releasing the lease
/// while the (slow) stop waits on Docker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_an_operation_answers_what_its_first_run_did() {
    let mut app = TestApp::spawn().await;
    let (game, container) = app.slow_game("second-run").await;
    let handle = app.stop_under_way(&game, &container).await;
    let operation_id = format!("{}/{}", handle.info().workflow_id, handle.run_id().unwrap());
    app.mark_stopped_by(&game, &operation_id).await;
    let _: () = app.redis.clone().del(app.lease_key(&game)).await.unwrap();

    let out = common::finish_within(&handle, Duration::from_secs(60), "the stop").await;
    common::assert_outcome(&out, rtmanager_domain::Outcome::Success, None);
    assert_eq!(app.op_log(&game).await.len(), 1, "one audit row");
    assert_eq!(app.lease_holder(&game).await, None);
}
