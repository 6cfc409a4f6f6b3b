//! The bubblewrap command line for one executor: read-only host system directories, private
//! /proc, /dev and /tmp, the task's own directories read-write, every namespace unshared (the
//! network too unless allowed), and an environment holding only the executor's `env`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

/// How sandboxes are built; resolved once from the settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    /// Absolute path of the `bwrap` program.
    pub bwrap: PathBuf,
    /// The unprivileged host user and group that executors run as: a local task's own, from
    /// `local.task_uid_range` (set by `LocalExecutor::start`); `local.sandbox_uid`/`sandbox_gid`
    /// for SLURM tasks. `None` when the server itself is unprivileged: then it cannot switch
    /// users, and runs executors as itself.
    pub run_as: Option<(u32, u32)>,
}

/// Host directories shown read-only inside every sandbox (when present on the host).
const READ_ONLY_DIRS: &[&str] = &["/usr", "/etc", "/opt"];
/// Top-level entries that are symbolic links on merged-/usr systems and directories elsewhere.
const LINK_OR_DIRS: &[&str] = &["/bin", "/sbin", "/lib", "/lib32", "/lib64"];

/// Whether a host path (canonical) is visible inside every sandbox, so nothing private (the
/// data dir, keys) may live there.
pub fn visible_in_sandbox(path: &std::path::Path) -> Option<&'static str> {
    READ_ONLY_DIRS
        .iter()
        .chain(LINK_OR_DIRS)
        .find(|dir| path.starts_with(dir))
        .copied()
}

/// One executor's sandbox.
#[derive(Debug)]
pub struct SandboxSpec<'a> {
    pub settings: &'a SandboxSettings,
    /// The task's tree on the host; container path `/x/y` is `root/x/y`.
    pub root: &'a Path,
    /// Container directories bound read-write from `root`, parents before children.
    pub mounts: &'a [String],
    pub network: bool,
    pub workdir: &'a str,
    /// The executor's `env`; it reaches the command through `env_args`, not bubblewrap's environment.
    pub env: &'a BTreeMap<String, String>,
    pub command: &'a [String],
    /// Secret files: name, and the descriptor in the child that bubblewrap reads the value from.
    pub secret_fds: &'a [(String, i32)],
    /// Host directories shown read-only at a sandbox path (the identity token directory).
    pub ro_binds: &'a [(PathBuf, String)],
    /// The executor's image root, shown read-only as `/` instead of the host's system
    /// directories.
    pub image_root: Option<&'a Path>,
    /// Host directories bound read-write at their own path (a workflow run's directory).
    pub shared_dirs: &'a [PathBuf],
    /// The group executors run with instead of the user's own (a run's tasks share the
    /// workspace's group, and the worker's umask 007, to share the run's directory).
    pub group: Option<u32>,
    /// Descriptors through which bubblewrap reports its sandbox's process (`--info-fd`) and
    /// then waits before starting the command (`--block-fd`): the worker binds the egress
    /// proxy inside the sandbox's network namespace in between.
    pub hold: Option<(i32, i32)>,
}

/// Descriptors in bubblewrap for `SandboxSpec::hold`.
pub const INFO_FD: i32 = 7;
pub const BLOCK_FD: i32 = 8;

/// Where secret files appear inside the sandbox.
pub const SECRETS_DIR: &str = "/run/secrets";

