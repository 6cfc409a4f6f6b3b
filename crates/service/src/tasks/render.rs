//! Stored task -> TES task document, shaped by the requested view.

use tresor_api_types::tes::{TesState, TesTask, TesTaskLog, TesView};
use tresor_domain::TaskState;
use tresor_store::TaskRecord;

use crate::ServiceError;

/// The one mapping from our states to TES states.
pub fn tes_state(state: TaskState) -> TesState {
    match state {
        TaskState::Queued => TesState::Queued,
        TaskState::Initializing => TesState::Initializing,
        TaskState::Running => TesState::Running,
        TaskState::Complete => TesState::Complete,
        TaskState::ExecutorError => TesState::ExecutorError,
        TaskState::SystemError => TesState::SystemError,
        TaskState::Canceled => TesState::Canceled,
    }
}

/// The TES state a ListTasks filter names, as ours; `None` for TES states tresor never uses
/// (such a filter matches nothing).
pub fn task_state(state: TesState) -> Option<TaskState> {
    match state {
        TesState::Queued => Some(TaskState::Queued),
        TesState::Initializing => Some(TaskState::Initializing),
        TesState::Running => Some(TaskState::Running),
        TesState::Complete => Some(TaskState::Complete),
        TesState::ExecutorError => Some(TaskState::ExecutorError),
        TesState::SystemError => Some(TaskState::SystemError),
        TesState::Canceled => Some(TaskState::Canceled),
        TesState::Unknown | TesState::Paused | TesState::Preempted | TesState::Canceling => None,
    }
}

fn internal(what: &str, e: serde_json::Error) -> ServiceError {
    ServiceError::Internal(anyhow::anyhow!("stored {what} does not parse: {e}"))
}

/// The stored logs with the server's notes in front of the latest attempt's system logs.
pub fn task_logs(record: &TaskRecord) -> Result<Vec<TesTaskLog>, ServiceError> {
    let mut logs: Vec<TesTaskLog> = match &record.logs_json {
        Some(json) => serde_json::from_str(json).map_err(|e| internal("logs", e))?,
        None => Vec::new(),
    };
    if !record.notes.is_empty() {
        if logs.is_empty() {
            logs.push(TesTaskLog::default());
        }
        if let Some(last) = logs.last_mut() {
            let mut lines = record.notes.clone();
            lines.extend(last.system_logs.take().unwrap_or_default());
            last.system_logs = Some(lines);
        }
    }
    Ok(logs)
}

/// Renders a task as TES's MINIMAL, BASIC or FULL view defines it.
pub fn render(record: &TaskRecord, view: TesView) -> Result<TesTask, ServiceError> {
    let id = Some(record.id.to_string());
    let state = Some(tes_state(record.state));
    if view == TesView::Minimal {
        return Ok(TesTask {
            id,
            state,
            ..TesTask::default()
        });
    }
    let mut task = super::spec::to_tes(&record.spec);
    task.id = id;
    task.state = state;
    task.creation_time = Some(
        record
            .creation_time
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| ServiceError::Internal(e.into()))?,
    );
    let logs = task_logs(record)?;
    task.logs = (!logs.is_empty()).then_some(logs);
    if view == TesView::Basic {
        for input in task.inputs.iter_mut().flatten() {
            input.content = None;
        }
        for log in task.logs.iter_mut().flatten() {
            log.system_logs = None;
            for executor_log in &mut log.logs {
                executor_log.stdout = None;
                executor_log.stderr = None;
            }
        }
    }
    Ok(task)
}
