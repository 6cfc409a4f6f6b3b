//! The use cases behind the internal endpoints a task's worker calls: spending a bootstrap token,
//! reporting status, fetching secrets once. Every call is checked against the task's worker
//! session (or its one-time bootstrap token), in constant time.

use tresor_crypto::redact::MIN_SECRET_LEN;
use tresor_domain::{TaskId, TaskState};
use tresor_executors::{BootstrapRequest, WorkerStatus, WorkerTask};
use tresor_store::{AuditEvent, TaskRecord};

use super::supervisor::{Supervisor, new_credential};
use crate::ServiceError;
use crate::secrets::SecretService;

/// What the worker endpoints need: the store, the secrets, and the supervisor that owns the
/// tasks' states.
#[derive(Debug)]
pub(crate) struct WorkerApi {
    pub store: tresor_store::Store,
    pub secrets: SecretService,
    pub images: crate::images::ImageService,
    pub supervisor: std::sync::Arc<Supervisor>,
}

fn refused() -> ServiceError {
    ServiceError::Unauthenticated("the task credential is invalid or the task has ended".to_owned())
}

/// Checks a worker's credential against its task's session, in constant time. The session is in
/// the store, so a worker re-attached after a server restart keeps it; it is cleared when the
/// task ends.
pub(crate) async fn check_session(
    inner: &WorkerApi,
    id: &str,
    credential: &str,
) -> Result<TaskId, ServiceError> {
    use subtle::ConstantTimeEq;
    let id = TaskId::parse(id).map_err(|_| refused())?;
    let presented = ring::digest::digest(&ring::digest::SHA256, credential.as_bytes());
    match inner.store.task_session(&id).await? {
        Some(stored) if bool::from(presented.as_ref().ct_eq(stored.as_slice())) => Ok(id),
        _ => Err(refused()),
    }
}

/// The task's record, if it has not ended and its submitter may still launch in its workspace:
/// a removed or demoted member's work gets no secrets, tokens or storage URLs.
pub(crate) async fn active_task(
    inner: &WorkerApi,
    id: &TaskId,
) -> Result<TaskRecord, ServiceError> {
    let record = inner
        .store
        .get_task_for_system(id)
        .await?
        .ok_or_else(refused)?;
    if record.state.is_terminal() {
        return Err(refused());
    }
    let role = inner
        .store
        .membership(&record.workspace, &record.created_by)
        .await?;
    if !role
        .is_some_and(|r| tresor_domain::permissions::allows(r, tresor_domain::Action::SubmitTask))
    {
        return Err(ServiceError::Forbidden(
            "the task's submitter may no longer launch in this workspace".to_owned(),
        ));
    }
    Ok(record)
}

/// The active task behind a worker's credential.
pub(crate) async fn authorized_task(
    inner: &WorkerApi,
    id: &str,
    credential: &str,
) -> Result<TaskRecord, ServiceError> {
    let id = check_session(inner, id, credential).await?;
    active_task(inner, &id).await
}

/// What a starting task's worker gets once: its declared secrets by name, and the registry
/// logins for its images by registry.
#[derive(Debug, Default)]
pub struct Delivery {
    pub secrets: Vec<(String, tresor_crypto::SecretValue)>,
    pub registry_logins: Vec<(String, tresor_crypto::SecretValue)>,
}

