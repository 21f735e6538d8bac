//! A worker killed with SIGKILL while a stop is in flight: a new worker finishes the operation
//! with exactly one audit row and the lease released.

use std::time::Duration;

use crate::common::{finish_within, worker_process, TestApp};
use rtmanager_domain::{Outcome, RuntimeStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_the_stop_completes_once() {
    // The container ignores SIGTERM, so each stop attempt takes the whole graceful timeout.
    let mut app = TestApp::spawn_without_worker(|c| c.stop_timeout = Duration::from_secs(4)).await;
    let (game, cid) = app.slow_game("crash").await;

    let mut first = worker_process(app.config());
    // Once the Docker stop is under way, the worker is killed mid-step.
    let handle = app.stop_under_way(&game, &cid).await;
    first.kill().expect("SIGKILL the worker");

    let mut second = worker_process(app.config());
    let what = "the workflow completes on the new worker";
    let out = finish_within(&handle, Duration::from_secs(90), what).await;
    let _ = second.kill();

    assert_eq!(out.outcome, Outcome::Success, "{out:?}");
    assert_eq!(out.record.unwrap().status, RuntimeStatus::Stopped);
    app.assert_ran_once(&game, "after the kill").await;
    assert_eq!(app.container_running(&cid).await, Some(false));
}
