//! The image cache of one host (or one shared work dir): content-addressed blobs, verified by
//! digest before use; one read-only root per image manifest, shared by every task that runs it;
//! and least-recently-used eviction under a size limit. Every step that other processes might do
//! at the same time (resolving a tag, pulling an image, evicting) holds a file lock, so twenty
//! tasks starting on one uncached image download it once.
//!
//! ```text
//! <dir>/blobs/sha256/<hex>          verified blobs (config and layers)
//! <dir>/manifests/<hex>.json        image manifests, by digest
//! <dir>/images/<hex>/rootfs/        the unpacked root; appears only when complete (rename)
//! <dir>/images/<hex>/image.json     config, blobs and size; a shared lock on it = "in use"
//! <dir>/images/<hex>/used           its mtime is the last use
//! <dir>/refs/<key>.json             a workspace's resolution of a name to a digest, with its time
//! <dir>/scopes/<key>/<hex>          a workspace fetched and verified this blob itself
//! <dir>/imports/<key>.json          names an administrator imported (never evicted)
//! <dir>/locks/, <dir>/tmp/
//! ```
//!
//! The cache is shared by every workspace of the host, but what a workspace may use is its own:
//! it resolves names itself (its resolutions are kept apart), and it uses a cached blob, or a
//! root made of blobs, only once it has downloaded and verified each of them from its own
//! registry (`scopes/`). So knowing another workspace's digests gets nothing: a registry that
//! lists a private layer's digest must also serve its bytes. Roots are shared; only
//! administrator imports are everyone's without a download.
//!
//! Only the cache's owner may enter it, except `images/` (each task's user traverses to its
//! root): blobs, resolutions and locks are 0700/0600, so no other host user can read a private
//! blob or hold a lock. Unpacked roots keep no group or other write bits.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};

use crate::name::{ImageName, PullPlan, check_digest};
use crate::unpack;

/// How a host's cache is kept; part of each task's worker file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    pub dir: PathBuf,
    /// Blobs and roots together, at most (older unused images are evicted).
    pub max_bytes: u64,
    /// The most one image may unpack to.
    pub max_image_bytes: u64,
    /// How long a workspace's resolution of a tag holds before the registry is asked again.
    pub tag_ttl_seconds: u64,
    /// Registries reached over plain HTTP (a registry on loopback, say).
    #[serde(default)]
    pub plain_http: Vec<String>,
}

/// A registry login from a workspace secret (`username:password`). Held by the worker only.
pub struct RegistryLogin {
    pub registry: String,
    pub username: String,
    pub password: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryLogin({}, {})", self.registry, self.username)
    }
}

/// Why an image could not be made ready; the text is for the task's system logs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PullError(pub String);

fn io_error(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> PullError {
    move |e| PullError(format!("{context}: {e}"))
}

/// What the image's config says about how to run it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
}

/// Whether an image's `Env` entry may reach an executor: a POSIX name, and neither part holding
/// a NUL (which would split the `--setenv` arguments bubblewrap reads).
pub fn env_var_ok(name: &str, value: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !value.contains('\0')
}

/// The image's `Env` without entries that may not reach an executor, with a note for each.
fn checked_env(config: &mut RunConfig) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(env) = config.env.as_mut() {
        env.retain(|pair| {
            let ok = pair
                .split_once('=')
                .is_some_and(|(name, value)| env_var_ok(name, value));
            if !ok && notes.len() < unpack::MAX_NOTES {
                notes.push(unpack::shorten(&format!(
                    "left out the image's Env entry {}",
                    pair.escape_default()
                )));
            }
            ok
        });
    }
    notes
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

/// What the cache records of an unpacked image.
#[derive(Debug, Serialize, Deserialize)]
struct ImageRecord {
    digest: String,
    config: RunConfig,
    /// Every blob the image was made of.
    blobs: Vec<String>,
    /// Bytes of regular files in its root.
    bytes: u64,
    /// Imported by an administrator: never evicted.
    #[serde(default)]
    pinned: bool,
}

/// An image ready to run: its root, its config, and a shared lock that keeps it from eviction
/// until dropped.
#[derive(Debug)]
pub struct ReadyImage {
    pub digest: String,
    pub rootfs: PathBuf,
    pub config: RunConfig,
    /// Notes from unpacking (entries skipped or neutralised), when this call unpacked it.
    pub notes: Vec<String>,
    _lease: File,
}

#[derive(Debug, Serialize, Deserialize)]
struct Resolution {
    digest: String,
    /// Seconds since the epoch.
    at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Import {
    name: String,
    digest: String,
}

/// The cache, opened by a worker for its task.
pub struct ImageCache {
    settings: CacheSettings,
    /// Made at the first request: building it loads the TLS roots, which a warm start, served
    /// from the cache alone, never needs.
    client: std::sync::OnceLock<oci_client::Client>,
}

/// The cache's directories and their modes: task users traverse to their image's root and list
/// nothing; everything else is the owner's alone.
const SUBDIRS: &[(&str, u32)] = &[
    ("blobs", 0o700),
    ("blobs/sha256", 0o700),
    ("manifests", 0o700),
    ("images", 0o711),
    ("refs", 0o700),
    ("scopes", 0o700),
    ("imports", 0o700),
    ("locks", 0o700),
    ("tmp", 0o700),
];

/// Makes `dir` (and its parents) and gives it `mode` whatever the umask.
fn mkdirs(dir: &Path, mode: u32) -> Result<(), PullError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io_error(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io_error(format!("chmod {}", dir.display())))
}

/// The largest image config accepted (they are a few KiB).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// A temporary file, removed when dropped unless kept: a pull cut short (an error, a timeout
/// that drops the future) leaves nothing behind.
struct Temporary(Option<PathBuf>);

