//! What Docker does without being asked, against a real engine: crashes and OOM kills reported
//! by the events watcher (and intended stops not), events missed while the worker was down
//! published once, reconcile rounds that repair records and report or remove orphans, a start
//! that does not trust a stale `running` record, restarts after a crash up to a crash loop, and
//! the per-host Schedule.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rtmanager_domain::{ErrorCode, Outcome, RuntimeStatus};
use rtmanager_workflows::ReconcileReport;

use crate::common::{assert_outcome, eventually, game_image, rtmanager_command, run_ok, TestApp};

/// The health events of `event_type` for `container`.
async fn events_of(
    app: &TestApp,
    event_type: &str,
    container: &str,
) -> Vec<HashMap<String, String>> {
    app.health_events()
        .await
        .into_iter()
        .filter(|e| e.get("event_type").map(String::as_str) == Some(event_type))
        .filter(|e| e.get("container_id").map(String::as_str) == Some(container))
        .collect()
}

/// Waits (`timeout` at most) for the first `event_type` event of `container`.
async fn await_event(
    app: &TestApp,
    event_type: &str,
    container: &str,
    timeout: Duration,
) -> HashMap<String, String> {
    let what = format!("{event_type} for {container}");
    eventually(&what, timeout, || async {
        events_of(app, event_type, container)
            .await
            .into_iter()
            .next()
    })
    .await
}

/// Waits (`timeout` at most) for `container`'s `container_exited` event: how a crash is
/// reported.
async fn await_exit(app: &TestApp, container: &str, timeout: Duration) -> HashMap<String, String> {
    await_event(app, "container_exited", container, timeout).await
}

/// Waits until no operation holds `game`'s lease.
async fn await_lease_free(app: &TestApp, game: &str) {
    eventually("the lease to be free", Duration::from_secs(30), || async {
        app.lease_holder(game).await.is_none().then_some(())
    })
    .await;
}

/// SIGKILLs a container, as a crash (or `docker kill`) would.
async fn kill(app: &TestApp, container: &str) {
    app.docker
        .kill_container(
            container,
            Some(bollard::query_parameters::KillContainerOptions {
                signal: "SIGKILL".into(),
            }),
        )
        .await
        .expect("docker kill");
}

/// A round on the app's host now, as `rtmanager reconcile` runs it.
async fn round(app: &TestApp) -> ReconcileReport {
    let config = app.config();
    let report = rtmanager::client::reconcile(&app.client, &config.task_queue, &config.host_id)
        .await
        .expect("a reconcile round");
    assert_eq!(report.error, None, "{report:?}");
    report
}