/// The bubblewrap arguments before the command, shared by the worker and the benchmark baseline.
pub fn bwrap_args(spec: &SandboxSpec<'_>) -> Vec<String> {
    let mut args: Vec<String> = [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]
    .map(str::to_owned)
    .to_vec();
    if spec.network {
        args.push("--share-net".to_owned());
    }
    if let Some((info, block)) = spec.hold {
        args.extend([
            "--info-fd".to_owned(),
            info.to_string(),
            "--block-fd".to_owned(),
            block.to_string(),
        ]);
    }
    if let Some(image) = spec.image_root {
        // Every place bubblewrap mounts something of the task's own.
        let mut targets: Vec<&str> = spec.mounts.iter().map(String::as_str).collect();
        targets.extend(spec.ro_binds.iter().map(|(_, dest)| dest.as_str()));
        targets.extend(spec.shared_dirs.iter().filter_map(|dir| dir.to_str()));
        if !spec.secret_fds.is_empty() {
            targets.push(SECRETS_DIR);
        }
        image_root_args(&mut args, image, "", &targets);
    } else {
        host_system_args(&mut args);
    }
    args.extend(["--proc", "/proc", "--dev", "/dev"].map(str::to_owned));
    for mount in spec.mounts {
        let host = spec.root.join(mount.trim_start_matches('/'));
        args.extend([
            "--bind".to_owned(),
            host.to_string_lossy().into_owned(),
            mount.clone(),
        ]);
    }
    for dir in spec.shared_dirs {
        let dir = dir.to_string_lossy().into_owned();
        args.extend(["--bind".to_owned(), dir.clone(), dir]);
    }
    for (host, dest) in spec.ro_binds {
        args.extend([
            "--ro-bind".to_owned(),
            host.to_string_lossy().into_owned(),
            dest.clone(),
        ]);
    }
    if !spec.secret_fds.is_empty() {
        // A private tmpfs, readable only by the task's user, filled straight from pipes: the
        // values touch no disk and no argv, and the tmpfs dies with the sandbox.
        args.extend(["--perms", "0700", "--tmpfs", SECRETS_DIR].map(str::to_owned));
        for (name, fd) in spec.secret_fds {
            args.extend([
                "--perms".to_owned(),
                "0400".to_owned(),
                "--file".to_owned(),
                fd.to_string(),
                format!("{SECRETS_DIR}/{name}"),
            ]);
        }
    }
    // The sandbox's own root is a tmpfs made by bubblewrap; making it read-only leaves the
    // task's mounts (and /tmp among them) as the only writable places.
    args.extend(["--remount-ro", "/", "--chdir", spec.workdir].map(str::to_owned));
    args.push("--".to_owned());
    // bubblewrap sets PWD after --chdir, even over --unsetenv; env(1) removes it again so the
    // command sees exactly the executor's env. It also turns "no such program" into exit 127.
    // An image need not have env(1); there PWD is the working directory, as in other runtimes.
    if !spec.env.contains_key("PWD") && spec.image_root.is_none() {
        args.extend(["/usr/bin/env", "-u", "PWD", "--"].map(str::to_owned));
    }
    args.extend(spec.command.iter().cloned());
    args
}

/// The host's system directories, read-only.
fn host_system_args(args: &mut Vec<String>) {
    for dir in READ_ONLY_DIRS {
        if Path::new(dir).is_dir() {
            args.extend(["--ro-bind", dir, dir].map(str::to_owned));
        }
    }
    for entry in LINK_OR_DIRS {
        let path = Path::new(entry);
        if let Ok(target) = std::fs::read_link(path) {
            args.extend([
                "--symlink".to_owned(),
                target.to_string_lossy().into_owned(),
                (*entry).to_owned(),
            ]);
        } else if path.is_dir() {
            args.extend(["--ro-bind", entry, entry].map(str::to_owned));
        }
    }
}

/// Entries of an image root that the sandbox provides itself.
const SANDBOX_OWN: &[&str] = &["/proc", "/dev", "/sys"];

/// The image's directory `host` shown read-only at sandbox path `at` ("" for `/`), entry by
/// entry on bubblewrap's own root, so the task's mount points (`targets`) can be made beside
/// them: a directory that holds a target is made anew and descended into, an entry that is a
/// target is left to the task's mount. Symbolic links are recreated, never bound: bubblewrap
/// would resolve a bound one on the host, while a recreated one resolves inside the sandbox.
fn image_root_args(args: &mut Vec<String>, host: &Path, at: &str, targets: &[&str]) {
    let Ok(entries) = std::fs::read_dir(host) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{at}/{name}");
        if SANDBOX_OWN.contains(&path.as_str()) || targets.contains(&path.as_str()) {
            continue;
        }
        let below = format!("{path}/");
        let holds_target = targets.iter().any(|t| t.starts_with(&below));
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let source = entry.path().to_string_lossy().into_owned();
        if kind.is_symlink() {
            // A target below a link gets a real directory from bubblewrap instead.
            if let (false, Ok(target)) = (holds_target, std::fs::read_link(entry.path())) {
                args.extend([
                    "--symlink".to_owned(),
                    target.to_string_lossy().into_owned(),
                    path,
                ]);
            }
        } else if kind.is_dir() && holds_target {
            args.extend(["--dir".to_owned(), path.clone()]);
            image_root_args(args, &entry.path(), &path, targets);
        } else if kind.is_dir() || kind.is_file() {
            args.extend(["--ro-bind".to_owned(), source, path]);
        }
    }
}