impl Temporary {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames it to `dest`; from then on it is no longer removed.
    fn keep_as(mut self, dest: &Path) -> Result<(), PullError> {
        let path = self.0.take().unwrap_or_default();
        std::fs::rename(&path, dest).map_err(io_error(format!("keeping {}", dest.display())))
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A file being downloaded that refuses more bytes than its descriptor declared, so a registry
/// cannot fill the disk by streaming without end.
struct Capped {
    file: tokio::fs::File,
    left: u64,
}

impl tokio::io::AsyncWrite for Capped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if buf.len() as u64 > self.left {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "the registry sent more bytes than the image's manifest declares",
            )));
        }
        let this = &mut *self;
        let written = std::pin::Pin::new(&mut this.file).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &written {
            this.left -= *n as u64;
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A unique name for temporaries.
fn nonce() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    hex(&bytes)
}

/// Writes `bytes` to `path` through a temporary and a rename, so readers see all or nothing.
fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    let tmp = tmp_dir.join(format!("write-{}", nonce()));
    let mut file = File::create(&tmp).map_err(io_error(format!("creating {}", tmp.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(format!("writing {}", tmp.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error(format!("chmod {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_error(format!("renaming to {}", path.display())))
}

/// The SHA-256 of a file, as hex.
fn file_sha256(path: &Path) -> Result<String, PullError> {
    let mut file = File::open(path).map_err(io_error(format!("reading {}", path.display())))?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(io_error(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        context.update(&buf[..n]);
    }
    Ok(hex(context.finish().as_ref()))
}

/// A file lock, released when dropped (the descriptor closes).
fn lock(path: &Path, op: rustix::fs::FlockOperation) -> Result<File, PullError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error(format!("opening lock {}", path.display())))?;
    rustix::fs::flock(&file, op)
        .map_err(|e| PullError(format!("locking {}: {e}", path.display())))?;
    Ok(file)
}

async fn lock_async(path: PathBuf, op: rustix::fs::FlockOperation) -> Result<File, PullError> {
    tokio::task::spawn_blocking(move || lock(&path, op))
        .await
        .map_err(|e| PullError(format!("waiting for a lock: {e}")))?
}

/// Removes a tree even where unpacked directories are read-only for their owner.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(path);
            std::fs::remove_dir_all(path)
        }
    }
}

fn make_writable(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                make_writable(&entry.path());
            }
        }
    }
}

