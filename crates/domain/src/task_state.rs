//! The task state machine: which states exist and which moves between them are legal.

/// The life cycle of a task. It mirrors the TES states tresor uses; the mapping to the wire
/// lives in one function in `service`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Accepted and durable, waiting for a slot.
    Queued,
    /// A worker was started for it and is staging inputs.
    Initializing,
    /// The first executor has started.
    Running,
    /// Every executor succeeded (or its error was ignored) and outputs were delivered.
    Complete,
    /// An executor exited non-zero without `ignore_error`.
    ExecutorError,
    /// Something other than an executor failed: staging, delivery, the worker itself.
    SystemError,
    /// A caller canceled it and its processes are gone.
    Canceled,
}

impl TaskState {
    /// Every state, for exhaustive tests.
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Initializing,
        TaskState::Running,
        TaskState::Complete,
        TaskState::ExecutorError,
        TaskState::SystemError,
        TaskState::Canceled,
    ];

    /// States in which a worker may exist.
    pub const ACTIVE: [TaskState; 2] = [TaskState::Initializing, TaskState::Running];

    /// States from which a cancel is accepted.
    pub const CANCELABLE: [TaskState; 3] = [
        TaskState::Queued,
        TaskState::Initializing,
        TaskState::Running,
    ];

    /// The stable name stored in the database (the TES spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "QUEUED",
            TaskState::Initializing => "INITIALIZING",
            TaskState::Running => "RUNNING",
            TaskState::Complete => "COMPLETE",
            TaskState::ExecutorError => "EXECUTOR_ERROR",
            TaskState::SystemError => "SYSTEM_ERROR",
            TaskState::Canceled => "CANCELED",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// A terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Complete
                | TaskState::ExecutorError
                | TaskState::SystemError
                | TaskState::Canceled
        )
    }

    /// Whether `self -> next` is a legal move. Staying in place is not a transition.
    ///
    /// `Initializing -> Queued` exists for crash recovery: a claimed task whose worker provably
    /// never started is put back in the queue rather than failed.
    pub fn can_become(self, next: TaskState) -> bool {
        use TaskState::*;
        matches!(
            (self, next),
            (Queued, Initializing | Canceled | SystemError)
                | (
                    Initializing,
                    Queued | Running | SystemError | ExecutorError | Canceled | Complete
                )
                | (Running, Complete | ExecutorError | SystemError | Canceled)
        )
    }

    /// The states from which `next` can be reached, for conditional updates in the store.
    pub fn predecessors(next: TaskState) -> Vec<TaskState> {
        TaskState::ALL
            .into_iter()
            .filter(|from| from.can_become(next))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole transition table, one line per state: `from -> [reachable states]`.
    #[test]
    fn transition_table() {
        let table: Vec<String> = TaskState::ALL
            .into_iter()
            .map(|from| {
                let to: Vec<&str> = TaskState::ALL
                    .into_iter()
                    .filter(|to| from.can_become(*to))
                    .map(TaskState::as_str)
                    .collect();
                format!("{} -> [{}]", from.as_str(), to.join(", "))
            })
            .collect();
        assert_eq!(
            table,
            [
                "QUEUED -> [INITIALIZING, SYSTEM_ERROR, CANCELED]",
                "INITIALIZING -> [QUEUED, RUNNING, COMPLETE, EXECUTOR_ERROR, SYSTEM_ERROR, CANCELED]",
                "RUNNING -> [COMPLETE, EXECUTOR_ERROR, SYSTEM_ERROR, CANCELED]",
                "COMPLETE -> []",
                "EXECUTOR_ERROR -> []",
                "SYSTEM_ERROR -> []",
                "CANCELED -> []",
            ]
        );
    }

    #[test]
    fn terminal_states_have_no_way_out_and_names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(TaskState::parse(state.as_str()), Some(state));
            if state.is_terminal() {
                assert!(TaskState::ALL.iter().all(|next| !state.can_become(*next)));
            }
        }
    }
}
