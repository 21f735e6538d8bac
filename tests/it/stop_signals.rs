//! How a stop ends a game's process: the signal and the timeout from the request (HTTP body,
//! CLI flags, workflow input; the stream's are in `stop_jobs`), else from the container's
//! labels, else from the worker's settings; whether the process exited within the timeout or
//! was killed, in the output, the audit row and a metric; and bad values refused before
//! anything changes.

use std::collections::HashMap;

use rtmanager_domain::{ErrorCode, OpKind, Outcome, StopEnded, StopSignal};
use serde_json::{json, Value};

use crate::common::{assert_outcome, rtmanager_command, TestApp, IGNORES_SIGTERM};

/// A game that exits on SIGUSR1 only: as PID 1 without a handler for them, it ignores SIGTERM
/// and SIGINT.
pub(crate) const EXITS_ON_USR1: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' USR1; while :; do sleep 1 & wait $!; done",
];

/// A running game whose container runs `cmd` and carries `labels` beside the game's own.
pub(crate) async fn game_with(
    app: &mut TestApp,
    prefix: &str,
    cmd: &[&str],
    labels: &[(&str, &str)],
) -> (String, String) {
    let game = app.new_game(prefix);
    let mut all: HashMap<String, String> = app.game_labels(&game);
    all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let container = app.container(all, Some(cmd.to_vec())).await;
    app.insert_record(&game, "running", Some(&container)).await;
    (game, container)
}

/// `game`'s one audit row's `(stop_signal, stop_timeout_secs, stop_ended)`.
async fn audited_stop(app: &TestApp, game: &str) -> (Option<String>, Option<i32>, Option<String>) {
    let rows = app.op_log(game).await;
    assert_eq!(rows.len(), 1, "one audit row: {rows:?}");
    let stop = &rows[0].stop;
    (stop.signal.clone(), stop.timeout_secs, stop.ended.clone())
}

