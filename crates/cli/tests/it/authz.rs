//! The authorization matrix, generated from the server's route table: every endpoint, called with
//! no credential, as a stranger to the workspace, as the platform admin, and as a member with each
//! role, gets exactly the status the permission matrix predicts. A route with no entry here fails.

use reqwest::{Method, StatusCode};
use tresor_domain::permissions::{allows, required_role};
use tresor_domain::{Action, Role};
use tresor_server::{Access, RouteSpec, route_specs};

use tresor_client::{WesAttachment, WesClient};

use crate::support::*;

/// An engine that does nothing, for runs whose routes are checked, not their work.
fn noop_engine() -> tresor_service::WorkflowSettings {
    tresor_service::WorkflowSettings {
        engines: vec![tresor_service::EngineSettings {
            name: "noop".to_owned(),
            workflow_type: "NOOP".to_owned(),
            type_versions: vec!["1".to_owned()],
            version: "1".to_owned(),
            command: vec!["true".to_owned()],
            env: Default::default(),
            image: "x".to_owned(),
            job_image: "x".to_owned(),
            parameters: Default::default(),
            cpu_cores: 1,
        }],
        ..Default::default()
    }
}

fn noop_run() -> tresor_api_types::wes::RunRequest {
    tresor_api_types::wes::RunRequest {
        workflow_type: "NOOP".to_owned(),
        workflow_type_version: "1".to_owned(),
        workflow_url: "wf".to_owned(),
        ..Default::default()
    }
}

fn noop_files() -> Vec<WesAttachment> {
    vec![WesAttachment {
        name: "wf".to_owned(),
        content: b"x".to_vec(),
    }]
}

/// Who makes the request in one case.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Nobody,
    Stranger,
    PlatformAdmin,
    Member(Role),
}

/// What the matrix predicts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Allowed,
    Unauthenticated,
    Forbidden,
    Hidden,
}

/// Objects one case acts on, created fresh so destructive calls cannot disturb other cases.
struct Fixture {
    workspace: String,
    /// A task the workspace owner submitted.
    task: String,
    /// A workflow run the workspace owner started, and its engine's task.
    run: String,
    run_task: String,
    /// A member with role view, for the member routes.
    target: String,
    /// A token of the requester's own (absent for anonymous requests).
    own_token: Option<String>,
    /// An allowed directory an administrator may give workspaces for file:// storage.
    files: std::path::PathBuf,
}