/// Descriptor in bubblewrap from which it reads the `--setenv` arguments (see `env_args`).
pub const ENV_ARGS_FD: i32 = 9;

/// The executor's environment as bubblewrap arguments (`--setenv NAME VALUE`, NUL-separated),
/// to be written into the pipe bubblewrap reads with `--args`. That way bubblewrap itself runs
/// with an empty environment (a task cannot steer the host's loader with `LD_PRELOAD` and the
/// like), and no value appears in any process's argv.
pub fn env_args<'a>(vars: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in vars {
        // A NUL would end the argument early and make the rest bubblewrap options. Every
        // source refuses them before this; a variable that still holds one is left out.
        if name.as_bytes().contains(&0) || value.contains(&0) {
            continue;
        }
        for part in [b"--setenv".as_slice(), name.as_bytes(), value] {
            out.extend_from_slice(part);
            out.push(0);
        }
    }
    out
}

/// The process to spawn: bubblewrap with an empty environment, as the unprivileged user when the
/// server is root. With `env_from_fd`, it first reads `--setenv` arguments from `ENV_ARGS_FD`.
pub fn command(spec: &SandboxSpec<'_>, env_from_fd: bool) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&spec.settings.bwrap);
    if env_from_fd {
        cmd.args(["--args".to_owned(), ENV_ARGS_FD.to_string()]);
    }
    cmd.args(bwrap_args(spec))
        // bubblewrap's own process is PID 1 in the sandbox and its environment is readable
        // there through /proc/1/environ; it also runs on the host before any namespace exists.
        // It gets no environment at all; the command's comes from --setenv.
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some((uid, gid)) = spec.settings.run_as {
        // std drops supplementary groups (setgroups(0)) when root switches uid.
        cmd.uid(uid).gid(spec.group.unwrap_or(gid));
    }
    cmd
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_variable_holding_a_nul_never_becomes_bubblewrap_options() {
        let args = env_args([
            ("OK", b"fine".as_slice()),
            ("X", b"a\0--bind\0/\0/host".as_slice()),
            ("Y\0--share-net", b"v".as_slice()),
        ]);
        assert_eq!(args, b"--setenv\0OK\0fine\0");
    }

    #[test]
    fn an_image_root_is_bound_entry_by_entry_around_the_tasks_mounts() {
        let image = tempfile::tempdir().unwrap();
        let root = image.path();
        for dir in ["usr/lib", "etc", "run/lock", "proc", "tmp", "data"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        // A link to the host's /etc must stay a link, resolved inside the sandbox.
        std::os::unix::fs::symlink("/etc", root.join("hostetc")).unwrap();
        let mut args = Vec::new();
        image_root_args(&mut args, root, "", &["/tmp", "/data", "/run/secrets"]);
        let line = args.join(" ");
        let host = |p: &str| root.join(p).display().to_string();
        assert!(
            line.contains(&format!("--ro-bind {} /etc", host("etc"))),
            "{line}"
        );
        assert!(
            line.contains(&format!("--ro-bind {} /usr", host("usr"))),
            "{line}"
        );
        assert!(line.contains("--symlink usr/lib /lib"), "{line}");
        assert!(line.contains("--symlink /etc /hostetc"), "{line}");
        // /run holds a mount point: made anew, its entries bound one by one.
        assert!(line.contains("--dir /run"), "{line}");
        assert!(
            line.contains(&format!("--ro-bind {} /run/lock", host("run/lock"))),
            "{line}"
        );
        assert!(!line.contains(&format!("{} /run ", host("run"))), "{line}");
        // The task's own directories and the sandbox's /proc replace the image's.
        for own in ["/tmp", "/data", "/proc"] {
            assert!(
                !args.iter().any(|a| a == own),
                "{own} bound from the image: {line}"
            );
        }
    }
}
