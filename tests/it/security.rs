//! Security properties that need a real `rtmanager serve` process: it refuses to run open, binds
//! where told (loopback by default), and never writes the API token to its logs, even at debug
//! level and when a caller presents a wrong one.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

use crate::common::{eventually, free_local_addr, http_exchange, unique, TestApp};
use rtmanager::config::ExposeSecret;

fn serve(app: &TestApp, token: Option<&str>, addr: &str) -> Command {
    let config = app.config();
    let mut command = Command::new(env!("CARGO_BIN_EXE_rtmanager"));
    command
        .arg("serve")
        .env("RTMANAGER_TEMPORAL_ADDRESS", &config.temporal_address)
        .env("RTMANAGER_TASK_QUEUE", &config.task_queue)
        .env(
            "RTMANAGER_DATABASE_URL",
            config.database_url.expose_secret(),
        )
        .env("RTMANAGER_REDIS_URL", config.redis_url.expose_secret())
        .env(
            "RTMANAGER_STOP_STREAM",
            format!("{}:stop_jobs", unique("rtm-sec")),
        )
        .env("RTMANAGER_HTTP_ADDR", addr)
        .env("RTMANAGER_LOG", "debug")
        .env_remove("RTMANAGER_API_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("RTMANAGER_API_TOKEN", token);
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_refuses_to_run_without_a_token() {
    let app = TestApp::spawn().await;
    for token in [None, Some(""), Some("short")] {
        let out = tokio::task::block_in_place(|| {
            serve(&app, token, &free_local_addr()).output().unwrap()
        });
        assert_eq!(out.status.code(), Some(2), "{token:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("RTMANAGER_API_TOKEN"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_the_logs() {
    let mut app = TestApp::spawn().await;
    let token = format!("secret-{}", unique("tok"));
    let wrong = format!("guess-{}", unique("tok"));
    let addr = free_local_addr();
    let mut child = serve(&app, Some(&token), &addr).spawn().unwrap();
    let (game, _) = app.running_game("sec").await;

    // Wait for the bridge, then call it with the right and a wrong token.
    eventually("the bridge to come up", Duration::from_secs(10), || async {
        let connected = tokio::net::TcpStream::connect(&addr).await;
        connected.ok().map(drop)
    })
    .await;
    for (presented, expected) in [(&token, "HTTP/1.1 200"), (&wrong, "HTTP/1.1 401")] {
        let body = r#"{"reason":"admin"}"#;
        let request = format!(
            "POST /api/v1/internal/runtimes/{game}/stop HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {presented}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let response = http_exchange(&addr, &request)
            .await
            .expect("the bridge answers");
        assert!(
            response.starts_with(expected),
            "expected {expected}: {}",
            response.lines().next().unwrap_or("")
        );
    }
    let _ = child.kill();
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    child.wait().unwrap();
    assert!(
        logs.contains("HTTP bridge listening"),
        "debug logs were written"
    );
    assert!(!logs.contains(&token), "the token leaked into the logs");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
    assert!(
        !logs.contains(&wrong),
        "a presented token leaked into the logs"
    );
}
