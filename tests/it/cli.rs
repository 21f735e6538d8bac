//! The `rtmanager` binary's client commands against the local stack: each verb, `--json`
//! output parsed, `status`, and a mass stop of a few dozen games.

use crate::common;

use std::process::Output;

use crate::common::TestApp;
use rtmanager_domain::RuntimeStatus;

fn rtmanager(app: &TestApp, args: &[&str]) -> Output {
    common::rtmanager_command(app.config())
        .args(args)
        .env("RTMANAGER_LOG", "error")
        .output()
        .expect("run rtmanager")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verb_and_status_through_the_cli() {
    let mut app = TestApp::spawn().await;
    let game = app.new_game("cli");
    let image = common::game_image();

    let start = tokio::task::block_in_place(|| {
        rtmanager(&app, &["--json", "start", &game, "--image", &image])
    });
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    assert_eq!(json(&start)["record"]["status"], "running");

    let status = tokio::task::block_in_place(|| rtmanager(&app, &["--json", "status", &game]));
    assert_eq!(json(&status)[0]["game_id"], game.as_str());

    let restart = tokio::task::block_in_place(|| {
        rtmanager(&app, &["--json", "restart", &game, "--source-ref", "ops-1"])
    });
    assert_eq!(json(&restart)["outcome"], "success");
    let patch = tokio::task::block_in_place(|| {
        rtmanager(
            &app,
            &[
                "--json",
                "patch",
                &game,
                "--image",
                "rtmanager-game:nowhere",
            ],
        )
    });
    assert_eq!(patch.status.code(), Some(1), "a failed operation exits 1");
    assert_eq!(json(&patch)["error_code"], "not_found");

    let table =
        tokio::task::block_in_place(|| rtmanager(&app, &["stop", &game, "--reason", "admin"]));
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("GAME") && text.contains(&game) && text.contains("stopped"),
        "{text}"
    );

    let missing = tokio::task::block_in_place(|| rtmanager(&app, &["status", "no-such-game"]));
    assert_eq!(missing.status.code(), Some(1));
    let bad = tokio::task::block_in_place(|| rtmanager(&app, &["stop", "bad id"]));
    assert_eq!(
        bad.status.code(),
        Some(2),
        "bad input is refused before anything runs"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("game_id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_stop_stops_every_running_game() {
    let mut app = TestApp::spawn().await;
    let mut games = Vec::new();
    for _ in 0..30 {
        let (game, _) = app.running_game("mass").await;
        games.push(game);
    }
    let from_file = std::env::temp_dir().join(format!("{}.txt", common::unique("games")));
    std::fs::write(
        &from_file,
        format!("# two of them\n{}\n\n{}\n", games[0], games[1]),
    )
    .unwrap();
    let some = tokio::task::block_in_place(|| {
        rtmanager(
            &app,
            &["--json", "stop", "--from-file", from_file.to_str().unwrap()],
        )
    });
    assert!(some.status.success());
    assert_eq!(json(&some).as_array().unwrap().len(), 2);

    let all = tokio::task::block_in_place(|| {
        rtmanager(&app, &["stop", "--all-running", "--concurrency", "8"])
    });
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    let text = String::from_utf8_lossy(&all.stdout);
    assert!(
        text.contains("    28  success"),
        "summary by outcome: {text}"
    );
    for game in &games {
        assert_eq!(
            app.record(game).await.unwrap().status,
            RuntimeStatus::Stopped
        );
    }
}