/// The request for a route: the concrete path and body. `None` for a route this test does not
/// know yet, which fails the test.
fn request(spec: &RouteSpec, f: &Fixture, n: usize) -> Option<(String, Option<serde_json::Value>)> {
    let task_body = serde_json::json!({ "executors": [{ "image": "x", "command": ["true"] }] });
    let fill = |path: &str| {
        path.replace("{workspace}", &f.workspace)
            .replace("{user}", &f.target)
            .replace(
                "{token}",
                f.own_token.as_deref().unwrap_or("0000000000000000"),
            )
    };
    let path = spec.path;
    let found = match (spec.method.clone(), path) {
        (Method::GET, p) if p.ends_with("/service-info") => (fill(p), None),
        // WES: the fixture run; RunWorkflow's multipart body is made by the caller.
        (Method::GET, p) if p.ends_with("/runs") => (fill(p), None),
        (Method::GET, "/api/v1/workspaces/{workspace}/workflows") => (fill(path), None),
        (Method::POST, "/api/v1/workspaces/{workspace}/workflows") => {
            (fill(path), Some(serde_json::json!({ "register": true })))
        }
        (Method::POST, "/api/v1/workspaces/{workspace}/workflows/{name}/{version}/approve") => (
            fill(path)
                .replace("{name}", "noop")
                .replace("{version}", "1"),
            None,
        ),
        (Method::GET, "/api/v1/workspaces/{workspace}/workflow-policy") => (fill(path), None),
        (Method::PUT, "/api/v1/workspaces/{workspace}/workflow-policy") => (
            fill(path),
            Some(serde_json::json!({ "registered_only": false })),
        ),
        (Method::POST, p) if p.ends_with("/runs") => {
            (fill(p), Some(serde_json::json!({ "multipart": true })))
        }
        (Method::GET | Method::POST, p) if p.contains("/runs/{id}") => (
            fill(p)
                .replace("{id}", &f.run)
                .replace("{task}", &f.run_task),
            None,
        ),
        (Method::GET, "/internal/v1/tasks/{id}/run/tasks") => (path.replace("{id}", &f.task), None),
        (Method::POST, "/internal/v1/tasks/{id}/run/tasks") => {
            (path.replace("{id}", &f.task), Some(task_body))
        }
        (Method::GET, "/internal/v1/tasks/{id}/run/tasks/{task}") => (
            path.replace("{id}", &f.task).replace("{task}", &f.task),
            None,
        ),
        (Method::POST, "/internal/v1/tasks/{id}/run/tasks/{task}") => (
            path.replace("{id}", &f.task)
                .replace("{task}", &format!("{}:cancel", f.task)),
            None,
        ),
        (Method::GET, p) if p.ends_with("/tasks") => (fill(p), None),
        (Method::POST, p) if p.ends_with("/tasks") => (fill(p), Some(task_body)),
        (Method::GET, p) if p.ends_with("/tasks/{id}") => (fill(p).replace("{id}", &f.task), None),
        (Method::POST, p) if p.ends_with("/tasks/{id}") => {
            (fill(p).replace("{id}", &format!("{}:cancel", f.task)), None)
        }
        (
            Method::GET,
            "/api/v1/openapi.json"
            | "/healthz"
            | "/readyz"
            | "/metrics"
            | "/api/v1/me"
            | "/api/v1/users"
            | "/api/v1/tokens"
            | "/api/v1/workspaces",
        ) => (path.to_owned(), None),
        (Method::POST, "/api/v1/users") => (
            path.to_owned(),
            Some(serde_json::json!({ "name": format!("made-{n}") })),
        ),
        (Method::POST, "/api/v1/users/{user}/tokens") => {
            (fill(path), Some(serde_json::json!({ "name": "t" })))
        }
        (Method::POST, "/api/v1/tokens") => {
            (path.to_owned(), Some(serde_json::json!({ "name": "t" })))
        }
        (Method::DELETE, "/api/v1/tokens/{token}") => (fill(path), None),
        (Method::POST, "/api/v1/workspaces") => (
            path.to_owned(),
            Some(serde_json::json!({ "id": format!("made-{n}") })),
        ),
        (
            Method::GET | Method::DELETE,
            "/api/v1/workspaces/{workspace}" | "/api/v1/workspaces/{workspace}/members",
        ) => (fill(path), None),
        (Method::PUT, "/api/v1/workspaces/{workspace}/members/{user}") => {
            (fill(path), Some(serde_json::json!({ "role": "launch" })))
        }
        (Method::DELETE, "/api/v1/workspaces/{workspace}/members/{user}") => (fill(path), None),
        (
            Method::GET,
            "/api/v1/workspaces/{workspace}/secrets"
            | "/api/v1/workspaces/{workspace}/user-secrets",
        ) => (fill(path), None),
        (
            Method::PUT,
            "/api/v1/workspaces/{workspace}/secrets/{name}"
            | "/api/v1/workspaces/{workspace}/user-secrets/{name}",
        ) => (
            fill(path).replace("{name}", "NEW_SECRET"),
            Some(serde_json::json!({ "value": "matrix-value" })),
        ),
        (
            Method::DELETE,
            "/api/v1/workspaces/{workspace}/secrets/{name}"
            | "/api/v1/workspaces/{workspace}/user-secrets/{name}",
        ) => (fill(path).replace("{name}", "MY_SECRET"), None),
        (Method::GET, "/internal/v1/tasks/{id}/inputs") => (path.replace("{id}", &f.task), None),
        (Method::POST, "/internal/v1/tasks/{id}/secrets") => (
            path.replace("{id}", &f.task),
            Some(serde_json::json!({ "delivery": "authz-matrix-delivery-1" })),
        ),
        (Method::POST, "/internal/v1/tasks/{id}/token") => (
            path.replace("{id}", &f.task),
            Some(serde_json::json!({ "audience": "tresor" })),
        ),
        (Method::POST, "/internal/v1/tasks/{id}/uploads") => (
            path.replace("{id}", &f.task),
            Some(serde_json::json!({ "urls": [] })),
        ),
        (
            Method::GET,
            "/.well-known/openid-configuration" | "/.well-known/jwks.json" | "/oauth2/authorize",
        ) => (path.to_owned(), None),
        (
            Method::GET | Method::DELETE,
            "/api/v1/workspaces/{workspace}/storage"
            | "/api/v1/workspaces/{workspace}/file-storage",
        ) => (fill(path), None),
        (Method::PUT, "/api/v1/workspaces/{workspace}/file-storage") => {
            let dir = f.files.join(format!("case-{n}"));
            std::fs::create_dir_all(&dir).unwrap();
            (fill(path), Some(serde_json::json!({ "dir": dir })))
        }
        (Method::PUT, "/api/v1/workspaces/{workspace}/storage") => (
            fill(path),
            Some(serde_json::json!({ "bucket": "matrix", "prefix": format!("case-{n}/") })),
        ),
        (Method::GET, "/api/v1/compute-envs") => (path.to_owned(), None),
        (Method::GET, "/api/v1/workspaces/{workspace}/compute-env") => (fill(path), None),
        (Method::PUT, "/api/v1/workspaces/{workspace}/compute-env") => (
            fill(path),
            Some(serde_json::json!({ "compute_env": "local" })),
        ),
        (Method::GET, "/api/v1/workspaces/{workspace}/egress") => (fill(path), None),
        (Method::PUT, "/api/v1/workspaces/{workspace}/egress") => (
            fill(path),
            // Emptying is allowed whether or not the operator allows egress.
            Some(serde_json::json!({ "allow": [] })),
        ),
        (Method::GET, "/api/v1/workspaces/{workspace}/image-policy") => (fill(path), None),
        (Method::PUT, "/api/v1/workspaces/{workspace}/image-policy") => (
            fill(path),
            Some(serde_json::json!({ "allowed": ["docker.io/library/*"] })),
        ),
        (Method::POST, "/internal/v1/tasks/{id}/bootstrap") => (
            path.replace("{id}", &f.task),
            Some(serde_json::json!({ "job_id": "1" })),
        ),
        (Method::POST, "/internal/v1/tasks/{id}/status") => (
            path.replace("{id}", &f.task),
            Some(serde_json::json!({
                "phase": "RUNNING",
                "log": { "logs": [], "outputs": [] },
            })),
        ),
        (Method::POST, "/api/v1/compute-envs/{id}/check") => (
            path.replace("{id}", "local"),
            Some(serde_json::json!({ "workspace": f.workspace })),
        ),
        _ => return None,
    };
    Some(found)
}

