//! Object storage through presigned URLs. The server alone holds the S3 credentials; a task's
//! worker gets, when the task starts, one URL per object and method, valid for minutes, and only
//! for the objects its task declared, inside its workspace's bucket and prefix.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use serde::{Deserialize, Serialize};
use tresor_crypto::SecretValue;
use tresor_domain::TaskSpec;
use tresor_domain::{Principal, WorkspaceId};
use tresor_store::Store;

use crate::ServiceError;

pub use object_store::signer::Method;

/// How the server reaches S3 (or an S3-compatible server).
pub struct S3Settings {
    /// `http(s)://host:port` of an S3-compatible server; `None` is AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: SecretValue,
    /// Whether a plain-http endpoint is allowed (a server on loopback, in tests).
    pub allow_http: bool,
    /// The bucket of workspaces that an administrator gave no location of their own.
    pub default_bucket: Option<String>,
    /// Their prefix in it; `{workspace}` is replaced by the workspace id.
    pub prefix_template: String,
    /// How long each presigned URL is valid.
    pub presign_ttl: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .finish_non_exhaustive()
    }
}

/// A workspace's place in object storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub bucket: String,
    /// Ends with `/` (or is empty: the whole bucket).
    pub prefix: String,
}

impl Location {
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// Whether an object key in a bucket lies inside this location.
    pub fn contains(&self, bucket: &str, key: &str) -> bool {
        bucket == self.bucket && key.starts_with(&self.prefix)
    }

    fn overlaps(&self, other: &Location) -> bool {
        self.bucket == other.bucket
            && (self.prefix.starts_with(&other.prefix) || other.prefix.starts_with(&self.prefix))
    }
}

/// A workspace's directory for `file://` storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRoot {
    pub dir: PathBuf,
    /// Given by an administrator, rather than the default `<first allowed dir>/<workspace>`.
    pub assigned: bool,
}

/// One input the worker downloads: where it goes in the task, and a presigned GET.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresignedInput {
    pub path: String,
    pub url: String,
}

/// `s3://bucket/key` → (bucket, key); the key may be empty.
pub fn parse_s3(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then_some((bucket, key))
}

/// Syntax of an `s3://` URL in a task document.
pub(crate) fn check_s3_url(field: &str, url: &str) -> Result<(), ServiceError> {
    let bad = |why: &str| ServiceError::invalid(field, format!("{url:?} {why}"));
    let (_, key) = parse_s3(url).ok_or_else(|| bad("has no bucket; write s3://bucket/key"))?;
    let key = key.trim_end_matches('/');
    if key.is_empty() {
        return Err(bad("names no object; write s3://bucket/key"));
    }
    if key
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(bad("has an empty, '.' or '..' segment in its key"));
    }
    Ok(())
}

fn join_key(prefix: &str, relative: &str) -> String {
    format!(
        "{}/{}",
        prefix.trim_end_matches('/'),
        relative.trim_start_matches('/')
    )
}

/// Storage locations and presigning; cheap to clone.
#[derive(Clone, Debug)]
pub struct StorageService {
    store: Store,
    s3: Option<Arc<S3Settings>>,
    /// The host directories `file://` storage may use (canonical). The first holds each
    /// workspace's default directory, `<first>/<workspace>`; the others hold only directories an
    /// administrator gives a workspace.
    file_dirs: Arc<Vec<PathBuf>>,
    clients: Arc<Mutex<HashMap<String, Arc<AmazonS3>>>>,
    /// Held while a workspace's directory is prepared, so two tasks starting together do not
    /// both make it; the store's UNIQUE `gid` is what keeps two workspaces from one group.
    groups: Arc<tokio::sync::Mutex<()>>,
}

/// The `(field, url)` of every input and output URL of a task with this scheme prefix.
fn task_urls<'a>(spec: &'a TaskSpec, scheme: &str) -> Vec<(String, &'a str)> {
    spec.inputs
        .iter()
        .enumerate()
        .filter_map(|(i, input)| {
            input
                .url
                .as_deref()
                .filter(|u| u.starts_with(scheme))
                .map(|u| (format!("inputs[{i}].url"), u))
        })
        .chain(
            spec.outputs
                .iter()
                .enumerate()
                .filter(|(_, o)| o.url.starts_with(scheme))
                .map(|(i, o)| (format!("outputs[{i}].url"), o.url.as_str())),
        )
        .collect()
}

