//! Resource limits on the local executor: requests beyond the server's maxima are refused.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use tresor_api_types::tes::{TesResources, TesState, TesTask};

use crate::support::*;

fn with_resources(mut task: TesTask, resources: TesResources) -> TesTask {
    task.resources = Some(resources);
    task
}

fn time_limit(value: &str) -> TesResources {
    TesResources {
        backend_parameters: Some(BTreeMap::from([("time_limit".into(), value.into())])),
        ..TesResources::default()
    }
}

#[tokio::test]
async fn requests_beyond_the_servers_maxima_are_refused_naming_the_field() {
    let server = TestServer::start_with(|s| {
        s.local.limits.max_ram_gb = 1.0;
        s.local.limits.max_disk_gb = 2.0;
        s.local.limits.max_run_seconds = 60;
    })
    .await;
    let refused = |field: &'static str, task: TesTask| {
        let client = &server.client;
        async move {
            let err = client.create_task(&task).await.unwrap_err();
            assert_eq!(
                err.status(),
                Some(StatusCode::BAD_REQUEST),
                "{field}: {err}"
            );
            assert!(err.to_string().contains(field), "{field}: {err}");
            err.to_string()
        }
    };

    let mut many = sh_task("true");
    many.executors = vec![executor(&["true"]); 65];
    let message = refused("executors", many).await;
    assert!(
        message.contains("64 per task (local.max_executors)"),
        "{message}"
    );

    let big = |ram_gb, disk_gb| {
        with_resources(
            sh_task("true"),
            TesResources {
                ram_gb,
                disk_gb,
                ..TesResources::default()
            },
        )
    };
    refused("resources.ram_gb", big(Some(1.5), None)).await;
    refused("resources.disk_gb", big(None, Some(3.0))).await;
    refused(
        "resources.backend_parameters.time_limit",
        with_resources(sh_task("true"), time_limit("2")),
    )
    .await;

    // At the maxima, a task is accepted and runs.
    let mut most = sh_task("true");
    most.executors = vec![executor(&["sleep", "60"]); 64];
    let id = server.client.create_task(&most).await.unwrap();
    server.client.cancel_task(&id).await.unwrap();
    let fits = with_resources(
        sh_task("true"),
        TesResources {
            ram_gb: Some(1.0),
            disk_gb: Some(2.0),
            ..time_limit("1")
        },
    );
    assert_eq!(server.run(&fits).await.state, Some(TesState::Complete));
}
