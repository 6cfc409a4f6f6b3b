//! A run's directory: `<first allowed dir>/.tresor-runs/<workspace>/<run id>/`.
//!
//! It lies outside every workspace's `file://` directory on purpose. A workspace's directory is
//! writable by all of its members' tasks, which could rename a run's directory away or write
//! into it (a `file://` output) and so run their code as another member's engine, with that
//! member's secrets. Here only the run's own tasks, which get it bound into their sandbox, can
//! write: `.tresor-runs/` is the server's (0711), `<workspace>/` the server's and the workspace
//! group's to enter (0750), and the run's directory the workspace group's to write (2770). No
//! `file://` URL reaches it, since it is in no workspace's directory.
//!
//! The server writes the workflow's files there as root, through directory descriptors opened
//! without following links, each checked to be the server's.
//!
//! Inside: the attached files, `.tresor/` (2750: the engine's adapters, which tasks read but
//! cannot change), `.tresor-params.json`, and what the run writes (`outputs.json` is read back).

use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// The runs' area in the first allowed dir (workspace ids hold no dot, so no workspace's
/// directory can have this name).
pub(crate) const AREA: &str = ".tresor-runs";

/// A path's parent and last part, as text.
fn split(path: &Path) -> std::io::Result<(&Path, &str)> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(std::io::Error::other(format!(
            "{} is not a run directory",
            path.display()
        ))),
    }
}

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

/// The allowed dir the runs' area is in: the operator's, opened as it is.
fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)
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

/// Makes `name` in `parent`, which must not exist yet, with `mode` and `group`.
fn new_dir_at(
    parent: &OwnedFd,
    name: &str,
    mode: u32,
    group: Option<u32>,
) -> std::io::Result<OwnedFd> {
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)).map_err(io)?;
    let file = std::fs::File::from(open_dir_at(parent, name)?);
    std::os::unix::fs::fchown(&file, None, group)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(OwnedFd::from(file))
}