impl ImageCache {
    pub fn open(settings: CacheSettings) -> Result<ImageCache, PullError> {
        // A cache another user made, or may write, could hold their blobs or roots under any
        // name: checked before anything in it is changed, and refused rather than put right.
        let me = rustix::process::geteuid().as_raw();
        for path in std::iter::once(settings.dir.clone())
            .chain(SUBDIRS.iter().map(|(sub, _)| settings.dir.join(sub)))
        {
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() && meta.uid() == me && meta.mode() & 0o022 == 0 => {}
                Ok(_) => {
                    return Err(PullError(format!(
                        "the image cache's {} must be a directory of uid {me} that no one else may write",
                        path.display()
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PullError(format!("{}: {e}", path.display()))),
            }
        }
        mkdirs(&settings.dir, 0o711)?;
        for (sub, mode) in SUBDIRS {
            mkdirs(&settings.dir.join(sub), *mode)?;
        }
        Ok(ImageCache {
            client: std::sync::OnceLock::new(),
            settings,
        })
    }

    fn client(&self) -> &oci_client::Client {
        self.client.get_or_init(|| {
            oci_client::Client::new(ClientConfig {
                protocol: ClientProtocol::HttpsExcept(self.settings.plain_http.clone()),
                connect_timeout: Some(Duration::from_secs(10)),
                read_timeout: Some(Duration::from_secs(120)),
                ..ClientConfig::default()
            })
        })
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.settings.dir.join(sub)
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, PullError> {
        let hex = check_digest(digest).map_err(PullError)?;
        Ok(self.path("blobs/sha256").join(hex))
    }

    /// Makes `plan`'s image ready for a task of workspace `scope`: resolves the name (at most
    /// every `tag_ttl_seconds` per workspace), pulls and unpacks it unless another task did.
    pub async fn ensure(
        &self,
        plan: &PullPlan,
        scope: &str,
        login: Option<&RegistryLogin>,
    ) -> Result<ReadyImage, PullError> {
        let auth = match login {
            Some(l) => RegistryAuth::Basic(l.username.clone(), l.password.to_string()),
            None => RegistryAuth::Anonymous,
        };
        let (digest, manifest, imported) = self.resolve(plan, scope, &auth).await?;
        let hex = check_digest(&digest).map_err(PullError)?.to_owned();
        let scope_dir = self.path("scopes").join(sha256_hex(scope.as_bytes()));
        let blobs: Vec<&OciDescriptor> = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .collect();
        if blobs.iter().all(|b| self.proven(&scope_dir, imported, b))
            && let Some(ready) = self.try_use(&hex, Vec::new()).await?
        {
            return Ok(ready);
        }
        // One download per workspace and image at a time: the image's own lock is taken only to
        // unpack, so a workspace whose registry is slow holds up no other workspace's pull.
        let fetching = self
            .exclusive(format!("{}-{hex}.lock", sha256_hex(scope.as_bytes())))
            .await?;
        // Eviction leaves blobs alone while any pull holds this.
        let pulling = self.pull_lock().await?;
        let made = self
            .fetch_and_unpack(plan, &manifest, &hex, &scope_dir, imported, pulling)
            .await;
        drop(fetching);
        // After a failure too: what a failed pull left is collected.
        self.evict(made.as_ref().ok().map(|_| hex.clone())).await;
        let notes = made?;
        self.try_use(&hex, notes).await?.ok_or_else(|| {
            PullError(format!(
                "image {} was evicted right after unpacking; the cache is too small",
                plan.name
            ))
        })
    }

    /// Fetches the blobs this workspace has not proved, then unpacks the image unless another
    /// task did meanwhile. `pulling` (the shared pull lock) is held until the unpack ends, even
    /// if this future is dropped.
    async fn fetch_and_unpack(
        &self,
        plan: &PullPlan,
        manifest: &OciImageManifest,
        hex: &str,
        scope_dir: &Path,
        imported: bool,
        pulling: File,
    ) -> Result<Vec<String>, PullError> {
        let blobs = std::iter::once(&manifest.config).chain(&manifest.layers);
        let declared = manifest
            .layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(u64::MAX))
            .fold(0u64, u64::saturating_add);
        if declared > self.settings.max_image_bytes || declared > self.settings.max_bytes {
            return Err(PullError(format!(
                "image {} has {declared} bytes of layers, more than this host's image limit",
                plan.name
            )));
        }
        let missing: Vec<&OciDescriptor> = blobs
            .filter(|b| !self.proven(scope_dir, imported, b))
            .collect();
        if !missing.is_empty() {
            mkdirs(scope_dir, 0o700)?;
            let source = parse_source(plan)?;
            for blob in missing {
                let limit = if blob.digest == manifest.config.digest {
                    MAX_CONFIG_BYTES
                } else {
                    self.settings.max_image_bytes
                };
                self.fetch_blob(source.reference(), blob, limit, &plan.name)
                    .await?;
                let hex = check_digest(&blob.digest).map_err(PullError)?;
                File::create(scope_dir.join(hex)).map_err(io_error("recording a verified blob"))?;
            }
        }
        let making = self.exclusive(format!("{hex}.lock")).await?;
        if self.path("images").join(hex).join("image.json").exists() {
            return Ok(Vec::new());
        }
        self.unpack(hex, manifest, false, vec![making, pulling])
            .await
    }

    /// Waits for the exclusive lock `locks/<name>`.
    async fn exclusive(&self, name: String) -> Result<File, PullError> {
        lock_async(
            self.path("locks").join(name),
            rustix::fs::FlockOperation::LockExclusive,
        )
        .await
    }

    /// The shared "pull" lock: blob collection waits until no pull holds it.
    async fn pull_lock(&self) -> Result<File, PullError> {
        lock_async(
            self.path("locks/pull.lock"),
            rustix::fs::FlockOperation::LockShared,
        )
        .await
    }

    /// Whether the workspace whose proofs are in `scope_dir` may use `blob`: it fetched and
    /// verified it itself and the blob is still here, or the image is an administrator's import.
    fn proven(&self, scope_dir: &Path, imported: bool, blob: &OciDescriptor) -> bool {
        imported
            || check_digest(&blob.digest).is_ok_and(|h| {
                scope_dir.join(h).exists() && self.path("blobs/sha256").join(h).exists()
            })
    }

    /// The digest and manifest `plan` names for workspace `scope`, and whether it is an
    /// administrator's import.
    async fn resolve(
        &self,
        plan: &PullPlan,
        scope: &str,
        auth: &RegistryAuth,
    ) -> Result<(String, OciImageManifest, bool), PullError> {
        // Names an administrator imported need no registry.
        for name in [&plan.name, &plan.source] {
            let path = self
                .path("imports")
                .join(format!("{}.json", sha256_hex(name.as_bytes())));
            if let Ok(bytes) = std::fs::read(&path) {
                let import: Import = serde_json::from_slice(&bytes)
                    .map_err(|e| PullError(format!("{}: {e}", path.display())))?;
                let manifest = self
                    .stored_manifest(&import.digest)?
                    .ok_or_else(|| PullError(format!("imported image {name} lost its manifest")))?;
                return Ok((import.digest, manifest, true));
            }
        }
        let key = sha256_hex(format!("{scope}\n{}", plan.source).as_bytes());
        let path = self.path("refs").join(format!("{key}.json"));
        if let Some((digest, manifest)) = self.fresh_resolution(&path)? {
            return Ok((digest, manifest, false));
        }
        let _resolving = self.exclusive(format!("ref-{key}.lock")).await?;
        if let Some((digest, manifest)) = self.fresh_resolution(&path)? {
            return Ok((digest, manifest, false));
        }
        let source = parse_source(plan)?;
        let (manifest, digest) = self
            .client()
            .pull_image_manifest(source.reference(), auth)
            .await
            .map_err(|e| PullError(format!("image {}: {}", plan.name, describe(&e))))?;
        let hex =
            check_digest(&digest).map_err(|e| PullError(format!("image {}: {e}", plan.name)))?;
        let manifest_bytes = serde_json::to_vec(&manifest)
            .map_err(|e| PullError(format!("image {}: {e}", plan.name)))?;
        let tmp = self.path("tmp");
        write_atomic(
            &tmp,
            &self.path("manifests").join(format!("{hex}.json")),
            &manifest_bytes,
        )?;
        let resolution = serde_json::to_vec(&Resolution {
            digest: digest.clone(),
            at: now_secs(),
        })
        .map_err(|e| PullError(e.to_string()))?;
        write_atomic(&tmp, &path, &resolution)?;
        Ok((digest, manifest, false))
    }

    fn stored_manifest(&self, digest: &str) -> Result<Option<OciImageManifest>, PullError> {
        let hex = check_digest(digest).map_err(PullError)?;
        let path = self.path("manifests").join(format!("{hex}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| PullError(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PullError(format!("{}: {e}", path.display()))),
        }
    }

    fn fresh_resolution(
        &self,
        path: &Path,
    ) -> Result<Option<(String, OciImageManifest)>, PullError> {
        let Ok(bytes) = std::fs::read(path) else {
            return Ok(None);
        };
        let Ok(resolution) = serde_json::from_slice::<Resolution>(&bytes) else {
            return Ok(None);
        };
        if now_secs().saturating_sub(resolution.at) >= self.settings.tag_ttl_seconds {
            return Ok(None);
        }
        Ok(self
            .stored_manifest(&resolution.digest)?
            .map(|m| (resolution.digest, m)))
    }

    /// Downloads one blob unless the cache has it, verifying its digest before it is kept.
    async fn fetch_blob(
        &self,
        source: &Reference,
        blob: &OciDescriptor,
        limit: u64,
        name: &str,
    ) -> Result<(), PullError> {
        let dest = self.blob_path(&blob.digest)?;
        let size = u64::try_from(blob.size).unwrap_or(u64::MAX);
        if size > limit {
            return Err(PullError(format!(
                "image {name}: blob {} declares {} bytes, more than this host's limit of {limit}",
                blob.digest, blob.size
            )));
        }
        let tmp = Temporary(Some(self.path("tmp").join(format!("blob-{}", nonce()))));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp.path())
            .await
            .map_err(io_error(format!("creating {}", tmp.path().display())))?;
        // Foreign layers' `urls` would send the worker wherever the manifest says.
        let descriptor = OciDescriptor {
            urls: None,
            ..blob.clone()
        };
        let pulled = self
            .client()
            .pull_blob(source, &descriptor, Capped { file, left: size })
            .await;
        let verified = match pulled {
            Ok(()) => {
                let path = tmp.path().to_owned();
                let digest = blob.digest.clone();
                tokio::task::spawn_blocking(move || {
                    // oci-client checks too; this is the check the cache relies on.
                    let actual = file_sha256(&path)?;
                    if format!("sha256:{actual}") == digest {
                        Ok(())
                    } else {
                        Err(PullError(format!(
                            "blob {digest} arrived with digest sha256:{actual}"
                        )))
                    }
                })
                .await
                .map_err(|e| PullError(e.to_string()))
                .and_then(|r| r)
            }
            Err(e) => Err(PullError(describe(&e))),
        };
        if let Err(e) = verified {
            return Err(PullError(format!("image {name}: {e}")));
        }
        // Another workspace may have kept the same bytes meanwhile; the rename replaces them
        // with an identical copy.
        tmp.keep_as(&dest)
    }

    /// Unpacks the image's layers into a fresh directory and renames it into place, so a half
    /// unpacked root is never seen. Returns the unpacker's notes.
    /// `guards` (locks) are held until the unpacking itself ends, even if the caller is dropped.
    async fn unpack(
        &self,
        hex: &str,
        manifest: &OciImageManifest,
        pinned: bool,
        guards: Vec<File>,
    ) -> Result<Vec<String>, PullError> {
        let config_bytes = std::fs::read(self.blob_path(&manifest.config.digest)?)
            .map_err(io_error("reading the image config"))?;
        let config: ConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| PullError(format!("the image config is not valid JSON: {e}")))?;
        let mut layers = Vec::new();
        for layer in &manifest.layers {
            layers.push((self.blob_path(&layer.digest)?, layer.media_type.clone()));
        }
        let work = self.path("tmp").join(format!("image-{hex}-{}", nonce()));
        let dest = self.path("images").join(hex);
        let limits = unpack::UnpackLimits {
            max_bytes: self.settings.max_image_bytes,
            max_entries: 1_000_000,
        };
        let mut run_config = config.config.unwrap_or_default();
        let env_notes = checked_env(&mut run_config);
        let record = ImageRecord {
            digest: format!("sha256:{hex}"),
            config: run_config,
            blobs: std::iter::once(&manifest.config)
                .chain(&manifest.layers)
                .map(|d| d.digest.clone())
                .collect(),
            bytes: 0,
            pinned,
        };
        let tmp = self.path("tmp");
        tokio::task::spawn_blocking(move || {
            let _guards = guards;
            let result = unpack_into(&work, &layers, &limits).and_then(|(bytes, mut notes)| {
                notes.extend(env_notes);
                let record = ImageRecord { bytes, ..record };
                let json = serde_json::to_vec(&record).map_err(|e| PullError(e.to_string()))?;
                write_atomic(&tmp, &work.join("image.json"), &json)?;
                File::create(work.join("used")).map_err(io_error("marking the image used"))?;
                if record.pinned {
                    File::create(work.join(PINNED)).map_err(io_error("pinning the image"))?;
                }
                std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o711))
                    .map_err(io_error("chmod the image directory"))?;
                std::fs::rename(&work, &dest)
                    .map_err(io_error(format!("moving the image to {}", dest.display())))?;
                Ok(notes)
            });
            if result.is_err() {
                let _ = remove_tree(&work);
            }
            result
        })
        .await
        .map_err(|e| PullError(format!("unpacking: {e}")))?
    }

    /// The image with this digest if it is complete, locked against eviction.
    async fn try_use(
        &self,
        hex: &str,
        notes: Vec<String>,
    ) -> Result<Option<ReadyImage>, PullError> {
        let dir = self.path("images").join(hex);
        let record_path = dir.join("image.json");
        let file = match File::open(&record_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PullError(format!("{}: {e}", record_path.display()))),
        };
        let file = tokio::task::spawn_blocking(move || {
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared).map(|()| file)
        })
        .await
        .map_err(|e| PullError(e.to_string()))?
        .map_err(|e| PullError(format!("locking {}: {e}", record_path.display())))?;
        // Evicted between the open and the lock: the directory was renamed away.
        let Ok(bytes) = std::fs::read(&record_path) else {
            return Ok(None);
        };
        let record: ImageRecord = serde_json::from_slice(&bytes)
            .map_err(|e| PullError(format!("{}: {e}", record_path.display())))?;
        if let Ok(used) = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("used"))
        {
            let _ = used.set_modified(SystemTime::now());
        }
        Ok(Some(ReadyImage {
            digest: record.digest,
            rootfs: dir.join("rootfs"),
            config: record.config,
            notes,
            _lease: file,
        }))
    }

    /// Evicts least recently used images (not pinned, not in use, not `keep`) until the cache
    /// fits its limit, then the blobs no kept image needs.
    async fn evict(&self, keep: Option<String>) {
        let dir = self.settings.dir.clone();
        let max = self.settings.max_bytes;
        let result =
            tokio::task::spawn_blocking(move || evict_blocking(&dir, max, keep.as_deref())).await;
        match result {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(evicted = n, "evicted images from the cache"),
            Ok(Err(e)) => tracing::warn!("evicting images: {e}"),
            Err(e) => tracing::warn!("evicting images: {e}"),
        }
    }

    /// Imports an image from an OCI image layout (a directory or a tar of one) under `name`,
    /// for every workspace of this host; it is never evicted. `tag` picks the layout's manifest
    /// by its `org.opencontainers.image.ref.name` when there are several.
    pub async fn import_layout(
        &self,
        layout: &Path,
        tag: Option<&str>,
        name: &ImageName,
    ) -> Result<String, PullError> {
        let extracted;
        let layout_dir = if layout.is_file() {
            extracted = self.path("tmp").join(format!("layout-{}", nonce()));
            mkdirs(&extracted, 0o700)?;
            let archive =
                File::open(layout).map_err(io_error(format!("opening {}", layout.display())))?;
            // An administrator's archive, but unpacked with the tar crate's own refusals of
            // `..` and absolute paths all the same.
            tar::Archive::new(archive)
                .unpack(&extracted)
                .map_err(io_error(format!("extracting {}", layout.display())))?;
            extracted.clone()
        } else {
            layout.to_owned()
        };
        let result = self.import_dir(&layout_dir, tag, name).await;
        if layout.is_file() {
            let _ = remove_tree(&layout_dir);
        }
        result
    }

    async fn import_dir(
        &self,
        layout: &Path,
        tag: Option<&str>,
        name: &ImageName,
    ) -> Result<String, PullError> {
        let read_json = |path: PathBuf| -> Result<serde_json::Value, PullError> {
            let bytes =
                std::fs::read(&path).map_err(io_error(format!("reading {}", path.display())))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| PullError(format!("{}: {e}", path.display())))
        };
        let index = read_json(layout.join("index.json"))?;
        let entries = index["manifests"].as_array().cloned().unwrap_or_default();
        let chosen: Vec<&serde_json::Value> = entries
            .iter()
            .filter(|m| {
                tag.is_none_or(|t| {
                    m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(t)
                })
            })
            .collect();
        let [entry] = chosen.as_slice() else {
            return Err(PullError(format!(
                "{} holds {} matching manifests; name one with its tag",
                layout.display(),
                chosen.len()
            )));
        };
        let mut digest = entry["digest"].as_str().unwrap_or_default().to_owned();
        // Read once and checked in memory: what is parsed is what was hashed.
        let layout_json = |digest: &str| -> Result<serde_json::Value, PullError> {
            let hex = check_digest(digest).map_err(PullError)?;
            let path = layout.join("blobs/sha256").join(hex);
            let bytes =
                std::fs::read(&path).map_err(io_error(format!("reading {}", path.display())))?;
            if bytes.len() as u64 > MAX_CONFIG_BYTES || sha256_hex(&bytes) != hex {
                return Err(PullError(format!(
                    "{} does not match its digest",
                    path.display()
                )));
            }
            serde_json::from_slice(&bytes)
                .map_err(|e| PullError(format!("{}: {e}", path.display())))
        };
        let index_digest = digest.clone();
        let mut manifest = layout_json(&digest)?;
        if manifest["manifests"].is_array() {
            // An index: this host's platform.
            let platform = manifest["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                })
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| PullError("the index has no linux/amd64 image".to_owned()))?
                .to_owned();
            digest = platform;
            manifest = layout_json(&digest)?;
        }
        if let Some(pinned) = name.reference().digest()
            && pinned != digest
            && pinned != index_digest
        {
            return Err(PullError(format!(
                "--name pins {pinned}, but the layout's image is {digest}"
            )));
        }
        let manifest: OciImageManifest = serde_json::from_value(manifest)
            .map_err(|e| PullError(format!("the image manifest: {e}")))?;
        let hex = check_digest(&digest).map_err(PullError)?.to_owned();
        let making = self.exclusive(format!("{hex}.lock")).await?;
        let pulling = self.pull_lock().await?;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let hex = check_digest(&blob.digest).map_err(PullError)?;
            let src = layout.join("blobs/sha256").join(hex);
            // Copied first, then the copy hashed: a layout changed meanwhile cannot put other
            // bytes under this digest.
            let tmp = Temporary(Some(self.path("tmp").join(format!("blob-{}", nonce()))));
            std::fs::copy(&src, tmp.path())
                .map_err(io_error(format!("copying {}", src.display())))?;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))
                .map_err(io_error("chmod a blob"))?;
            if file_sha256(tmp.path())? != hex {
                return Err(PullError(format!(
                    "{} does not match its digest",
                    src.display()
                )));
            }
            tmp.keep_as(&self.blob_path(&blob.digest)?)?;
        }
        let tmp = self.path("tmp");
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| PullError(e.to_string()))?;
        write_atomic(
            &tmp,
            &self.path("manifests").join(format!("{hex}.json")),
            &manifest_bytes,
        )?;
        // An image already unpacked (pulled, or imported before) is kept, running tasks and
        // all, and marked never to be evicted by a file of its own: `image.json`, whose lock
        // running tasks hold, is never replaced.
        let root = self.path("images").join(&hex);
        if root.join("image.json").exists() {
            File::create(root.join(PINNED)).map_err(io_error("pinning the image"))?;
        } else {
            self.unpack(&hex, &manifest, true, vec![making, pulling])
                .await?;
        }
        let import = serde_json::to_vec(&Import {
            name: name.full(),
            digest: digest.clone(),
        })
        .map_err(|e| PullError(e.to_string()))?;
        write_atomic(
            &tmp,
            &self
                .path("imports")
                .join(format!("{}.json", sha256_hex(name.full().as_bytes()))),
            &import,
        )?;
        Ok(digest)
    }
}

