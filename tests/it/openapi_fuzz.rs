//! Schemathesis against the served OpenAPI document: generated requests for every operation
//! (valid and invalid), checking that no response is a server error and that every status code,
//! content type and body conforms to `docs/openapi.json`.

use std::process::Command;

use crate::common::{run_ok_stdout, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_conforms_to_its_openapi_document_under_generated_input() {
    let app = TestApp::spawn().await;
    let bridge = app.spawn_bridge().await;
    let schemathesis = std::env::var("RTMANAGER_SCHEMATHESIS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/.dev/venv/bin/schemathesis").into()
    });
    let what = format!("{schemathesis} (installed by scripts/dev)");
    let report = tokio::task::block_in_place(|| {
        run_ok_stdout(
            Command::new(&schemathesis)
                .arg("run")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
                .args(["--url", &format!("http://{}", bridge.addr)])
                .args(["-H", &format!("Authorization: Bearer {}", bridge.token)])
                .args([
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                ])
                .args(["-n", "25", "--request-timeout", "60", "--phases", "coverage,fuzzing,stateful"])
                .env("NO_COLOR", "1"),
            &what,
        )
    });
    assert!(report.contains("passed"), "{report}");
}