/// Opens `name` in `parent` as a directory of the server's own, making it first if `create`.
fn own_dir_at(
    parent: &OwnedFd,
    name: &str,
    create: Option<(u32, Option<u32>)>,
) -> std::io::Result<OwnedFd> {
    if let Some((mode, group)) = create {
        match new_dir_at(parent, name, mode, group) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
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
    /// Makes `<area>/<workspace>/<id>/` and its control directory; `area` is
    /// `<first allowed dir>/.tresor-runs` (see `AREA`).
    pub(crate) fn create(
        area: &Path,
        workspace: &str,
        id: &str,
        group: Option<u32>,
    ) -> std::io::Result<RunDir> {
        let (parent, name) = split(area)?;
        let top = open_dir(parent)?;
        let area_fd = own_dir_at(&top, name, Some((0o711, None)))?;
        let workspace_fd = own_dir_at(&area_fd, workspace, Some((0o750, group)))?;
        // A new id: it must not exist yet.
        let dir = RunDir {
            fd: new_dir_at(&workspace_fd, id, 0o2770, group)?,
            path: area.join(workspace).join(id),
            group,
        };
        dir.make_dirs(CONTROL_DIR, 0o2750)?;
        Ok(dir)
    }

    /// Opens an existing run's directory (`<area>/<workspace>/<id>`), refusing one whose
    /// directories are not the server's.
    pub(crate) fn open(dir: &Path) -> std::io::Result<RunDir> {
        let (workspace_path, id) = split(dir)?;
        let (area, workspace) = split(workspace_path)?;
        let (parent, name) = split(area)?;
        let top = open_dir(parent)?;
        let area_fd = own_dir_at(&top, name, None)?;
        let workspace_fd = own_dir_at(&area_fd, workspace, None)?;
        let fd = own_dir_at(&workspace_fd, id, None)?;
        Ok(RunDir {
            fd,
            path: dir.to_owned(),
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
        self.write_from(relative, &mut &content[..], mode, 0o2770)
    }

    /// Writes what `from` reads into a new file at a relative path, making its directories
    /// with `dir_mode`: never through a link, never over an existing file.
    fn write_from(
        &self,
        relative: &str,
        from: &mut impl std::io::Read,
        mode: u32,
        dir_mode: u32,
    ) -> std::io::Result<()> {
        let (parent, name) = match relative.rsplit_once('/') {
            Some((parent, name)) => (self.make_dirs(parent, dir_mode)?, name),
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
        std::io::copy(from, &mut file)?;
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

/// The most entries a run's published outputs may hold.
const MAX_PUBLISHED: usize = 100_000;

/// Copies a finished run's `outputs/` into `<workspace dir>/runs/<id>/`, read-only for the
/// workspace (2750 directories, 0640 files, root's with the workspace's group), so later tasks
/// read them through `file://` and nobody changes what the run produced. Only directories and
/// regular files are copied; links and the rest are skipped. `runs/` must be the server's: one
/// a member made or put there is refused, never written through. Returns the destination, or
/// `None` when the run has no `outputs/`.
pub(crate) fn publish(
    run_dir: &Path,
    workspace_dir: &Path,
    id: &str,
    group: Option<u32>,
) -> std::io::Result<Option<PathBuf>> {
    let run = RunDir::open(run_dir)?;
    let Ok(source) = open_dir_at(&run.fd, "outputs") else {
        return Ok(None);
    };
    let workspace = open_dir(workspace_dir)?;
    let runs = own_dir_at(&workspace, "runs", Some((0o2750, group)))?;
    let dest = RunDir {
        fd: new_dir_at(&runs, id, 0o2750, group)?,
        path: workspace_dir.join("runs").join(id),
        group,
    };
    let mut copied = 0usize;
    copy_tree(&source, &dest, "", 0, &mut copied)?;
    Ok(Some(dest.path))
}

fn copy_tree(
    source: &OwnedFd,
    dest: &RunDir,
    prefix: &str,
    depth: usize,
    copied: &mut usize,
) -> std::io::Result<()> {
    if depth > 32 {
        return Err(std::io::Error::other(
            "outputs nest deeper than 32 directories",
        ));
    }
    let entries = rustix::fs::Dir::read_from(source).map_err(io)?;
    for entry in entries {
        let entry = entry.map_err(io)?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name == "." || name == ".." {
            continue;
        }
        *copied += 1;
        if *copied > MAX_PUBLISHED {
            return Err(std::io::Error::other(format!(
                "outputs hold more than {MAX_PUBLISHED} entries"
            )));
        }
        let relative = format!("{prefix}{name}");
        let stat =
            rustix::fs::statat(source, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
        match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
            rustix::fs::FileType::Directory => {
                let inner = open_dir_at(source, name)?;
                let made = dest.make_dirs(&relative, 0o2750)?;
                drop(made);
                copy_tree(&inner, dest, &format!("{relative}/"), depth + 1, copied)?;
            }
            rustix::fs::FileType::RegularFile => {
                let fd = rustix::fs::openat(
                    source,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io)?;
                let mut from = std::fs::File::from(fd);
                dest.write_from(&relative, &mut from, 0o640, 0o2750)?;
            }
            _ => {}
        }
    }
    Ok(())
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
    fn published_outputs_are_copied_without_their_links_and_never_through_someone_elses_runs() {
        let allowed = tempfile::tempdir().unwrap();
        let area = allowed.path().join(AREA);
        let dir = RunDir::create(&area, "ws", "r1", None).unwrap();
        dir.write("outputs/sub/a.txt", b"result", 0o640).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", area.join("ws/r1/outputs/link")).unwrap();
        let workspace = allowed.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        let to = publish(&area.join("ws/r1"), &workspace, "r1", None)
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read(to.join("sub/a.txt")).unwrap(), b"result");
        assert!(std::fs::symlink_metadata(to.join("link")).is_err());
        // Once only.
        assert!(publish(&area.join("ws/r1"), &workspace, "r1", None).is_err());
        // A `runs/` someone else made is not written through.
        if rustix::process::geteuid().is_root() {
            let other = allowed.path().join("other");
            std::fs::create_dir_all(other.join("runs")).unwrap();
            std::os::unix::fs::chown(other.join("runs"), Some(12345), None).unwrap();
            assert!(publish(&area.join("ws/r1"), &other, "r1", None).is_err());
            assert!(!other.join("runs/r1").exists());
        }
    }

    #[test]
    fn a_run_directory_replaced_by_a_link_is_refused() {
        let allowed = tempfile::tempdir().unwrap();
        let area = allowed.path().join(AREA);
        let dir = RunDir::create(&area, "ws", "r1", None).unwrap();
        dir.write("sub/wf.cwl", b"x", 0o640).unwrap();
        assert_eq!(std::fs::read(area.join("ws/r1/sub/wf.cwl")).unwrap(), b"x");
        // A second write of the same file is refused, never appended or truncated.
        assert!(dir.write("sub/wf.cwl", b"y", 0o640).is_err());
        // A link planted where a file is read is not followed.
        let secret = allowed.path().join("secret");
        std::fs::write(&secret, b"do not read").unwrap();
        std::os::unix::fs::symlink(&secret, area.join("ws/r1/outputs.json")).unwrap();
        let opened = RunDir::open(&area.join("ws/r1")).unwrap();
        assert!(opened.read_small("outputs.json", 1024).is_none());
        // The workspace's part swapped for a link elsewhere: refused.
        std::fs::rename(area.join("ws"), allowed.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(allowed.path().join("moved"), area.join("ws")).unwrap();
        assert!(RunDir::open(&area.join("ws/r1")).is_err());
        assert!(RunDir::create(&area, "ws", "r2", None).is_err());
    }
}