/// The matrix's prediction for one case.
fn expect(spec: &RouteSpec, who: Who) -> Expect {
    let personal = spec.path.starts_with("/ga4gh/");
    match (spec.access, who) {
        (Access::Open, _) => Expect::Allowed,
        // Only a task's worker holds a task credential: no user token, admin's included, works.
        (Access::TaskCredential, _) => Expect::Unauthenticated,
        (_, Who::Nobody) => Expect::Unauthenticated,
        (Access::Authenticated, _) => Expect::Allowed,
        (Access::Admin, Who::PlatformAdmin) => Expect::Allowed,
        (Access::Admin, _) => Expect::Forbidden,
        // On the personal routes everyone acts in their own workspace, as its owner: listing and
        // submitting work, but the fixture task (in another workspace) does not exist for them.
        (Access::Workspace(_), _) if personal => {
            if spec.path.contains("{id}") {
                Expect::Hidden
            } else {
                Expect::Allowed
            }
        }
        (Access::Workspace(_), Who::Stranger | Who::PlatformAdmin) => Expect::Hidden,
        (Access::Workspace(action), Who::Member(role)) => {
            // The fixture task was submitted by the owner: anyone else cancelling it needs maintain.
            let action = if action == Action::CancelOwnTask && role != Role::Owner {
                Action::CancelAnyTask
            } else {
                action
            };
            if allows(role, action) {
                Expect::Allowed
            } else {
                Expect::Forbidden
            }
        }
    }
}

fn status_matches(spec: &RouteSpec, expect: Expect, status: StatusCode) -> bool {
    match expect {
        // Strict relying parties need the authorization endpoint to exist; it refuses every
        // request, since tresor has no interactive login.
        Expect::Allowed if spec.path == "/oauth2/authorize" => status == StatusCode::BAD_REQUEST,
        // Allowed means the permission check passed: success, or a state conflict such as
        // cancelling a task that already finished, never a refusal.
        Expect::Allowed => status.is_success() || status == StatusCode::CONFLICT,
        Expect::Unauthenticated => status == StatusCode::UNAUTHORIZED,
        Expect::Forbidden => status == StatusCode::FORBIDDEN,
        Expect::Hidden => status == StatusCode::NOT_FOUND,
    }
}