/// The reference to contact. Parsed only on the way to the network: the parser's regular
/// expression costs a fresh worker tens of milliseconds, which a cached image never needs.
fn parse_source(plan: &PullPlan) -> Result<ImageName, PullError> {
    ImageName::parse(&plan.source).map_err(|e| PullError(format!("image {}: {e}", plan.name)))
}

/// What an oci-client error means for a user, cut to a line: a registry's error bodies are
/// the registry's to choose.
fn describe(e: &oci_client::errors::OciDistributionError) -> String {
    let text = describe_fully(e);
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect();
    if text.chars().count() > 400 {
        line.push('…');
    }
    line
}

fn describe_fully(e: &oci_client::errors::OciDistributionError) -> String {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::ImageManifestNotFoundError(_) => "the registry has no such image or tag".to_owned(),
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                )
            }) =>
        {
            "the registry has no such image or tag".to_owned()
        }
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::Unauthorized
                        | oci_client::errors::OciErrorCode::Denied
                )
            }) =>
        {
            format!(
                "the registry refused access ({envelope}); a workspace admin names a registry credential in the workspace's image policy"
            )
        }
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => format!(
            "the registry refused access ({e}); a workspace admin names a registry credential in the workspace's image policy"
        ),
        E::RequestError(r) if r.is_connect() || r.is_timeout() => {
            format!("the registry cannot be reached: {r}")
        }
        other => other.to_string(),
    }
}