/// Hands a starting task its secrets, once: a matching credential is consumed by its first use.
pub(crate) async fn deliver_secrets(
    inner: &WorkerApi,
    id: &str,
    credential: &str,
    delivery: Option<&str>,
) -> Result<Delivery, ServiceError> {
    let record = authorized_task(inner, id, credential).await?;
    let id = record.id.clone();
    let repeat = match inner.store.claim_secret_delivery(&id, delivery).await? {
        tresor_store::SecretClaim::First => false,
        tresor_store::SecretClaim::Repeat => true,
        tresor_store::SecretClaim::Refused => {
            return Err(ServiceError::Conflict(
                "this task's secrets were already delivered; they are handed out once".to_owned(),
            ));
        }
    };
    let mut resolved = Vec::with_capacity(record.spec.secrets.files.len());
    for name in &record.spec.secrets.files {
        let Some((key, version, value)) = inner
            .secrets
            .resolve(&record.workspace, &record.created_by, name)
            .await?
        else {
            return Err(ServiceError::Conflict(format!(
                "secret {name} no longer exists"
            )));
        };
        // Values this short were accepted before the minimum existed; the redactor no longer
        // hides them, so a task could print one in plain sight. The message names the secret,
        // never the value.
        if value.len() < MIN_SECRET_LEN {
            return Err(ServiceError::Conflict(format!(
                "the {} secret {name} is shorter than {MIN_SECRET_LEN} bytes, so task logs could not hide it; set a value of at least {MIN_SECRET_LEN} bytes and submit the task again",
                key.scope()
            )));
        }
        resolved.push((name.clone(), key, version, value));
    }
    let uses: Vec<_> = resolved
        .iter()
        .map(|(_, key, version, value)| (key.clone(), *version, value))
        .collect();
    inner
        .secrets
        .record_deliveries(
            &uses,
            id.as_str(),
            record.created_by.as_str(),
            delivery,
            repeat,
        )
        .await?;
    let registry_logins = inner.images.logins(&record, delivery, repeat).await?;
    Ok(Delivery {
        secrets: resolved
            .into_iter()
            .map(|(name, _, _, value)| (name, value))
            .collect(),
        registry_logins,
    })
}

/// A worker's status report. Returns the task's state as the server now sees it.
pub(crate) async fn report(
    inner: &WorkerApi,
    id: &str,
    credential: &str,
    status: WorkerStatus,
) -> Result<TaskState, ServiceError> {
    let id = check_session(inner, id, credential).await?;
    let record = inner
        .store
        .get_task_for_system(&id)
        .await?
        .ok_or_else(|| ServiceError::Unauthenticated("unknown task".to_owned()))?;
    inner.supervisor.apply_report(&record, status).await;
    Ok(inner
        .store
        .get_task_for_system(&id)
        .await?
        .map_or(record.state, |r| r.state))
}

fn bootstrap_refused() -> ServiceError {
    ServiceError::Unauthenticated(
        "the bootstrap token is invalid, already used or expired".to_owned(),
    )
}

/// Records a refused bootstrap attempt with the real reason (the caller only learns "refused").
async fn audit_refusal(inner: &WorkerApi, record: Option<&TaskRecord>, id: &str, reason: &str) {
    tracing::warn!(task = %id, %reason, "bootstrap token refused");
    let event = AuditEvent {
        actor: "-".to_owned(),
        action: "task.bootstrap".to_owned(),
        object: format!("task:{id}"),
        workspace: record.map(|r| r.workspace.to_string()),
        source: None,
        result: format!("denied: {reason}"),
        detail: None,
    };
    if let Err(e) = inner.store.record_audit(&event).await {
        tracing::error!(error = %e, "recording a refused bootstrap");
    }
}

