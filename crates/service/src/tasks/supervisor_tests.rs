//! The supervisor against a fake backend, on a real store: every transition and the races
//! (cancel against complete, a report after cancel, a cancel during submit, a restart between
//! claim and start, a lapsed lease taken over once).
//!
//! The fake stands in for the compute backend only, the boundary these tests are about; the
//! real backends are covered by the integration tests with real bubblewrap and real SLURM.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tresor_api_types::tes::TesTaskLog;
use tresor_domain::{ComputeEnv, ComputeEnvKind, TaskId, TaskSpec, TaskState, UserId, WorkspaceId};
use tresor_executors::{
    BackendEvent, Capabilities, CapacityUnit, ComputeBackend, Error, Events, HandOff, JobView,
    Launch, Observation, SandboxSettings, Submitted, TaskLimits, WorkerPhase, WorkerStatus,
};
use tresor_store::{AuditEvent, Lease, NewTask, Store, StoreSettings};

use super::supervisor::{Supervisor, SupervisorSettings, WorkerDefaults};
use crate::storage::StorageService;

/// What the fake was asked to do, and what it answers.
#[derive(Debug, Default)]
struct Script {
    submitted: Vec<TaskId>,
    canceled: Vec<TaskId>,
    cleaned: Vec<TaskId>,
    adopted: Vec<TaskId>,
    /// Answers of `observe` and `adopt`, by task (default: Unknown).
    seen: HashMap<TaskId, Observation>,
    /// Status files, by task.
    status: HashMap<TaskId, WorkerStatus>,
    /// Every submit fails with this.
    refuse: Option<String>,
    /// A cancel committed while the fake submits (the race with the submitter).
    cancel_during_submit: Option<Store>,
}

#[derive(Debug)]
struct FakeBackend {
    env: ComputeEnv,
    capabilities: Capabilities,
    script: Mutex<Script>,
}

impl FakeBackend {
    fn new(capacity: u32, unit: CapacityUnit, poll: bool) -> Arc<FakeBackend> {
        Arc::new(FakeBackend {
            env: ComputeEnv {
                id: "fake".to_owned(),
                kind: ComputeEnvKind::Local,
            },
            capabilities: Capabilities {
                backend_parameters: &[],
                max_cpu_cores: None,
                max_ram_gb: None,
                max_disk_gb: None,
                max_run_seconds: None,
                capacity,
                capacity_unit: unit,
                hand_off: HandOff::Direct,
                poll_interval: poll.then_some(Duration::from_secs(1)),
                server_url: None,
                runtime_dir: "/dev/shm".into(),
                handle_key: Some("fake_job_id"),
                bootstrap_ttl: None,
                image_cache: "/nonexistent/images".into(),
            },
            script: Mutex::new(Script::default()),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        f(&mut self.script.lock().unwrap())
    }
}

fn boxed<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(async move { value })
}

impl ComputeBackend for FakeBackend {
    fn env(&self) -> &ComputeEnv {
        &self.env
    }
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
    fn worker_limits(&self, _spec: &TaskSpec) -> TaskLimits {
        TaskLimits::default()
    }
    fn submit<'a>(
        &'a self,
        launch: Launch<'a>,
        _events: &'a Events,
    ) -> BoxFuture<'a, Result<Submitted, Error>> {
        let id = launch.id.clone();
        Box::pin(async move {
            let cancel = self.with(|s| s.cancel_during_submit.take());
            if let Some(store) = cancel {
                assert!(store.cancel_task(&id, "[]", &event(&id)).await.unwrap());
            }
            let refuse = self.with(|s| {
                s.submitted.push(id.clone());
                s.refuse.clone()
            });
            match refuse {
                Some(why) => Err(Error::Scheduler(why)),
                None => Ok(Submitted {
                    handle: Some(format!("job-{id}")),
                }),
            }
        })
    }
    fn cancel<'a>(
        &'a self,
        id: &'a TaskId,
        _handle: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.with(|s| s.canceled.push(id.clone()));
        boxed(Ok(()))
    }
    fn observe<'a>(
        &'a self,
        tasks: &'a [(TaskId, Option<String>)],
    ) -> BoxFuture<'a, Result<HashMap<TaskId, Observation>, Error>> {
        let seen = self.with(|s| {
            tasks
                .iter()
                .map(|(id, _)| {
                    let seen = s.seen.get(id).cloned().unwrap_or(Observation::Unknown);
                    (id.clone(), seen)
                })
                .collect()
        });
        boxed(Ok(seen))
    }
    fn adopt<'a>(
        &'a self,
        id: &'a TaskId,
        _handle: Option<&'a str>,
        _events: &'a Events,
    ) -> BoxFuture<'a, Result<Observation, Error>> {
        let seen = self.with(|s| {
            s.adopted.push(id.clone());
            s.seen.get(id).cloned().unwrap_or(Observation::Unknown)
        });
        boxed(Ok(seen))
    }
    fn last_status(&self, id: &TaskId) -> Option<WorkerStatus> {
        self.with(|s| s.status.get(id).cloned())
    }
    fn clean_up(&self, id: &TaskId) -> Result<(), Error> {
        self.with(|s| s.cleaned.push(id.clone()));
        Ok(())
    }
    fn leftovers(&self) -> Vec<TaskId> {
        Vec::new()
    }
    fn job<'a>(&'a self, _handle: &'a str) -> BoxFuture<'a, Result<Option<JobView>, Error>> {
        boxed(Ok(None))
    }
}

