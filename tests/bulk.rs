//! A reconcile round over 500 games: a test that needs the Docker engine to itself (500
//! containers created at once would slow every other test's Docker calls), so it is a binary
//! of its own (cargo runs test binaries one at a time).

#[path = "it/common/mod.rs"]
mod common;

use common::{game_image, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_over_500_games_with_nothing_drifted_writes_nothing() {
    use futures::StreamExt;
    let mut app = TestApp::spawn().await;
    let games: Vec<String> = (0..500).map(|_| app.new_game("bulk")).collect();
    let docker = app.docker.clone();
    let create = |game: String| {
        let (docker, labels) = (docker.clone(), app.game_labels(&game));
        async move {
            let body = bollard::models::ContainerCreateBody {
                image: Some(game_image()),
                labels: Some(labels),
                host_config: Some(bollard::models::HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let created = docker
                .create_container(
                    None::<bollard::query_parameters::CreateContainerOptions>,
                    body,
                )
                .await
                .expect("create");
            docker
                .start_container(&created.id, None)
                .await
                .expect("start");
            (game, created.id)
        }
    };
    let containers: Vec<(String, String)> = futures::stream::iter(games)
        .map(create)
        .buffer_unordered(16)
        .collect()
        .await;
    for (game, container) in &containers {
        app.insert_record(game, "running", Some(container)).await;
    }

    let config = app.config();
    let report = rtmanager::client::reconcile(&app.client, &config.task_queue, &config.host_id)
        .await
        .expect("a reconcile round");
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!(report.records_checked, 500, "{report:?}");
    assert_eq!(report.containers_checked, 500, "{report:?}");
    assert!(report.repaired.is_empty() && report.orphans.is_empty() && report.busy.is_empty());
    assert_eq!(app.op_log_count().await, 0, "nothing written");
    assert!(app.health_events().await.is_empty(), "nothing published");

    futures::stream::iter(&containers)
        .for_each_concurrent(16, |(_, id)| {
            let docker = docker.clone();
            async move {
                let options = bollard::query_parameters::RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                let _ = docker.remove_container(id, Some(options)).await;
            }
        })
        .await;
}
