//! Host users of tasks: the range of ids from which each running local task gets a uid (and the
//! gid of the same number) of its own, which task holds which, and file work done with a task
//! user's rights instead of root's.

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

/// The host identity a task's file copies run with: the task's user and group, and its
/// workspace's group (that of the workspace's `file://` directory), if any, as the only
/// supplementary group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileUser {
    pub uid: u32,
    pub gid: u32,
    pub group: Option<u32>,
}

/// Runs `work` on a thread of its own that first becomes `user` for good: its supplementary
/// groups, then its gid, then its uid (real, effective and saved) are set with the raw system
/// calls, which on Linux change the calling thread only (the C library's wrappers would change
/// every thread of the worker). With no uid 0 left, the kernel also clears the thread's
/// capabilities, so every file access of `work` is checked against the task's rights, not
/// root's. The thread ends with `work`: nothing else ever runs with that identity, and the
/// worker's other threads keep theirs.
pub(crate) async fn run_as<T: Send + 'static>(
    user: FileUser,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tresor-task-files".to_owned())
        .spawn(move || {
            let _ = done.send(take_on(user).map(|()| work()));
        })
        .map_err(|e| format!("starting a thread for the task's files: {e}"))?;
    result
        .await
        .map_err(|_| "the thread for the task's files ended without an answer".to_owned())?
}

/// Makes the calling thread `user`, for good.
fn take_on(user: FileUser) -> Result<(), String> {
    use rustix::thread::{Gid, Uid, set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    let failed = |what: &str, e: rustix::io::Errno| {
        format!("taking on the task's {what} for copying its files: {e}")
    };
    let groups: Vec<Gid> = user.group.into_iter().map(Gid::from_raw).collect();
    set_thread_groups(&groups).map_err(|e| failed("groups", e))?;
    let gid = Gid::from_raw(user.gid);
    set_thread_res_gid(gid, gid, gid).map_err(|e| failed("group", e))?;
    let uid = Uid::from_raw(user.uid);
    set_thread_res_uid(uid, uid, uid).map_err(|e| failed("user", e))?;
    Ok(())
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
