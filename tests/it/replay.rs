//! Determinism guard: histories recorded from real runs of each StopRuntime path, replayed by
//! the SDK's replayer against the current workflow code. A change that alters the command
//! sequence of an existing path fails here, in CI, before it can break running workflows.
//!
//! Record the histories of new paths with:
//! `scripts/dev test --test it -- --ignored replay::record_histories`. Histories already recorded
//! are kept: they are what workflows started by older code look like, and they must keep
//! replaying (a versioned change gates its new commands behind `patched`). Set
//! `RTMANAGER_RECORD_ALL=1` to re-record every one.

use crate::common;

use rtmanager_domain::OpKind;

use std::{collections::HashMap, path::PathBuf};

use crate::common::{image_json, inherited_stop_json, stop_json, unique, TestApp};
use temporalio_client::{WorkflowFetchHistoryOptions, WorkflowHistory};
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};

use rtmanager_workflows::{
    PatchRuntimeWorkflow, RestartRuntimeWorkflow, StartRuntimeWorkflow, StopRuntimeWorkflow,
};

fn replayer() -> WorkflowReplayer {
    WorkflowReplayer::new(
        WorkflowReplayerOptions::new()
            .register_workflow::<StopRuntimeWorkflow>()
            .unwrap()
            .register_workflow::<StartRuntimeWorkflow>()
            .unwrap()
            .register_workflow::<RestartRuntimeWorkflow>()
            .unwrap()
            .register_workflow::<PatchRuntimeWorkflow>()
            .unwrap()
            .build(),
    )
    .unwrap()
}

fn histories_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/histories")
}

#[tokio::test]
async fn recorded_histories_replay_against_the_current_code() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(histories_dir())
        .expect("tests/histories")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "expected the recorded histories, found {files:?}"
    );
    let replayer = replayer();
    for file in files {
        let history = WorkflowHistory::from_json(&std::fs::read(&file).unwrap()).unwrap();
        replayer
            .replay_workflow(history)
            .await
            .unwrap_or_else(|err| panic!("{} no longer replays: {err}", file.display()));
    }
}

#[tokio::test]
async fn a_history_that_does_not_match_the_code_is_rejected() {
    // The replayer must notice a mismatch, or the test above proves nothing: give a recorded
    // success the input of an invalid request, as a code change taking another path would.
    let text = std::fs::read_to_string(histories_dir().join("stop_success.json")).unwrap();
    let mut history: serde_json::Value = serde_json::from_str(&text).unwrap();
    // base64 of {"game_id":"bad id"}
    history["events"][0]["attributes"]["WorkflowExecutionStartedEventAttributes"]["input"]
        ["payloads"][0]["data"] = "eyJnYW1lX2lkIjoiYmFkIGlkIn0=".into();
    let tampered = history.to_string();
    assert!(text != tampered);
    let replayer = replayer();
    let history = WorkflowHistory::from_json(tampered.as_bytes()).unwrap();
    assert!(replayer.replay_workflow(history).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "records tests/histories from the running stack; run on purpose only"]
async fn record_histories() {
    let mut app = TestApp::spawn().await;
    let mut inputs: Vec<(&str, OpKind, String)> = Vec::new();

    let (running, _) = app.running_game("rec").await;
    inputs.push(("stop_success", OpKind::Stop, stop_json(&running)));
    inputs.push(("stop_replay_no_op", OpKind::Stop, stop_json(&running)));

    let (vanished, _) = app.vanished_game("rec").await;
    inputs.push(("stop_vanished", OpKind::Stop, stop_json(&vanished)));

    let busy = unique("rec");
    app.insert_record(&busy, "running", Some("x")).await;
    app.hold_lease(&busy, "other").await;
    inputs.push(("stop_conflict", OpKind::Stop, stop_json(&busy)));

    inputs.push(("stop_not_found", OpKind::Stop, stop_json(&unique("rec"))));

    // A child's stop under its parent's lease: the token is checked against Redis first.
    let (child, _) = app.leased_game("rec", "42:rec-parent").await;
    let inherited = inherited_stop_json(&child, "42:rec-parent");
    inputs.push(("stop_inherited_lease", OpKind::Stop, inherited));
    let forged = inherited_stop_json(&child, "43:forged");
    inputs.push(("stop_forged_lease", OpKind::Stop, forged));
    inputs.push((
        "stop_invalid_request",
        OpKind::Stop,
        r#"{"game_id":"bad id"}"#.to_owned(),
    ));

    let image = common::game_image();
    let fresh = unique("rec");
    let start = image_json(&fresh, &image);
    inputs.push(("start_success", OpKind::Start, start.clone()));
    inputs.push(("start_replay_no_op", OpKind::Start, start));
    let replace = format!(r#"{{"game_id":"{fresh}","op_source":"admin","source_ref":"rec-1"}}"#);
    inputs.push(("restart_success", OpKind::Restart, replace));
    let patch = image_json(&fresh, "rtmanager-game:missing");
    inputs.push(("patch_rollback", OpKind::Patch, patch));
    let missing = image_json(&unique("rec"), "rtmanager-game:missing");
    inputs.push(("start_image_missing", OpKind::Start, missing));

    let mut written = HashMap::new();
    let all = std::env::var("RTMANAGER_RECORD_ALL").is_ok_and(|v| v == "1");
    for (name, kind, input) in inputs {
        let path = histories_dir().join(format!("{name}.json"));
        if path.exists() && !all {
            continue;
        }
        let handle = app.start_workflow_as(kind, &unique("rec"), &input).await;
        let output = rtmanager::client::result(&handle).await.unwrap();
        eprintln!("{name}: {:?} {:?}", output.outcome, output.error_code);
        let json = handle
            .fetch_history(WorkflowFetchHistoryOptions::default())
            .to_json()
            .await
            .unwrap();
        std::fs::write(&path, &json).unwrap();
        written.insert(name, json.len());
    }
    eprintln!("recorded {written:?}");
}
