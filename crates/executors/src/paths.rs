//! Paths inside a task: which are allowed, which directories get mounted, and how a container
//! path maps onto the task's tree on the host without ever following a symbolic link.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use tresor_domain::task::FileType;

use crate::WorkerTask;

/// Host directories the sandbox shows read-only; a task may not put its own paths inside them.
pub const SYSTEM_DIRS: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr",
];

/// Why a path inside a task is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("must be an absolute path")]
    NotAbsolute,
    #[error("must be normalized: no '.', '..', empty or trailing components")]
    NotNormal,
    #[error("must be inside a directory such as /data, not directly under /")]
    TopLevel,
    #[error("must not be inside the read-only system directory {0}")]
    SystemDir(&'static str),
    #[error("must not contain a NUL byte")]
    Nul,
    #[error("must not contain control characters such as newlines")]
    Control,
}

/// Checks a path inside the task's sandbox (an input, output, volume, workdir or stdio path).
/// A file must sit inside a directory; a directory may be top-level, like `/data`.
pub fn check_task_path(path: &str, is_dir: bool) -> Result<(), PathError> {
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path == "/" {
        return Err(PathError::TopLevel);
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(PathError::NotNormal);
    }
    if parts.len() < 2 && !is_dir {
        return Err(PathError::TopLevel);
    }
    for dir in SYSTEM_DIRS.iter().chain([&crate::sandbox::SECRETS_DIR]) {
        if path == *dir || path.starts_with(&format!("{dir}/")) {
            return Err(PathError::SystemDir(dir));
        }
    }
    Ok(())
}

/// Whether a path uses POSIX pattern characters (IEEE 1003.1-2017 §2.13).
pub fn has_wildcard(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

fn parent(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => path[..i].to_owned(),
    }
}

/// The directory above the first component that holds a pattern character.
pub fn wildcard_base(path: &str) -> String {
    let mut base = String::new();
    // By component, never by byte offset: the path is not validated yet and may start with
    // anything, a multi-byte character included.
    for part in path.strip_prefix('/').unwrap_or(path).split('/') {
        if has_wildcard(part) {
            break;
        }
        base.push('/');
        base.push_str(part);
    }
    if base.is_empty() {
        "/".to_owned()
    } else {
        base
    }
}

/// Every directory the task needs on the host, and the minimal set of them to bind into the
/// sandbox (those with no ancestor in the set), both sorted so parents come first.
pub fn task_dirs(task: &WorkerTask) -> (Vec<String>, Vec<String>) {
    let mut dirs = BTreeSet::from(["/tmp".to_owned()]);
    for input in &task.inputs {
        match input.file_type.unwrap_or_default() {
            FileType::File => dirs.insert(parent(&input.path)),
            FileType::Directory => dirs.insert(input.path.clone()),
        };
    }
    for output in &task.outputs {
        if has_wildcard(&output.path) {
            dirs.insert(wildcard_base(&output.path));
        } else {
            match output.file_type.unwrap_or_default() {
                FileType::File => dirs.insert(parent(&output.path)),
                FileType::Directory => dirs.insert(output.path.clone()),
            };
        }
    }
    dirs.extend(task.volumes.iter().cloned());
    for executor in &task.executors {
        dirs.extend(executor.workdir.iter().cloned());
        for stdio in [&executor.stdin, &executor.stdout, &executor.stderr]
            .into_iter()
            .flatten()
        {
            dirs.insert(parent(stdio));
        }
    }
    dirs.remove("/");
    // A workflow run's directory is bound over its own path; nothing of the task tree goes
    // inside it.
    if let Some(run) = task.run.as_ref().and_then(|run| run.dir.to_str()) {
        dirs.retain(|d| d != run && !d.starts_with(&format!("{run}/")));
    }
    let all: Vec<String> = dirs.iter().cloned().collect();
    let mounts = all
        .iter()
        .filter(|d| {
            !all.iter()
                .any(|other| other != *d && d.starts_with(&format!("{other}/")))
        })
        .cloned()
        .collect();
    (all, mounts)
}

/// Why a container path cannot be used on the host.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{path} goes through a symbolic link; refusing to follow it")]
    Symlink { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Maps a container path to its place under `root` on the host, refusing any existing component
/// that is a symbolic link. Components that do not exist yet are allowed (for files about to be
/// created). Only call this while no sandboxed process runs, so nothing can change the tree.
pub fn resolve_in_root(root: &Path, container_path: &str) -> Result<PathBuf, ResolveError> {
    let mut host = root.to_path_buf();
    for component in Path::new(container_path).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => {
                host.push(part);
                match std::fs::symlink_metadata(&host) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        return Err(ResolveError::Symlink {
                            path: container_path.to_owned(),
                        });
                    }
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                        ) => {}
                    Err(source) => {
                        return Err(ResolveError::Io {
                            path: container_path.to_owned(),
                            source,
                        });
                    }
                }
            }
            // check_task_path rejected these before the task was accepted.
            _ => {
                return Err(ResolveError::Io {
                    path: container_path.to_owned(),
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                });
            }
        }
    }
    Ok(host)
}

