//! The tasks room: the TES use cases (create, get, list, cancel), validation, the typed task,
//! rendering, the worker endpoints' use cases, and the supervisor that runs accepted tasks on
//! their compute environments' backends.

mod assignment;
pub(crate) mod page_token;
mod render;
pub mod spec;
pub mod supervisor;
#[cfg(test)]
mod supervisor_tests;
pub mod validate;
mod worker_api;
pub use worker_api::Delivery;

use crate::images::{ImageRuntime, ImageService};
use std::sync::Arc;
use std::time::Duration;

use tresor_api_types::platform::EgressPolicy;
use tresor_api_types::tes::{
    Organization, ServiceType, TesListTasksResponse, TesServiceInfo, TesState, TesTask, TesView,
};
use tresor_domain::{Action, Caller, ComputeEnv, TaskId, TaskSpec};
use tresor_executors::{ComputeBackend, LocalExecutor, SlurmExecutor};
use tresor_store::{NewTask, Store, TagFilter, TaskFilter};

use crate::error::{Entity, ServiceError};
use crate::identity::{IdentityService, IssuedToken, TaskSubject};
use crate::platform::{self, PlatformService};
use crate::secrets::SecretService;
use crate::storage::{self, StorageService};
pub use assignment::WorkerAssignment;
pub(crate) use page_token::PageTokens;
pub(crate) use render::render;
pub use render::tes_state;
pub use spec::TIME_LIMIT;
pub use supervisor::{Supervisor, SupervisorSettings, WorkerDefaults};
pub use tresor_domain::DeclaredSecrets;

/// The compute environment every workspace uses until it chooses another.
pub const LOCAL_ENV: &str = tresor_executors::LOCAL_ENV;

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
    /// How long a server process's claim on a task holds without renewal (`tes.task_lease_seconds`).
    pub task_lease: Duration,
}

/// A ListTasks request, as parsed from the query string.
#[derive(Debug, Clone, Default)]
pub struct ListTasksRequest {
    /// Only the tasks of this workflow run.
    pub run: Option<String>,
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
    settings: ServiceSettings,
    page_tokens: page_token::PageTokens,
    secrets: SecretService,
    identity: IdentityService,
    /// What service-info says of the local executor.
    local: LocalFacts,
    images: ImageService,
    supervisor: Arc<Supervisor>,
    workers: worker_api::WorkerApi,
    metrics: crate::Metrics,
}

/// What the TES service-info and validation need to know of the local executor.
#[derive(Debug)]
struct LocalFacts {
    allowed_dirs: Vec<std::path::PathBuf>,
    own_users: bool,
    max_executors: usize,
    allow_network: bool,
    allow_egress: bool,
    allow_private_egress: bool,
}

/// Where tasks run: the local executor, always there, and one executor per SLURM compute
/// environment.
#[derive(Debug)]
pub struct Executors {
    pub local: LocalExecutor,
    pub slurm: Vec<SlurmExecutor>,
}

