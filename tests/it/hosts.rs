//! Two Docker hosts, two workers: placement, routing, a restart and a patch that stay on their
//! host, a race of starts, a host whose worker is killed, draining, and bad host names. Host
//! `a` is the test app's in-process worker on the first engine; host `b` is an `rtmanager
//! worker` process on the second engine (`RTMANAGER_DEV_DOCKER_HOSTS`, started by
//! `scripts/dev up`), so it can be SIGKILLed.

use std::time::{Duration, Instant};

use bollard::Docker;
use rtmanager::config::Config;
use rtmanager_domain::{ErrorCode, OpKind, OperationOutput, Outcome};

use crate::common::{
    assert_outcome, eventually, image_json, list_game_containers, rtmanager_command, run_ok,
    run_ok_stdout, stop_json, worker_process, Bridge, HttpResponse, TestApp, WorkerProcess,
};

const RUNTIMES: &str = "/api/v1/internal/runtimes";
const HOSTS: &str = "/api/v1/internal/hosts";

/// The second engine's endpoint.
fn second_engine() -> String {
    crate::common::dev_docker_hosts()[1].clone()
}

/// A test's two hosts: `a` in process, `b` a worker process on the second engine.
struct TwoHosts {
    app: TestApp,
    bridge: Bridge,
    b_config: Config,
    b_worker: Option<WorkerProcess>,
    b_docker: Docker,
}

impl TwoHosts {
    async fn spawn() -> Self {
        let app = TestApp::spawn_with(|c| {
            c.host_id = rtmanager_domain::HostId::parse("a").unwrap();
            c.host_heartbeat = Duration::from_millis(500);
            c.host_down_after = Duration::from_secs(3);
            c.host_wait = Duration::from_secs(4);
        })
        .await;
        let b_config = Config {
            host_id: rtmanager_domain::HostId::parse("b").unwrap(),
            docker_host: second_engine(),
            ..app.config().clone()
        };
        let b_docker = Docker::connect_with_unix(
            b_config.docker_host.trim_start_matches("unix://"),
            30,
            bollard::API_DEFAULT_VERSION,
        )
        .expect("the second engine");
        let bridge = app.spawn_bridge().await;
        let mut hosts = Self {
            app,
            bridge,
            b_config,
            b_worker: None,
            b_docker,
        };
        hosts.start_b().await;
        hosts
    }

    /// (Re)starts host b's worker and waits until both hosts are active.
    async fn start_b(&mut self) {
        self.b_worker = Some(worker_process(&self.b_config));
        for host in ["a", "b"] {
            self.await_state(host, "active").await;
        }
    }

    async fn hosts(&self) -> serde_json::Value {
        let listed = self.bridge.call("GET", HOSTS, &[], None).await;
        assert_eq!(listed.status, 200, "{}", listed.body);
        listed.json()
    }

    async fn await_state(&self, host: &str, state: &str) {
        let what = format!("host {host} to be {state}");
        eventually(&what, Duration::from_secs(30), || async {
            let hosts = self.hosts().await;
            let found = hosts.as_array()?.iter().find(|h| h["id"] == host)?.clone();
            (found["state"] == state).then_some(())
        })
        .await;
    }

    async fn post(&self, game: &str, verb: &str, body: &str) -> HttpResponse {
        let path = format!("{RUNTIMES}/{game}/{verb}");
        self.bridge.call("POST", &path, &[], Some(body)).await
    }

