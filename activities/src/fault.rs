//! Fault injection for the crash and fencing tests, compiled into debug builds only.
//!
//! `RTMANAGER_FAULTS` holds comma-separated `<before|after>:<Activity>=<action>` items, where the
//! action is `abort` (the process dies on the spot, as in a crash) or `sleep:<ms>` (the worker
//! stalls, as a paused process would). Release builds ignore the variable.

/// A fault point: `stage` is `before` or `after` the activity's side effect.
pub async fn point(stage: &str, activity: &str) {
    #[cfg(debug_assertions)]
    {
        let Ok(spec) = std::env::var("RTMANAGER_FAULTS") else {
            return;
        };
        for item in spec.split(',') {
            let Some((place, action)) = item.split_once('=') else {
                continue;
            };
            if place != format!("{stage}:{activity}") {
                continue;
            }
            if action == "abort" {
                tracing::warn!(stage, activity, "fault injection: aborting the process");
                std::process::abort();
            }
            if let Some(ms) = action.strip_prefix("sleep:").and_then(|ms| ms.parse().ok()) {
                tracing::warn!(stage, activity, ms, "fault injection: stalling");
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = (stage, activity);
}