/// Applies each layer in order into `work/rootfs`. Returns the bytes unpacked and the notes.
fn unpack_into(
    work: &Path,
    layers: &[(PathBuf, String)],
    limits: &unpack::UnpackLimits,
) -> Result<(u64, Vec<String>), PullError> {
    let rootfs = work.join("rootfs");
    mkdirs(&rootfs, 0o755)?;
    std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755))
        .map_err(io_error("chmod the image root"))?;
    let mut unpacker = unpack::Unpacker::new(&rootfs, *limits)
        .map_err(|e| PullError(format!("the image root: {e}")))?;
    for (index, (path, media_type)) in layers.iter().enumerate() {
        let file = File::open(path).map_err(io_error(format!("opening layer {index}")))?;
        let reader =
            decompress(file, media_type).map_err(|e| PullError(format!("layer {index}: {e}")))?;
        unpacker
            .apply_layer(reader)
            .map_err(|e| PullError(format!("layer {index}: {e}")))?;
    }
    let stats = unpacker
        .finish()
        .map_err(|e| PullError(format!("finishing the image root: {e}")))?;
    Ok((stats.bytes, stats.notes))
}

/// The layer's tar stream, whatever its compression (by media type, else by its magic bytes).
fn decompress(mut file: File, media_type: &str) -> Result<Box<dyn Read>, String> {
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(|e| e.to_string())?;
    std::io::Seek::rewind(&mut file).map_err(|e| e.to_string())?;
    let stream = file;
    let gzip = magic[..n].starts_with(&[0x1f, 0x8b]);
    let zstd = magic[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if gzip || media_type.ends_with("gzip") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(1 << 16, stream),
        )))
    } else if zstd || media_type.ends_with("zstd") {
        Ok(Box::new(ZstdFrames {
            decoder: None,
            rest: Some(std::io::BufReader::new(stream)),
        }))
    } else {
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 16, stream)))
    }
}