    /// Starts `game` through the bridge, on `host` when given; returns the host it landed on.
    async fn start(&mut self, game: &str, host: Option<&str>) -> String {
        let body = match host {
            Some(host) => format!(r#"{{"image_ref":"{}","host":"{host}"}}"#, image()),
            None => format!(r#"{{"image_ref":"{}"}}"#, image()),
        };
        let started = self.post(game, "start", &body).await;
        assert_eq!(started.status, 200, "{}", started.body);
        started.json()["record"]["host_id"]
            .as_str()
            .expect("a record names its host")
            .to_owned()
    }

    /// Runs a workflow on the shared task queue, as `temporal workflow execute --task-queue
    /// rtmanager` does: no host named, any worker may run it.
    async fn on_shared_queue(&self, kind: OpKind, json: &str) -> OperationOutput {
        let input = rtmanager::client::json_input(json.as_bytes());
        let (queue, id) = (&self.app.config().task_queue, crate::common::unique("wf"));
        let handle = rtmanager::client::start_raw(&self.app.client, queue, kind, &id, input)
            .await
            .expect("start on the shared queue");
        rtmanager::client::result(&handle)
            .await
            .expect("the output")
    }

    /// Whether `game` has a running container on host `host`'s engine.
    async fn running_on(&self, host: &str, game: &str) -> bool {
        let docker = if host == "b" {
            &self.b_docker
        } else {
            &self.app.docker
        };
        list_game_containers(docker, game)
            .await
            .iter()
            .any(|(_, running)| *running)
    }

    async fn games_on(&self, host: &str, game: &str) -> usize {
        let docker = if host == "b" {
            &self.b_docker
        } else {
            &self.app.docker
        };
        list_game_containers(docker, game).await.len()
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // The first engine's containers go with the app; the second's are removed here.
        let docker = self.b_docker.clone();
        let games = self.app.game_ids();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                for game in games {
                    for (id, _) in list_game_containers(&docker, &game).await {
                        let options = bollard::query_parameters::RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        };
                        let _ = docker.remove_container(&id, Some(options)).await;
                    }
                }
            });
        })
        .join();
    }
}

