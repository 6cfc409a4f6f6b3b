//! GA4GH WES 1.1: workflow runs. A run is an engine task (Snakemake, cwltool, or any engine a
//! site configures) running in the sandbox like any task, in the run's workspace, as the user
//! who started it. Every job the engine starts is a TES task of the run, created through the
//! engine's own socket (`engine_*` below, called with the engine task's session), so each job
//! gets its own sandbox, image, secrets, identity and compute environment. The engine and its
//! jobs share the run's directory in the workspace's `file://` storage at the same path.

mod engine;
pub(crate) mod files;

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use tresor_api_types::tes::{TesListTasksResponse, TesState, TesTask, TesTaskLog, TesView};
use tresor_api_types::wes::{
    DefaultWorkflowEngineParameter, RegisteredWorkflow, RunListResponse, RunLog, RunRequest,
    RunStatus, RunSummary, TaskListResponse, WesLog, WesServiceInfo, WesTaskLog,
    WorkflowEngineVersion, WorkflowPolicy, WorkflowTypeVersion,
};
use tresor_domain::{Action, Caller, Principal, RunLink, RunRole, TaskId};
use tresor_store::{NewRun, RunRecord, Store, TaskRecord, WorkflowRecord};

pub use engine::EngineSettings;

use crate::error::{Entity, ServiceError};
use crate::platform;
use crate::tasks::{ListTasksRequest, TaskService, render, tes_state};

/// The site's workflow settings.
#[derive(Debug, Clone)]
pub struct WorkflowSettings {
    /// The configured engines, in order: a run that names none gets the first of its type.
    pub engines: Vec<EngineSettings>,
    /// Largest total size of a run's attachments.
    pub max_attachment_bytes: u64,
    /// Most attachments in one run.
    pub max_attachments: usize,
    /// Whether a workflow may be registered from a URL on a loopback, private or link-local
    /// address (the server fetches it on its own network).
    pub allow_private_urls: bool,
}

impl Default for WorkflowSettings {
    fn default() -> Self {
        WorkflowSettings {
            engines: Vec::new(),
            max_attachment_bytes: 16 << 20,
            max_attachments: 256,
            allow_private_urls: false,
        }
    }
}

/// One file of a RunWorkflow request.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// Its path in the run's directory, as the client named it.
    pub path: String,
    pub content: Vec<u8>,
}

/// A RunWorkflow request as the multipart body gave it.
#[derive(Debug, Clone)]
pub struct RunSubmission {
    pub request: RunRequest,
    pub attachments: Vec<Attachment>,
}

/// The workflow run use cases; cheap to clone.
#[derive(Debug, Clone)]
pub struct RunService {
    store: Store,
    tasks: TaskService,
    settings: std::sync::Arc<WorkflowSettings>,
}

/// The most bytes of `outputs.json` a RunLog reads.
const MAX_OUTPUTS_BYTES: u64 = 1 << 20;

impl RunService {
    pub fn new(store: Store, tasks: TaskService, settings: WorkflowSettings) -> RunService {
        RunService {
            store,
            tasks,
            settings: std::sync::Arc::new(settings),
        }
    }