fn event(id: &TaskId) -> AuditEvent {
    AuditEvent {
        actor: "u1".to_owned(),
        action: "task.cancel".to_owned(),
        object: format!("task:{id}"),
        workspace: Some("ws".to_owned()),
        source: None,
        result: "ok".to_owned(),
        detail: None,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    backend: Arc<FakeBackend>,
    supervisor: Arc<Supervisor>,
}

async fn supervisor(
    store: &Store,
    backend: &Arc<FakeBackend>,
    dir: &std::path::Path,
) -> Arc<Supervisor> {
    let platform = crate::PlatformService::new(
        store.clone(),
        tresor_auth::oidc::OidcVerifier::new(Vec::new()).unwrap(),
    );
    let keys = tresor_crypto::KeyRing::open_or_create(&dir.join("kek")).unwrap();
    let secrets = crate::SecretService::new(store.clone(), platform.clone(), keys)
        .await
        .unwrap();
    // The fake backend runs nothing, so the tasks need no images.
    let images = crate::ImageService::new(
        store.clone(),
        platform,
        secrets,
        crate::ImageSettings {
            runtime: crate::ImageRuntime::Host,
            ..Default::default()
        },
    );
    Supervisor::new(
        store.clone(),
        StorageService::new(store.clone(), None, Vec::new()),
        images,
        vec![backend.clone() as Arc<dyn ComputeBackend>],
        SupervisorSettings {
            lease: Duration::from_secs(30),
            callback_url: "http://127.0.0.1:1".to_owned(),
            worker: WorkerDefaults {
                sandbox: SandboxSettings {
                    bwrap: "/usr/bin/bwrap".into(),
                    run_as: None,
                },
                log_tail_bytes: 1024,
                max_log_bytes: 4096,
                allow_private_http_inputs: false,
                allow_network: false,
                allow_egress: false,
                allow_private_egress: false,
                sdk_env: Vec::new(),
            },
            workspace_gids: None,
        },
        crate::Metrics::new(),
    )
}

async fn fixture(capacity: u32, unit: CapacityUnit, poll: bool) -> Fixture {
    // reqwest is built without a default TLS provider; a test run alone must install one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&StoreSettings {
        path: dir.path().join("db.sqlite"),
        durability: tresor_store::Durability::Normal,
        audit_key_file: dir.path().join("audit-key"),
    })
    .await
    .unwrap();
    let backend = FakeBackend::new(capacity, unit, poll);
    let supervisor = supervisor(&store, &backend, dir.path()).await;
    Fixture {
        _dir: dir,
        store,
        backend,
        supervisor,
    }
}

impl Fixture {
    async fn task(&self, name: &str, cores: u32) -> TaskId {
        let id = TaskId::parse(&uuid::Uuid::now_v7().to_string()).unwrap();
        let mut spec = TaskSpec::new(Vec::new(), self.backend.env.clone());
        spec.resources.cpu_cores = cores;
        self.store
            .insert_task(NewTask {
                id: id.clone(),
                workspace: WorkspaceId::parse("ws").unwrap(),
                name: Some(name.to_owned()),
                cpu_cores: cores,
                creation_time: time::OffsetDateTime::now_utc(),
                spec,
                tags: Default::default(),
                notes: Vec::new(),
                created_by: UserId::parse("u1").unwrap(),
                compute_env: "fake".to_owned(),
                audit: AuditEvent {
                    action: "task.create".to_owned(),
                    ..event(&id)
                },
            })
            .await
            .unwrap();
        id
    }