fn image() -> String {
    crate::common::game_image()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn games_are_placed_on_both_hosts_and_their_operations_stay_there() {
    let mut hosts = TwoHosts::spawn().await;
    let (on_b, first, second) = (
        hosts.app.new_game("hb"),
        hosts.app.new_game("ha"),
        hosts.app.new_game("ha"),
    );
    assert_eq!(hosts.start(&on_b, Some("b")).await, "b");
    assert!(hosts.running_on("b", &on_b).await);
    assert_eq!(hosts.games_on("a", &on_b).await, 0, "nothing on a");
    let elsewhere = format!(r#"{{"image_ref":"{}","host":"a"}}"#, image());
    let refused = hosts.post(&on_b, "start", &elsewhere).await;
    assert_eq!(
        refused.status, 409,
        "a running game is not moved: {}",
        refused.body
    );
    // The policy: fewest running games relative to capacity, ties by id.
    assert_eq!(hosts.start(&first, None).await, "a");
    assert_eq!(hosts.start(&second, None).await, "a");
    assert!(hosts.running_on("a", &first).await && hosts.running_on("a", &second).await);

    for verb in ["restart", "patch"] {
        let body = if verb == "patch" {
            r#"{"image_ref":"rtmanager-game:v2"}"#.to_owned()
        } else {
            "{}".to_owned()
        };
        let replaced = hosts.post(&on_b, verb, &body).await;
        assert_eq!(replaced.status, 200, "{verb}: {}", replaced.body);
        assert_eq!(replaced.json()["record"]["host_id"], "b", "{verb}");
        assert!(hosts.running_on("b", &on_b).await, "{verb} stays on b");
        assert_eq!(
            hosts.games_on("a", &on_b).await,
            0,
            "{verb} touches nothing on a"
        );
    }

    let stopped = hosts.post(&on_b, "stop", r#"{"reason":"admin"}"#).await;
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert!(!hosts.running_on("b", &on_b).await, "stopped on b");
    assert!(
        hosts.running_on("a", &first).await && hosts.running_on("a", &second).await,
        "a's games untouched"
    );

    // The `temporal` CLI's way in: the shared queue, no host named; the stop reaches b.
    assert_eq!(
        hosts.start(&on_b, None).await,
        "b",
        "a stopped game keeps its host"
    );
    let out = hosts.on_shared_queue(OpKind::Stop, &stop_json(&on_b)).await;
    assert_outcome(&out, Outcome::Success, None);
    assert!(!hosts.running_on("b", &on_b).await);
    // A stale route (a's own queue for a game of b's) still reaches b.
    assert_eq!(hosts.start(&on_b, None).await, "b");
    let out = hosts.app.stop(&on_b).await;
    assert_outcome(&out, Outcome::Success, None);
    assert!(!hosts.running_on("b", &on_b).await);

    // A start on the shared queue, naming b: placed there, Docker steps sent to b.
    let shared = hosts.app.new_game("hs");
    let json = image_json(&shared, &image()).replace('}', r#","host":"b"}"#);
    let out = hosts.on_shared_queue(OpKind::Start, &json).await;
    assert_outcome(&out, Outcome::Success, None);
    assert!(hosts.running_on("b", &shared).await);
    assert_eq!(hosts.games_on("a", &shared).await, 0);

    let listed = hosts.hosts().await;
    let a = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["id"] == "a")
        .unwrap();
    assert_eq!(
        (a["running_games"].as_i64(), a["games"].as_i64()),
        (Some(2), Some(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_of_starts_places_a_game_once() {
    let mut hosts = TwoHosts::spawn().await;
    let game = hosts.app.new_game("race");
    let body = format!(r#"{{"image_ref":"{}"}}"#, image());
    let answers =
        futures::future::join_all((0..4).map(|_| hosts.post(&game, "start", &body))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    let containers = hosts.games_on("a", &game).await + hosts.games_on("b", &game).await;
    assert_eq!(containers, 1, "one container on one host");
    let record = hosts.app.record(&game).await.expect("a record");
    assert!(hosts.running_on(record.host_id.as_str(), &game).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_worker_is_gone_answers_503_in_bounded_time_and_nothing_runs_twice() {
    let mut hosts = TwoHosts::spawn().await;
    let (on_a, on_b) = (hosts.app.new_game("ka"), hosts.app.new_game("kb"));
    assert_eq!(hosts.start(&on_b, Some("b")).await, "b");
    assert_eq!(hosts.start(&on_a, Some("a")).await, "a");

    let _ = hosts.b_worker.take().expect("b runs").kill();
    hosts.await_state("b", "down").await;

    let started = Instant::now();
    let refused = hosts.post(&on_b, "stop", r#"{"reason":"admin"}"#).await;
    let waited = started.elapsed();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.json()["error_code"], "service_unavailable");
    assert!(waited < Duration::from_secs(20), "answered in {waited:?}");
    assert_eq!(hosts.app.lease_holder(&on_b).await, None, "no lease left");

    // Host a is not slowed: its game stops at once.
    let started = Instant::now();
    let stopped = hosts.post(&on_a, "stop", r#"{"reason":"admin"}"#).await;
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // b returns: the refused stop does not run late; the next one stops the game once.
    hosts.start_b().await;
    assert!(
        hosts.running_on("b", &on_b).await,
        "the refused stop never ran"
    );
    let stopped = hosts.post(&on_b, "stop", r#"{"reason":"admin"}"#).await;
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert!(!hosts.running_on("b", &on_b).await);
    let rows = hosts.app.op_log(&on_b).await;
    let stops: Vec<_> = rows.iter().filter(|r| r.op_kind == "stop").collect();
    assert_eq!(stops.len(), 2, "one audit row per stop: {rows:?}");
    assert_eq!(
        stops
            .iter()
            .filter(|r| r.result.outcome == "success")
            .count(),
        1,
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_host_gets_no_new_game_until_undrained() {
    let mut hosts = TwoHosts::spawn().await;
    let drained = hosts
        .bridge
        .call("POST", &format!("{HOSTS}/b/drain"), &[], None)
        .await;
    assert_eq!(drained.status, 200, "{}", drained.body);
    assert_eq!(drained.json()["state"], "draining");

    let game = hosts.app.new_game("dr");
    let body = format!(r#"{{"image_ref":"{}","host":"b"}}"#, image());
    let refused = hosts.post(&game, "start", &body).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(hosts.games_on("b", &game).await, 0);
    for _ in 0..3 {
        let game = hosts.app.new_game("dr");
        assert_eq!(hosts.start(&game, None).await, "a", "the policy skips b");
    }

    let undrained = hosts
        .bridge
        .call("POST", &format!("{HOSTS}/b/undrain"), &[], None)
        .await;
    assert_eq!(undrained.json()["state"], "active");
    assert_eq!(hosts.start(&game, Some("b")).await, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_host_names_are_invalid_requests() {
    let mut hosts = TwoHosts::spawn().await;
    let game = hosts.app.new_game("bad");
    for (host, status) in [("b@x", 400), ("-b", 400), ("nowhere", 400)] {
        let body = format!(r#"{{"image_ref":"{}","host":"{host}"}}"#, image());
        let refused = hosts.post(&game, "start", &body).await;
        assert_eq!(refused.status, status, "{host}: {}", refused.body);
        assert_eq!(refused.json()["error_code"], "invalid_request", "{host}");
    }
    assert!(hosts.app.record(&game).await.is_none(), "nothing recorded");
    let bad = hosts
        .bridge
        .call("POST", &format!("{HOSTS}/-x/drain"), &[], None)
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let unknown = hosts
        .bridge
        .call("POST", &format!("{HOSTS}/zz/drain"), &[], None)
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    // Through the workflow input too (the `temporal` CLI's way in).
    let json = image_json(&game, &image()).replace('}', r#","host":"a/b"}"#);
    let out = hosts
        .app
        .execute(rtmanager_domain::OpKind::Start, &json)
        .await;
    assert_outcome(&out, Outcome::Failure, Some(ErrorCode::InvalidRequest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_all_running_reports_each_host() {
    let mut hosts = TwoHosts::spawn().await;
    for host in ["a", "b", "b"] {
        let game = hosts.app.new_game("all");
        hosts.start(&game, Some(host)).await;
    }
    let stdout = run_ok_stdout(
        rtmanager_command(hosts.app.config()).args(["stop", "--all-running"]),
        "rtmanager stop",
    );
    // The summary: a `HOST GAMES OUTCOME` header, then one line per host and outcome.
    let summary: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("HOST"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        summary,
        [vec!["a", "1", "success"], vec!["b", "2", "success"]],
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_stop_games_stops_that_hosts_games_only() {
    let mut hosts = TwoHosts::spawn().await;
    let (on_a, on_b) = (hosts.app.new_game("da"), hosts.app.new_game("db"));
    hosts.start(&on_a, Some("a")).await;
    hosts.start(&on_b, Some("b")).await;
    let stdout = run_ok_stdout(
        rtmanager_command(hosts.app.config()).args(["host", "drain", "b", "--stop-games"]),
        "rtmanager host drain",
    );
    assert!(stdout.contains("host b: draining"), "{stdout}");
    assert!(!hosts.running_on("b", &on_b).await, "b's game stopped");
    assert!(hosts.running_on("a", &on_a).await, "a's game untouched");
    let rows = hosts.app.op_log(&on_b).await;
    assert!(
        rows.iter()
            .any(|r| r.op_kind == "stop" && r.result.outcome == "success"),
        "{rows:?}"
    );
    hosts.await_state("b", "draining").await;
    run_ok(
        rtmanager_command(hosts.app.config()).args(["host", "undrain", "b"]),
        "rtmanager host undrain",
    );
    hosts.await_state("b", "active").await;
    let unknown = rtmanager_command(hosts.app.config())
        .args(["host", "drain", "nowhere"])
        .output()
        .expect("run rtmanager host drain");
    assert_eq!(unknown.status.code(), Some(1), "an unknown host exits 1");
}