/// In an image's directory: an administrator imported it, so it is never evicted.
const PINNED: &str = "pinned";

/// Resolutions, and manifests of images no longer kept, older than this are removed.
const STALE_RECORD: Duration = Duration::from_secs(24 * 3600);

/// Temporaries older than this are left by a worker that was killed mid-pull.
const STALE_TEMPORARY: Duration = Duration::from_secs(6 * 3600);

/// A zstd stream of any number of frames (ruzstd's decoder reads one), skippable frames (as
/// zstd:chunked layers hold) passed over: a layer cut after its first frame would unpack as a
/// smaller, wrong root.
struct ZstdFrames<R: std::io::BufRead> {
    decoder: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
    /// The stream between frames.
    rest: Option<R>,
}

impl<R: std::io::BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(decoder) = self.decoder.as_mut() {
                let n = decoder.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.rest = self.decoder.take().map(|d| d.into_inner());
            }
            let Some(mut rest) = self.rest.take() else {
                return Ok(0);
            };
            let head = rest.fill_buf()?;
            if head.is_empty() {
                return Ok(0);
            }
            // Magic 0x184D2A50..=0x184D2A5F (little-endian), then the frame's length.
            if head.len() >= 8 && head[1..4] == [0x2a, 0x4d, 0x18] && head[0] & 0xf0 == 0x50 {
                let length = u64::from(u32::from_le_bytes([head[4], head[5], head[6], head[7]]));
                rest.consume(8);
                std::io::copy(&mut (&mut rest).take(length), &mut std::io::sink())?;
                self.rest = Some(rest);
                continue;
            }
            self.decoder =
                Some(ruzstd::decoding::StreamingDecoder::new(rest).map_err(std::io::Error::other)?);
        }
    }
}