#[tokio::test]
async fn every_route_times_every_kind_of_caller_gets_the_matrix_status() {
    // Storage is configured (nothing listens at the endpoint: these calls only authorize and
    // record, and preflight reports the unreachable endpoint in its body).
    let files = traversable_tempdir();
    let files_dir = std::fs::canonicalize(files.path()).unwrap();
    let server = TestServer::start_with(|s| {
        s.services.s3 = Some(std::sync::Arc::new(s3_settings(
            "http://127.0.0.1:9",
            "unused",
        )));
        s.services.local.allowed_dirs.push(files_dir.clone());
        s.services.workflows = noop_engine();
    })
    .await;
    let http = reqwest::Client::new();
    let whos: Vec<Who> = [Who::Nobody, Who::Stranger, Who::PlatformAdmin]
        .into_iter()
        .chain(Role::ALL.map(Who::Member))
        .collect();
    let specs = route_specs();
    let mut failures = Vec::new();
    let mut cases = 0;
    for (n, spec) in specs.iter().enumerate() {
        for (m, who) in whos.iter().enumerate() {
            let case = n * 100 + m;
            let owner = server.user(&format!("owner-{case}")).await;
            let workspace = format!("ws-{case}");
            owner.platform.create_workspace(&workspace).await.unwrap();
            // A task only where the route names one (each task runs a sandbox).
            let task = if spec.path.contains("{id}")
                && !spec.path.contains("/runs/{id}")
                && !spec.path.contains("compute-envs")
            {
                owner
                    .tes_in(&workspace)
                    .create_task(&sh_task("true"))
                    .await
                    .unwrap()
            } else {
                "01a22c5f-0000-7000-8000-000000000000".to_owned()
            };
            // The noop workflow is registered where runs are started or approved, so that a
            // launch member's run is one it may start.
            if spec.path.contains("/runs") || spec.path.contains("/approve") {
                owner
                    .platform
                    .register_workflow(&workspace, "noop", "1", &noop_run(), &noop_files())
                    .await
                    .unwrap();
            }
            // A run only where the route needs one: each costs a run directory and a task.
            let (run, run_task) = if spec.path.contains("/runs/{id}") {
                let wes = WesClient::for_workspace(&server.url, &workspace, &owner.token).unwrap();
                let run = wes.run_workflow(&noop_run(), &noop_files()).await.unwrap();
                let run_task = wes.run_tasks(&run).await.unwrap().task_logs[0].id.clone();
                (run, run_task)
            } else {
                (String::new(), String::new())
            };
            let target = server.user(&format!("target-{case}")).await;
            owner
                .platform
                .set_member(&workspace, &target.id, "view")
                .await
                .unwrap();
            let token = match who {
                Who::Nobody => None,
                Who::PlatformAdmin => Some(server.admin_token.clone()),
                Who::Member(Role::Owner) => Some(owner.token.clone()),
                Who::Stranger | Who::Member(_) => {
                    let user = server.user(&format!("who-{case}")).await;
                    if let Who::Member(role) = who {
                        owner
                            .platform
                            .set_member(&workspace, &user.id, role.as_str())
                            .await
                            .unwrap();
                    }
                    Some(user.token.clone())
                }
            };
            // Secrets to delete: a workspace secret, and the requester's own user secret.
            owner
                .platform
                .put_secret(&workspace, false, "MY_SECRET", b"owner-value", None)
                .await
                .unwrap();
            if let (Who::Member(_), Some(t)) = (who, &token) {
                let mine = tresor_client::PlatformClient::new(&server.url, Some(t)).unwrap();
                let _ = mine
                    .put_secret(&workspace, true, "MY_SECRET", b"member-value", None)
                    .await;
            }
            let own_token = match &token {
                Some(t) => Some(
                    tresor_client::PlatformClient::new(&server.url, Some(t))
                        .unwrap()
                        .create_token("extra", None)
                        .await
                        .unwrap()
                        .id,
                ),
                None => None,
            };
            let fixture = Fixture {
                workspace,
                task,
                run,
                run_task,
                target: target.id.clone(),
                own_token,
                files: files_dir.clone(),
            };
            let Some((path, body)) = request(spec, &fixture, case) else {
                panic!(
                    "route {} {} has no entry in the authorization matrix test; add one to `request`",
                    spec.method, spec.path
                );
            };
            let mut req = http.request(spec.method.clone(), format!("{}{path}", server.url));
            if let Some(token) = &token {
                req = req.bearer_auth(token);
            }
            match body {
                Some(body) if body.get("multipart").is_some() => {
                    req = req.multipart(WesClient::form(&noop_run(), &noop_files()));
                }
                Some(body) if body.get("register").is_some() => {
                    req = req.multipart(
                        WesClient::form(&noop_run(), &noop_files())
                            .text("name", format!("made-{case}"))
                            .text("version", "1"),
                    );
                }
                Some(body) => req = req.json(&body),
                None => {}
            }
            let status = req.send().await.unwrap().status();
            let expected = expect(spec, *who);
            cases += 1;
            if !status_matches(spec, expected, status) {
                failures.push(format!(
                    "{} {} as {who:?}: expected {expected:?}, got {status}",
                    spec.method, spec.path
                ));
            }
        }
    }
    eprintln!(
        "authorization matrix: {cases} cases over {} routes",
        specs.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {cases} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Sanity: the matrix covers both API families and every role.
    assert!(
        specs.iter().any(|s| s.path.starts_with("/api/v1"))
            && specs.iter().any(|s| s.path.starts_with("/w/"))
    );
    assert_eq!(required_role(Action::DeleteWorkspace), Role::Owner);
}
