//! Dependencies restarted while operations run: Redis (losing every lease), PostgreSQL, the
//! Temporal dev server (state on disk) and dockerd (which stops every container with it). Every operation ends with a result — success, or a
//! stable code — and none stays running. These restart shared services, so they run one after
//! another in a single test (cargo runs test binaries one at a time).

#[path = "it/common/mod.rs"]
mod common;

use std::{process::Command, time::Duration};

use common::{finish_within, TestApp};
use rtmanager_domain::{ErrorCode, Outcome, RuntimeStatus};

fn restart(service: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev");
    let out = Command::new("bash")
        .args([script, "restart", service])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restart {service}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a slow stop (the container ignores SIGTERM) and returns its handle once it holds the
/// lease and Docker is working.
async fn slow_stop(app: &mut TestApp) -> (String, String, rtmanager::client::Handle) {
    let (game, cid) = app.slow_game("restart").await;
    let handle = app.stop_under_way(&game, &cid).await;
    (game, cid, handle)
}

/// The operation's output: it must end instead of staying running.
async fn finish(handle: &rtmanager::client::Handle) -> rtmanager_domain::OperationOutput {
    let what = "the operation ends instead of staying running";
    finish_within(handle, Duration::from_secs(120), what).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_survive_dependency_restarts() {
    // PostgreSQL restarts during the Docker stop: the compare-and-swap waits it out.
    {
        let mut app = TestApp::spawn_with(|c| c.stop_timeout = Duration::from_secs(4)).await;
        let (game, _, handle) = slow_stop(&mut app).await;
        tokio::task::block_in_place(|| restart("postgres"));
        let out = finish(&handle).await;
        assert_eq!(out.outcome, Outcome::Success, "postgres restart: {out:?}");
        assert_eq!(
            app.record(&game).await.unwrap().status,
            RuntimeStatus::Stopped
        );
        assert_eq!(app.op_log(&game).await.len(), 1);
    }

    // Redis restarts empty during the Docker stop: the lease is gone, so the holder must not
    // write; it ends with `conflict`, and a new stop (a new lease, a higher fence) finishes.
    {
        let mut app = TestApp::spawn_with(|c| {
            c.stop_timeout = Duration::from_secs(6);
            c.lease_ttl = Duration::from_secs(5);
        })
        .await;
        let (game, cid, handle) = slow_stop(&mut app).await;
        tokio::task::block_in_place(|| restart("redis"));
        let out = finish(&handle).await;
        assert_eq!(
            out.error_code,
            Some(ErrorCode::Conflict),
            "redis restart: {out:?}"
        );
        assert_eq!(
            app.record(&game).await.unwrap().status,
            RuntimeStatus::Running,
            "no write without the lease"
        );
        let again = app.stop(&game).await;
        assert!(again.is_success(), "{again:?}");
        assert_eq!(app.container_running(&cid).await, Some(false));
        assert_eq!(app.lease_holder(&game).await, None);
    }

    // dockerd restarts mid-stop, taking every container down with it. The Docker step either
    // outlasts the outage (success) or runs out of retries first (`service_unavailable`, record
    // untouched); either way the operation ends, the lease is free, and a new stop finishes.
    {
        let mut app = TestApp::spawn_with(|c| c.stop_timeout = Duration::from_secs(8)).await;
        let (game, cid, handle) = slow_stop(&mut app).await;
        tokio::task::block_in_place(|| restart("dockerd"));
        let out = finish(&handle).await;
        assert!(
            out.is_success() || out.error_code == Some(ErrorCode::ServiceUnavailable),
            "dockerd restart: {out:?}"
        );
        assert_eq!(app.lease_holder(&game).await, None);
        let again = app.stop(&game).await;
        assert!(again.is_success(), "{again:?}");
        assert_ne!(
            app.record(&game).await.unwrap().status,
            RuntimeStatus::Running
        );
        assert_eq!(app.container_running(&cid).await, Some(false));
    }

    // The Temporal dev server restarts mid-operation (state kept on disk): the worker and the
    // client reconnect and the operation completes.
    {
        let mut app = TestApp::spawn_with(|c| c.stop_timeout = Duration::from_secs(5)).await;
        let (game, _, handle) = slow_stop(&mut app).await;
        tokio::task::block_in_place(|| restart("temporal"));
        let out = finish(&handle).await;
        assert!(out.is_success(), "temporal restart: {out:?}");
        assert_eq!(
            app.record(&game).await.unwrap().status,
            RuntimeStatus::Stopped
        );
        assert_eq!(app.op_log(&game).await.len(), 1);
        assert_eq!(app.lease_holder(&game).await, None);
    }
}