/// The value of `rtmanager_container_stops_total` for `signal` and `ended` in `app`'s metrics.
fn container_stops(app: &TestApp, signal: &str, ended: &str) -> u64 {
    let needle =
        format!("rtmanager_container_stops_total{{ended=\"{ended}\",signal=\"{signal}\"}} ");
    app.telemetry
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&needle)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_from_the_request_or_the_label_ends_the_game_gracefully() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;

    // The label names the signal; the HTTP body only the timeout.
    let labelled = [("rtmanager.stop_signal", "SIGUSR1")];
    let (by_label, label_container) =
        game_with(&mut app, "usr1-label", EXITS_ON_USR1, &labelled).await;
    let body = r#"{"reason":"admin","timeout_secs":120}"#;
    let stopped = bridge.operate_ok("stop", &by_label, None, body).await;
    assert_eq!(
        stopped["stop"],
        json!({"signal": "SIGUSR1", "timeout_secs": 120, "ended": "graceful"})
    );
    assert_eq!(app.container_running(&label_container).await, Some(false));
    let audited = audited_stop(&app, &by_label).await;
    assert_eq!(
        audited,
        (Some("SIGUSR1".into()), Some(120), Some("graceful".into()))
    );

    // No label: the CLI names the signal.
    let (by_flag, _) = game_with(&mut app, "usr1-flag", EXITS_ON_USR1, &[]).await;
    let out = rtmanager_command(app.config())
        .args([
            "--json",
            "stop",
            &by_flag,
            "--signal",
            "SIGUSR1",
            "--timeout",
            "120",
        ])
        .output()
        .expect("run rtmanager stop");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output: Value = serde_json::from_slice(&out.stdout).expect("--json output");
    assert_eq!(output["stop"]["signal"], "SIGUSR1");
    assert_eq!(output["stop"]["ended"], "graceful");

    // Labels that do not parse are passed over: the worker's SIGTERM and timeout apply.
    let bad_labels = [
        ("rtmanager.stop_signal", "SIGKILL"),
        ("rtmanager.stop_timeout", "forever"),
    ];
    let (game, _) = game_with(&mut app, "bad-labels", &["/bin/game"], &bad_labels).await;
    let out = app.stop(&game).await;
    assert_outcome(&out, Outcome::Success, None);
    let stop = out.stop.expect("the stop report");
    assert_eq!(stop.signal, StopSignal::Term);
    assert_eq!(
        u64::from(stop.timeout_secs),
        app.config().stop_timeout.as_secs()
    );
    assert_eq!(stop.ended, StopEnded::Graceful);

    // No request field and no label: the image's own stop signal, through Docker's stop.
    let game = app.new_game("usr1-image");
    let labels = app.game_labels(&game);
    let container = app
        .container_shaped(labels, Some(EXITS_ON_USR1.to_vec()), |body| {
            body.stop_signal = Some("SIGUSR1".into());
        })
        .await;
    app.insert_record(&game, "running", Some(&container)).await;
    let out = app.stop(&game).await;
    assert_outcome(&out, Outcome::Success, None);
    let stop = out.stop.expect("the stop report");
    assert_eq!(
        (stop.signal, stop.ended),
        (StopSignal::Usr1, StopEnded::Graceful)
    );

    assert_eq!(container_stops(&app, "SIGUSR1", "graceful"), 3);
    assert_eq!(container_stops(&app, "SIGTERM", "graceful"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_that_ignores_its_signal_is_killed_when_the_timeout_runs_out() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;

    // The label's timeout: one second, then SIGKILL.
    let labelled = [("rtmanager.stop_timeout", "1")];
    let (game, container) = game_with(&mut app, "kill-label", IGNORES_SIGTERM, &labelled).await;
    let out = app.stop(&game).await;
    assert_outcome(&out, Outcome::Success, None);
    let stop = out.stop.expect("the stop report");
    assert_eq!((stop.signal, stop.timeout_secs), (StopSignal::Term, 1));
    assert_eq!(stop.ended, StopEnded::Killed);
    let inspected = app
        .docker
        .inspect_container(&container, None)
        .await
        .unwrap();
    assert_eq!(inspected.state.and_then(|s| s.exit_code), Some(137));
    let audited = audited_stop(&app, &game).await;
    assert_eq!(
        audited,
        (Some("SIGTERM".into()), Some(1), Some("killed".into()))
    );

    // The request's timeout wins over the label's, and a signal other than the container's
    // own takes the signal-wait-kill path.
    let labelled = [("rtmanager.stop_timeout", "3600")];
    let (game, _) = game_with(&mut app, "kill-request", IGNORES_SIGTERM, &labelled).await;
    let body = r#"{"reason":"timeout","timeout_secs":0,"signal":"SIGINT"}"#;
    let stopped = bridge.operate_ok("stop", &game, None, body).await;
    assert_eq!(
        stopped["stop"],
        json!({"signal": "SIGINT", "timeout_secs": 0, "ended": "killed"})
    );
    assert_eq!(container_stops(&app, "SIGTERM", "killed"), 1);
    assert_eq!(container_stops(&app, "SIGINT", "killed"), 1);

    // A replay stops nothing and reports no stop.
    let again = app.stop(&game).await;
    assert_outcome(&again, Outcome::Success, Some(ErrorCode::ReplayNoOp));
    assert_eq!(again.stop, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signals_and_timeouts_are_refused_before_anything_changes() {
    let mut app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;
    let (game, container) = app.running_game("bad-stop").await;
    for body in [
        r#"{"reason":"admin","signal":"SIGKILL"}"#,
        r#"{"reason":"admin","signal":"sigterm"}"#,
        r#"{"reason":"admin","timeout_secs":3601}"#,
        r#"{"reason":"admin","timeout_secs":-1}"#,
        r#"{"reason":"admin","timeout_secs":"10"}"#,
        r#"{"reason":"admin","timeout_secs":2.5}"#,
    ] {
        let refused = bridge.operate("stop", &game, None, body).await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        assert_eq!(refused.json()["error_code"], "invalid_request", "{body}");
    }
    // Nothing started: no workflow wrote an audit row.
    assert!(app.op_log(&game).await.is_empty());

    // The CLI refuses them before it starts anything.
    for args in [["--signal", "SIGSTOP"], ["--timeout", "4000"]] {
        let out = rtmanager_command(app.config())
            .args(["stop", &game])
            .args(args)
            .output()
            .expect("run rtmanager stop");
        assert!(!out.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("signal") || stderr.contains("timeout"),
            "{stderr}"
        );
    }
    assert!(app.op_log(&game).await.is_empty());

    // Straight into the workflow (as the `temporal` CLI would): `invalid_request`, audited.
    let input = format!(
        r#"{{"game_id":"{game}","reason":"admin","op_source":"admin","timeout_secs":99999}}"#
    );
    let out = app.execute(OpKind::Stop, &input).await;
    assert_outcome(&out, Outcome::Failure, Some(ErrorCode::InvalidRequest));
    assert!(out
        .error_message
        .unwrap()
        .contains("timeout_secs must be 0-3600"));
    assert_eq!(app.op_log(&game).await.len(), 1);
    assert_eq!(app.container_running(&container).await, Some(true));
}
