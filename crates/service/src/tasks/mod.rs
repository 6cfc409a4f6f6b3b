//! The tasks room: the TES use cases (create, get, list, cancel), validation, rendering, and the
//! loops that run accepted tasks on their compute environments.

mod assignment;
mod batch;
mod page_token;
mod render;
mod runner;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tresor_api_types::tes::{
    Organization, ServiceType, TesListTasksResponse, TesServiceInfo, TesState, TesTask, TesView,
};
use tresor_domain::{Action, Caller, TaskId};
use tresor_executors::{LocalExecutor, SlurmExecutor};
use tresor_store::{NewTask, Store, TagFilter, TaskFilter};

use crate::error::{Entity, ServiceError};
use crate::identity::{IdentityService, IssuedToken, TaskSubject};
use crate::platform::{self, PlatformService};
use crate::secrets::SecretService;
use crate::storage::{self, StorageService};
pub use assignment::WorkerAssignment;
pub use render::tes_state;
pub use runner::DeclaredSecrets;

/// The compute environment every workspace uses until it chooses another.
pub const LOCAL_ENV: &str = "local";

pub use batch::TIME_LIMIT;

/// The service's slice of the settings.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// ListTasks page size when the caller gives none (the spec's default is 256).
    pub default_page_size: u32,
    /// Largest ListTasks page size (the spec requires less than 2048).
    pub max_page_size: u32,
    pub organization_name: String,
    pub organization_url: String,
    /// The server's own URL as workers reach it (to fetch their task's secrets).
    pub callback_url: String,
}

/// A ListTasks request, as parsed from the query string.
#[derive(Debug, Clone, Default)]
pub struct ListTasksRequest {
    pub name_prefix: Option<String>,
    pub state: Option<TesState>,
    /// `(tag_key, tag_value)` pairs; an empty value matches any value.
    pub tags: Vec<(String, String)>,
    pub page_size: Option<i64>,
    pub page_token: Option<String>,
    pub view: TesView,
}

/// The task use cases; cheap to clone.
#[derive(Clone, Debug)]
pub struct TaskService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    platform: PlatformService,
    executor: LocalExecutor,
    settings: ServiceSettings,
    page_tokens: page_token::PageTokens,
    /// Wakes the scheduler: a task was queued or a slot freed.
    wake: Notify,
    /// Tasks holding slots, with the cores they hold and their worker's pid once known.
    running: Mutex<HashMap<TaskId, runner::Slot>>,
    secrets: SecretService,
    identity: IdentityService,
    storage: StorageService,
    /// Compute environments of type `slurm`, by id.
    slurm: BTreeMap<String, Arc<SlurmExecutor>>,
    /// Batch jobs submitted and not yet seen ended, by task.
    batch_jobs: Mutex<HashMap<TaskId, batch::BatchJob>>,
}

/// Where tasks run: the local executor, always there, and one executor per SLURM compute
/// environment.
#[derive(Debug)]
pub struct Executors {
    pub local: LocalExecutor,
    pub slurm: Vec<SlurmExecutor>,
}

/// A compute environment as users see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComputeEnvInfo {
    pub id: String,
    /// `local` or `slurm`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether workspaces that chose nothing use it.
    pub default: bool,
}

