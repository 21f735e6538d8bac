//! The compose deployment is valid (images cannot be pulled here, so it is validated, not run).

use std::process::Command;

use crate::common::run_ok;

#[test]
fn docker_compose_file_is_valid_and_wired() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = run_ok(
        Command::new("docker-compose")
            .args(["-f", &format!("{root}/docker-compose.yml"), "config"])
            .env("RTMANAGER_API_TOKEN", "a-token-for-validation-only"),
        "docker-compose (installed by scripts/dev)",
    );
    let config = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "RTMANAGER_TEMPORAL_ADDRESS: http://temporal:7233",
        "RTMANAGER_DATABASE_URL: postgres://rtmanager:rtmanager@postgres:5432/rtmanager",
        "RTMANAGER_REDIS_URL: redis://redis:6379",
        "/var/run/docker.sock",
        "RTMANAGER_API_TOKEN: a-token-for-validation-only",
    ] {
        assert!(config.contains(needle), "missing {needle:?} in\n{config}");
    }
    // Without a token the deployment refuses to come up rather than run the bridge open.
    let open = Command::new("docker-compose")
        .args(["-f", &format!("{root}/docker-compose.yml"), "config"])
        .env_remove("RTMANAGER_API_TOKEN")
        .output()
        .unwrap();
    assert!(!open.status.success());
    assert!(String::from_utf8_lossy(&open.stderr).contains("RTMANAGER_API_TOKEN"));
}
