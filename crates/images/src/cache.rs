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
//! <dir>/imports/<key>.json          names an administrator imported (never evicted)
//! <dir>/locks/, <dir>/tmp/
//! ```
//!
//! Resolutions are kept per workspace: a workspace never runs an image through another's
//! resolution, so content pulled with one workspace's registry credentials is reached by another
//! only after the registry has let that workspace see the same manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
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

const SUBDIRS: &[&str] = &[
    "blobs/sha256",
    "manifests",
    "images",
    "refs",
    "imports",
    "locks",
    "tmp",
];

fn mkdirs(dir: &Path) -> Result<(), PullError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        // Task users traverse to their image's root; they list nothing.
        .mode(0o711)
        .create(dir)
        .map_err(io_error(format!("creating {}", dir.display())))
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
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
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
        for sub in SUBDIRS {
            mkdirs(&settings.dir.join(sub))?;
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
        let (digest, manifest) = self.resolve(plan, scope, &auth).await?;
        let hex = check_digest(&digest).map_err(PullError)?.to_owned();
        if let Some(ready) = self.try_use(&hex, Vec::new()).await? {
            return Ok(ready);
        }
        let _making = lock_async(
            self.path("locks").join(format!("{hex}.lock")),
            rustix::fs::FlockOperation::LockExclusive,
        )
        .await?;
        if let Some(ready) = self.try_use(&hex, Vec::new()).await? {
            return Ok(ready);
        }
        let declared: u64 = manifest
            .layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(0))
            .sum();
        if declared > self.settings.max_image_bytes || declared > self.settings.max_bytes {
            return Err(PullError(format!(
                "image {} has {declared} bytes of layers, more than this host's image limit",
                plan.name
            )));
        }
        let source = parse_source(plan)?;
        let blobs: Vec<&OciDescriptor> = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .collect();
        for blob in &blobs {
            self.fetch_blob(source.reference(), blob, &plan.name)
                .await?;
        }
        let notes = self.unpack(&hex, &manifest, false).await?;
        self.evict(Some(hex.clone())).await;
        self.try_use(&hex, notes).await?.ok_or_else(|| {
            PullError(format!(
                "image {} was evicted right after unpacking; the cache is too small",
                plan.name
            ))
        })
    }

    /// The digest and manifest `plan` names for workspace `scope`.
    async fn resolve(
        &self,
        plan: &PullPlan,
        scope: &str,
        auth: &RegistryAuth,
    ) -> Result<(String, OciImageManifest), PullError> {
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
                return Ok((import.digest, manifest));
            }
        }
        let key = sha256_hex(format!("{scope}\n{}", plan.source).as_bytes());
        let path = self.path("refs").join(format!("{key}.json"));
        if let Some(found) = self.fresh_resolution(&path)? {
            return Ok(found);
        }
        let _resolving = lock_async(
            self.path("locks").join(format!("ref-{key}.lock")),
            rustix::fs::FlockOperation::LockExclusive,
        )
        .await?;
        if let Some(found) = self.fresh_resolution(&path)? {
            return Ok(found);
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
        Ok((digest, manifest))
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
        name: &str,
    ) -> Result<(), PullError> {
        let dest = self.blob_path(&blob.digest)?;
        if dest.exists() {
            return Ok(());
        }
        let tmp = self.path("tmp").join(format!("blob-{}", nonce()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(io_error(format!("creating {}", tmp.display())))?;
        let pulled = self.client().pull_blob(source, blob, file).await;
        let verified = match pulled {
            Ok(()) => {
                let path = tmp.clone();
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
            let _ = std::fs::remove_file(&tmp);
            return Err(PullError(format!("image {name}: {e}")));
        }
        std::fs::rename(&tmp, &dest).map_err(io_error(format!("keeping {}", dest.display())))
    }

    /// Unpacks the image's layers into a fresh directory and renames it into place, so a half
    /// unpacked root is never seen. Returns the unpacker's notes.
    async fn unpack(
        &self,
        hex: &str,
        manifest: &OciImageManifest,
        pinned: bool,
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
        let record = ImageRecord {
            digest: format!("sha256:{hex}"),
            config: config.config.unwrap_or_default(),
            blobs: std::iter::once(&manifest.config)
                .chain(&manifest.layers)
                .map(|d| d.digest.clone())
                .collect(),
            bytes: 0,
            pinned,
        };
        let tmp = self.path("tmp");
        tokio::task::spawn_blocking(move || {
            let result = unpack_into(&work, &layers, &limits).and_then(|(bytes, notes)| {
                let record = ImageRecord { bytes, ..record };
                let json = serde_json::to_vec(&record).map_err(|e| PullError(e.to_string()))?;
                write_atomic(&tmp, &work.join("image.json"), &json)?;
                File::create(work.join("used")).map_err(io_error("marking the image used"))?;
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
            mkdirs(&extracted)?;
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
        let layout_blob = |digest: &str| -> Result<PathBuf, PullError> {
            let hex = check_digest(digest).map_err(PullError)?;
            let path = layout.join("blobs/sha256").join(hex);
            let actual = file_sha256(&path)?;
            if actual != hex {
                return Err(PullError(format!(
                    "{} does not match its digest",
                    path.display()
                )));
            }
            Ok(path)
        };
        let mut manifest = read_json(layout_blob(&digest)?)?;
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
            manifest = read_json(layout_blob(&digest)?)?;
        }
        let manifest: OciImageManifest = serde_json::from_value(manifest)
            .map_err(|e| PullError(format!("the image manifest: {e}")))?;
        let hex = check_digest(&digest).map_err(PullError)?.to_owned();
        let _making = lock_async(
            self.path("locks").join(format!("{hex}.lock")),
            rustix::fs::FlockOperation::LockExclusive,
        )
        .await?;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let dest = self.blob_path(&blob.digest)?;
            if !dest.exists() {
                let src = layout_blob(&blob.digest)?;
                let tmp = self.path("tmp").join(format!("blob-{}", nonce()));
                std::fs::copy(&src, &tmp)
                    .map_err(io_error(format!("copying {}", src.display())))?;
                std::fs::rename(&tmp, &dest).map_err(io_error("keeping a blob"))?;
            }
        }
        let tmp = self.path("tmp");
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| PullError(e.to_string()))?;
        write_atomic(
            &tmp,
            &self.path("manifests").join(format!("{hex}.json")),
            &manifest_bytes,
        )?;
        let existing = self.path("images").join(&hex);
        if existing.exists() {
            remove_tree(&existing).map_err(io_error("replacing the unpacked image"))?;
        }
        self.unpack(&hex, &manifest, true).await?;
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

/// What an oci-client error means for a user.
fn describe(e: &oci_client::errors::OciDistributionError) -> String {
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
    mkdirs(&rootfs)?;
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
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let stream = head.chain(file);
    let gzip = magic[..n].starts_with(&[0x1f, 0x8b]);
    let zstd = magic[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if gzip || media_type.ends_with("gzip") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(1 << 16, stream),
        )))
    } else if zstd || media_type.ends_with("zstd") {
        let decoder = ruzstd::decoding::StreamingDecoder::new(std::io::BufReader::new(stream))
            .map_err(|e| format!("not zstd: {e}"))?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 16, stream)))
    }
}

/// Temporaries older than this are left by a worker that was killed mid-pull.
const STALE_TEMPORARY: Duration = Duration::from_secs(6 * 3600);

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
        images.push(Entry { hex, record, used });
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
    let mut evicted = 0;
    let mut kept: Vec<&Entry> = Vec::new();
    let mut removed: Vec<&Entry> = Vec::new();
    for image in &images {
        let evictable = total > max && !image.record.pinned && keep != Some(image.hex.as_str());
        if evictable && evict_one(dir, &image.hex)? {
            total = total.saturating_sub(image.record.bytes);
            removed.push(image);
            evicted += 1;
        } else {
            kept.push(image);
        }
    }
    if removed.is_empty() {
        return Ok(0);
    }
    let needed: BTreeSet<&str> = kept
        .iter()
        .flat_map(|i| i.record.blobs.iter().map(String::as_str))
        .collect();
    for image in removed {
        for blob in &image.record.blobs {
            if !needed.contains(blob.as_str())
                && let Ok(hex) = check_digest(blob)
            {
                let _ = std::fs::remove_file(blob_dir.join(hex));
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
    remove_tree(&trash).map_err(io_error(format!("removing evicted {hex}")))?;
    Ok(true)
}