impl TaskService {
    /// Builds the service; call `start` to reconcile and begin scheduling.
    pub async fn new(
        store: Store,
        platform: PlatformService,
        secrets: SecretService,
        identity: IdentityService,
        storage: StorageService,
        executors: Executors,
        settings: ServiceSettings,
    ) -> Result<TaskService, ServiceError> {
        let Executors {
            local: executor,
            slurm,
        } = executors;
        let secret = store.server_secret("page_token_key").await?;
        Ok(TaskService {
            inner: Arc::new(Inner {
                store,
                platform,
                executor,
                settings,
                page_tokens: page_token::PageTokens::new(&secret),
                wake: Notify::new(),
                running: Mutex::new(HashMap::new()),
                secrets,
                identity,
                storage,
                slurm: slurm
                    .into_iter()
                    .map(|e| (e.settings().name.clone(), Arc::new(e)))
                    .collect(),
                batch_jobs: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Settles what a previous server left behind, then starts the scheduler loop.
    pub async fn start(&self) -> Result<(), ServiceError> {
        runner::reconcile(&self.inner).await?;
        for env in self.inner.slurm.keys() {
            tokio::spawn(batch::poll_loop(self.inner.clone(), env.clone()));
        }
        tokio::spawn(runner::schedule(self.inner.clone()));
        Ok(())
    }

    /// GA4GH service-info for TES.
    pub fn service_info(&self) -> TesServiceInfo {
        let executor = self.inner.executor.settings();
        TesServiceInfo {
            id: "org.tresor.tes".to_owned(),
            name: "tresor".to_owned(),
            service_type: ServiceType {
                group: "org.ga4gh".to_owned(),
                artifact: "tes".to_owned(),
                version: "1.1.0".to_owned(),
            },
            description: Some(format!(
                "tresor, a secure processing environment. Runtime: host; every executor runs in a \
                 bubblewrap sandbox on the server's host, and its image is recorded but not used.{}",
                if executor.task_ids.is_none() {
                    " This server is not root: executors run as its own host user, so tasks are \
                     not kept apart from each other by host users."
                } else {
                    " Each running task has a host user of its own."
                }
            )),
            organization: Organization {
                name: self.inner.settings.organization_name.clone(),
                url: self.inner.settings.organization_url.clone(),
            },
            contact_url: None,
            documentation_url: None,
            created_at: None,
            updated_at: None,
            environment: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            storage: executor
                .allowed_dirs
                .iter()
                .map(|d| format!("file://{}", d.display()))
                .collect(),
            // Every key some compute environment of this server honours.
            tes_resources_backend_parameters: validate::LOCAL_BACKEND_PARAMETERS
                .iter()
                .chain(if self.inner.slurm.is_empty() {
                    [].iter()
                } else {
                    validate::SLURM_BACKEND_PARAMETERS.iter()
                })
                .map(|s| (*s).to_owned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }

    /// What validation knows about the compute environment `env`.
    fn limits(&self, env: &str) -> validate::Limits {
        let executor = self.inner.executor.settings();
        let slurm = env != LOCAL_ENV;
        let local = (!slurm).then_some(&executor.limits);
        validate::Limits {
            // SLURM decides what fits its nodes, and says so when the job is submitted.
            max_cpu_cores: if slurm { u32::MAX } else { executor.slots },
            max_executors: executor.limits.max_executors,
            max_ram_gb: local.map(|l| l.max_ram_gb),
            max_disk_gb: local.map(|l| l.max_disk_gb),
            max_run_seconds: local.map(|l| l.max_run_seconds),
            allow_network: executor.allow_network,
            allowed_dirs: executor.allowed_dirs.clone(),
            compute_env: env.to_owned(),
            backend_parameters: if slurm {
                validate::SLURM_BACKEND_PARAMETERS
            } else {
                validate::LOCAL_BACKEND_PARAMETERS
            },
        }
    }

    /// The compute environments of this server.
    pub fn compute_envs(&self) -> Vec<ComputeEnvInfo> {
        std::iter::once(ComputeEnvInfo {
            id: LOCAL_ENV.to_owned(),
            kind: "local".to_owned(),
            default: true,
        })
        .chain(self.inner.slurm.keys().map(|id| ComputeEnvInfo {
            id: id.clone(),
            kind: "slurm".to_owned(),
            default: false,
        }))
        .collect()
    }

    /// The compute environment the caller's workspace runs new tasks in.
    pub async fn workspace_compute_env(&self, caller: &Caller) -> Result<String, ServiceError> {
        caller
            .require(Action::Read)
            .map_err(|d| ServiceError::Forbidden(format!("this needs the {} role", d.needed)))?;
        Ok(self
            .inner
            .store
            .workspace_compute_env(&caller.workspace)
            .await?
            .unwrap_or_else(|| LOCAL_ENV.to_owned()))
    }

    /// Chooses where the caller's workspace runs its new tasks (tasks already submitted stay
    /// where they are).
    pub async fn set_workspace_compute_env(
        &self,
        caller: &Caller,
        env: &str,
    ) -> Result<(), ServiceError> {
        self.inner
            .platform
            .require(
                caller,
                Action::ChooseComputeEnv,
                "workspace.compute_env",
                format!("workspace:{}", caller.workspace),
            )
            .await?;
        if env != LOCAL_ENV && !self.inner.slurm.contains_key(env) {
            let known: Vec<String> = self.compute_envs().into_iter().map(|e| e.id).collect();
            return Err(ServiceError::invalid(
                "compute_env",
                format!("{env:?} is not a compute environment of this server; known: {known:?}"),
            ));
        }
        let mut event = platform::caller_event(
            caller,
            "workspace.compute_env",
            format!("compute_env:{env}"),
        );
        event.detail = Some(format!("compute_env={env}"));
        self.inner
            .store
            .set_workspace_compute_env(&caller.workspace, (env != LOCAL_ENV).then_some(env), &event)
            .await?;
        Ok(())
    }

    /// A batch job's worker spends its one-time bootstrap token for its task and session.
    pub async fn bootstrap_task(
        &self,
        id: &str,
        token: &str,
        request: tresor_api_types::internal::BootstrapRequest,
    ) -> Result<WorkerAssignment, ServiceError> {
        batch::bootstrap(&self.inner, id, token, request)
            .await
            .map(WorkerAssignment)
    }

    /// A batch job's worker reports its status; the answer is the task's state now.
    pub async fn report_status(
        &self,
        id: &str,
        credential: &str,
        status: tresor_api_types::internal::WorkerStatus,
    ) -> Result<tresor_domain::TaskState, ServiceError> {
        batch::report(&self.inner, id, credential, status).await
    }

    /// CreateTask: validates, stores durably as QUEUED, wakes the scheduler.
    pub async fn create_task(
        &self,
        caller: &Caller,
        task: TesTask,
    ) -> Result<TaskId, ServiceError> {
        self.inner
            .platform
            .require(
                caller,
                Action::SubmitTask,
                "task.create",
                format!("workspace:{}", caller.workspace),
            )
            .await?;
        let env = self
            .inner
            .store
            .workspace_compute_env(&caller.workspace)
            .await?
            .unwrap_or_else(|| LOCAL_ENV.to_owned());
        if env != LOCAL_ENV && !self.inner.slurm.contains_key(&env) {
            return Err(ServiceError::Conflict(format!(
                "workspace {} runs its tasks in compute environment {env:?}, which this server no longer has; a workspace admin chooses another (PUT /api/v1/workspaces/{}/compute-env)",
                caller.workspace, caller.workspace
            )));
        }
        let accepted = validate::accept_task(task, &self.limits(&env))?;
        self.check_secrets(caller, &accepted.spec).await?;
        self.inner
            .storage
            .check_task(&caller.workspace, &accepted.spec)
            .await?;
        let id = TaskId::parse(&uuid::Uuid::now_v7().to_string())
            .map_err(|e| ServiceError::Internal(e.into()))?;
        let spec_json =
            serde_json::to_string(&accepted.spec).map_err(|e| ServiceError::Internal(e.into()))?;
        self.inner
            .store
            .insert_task(NewTask {
                id: id.clone(),
                workspace: caller.workspace.clone(),
                name: accepted.spec.name.clone(),
                cpu_cores: accepted.cpu_cores,
                creation_time: time::OffsetDateTime::now_utc(),
                spec_json,
                tags: accepted.spec.tags.clone().unwrap_or_default(),
                notes: accepted.notes,
                created_by: caller.principal.user.clone(),
                compute_env: env,
                audit: platform::caller_event(caller, "task.create", format!("task:{id}")),
            })
            .await?;
        tracing::debug!(task = %id, "task created");
        self.inner.wake.notify_one();
        Ok(id)
    }

    /// Declared secrets must exist for the submitter, and no stored value may appear in the
    /// document itself (a pasted password belongs in a secret, referenced by name).
    async fn check_secrets(&self, caller: &Caller, spec: &TesTask) -> Result<(), ServiceError> {
        let declared = runner::declared_secrets(spec)?;
        for name in &declared.files {
            if !self
                .inner
                .secrets
                .is_available(&caller.workspace, &caller.principal.user, name)
                .await?
            {
                return Err(ServiceError::invalid(
                    "tags.tresor.secrets",
                    format!(
                        "secret {name} is not defined in workspace {} for you; create it first (tresor secret set {name})",
                        caller.workspace
                    ),
                ));
            }
        }
        if let Some(guard) = self
            .inner
            .secrets
            .guard(&caller.workspace, &caller.principal.user)
            .await?
            && holds_value(spec, &guard)
        {
            return Err(ServiceError::invalid(
                "task",
                "the task document contains the value of a stored secret; remove it and reference the secret by name in tags[\"tresor.secrets\"] (files) or tags[\"tresor.secrets.env\"] (environment)",
            ));
        }
        Ok(())
    }

    /// The secrets a starting task's worker asks for, once, with its task credential.
    pub async fn deliver_secrets(
        &self,
        id: &str,
        credential: &str,
    ) -> Result<Vec<(String, tresor_crypto::SecretValue)>, ServiceError> {
        runner::deliver_secrets(&self.inner, id, credential).await
    }

    /// A running task's identity token for one of the allowed audiences.
    pub async fn task_token(
        &self,
        id: &str,
        credential: &str,
        audience: Option<&str>,
    ) -> Result<IssuedToken, ServiceError> {
        let record = runner::authorize_worker(&self.inner, id, credential).await?;
        let record = runner::active_task(&self.inner, &record).await?;
        let subject = TaskSubject {
            workspace: record.workspace.to_string(),
            user: record.created_by.to_string(),
            task: record.id.to_string(),
            run: record.id.to_string(),
        };
        self.inner.identity.mint(&subject, audience).await
    }

    /// Presigned GETs for a starting task's `s3://` inputs.
    pub async fn task_inputs(
        &self,
        id: &str,
        credential: &str,
    ) -> Result<Vec<storage::PresignedInput>, ServiceError> {
        let id = runner::authorize_worker(&self.inner, id, credential).await?;
        let record = runner::active_task(&self.inner, &id).await?;
        let spec: TesTask = serde_json::from_str(&record.spec_json)
            .map_err(|e| ServiceError::Internal(e.into()))?;
        self.inner
            .storage
            .presign_inputs(&record.workspace, &spec)
            .await
    }

    /// Presigned PUTs for the files a finishing task delivers to its `s3://` outputs.
    pub async fn task_uploads(
        &self,
        id: &str,
        credential: &str,
        urls: &[String],
    ) -> Result<Vec<String>, ServiceError> {
        let id = runner::authorize_worker(&self.inner, id, credential).await?;
        let record = runner::active_task(&self.inner, &id).await?;
        let spec: TesTask = serde_json::from_str(&record.spec_json)
            .map_err(|e| ServiceError::Internal(e.into()))?;
        self.inner
            .storage
            .presign_uploads(&record.workspace, &spec, urls)
            .await
    }

    /// The task with this id in the caller's workspace; a malformed id, a missing task and
    /// another workspace's task all look the same: not found.
    async fn find_task(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<tresor_store::TaskRecord, ServiceError> {
        caller
            .require(Action::Read)
            .map_err(|d| ServiceError::Forbidden(format!("this needs the {} role", d.needed)))?;
        let id = TaskId::parse(id).map_err(|_| ServiceError::NotFound(Entity::Task))?;
        self.inner
            .store
            .get_task(&caller.workspace, &id)
            .await?
            .ok_or(ServiceError::NotFound(Entity::Task))
    }

    /// GetTask in the caller's workspace.
    pub async fn get_task(
        &self,
        caller: &Caller,
        id: &str,
        view: TesView,
    ) -> Result<TesTask, ServiceError> {
        render::render(&self.find_task(caller, id).await?, view)
    }

    /// ListTasks in the caller's workspace, newest first.
    pub async fn list_tasks(
        &self,
        caller: &Caller,
        request: ListTasksRequest,
    ) -> Result<TesListTasksResponse, ServiceError> {
        let max = self.inner.settings.max_page_size;
        let page_size = match request.page_size {
            None => self.inner.settings.default_page_size,
            Some(n) if n >= 1 && n <= i64::from(max) => u32::try_from(n).unwrap_or(max),
            Some(n) => {
                return Err(ServiceError::invalid(
                    "page_size",
                    format!("{n} is out of range; use 1 to {max}"),
                ));
            }
        };
        // The filter's canonical text binds page tokens to the listing they came from.
        let filter_key = format!(
            "{}|{:?}|{:?}|{:?}",
            caller.workspace, request.name_prefix, request.state, request.tags
        );
        let before_seq = match request.page_token.as_deref() {
            None => None,
            Some(token) => Some(self.inner.page_tokens.check(&filter_key, token).ok_or_else(|| {
                ServiceError::invalid(
                    "page_token",
                    "is not a token this server issued for this listing; start again without page_token",
                )
            })?),
        };
        let state = match request.state {
            None => None,
            Some(tes) => match render::task_state(tes) {
                Some(state) => Some(state),
                // tresor never puts a task in this state, so nothing matches.
                None => return Ok(TesListTasksResponse::default()),
            },
        };
        let filter = TaskFilter {
            name_prefix: request.name_prefix.clone(),
            state,
            tags: request
                .tags
                .iter()
                .map(|(key, value)| TagFilter {
                    key: key.clone(),
                    value: (!value.is_empty()).then(|| value.clone()),
                })
                .collect(),
        };
        let mut records = self
            .inner
            .store
            .list_tasks(&caller.workspace, &filter, before_seq, page_size + 1)
            .await?;
        let more = records.len() > page_size as usize;
        records.truncate(page_size as usize);
        let next_page_token = match (more, records.last()) {
            (true, Some(last)) => Some(self.inner.page_tokens.issue(&filter_key, last.seq)),
            _ => None,
        };
        let tasks = records
            .iter()
            .map(|r| render::render(r, request.view))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TesListTasksResponse {
            tasks,
            next_page_token,
        })
    }

    /// CancelTask: QUEUED, INITIALIZING or RUNNING become CANCELED and the worker's whole process
    /// group is killed before this returns. Canceling a canceled task is a no-op.
    pub async fn cancel_task(&self, caller: &Caller, id: &str) -> Result<(), ServiceError> {
        let record = self.find_task(caller, id).await?;
        let action = if record.created_by == caller.principal.user {
            Action::CancelOwnTask
        } else {
            Action::CancelAnyTask
        };
        self.inner
            .platform
            .require(caller, action, "task.cancel", format!("task:{}", record.id))
            .await?;
        runner::cancel(&self.inner, caller, record).await
    }
}

/// Whether any string the submitter wrote in a task document holds a stored value. Only those
/// strings are searched, never the schema's field names nor the names in the `tresor.secrets`
/// tags: a member's value may hide that value and nothing else, not the shape of every task.
fn holds_value(spec: &TesTask, guard: &tresor_crypto::redact::Redactor) -> bool {
    let mut strings: Vec<&str> = Vec::new();
    strings.extend(spec.name.as_deref());
    strings.extend(spec.description.as_deref());
    for input in spec.inputs.iter().flatten() {
        strings.extend(
            [input.name.as_deref(), input.description.as_deref()]
                .into_iter()
                .flatten(),
        );
        strings.extend(
            [input.url.as_deref(), input.content.as_deref()]
                .into_iter()
                .flatten(),
        );
        strings.push(&input.path);
    }
    for output in spec.outputs.iter().flatten() {
        strings.extend(
            [output.name.as_deref(), output.description.as_deref()]
                .into_iter()
                .flatten(),
        );
        strings.extend(output.path_prefix.as_deref());
        strings.extend([output.url.as_str(), output.path.as_str()]);
    }
    for executor in &spec.executors {
        strings.push(&executor.image);
        strings.extend(executor.command.iter().map(String::as_str));
        for field in [
            &executor.workdir,
            &executor.stdin,
            &executor.stdout,
            &executor.stderr,
        ] {
            strings.extend(field.as_deref());
        }
        for (k, v) in executor.env.iter().flatten() {
            strings.extend([k.as_str(), v.as_str()]);
        }
    }
    strings.extend(spec.volumes.iter().flatten().map(String::as_str));
    if let Some(resources) = &spec.resources {
        strings.extend(resources.zones.iter().flatten().map(String::as_str));
        for (k, v) in resources.backend_parameters.iter().flatten() {
            strings.extend([k.as_str(), v.as_str()]);
        }
    }
    for (k, v) in spec.tags.iter().flatten() {
        if k != runner::SECRETS_TAG && k != runner::SECRETS_ENV_TAG {
            strings.extend([k.as_str(), v.as_str()]);
        }
    }
    strings.iter().any(|s| guard.finds_in(s.as_bytes()))
}