/// The other rooms the task use cases call on.
#[derive(Debug, Clone)]
pub struct Rooms {
    pub platform: PlatformService,
    pub secrets: SecretService,
    pub identity: IdentityService,
    pub storage: StorageService,
    pub images: ImageService,
    pub metrics: crate::Metrics,
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
        rooms: Rooms,
        executors: Executors,
        settings: ServiceSettings,
    ) -> Result<TaskService, ServiceError> {
        let Rooms {
            platform,
            secrets,
            identity,
            storage,
            images,
            metrics,
        } = rooms;
        let Executors { local, slurm } = executors;
        let page_secret = store.server_secret("page_token_key").await?;
        let local_settings = local.settings();
        let local_facts = LocalFacts {
            allowed_dirs: local_settings.allowed_dirs.clone(),
            own_users: local_settings.task_ids.is_some(),
            max_executors: local_settings.limits.max_executors,
            allow_network: local_settings.allow_network,
            allow_egress: local_settings.allow_egress,
            allow_private_egress: local_settings.allow_private_egress,
        };
        let supervisor_settings = SupervisorSettings {
            lease: settings.task_lease,
            callback_url: settings.callback_url.clone(),
            worker: WorkerDefaults {
                sandbox: local_settings.sandbox.clone(),
                log_tail_bytes: local_settings.log_tail_bytes,
                max_log_bytes: local_settings.limits.max_log_bytes,
                allow_private_http_inputs: local_settings.allow_private_http_inputs,
                allow_network: local_settings.allow_network,
                allow_egress: local_settings.allow_egress,
                allow_private_egress: local_settings.allow_private_egress,
                sdk_env: identity.settings().sdk_env.clone(),
            },
            workspace_gids: local_settings.workspace_gids.clone(),
        };
        let mut backends: Vec<Arc<dyn ComputeBackend>> = vec![Arc::new(local)];
        backends.extend(
            slurm
                .into_iter()
                .map(|e| Arc::new(e) as Arc<dyn ComputeBackend>),
        );
        let supervisor = Supervisor::new(
            store.clone(),
            storage,
            images.clone(),
            backends,
            supervisor_settings,
            metrics.clone(),
        );
        convert_legacy_specs(&store, &supervisor).await?;
        let workers = worker_api::WorkerApi {
            store: store.clone(),
            secrets: secrets.clone(),
            images: images.clone(),
            supervisor: supervisor.clone(),
        };
        Ok(TaskService {
            inner: Arc::new(Inner {
                store,
                platform,
                settings,
                page_tokens: page_token::PageTokens::new(&page_secret),
                secrets,
                identity,
                local: local_facts,
                images,
                workers,
                supervisor,
                metrics,
            }),
        })
    }

    /// Takes over what a previous server left behind, then starts the supervisor's loops.
    pub async fn start(&self) -> Result<(), ServiceError> {
        self.inner.supervisor.start().await
    }

    /// The supervisor, for tests that drive it.
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.inner.supervisor
    }

    /// GA4GH service-info for TES.
    pub fn service_info(&self) -> TesServiceInfo {
        let local = &self.inner.local;
        TesServiceInfo {
            id: "org.tresor.tes".to_owned(),
            name: "tresor".to_owned(),
            service_type: ServiceType {
                group: "org.ga4gh".to_owned(),
                artifact: "tes".to_owned(),
                version: "1.1.0".to_owned(),
            },
            description: Some(format!(
                "tresor, a secure processing environment. {}{}",
                match self.inner.images.runtime() {
                    ImageRuntime::Oci =>
                        "Runtime: oci; every executor runs in its OCI image, \
                        pulled by tresor and unpacked read-only, as / of a bubblewrap sandbox.",
                    ImageRuntime::Host =>
                        "Runtime: host; every executor runs in a bubblewrap \
                        sandbox on the host's own /usr, and its image is recorded but not used.",
                },
                if local.own_users {
                    " Each running task has a host user of its own."
                } else {
                    " This server is not root: executors run as its own host user, so tasks are \
                     not kept apart from each other by host users."
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
            storage: local
                .allowed_dirs
                .iter()
                .map(|d| format!("file://{}", d.display()))
                .collect(),
            // Every key some compute environment of this server honours.
            tes_resources_backend_parameters: self
                .inner
                .supervisor
                .backends()
                .flat_map(|b| b.capabilities().backend_parameters.iter())
                .map(|s| (*s).to_owned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
        }
    }

    /// What validation knows about a compute environment.
    fn limits(&self, backend: &dyn ComputeBackend) -> validate::Limits {
        let caps = backend.capabilities();
        let local = &self.inner.local;
        validate::Limits {
            max_cpu_cores: caps.max_cpu_cores.unwrap_or(u32::MAX),
            max_executors: local.max_executors,
            max_ram_gb: caps.max_ram_gb,
            max_disk_gb: caps.max_disk_gb,
            max_run_seconds: caps.max_run_seconds,
            allow_network: local.allow_network,
            allowed_dirs: local.allowed_dirs.clone(),
            compute_env: backend.env().clone(),
            backend_parameters: caps.backend_parameters,
        }
    }

    /// The compute environments of this server, the default (local) first.
    pub fn compute_envs(&self) -> Vec<ComputeEnvInfo> {
        let mut envs: Vec<ComputeEnvInfo> = self
            .inner
            .supervisor
            .backends()
            .map(|b| ComputeEnvInfo {
                id: b.env().id.clone(),
                kind: b.env().kind.as_str().to_owned(),
                default: b.env().id == LOCAL_ENV,
            })
            .collect();
        envs.sort_by_key(|e| !e.default);
        envs
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

    /// The caller's workspace's egress allowlist.
    pub async fn egress(&self, caller: &Caller) -> Result<EgressPolicy, ServiceError> {
        let object = format!("workspace:{}", caller.workspace);
        self.inner
            .platform
            .require(caller, Action::Read, "workspace.egress.read", object)
            .await?;
        Ok(EgressPolicy {
            allow: self.inner.store.workspace_egress(&caller.workspace).await?,
        })
    }

    /// Replaces the caller's workspace's egress allowlist; its tasks started from now on get it.
    /// Rules are stored as the parser writes them back (lowercase, canonical addresses). Only
    /// where the operator allows egress at all (any user can make a workspace and so be its
    /// admin), and to private addresses only where the operator allows that too.
    pub async fn set_egress(
        &self,
        caller: &Caller,
        policy: EgressPolicy,
    ) -> Result<EgressPolicy, ServiceError> {
        let object = format!("workspace:{}", caller.workspace);
        self.inner
            .platform
            .require(
                caller,
                Action::ManageEgress,
                "workspace.egress",
                object.clone(),
            )
            .await?;
        let local = &self.inner.local;
        let parsed = tresor_domain::egress::parse_allowlist(&policy.allow)
            .map_err(|e| ServiceError::invalid("allow", e))?;
        if !parsed.is_empty() {
            if !local.allow_egress {
                return Err(ServiceError::invalid(
                    "allow",
                    "this server gives tasks no egress: its operator has not set local.allow_egress = true",
                ));
            }
            if !local.own_users {
                return Err(ServiceError::invalid(
                    "allow",
                    "egress needs the server to run as root (it binds each sandbox's proxy inside the sandbox's network namespace)",
                ));
            }
        }
        if !local.allow_private_egress
            && let Some(rule) = parsed.iter().find(|r| {
                r.address()
                    .is_some_and(tresor_domain::net::is_private_address)
            })
        {
            return Err(ServiceError::invalid(
                "allow",
                format!(
                    "egress rule {rule} names a loopback, private or link-local address, which this server's operator does not allow (local.allow_private_egress)"
                ),
            ));
        }
        let rules: Vec<String> = parsed.iter().map(ToString::to_string).collect();
        let mut audit = platform::caller_event(caller, "workspace.egress", object);
        audit.detail = Some(format!("allow={}", rules.join(",")));
        self.inner
            .store
            .set_workspace_egress(&caller.workspace, &rules, &audit)
            .await?;
        Ok(EgressPolicy { allow: rules })
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
        if self.inner.supervisor.backend(env).is_none() {
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
        worker_api::bootstrap(&self.inner.workers, id, token, request)
            .await
            .map(WorkerAssignment)
    }

    /// A task's worker (on any backend) reports its status; the answer is the task's state now.
    pub async fn report_status(
        &self,
        id: &str,
        credential: &str,
        status: tresor_api_types::internal::WorkerStatus,
    ) -> Result<tresor_domain::TaskState, ServiceError> {
        worker_api::report(&self.inner.workers, id, credential, status).await
    }

    /// CreateTask: validates, stores durably as QUEUED, wakes the scheduler.
    pub async fn create_task(
        &self,
        caller: &Caller,
        task: TesTask,
    ) -> Result<TaskId, ServiceError> {
        self.create_task_in_run(caller, task, None).await
    }

    /// CreateTask for a workflow run's engine or one of its jobs (`run`), or a standalone task.
    pub(crate) async fn create_task_in_run(
        &self,
        caller: &Caller,
        task: TesTask,
        run: Option<tresor_domain::RunLink>,
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
        let Some(backend) = self.inner.supervisor.backend(&env) else {
            return Err(ServiceError::Conflict(format!(
                "workspace {} runs its tasks in compute environment {env:?}, which this server no longer has; a workspace admin chooses another (PUT /api/v1/workspaces/{}/compute-env)",
                caller.workspace, caller.workspace
            )));
        };
        let accepted = validate::accept_task(task, &self.limits(backend.as_ref()))?;
        // Stored values first: their refusal names the secret's way exactly.
        self.check_secrets(caller, &accepted.spec).await?;
        if let Some((field, what)) = spec::plain_credential(&accepted.spec) {
            return Err(ServiceError::invalid(
                field,
                format!("holds {what}; {}", spec::USE_A_SECRET),
            ));
        }
        self.inner
            .images
            .check_task(&caller.workspace, &accepted.spec)
            .await?;
        self.inner
            .supervisor
            .storage()
            .check_task(&caller.workspace, &accepted.spec)
            .await?;
        let id = TaskId::parse(&uuid::Uuid::now_v7().to_string())
            .map_err(|e| ServiceError::Internal(e.into()))?;
        let mut spec = accepted.spec;
        spec.run = run;
        self.inner
            .store
            .insert_task(NewTask {
                id: id.clone(),
                workspace: caller.workspace.clone(),
                name: spec.name.clone(),
                cpu_cores: spec.resources.cpu_cores,
                creation_time: time::OffsetDateTime::now_utc(),
                tags: spec.tags.clone(),
                compute_env: spec.compute_env.id.clone(),
                spec,
                notes: accepted.notes,
                created_by: caller.principal.user.clone(),
                audit: platform::caller_event(caller, "task.create", format!("task:{id}")),
            })
            .await?;
        tracing::debug!(task = %id, "task created");
        self.inner.supervisor.wake();
        Ok(id)
    }

    /// Declared secrets must exist for the submitter, and no stored value may appear in the
    /// document itself (a pasted password belongs in a secret, referenced by name).
    async fn check_secrets(&self, caller: &Caller, spec: &TaskSpec) -> Result<(), ServiceError> {
        for name in &spec.secrets.files {
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
            && spec::holds_value(spec, &guard)
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
        delivery_id: Option<&str>,
    ) -> Result<worker_api::Delivery, ServiceError> {
        let delivery =
            worker_api::deliver_secrets(&self.inner.workers, id, credential, delivery_id).await?;
        self.inner.metrics.secrets_delivered(delivery.secrets.len());
        Ok(delivery)
    }

    /// A running task's identity token for one of the allowed audiences.
    pub async fn task_token(
        &self,
        id: &str,
        credential: &str,
        audience: Option<&str>,
    ) -> Result<IssuedToken, ServiceError> {
        let record = worker_api::authorized_task(&self.inner.workers, id, credential).await?;
        let subject = TaskSubject {
            workspace: record.workspace.to_string(),
            user: record.created_by.to_string(),
            task: record.id.to_string(),
            run: record
                .spec
                .run
                .as_ref()
                .map_or_else(|| record.id.to_string(), |run| run.id.clone()),
        };
        self.inner.identity.mint(&subject, audience).await
    }

    /// Presigned GETs for a starting task's `s3://` inputs.
    pub async fn task_inputs(
        &self,
        id: &str,
        credential: &str,
    ) -> Result<Vec<storage::PresignedInput>, ServiceError> {
        let record = worker_api::authorized_task(&self.inner.workers, id, credential).await?;
        self.inner
            .supervisor
            .storage()
            .presign_inputs(&record.workspace, &record.spec)
            .await
    }

    /// Presigned PUTs for the files a finishing task delivers to its `s3://` outputs.
    pub async fn task_uploads(
        &self,
        id: &str,
        credential: &str,
        urls: &[String],
    ) -> Result<Vec<String>, ServiceError> {
        let record = worker_api::authorized_task(&self.inner.workers, id, credential).await?;
        self.inner
            .supervisor
            .storage()
            .presign_uploads(&record.workspace, &record.spec, urls)
            .await
    }

    /// The task with this id in the caller's workspace; a malformed id, a missing task and
    /// another workspace's task all look the same: not found.
    pub(crate) async fn find_task(
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
            "{}|{:?}|{:?}|{:?}|{:?}",
            caller.workspace, request.name_prefix, request.state, request.tags, request.run
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
            run: request.run.clone(),
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
        cancel(&self.inner, caller, record).await
    }

    /// Cancels a task the caller was allowed to cancel (a run's, when the run is canceled).
    pub(crate) async fn cancel_record(
        &self,
        caller: &Caller,
        record: tresor_store::TaskRecord,
    ) -> Result<(), ServiceError> {
        cancel(&self.inner, caller, record).await
    }

    /// The session check of a worker's call: the active task whose credential this is.
    pub(crate) async fn authorized_task(
        &self,
        id: &str,
        credential: &str,
    ) -> Result<tresor_store::TaskRecord, ServiceError> {
        worker_api::authorized_task(&self.inner.workers, id, credential).await
    }

    /// The page tokens of every listing (a run listing binds them to its own filter text).
    pub(crate) fn page_tokens(&self) -> &PageTokens {
        &self.inner.page_tokens
    }

    /// The service's settings (page sizes, the organization).
    pub(crate) fn settings(&self) -> &ServiceSettings {
        &self.inner.settings
    }

    /// The platform service, for rooms that act through tasks.
    pub(crate) fn platform(&self) -> &PlatformService {
        &self.inner.platform
    }

    /// The supervisor's view of a workspace's `file://` directory and group.
    pub(crate) async fn workspace_files(
        &self,
        workspace: &tresor_domain::WorkspaceId,
    ) -> Result<Option<(std::path::PathBuf, Option<u32>)>, ServiceError> {
        self.inner.supervisor.workspace_files(workspace).await
    }

    /// Where workflow runs' directories are made (`<first allowed dir>/.tresor-runs`).
    pub(crate) fn runs_area(&self) -> Option<std::path::PathBuf> {
        self.inner.supervisor.storage().runs_area()
    }

    /// The launch guard of a caller (the values of the secrets they could use), if they have any.
    pub(crate) async fn secret_guard(
        &self,
        caller: &Caller,
    ) -> Result<Option<tresor_crypto::redact::Redactor>, ServiceError> {
        self.inner
            .secrets
            .guard(&caller.workspace, &caller.principal.user)
            .await
    }
}

/// CancelTask: the state change is committed (with its audit event) first, then the task's work
/// is stopped wherever it runs.
async fn cancel(
    inner: &Inner,
    caller: &Caller,
    record: tresor_store::TaskRecord,
) -> Result<(), ServiceError> {
    use tresor_api_types::tes::TesTaskLog;
    use tresor_domain::TaskState;
    let id = record.id.clone();
    if record.state == TaskState::Canceled {
        return Ok(());
    }
    let conflict = |state: TaskState| {
        ServiceError::Conflict(format!(
            "task {id} is already {}; only QUEUED, INITIALIZING or RUNNING tasks can be canceled",
            state.as_str()
        ))
    };
    if record.state.is_terminal() {
        return Err(conflict(record.state));
    }
    let mut logs: Vec<TesTaskLog> = record
        .logs_json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default();
    if logs.is_empty() {
        logs.push(TesTaskLog::default());
    }
    if let Some(last) = logs.last_mut() {
        last.system_logs.get_or_insert_with(Vec::new).push(format!(
            "canceled by request in state {}",
            record.state.as_str()
        ));
        last.end_time = Some(supervisor::now());
    }
    let logs = serde_json::to_string(&logs).map_err(|e| ServiceError::Internal(e.into()))?;
    let audit = platform::caller_event(caller, "task.cancel", format!("task:{id}"));
    if !inner.store.cancel_task(&id, &logs, &audit).await? {
        // It moved meanwhile: report what it became.
        let now = inner
            .store
            .get_task_for_system(&id)
            .await?
            .map(|r| r.state)
            .unwrap_or(TaskState::Canceled);
        return if now == TaskState::Canceled {
            Ok(())
        } else {
            Err(conflict(now))
        };
    }
    inner.supervisor.cancel_work(&record).await;
    Ok(())
}

/// Converts tasks stored before the typed task (as TES documents) once, at start.
async fn convert_legacy_specs(store: &Store, supervisor: &Supervisor) -> Result<(), ServiceError> {
    for (id, document, env) in store.legacy_task_specs().await? {
        let kind = supervisor
            .backend(&env)
            .map_or(tresor_domain::ComputeEnvKind::Slurm, |b| b.env().kind);
        let env = ComputeEnv { id: env, kind };
        match spec::from_legacy(&document, env) {
            Ok(spec) => store.convert_task_spec(&id, &spec).await?,
            Err(e) => {
                return Err(ServiceError::Internal(anyhow::anyhow!(
                    "task {id}: its stored document does not convert to a typed task: {e}"
                )));
            }
        }
    }
    Ok(())
}