    async fn state(&self, id: &TaskId) -> TaskState {
        self.store
            .get_task_for_system(id)
            .await
            .unwrap()
            .unwrap()
            .state
    }

    async fn system_logs(&self, id: &TaskId) -> String {
        let record = self.store.get_task_for_system(id).await.unwrap().unwrap();
        let logs: Vec<TesTaskLog> =
            serde_json::from_str(record.logs_json.as_deref().unwrap_or("[]")).unwrap();
        logs.iter()
            .flat_map(|l| l.system_logs.iter().flatten())
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn report(&self, id: &TaskId, phase: WorkerPhase) {
        let record = self.store.get_task_for_system(id).await.unwrap().unwrap();
        self.supervisor.apply_report(&record, status(phase)).await;
    }

    async fn ended(&self, id: &TaskId) {
        self.supervisor
            .handle_event(BackendEvent::Ended {
                id: id.clone(),
                how: "the worker exited with code 1".to_owned(),
            })
            .await;
    }
}

fn status(phase: WorkerPhase) -> WorkerStatus {
    WorkerStatus {
        phase,
        log: TesTaskLog::default(),
    }
}

/// A lease `owner` holds until `until_ms`.
fn lease(owner: &str, until_ms: i64) -> Lease {
    Lease {
        owner: owner.to_owned(),
        until_ms,
    }
}

#[tokio::test]
async fn a_task_is_claimed_started_reported_ended_and_cleaned_up() {
    let f = fixture(4, CapacityUnit::Cores, false).await;
    let id = f.task("t", 1).await;
    f.supervisor.fill().await.unwrap();
    assert_eq!(f.backend.with(|s| s.submitted.clone()), vec![id.clone()]);
    let record = f.store.get_task_for_system(&id).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Initializing);
    assert_eq!(record.owner.as_deref(), Some(f.supervisor.owner()));
    assert_eq!(record.executor_ref, Some(format!("job-{id}")));
    assert!(f.supervisor.runs(&id));

    f.report(&id, WorkerPhase::Running).await;
    assert_eq!(f.state(&id).await, TaskState::Running);
    f.report(&id, WorkerPhase::Complete).await;
    assert_eq!(f.state(&id).await, TaskState::Complete);
    // A late progress report does not revive it.
    f.report(&id, WorkerPhase::Running).await;
    assert_eq!(f.state(&id).await, TaskState::Complete);

    f.ended(&id).await;
    assert_eq!(f.backend.with(|s| s.cleaned.clone()), vec![id.clone()]);
    assert!(!f.supervisor.runs(&id));
    let record = f.store.get_task_for_system(&id).await.unwrap().unwrap();
    assert_eq!(record.lease_until, None, "an ended task holds no lease");
}

#[tokio::test]
async fn work_that_ends_without_a_report_keeps_the_status_it_left_or_fails_with_the_reason() {
    let f = fixture(4, CapacityUnit::Cores, false).await;
    let recovered = f.task("recovered", 1).await;
    let lost = f.task("lost", 1).await;
    f.supervisor.fill().await.unwrap();
    f.report(&recovered, WorkerPhase::Running).await;
    f.report(&lost, WorkerPhase::Running).await;
    f.backend.with(|s| {
        s.status
            .insert(recovered.clone(), status(WorkerPhase::ExecutorError))
    });

    f.ended(&recovered).await;
    f.ended(&lost).await;
    assert_eq!(f.state(&recovered).await, TaskState::ExecutorError);
    assert_eq!(f.state(&lost).await, TaskState::SystemError);
    assert!(
        f.system_logs(&lost)
            .await
            .contains("the worker ended without reporting a result: the worker exited with code 1")
    );
}

#[tokio::test]
async fn a_task_that_cannot_be_submitted_fails_and_frees_its_capacity() {
    let f = fixture(1, CapacityUnit::Cores, false).await;
    let first = f.task("first", 1).await;
    let second = f.task("second", 1).await;
    f.backend
        .with(|s| s.refuse = Some("the queue is closed".to_owned()));
    f.supervisor.fill().await.unwrap();
    for id in [&first, &second] {
        assert_eq!(f.state(id).await, TaskState::SystemError);
        assert!(f.system_logs(id).await.contains("the queue is closed"));
    }
    assert_eq!(f.backend.with(|s| s.cleaned.len()), 2);
}