fn exit_code(event: &HashMap<String, String>) -> i64 {
    let details: serde_json::Value =
        serde_json::from_str(event.get("details").map_or("{}", String::as_str)).unwrap();
    details["exit_code"].as_i64().expect("an exit code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_is_a_crash_and_the_next_round_records_it_stopped() {
    let mut app = TestApp::spawn().await;
    let (game, container) = app.started_container("crash").await;

    let killed = Instant::now();
    kill(&app, &container).await;
    let event = await_exit(&app, &container, Duration::from_secs(10)).await;
    let seen = killed.elapsed();
    assert!(seen < Duration::from_secs(2), "reported after {seen:?}");
    assert_eq!(exit_code(&event), 137, "{event:?}");
    assert_eq!(event["game_id"], game);
    // Reported, not repaired: the record still says running until a round.
    assert_eq!(app.status(&game).await, RuntimeStatus::Running);

    let report = round(&app).await;
    let repair = report
        .repaired
        .iter()
        .find(|r| r.game_id == game)
        .expect("the game is repaired");
    assert_eq!(repair.outcome, Outcome::Success, "{report:?}");
    assert_eq!(app.status(&game).await, RuntimeStatus::Stopped);
    let rows = app.op_log(&game).await;
    let stop = rows
        .iter()
        .find(|r| r.op_kind == "stop")
        .expect("a stop row");
    assert_eq!(stop.op_source, "reconciler");
    assert_eq!(stop.result.outcome, "success");
    // The watcher and the round saw the same exit: one event.
    assert_eq!(
        events_of(&app, "container_exited", &container).await.len(),
        1
    );
    // A second round finds nothing left to do.
    let again = round(&app).await;
    assert!(
        again.repaired.iter().all(|r| r.game_id != game),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intended_stop_is_not_a_crash() {
    let mut app = TestApp::spawn().await;
    let (stopped, stopped_container) = app.started_container("meant").await;
    assert_outcome(&app.stop(&stopped).await, Outcome::Success, None);
    // The watcher handles events in order: once a later crash is reported, the stop's exit
    // has been judged too.
    let (_, crashed) = app.started_container("later").await;
    kill(&app, &crashed).await;
    await_exit(&app, &crashed, Duration::from_secs(10)).await;
    assert!(
        events_of(&app, "container_exited", &stopped_container)
            .await
            .is_empty(),
        "a stop is not a crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_container_oom() {
    let mut app = TestApp::spawn().await;
    let game = app.new_game("oom");
    let labels = app.game_labels(&game);
    // A game that runs for a while (its record is written meanwhile, even on a loaded
    // machine: an exit before the record exists is nobody's crash), then doubles a string
    // until the 16 MiB limit kills it.
    let hog = vec!["sh", "-c", "sleep 10; x=yyyyyyyy; while :; do x=$x$x; done"];
    let container = app
        .container_limited(labels, Some(hog), Some(16 * 1024 * 1024))
        .await;
    app.insert_record(&game, "running", Some(&container)).await;
    let event = await_event(&app, "container_oom", &container, Duration::from_secs(30)).await;
    assert_eq!(event["game_id"], game);
    // The OOM kill is one crash: no container_exited beside it.
    let round_report = round(&app).await;
    assert!(round_report.repaired.iter().any(|r| r.game_id == game));
    assert!(events_of(&app, "container_exited", &container)
        .await
        .is_empty());
    assert_eq!(events_of(&app, "container_oom", &container).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_container_is_repaired_as_disappeared() {
    let mut app = TestApp::spawn().await;
    let (game, container) = app.started_container("rm").await;
    app.remove_container(&container).await;
    let report = round(&app).await;
    assert!(
        report.repaired.iter().any(|r| r.game_id == game),
        "{report:?}"
    );
    assert_eq!(app.status(&game).await, RuntimeStatus::Removed);
    await_event(
        &app,
        "container_disappeared",
        &container,
        Duration::from_secs(5),
    )
    .await;
    let rows = app.op_log(&game).await;
    let repair = rows
        .iter()
        .find(|r| r.op_kind == "stop")
        .expect("the repair's row");
    assert_eq!(
        (repair.op_source.as_str(), repair.result.outcome.as_str()),
        ("reconciler", "success")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_skips_a_game_whose_lease_is_held() {
    let mut app = TestApp::spawn().await;
    let (game, container) = app.leased_game("busy", "7:someone-else").await;
    app.remove_container(&container).await;
    let report = round(&app).await;
    assert_eq!(report.busy, std::slice::from_ref(&game), "{report:?}");
    assert!(report.repaired.is_empty(), "{report:?}");
    assert_eq!(
        app.status(&game).await,
        RuntimeStatus::Running,
        "left for a later round"
    );
    assert!(app.op_log(&game).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reported_and_removed_only_when_allowed() {
    let mut app = TestApp::spawn().await;
    let orphan_game = app.new_game("orphan");
    let labels = app.game_labels(&orphan_game);
    let orphan = app.container(labels, None).await;
    let unlabelled = app.container(HashMap::new(), None).await;
    let mut foreign = app.game_labels(&orphan_game);
    foreign.insert("rtmanager.pool".into(), "another-deployment".into());
    let foreign = app.container(foreign, None).await;

    let report = round(&app).await;
    let found: Vec<_> = report
        .orphans
        .iter()
        .map(|o| o.container_id.as_str())
        .collect();
    assert_eq!(
        found,
        [orphan.as_str()],
        "only this deployment's labelled orphan: {report:?}"
    );
    assert!(!report.orphans[0].removed);
    await_event(&app, "orphan_container", &orphan, Duration::from_secs(5)).await;

    // The same deployment, with removal on and no grace.
    app.shutdown_worker().await;
    app.cfg.config.remove_orphans = true;
    app.cfg.config.orphan_grace = Duration::ZERO;
    app.start_worker();
    let report = round(&app).await;
    assert!(
        report
            .orphans
            .iter()
            .any(|o| o.container_id == orphan && o.removed),
        "{report:?}"
    );
    assert_eq!(app.container_running(&orphan).await, None, "removed");
    assert_eq!(
        app.container_running(&unlabelled).await,
        Some(true),
        "never touched"
    );
    assert_eq!(
        app.container_running(&foreign).await,
        Some(true),
        "another deployment's"
    );
    // One event per orphan, whatever the rounds.
    assert_eq!(events_of(&app, "orphan_container", &orphan).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_the_worker_is_down_is_published_once() {
    let mut app = TestApp::spawn().await;
    let (_, container) = app.started_container("down").await;
    app.shutdown_worker().await;
    kill(&app, &container).await;
    app.start_worker();
    let event = await_exit(&app, &container, Duration::from_secs(30)).await;
    assert_eq!(exit_code(&event), 137);
    // Another restart reads the same events again (and sweeps again): still one event.
    app.shutdown_worker().await;
    app.start_worker();
    let (_, marker) = app.started_container("mark").await;
    kill(&app, &marker).await;
    await_exit(&app, &marker, Duration::from_secs(10)).await;
    assert_eq!(
        events_of(&app, "container_exited", &container).await.len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_repairs_a_running_record_whose_container_is_gone() {
    let mut app = TestApp::spawn().await;
    let (game, old) = app.started_container("stale").await;
    app.remove_container(&old).await;
    let out = app.start(&game, &game_image()).await;
    assert_outcome(&out, Outcome::Success, None);
    let new = out.record.unwrap().current_container_id.unwrap();
    assert_ne!(new, old);
    assert_eq!(app.container_running(&new).await, Some(true));
    await_event(&app, "container_disappeared", &old, Duration::from_secs(5)).await;
    // And a start of a game whose container runs is still a replay.
    let again = app.start(&game, &game_image()).await;
    assert_outcome(&again, Outcome::Success, Some(ErrorCode::ReplayNoOp));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_game_is_restarted_until_it_crash_loops() {
    let mut app = TestApp::spawn_with(|c| {
        c.restart_on_crash = true;
        c.crash_loop_limit = 2;
    })
    .await;
    let (game, mut container) = app.started_container("loop").await;
    for crash in 1..=2 {
        // A crash while the restart still holds the game's lease would be the restart's own
        // business (its start checks the container), not a crash to restart from.
        await_lease_free(&app, &game).await;
        kill(&app, &container).await;
        let before = container.clone();
        container = eventually(
            &format!("restart after crash {crash}"),
            Duration::from_secs(60),
            || async {
                let record = app.record(&game).await?;
                let current = record.current_container_id?;
                (record.status == RuntimeStatus::Running && current != before).then_some(current)
            },
        )
        .await;
        assert_eq!(app.container_running(&container).await, Some(true));
    }
    // The restart's own row follows its start child's record write.
    let rows = eventually("both restarts' rows", Duration::from_secs(30), || async {
        let rows = app.op_log(&game).await;
        (rows.iter().filter(|r| r.op_kind == "restart").count() >= 2).then_some(rows)
    })
    .await;
    let restarts: Vec<_> = rows.iter().filter(|r| r.op_kind == "restart").collect();
    assert_eq!(restarts.len(), 2, "{restarts:?}");
    assert!(restarts
        .iter()
        .all(|r| r.op_source == "reconciler" && r.result.outcome == "success"));

    await_lease_free(&app, &game).await;
    kill(&app, &container).await;
    let looped = await_event(&app, "crash_loop", &container, Duration::from_secs(10)).await;
    assert_eq!(looped["game_id"], game);
    let report = round(&app).await;
    assert!(report.repaired.iter().any(|r| r.game_id == game));
    assert_eq!(
        app.status(&game).await,
        RuntimeStatus::Stopped,
        "left stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_schedules_its_rounds_and_the_cli_runs_one() {
    let mut app = TestApp::spawn_with(|c| c.reconcile_interval = Duration::from_secs(2)).await;
    let (game, container) = app.started_container("sched").await;
    app.remove_container(&container).await;
    // No round started by hand: the Schedule repairs it.
    eventually("a scheduled round", Duration::from_secs(30), || async {
        (app.status(&game).await == RuntimeStatus::Removed).then_some(())
    })
    .await;
    // A worker restart finds its Schedule there and keeps it.
    app.shutdown_worker().await;
    app.start_worker();
    let id = rtmanager::client::reconcile_schedule_id(&app.config().host_task_queue());
    let schedule = app.client.get_schedule_handle(&id);
    schedule
        .describe(Default::default())
        .await
        .expect("the schedule exists");

    let output = run_ok(
        rtmanager_command(app.config()).args(["reconcile", "--host", "local"]),
        "rtmanager reconcile",
    );
    let output = String::from_utf8_lossy(&output.stdout);
    assert!(output.contains("host local:"), "{output}");
    schedule
        .delete(Default::default())
        .await
        .expect("delete the test's schedule");
}
