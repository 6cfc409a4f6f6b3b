//! Host users of tasks: the range of ids from which each running local task gets a uid (and the
//! gid of the same number) of its own, and which task holds which.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tresor_domain::TaskId;

/// Which task holds which id of the range. An id is held from the task's start until its
/// directory is removed (after its worker has exited), and a restarted server rebuilds the map
/// from the task directories, so two running tasks never share an id.
#[derive(Debug)]
pub(crate) struct TaskIds {
    range: RangeInclusive<u32>,
    held: Mutex<BTreeMap<u32, TaskId>>,
}

impl TaskIds {
    pub fn new(range: RangeInclusive<u32>) -> TaskIds {
        TaskIds {
            range,
            held: Mutex::new(BTreeMap::new()),
        }
    }

    fn held(&self) -> MutexGuard<'_, BTreeMap<u32, TaskId>> {
        // The map is consistent after every statement, so a panic elsewhere cannot break it.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `task` holds `id`, as its task directory says after a restart.
    pub fn hold(&self, id: u32, task: TaskId) {
        self.held().insert(id, task);
    }

    /// The id `task` already holds, or else the lowest free one, now held by it; `None` when
    /// every id of the range is held.
    pub fn acquire(&self, task: &TaskId) -> Option<u32> {
        let mut held = self.held();
        if let Some((&id, _)) = held.iter().find(|(_, holder)| *holder == task) {
            return Some(id);
        }
        let id = self.range.clone().find(|id| !held.contains_key(id))?;
        held.insert(id, task.clone());
        Some(id)
    }

    /// Frees whatever `task` holds.
    pub fn release(&self, task: &TaskId) {
        self.held().retain(|_, holder| *holder != *task);
    }

    /// How many ids the range has.
    pub fn size(&self) -> u64 {
        u64::from(*self.range.end()) - u64::from(*self.range.start()) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_task_gets_its_own_id_until_it_releases_it() {
        let ids = TaskIds::new(100..=102);
        let task = |n: u32| TaskId::parse(&format!("task-{n}")).unwrap();
        ids.hold(101, task(0));
        assert_eq!(ids.acquire(&task(1)), Some(100));
        assert_eq!(ids.acquire(&task(1)), Some(100), "a task keeps its id");
        assert_eq!(ids.acquire(&task(2)), Some(102));
        assert_eq!(ids.acquire(&task(3)), None);
        ids.release(&task(0));
        assert_eq!(ids.acquire(&task(3)), Some(101));
        assert_eq!(ids.size(), 3);
    }
}