    /// Starts the sweep that ends the jobs of runs whose engine has ended.
    pub fn start(&self) {
        let runs = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = runs.end_strays().await {
                    tracing::warn!(error = %e, "ending the jobs of ended runs failed; retrying");
                }
                if let Err(e) = runs.publish_outputs().await {
                    tracing::warn!(error = %e, "publishing runs' outputs failed; retrying");
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// An engine that ends (killed, crashed, or out of time) may leave jobs running; they are
    /// the run's and end with it, canceled in the run owner's name.
    async fn end_strays(&self) -> Result<(), ServiceError> {
        for (task, owner) in self.store.stray_run_tasks().await? {
            let caller = Caller {
                principal: Principal {
                    user: owner,
                    name: "tresor".to_owned(),
                    is_admin: false,
                    source: Some("the run's engine ended".to_owned()),
                },
                workspace: task.workspace.clone(),
                role: tresor_domain::Role::Owner,
            };
            let id = task.id.clone();
            tracing::info!(task = %id, "canceling a job whose run's engine has ended");
            match self.tasks.cancel_record(&caller, task).await {
                Ok(()) | Err(ServiceError::Conflict(_)) => {}
                // One task that fails is retried next round; the others go on.
                Err(e) => tracing::warn!(task = %id, error = %e, "canceling a stray job failed"),
            }
        }
        Ok(())
    }

    /// Copies each completed run's `outputs/` into its workspace's `file://` directory
    /// (`runs/<id>/`), once; where they went, or why they could not, is recorded on the run.
    async fn publish_outputs(&self) -> Result<(), ServiceError> {
        for run in self.store.runs_to_publish().await? {
            let result = match self.tasks.workspace_files(&run.workspace).await {
                Ok(Some((workspace_dir, group))) => {
                    let (dir, id) = (PathBuf::from(&run.dir), run.id.clone());
                    tokio::task::spawn_blocking(move || {
                        files::publish(&dir, &workspace_dir, &id, group)
                    })
                    .await
                    .map_err(|e| ServiceError::Internal(e.into()))?
                    .map(|to| {
                        to.map_or_else(
                            || "none".to_owned(),
                            |to| format!("file://{}", to.display()),
                        )
                    })
                    .unwrap_or_else(|e| format!("failed: {e}"))
                }
                Ok(None) => "failed: the workspace has no file:// directory".to_owned(),
                Err(e) => format!("failed: {e}"),
            };
            tracing::info!(run = %run.id, published = %result, "a run's outputs");
            self.store.set_run_published(&run.id, &result).await?;
        }
        Ok(())
    }

    /// The most files a run may attach.
    pub fn max_attachments(&self) -> usize {
        self.settings.max_attachments
    }

    /// The most bytes a run's attachments may hold together.
    pub fn max_attachment_bytes(&self) -> u64 {
        self.settings.max_attachment_bytes
    }

    /// WES service-info; `system_state_counts` counts the caller's workspace's runs only.
    pub async fn service_info(
        &self,
        caller: Option<&Caller>,
    ) -> Result<WesServiceInfo, ServiceError> {
        let tes = self.tasks.service_info();
        let mut types: BTreeMap<String, WorkflowTypeVersion> = BTreeMap::new();
        let mut engines: BTreeMap<String, WorkflowEngineVersion> = BTreeMap::new();
        let mut parameters = Vec::new();
        for engine in &self.settings.engines {
            let entry = types
                .entry(engine.workflow_type.clone())
                .or_insert_with(|| WorkflowTypeVersion {
                    workflow_type_version: Vec::new(),
                });
            for version in &engine.type_versions {
                if !entry.workflow_type_version.contains(version) {
                    entry.workflow_type_version.push(version.clone());
                }
            }
            engines
                .entry(engine.name.clone())
                .or_insert_with(|| WorkflowEngineVersion {
                    workflow_engine_version: Vec::new(),
                })
                .workflow_engine_version
                .push(engine.version.clone());
            for (name, default) in &engine.parameters {
                parameters.push(DefaultWorkflowEngineParameter {
                    name: format!("{}:{name}", engine.name),
                    kind: "string".to_owned(),
                    default_value: default.clone(),
                });
            }
        }
        let mut counts = BTreeMap::new();
        if let Some(caller) = caller
            && caller.require(Action::Read).is_ok()
        {
            for (state, n) in self.store.run_state_counts(&caller.workspace).await? {
                *counts
                    .entry(tes_state(state).as_str().to_owned())
                    .or_insert(0) += n;
            }
        }
        Ok(WesServiceInfo {
            id: format!("{}.wes", tes.id),
            name: format!("{} WES", tes.name),
            service_type: tresor_api_types::tes::ServiceType {
                group: "org.ga4gh".to_owned(),
                artifact: "wes".to_owned(),
                version: "1.1.0".to_owned(),
            },
            description: Some(
                "Workflows whose every job is a sandboxed tresor TES task of the run's workspace"
                    .to_owned(),
            ),
            organization: tes.organization,
            version: tes.version,
            workflow_type_versions: types,
            supported_wes_versions: vec!["1.1.0".to_owned()],
            supported_filesystem_protocols: vec!["file".to_owned()],
            workflow_engine_versions: engines,
            default_workflow_engine_parameters: parameters,
            system_state_counts: counts,
            auth_instructions_url: "/api/v1/openapi.json".to_owned(),
            tags: BTreeMap::new(),
        })
    }

    /// RunWorkflow: checks the request, writes the workflow's files into a new run directory,
    /// stores the run and creates its engine task.
    pub async fn run_workflow(
        &self,
        caller: &Caller,
        submission: RunSubmission,
    ) -> Result<String, ServiceError> {
        self.tasks
            .platform()
            .require(
                caller,
                Action::SubmitTask,
                "run.create",
                format!("workspace:{}", caller.workspace),
            )
            .await?;
        let RunSubmission {
            request,
            mut attachments,
        } = submission;
        let engine = self.pick_engine(&request)?;
        let parameters = engine.parameters_for(&request.workflow_engine_parameters)?;
        self.check_attachments(&attachments)?;
        self.check_plain_sight(caller, &request, &attachments)
            .await?;
        // The workflow: a registered one named in workflow_url, or the attached files (which
        // may be exactly a registered, approved version's).
        let (workflow, digest, registered) = match request.workflow_url.strip_prefix(REGISTERED) {
            Some(reference) => {
                let found = self.registered(caller, reference, &request).await?;
                let files = decode_files(&found.files)?;
                // Anything beside a registered workflow's files could change what it does (a
                // module it imports, a Snakemake profile): a run's own files go in `inputs/`.
                for attachment in &attachments {
                    if !attachment.path.starts_with(INPUTS_DIR)
                        || files.iter().any(|f| f.path.starts_with(INPUTS_DIR))
                    {
                        return Err(ServiceError::invalid(
                            "workflow_attachment",
                            format!(
                                "{:?}: a run of the registered workflow {reference} may attach only its inputs, under {INPUTS_DIR}",
                                attachment.path
                            ),
                        ));
                    }
                }
                attachments.extend(files);
                (
                    found.workflow_url.clone(),
                    found.digest.clone(),
                    Some(found),
                )
            }
            None => {
                let workflow = workflow_path(&request.workflow_url, &attachments)?;
                let digest = workflow_digest(&request, &workflow, &attachments);
                let found = self
                    .store
                    .approved_workflow_with_digest(&caller.workspace, &digest)
                    .await?;
                (workflow, digest, found)
            }
        };
        if registered.is_none() {
            if self
                .store
                .registered_workflows_only(&caller.workspace)
                .await?
            {
                return Err(ServiceError::Forbidden(format!(
                    "workspace {} runs only registered workflows: run one as workflow_url = \"{REGISTERED}NAME@VERSION\" (GET /api/v1/workspaces/{}/workflows lists them), or have this one proposed and approved",
                    caller.workspace, caller.workspace
                )));
            }
            self.tasks
                .platform()
                .require(
                    caller,
                    Action::RunUnregisteredWorkflow,
                    "run.create",
                    format!("workspace:{} digest:sha256:{digest}", caller.workspace),
                )
                .await
                .map_err(|e| match e {
                    ServiceError::Forbidden(why) => ServiceError::Forbidden(format!(
                        "{why}: this workflow is not a registered, approved one; run a registered workflow (workflow_url = \"{REGISTERED}NAME@VERSION\"), or have a maintainer propose this one and an admin approve it"
                    )),
                    other => other,
                })?;
        }
        // The workspace's group (its file:// directory made ready), and the runs' area.
        let files_of_workspace = self.tasks.workspace_files(&caller.workspace).await?;
        let (Some((_, group)), Some(area)) = (files_of_workspace, self.tasks.runs_area()) else {
            return Err(ServiceError::Conflict(
                "workflow runs need file:// storage, and this server has none; an administrator sets local.allowed_dirs".to_owned(),
            ));
        };
        let workspace = caller.workspace.to_string();
        let id = uuid::Uuid::now_v7().to_string();
        let request_json =
            serde_json::to_string(&request).map_err(|e| ServiceError::Internal(e.into()))?;
        let mut params =
            serde_json::Value::Object(request.workflow_params.clone().unwrap_or_default());
        rebase_attached(&mut params, &attachments);
        let params_json =
            serde_json::to_vec_pretty(&params).map_err(|e| ServiceError::Internal(e.into()))?;
        let dir = {
            let id = id.clone();
            let attachments = attachments.clone();
            let adapters = engine::ADAPTERS;
            tokio::task::spawn_blocking(move || -> std::io::Result<std::path::PathBuf> {
                let dir = files::RunDir::create(&area, &workspace, &id, group)?;
                for attachment in &attachments {
                    dir.write(&attachment.path, &attachment.content, 0o640)?;
                }
                dir.write(files::PARAMS_FILE, &params_json, 0o640)?;
                for (name, content) in adapters {
                    dir.write(
                        &format!("{}/{name}", files::CONTROL_DIR),
                        content.as_bytes(),
                        0o640,
                    )?;
                }
                Ok(dir.path)
            })
            .await
            .map_err(|e| ServiceError::Internal(e.into()))?
            .map_err(|e| {
                ServiceError::Conflict(format!(
                    "preparing the run's directory in the workspace's file:// storage: {e}"
                ))
            })?
        };
        let dir = dir.to_string_lossy().into_owned();
        self.store
            .insert_run(NewRun {
                id: id.clone(),
                workspace: caller.workspace.clone(),
                created_by: caller.principal.user.clone(),
                request: request_json,
                engine: engine.name.clone(),
                digest: digest.clone(),
                dir: dir.clone(),
                audit: platform::caller_event(
                    caller,
                    "run.create",
                    format!(
                        "run:{id} engine:{} digest:sha256:{digest}{}",
                        engine.name,
                        registered
                            .as_ref()
                            .map(|w| format!(" workflow:{}@{}", w.name, w.version))
                            .unwrap_or_default()
                    ),
                ),
            })
            .await?;
        let task = engine.engine_task(&id, &dir, &workflow, &parameters, &request.tags);
        let link = RunLink {
            id: id.clone(),
            role: RunRole::Engine,
            dir,
        };
        match self
            .tasks
            .create_task_in_run(caller, task, Some(link))
            .await
        {
            Ok(task) => {
                self.store.set_run_engine_task(&id, &task).await?;
                Ok(id)
            }
            Err(e) => {
                self.store
                    .end_run(
                        &id,
                        tresor_domain::TaskState::SystemError,
                        &format!("the engine's task was refused: {e}"),
                    )
                    .await?;
                Err(e)
            }
        }
    }

    /// The approved registered workflow `NAME@VERSION`, of the request's type.
    async fn registered(
        &self,
        caller: &Caller,
        reference: &str,
        request: &RunRequest,
    ) -> Result<WorkflowRecord, ServiceError> {
        let Some((name, version)) = reference.split_once('@') else {
            return Err(ServiceError::invalid(
                "workflow_url",
                format!(
                    "{REGISTERED}{reference}: name a registered workflow as {REGISTERED}NAME@VERSION"
                ),
            ));
        };
        let found = self
            .store
            .get_workflow(&caller.workspace, name, version)
            .await?
            .filter(|w| w.state == "approved")
            .ok_or_else(|| {
                ServiceError::invalid(
                    "workflow_url",
                    format!(
                        "{name}@{version} is not an approved workflow of workspace {} (GET /api/v1/workspaces/{}/workflows lists them)",
                        caller.workspace, caller.workspace
                    ),
                )
            })?;
        if !found
            .workflow_type
            .eq_ignore_ascii_case(&request.workflow_type)
            || found.workflow_type_version != request.workflow_type_version
        {
            return Err(ServiceError::invalid(
                "workflow_type",
                format!(
                    "{name}@{version} is {} {}, not {} {}",
                    found.workflow_type,
                    found.workflow_type_version,
                    request.workflow_type,
                    request.workflow_type_version
                ),
            ));
        }
        Ok(found)
    }

    /// Registers a workflow version: approved at once when an admin registers it, proposed
    /// (for an admin to approve) when a maintainer does. Its files are pinned by their digest.
    pub async fn register_workflow(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
        submission: RunSubmission,
    ) -> Result<RegisteredWorkflow, ServiceError> {
        self.tasks
            .platform()
            .require(
                caller,
                Action::ProposeWorkflow,
                "workflow.propose",
                format!("workflow:{name}@{version}"),
            )
            .await?;
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        };
        if !plain(name) || !plain(version) {
            return Err(ServiceError::invalid(
                "name",
                "a workflow's name and version may hold only letters, digits and ._-+ (at most 100)",
            ));
        }
        let RunSubmission {
            mut request,
            mut attachments,
        } = submission;
        self.pick_engine(&request)?;
        let fetched = if is_remote(&request.workflow_url) {
            let main = self
                .fetch_workflow(&request.workflow_url, &mut attachments)
                .await?;
            Some(std::mem::replace(&mut request.workflow_url, main))
        } else {
            None
        };
        self.check_attachments(&attachments)?;
        self.check_plain_sight(caller, &request, &attachments)
            .await?;
        let workflow = workflow_path(&request.workflow_url, &attachments)?;
        let digest = workflow_digest(&request, &workflow, &attachments);
        if self.store.count_workflows(&caller.workspace).await? >= MAX_WORKFLOW_VERSIONS {
            return Err(ServiceError::Conflict(format!(
                "workspace {} has {MAX_WORKFLOW_VERSIONS} workflow versions, the most it may keep",
                caller.workspace
            )));
        }
        let approved = caller.require(Action::ApproveWorkflow).is_ok();
        let files: BTreeMap<&str, String> = attachments
            .iter()
            .map(|a| {
                (
                    a.path.as_str(),
                    base64::engine::general_purpose::STANDARD.encode(&a.content),
                )
            })
            .collect();
        let record = WorkflowRecord {
            workspace: caller.workspace.clone(),
            name: name.to_owned(),
            version: version.to_owned(),
            digest: digest.clone(),
            workflow_type: request.workflow_type.clone(),
            workflow_type_version: request.workflow_type_version.clone(),
            workflow_url: workflow,
            files: serde_json::to_string(&files).map_err(|e| ServiceError::Internal(e.into()))?,
            file_names: files.keys().map(|k| (*k).to_owned()).collect(),
            state: if approved { "approved" } else { "proposed" }.to_owned(),
            proposed_by: caller.principal.user.clone(),
            approved_by: approved.then(|| caller.principal.user.clone()),
            created_at: String::new(),
        };
        let action = if approved {
            "workflow.register"
        } else {
            "workflow.propose"
        };
        self.store
            .insert_workflow(
                &record,
                &platform::caller_event(
                    caller,
                    action,
                    match &fetched {
                        // Where it came from, without a query (which may carry a signature).
                        Some(url) => format!(
                            "workflow:{name}@{version} digest:sha256:{digest} from:{}",
                            url.split(['?', '#']).next().unwrap_or_default()
                        ),
                        None => format!("workflow:{name}@{version} digest:sha256:{digest}"),
                    },
                ),
            )
            .await
            .map_err(|e| match e {
                tresor_store::Error::Conflict(_) => ServiceError::Conflict(format!(
                    "workflow {name} version {version} is already registered; a changed workflow is a new version"
                )),
                other => other.into(),
            })?;
        self.store
            .get_workflow(&caller.workspace, name, version)
            .await?
            .map(|w| registered_view(&w))
            .ok_or(ServiceError::NotFound(Entity::Run))
    }

    /// Fetches the workflow file a registration names by URL, once, here: it is added to the
    /// attachments under the URL's last path segment (so its digest pins exactly what was
    /// fetched), and that name is returned as the workflow's main file. The fetch reaches public
    /// addresses only unless `allow_private_urls`, and reads at most what attachments may hold.
    /// No message repeats the URL, which may carry a signature.
    async fn fetch_workflow(
        &self,
        url: &str,
        attachments: &mut Vec<Attachment>,
    ) -> Result<String, ServiceError> {
        let refuse = |why: String| ServiceError::invalid("workflow_url", why);
        let parsed = reqwest::Url::parse(url).map_err(|e| refuse(format!("not a URL ({e})")))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(refuse(
                "a URL holding a user name or password is refused; register a workflow that needs credentials by uploading its files".to_owned(),
            ));
        }
        let name = parsed
            .path_segments()
            .and_then(|mut segments| segments.next_back())
            .filter(|name| !name.is_empty())
            .ok_or_else(|| refuse("the URL must end in the workflow file's name".to_owned()))?
            .to_owned();
        files::check_relative(&name).map_err(refuse)?;
        if attachments.iter().any(|a| a.path == name) {
            return Err(refuse(format!(
                "the fetched file would be {name}, which is also attached; attach only the files it uses"
            )));
        }
        let allow_private = self.settings.allow_private_urls;
        if !allow_private {
            tresor_executors::public_http::check_literal(&parsed).map_err(refuse)?;
        }
        let fetch_failed = |e: reqwest::Error| {
            refuse(format!(
                "fetching it failed: {}",
                tresor_executors::public_http::error_text(e)
            ))
        };
        let client = tresor_executors::public_http::client(
            allow_private,
            std::time::Duration::from_secs(10),
        )
        .map_err(fetch_failed)?;
        let mut response = client
            .get(parsed)
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await
            .map_err(fetch_failed)?;
        if !response.status().is_success() {
            return Err(refuse(format!(
                "fetching it failed: the server answered {}",
                response.status()
            )));
        }
        let attached: u64 = attachments.iter().map(|a| a.content.len() as u64).sum();
        let room = self.settings.max_attachment_bytes.saturating_sub(attached);
        let mut content = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch_failed)? {
            if content.len() as u64 + chunk.len() as u64 > room {
                return Err(refuse(format!(
                    "the workflow there is larger than the {room} bytes left of a run's {} (workflows.max_attachment_mb)",
                    self.settings.max_attachment_bytes
                )));
            }
            content.extend_from_slice(&chunk);
        }
        attachments.push(Attachment {
            path: name.clone(),
            content,
        });
        Ok(name)
    }

    /// The workspace's registered workflows.
    pub async fn list_workflows(
        &self,
        caller: &Caller,
    ) -> Result<Vec<RegisteredWorkflow>, ServiceError> {
        caller
            .require(Action::Read)
            .map_err(|d| ServiceError::Forbidden(format!("this needs the {} role", d.needed)))?;
        Ok(self
            .store
            .list_workflows(&caller.workspace)
            .await?
            .iter()
            .map(registered_view)
            .collect())
    }

    /// An admin approves a proposed version.
    pub async fn approve_workflow(
        &self,
        caller: &Caller,
        name: &str,
        version: &str,
    ) -> Result<RegisteredWorkflow, ServiceError> {
        let object = format!("workflow:{name}@{version}");
        self.tasks
            .platform()
            .require(
                caller,
                Action::ApproveWorkflow,
                "workflow.approve",
                object.clone(),
            )
            .await?;
        let Some(found) = self
            .store
            .get_workflow(&caller.workspace, name, version)
            .await?
        else {
            return Err(ServiceError::NotFound(Entity::Workflow));
        };
        let event = platform::caller_event(
            caller,
            "workflow.approve",
            format!("{object} digest:sha256:{}", found.digest),
        );
        self.store
            .approve_workflow(
                &caller.workspace,
                name,
                version,
                &caller.principal.user,
                &event,
            )
            .await?;
        self.store
            .get_workflow(&caller.workspace, name, version)
            .await?
            .map(|w| registered_view(&w))
            .ok_or(ServiceError::NotFound(Entity::Workflow))
    }

    /// Whether the workspace runs only registered workflows.
    pub async fn workflow_policy(&self, caller: &Caller) -> Result<WorkflowPolicy, ServiceError> {
        caller
            .require(Action::Read)
            .map_err(|d| ServiceError::Forbidden(format!("this needs the {} role", d.needed)))?;
        Ok(WorkflowPolicy {
            registered_only: self
                .store
                .registered_workflows_only(&caller.workspace)
                .await?,
        })
    }

    pub async fn set_workflow_policy(
        &self,
        caller: &Caller,
        policy: WorkflowPolicy,
    ) -> Result<(), ServiceError> {
        let object = format!("workspace:{}", caller.workspace);
        self.tasks
            .platform()
            .require(
                caller,
                Action::ApproveWorkflow,
                "workflow.policy",
                object.clone(),
            )
            .await?;
        self.store
            .set_registered_workflows_only(
                &caller.workspace,
                policy.registered_only,
                &platform::caller_event(
                    caller,
                    "workflow.policy",
                    format!("{object} registered_only:{}", policy.registered_only),
                ),
            )
            .await?;
        Ok(())
    }

    fn pick_engine(&self, request: &RunRequest) -> Result<&EngineSettings, ServiceError> {
        let of_type: Vec<&EngineSettings> = self
            .settings
            .engines
            .iter()
            .filter(|e| e.workflow_type.eq_ignore_ascii_case(&request.workflow_type))
            .collect();
        if of_type.is_empty() {
            let known: Vec<&str> = self
                .settings
                .engines
                .iter()
                .map(|e| e.workflow_type.as_str())
                .collect();
            return Err(ServiceError::invalid(
                "workflow_type",
                format!(
                    "{:?} is not a workflow type this server runs; use one of {known:?} (see service-info workflow_type_versions)",
                    request.workflow_type
                ),
            ));
        }
        let candidates: Vec<&EngineSettings> = match &request.workflow_engine {
            Some(name) => of_type.into_iter().filter(|e| &e.name == name).collect(),
            None => {
                if request.workflow_engine_version.is_some() {
                    return Err(ServiceError::invalid(
                        "workflow_engine",
                        "is required when workflow_engine_version is given",
                    ));
                }
                of_type
            }
        };
        let Some(engine) = candidates
            .iter()
            .copied()
            .filter(|e| {
                request
                    .workflow_engine_version
                    .as_ref()
                    .is_none_or(|v| v == &e.version)
            })
            .find(|e| e.type_versions.contains(&request.workflow_type_version))
        else {
            return Err(ServiceError::invalid(
                "workflow_type_version",
                format!(
                    "no configured engine runs {} {:?}{}; see service-info workflow_type_versions and workflow_engine_versions",
                    request.workflow_type,
                    request.workflow_type_version,
                    request
                        .workflow_engine
                        .as_ref()
                        .map(|e| format!(" with engine {e:?}"))
                        .unwrap_or_default()
                ),
            ));
        };
        Ok(engine)
    }

    fn check_attachments(&self, attachments: &[Attachment]) -> Result<(), ServiceError> {
        if attachments.len() > self.settings.max_attachments {
            return Err(ServiceError::invalid(
                "workflow_attachment",
                format!(
                    "{} files; a run may have at most {}",
                    attachments.len(),
                    self.settings.max_attachments
                ),
            ));
        }
        let total: u64 = attachments.iter().map(|a| a.content.len() as u64).sum();
        if total > self.settings.max_attachment_bytes {
            return Err(ServiceError::invalid(
                "workflow_attachment",
                format!(
                    "{total} bytes in all; a run's attachments may hold at most {} bytes (workflows.max_attachment_mb)",
                    self.settings.max_attachment_bytes
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for attachment in attachments {
            files::check_relative(&attachment.path).map_err(|reason| {
                ServiceError::invalid(
                    "workflow_attachment",
                    format!("file name {:?} {reason}", attachment.path),
                )
            })?;
            if !seen.insert(attachment.path.as_str()) {
                return Err(ServiceError::invalid(
                    "workflow_attachment",
                    format!("{:?} is attached twice", attachment.path),
                ));
            }
        }
        // A file and a directory of one name cannot both be written.
        for path in &seen {
            if seen
                .iter()
                .any(|other| other.starts_with(&format!("{path}/")))
            {
                return Err(ServiceError::invalid(
                    "workflow_attachment",
                    format!("{path:?} is both a file and a directory"),
                ));
            }
        }
        Ok(())
    }

    /// The stored values of the caller's secrets may not appear anywhere in the request or its
    /// files: a pasted password belongs in a secret, named in the run's tags.
    async fn check_plain_sight(
        &self,
        caller: &Caller,
        request: &RunRequest,
        attachments: &[Attachment],
    ) -> Result<(), ServiceError> {
        let params = request
            .workflow_params
            .as_ref()
            .map(|p| serde_json::Value::Object(p.clone()).to_string())
            .unwrap_or_default();
        let tags: Vec<String> = request
            .tags
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut texts = vec![("workflow_params".to_owned(), params)];
        texts.extend(tags.into_iter().map(|t| ("tags".to_owned(), t)));
        texts.extend(attachments.iter().map(|a| {
            (
                format!("workflow_attachment {:?}", a.path),
                String::from_utf8_lossy(&a.content).into_owned(),
            )
        }));
        for (field, text) in texts {
            if let Some(what) = tresor_crypto::plain_sight::credential_in(&text) {
                return Err(ServiceError::invalid(
                    field,
                    format!("holds {what}; {}", crate::tasks::spec::USE_A_SECRET),
                ));
            }
        }
        let Some(guard) = self.tasks.secret_guard(caller).await? else {
            return Ok(());
        };
        let request_text = serde_json::to_string(request).unwrap_or_default();
        let holds = |bytes: &[u8]| guard.redact(bytes).as_slice() != bytes;
        if holds(request_text.as_bytes()) || attachments.iter().any(|a| holds(&a.content)) {
            return Err(ServiceError::invalid(
                "run",
                "the run's request or one of its files contains the value of a stored secret; remove it and declare the secret by name in tags[\"tresor.secrets.env\"] (environment) or tags[\"tresor.secrets\"] (files)",
            ));
        }
        Ok(())
    }

    /// The run with this id in the caller's workspace; anything else is not found.
    async fn find_run(&self, caller: &Caller, id: &str) -> Result<RunRecord, ServiceError> {
        caller
            .require(Action::Read)
            .map_err(|d| ServiceError::Forbidden(format!("this needs the {} role", d.needed)))?;
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(ServiceError::NotFound(Entity::Run));
        }
        self.store
            .get_run(&caller.workspace, id)
            .await?
            .ok_or(ServiceError::NotFound(Entity::Run))
    }

    async fn engine_record(&self, run: &RunRecord) -> Result<Option<TaskRecord>, ServiceError> {
        match &run.engine_task {
            Some(task) => Ok(self.store.get_task(&run.workspace, task).await?),
            None => Ok(None),
        }
    }

    /// A run's state: its engine's, unless the run ended before it had one.
    async fn run_state(&self, run: &RunRecord) -> Result<TesState, ServiceError> {
        if let Some(state) = run.state {
            return Ok(tes_state(state));
        }
        Ok(match self.engine_record(run).await? {
            Some(engine) => tes_state(engine.state),
            None => TesState::Queued,
        })
    }

    /// GetRunStatus.
    pub async fn run_status(&self, caller: &Caller, id: &str) -> Result<RunStatus, ServiceError> {
        let run = self.find_run(caller, id).await?;
        Ok(RunStatus {
            state: self.run_state(&run).await?,
            run_id: run.id,
        })
    }

    /// GetRunLog. `base` is the WES base path the caller used (for the URLs in it).
    pub async fn run_log(
        &self,
        caller: &Caller,
        id: &str,
        base: &str,
    ) -> Result<RunLog, ServiceError> {
        let run = self.find_run(caller, id).await?;
        let request: RunRequest =
            serde_json::from_str(&run.request).map_err(|e| ServiceError::Internal(e.into()))?;
        let engine = self.engine_record(&run).await?;
        let state = self.run_state(&run).await?;
        let mut run_log = match &engine {
            Some(record) => task_log(record, caller)?.log,
            None => WesLog::default(),
        };
        // The engine's output is its task's (`stdout` and `stderr` link to it).
        run_log.name = Some(run.engine.clone());
        if let Some(published) = &run.published {
            run_log
                .system_logs
                .get_or_insert_with(Vec::new)
                .push(format!("outputs published: {published}"));
        }
        // What ran: the workflow's files by their digest.
        run_log
            .system_logs
            .get_or_insert_with(Vec::new)
            .insert(0, format!("workflow sha256:{}", run.digest));
        if let Some(reason) = &run.reason {
            run_log
                .system_logs
                .get_or_insert_with(Vec::new)
                .push(reason.clone());
        }
        let outputs = {
            let dir = std::path::PathBuf::from(&run.dir);
            tokio::task::spawn_blocking(move || {
                let bytes = files::RunDir::open(&dir)
                    .ok()?
                    .read_small("outputs.json", MAX_OUTPUTS_BYTES)?;
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok()
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
        };
        let mut outputs = serde_json::Value::Object(outputs);
        if let Some(to) = run
            .published
            .as_deref()
            .filter(|p| p.starts_with("file://"))
        {
            relocate(
                &mut outputs,
                &format!("file://{}/outputs/", run.dir),
                &format!("{to}/"),
            );
        }
        let serde_json::Value::Object(outputs) = outputs else {
            return Err(ServiceError::Internal(anyhow::anyhow!(
                "outputs are an object"
            )));
        };
        Ok(RunLog {
            task_logs_url: format!("{base}/runs/{}/tasks", run.id),
            run_id: run.id,
            request,
            state,
            run_log,
            task_logs: None,
            outputs,
        })
    }

    /// ListRuns in the caller's workspace, newest first.
    pub async fn list_runs(
        &self,
        caller: &Caller,
        page_size: Option<i64>,
        page_token: Option<&str>,
    ) -> Result<RunListResponse, ServiceError> {
        caller
            .require(Action::Read)
            .map_err(|d| ServiceError::Forbidden(format!("this needs the {} role", d.needed)))?;
        let page_size = self.page_size(page_size)?;
        let filter_key = format!("runs|{}", caller.workspace);
        let before = match page_token {
            None => None,
            Some(token) => Some(self.tasks.page_tokens().check(&filter_key, token).ok_or_else(
                || {
                    ServiceError::invalid(
                        "page_token",
                        "is not a token this server issued for this listing; start again without page_token",
                    )
                },
            )?),
        };
        let mut records = self
            .store
            .list_runs(&caller.workspace, before, page_size + 1)
            .await?;
        let more = records.len() > page_size as usize;
        records.truncate(page_size as usize);
        let next_page_token = match (more, records.last()) {
            (true, Some(last)) => Some(self.tasks.page_tokens().issue(&filter_key, last.seq)),
            _ => None,
        };
        let mut runs = Vec::with_capacity(records.len());
        for run in &records {
            let request: RunRequest = serde_json::from_str(&run.request).unwrap_or_default();
            let engine = self.engine_record(run).await?;
            let log = engine.as_ref().and_then(last_log);
            runs.push(RunSummary {
                run_id: run.id.clone(),
                state: self.run_state(run).await?,
                start_time: log.as_ref().and_then(|l| l.start_time.clone()),
                end_time: log.and_then(|l| l.end_time),
                tags: request.tags,
            });
        }
        Ok(RunListResponse {
            runs,
            next_page_token,
        })
    }

    fn page_size(&self, requested: Option<i64>) -> Result<u32, ServiceError> {
        let settings = self.tasks.settings();
        let max = settings.max_page_size;
        match requested {
            None => Ok(settings.default_page_size),
            Some(n) if n >= 1 && n <= i64::from(max) => Ok(u32::try_from(n).unwrap_or(max)),
            Some(n) => Err(ServiceError::invalid(
                "page_size",
                format!("{n} is out of range; use 1 to {max}"),
            )),
        }
    }

    /// WES ListTasks: the run's tasks (its engine and its jobs), newest first.
    pub async fn run_tasks(
        &self,
        caller: &Caller,
        id: &str,
        page_size: Option<i64>,
        page_token: Option<String>,
    ) -> Result<TaskListResponse, ServiceError> {
        let run = self.find_run(caller, id).await?;
        let page_size = i64::from(self.page_size(page_size)?);
        let page = self
            .tasks
            .list_tasks(
                caller,
                ListTasksRequest {
                    run: Some(run.id.clone()),
                    page_size: Some(page_size),
                    page_token,
                    view: TesView::Minimal,
                    ..ListTasksRequest::default()
                },
            )
            .await?;
        let mut task_logs = Vec::with_capacity(page.tasks.len());
        for task in &page.tasks {
            let Some(id) = task.id.as_deref() else {
                continue;
            };
            let record = self.tasks.find_task(caller, id).await?;
            task_logs.push(task_log(&record, caller)?);
        }
        Ok(TaskListResponse {
            task_logs,
            next_page_token: page.next_page_token,
        })
    }

    /// WES GetTask: one task of the run.
    pub async fn run_task(
        &self,
        caller: &Caller,
        id: &str,
        task: &str,
    ) -> Result<WesTaskLog, ServiceError> {
        let run = self.find_run(caller, id).await?;
        let record = self.tasks.find_task(caller, task).await?;
        if record.spec.run.as_ref().map(|r| r.id.as_str()) != Some(run.id.as_str()) {
            return Err(ServiceError::NotFound(Entity::Task));
        }
        task_log(&record, caller)
    }

    /// CancelRun: every task of the run that has not ended is canceled (the engine first, so it
    /// starts no more jobs), each one's work stopped before this returns.
    pub async fn cancel_run(&self, caller: &Caller, id: &str) -> Result<String, ServiceError> {
        let run = self.find_run(caller, id).await?;
        let action = if run.created_by == caller.principal.user {
            Action::CancelOwnTask
        } else {
            Action::CancelAnyTask
        };
        self.tasks
            .platform()
            .require(caller, action, "run.cancel", format!("run:{}", run.id))
            .await?;
        if run.engine_task.is_none() && run.state.is_none() {
            self.store
                .end_run(
                    &run.id,
                    tresor_domain::TaskState::Canceled,
                    "canceled by request",
                )
                .await?;
        }
        // Twice: a job the engine created while the first round ran is caught by the second.
        for _ in 0..2 {
            let mut active = self.store.active_run_tasks(&run.id).await?;
            active.sort_by_key(|t| t.spec.run.as_ref().map(|r| r.role) != Some(RunRole::Engine));
            for task in active {
                match self.tasks.cancel_record(caller, task).await {
                    Ok(()) | Err(ServiceError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(run.id)
    }

    /// The run an engine task belongs to, and the run's user acting in its workspace with the
    /// role they have now: a member removed meanwhile has no run that can start jobs.
    async fn engine_caller(
        &self,
        engine: &str,
        credential: &str,
    ) -> Result<(Caller, RunRecord), ServiceError> {
        let record = self.tasks.authorized_task(engine, credential).await?;
        let Some(link) = record
            .spec
            .run
            .as_ref()
            .filter(|r| r.role == RunRole::Engine)
        else {
            return Err(ServiceError::Forbidden(
                "only a workflow run's engine task may manage the run's jobs".to_owned(),
            ));
        };
        let run = self
            .store
            .get_run_for_system(&link.id)
            .await?
            .ok_or(ServiceError::NotFound(Entity::Run))?;
        let principal = Principal {
            user: run.created_by.clone(),
            name: format!("run {}", run.id),
            is_admin: false,
            source: Some(format!("engine task {}", record.id)),
        };
        let caller = self
            .tasks
            .platform()
            .caller(principal, Some(run.workspace.as_str()))
            .await
            .map_err(|_| {
                ServiceError::Forbidden(
                    "the user who started this run is no longer a member of its workspace"
                        .to_owned(),
                )
            })?;
        Ok((caller, run))
    }

    /// An engine creates a job: a TES task of its run, as the run's user.
    pub async fn engine_create_job(
        &self,
        engine: &str,
        credential: &str,
        task: TesTask,
    ) -> Result<TaskId, ServiceError> {
        let (caller, run) = self.engine_caller(engine, credential).await?;
        let link = RunLink {
            id: run.id.clone(),
            role: RunRole::Job,
            dir: run.dir.clone(),
        };
        let id = self
            .tasks
            .create_task_in_run(&caller, task, Some(link))
            .await?;
        // A job created while the run was being canceled is canceled with it.
        if let Some(engine) = self.engine_record(&run).await?
            && engine.state.is_terminal()
        {
            let record = self.tasks.find_task(&caller, id.as_str()).await?;
            let _ = self.tasks.cancel_record(&caller, record).await;
        }
        Ok(id)
    }

    async fn engine_job(
        &self,
        caller: &Caller,
        run: &RunRecord,
        job: &str,
    ) -> Result<TaskRecord, ServiceError> {
        let record = self.tasks.find_task(caller, job).await?;
        if record.spec.run.as_ref().map(|r| r.id.as_str()) != Some(run.id.as_str()) {
            return Err(ServiceError::NotFound(Entity::Task));
        }
        Ok(record)
    }

    /// An engine reads one of its run's tasks.
    pub async fn engine_get_job(
        &self,
        engine: &str,
        credential: &str,
        job: &str,
        view: TesView,
    ) -> Result<TesTask, ServiceError> {
        let (caller, run) = self.engine_caller(engine, credential).await?;
        render(&self.engine_job(&caller, &run, job).await?, view)
    }

    /// An engine lists its run's tasks.
    pub async fn engine_list_jobs(
        &self,
        engine: &str,
        credential: &str,
        mut request: ListTasksRequest,
    ) -> Result<TesListTasksResponse, ServiceError> {
        let (caller, run) = self.engine_caller(engine, credential).await?;
        request.run = Some(run.id);
        self.tasks.list_tasks(&caller, request).await
    }

    /// An engine cancels one of its run's jobs.
    pub async fn engine_cancel_job(
        &self,
        engine: &str,
        credential: &str,
        job: &str,
    ) -> Result<(), ServiceError> {
        let (caller, run) = self.engine_caller(engine, credential).await?;
        let record = self.engine_job(&caller, &run, job).await?;
        self.tasks.cancel_record(&caller, record).await
    }
}

/// The path of the workflow file in the run's directory: `workflow_url` names an attachment
/// (WES allows a path relative to the attachments); anything else must be fetched by the
/// client and attached.
/// Whether a workflow URL names a file on another server rather than an attachment.
fn is_remote(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn workflow_path(url: &str, attachments: &[Attachment]) -> Result<String, ServiceError> {
    let relative = url
        .strip_prefix("file:")
        .map_or(url, |rest| rest.trim_start_matches("//"));
    if url.contains("://") && !url.starts_with("file:") {
        return Err(ServiceError::invalid(
            "workflow_url",
            format!(
                "{url:?}: this server runs attached or registered workflows; attach the workflow's files (workflow_attachment) and give the main file's name, or have it registered by URL (POST /api/v1/workspaces/{{ws}}/workflows)"
            ),
        ));
    }
    if !attachments.iter().any(|a| a.path == relative) {
        return Err(ServiceError::invalid(
            "workflow_url",
            format!(
                "{url:?} is not one of the attached files ({}); attach it, and name it as attached",
                attachments
                    .iter()
                    .map(|a| a.path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(relative.to_owned())
}

/// The workflow's identity: SHA-256 over its type and version, the main file's name, and every
/// attached file's name and SHA-256, in name order (names hold no NUL; digests are fixed-size).
fn workflow_digest(request: &RunRequest, url: &str, attachments: &[Attachment]) -> String {
    let mut sorted: Vec<&Attachment> = attachments.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        request.workflow_type.to_ascii_uppercase().as_str(),
        request.workflow_type_version.as_str(),
        url,
    ] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    for attachment in sorted {
        hasher.update(attachment.path.as_bytes());
        hasher.update(&[0]);
        hasher.update(ring::digest::digest(&ring::digest::SHA256, &attachment.content).as_ref());
    }
    hex(hasher.finish().as_ref())
}

/// Stock WES clients (wes-service's `wes-client`) rewrite a parameter file's relative paths into
/// absolute ones on the client's machine, and attach those files under their path relative to
/// the parameter file: such a `location` or `path` that ends in an attached file's name becomes
/// that name, relative to the run directory, where the file is.
fn rebase_attached(value: &mut serde_json::Value, attachments: &[Attachment]) {
    match value {
        serde_json::Value::Object(map) => {
            for key in ["location", "path"] {
                if let Some(serde_json::Value::String(place)) = map.get_mut(key) {
                    let local = place.strip_prefix("file://").unwrap_or(place);
                    if local.starts_with('/')
                        && let Some(attached) = attachments
                            .iter()
                            .find(|a| local.ends_with(&format!("/{}", a.path)))
                    {
                        *place = attached.path.clone();
                    }
                }
            }
            for inner in map.values_mut() {
                rebase_attached(inner, attachments);
            }
        }
        serde_json::Value::Array(items) => {
            for inner in items {
                rebase_attached(inner, attachments);
            }
        }
        _ => {}
    }
}

/// The most workflow versions a workspace keeps (each holds up to `max_attachment_mb`).
const MAX_WORKFLOW_VERSIONS: i64 = 1000;

/// Replaces `from` at the start of every `location` in a CWL output object with `to`: once a
/// run's outputs are published, they are named where later tasks can read them.
fn relocate(value: &mut serde_json::Value, from: &str, to: &str) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(location)) = map.get_mut("location")
                && let Some(rest) = location.strip_prefix(from)
            {
                *location = format!("{to}{rest}");
            }
            map.remove("path");
            for inner in map.values_mut() {
                relocate(inner, from, to);
            }
        }
        serde_json::Value::Array(items) => {
            for inner in items {
                relocate(inner, from, to);
            }
        }
        _ => {}
    }
}

/// Where a run of a registered workflow puts files of its own.
const INPUTS_DIR: &str = "inputs/";

/// How a run names a registered workflow: `registered:NAME@VERSION`.
const REGISTERED: &str = "registered:";

fn decode_files(json: &str) -> Result<Vec<Attachment>, ServiceError> {
    let files: BTreeMap<String, String> =
        serde_json::from_str(json).map_err(|e| ServiceError::Internal(e.into()))?;
    files
        .into_iter()
        .map(|(path, content)| {
            Ok(Attachment {
                content: base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .map_err(|e| ServiceError::Internal(e.into()))?,
                path,
            })
        })
        .collect()
}

fn registered_view(record: &WorkflowRecord) -> RegisteredWorkflow {
    RegisteredWorkflow {
        name: record.name.clone(),
        version: record.version.clone(),
        digest: format!("sha256:{}", record.digest),
        workflow_type: record.workflow_type.clone(),
        workflow_type_version: record.workflow_type_version.clone(),
        workflow_url: record.workflow_url.clone(),
        files: record.file_names.clone(),
        state: record.state.clone(),
        proposed_by: record.proposed_by.to_string(),
        approved_by: record.approved_by.as_ref().map(ToString::to_string),
        created_at: record.created_at.clone(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn last_log(record: &TaskRecord) -> Option<TesTaskLog> {
    record
        .logs_json
        .as_deref()
        .and_then(|j| serde_json::from_str::<Vec<TesTaskLog>>(j).ok())
        .and_then(|mut logs| logs.pop())
}

/// A task of a run as WES shows it: its last attempt's times, the last executor's exit code,
/// and links to the TES task (whose FULL view holds the redacted stdout and stderr).
fn task_log(record: &TaskRecord, caller: &Caller) -> Result<WesTaskLog, ServiceError> {
    let tes_uri = format!("/w/{}/ga4gh/tes/v1/tasks/{}", caller.workspace, record.id);
    let full = render(record, TesView::Full)?;
    let attempt = full.logs.as_ref().and_then(|l| l.last());
    let last_executor = attempt.and_then(|a| a.logs.last());
    Ok(WesTaskLog {
        id: record.id.to_string(),
        name: record
            .spec
            .name
            .clone()
            .unwrap_or_else(|| record.id.to_string()),
        log: WesLog {
            // The task log's own `name` above says it (WES's TaskLog has one `name`).
            name: None,
            cmd: record.spec.executors.last().map(|e| e.command.clone()),
            start_time: attempt.and_then(|a| a.start_time.clone()),
            end_time: attempt.and_then(|a| a.end_time.clone()),
            stdout: Some(format!("{tes_uri}?view=FULL")),
            stderr: Some(format!("{tes_uri}?view=FULL")),
            exit_code: last_executor.map(|l| l.exit_code),
            system_logs: attempt.and_then(|a| a.system_logs.clone()),
        },
        tes_uri: Some(tes_uri),
        state: Some(tes_state(record.state)),
    })
}
