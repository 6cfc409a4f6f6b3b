//! The route table: every endpoint with who may call it. The router is built from this table
//! only, so no endpoint exists without an access rule, and the OpenAPI document and the
//! authorization-matrix test read the same table.

use axum::Json;
use axum::http::Method;
use axum::routing::MethodRouter;
use serde_json::{Value, json};
use tresor_domain::Action;

use crate::{AppState, compute, identity, images, ops, platform, secrets, tes, wes};

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a credential.
    Open,
    /// Any authenticated user.
    Authenticated,
    /// Platform administrators.
    Admin,
    /// Members of the workspace (named in the path, or the caller's personal one) whose role
    /// allows the action.
    Workspace(Action),
    /// A task's own worker, with the credential its task was started with (valid while the task
    /// is active); no user token works.
    TaskCredential,
}

/// One endpoint.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
}

/// Every endpoint with its handler.
pub(crate) fn table() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    use axum::routing::{delete, get, post, put};
    let spec =
        |method: Method, path: &'static str, access: Access, summary: &'static str| RouteSpec {
            method,
            path,
            access,
            summary,
        };
    let mut routes: Vec<(RouteSpec, MethodRouter<AppState>)> = Vec::new();
    // TES for the caller's personal workspace, and for a named one (stock clients pick a
    // workspace by base URL alone).
    for [info, old_info, tasks, task] in [
        [
            "/ga4gh/tes/v1/service-info",
            "/ga4gh/tes/v1/tasks/service-info",
            "/ga4gh/tes/v1/tasks",
            "/ga4gh/tes/v1/tasks/{id}",
        ],
        [
            "/w/{workspace}/ga4gh/tes/v1/service-info",
            "/w/{workspace}/ga4gh/tes/v1/tasks/service-info",
            "/w/{workspace}/ga4gh/tes/v1/tasks",
            "/w/{workspace}/ga4gh/tes/v1/tasks/{id}",
        ],
    ] {
        routes.extend([
            (spec(Method::GET, info, Access::Open, "TES service-info"), get(tes::service_info)),
            (spec(Method::GET, old_info, Access::Open, "TES service-info where py-tes before 1.0 asks for it"), get(tes::service_info)),
            (spec(Method::GET, tasks, Access::Workspace(Action::Read), "TES ListTasks"), get(tes::list_tasks)),
            (spec(Method::POST, tasks, Access::Workspace(Action::SubmitTask), "TES CreateTask"), post(tes::create_task)),
            (spec(Method::GET, task, Access::Workspace(Action::Read), "TES GetTask"), get(tes::get_task)),
            (
                spec(Method::POST, task, Access::Workspace(Action::CancelOwnTask), "TES CancelTask (POST /tasks/{id}:cancel); another member's task needs maintain"),
                post(tes::cancel_task),
            ),
        ]);
    }
    // WES, the same two ways.
    for [info, runs, run, status, cancel, run_tasks, run_task] in [
        [
            "/ga4gh/wes/v1/service-info",
            "/ga4gh/wes/v1/runs",
            "/ga4gh/wes/v1/runs/{id}",
            "/ga4gh/wes/v1/runs/{id}/status",
            "/ga4gh/wes/v1/runs/{id}/cancel",
            "/ga4gh/wes/v1/runs/{id}/tasks",
            "/ga4gh/wes/v1/runs/{id}/tasks/{task}",
        ],
        [
            "/w/{workspace}/ga4gh/wes/v1/service-info",
            "/w/{workspace}/ga4gh/wes/v1/runs",
            "/w/{workspace}/ga4gh/wes/v1/runs/{id}",
            "/w/{workspace}/ga4gh/wes/v1/runs/{id}/status",
            "/w/{workspace}/ga4gh/wes/v1/runs/{id}/cancel",
            "/w/{workspace}/ga4gh/wes/v1/runs/{id}/tasks",
            "/w/{workspace}/ga4gh/wes/v1/runs/{id}/tasks/{task}",
        ],
    ] {
        routes.extend([
            (spec(Method::GET, info, Access::Workspace(Action::Read), "WES service-info (state counts of the workspace's runs)"), get(wes::service_info)),
            (spec(Method::GET, runs, Access::Workspace(Action::Read), "WES ListRuns"), get(wes::list_runs)),
            (
                spec(Method::POST, runs, Access::Workspace(Action::SubmitTask), "WES RunWorkflow (multipart/form-data)"),
                // The attachments have a limit of their own (workflows.max_attachment_mb),
                // counted while the body is read.
                post(wes::run_workflow).layer(axum::extract::DefaultBodyLimit::disable()),
            ),
            (spec(Method::GET, run, Access::Workspace(Action::Read), "WES GetRunLog"), get(wes::run_log)),
            (spec(Method::GET, status, Access::Workspace(Action::Read), "WES GetRunStatus"), get(wes::run_status)),
            (
                spec(Method::POST, cancel, Access::Workspace(Action::CancelOwnTask), "WES CancelRun: every task of the run ends; another member's run needs maintain"),
                post(wes::cancel_run),
            ),
            (spec(Method::GET, run_tasks, Access::Workspace(Action::Read), "WES ListTasks: the run's engine and jobs"), get(wes::run_tasks)),
            (spec(Method::GET, run_task, Access::Workspace(Action::Read), "WES GetTask"), get(wes::run_task)),
        ]);
    }
    // A run's engine manages its jobs through its worker, with its task credential.
    routes.extend([
        (
            spec(
                Method::GET,
                "/internal/v1/tasks/{id}/run/tasks",
                Access::TaskCredential,
                "A run's engine lists the run's tasks",
            ),
            get(wes::engine_list_jobs),
        ),
        (
            spec(
                Method::POST,
                "/internal/v1/tasks/{id}/run/tasks",
                Access::TaskCredential,
                "A run's engine creates a job (a TES task of the run)",
            ),
            post(wes::engine_create_job),
        ),
        (
            spec(
                Method::GET,
                "/internal/v1/tasks/{id}/run/tasks/{task}",
                Access::TaskCredential,
                "A run's engine reads one of the run's tasks",
            ),
            get(wes::engine_get_job),
        ),
        (
            spec(
                Method::POST,
                "/internal/v1/tasks/{id}/run/tasks/{task}",
                Access::TaskCredential,
                "A run's engine cancels a job (POST …/{task}:cancel)",
            ),
            post(wes::engine_cancel_job),
        ),
    ]);
    routes.extend([
        (
            spec(
                Method::GET,
                "/healthz",
                Access::Open,
                "Liveness: the process answers",
            ),
            get(ops::healthz),
        ),
        (
            spec(
                Method::GET,
                "/readyz",
                Access::Open,
                "Readiness: the database answers and the server is not shutting down (else 503)",
            ),
            get(ops::readyz),
        ),
        (
            spec(
                Method::GET,
                "/metrics",
                Access::Admin,
                "Prometheus metrics (OpenMetrics text)",
            ),
            get(ops::metrics),
        ),
    ]);
    routes.extend([
        (
            spec(
                Method::GET,
                "/api/v1/openapi.json",
                Access::Open,
                "This document",
            ),
            get(openapi),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/me",
                Access::Authenticated,
                "The caller",
            ),
            get(platform::me),
        ),
        (
            spec(Method::GET, "/api/v1/users", Access::Admin, "List users"),
            get(platform::list_users),
        ),
        (
            spec(
                Method::POST,
                "/api/v1/users",
                Access::Admin,
                "Create a local user",
            ),
            post(platform::create_user),
        ),
        (
            spec(
                Method::POST,
                "/api/v1/users/{user}/tokens",
                Access::Admin,
                "Issue an access token for a user",
            ),
            post(platform::create_user_token),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/tokens",
                Access::Authenticated,
                "List the caller's access tokens",
            ),
            get(platform::list_tokens),
        ),
        (
            spec(
                Method::POST,
                "/api/v1/tokens",
                Access::Authenticated,
                "Issue an access token for the caller",
            ),
            post(platform::create_token),
        ),
        (
            spec(
                Method::DELETE,
                "/api/v1/tokens/{token}",
                Access::Authenticated,
                "Revoke one of the caller's tokens (platform administrators: anyone's)",
            ),
            delete(platform::revoke_token),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces",
                Access::Authenticated,
                "List the caller's workspaces",
            ),
            get(platform::list_workspaces),
        ),
        (
            spec(
                Method::POST,
                "/api/v1/workspaces",
                Access::Authenticated,
                "Create a workspace owned by the caller",
            ),
            post(platform::create_workspace),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}",
                Access::Workspace(Action::Read),
                "Show a workspace",
            ),
            get(platform::get_workspace),
        ),
        (
            spec(
                Method::DELETE,
                "/api/v1/workspaces/{workspace}",
                Access::Workspace(Action::DeleteWorkspace),
                "Delete a workspace",
            ),
            delete(platform::delete_workspace),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}/members",
                Access::Workspace(Action::Read),
                "List members",
            ),
            get(platform::list_members),
        ),
        (
            spec(
                Method::PUT,
                "/api/v1/workspaces/{workspace}/members/{user}",
                Access::Workspace(Action::ManageMembers),
                "Add a member or change their role",
            ),
            put(platform::set_member),
        ),
        (
            spec(
                Method::DELETE,
                "/api/v1/workspaces/{workspace}/members/{user}",
                Access::Workspace(Action::ManageMembers),
                "Remove a member",
            ),
            delete(platform::remove_member),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}/secrets",
                Access::Workspace(Action::Read),
                "List workspace secrets (metadata only)",
            ),
            get(secrets::list_workspace),
        ),
        (
            spec(
                Method::PUT,
                "/api/v1/workspaces/{workspace}/secrets/{name}",
                Access::Workspace(Action::ManageWorkspaceSecrets),
                "Create or replace a workspace secret (If-Match: only that version; If-None-Match: *: create only)",
            ),
            put(secrets::put_workspace),
        ),
        (
            spec(
                Method::DELETE,
                "/api/v1/workspaces/{workspace}/secrets/{name}",
                Access::Workspace(Action::ManageWorkspaceSecrets),
                "Delete a workspace secret",
            ),
            delete(secrets::delete_workspace),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}/user-secrets",
                Access::Workspace(Action::ManageOwnSecrets),
                "List your own user secrets in the workspace (metadata only)",
            ),
            get(secrets::list_user),
        ),
        (
            spec(
                Method::PUT,
                "/api/v1/workspaces/{workspace}/user-secrets/{name}",
                Access::Workspace(Action::ManageOwnSecrets),
                "Create or replace one of your user secrets (If-Match: only that version; If-None-Match: *: create only)",
            ),
            put(secrets::put_user),
        ),
        (
            spec(
                Method::DELETE,
                "/api/v1/workspaces/{workspace}/user-secrets/{name}",
                Access::Workspace(Action::ManageOwnSecrets),
                "Delete one of your user secrets",
            ),
            delete(secrets::delete_user),
        ),
        (
            spec(
                Method::POST,
                "/internal/v1/tasks/{id}/secrets",
                Access::TaskCredential,
                "A starting task's declared secrets, once, for its worker (again only to the same delivery id)",
            ),
            post(secrets::deliver),
        ),
        (
            spec(
                Method::POST,
                "/internal/v1/tasks/{id}/token",
                Access::TaskCredential,
                "A running task's identity token, for its default or another allowed audience",
            ),
            post(identity::task_token),
        ),
        (
            spec(
                Method::GET,
                "/internal/v1/tasks/{id}/inputs",
                Access::TaskCredential,
                "Presigned GETs for a starting task's s3:// inputs",
            ),
            get(identity::task_inputs),
        ),
        (
            spec(
                Method::POST,
                "/internal/v1/tasks/{id}/uploads",
                Access::TaskCredential,
                "Presigned PUTs for the files a task delivers to its s3:// outputs",
            ),
            post(identity::task_uploads),
        ),
        (
            spec(
                Method::GET,
                "/.well-known/openid-configuration",
                Access::Open,
                "OIDC discovery for the identity tokens tresor issues to tasks",
            ),
            get(identity::discovery),
        ),
        (
            spec(
                Method::GET,
                "/.well-known/jwks.json",
                Access::Open,
                "The keys that sign task identity tokens (retired keys until their tokens expire)",
            ),
            get(identity::jwks),
        ),
        (
            spec(
                Method::GET,
                "/oauth2/authorize",
                Access::Open,
                "Required by strict relying parties; tresor has no interactive login, so always 400",
            ),
            get(identity::authorize),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}/storage",
                Access::Workspace(Action::Read),
                "The workspace's object storage location (bucket and prefix)",
            ),
            get(identity::get_storage),
        ),
        (
            spec(
                Method::PUT,
                "/api/v1/workspaces/{workspace}/storage",
                Access::Admin,
                "Set the workspace's bucket and prefix (locations may not overlap)",
            ),
            put(identity::put_storage),
        ),
        (
            spec(
                Method::DELETE,
                "/api/v1/workspaces/{workspace}/storage",
                Access::Admin,
                "Return the workspace to the default location",
            ),
            delete(identity::delete_storage),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}/file-storage",
                Access::Workspace(Action::Read),
                "The workspace's host directory for file:// inputs and outputs",
            ),
            get(identity::get_file_storage),
        ),
        (
            spec(
                Method::PUT,
                "/api/v1/workspaces/{workspace}/file-storage",
                Access::Admin,
                "Give the workspace a host directory of its own (directories may not overlap)",
            ),
            put(identity::put_file_storage),
        ),
        (
            spec(
                Method::DELETE,
                "/api/v1/workspaces/{workspace}/file-storage",
                Access::Admin,
                "Return the workspace to its default directory, <first allowed dir>/<workspace>",
            ),
            delete(identity::delete_file_storage),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/compute-envs",
                Access::Authenticated,
                "The server's compute environments (local, and any SLURM clusters)",
            ),
            get(compute::list),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}/compute-env",
                Access::Workspace(Action::Read),
                "The compute environment the workspace's new tasks run in",
            ),
            get(compute::get_choice),
        ),
        (
            spec(
                Method::PUT,
                "/api/v1/workspaces/{workspace}/compute-env",
                Access::Workspace(Action::ChooseComputeEnv),
                "Choose the compute environment the workspace's new tasks run in",
            ),
            put(compute::put_choice),
        ),
        (
            spec(
                Method::POST,
                "/internal/v1/tasks/{id}/bootstrap",
                Access::TaskCredential,
                "A batch job's worker spends its one-time bootstrap token for its task and session",
            ),
            post(compute::bootstrap),
        ),
        (
            spec(
                Method::POST,
                "/internal/v1/tasks/{id}/status",
                Access::TaskCredential,
                "A task's worker reports its task's status",
            ),
            post(compute::report_status),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}/egress",
                Access::Workspace(Action::Read),
                "The workspace's egress allowlist: the host:port rules its tasks may reach",
            ),
            get(compute::get_egress),
        ),
        (
            spec(
                Method::PUT,
                "/api/v1/workspaces/{workspace}/egress",
                Access::Workspace(Action::ManageEgress),
                "Replace the workspace's egress allowlist (tasks started from now on get it)",
            ),
            put(compute::put_egress),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}/image-policy",
                Access::Workspace(Action::Read),
                "The workspace's image policy: allowed images, digest pinning, registry logins (secret names)",
            ),
            get(images::get_policy),
        ),
        (
            spec(
                Method::PUT,
                "/api/v1/workspaces/{workspace}/image-policy",
                Access::Workspace(Action::ManageImagePolicy),
                "Replace the workspace's image policy",
            ),
            put(images::put_policy),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}/workflows",
                Access::Workspace(Action::Read),
                "The workspace's registered workflows (name, version, digest, state)",
            ),
            get(wes::list_workflows),
        ),
        (
            spec(
                Method::POST,
                "/api/v1/workspaces/{workspace}/workflows",
                Access::Workspace(Action::ProposeWorkflow),
                "Register a workflow version (multipart: name, version and RunWorkflow's fields); a maintainer's is proposed, an admin's approved",
            ),
            post(wes::register_workflow).layer(axum::extract::DefaultBodyLimit::disable()),
        ),
        (
            spec(
                Method::POST,
                "/api/v1/workspaces/{workspace}/workflows/{name}/{version}/approve",
                Access::Workspace(Action::ApproveWorkflow),
                "Approve a proposed workflow version",
            ),
            post(wes::approve_workflow),
        ),
        (
            spec(
                Method::GET,
                "/api/v1/workspaces/{workspace}/workflow-policy",
                Access::Workspace(Action::Read),
                "Whether the workspace runs only registered workflows",
            ),
            get(wes::get_policy),
        ),
        (
            spec(
                Method::PUT,
                "/api/v1/workspaces/{workspace}/workflow-policy",
                Access::Workspace(Action::ApproveWorkflow),
                "Require registered workflows for everyone ({\"registered_only\": true})",
            ),
            put(wes::put_policy),
        ),
        (
            spec(
                Method::POST,
                "/api/v1/compute-envs/{id}/check",
                Access::Admin,
                "Preflight: probe the issuer, storage, isolation, sandbox and clock; each failure says what to fix",
            ),
            post(identity::check),
        ),
    ]);
    routes
}