/// The host path of a `file://` URL, if it is absolute and has no `.` or `..` segment (after
/// percent-decoding, which could otherwise make one).
pub fn file_url_path(url: &str) -> Option<PathBuf> {
    url::Url::parse(url)
        .ok()
        .filter(|u| u.scheme() == "file")
        .and_then(|u| u.to_file_path().ok())
        .filter(|p| is_plain(p))
}

/// Absolute, and made of normal components only.
fn is_plain(path: &Path) -> bool {
    path.is_absolute()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
}

/// Whether one directory contains the other (or they are the same).
fn dirs_overlap(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The audit event of a workspace's directory getting its group; the store adds the group.
fn group_event(workspace: &WorkspaceId, dir: &Path) -> tresor_store::AuditEvent {
    tresor_store::AuditEvent {
        actor: "system".to_owned(),
        action: "storage.file.group".to_owned(),
        object: format!("storage:file://{}", dir.display()),
        workspace: Some(workspace.to_string()),
        source: None,
        result: "ok".to_owned(),
        detail: None,
    }
}

fn unavailable(e: impl Into<anyhow::Error>) -> ServiceError {
    ServiceError::Unavailable(e.into())
}

impl StorageService {
    pub fn new(
        store: Store,
        s3: Option<Arc<S3Settings>>,
        file_dirs: Vec<PathBuf>,
    ) -> StorageService {
        StorageService {
            store,
            s3,
            file_dirs: Arc::new(file_dirs),
            clients: Arc::new(Mutex::new(HashMap::new())),
            groups: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub fn s3(&self) -> Option<&S3Settings> {
        self.s3.as_deref()
    }

    fn settings(&self) -> Result<&S3Settings, ServiceError> {
        self.s3.as_deref().ok_or_else(|| {
            ServiceError::invalid(
                "url",
                "this server has no S3 storage configured ([s3] in its configuration); use file:// or http(s):// URLs",
            )
        })
    }

    /// The client for one bucket, built once.
    fn client(&self, bucket: &str) -> Result<Arc<AmazonS3>, ServiceError> {
        let s3 = self.settings()?;
        let mut clients = self.clients.lock().map_err(|_| {
            ServiceError::Internal(anyhow::anyhow!("storage client cache poisoned"))
        })?;
        if let Some(c) = clients.get(bucket) {
            return Ok(c.clone());
        }
        let secret = std::str::from_utf8(s3.secret_access_key.expose_secret())
            .map_err(|_| ServiceError::Internal(anyhow::anyhow!("the S3 secret is not UTF-8")))?;
        let mut builder = AmazonS3Builder::new()
            .with_region(&s3.region)
            .with_bucket_name(bucket)
            .with_access_key_id(&s3.access_key_id)
            .with_secret_access_key(secret)
            .with_allow_http(s3.allow_http);
        if let Some(endpoint) = &s3.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let client = Arc::new(builder.build().map_err(unavailable)?);
        clients.insert(bucket.to_owned(), client.clone());
        Ok(client)
    }

    /// A workspace's location: the one an administrator set, or the default bucket and prefix
    /// unless that overlaps a location an administrator gave another workspace (a whole bucket,
    /// say), in which case it has none until an administrator sets one.
    pub async fn location(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<Location>, ServiceError> {
        if let Some(row) = self.store.workspace_storage(workspace).await? {
            return Ok(Some(Location {
                bucket: row.bucket,
                prefix: row.prefix,
            }));
        }
        let Some(default) = self.default_location(workspace.as_str()) else {
            return Ok(None);
        };
        for row in self.store.all_workspace_storage().await? {
            let given = Location {
                bucket: row.bucket,
                prefix: row.prefix,
            };
            if default.overlaps(&given) {
                tracing::warn!(
                    workspace = %workspace,
                    other = %row.workspace,
                    "the workspace's default storage lies inside another workspace's; it has none until an administrator sets one"
                );
                return Ok(None);
            }
        }
        Ok(Some(default))
    }

    /// Where a workspace's objects go when no administrator chose.
    fn default_location(&self, workspace: &str) -> Option<Location> {
        self.s3.as_deref().and_then(|s3| {
            s3.default_bucket.as_ref().map(|bucket| Location {
                bucket: bucket.clone(),
                prefix: s3.prefix_template.replace("{workspace}", workspace),
            })
        })
    }

    /// Sets (or with `None` clears) a workspace's location. Locations of two workspaces may not
    /// overlap: each workspace's prefix is its boundary.
    pub async fn set_location(
        &self,
        actor: &Principal,
        workspace: &WorkspaceId,
        location: Option<Location>,
    ) -> Result<(), ServiceError> {
        self.settings()?;
        if let Some(loc) = &location {
            if loc.bucket.is_empty()
                || !loc
                    .bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            {
                return Err(ServiceError::invalid(
                    "bucket",
                    "must be an S3 bucket name (lowercase letters, digits, '-' and '.')",
                ));
            }
            // An empty prefix gives the workspace the whole bucket, as sites with one bucket
            // per project do.
            if loc.prefix.starts_with('/') || !(loc.prefix.is_empty() || loc.prefix.ends_with('/'))
            {
                return Err(ServiceError::invalid(
                    "prefix",
                    "must be a key prefix such as \"projects/alpha/\" (no leading '/', ending with '/'), or \"\" for the whole bucket",
                ));
            }
            let given: Vec<String> = self
                .store
                .all_workspace_storage()
                .await?
                .into_iter()
                .map(|row| row.workspace)
                .collect();
            for other in self.store.workspace_ids().await? {
                if other == workspace.as_str() || given.contains(&other) {
                    continue;
                }
                if let Some(default) = self.default_location(&other)
                    && loc.overlaps(&default)
                {
                    return Err(ServiceError::Conflict(format!(
                        "{} overlaps the default storage of workspace {other} ({}); choose a location of its own",
                        loc.url(),
                        default.url()
                    )));
                }
            }
            for row in self.store.all_workspace_storage().await? {
                let other = Location {
                    bucket: row.bucket,
                    prefix: row.prefix,
                };
                if row.workspace != workspace.as_str() && loc.overlaps(&other) {
                    return Err(ServiceError::Conflict(format!(
                        "{} overlaps the storage of another workspace ({}); choose a prefix of its own",
                        loc.url(),
                        other.url()
                    )));
                }
            }
        }
        let event = crate::platform::event(
            actor,
            "storage.set",
            format!(
                "storage:{}",
                location.as_ref().map(Location::url).unwrap_or_default()
            ),
            Some(workspace),
            "ok",
        );
        self.store
            .set_workspace_storage(
                workspace,
                location
                    .as_ref()
                    .map(|l| (l.bucket.as_str(), l.prefix.as_str())),
                actor.user.as_str(),
                &event,
            )
            .await?;
        Ok(())
    }

    /// At CreateTask (and again when the task starts): every `s3://` URL must lie in the
    /// workspace's location, and every `file://` URL in its file directory.
    pub async fn check_task(
        &self,
        workspace: &WorkspaceId,
        spec: &TaskSpec,
    ) -> Result<(), ServiceError> {
        self.check_file_urls(workspace, spec).await?;
        let urls = task_urls(spec, "s3://");
        let Some(first) = urls.first() else {
            return Ok(());
        };
        if self.s3.is_none() {
            return Err(ServiceError::invalid(
                &first.0,
                format!(
                    "{:?}: this server has no S3 storage configured ([s3] in its configuration); use file:// or http(s):// URLs",
                    first.1
                ),
            ));
        }
        let location = self.location(workspace).await?.ok_or_else(|| {
            ServiceError::invalid(
                &first.0,
                format!("workspace {workspace} has no storage location; an administrator sets one (PUT /api/v1/workspaces/{workspace}/storage)"),
            )
        })?;
        for (field, url) in urls {
            let inside = parse_s3(url).is_some_and(|(b, k)| location.contains(b, k));
            if !inside {
                return Err(ServiceError::invalid(
                    field,
                    format!(
                        "{url:?} is outside this workspace's storage {}; tasks reach only their own workspace's objects",
                        location.url()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where workflow runs' directories are made: in the first allowed dir, outside every
    /// workspace's directory (see `runs::files`).
    pub(crate) fn runs_area(&self) -> Option<PathBuf> {
        self.file_dirs
            .first()
            .map(|d| d.join(crate::runs::files::AREA))
    }

    /// A workspace's directory for `file://` inputs and outputs: the one an administrator gave
    /// it, or `<first allowed dir>/<workspace>`; `None` when the server allows no local storage.
    pub async fn file_root(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<FileRoot>, ServiceError> {
        if let Some(dir) = self.store.workspace_file_dir(workspace).await? {
            return Ok(Some(FileRoot {
                dir: PathBuf::from(dir),
                assigned: true,
            }));
        }
        Ok(self.file_dirs.first().map(|d| FileRoot {
            dir: d.join(workspace.as_str()),
            assigned: false,
        }))
    }

    /// Makes a workspace's `file://` directory ready for its tasks, whose file copies run as the
    /// task's own host user with the workspace's host group, and returns that group. Each
    /// workspace's group is recorded in the store (`workspace_groups`): the lowest of `gids` no
    /// workspace ever held, given the first time. The directory is root's and the group's, mode
    /// 2770 (the setgid bit gives every new file and directory in it the group), so each task
    /// reads what earlier tasks of its workspace wrote, and nothing of another workspace.
    ///
    /// The default directory is used only if tresor made it for this workspace: a missing one is
    /// made; one that exists must hold the workspace's recorded group, and one that exists
    /// before the workspace has a group is refused, since it may be anything left in the first
    /// allowed directory (a deleted workspace's files, a project's data) that the id happens to
    /// name. A directory an administrator assigned is adopted: it gets the workspace's group.
    pub async fn prepare_file_root(
        &self,
        workspace: &WorkspaceId,
        root: &FileRoot,
        gids: &RangeInclusive<u32>,
    ) -> Result<u32, ServiceError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = root.dir.as_path();
        // What an operator must fix, in the task's system logs.
        let failed = |e: std::io::Error| {
            ServiceError::Conflict(format!(
                "preparing the workspace's file:// directory {}: {e}",
                dir.display()
            ))
        };
        let not_made_here = |why: String| {
            ServiceError::Conflict(format!(
                "the workspace's file:// directory {} {why}; move it away, or a platform administrator assigns it with PUT /api/v1/workspaces/{workspace}/file-storage",
                dir.display()
            ))
        };
        // One workspace's directory at a time: two tasks of a workspace starting together must
        // not both make it.
        let _held = self.groups.lock().await;
        self.adopt_earlier_groups(gids).await?;
        let recorded = self.store.workspace_gid(workspace).await?;
        let existing = match std::fs::symlink_metadata(dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(failed(std::io::Error::other("not a directory")));
            }
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !root.assigned => None,
            Err(e) => return Err(failed(e)),
        };
        if !root.assigned {
            match (&existing, recorded) {
                (Some(_), None) => {
                    return Err(not_made_here(format!(
                        "exists but tresor did not create it for workspace {workspace}"
                    )));
                }
                (Some(meta), Some(gid)) if meta.gid() != gid => {
                    return Err(not_made_here(format!(
                        "has group {}, not workspace {workspace}'s group {gid}: tresor did not create it for this workspace",
                        meta.gid()
                    )));
                }
                (Some(_), Some(gid)) => return Ok(gid),
                (None, _) => {}
            }
        }
        let gid = match recorded {
            Some(gid) => gid,
            None => self.allocate_group(workspace, dir, gids).await?,
        };
        match existing {
            // An assigned directory that holds the group already is left as it is.
            Some(meta) if meta.gid() == gid => return Ok(gid),
            Some(_) => {}
            // The group is recorded before the directory exists, so a directory in the default
            // place without a recorded group is never one tresor made. It is made whole under
            // another name and moved into place, so a crash never leaves it half made (root's
            // group), which would fail every later task of the workspace.
            None => {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let making = dir.with_file_name(format!(".{name}.tresor-making"));
                let _ = std::fs::remove_dir(&making);
                std::fs::create_dir(&making).map_err(failed)?;
                let made = std::os::unix::fs::lchown(&making, None, Some(gid)).and_then(|()| {
                    std::fs::set_permissions(&making, std::fs::Permissions::from_mode(0o2770))
                });
                if let Err(e) = made {
                    let _ = std::fs::remove_dir(&making);
                    return Err(failed(e));
                }
                if let Err(e) = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &making,
                    rustix::fs::CWD,
                    dir,
                    rustix::fs::RenameFlags::NOREPLACE,
                ) {
                    let _ = std::fs::remove_dir(&making);
                    return Err(if e == rustix::io::Errno::EXIST {
                        not_made_here(format!(
                            "appeared while tresor was creating it for workspace {workspace}"
                        ))
                    } else {
                        failed(e.into())
                    });
                }
                return Ok(gid);
            }
        }
        std::os::unix::fs::lchown(dir, None, Some(gid)).map_err(failed)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2770)).map_err(failed)?;
        Ok(gid)
    }

    /// Records a new group for a workspace's directory, audited.
    async fn allocate_group(
        &self,
        workspace: &WorkspaceId,
        dir: &Path,
        gids: &RangeInclusive<u32>,
    ) -> Result<u32, ServiceError> {
        let event = group_event(workspace, dir);
        self.store
            .allocate_workspace_gid(workspace, gids, &event)
            .await?
            .ok_or_else(|| {
                ServiceError::Conflict(format!(
                    "every group of local.workspace_gid_range ({}-{}) belongs to a workspace (a deleted workspace keeps its group, since its id is never reused); widen the range",
                    gids.start(),
                    gids.end()
                ))
            })
    }

    /// Records, once, the groups that a tresor from before groups were recorded gave the
    /// directories of the workspaces of that time (deleted ones included, under their retired
    /// id): each directory's group, if it lies in `gids` and no other workspace holds it. It
    /// runs before any new group is handed out, so none is given that such a directory already
    /// holds. A workspace whose directory could not be adopted is refused at its next task until
    /// its directory is moved away or assigned.
    async fn adopt_earlier_groups(&self, gids: &RangeInclusive<u32>) -> Result<(), ServiceError> {
        use std::os::unix::fs::MetadataExt;
        for workspace in self.store.workspaces_to_adopt().await? {
            let Some(root) = self.file_root(&workspace).await? else {
                self.store
                    .adopt_workspace_gid(&workspace, None, &group_event(&workspace, Path::new("")))
                    .await?;
                continue;
            };
            let gid = std::fs::symlink_metadata(&root.dir)
                .ok()
                .filter(|m| m.is_dir())
                .map(|m| m.gid())
                .filter(|g| gids.contains(g));
            let adopted = self
                .store
                .adopt_workspace_gid(&workspace, gid, &group_event(&workspace, &root.dir))
                .await?;
            if gid.is_some() && !adopted {
                tracing::warn!(
                    workspace = %workspace,
                    dir = %root.dir.display(),
                    "the group of the workspace's file:// directory belongs to another workspace; its tasks are refused until the directory is moved away or assigned"
                );
            }
        }
        Ok(())
    }

    async fn check_file_urls(
        &self,
        workspace: &WorkspaceId,
        spec: &TaskSpec,
    ) -> Result<(), ServiceError> {
        let urls = task_urls(spec, "file://");
        let Some(first) = urls.first() else {
            return Ok(());
        };
        let root = self.file_root(workspace).await?.ok_or_else(|| {
            ServiceError::invalid(
                &first.0,
                format!(
                    "{:?}: this server allows no file:// storage (local.allowed_dirs); use s3:// or http(s):// URLs",
                    first.1
                ),
            )
        })?;
        for (field, url) in urls {
            if !file_url_path(url).is_some_and(|p| p.starts_with(&root.dir)) {
                return Err(ServiceError::invalid(
                    field,
                    format!(
                        "{url:?} is outside this workspace's file storage file://{}/; tasks reach only their own workspace's files",
                        root.dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Gives a workspace a host directory of its own for `file://` storage (`None`: back to the
    /// default). The directory must exist, lie in one of the allowed directories other than the
    /// first (which holds the default directories), and overlap no other workspace's; or be the
    /// workspace's own default directory, which an administrator assigns to have tresor adopt a
    /// directory it did not make there. An assigned directory gets the workspace's group when
    /// its next task starts.
    pub async fn set_file_root(
        &self,
        actor: &Principal,
        workspace: &WorkspaceId,
        dir: Option<&str>,
    ) -> Result<(), ServiceError> {
        let Some(default_area) = self.file_dirs.first() else {
            return Err(ServiceError::invalid(
                "dir",
                "this server allows no file:// storage; list host directories in local.allowed_dirs",
            ));
        };
        let chosen = match dir {
            None => None,
            Some(raw) => {
                let path = Path::new(raw);
                if !is_plain(path) {
                    return Err(ServiceError::invalid(
                        "dir",
                        format!("{raw:?} must be an absolute host path without '.' or '..'"),
                    ));
                }
                let real = std::fs::canonicalize(path).map_err(|e| {
                    ServiceError::invalid(
                        "dir",
                        format!("{raw:?}: {e}; create the directory first"),
                    )
                })?;
                let candidates = &self.file_dirs[1..];
                let own_default = default_area.join(workspace.as_str());
                let elsewhere = !dirs_overlap(&real, default_area)
                    && candidates.iter().any(|d| real.starts_with(d));
                let acceptable = real == own_default || elsewhere;
                if !real.is_dir() || !acceptable {
                    let listed: Vec<String> =
                        candidates.iter().map(|d| d.display().to_string()).collect();
                    return Err(ServiceError::invalid(
                        "dir",
                        format!(
                            "{raw:?} must be a directory inside one of the allowed directories {listed:?}, outside {} (which holds every workspace's default directory), or the workspace's own default directory {}",
                            default_area.display(),
                            own_default.display()
                        ),
                    ));
                }
                for (other, other_dir) in self.store.all_workspace_file_dirs().await? {
                    if other != workspace.as_str() && dirs_overlap(&real, Path::new(&other_dir)) {
                        return Err(ServiceError::Conflict(format!(
                            "{} overlaps the file storage of another workspace ({other_dir}); choose a directory of its own",
                            real.display()
                        )));
                    }
                }
                Some(real.display().to_string())
            }
        };
        let event = crate::platform::event(
            actor,
            "storage.file.set",
            format!("storage:file://{}", chosen.as_deref().unwrap_or_default()),
            Some(workspace),
            "ok",
        );
        self.store
            .set_workspace_file_dir(workspace, chosen.as_deref(), actor.user.as_str(), &event)
            .await?;
        Ok(())
    }

    /// A presigned URL for one request on one object.
    pub async fn presign(
        &self,
        method: Method,
        bucket: &str,
        key: &str,
        ttl: Duration,
    ) -> Result<String, ServiceError> {
        let client = self.client(bucket)?;
        let url = client
            .signed_url(method, &ObjectPath::from(key), ttl)
            .await
            .map_err(unavailable)?;
        Ok(url.to_string())
    }

    /// Object keys under a prefix.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, ServiceError> {
        let client = self.client(bucket)?;
        let prefix = ObjectPath::from(prefix.trim_end_matches('/'));
        let objects: Vec<_> = client
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(unavailable)?;
        Ok(objects
            .into_iter()
            .map(|o| o.location.to_string())
            .collect())
    }

    /// Presigned GETs for a task's `s3://` inputs, one per object (a DIRECTORY input is listed
    /// now, at start). Each is re-checked against the workspace's location.
    pub async fn presign_inputs(
        &self,
        workspace: &WorkspaceId,
        spec: &TaskSpec,
    ) -> Result<Vec<PresignedInput>, ServiceError> {
        self.check_task(workspace, spec).await?;
        let ttl = self.settings()?.presign_ttl;
        let mut out = Vec::new();
        for input in &spec.inputs {
            let Some((bucket, key)) = input.url.as_deref().and_then(parse_s3) else {
                continue;
            };
            if input.is_dir() {
                let dir = key.trim_end_matches('/');
                for object in self.list(bucket, dir).await? {
                    let relative = object
                        .strip_prefix(dir)
                        .unwrap_or(&object)
                        .trim_start_matches('/');
                    out.push(PresignedInput {
                        path: join_key(&input.path, relative),
                        url: self.presign(Method::GET, bucket, &object, ttl).await?,
                    });
                }
            } else {
                out.push(PresignedInput {
                    path: input.path.clone(),
                    url: self.presign(Method::GET, bucket, key, ttl).await?,
                });
            }
        }
        Ok(out)
    }

    /// Presigned PUTs for files a finishing task delivers: each URL must be one of the task's
    /// `s3://` outputs, or lie under a DIRECTORY or wildcard output's URL.
    pub async fn presign_uploads(
        &self,
        workspace: &WorkspaceId,
        spec: &TaskSpec,
        urls: &[String],
    ) -> Result<Vec<String>, ServiceError> {
        self.check_task(workspace, spec).await?;
        let ttl = self.settings()?.presign_ttl;
        let mut out = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let declared = spec.outputs.iter().any(|o| {
                let is_tree = o.is_dir() || tresor_executors::paths::has_wildcard(&o.path);
                url == &o.url
                    || (is_tree
                        && url
                            .strip_prefix(o.url.trim_end_matches('/'))
                            .is_some_and(|rest| rest.starts_with('/') && !rest.contains("/../")))
            });
            let parsed = parse_s3(url).filter(|_| declared && check_s3_url("url", url).is_ok());
            let Some((bucket, key)) = parsed else {
                return Err(ServiceError::invalid(
                    format!("urls[{i}]"),
                    "is not one of the task's declared s3:// outputs",
                ));
            };
            out.push(self.presign(Method::PUT, bucket, key, ttl).await?);
        }
        Ok(out)
    }
}