/// Container paths under `root` that match a POSIX pattern, sorted. Walks only real directories
/// (never through a symbolic link); a leading '.' must be matched explicitly, as in the shell.
pub fn expand_wildcard(root: &Path, pattern: &str) -> Result<Vec<String>, ResolveError> {
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut current = vec![String::new()];
    for part in pattern[1..].split('/') {
        let mut next = Vec::new();
        for prefix in &current {
            if !has_wildcard(part) {
                next.push(format!("{prefix}/{part}"));
                continue;
            }
            let Ok(matcher) = glob::Pattern::new(part) else {
                continue;
            };
            let dir = resolve_in_root(root, if prefix.is_empty() { "/" } else { prefix })?;
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if matcher.matches_with(name, options) {
                    next.push(format!("{prefix}/{name}"));
                }
            }
        }
        current = next;
    }
    let mut found = Vec::new();
    for candidate in current {
        let host = resolve_in_root(root, &candidate)?;
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ResolveError::Symlink { path: candidate });
            }
            Ok(_) => found.push(candidate),
            Err(_) => {}
        }
    }
    found.sort();
    Ok(found)
}

/// Whether `path` lies inside one of `allowed` (all absolute, compared component-wise).
pub fn is_within(path: &Path, allowed: &[PathBuf]) -> bool {
    allowed.iter().any(|dir| path.starts_with(dir))
}

/// The tasks with a directory in `dir` (a work root): every entry named like a task id. The
/// executors' own entries (`.task-ids`, `.disk-templates`) are not task ids.
pub fn task_dirs_in(dir: &Path) -> Vec<tresor_domain::TaskId> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| tresor_domain::TaskId::parse(n).ok())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_path_rules() {
        let file = |p| check_task_path(p, false);
        assert_eq!(file("/data/in.txt"), Ok(()));
        assert_eq!(file("data/in.txt"), Err(PathError::NotAbsolute));
        assert_eq!(file("/data/../etc"), Err(PathError::NotNormal));
        assert_eq!(file("/data//x"), Err(PathError::NotNormal));
        assert_eq!(file("/data/"), Err(PathError::NotNormal));
        assert_eq!(file("/in.txt"), Err(PathError::TopLevel));
        assert_eq!(file("/usr/local/x"), Err(PathError::SystemDir("/usr")));
        assert_eq!(file("/proc/self/x"), Err(PathError::SystemDir("/proc")));
        assert_eq!(file("/usrx/y"), Ok(()));
        assert_eq!(check_task_path("/data", true), Ok(()));
        assert_eq!(check_task_path("/", true), Err(PathError::TopLevel));
        assert_eq!(
            check_task_path("/etc", true),
            Err(PathError::SystemDir("/etc"))
        );
    }

    #[test]
    fn wildcard_base_stops_at_first_pattern() {
        assert_eq!(wildcard_base("/out/a/*.txt"), "/out/a");
        assert_eq!(wildcard_base("/out/*/x.txt"), "/out");
        // Unvalidated input never panics: a multi-byte first character, no leading slash.
        assert_eq!(wildcard_base("é*"), "/");
        assert_eq!(wildcard_base("éa/b*"), "/éa");
        assert!(has_wildcard("/out/file[0-9]"));
        assert!(!has_wildcard("/out/file"));
    }

    #[test]
    fn symlinks_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("data/link")).unwrap();
        assert!(resolve_in_root(root, "/data/new.txt").is_ok());
        assert!(matches!(
            resolve_in_root(root, "/data/link/passwd"),
            Err(ResolveError::Symlink { .. })
        ));
    }

    #[test]
    fn wildcards_match_like_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("out/sub")).unwrap();
        for f in [
            "out/a.txt",
            "out/b.txt",
            "out/.hidden.txt",
            "out/c.log",
            "out/sub/d.txt",
        ] {
            std::fs::write(root.join(f), "x").unwrap();
        }
        assert_eq!(
            expand_wildcard(root, "/out/*.txt").unwrap(),
            ["/out/a.txt", "/out/b.txt"]
        );
        assert_eq!(
            expand_wildcard(root, "/out/*/d.txt").unwrap(),
            ["/out/sub/d.txt"]
        );
        assert_eq!(expand_wildcard(root, "/out/[ab].txt").unwrap().len(), 2);
        assert!(expand_wildcard(root, "/nope/*").unwrap().is_empty());
    }
}