/// The route table without handlers.
pub fn route_specs() -> Vec<RouteSpec> {
    table().into_iter().map(|(spec, _)| spec).collect()
}

/// The OpenAPI 3.0 document of the platform API, generated from the route table.
pub(crate) async fn openapi() -> Json<Value> {
    let mut paths = serde_json::Map::new();
    for spec in route_specs()
        .into_iter()
        .filter(|s| s.path.starts_with("/api/v1"))
    {
        let security = match spec.access {
            Access::Open => json!([]),
            _ => json!([{ "bearer": [] }, { "basic": [] }]),
        };
        let access = match spec.access {
            Access::Open => "open".to_owned(),
            Access::Authenticated => "any authenticated user".to_owned(),
            Access::Admin => "platform administrators".to_owned(),
            Access::TaskCredential => "a task's worker, with its credential".to_owned(),
            Access::Workspace(action) => format!(
                "workspace members with role {} or above",
                tresor_domain::permissions::required_role(action)
            ),
        };
        let parameters: Vec<Value> = spec
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let operation = json!({
            "summary": spec.summary,
            "description": format!("Access: {access}."),
            "parameters": parameters,
            "security": security,
            "responses": {
                "200": { "description": "success" },
                "400": { "$ref": "#/components/responses/Error" },
                "401": { "$ref": "#/components/responses/Error" },
                "403": { "$ref": "#/components/responses/Error" },
                "404": { "$ref": "#/components/responses/Error" },
            },
        });
        let entry = paths
            .entry(spec.path.to_owned())
            .or_insert_with(|| json!({}));
        if let Some(map) = entry.as_object_mut() {
            map.insert(spec.method.as_str().to_ascii_lowercase(), operation);
        }
    }
    Json(json!({
        "openapi": "3.0.3",
        "info": { "title": "tresor platform API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "a tresor access token or an OIDC access token" },
                "basic": { "type": "http", "scheme": "basic", "description": "any username, an access token as the password" },
            },
            "responses": {
                "Error": {
                    "description": "an error; `code` is stable",
                    "content": { "application/json": { "schema": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": { "code": { "type": "string" }, "message": { "type": "string" } },
                    } } },
                },
            },
        },
    }))
}