#[tokio::test]
async fn capacity_holds_tasks_back_until_a_slot_frees_oldest_first() {
    let f = fixture(2, CapacityUnit::Cores, false).await;
    let a = f.task("a", 1).await;
    let big = f.task("big", 2).await;
    let c = f.task("c", 1).await;
    f.supervisor.fill().await.unwrap();
    assert_eq!(f.backend.with(|s| s.submitted.clone()), vec![a.clone()]);
    assert_eq!(
        f.state(&big).await,
        TaskState::Queued,
        "it waits for two free cores"
    );
    assert_eq!(f.state(&c).await, TaskState::Queued, "and is not overtaken");

    f.report(&a, WorkerPhase::Complete).await;
    f.ended(&a).await;
    f.supervisor.fill().await.unwrap();
    assert_eq!(f.backend.with(|s| s.submitted.clone()), [a, big]);
    assert_eq!(f.state(&c).await, TaskState::Queued);
}

#[tokio::test]
async fn cancel_against_complete_and_a_report_after_cancel() {
    let f = fixture(4, CapacityUnit::Cores, false).await;
    let canceled = f.task("canceled", 1).await;
    let completed = f.task("completed", 1).await;
    f.supervisor.fill().await.unwrap();
    f.report(&canceled, WorkerPhase::Running).await;
    f.report(&completed, WorkerPhase::Running).await;

    // The cancel commits first: the worker's final report no longer moves the task.
    assert!(
        f.store
            .cancel_task(&canceled, "[]", &event(&canceled))
            .await
            .unwrap()
    );
    let record = f
        .store
        .get_task_for_system(&canceled)
        .await
        .unwrap()
        .unwrap();
    f.supervisor.cancel_work(&record).await;
    assert_eq!(
        f.backend.with(|s| s.canceled.clone()),
        vec![canceled.clone()]
    );
    f.report(&canceled, WorkerPhase::Complete).await;
    assert_eq!(f.state(&canceled).await, TaskState::Canceled);

    // The completion commits first: the cancel finds nothing to move.
    f.report(&completed, WorkerPhase::Complete).await;
    assert!(
        !f.store
            .cancel_task(&completed, "[]", &event(&completed))
            .await
            .unwrap()
    );
    assert_eq!(f.state(&completed).await, TaskState::Complete);
}

#[tokio::test]
async fn a_cancel_committed_while_the_backend_submits_stops_the_work_at_once() {
    let f = fixture(4, CapacityUnit::Cores, false).await;
    let id = f.task("t", 1).await;
    f.backend
        .with(|s| s.cancel_during_submit = Some(f.store.clone()));
    f.supervisor.fill().await.unwrap();
    assert_eq!(f.state(&id).await, TaskState::Canceled);
    assert_eq!(f.backend.with(|s| s.canceled.clone()), [id]);
}

#[tokio::test]
async fn polled_work_that_ends_on_a_limit_is_the_tasks_error_and_forgotten_work_the_systems() {
    let f = fixture(10, CapacityUnit::Tasks, true).await;
    let limited = f.task("limited", 8).await;
    let forgotten = f.task("forgotten", 1).await;
    f.supervisor.fill().await.unwrap();
    assert_eq!(
        f.backend.with(|s| s.submitted.len()),
        2,
        "capacity counts tasks, not cores"
    );
    f.report(&limited, WorkerPhase::Running).await;
    f.backend.with(|s| {
        s.seen.insert(
            limited.clone(),
            Observation::Ended {
                how: "the job ran out of time".to_owned(),
                hit_limit: true,
                messages: vec!["DUE TO TIME LIMIT".to_owned()],
            },
        )
    });
    for _ in 0..3 {
        f.supervisor.poll("fake").await.unwrap();
    }
    assert_eq!(f.state(&limited).await, TaskState::ExecutorError);
    let logs = f.system_logs(&limited).await;
    assert!(logs.contains("the job ran out of time") && logs.contains("DUE TO TIME LIMIT"));
    assert_eq!(f.state(&forgotten).await, TaskState::SystemError);
    assert!(
        f.system_logs(&forgotten)
            .await
            .contains("no longer knows the task's work")
    );
}