/// Exchanges a job's one-time bootstrap token for its task and a fresh worker session. The token
/// must be the task's armed one and unused, and the backend must report the task's job running
/// for less than its bootstrap TTL; each refusal is audited with its reason.
pub(crate) async fn bootstrap(
    inner: &WorkerApi,
    id: &str,
    token: &str,
    request: BootstrapRequest,
) -> Result<WorkerTask, ServiceError> {
    use subtle::ConstantTimeEq;
    let Ok(task_id) = TaskId::parse(id) else {
        audit_refusal(inner, None, id, "no such task").await;
        return Err(bootstrap_refused());
    };
    let Some(record) = inner.store.get_task_for_system(&task_id).await? else {
        audit_refusal(inner, None, id, "no such task").await;
        return Err(bootstrap_refused());
    };
    let presented = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let armed = inner.store.task_bootstrap(&task_id).await?;
    let matches = armed
        .as_ref()
        .is_some_and(|stored| bool::from(presented.as_ref().ct_eq(stored.as_slice())));
    // A spent token may be presented again with the exchange id it was spent with (checked
    // below, in the one conditional update that hands out a new session).
    let exchange = request
        .exchange
        .as_deref()
        .filter(|e| (16..=64).contains(&e.len()) && e.bytes().all(|b| b.is_ascii_alphanumeric()));
    // Checked here, before the scheduler is asked or anything is prepared: a made-up exchange
    // id with a made-up token costs one read.
    let repeat = match exchange {
        Some(exchange) if !matches && armed.is_none() && !record.state.is_terminal() => {
            inner
                .store
                .bootstrap_spent_with(&task_id, presented.as_ref(), exchange)
                .await?
        }
        _ => false,
    };
    if !matches && !repeat {
        let reason = if record.state.is_terminal() {
            "the task has ended"
        } else if armed.is_none() {
            "the token was already used (replay)"
        } else {
            "the token does not match"
        };
        audit_refusal(inner, Some(&record), id, reason).await;
        return Err(bootstrap_refused());
    }
    let backend = inner.supervisor.backend(&record.compute_env).cloned();
    let Some((backend, ttl)) =
        backend.and_then(|b| b.capabilities().bootstrap_ttl.map(|ttl| (b, ttl)))
    else {
        audit_refusal(
            inner,
            Some(&record),
            id,
            "the task's compute environment takes no bootstrap tokens",
        )
        .await;
        return Err(bootstrap_refused());
    };
    // The job must be this task's, known to the backend, running, and recently started: a token
    // read from a job script later, or from a job that never ran, is worthless.
    let Some(job_id) = request.job_id.filter(|j| !j.is_empty()) else {
        audit_refusal(inner, Some(&record), id, "no job id was presented").await;
        return Err(bootstrap_refused());
    };
    if record.executor_ref.as_deref().is_some_and(|r| r != job_id) {
        let reason = format!("job {job_id} is not the task's job");
        audit_refusal(inner, Some(&record), id, &reason).await;
        return Err(bootstrap_refused());
    }
    let job = backend
        .job(&job_id)
        .await
        .map_err(|e| ServiceError::Unavailable(anyhow::anyhow!("asking the scheduler: {e}")))?;
    let reason = match &job {
        None => Some(format!("the scheduler does not know job {job_id}")),
        Some(job) if job.task_id.as_ref() != Some(&task_id) => {
            Some(format!("job {job_id} belongs to another task"))
        }
        Some(job) if !job.running => Some(format!("job {job_id} is {}, not RUNNING", job.state)),
        Some(job) if job.elapsed > ttl => Some(format!(
            "the token expired: job {job_id} started {} s ago (limit {} s)",
            job.elapsed.as_secs(),
            ttl.as_secs()
        )),
        Some(_) => None,
    };
    if let Some(reason) = reason {
        audit_refusal(inner, Some(&record), id, &reason).await;
        return Err(bootstrap_refused());
    }
    // Everything that can fail is done before the token is spent: a worker whose exchange failed
    // after it was spent could never try again.
    let active = active_task(inner, &task_id).await?;
    let (credential, session_hash) = new_credential()?;
    let assignment = inner
        .supervisor
        .assignment(backend.as_ref(), &active, credential)
        .await?;
    let spent = match (repeat, exchange) {
        (true, Some(exchange)) => {
            inner
                .store
                .repeat_bootstrap(&task_id, presented.as_ref(), exchange, &session_hash)
                .await?
        }
        _ => {
            inner
                .store
                .spend_bootstrap(&task_id, presented.as_ref(), &session_hash, exchange)
                .await?
        }
    };
    if !spent {
        audit_refusal(
            inner,
            Some(&record),
            id,
            "the token was already used (replay)",
        )
        .await;
        return Err(bootstrap_refused());
    }
    let event = AuditEvent {
        actor: record.created_by.to_string(),
        action: "task.bootstrap".to_owned(),
        object: format!("task:{id}"),
        workspace: Some(record.workspace.to_string()),
        source: None,
        result: "ok".to_owned(),
        detail: Some(format!(
            "{} job {job_id}{}",
            backend.env().kind.as_str(),
            if repeat { " (repeated exchange)" } else { "" }
        )),
    };
    inner.store.record_audit(&event).await?;
    if record.executor_ref.is_none() {
        inner.store.set_executor_ref(&task_id, &job_id).await?;
    }
    Ok(assignment)
}