fn evict_blocking(dir: &Path, max: u64, keep: Option<&str>) -> Result<usize, PullError> {
    let _evicting = lock(
        &dir.join("locks/evict.lock"),
        rustix::fs::FlockOperation::LockExclusive,
    )?;
    remove_stale_temporaries(&dir.join("tmp"));
    struct Entry {
        hex: String,
        record: ImageRecord,
        used: SystemTime,
        pinned: bool,
    }
    let mut images = Vec::new();
    let images_dir = dir.join("images");
    for entry in std::fs::read_dir(&images_dir)
        .map_err(io_error("listing images"))?
        .flatten()
    {
        let hex = entry.file_name().to_string_lossy().into_owned();
        let Ok(bytes) = std::fs::read(entry.path().join("image.json")) else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<ImageRecord>(&bytes) else {
            continue;
        };
        let used = std::fs::metadata(entry.path().join("used"))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let pinned = record.pinned || entry.path().join(PINNED).exists();
        images.push(Entry {
            hex,
            record,
            used,
            pinned,
        });
    }
    let blob_dir = dir.join("blobs/sha256");
    let blob_sizes: BTreeMap<String, u64> = std::fs::read_dir(&blob_dir)
        .map_err(io_error("listing blobs"))?
        .flatten()
        .filter_map(|e| {
            let size = e.metadata().ok()?.len();
            Some((format!("sha256:{}", e.file_name().to_string_lossy()), size))
        })
        .collect();
    let mut total: u64 =
        images.iter().map(|i| i.record.bytes).sum::<u64>() + blob_sizes.values().sum::<u64>();
    images.sort_by_key(|i| i.used);
    // How many images use each blob: evicting an image frees the blobs only it used.
    let mut users: BTreeMap<&str, usize> = BTreeMap::new();
    for image in &images {
        for blob in &image.record.blobs {
            *users.entry(blob.as_str()).or_default() += 1;
        }
    }
    let mut evicted = 0;
    let mut kept: Vec<&Entry> = Vec::new();
    for image in &images {
        let evictable = total > max && !image.pinned && keep != Some(image.hex.as_str());
        // One image that cannot be removed must not stop the others from being.
        let removed_now = evictable
            && evict_one(dir, &image.hex).unwrap_or_else(|e| {
                tracing::warn!("evicting image {}: {e}", image.hex);
                false
            });
        if removed_now {
            total = total.saturating_sub(image.record.bytes);
            for blob in &image.record.blobs {
                if let Some(count) = users.get_mut(blob.as_str()) {
                    *count -= 1;
                    if *count == 0 {
                        total = total.saturating_sub(blob_sizes.get(blob).copied().unwrap_or(0));
                    }
                }
            }
            evicted += 1;
        } else {
            kept.push(image);
        }
    }
    // Blobs no kept image is made of: those of evicted images, and those a failed or cut-short
    // pull left. Only while no pull is under way, since a pull's blobs belong to no image yet.
    let Ok(_no_pulls) = lock(
        &dir.join("locks/pull.lock"),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    ) else {
        return Ok(evicted);
    };
    let needed: BTreeSet<&str> = kept
        .iter()
        .flat_map(|i| i.record.blobs.iter().map(String::as_str))
        .collect();
    for blob in blob_sizes.keys() {
        if !needed.contains(blob.as_str())
            && let Ok(hex) = check_digest(blob)
        {
            let _ = std::fs::remove_file(blob_dir.join(hex));
        }
    }
    // Resolutions older than a day are asked again anyway; manifests of images neither kept nor
    // imported are fetched again with their next resolution.
    let imported: BTreeSet<String> = std::fs::read_dir(dir.join("imports"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<Import>(&bytes).ok())
        .filter_map(|i| check_digest(&i.digest).ok().map(str::to_owned))
        .collect();
    let old = |entry: &std::fs::DirEntry| {
        entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_RECORD)
    };
    for entry in std::fs::read_dir(dir.join("refs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if old(&entry) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for entry in std::fs::read_dir(dir.join("manifests"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let hex = name.trim_end_matches(".json");
        if old(&entry) && !images_dir.join(hex).exists() && !imported.contains(hex) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    // What workspaces proved of blobs that are gone proves nothing any more.
    if let Ok(scopes) = std::fs::read_dir(dir.join("scopes")) {
        for scope in scopes.flatten() {
            for marker in std::fs::read_dir(scope.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if !blob_dir.join(marker.file_name()).exists() {
                    let _ = std::fs::remove_file(marker.path());
                }
            }
        }
    }
    Ok(evicted)
}

fn remove_stale_temporaries(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMPORARY);
        if stale {
            let path = entry.path();
            let _ = if path.is_dir() {
                remove_tree(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Removes one image unless a task holds it. Whether it was removed.
fn evict_one(dir: &Path, hex: &str) -> Result<bool, PullError> {
    let path = dir.join("images").join(hex);
    let Ok(record) = File::open(path.join("image.json")) else {
        return Ok(false);
    };
    if rustix::fs::flock(
        &record,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .is_err()
    {
        return Ok(false);
    }
    let trash = dir.join("tmp").join(format!("evicted-{hex}-{}", nonce()));
    std::fs::rename(&path, &trash).map_err(io_error(format!("evicting {hex}")))?;
    drop(record);
    // Out of use from the rename on; a removal that fails is retried with stale temporaries.
    if let Err(e) = remove_tree(&trash) {
        tracing::warn!("removing evicted image {hex}: {e}");
    }
    Ok(true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> CacheSettings {
        CacheSettings {
            dir: dir.to_owned(),
            max_bytes: 1 << 30,
            max_image_bytes: 1 << 30,
            tag_ttl_seconds: 60,
            plain_http: Vec::new(),
        }
    }

    #[test]
    fn every_frame_of_a_zstd_layer_is_read() {
        use ruzstd::encoding::{CompressionLevel, compress_to_vec};
        // zstd:chunked layers hold skippable frames, first and between the others.
        let skippable = [0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, b'x', b'y', b'z'];
        let mut stream = skippable.to_vec();
        stream.extend(compress_to_vec(
            &b"first frame, "[..],
            CompressionLevel::Fastest,
        ));
        stream.extend(skippable);
        stream.extend(compress_to_vec(
            &b"second frame"[..],
            CompressionLevel::Fastest,
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layer");
        std::fs::write(&path, &stream).unwrap();
        let mut text = String::new();
        decompress(
            File::open(&path).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        )
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
        assert_eq!(text, "first frame, second frame");
    }

    #[test]
    fn a_cache_others_may_write_is_refused_and_its_parts_are_the_owners_alone() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        // One others could write is refused, not put right: they may have planted anything.
        let refused = ImageCache::open(settings(&cache)).err().unwrap();
        assert!(refused.0.contains("no one else may write"), "{refused}");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        ImageCache::open(settings(&cache)).unwrap();
        let mode = |p: &str| std::fs::metadata(cache.join(p)).unwrap().mode() & 0o777;
        assert_eq!(mode(""), 0o711);
        assert_eq!(mode("images"), 0o711);
        for private in [
            "blobs/sha256",
            "refs",
            "scopes",
            "locks",
            "tmp",
            "manifests",
        ] {
            assert_eq!(mode(private), 0o700, "{private}");
        }
        // Someone else's directory is not ours to fix (the suite runs as root, as CI does).
        std::os::unix::fs::chown(&cache, Some(12345), None).unwrap();
        let refused = ImageCache::open(settings(&cache)).err().unwrap();
        assert!(refused.0.contains("no one else may write"), "{refused}");
    }

    #[test]
    fn collection_keeps_what_kept_images_need_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        ImageCache::open(settings(&cache)).unwrap();
        let (kept, orphan, image) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let blobs = cache.join("blobs/sha256");
        std::fs::write(blobs.join(&kept), b"kept").unwrap();
        std::fs::write(blobs.join(&orphan), b"left by a failed pull").unwrap();
        let root = cache.join("images").join(&image);
        std::fs::create_dir_all(root.join("rootfs")).unwrap();
        let record = ImageRecord {
            digest: format!("sha256:{image}"),
            config: RunConfig::default(),
            blobs: vec![format!("sha256:{kept}")],
            bytes: 4,
            pinned: false,
        };
        std::fs::write(
            root.join("image.json"),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let scope = cache.join("scopes/s");
        std::fs::create_dir_all(&scope).unwrap();
        for marker in [&kept, &orphan] {
            File::create(scope.join(marker)).unwrap();
        }
        let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
        let aged = |path: PathBuf| {
            File::create(&path)
                .unwrap()
                .set_modified(two_days_ago)
                .unwrap();
            path
        };
        let old_ref = aged(cache.join("refs/old.json"));
        let old_manifest = aged(cache.join(format!("manifests/{}.json", "d".repeat(64))));
        let kept_manifest = aged(cache.join(format!("manifests/{image}.json")));
        let fresh_ref = cache.join("refs/fresh.json");
        File::create(&fresh_ref).unwrap();

        assert_eq!(evict_blocking(&cache, u64::MAX, None).unwrap(), 0);
        assert!(blobs.join(&kept).exists());
        assert!(!blobs.join(&orphan).exists(), "an orphan blob is collected");
        assert!(scope.join(&kept).exists());
        assert!(
            !scope.join(&orphan).exists(),
            "a marker of a gone blob is removed"
        );
        assert!(!old_ref.exists() && fresh_ref.exists());
        assert!(!old_manifest.exists() && kept_manifest.exists());

        // While a pull runs, no blob is collected.
        std::fs::write(blobs.join(&orphan), b"being pulled").unwrap();
        let _pulling = lock(
            &cache.join("locks/pull.lock"),
            rustix::fs::FlockOperation::LockShared,
        )
        .unwrap();
        evict_blocking(&cache, u64::MAX, None).unwrap();
        assert!(blobs.join(&orphan).exists());
    }

    #[tokio::test]
    async fn a_download_longer_than_declared_is_cut_off() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let file = tokio::fs::File::create(dir.path().join("blob"))
            .await
            .unwrap();
        let mut capped = Capped { file, left: 8 };
        capped.write_all(b"12345678").await.unwrap();
        let err = capped.write_all(b"9").await.unwrap_err();
        assert!(err.to_string().contains("more bytes than"), "{err}");
    }

    #[test]
    fn an_image_env_keeps_only_variables_that_can_reach_an_executor() {
        let mut config = RunConfig {
            env: Some(vec![
                "PATH=/bin".to_owned(),
                "X=a\0--bind\0/\0/host".to_owned(),
                "1BAD=x".to_owned(),
                "NOEQUALS".to_owned(),
                "GOOD_2=with=equals".to_owned(),
            ]),
            ..RunConfig::default()
        };
        let notes = checked_env(&mut config);
        assert_eq!(
            config.env.unwrap(),
            ["PATH=/bin".to_owned(), "GOOD_2=with=equals".to_owned()]
        );
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes.iter().all(|n| !n.contains('\0')), "{notes:?}");
    }
}