#[tokio::test]
async fn a_restart_between_claim_and_start_requeues_the_task_and_it_runs_once() {
    let f = fixture(4, CapacityUnit::Cores, false).await;
    let id = f.task("t", 1).await;
    // A process on this host claimed it and died before its worker started.
    let place = super::supervisor::pid_place();
    let dead = lease(&format!("{place}:2000000000:gone"), i64::MAX);
    let claimed = f
        .store
        .claim_next_task("fake", 4, b"h", &dead)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, id);

    f.supervisor.take_over_lapsed().await.unwrap();
    assert_eq!(f.backend.with(|s| s.adopted.clone()), vec![id.clone()]);
    let record = f.store.get_task_for_system(&id).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Queued);
    assert_eq!(record.owner, None);
    assert!(f.backend.with(|s| s.submitted.is_empty()));

    f.supervisor.fill().await.unwrap();
    f.supervisor.fill().await.unwrap();
    assert_eq!(f.backend.with(|s| s.submitted.clone()), [id]);
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_by_exactly_one_process_and_a_live_one_by_none() {
    let f = fixture(4, CapacityUnit::Cores, false).await;
    let lapsed = f.task("lapsed", 1).await;
    let live = f.task("live", 1).await;
    f.store
        .claim_next_task("fake", 4, b"h", &lease("elsewhere:1:a", 1))
        .await
        .unwrap();
    f.store
        .claim_next_task("fake", 4, b"h", &lease("elsewhere:2:b", i64::MAX))
        .await
        .unwrap();
    f.store
        .transition(&lapsed, TaskState::Running, None)
        .await
        .unwrap();
    f.backend.with(|s| {
        s.seen
            .insert(lapsed.clone(), Observation::Active { handle: None })
    });

    // Two more processes on the same database race for it.
    let other = supervisor(&f.store, &f.backend, f._dir.path()).await;
    let (a, b) = tokio::join!(f.supervisor.take_over_lapsed(), other.take_over_lapsed());
    a.unwrap();
    b.unwrap();
    assert_eq!(
        u8::from(f.supervisor.runs(&lapsed)) + u8::from(other.runs(&lapsed)),
        1,
        "exactly one process follows the task"
    );
    assert_eq!(f.backend.with(|s| s.adopted.clone()), vec![lapsed.clone()]);
    assert!(!f.supervisor.runs(&live) && !other.runs(&live));
    let record = f.store.get_task_for_system(&live).await.unwrap().unwrap();
    assert_eq!(record.owner.as_deref(), Some("elsewhere:2:b"));
    let record = f.store.get_task_for_system(&lapsed).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Running, "its work goes on");
    assert!([f.supervisor.owner(), other.owner()].contains(&record.owner.as_deref().unwrap_or("")));
}

#[tokio::test]
async fn adopted_work_that_is_gone_keeps_its_result_or_fails() {
    let f = fixture(4, CapacityUnit::Cores, false).await;
    let finished = f.task("finished", 1).await;
    let running = f.task("running", 1).await;
    for _ in 0..2 {
        f.store
            .claim_next_task("fake", 4, b"h", &lease("elsewhere:1:a", 1))
            .await
            .unwrap();
    }
    for id in [&finished, &running] {
        f.store
            .transition(id, TaskState::Running, None)
            .await
            .unwrap();
    }
    f.backend.with(|s| {
        s.status
            .insert(finished.clone(), status(WorkerPhase::Complete));
        s.status
            .insert(running.clone(), status(WorkerPhase::Running));
    });
    f.supervisor.take_over_lapsed().await.unwrap();
    assert_eq!(f.state(&finished).await, TaskState::Complete);
    assert_eq!(f.state(&running).await, TaskState::SystemError);
    assert!(
        f.system_logs(&running)
            .await
            .contains("after its executors had started")
    );
    assert_eq!(f.backend.with(|s| s.cleaned.len()), 2);
}

#[tokio::test]
async fn a_process_whose_task_was_taken_over_leaves_it_to_its_new_owner() {
    let f = fixture(4, CapacityUnit::Cores, false).await;
    let id = f.task("t", 1).await;
    f.supervisor.fill().await.unwrap();
    f.report(&id, WorkerPhase::Running).await;
    let record = f.store.get_task_for_system(&id).await.unwrap().unwrap();
    // A renewal landed after the other process looked: its takeover fails.
    assert!(
        !f.store
            .take_over(
                &id,
                record.owner.as_deref(),
                Some(1),
                &lease("elsewhere:9:z", i64::MAX)
            )
            .await
            .unwrap()
    );
    assert!(
        f.store
            .take_over(
                &id,
                record.owner.as_deref(),
                record.lease_until,
                &lease("elsewhere:9:z", i64::MAX)
            )
            .await
            .unwrap()
    );
    // This process's view of the work is stale now: it neither ends the task nor removes its
    // files.
    f.ended(&id).await;
    assert_eq!(f.state(&id).await, TaskState::Running);
    assert!(f.backend.with(|s| s.cleaned.is_empty()));
    assert!(!f.supervisor.runs(&id));
}
