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
///
/// Server processes that share a work root (replicas on one host) also share the ids: each id a
/// task holds is claimed by a file `<work root>/.task-ids/<id>` naming the task, created
/// exclusively, so two processes never hand out the same id. A claim whose task has no directory
/// is stale (a task's directory exists before its claim and outlives it) and is taken.
#[derive(Debug)]
pub(crate) struct TaskIds {
    range: RangeInclusive<u32>,
    held: Mutex<BTreeMap<u32, TaskId>>,
    work_root: std::path::PathBuf,
}

/// Where the id claims live, in the work root.
const CLAIMS_DIR: &str = ".task-ids";

impl TaskIds {
    pub fn new(range: RangeInclusive<u32>, work_root: &std::path::Path) -> TaskIds {
        TaskIds {
            range,
            held: Mutex::new(BTreeMap::new()),
            work_root: work_root.to_owned(),
        }
    }

    /// Runs `f` on the claims directory under an exclusive lock that every process sharing the
    /// work root takes, so a stale claim is taken over (or a claim dropped) by one process at a
    /// time. `None` if the directory or its lock cannot be had.
    fn with_claims<T>(&self, f: impl FnOnce(&std::path::Path) -> T) -> Option<T> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.work_root.join(CLAIMS_DIR);
        std::fs::create_dir_all(&dir).ok()?;
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(".lock"))
            .ok()?;
        lock.lock().ok()?;
        Some(f(&dir))
    }

    /// Claims `id` for `task` across processes; false if a live task of any process holds it.
    fn claim(&self, id: u32, task: &TaskId) -> bool {
        self.with_claims(|dir| {
            let path = dir.join(id.to_string());
            let holder = std::fs::read_to_string(&path).ok();
            let free = match holder.as_deref() {
                None => true,
                Some(holder) if holder == task.as_str() => return true,
                // Stale: its task's directory is gone.
                Some(holder) => holder.is_empty() || !self.work_root.join(holder).exists(),
            };
            free && std::fs::write(&path, task.as_str()).is_ok()
        })
        .unwrap_or(false)
    }

    /// Drops the cross-process claim of `id`, if `task` holds it.
    fn unclaim(&self, id: u32, task: &TaskId) {
        self.with_claims(|dir| {
            let path = dir.join(id.to_string());
            if std::fs::read_to_string(&path).is_ok_and(|holder| holder == task.as_str()) {
                let _ = std::fs::remove_file(path);
            }
        });
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
        let id = self
            .range
            .clone()
            .filter(|id| !held.contains_key(id))
            .find(|id| self.claim(*id, task))?;
        held.insert(id, task.clone());
        Some(id)
    }

    /// Frees whatever `task` holds, and `recorded`, the id its task file names (a task another
    /// process started holds an id this one never handed out).
    pub fn release(&self, task: &TaskId, recorded: Option<u32>) {
        let mut held = self.held();
        let mut ids: Vec<u32> = held
            .iter()
            .filter(|(_, holder)| *holder == task)
            .map(|(id, _)| *id)
            .collect();
        ids.extend(recorded.filter(|id| !ids.contains(id)));
        for id in ids {
            self.unclaim(id, task);
            held.remove(&id);
        }
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
        let root = tempfile::tempdir().unwrap();
        let ids = TaskIds::new(100..=102, root.path());
        let task = |n: u32| TaskId::parse(&format!("task-{n}")).unwrap();
        ids.hold(101, task(0));
        assert_eq!(ids.acquire(&task(1)), Some(100));
        assert_eq!(ids.acquire(&task(1)), Some(100), "a task keeps its id");
        assert_eq!(ids.acquire(&task(2)), Some(102));
        assert_eq!(ids.acquire(&task(3)), None);
        ids.release(&task(0), None);
        assert_eq!(ids.acquire(&task(3)), Some(101));
        assert_eq!(ids.size(), 3);
    }

    #[test]
    fn processes_sharing_a_work_root_never_hand_out_the_same_id() {
        let root = tempfile::tempdir().unwrap();
        let task = |n: u32| {
            let id = TaskId::parse(&format!("task-{n}")).unwrap();
            std::fs::create_dir_all(root.path().join(id.as_str())).unwrap();
            id
        };
        let (a, b) = (
            TaskIds::new(100..=101, root.path()),
            TaskIds::new(100..=101, root.path()),
        );
        assert_eq!(a.acquire(&task(1)), Some(100));
        assert_eq!(
            b.acquire(&task(2)),
            Some(101),
            "the other process's id is taken"
        );
        assert_eq!(b.acquire(&task(3)), None);
        a.release(&task(1), None);
        assert_eq!(
            b.acquire(&task(3)),
            Some(100),
            "a released id is free again"
        );
        // A claim whose task has no directory is stale: its process died before starting it.
        std::fs::remove_dir(root.path().join("task-2")).unwrap();
        assert_eq!(a.acquire(&task(4)), Some(101));
    }
}
