//! A run's directory in its workspace's `file://` storage: `<workspace dir>/runs/<run id>/`.
//!
//! The server writes the workflow's files there as root, in a directory tree that the
//! workspace's tasks can write to (they share the workspace's group). So every step goes
//! through directory descriptors opened without following links, and `runs/` and the run's own
//! directory must be the server's: a task that renamed them away and put a link or a directory
//! of its own in their place gets a refusal, never a write or a read somewhere else.
//!
//! Layout: `runs/` (0750, the server's and the workspace group's: tasks see into it but cannot
//! rename what is in it), `runs/<id>/` (2770: the run's shared directory), `runs/<id>/.tresor/`
//! (2750: the engine's adapters, which tasks read but cannot change), `runs/<id>/.tresor-params.json`.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// Where the adapters go, inside the run's directory.
pub(crate) const CONTROL_DIR: &str = ".tresor";
/// The run's `workflow_params`, at the top of its directory (as WES servers put it), so that
/// relative paths in it name the attached files.
pub(crate) const PARAMS_FILE: &str = ".tresor-params.json";

/// An open run directory.
pub(crate) struct RunDir {
    fd: OwnedFd,
    pub path: PathBuf,
    group: Option<u32>,
}

fn io(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from(e)
}

fn open_dir_at(parent: &OwnedFd, name: &str) -> std::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)
}

/// Opens `name` in `parent` as a directory of the server's own, making it first if `create`.
fn own_dir_at(
    parent: &OwnedFd,
    name: &str,
    create: Option<(u32, Option<u32>)>,
) -> std::io::Result<OwnedFd> {
    if let Some((mode, group)) = create {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                let fd = open_dir_at(parent, name)?;
                let file = std::fs::File::from(fd);
                std::os::unix::fs::fchown(&file, None, group)?;
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                return Ok(OwnedFd::from(file));
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(e)),
        }
    }
    let fd = open_dir_at(parent, name)?;
    let owner = rustix::fs::fstat(&fd).map_err(io)?.st_uid;
    if owner != rustix::process::geteuid().as_raw() {
        return Err(std::io::Error::other(format!(
            "{name} is not the server's (uid {owner} owns it); move it away"
        )));
    }
    Ok(fd)
}

impl RunDir {
    /// Makes `<workspace dir>/runs/<id>/` and its control directory.
    pub(crate) fn create(
        workspace_dir: &Path,
        id: &str,
        group: Option<u32>,
    ) -> std::io::Result<RunDir> {
        let root = rustix::fs::open(
            workspace_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        let runs = own_dir_at(&root, "runs", Some((0o750, group)))?;
        // A new id: it must not exist yet.
        rustix::fs::mkdirat(&runs, id, Mode::from_raw_mode(0o700)).map_err(io)?;
        let fd = own_dir_at(&runs, id, None)?;
        let file = std::fs::File::from(fd);
        std::os::unix::fs::fchown(&file, None, group)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o2770))?;
        let dir = RunDir {
            fd: OwnedFd::from(file),
            path: workspace_dir.join("runs").join(id),
            group,
        };
        dir.make_dirs(CONTROL_DIR, 0o2750)?;
        Ok(dir)
    }

    /// Opens an existing run's directory, refusing one that is not the server's.
    pub(crate) fn open(workspace_dir: &Path, id: &str) -> std::io::Result<RunDir> {
        let root = rustix::fs::open(
            workspace_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        let runs = own_dir_at(&root, "runs", None)?;
        let fd = own_dir_at(&runs, id, None)?;
        Ok(RunDir {
            fd,
            path: workspace_dir.join("runs").join(id),
            group: None,
        })
    }

    /// Makes the directories of a relative path (already checked: no `..`, no empty part),
    /// each with `mode`, and returns the last one.
    fn make_dirs(&self, relative: &str, mode: u32) -> std::io::Result<OwnedFd> {
        let mut dir = self.fd.try_clone()?;
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            dir = own_dir_at(&dir, part, Some((mode, self.group)))?;
        }
        Ok(dir)
    }

    /// Writes a new file at a relative path (checked by the caller), with its directories.
    pub(crate) fn write(&self, relative: &str, content: &[u8], mode: u32) -> std::io::Result<()> {
        let (parent, name) = match relative.rsplit_once('/') {
            Some((parent, name)) => (self.make_dirs(parent, 0o2770)?, name),
            None => (self.fd.try_clone()?, relative),
        };
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(content)?;
        std::os::unix::fs::fchown(&file, None, self.group)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Reads a regular file directly in the run's directory, if it is there and at most `max`
    /// bytes long; a link, a directory or a larger file is `None`.
    pub(crate) fn read_small(&self, name: &str, max: u64) -> Option<Vec<u8>> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let stat = rustix::fs::fstat(&fd).ok()?;
        if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile
            || u64::try_from(stat.st_size).unwrap_or(u64::MAX) > max
        {
            return None;
        }
        let mut out = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::from(fd), max),
            &mut out,
        )
        .ok()?;
        Some(out)
    }
}

/// Whether an attachment's path is one the run directory can hold: relative, made of plain
/// names (no `.`, `..` or empty part), not in the control directory, at most 255 bytes.
pub(crate) fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 255 {
        return Err("must be 1 to 255 bytes long".to_owned());
    }
    if path.starts_with('/') {
        return Err("must be relative (no leading /)".to_owned());
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err("may not contain empty, . or .. parts".to_owned());
        }
        if part.contains('\0') || part.contains('\\') {
            return Err("may not contain NUL or backslash".to_owned());
        }
    }
    if path.starts_with(CONTROL_DIR) {
        return Err(format!("names starting with {CONTROL_DIR} are tresor's"));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn attachment_paths_stay_inside_the_run() {
        for good in ["wf.cwl", "tools/md5.cwl", "a b/c.txt"] {
            assert!(check_relative(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            ".tresor/x",
            ".tresor-params.json",
            "a\\b",
        ] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_run_directory_replaced_by_a_link_is_refused() {
        let ws = tempfile::tempdir().unwrap();
        let dir = RunDir::create(ws.path(), "r1", None).unwrap();
        dir.write("sub/wf.cwl", b"x", 0o640).unwrap();
        assert_eq!(
            std::fs::read(ws.path().join("runs/r1/sub/wf.cwl")).unwrap(),
            b"x"
        );
        // A second write of the same file is refused, never appended or truncated.
        assert!(dir.write("sub/wf.cwl", b"y", 0o640).is_err());
        // A link planted where a file is read is not followed.
        let secret = ws.path().join("secret");
        std::fs::write(&secret, b"do not read").unwrap();
        std::os::unix::fs::symlink(&secret, ws.path().join("runs/r1/outputs.json")).unwrap();
        assert!(dir.read_small("outputs.json", 1024).is_none());
        // `runs/` swapped for a link elsewhere: refused.
        std::fs::rename(ws.path().join("runs"), ws.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(ws.path().join("moved"), ws.path().join("runs")).unwrap();
        assert!(RunDir::open(ws.path(), "r1").is_err());
        assert!(RunDir::create(ws.path(), "r2", None).is_err());
    }
}
