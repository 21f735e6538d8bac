//! A worker killed with SIGKILL while a stop is in flight: a new worker finishes the operation
//! with exactly one audit row and the lease released.

use std::time::Duration;

use crate::common::{worker_process, TestApp, TestConfig};
use rtmanager_domain::{Outcome, RuntimeStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_the_stop_completes_once() {
    let mut cfg = TestConfig::new();
    // The container ignores SIGTERM, so each stop attempt takes the whole graceful timeout.
    cfg.config.stop_timeout = Duration::from_secs(4);
    let mut app = TestApp::without_worker(cfg).await;
    let (game, cid) = app.slow_game("crash").await;

    let mut first = worker_process(app.config());
    let handle = app.stop_holding_lease(&game).await;
    // Let the Docker stop get under way, then kill the worker mid-step.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill().expect("SIGKILL the worker");
    first.wait().unwrap();

    let mut second = worker_process(app.config());
    let out = tokio::time::timeout(Duration::from_secs(90), rtmanager::client::result(&handle))
        .await
        .expect("the workflow completes on the new worker")
        .unwrap();
    let _ = second.kill();
    let _ = second.wait();

    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    assert_eq!(out.record.unwrap().status, RuntimeStatus::Stopped);
    assert_eq!(app.op_log(&game).await.len(), 1, "exactly one audit row");
    assert_eq!(app.lease_holder(&game).await, None, "lease released");
    assert_eq!(app.container_running(&cid).await, Some(false));
}
