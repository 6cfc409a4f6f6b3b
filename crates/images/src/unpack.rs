//! Applies OCI image layers (uncompressed tar streams) to a root directory without ever
//! touching anything outside it.
//!
//! Use an [`Unpacker`]: [`Unpacker::new`] with the root and the image's [`UnpackLimits`],
//! [`Unpacker::apply_layer`] once per layer, lowest first, then [`Unpacker::finish`], which
//! applies the recorded directory modes and returns the [`LayerStats`] of the whole image.
//! The root is assumed to be ours alone while unpacking: nothing else writes into it.
//!
//! **Refused** (the whole unpack fails), because no honest image needs them and accepting
//! them would mean guessing what was meant:
//! - an entry path, hard-link target or whiteout name with a `..` component;
//! - a parent directory that resolves to a non-directory, or needs more than
//!   [`MAX_SYMLINK_HOPS`] symlinks to resolve;
//! - a hard link whose target is missing or is a directory;
//! - an image over its byte or entry limit, or a layer stream far larger than those limits
//!   allow (so a decompression bomb stops early: a file's size is checked before its data
//!   is read).
//!
//! **Neutralised** (unpacking goes on, with a note in [`LayerStats::notes`]):
//! - a leading `/` or `./` is stripped, so `/etc/x` lands at `root/etc/x`;
//! - parent directories are resolved inside the root, as container runtimes do: a symlink
//!   met on the way is followed with `/` meaning the root and `..` clamped at the root, so
//!   `evil -> /etc` then `evil/passwd` writes `root/etc/passwd`. The last component of a
//!   path is never followed: what is there is removed and the entry created afresh;
//! - symlinks are created verbatim, whatever their target: they only ever resolve inside
//!   the sandbox whose `/` is the root, and unpacking itself follows them only as above;
//! - device nodes, FIFOs and unknown entry types are skipped; setuid, setgid and sticky
//!   bits are dropped; ownership is ignored (all belongs to the unpacking user).
//!
//! Whiteouts follow the OCI image spec: `dir/.wh.name` removes `dir/name` of the lower
//! layers, `dir/.wh..wh..opq` removes everything in `dir` that the lower layers put there.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::EntryType;

/// Symlinks followed while resolving one path, as Linux's own limit.
pub const MAX_SYMLINK_HOPS: u32 = 40;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Directories stay owner-writable until [`Unpacker::finish`], so later entries fit in.
const WORKING_DIR_MODE: u32 = 0o755;
/// Tar overhead allowed per entry (header, padding, PAX and long-name records) and per
/// layer, on top of the file bytes, before the stream itself counts as too large.
const STREAM_BYTES_PER_ENTRY: u64 = 8 * 1024;
const STREAM_SLACK: u64 = 1024 * 1024;

/// Limits on what one image may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Regular-file bytes (as the tar headers state them) over all layers.
    pub max_bytes: u64,
    /// Tar entries over all layers, skipped ones and whiteouts included.
    pub max_entries: u64,
}

/// What unpacking did: regular-file bytes written, entries processed, and notes about
/// neutralised entries (e.g. "skipped device node dev/sda").
#[derive(Debug, Default, Clone)]
pub struct LayerStats {
    pub bytes: u64,
    pub entries: u64,
    pub notes: Vec<String>,
    /// Notes beyond `MAX_NOTES`, counted only.
    pub notes_dropped: u64,
}

/// Notes kept per image: a layer of a million device nodes must not become a million log lines.
pub const MAX_NOTES: usize = 50;

/// A note cut to 300 characters: entry names (up to the metadata budget) are the image author's.
pub fn shorten(note: &str) -> String {
    let mut short: String = note.chars().take(300).collect();
    if short.len() < note.len() {
        short.push('…');
    }
    short
}

/// The mode bits kept on unpacked files and directories. Roots are shared by every workspace's
/// tasks and live on the host: nobody but the cache's owner may change them, so group and
/// other write bits go with setuid, setgid and sticky.
const SHARED_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("a layer entry's headers and long-name or PAX records exceed {limit} bytes")]
    MetadataTooLarge { limit: u64 },
    #[error("layer entry {path} escapes the image root")]
    Escapes { path: String },
    #[error("layer entry {path} is a hard link to {target}, which escapes the image root")]
    LinkEscapes { path: String, target: String },
    #[error("layer entry {path} is a hard link to {target}, which {problem}")]
    BadHardLink {
        path: String,
        target: String,
        problem: &'static str,
    },
    #[error("layer entry {path} is a link without a target")]
    MissingLinkTarget { path: String },
    #[error("layer entry {path}: more than {MAX_SYMLINK_HOPS} symlinks in its parent directories")]
    TooManySymlinks { path: String },
    #[error("layer entry {path}: its parent {parent} is not a directory")]
    NotADirectory { path: String, parent: String },
    #[error("layer entry {path} exceeds the image's limit of {limit} {what}")]
    LimitExceeded {
        path: String,
        what: &'static str,
        limit: u64,
    },
    #[error("the layer tar stream is longer than the image's limits allow ({limit} bytes)")]
    StreamTooLarge { limit: u64 },
    #[error("layer entry {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the layer tar stream: {0}")]
    Tar(#[source] io::Error),
}

fn io_err(path: &str) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Unpacks the layers of one image into a root directory; see the module docs.
#[derive(Debug)]
pub struct Unpacker {
    root: PathBuf,
    limits: UnpackLimits,
    stats: LayerStats,
    /// Modes of directory entries, by resolved path relative to the root.
    dir_modes: HashMap<PathBuf, u32>,
}

/// Paths (resolved, relative to the root) that the layer being applied created, with their
/// ancestors: an opaque whiteout keeps these, whatever their order in the tar.
#[derive(Default)]
struct LayerState {
    kept: HashSet<PathBuf>,
}

impl LayerState {
    fn record(&mut self, rel: &Path) {
        for path in rel.ancestors() {
            if !self.kept.insert(path.to_path_buf()) {
                break; // its ancestors are in already
            }
        }
    }
}

impl Unpacker {
    /// `root` must be an existing directory; it may already hold files.
    pub fn new(root: &Path, limits: UnpackLimits) -> Result<Self, UnpackError> {
        let shown = root.display().to_string();
        if !fs::metadata(root).map_err(io_err(&shown))?.is_dir() {
            let source = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
            return Err(io_err(&shown)(source));
        }
        Ok(Self {
            root: root.to_path_buf(),
            limits,
            stats: LayerStats::default(),
            dir_modes: HashMap::new(),
        })
    }

    /// What the layers applied so far used.
    pub fn stats(&self) -> &LayerStats {
        &self.stats
    }

    /// Applies one uncompressed layer tar stream on top of the layers applied before. The
    /// stream is read to its end (so a digesting reader around it sees every byte). After an
    /// error the root is half-unpacked and should be discarded.
    pub fn apply_layer(&mut self, layer: impl Read) -> Result<(), UnpackError> {
        let remaining_bytes = self.limits.max_bytes.saturating_sub(self.stats.bytes);
        let remaining_entries = self.limits.max_entries.saturating_sub(self.stats.entries);
        let limit = remaining_entries
            .saturating_mul(STREAM_BYTES_PER_ENTRY)
            .saturating_add(remaining_bytes)
            .saturating_add(STREAM_SLACK);
        let mut stream = Capped {
            inner: layer,
            left: limit,
            exceeded: false,
        };
        let applied = self.apply_entries(&mut stream).and_then(|()| {
            io::copy(&mut stream, &mut io::sink())
                .map(drop)
                .map_err(UnpackError::Tar)
        });
        if stream.exceeded {
            return Err(UnpackError::StreamTooLarge { limit });
        }
        applied
    }

    /// Applies the recorded directory modes, deepest first (so a parent's mode cannot stop
    /// us reaching its children), and returns what the whole image used.
    pub fn finish(self) -> Result<LayerStats, UnpackError> {
        let mut dirs: Vec<(PathBuf, u32)> = self.dir_modes.into_iter().collect();
        dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (rel, mode) in dirs {
            let shown = rel.display().to_string();
            // A later layer may have swapped the dir or a parent for a symlink: never chmod
            // through one.
            if is_plain_dir(&self.root, &rel).map_err(io_err(&shown))? {
                fs::set_permissions(self.root.join(&rel), Permissions::from_mode(mode))
                    .map_err(io_err(&shown))?;
            }
        }
        let mut stats = self.stats;
        if stats.notes_dropped > 0 {
            stats.notes.push(format!(
                "and {} more entries like these",
                stats.notes_dropped
            ));
        }
        Ok(stats)
    }

    fn apply_entries<R: Read>(&mut self, stream: &mut R) -> Result<(), UnpackError> {
        let budget = std::rc::Rc::new(std::cell::Cell::new(None));
        let spent = std::rc::Rc::new(std::cell::Cell::new(false));
        let mut archive = tar::Archive::new(Budgeted {
            inner: stream,
            budget: budget.clone(),
            spent: spent.clone(),
        });
        let mut entries = archive.entries().map_err(UnpackError::Tar)?;
        let mut layer = LayerState::default();
        loop {
            // Everything the tar crate reads to find the next entry is within the budget: each
            // entry's data was read to its end below, so only headers and records remain.
            budget.set(Some(MAX_METADATA_BYTES));
            let next = entries.next();
            budget.set(None);
            let Some(entry) = next else {
                return Ok(());
            };
            let mut entry = entry.map_err(|e| {
                if spent.get() {
                    UnpackError::MetadataTooLarge {
                        limit: MAX_METADATA_BYTES,
                    }
                } else {
                    UnpackError::Tar(e)
                }
            })?;
            self.apply_entry(&mut entry, &mut layer)?;
            // What the entry did not use (a skipped device's data, say) is read here, outside
            // the budget; the stream's own cap bounds it.
            io::copy(&mut entry, &mut io::sink()).map_err(UnpackError::Tar)?;
        }
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        layer: &mut LayerState,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(()); // metadata for the archive, not a file
        }
        let raw = entry.path().map_err(UnpackError::Tar)?.into_owned();
        let shown = raw.display().to_string();
        if self.stats.entries >= self.limits.max_entries {
            return Err(UnpackError::LimitExceeded {
                path: shown,
                what: "entries",
                limit: self.limits.max_entries,
            });
        }
        self.stats.entries += 1;
        let Some(rel) = sanitize(&raw).ok_or_else(|| UnpackError::Escapes {
            path: shown.clone(),
        })?
        else {
            return Ok(()); // "" or ".": the root itself, which is not ours to change
        };
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            return Ok(());
        };
        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(parent, name, hidden, &rel, &shown, layer);
        }
        let header_mode = || entry.header().mode().map_err(io_err(&shown));
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // Checked before any data is read, so a bomb stops at its first big file.
                let size = entry.size();
                let total = self.stats.bytes.checked_add(size);
                if total.is_none_or(|total| total > self.limits.max_bytes) {
                    return Err(UnpackError::LimitExceeded {
                        path: shown,
                        what: "bytes",
                        limit: self.limits.max_bytes,
                    });
                }
                let mode = header_mode()?;
                let target = self.target(parent, name, &shown)?;
                self.clear(&target, false, &shown)?;
                // O_EXCL and O_NOFOLLOW: never write through whatever might be there.
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(self.root.join(&target))
                    .map_err(io_err(&shown))?;
                io::copy(entry, &mut file).map_err(io_err(&shown))?;
                file.set_permissions(Permissions::from_mode(mode & SHARED_MODE))
                    .map_err(io_err(&shown))?;
                let mtime = entry.header().mtime().ok().map(Duration::from_secs);
                if let Some(mtime) = mtime.and_then(|t| SystemTime::UNIX_EPOCH.checked_add(t)) {
                    file.set_modified(mtime).map_err(io_err(&shown))?;
                }
                self.stats.bytes += size;
                let dropped = match (mode & 0o4000 != 0, mode & 0o2000 != 0) {
                    (true, true) => Some("setuid and setgid bits"),
                    (true, false) => Some("setuid bit"),
                    (false, true) => Some("setgid bit"),
                    (false, false) => None,
                };
                if let Some(dropped) = dropped {
                    self.note(format!("dropped {dropped} on {}", rel.display()));
                }
                layer.record(&target);
            }
            EntryType::Directory => {
                let mode = header_mode()?;
                let target = self.target(parent, name, &shown)?;
                if !self.clear(&target, true, &shown)? {
                    make_dir(&self.root.join(&target)).map_err(io_err(&shown))?;
                }
                self.dir_modes.insert(target.clone(), mode & SHARED_MODE);
                layer.record(&target);
            }
            EntryType::Symlink => {
                let link = self.link_name(entry, &shown)?;
                let target = self.target(parent, name, &shown)?;
                self.clear(&target, false, &shown)?;
                std::os::unix::fs::symlink(&link, self.root.join(&target))
                    .map_err(io_err(&shown))?;
                layer.record(&target);
            }
            EntryType::Link => {
                let link = self.link_name(entry, &shown)?;
                let source = self.hard_link_source(&link, &shown)?;
                let target = self.target(parent, name, &shown)?;
                if target != source {
                    self.clear(&target, false, &shown)?;
                    fs::hard_link(self.root.join(&source), self.root.join(&target))
                        .map_err(io_err(&shown))?;
                }
                layer.record(&target);
            }
            EntryType::Char | EntryType::Block => {
                self.note(format!("skipped device node {}", rel.display()));
            }
            EntryType::Fifo => self.note(format!("skipped fifo {}", rel.display())),
            other => self.note(format!("skipped {other:?} entry {}", rel.display())),
        }
        Ok(())
    }

    /// `parent/.wh.hidden`: removes `parent/hidden` or, for the opaque marker, everything in
    /// `parent`, as far as it came from lower layers.
    fn whiteout(
        &mut self,
        parent: &Path,
        name: &OsStr,
        hidden: &[u8],
        rel: &Path,
        shown: &str,
        layer: &LayerState,
    ) -> Result<(), UnpackError> {
        if hidden == b".." {
            return Err(UnpackError::Escapes {
                path: shown.to_owned(),
            });
        }
        let opaque = name.as_bytes() == OPAQUE_MARKER;
        if !opaque && (hidden.is_empty() || hidden == b"." || hidden.starts_with(WHITEOUT_PREFIX)) {
            self.note(format!("skipped whiteout metadata {}", rel.display()));
            return Ok(());
        }
        let Some(dir) = self.resolve_dir(parent, false, shown)? else {
            return Ok(()); // nothing below to hide
        };
        if opaque {
            return self.prune(&dir, layer, shown);
        }
        let victim = dir.join(OsStr::from_bytes(hidden));
        if !layer.kept.contains(&victim) {
            self.clear(&victim, false, shown).map(drop)
        } else if is_plain_dir(&self.root, &victim).map_err(io_err(shown))? {
            // This layer wrote below it too: hide only what lower layers put there.
            self.prune(&victim, layer, shown)
        } else {
            Ok(())
        }
    }

    /// Removes everything in `dir` (a real directory) that the current layer did not write.
    fn prune(&mut self, dir: &Path, layer: &LayerState, shown: &str) -> Result<(), UnpackError> {
        // Listed first: removing while reading a directory may skip entries.
        let names = fs::read_dir(self.root.join(dir))
            .and_then(|children| {
                children
                    .map(|c| c.map(|c| c.file_name()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(io_err(shown))?;
        for name in names {
            let child = dir.join(name);
            if !layer.kept.contains(&child) {
                self.clear(&child, false, shown)?;
            } else if is_plain_dir(&self.root, &child).map_err(io_err(shown))? {
                self.prune(&child, layer, shown)?;
            }
        }
        Ok(())
    }

    /// Removes what is at `rel` without following it, unless both it and the new entry are
    /// directories (`keep_dir`): then returns true and leaves it.
    fn clear(&mut self, rel: &Path, keep_dir: bool, shown: &str) -> Result<bool, UnpackError> {
        let abs = self.root.join(rel);
        let removed = match fs::symlink_metadata(&abs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok(meta) if meta.is_dir() && keep_dir => return Ok(true),
            Ok(meta) if meta.is_dir() => {
                self.dir_modes.retain(|path, _| !path.starts_with(rel));
                fs::remove_dir_all(&abs) // does not follow symlinks inside
            }
            Ok(_) => fs::remove_file(&abs),
        };
        removed.map(|()| false).map_err(io_err(shown))
    }

    /// The resolved path (relative to the root) at which to create the entry `parent/name`;
    /// missing parent directories are created.
    fn target(&self, parent: &Path, name: &OsStr, shown: &str) -> Result<PathBuf, UnpackError> {
        match self.resolve_dir(parent, true, shown)? {
            Some(dir) => Ok(dir.join(name)),
            None => Err(io_err(shown)(io::ErrorKind::NotFound.into())),
        }
    }

    /// Resolves the directory `dir` (sanitised, relative) inside the root, following
    /// symlinks with `/` meaning the root and `..` clamped at it. Returns the resolved path
    /// relative to the root, or None if a component is missing and `create` is false.
    fn resolve_dir(
        &self,
        dir: &Path,
        create: bool,
        shown: &str,
    ) -> Result<Option<PathBuf>, UnpackError> {
        let mut resolved = PathBuf::new();
        let mut pending: VecDeque<OsString> = components(dir).collect();
        let mut hops = 0;
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                resolved.pop(); // at the root this does nothing: the clamp
                continue;
            }
            let candidate = resolved.join(&name);
            let abs = self.root.join(&candidate);
            match fs::symlink_metadata(&abs) {
                Ok(meta) if meta.is_dir() => resolved = candidate,
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(UnpackError::TooManySymlinks {
                            path: shown.to_owned(),
                        });
                    }
                    let link = fs::read_link(&abs).map_err(io_err(shown))?;
                    if link.is_absolute() {
                        resolved = PathBuf::new();
                    }
                    let rest = std::mem::take(&mut pending);
                    pending = components(&link).chain(rest).collect();
                }
                Ok(_) => {
                    return Err(UnpackError::NotADirectory {
                        path: shown.to_owned(),
                        parent: candidate.display().to_string(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    make_dir(&abs).map_err(io_err(shown))?;
                    resolved = candidate;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(shown)(e)),
            }
        }
        Ok(Some(resolved))
    }

    /// Resolves a hard link's target inside the root (its last component not followed); it
    /// must exist and not be a directory.
    fn hard_link_source(&self, link: &Path, shown: &str) -> Result<PathBuf, UnpackError> {
        let problem = |problem| UnpackError::BadHardLink {
            path: shown.to_owned(),
            target: link.display().to_string(),
            problem,
        };
        let rel = sanitize(link).ok_or_else(|| UnpackError::LinkEscapes {
            path: shown.to_owned(),
            target: link.display().to_string(),
        })?;
        let Some(rel) = rel else {
            return Err(problem("is the image root"));
        };
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            return Err(problem("is the image root"));
        };
        let Some(dir) = self.resolve_dir(parent, false, shown)? else {
            return Err(problem("does not exist"));
        };
        let source = dir.join(name);
        match fs::symlink_metadata(self.root.join(&source)) {
            Ok(meta) if meta.is_dir() => Err(problem("is a directory")),
            Ok(_) => Ok(source),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(problem("does not exist")),
            Err(e) => Err(io_err(shown)(e)),
        }
    }

    fn link_name<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<PathBuf, UnpackError> {
        match entry.link_name().map_err(io_err(shown))? {
            Some(link) if !link.as_os_str().is_empty() => Ok(link.into_owned()),
            _ => Err(UnpackError::MissingLinkTarget {
                path: shown.to_owned(),
            }),
        }
    }

    /// Records a note for the task's system logs: the first `MAX_NOTES`, control characters
    /// (an entry's name is the image author's) shown escaped, then only a count.
    fn note(&mut self, note: String) {
        if self.stats.notes.len() < MAX_NOTES {
            self.stats
                .notes
                .push(shorten(&note.escape_default().to_string()));
        } else {
            self.stats.notes_dropped += 1;
        }
    }
}

/// The path relative to the root: leading `/` and `.` components dropped. None if it has a
/// `..` component; Some(None) if nothing is left.
fn sanitize(path: &Path) -> Option<Option<PathBuf>> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some((!clean.as_os_str().is_empty()).then_some(clean))
}

/// A path's components for resolution: names and `..`; `/` and `.` are handled by the caller
/// or mean nothing.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|component| match component {
        Component::Normal(name) => Some(name.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

fn make_dir(abs: &Path) -> io::Result<()> {
    DirBuilder::new().mode(WORKING_DIR_MODE).create(abs)?;
    // Not left to the umask: we must be able to create entries in it.
    fs::set_permissions(abs, Permissions::from_mode(WORKING_DIR_MODE))
}

/// Whether `root/rel` is a directory reached without passing through any symlink.
fn is_plain_dir(root: &Path, rel: &Path) -> io::Result<bool> {
    let mut abs = root.to_path_buf();
    for component in rel.components() {
        abs.push(component);
        match fs::symlink_metadata(&abs) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads at most `left` bytes; reading past them (if the stream goes on) is an error that
/// sets `exceeded`.
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            if self.inner.read(&mut [0u8; 1])? == 0 {
                return Ok(0);
            }
            self.exceeded = true;
            return Err(io::Error::other("the layer stream is longer than allowed"));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let read = self.inner.read(&mut buf[..want])?;
        self.left = self.left.saturating_sub(read as u64);
        Ok(read)
    }
}

/// The most a layer may read between one entry's data and the next: the next header and any
/// GNU long-name, long-link, PAX and sparse-extension records before it. The tar crate reads
/// those into memory whole, so without a bound a layer of a few MB of compressed zeros could
/// make the worker allocate gigabytes. Honest records are a few KiB.
pub const MAX_METADATA_BYTES: u64 = 3 << 20;

/// A layer stream with a byte budget that the unpacker sets while the tar crate looks for the
/// next entry, and lifts while the entry's own data is read (which the image's limits bound).
struct Budgeted<R> {
    inner: R,
    /// Bytes left; None: no budget now.
    budget: std::rc::Rc<std::cell::Cell<Option<u64>>>,
    spent: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.budget.get() else {
            return self.inner.read(buf);
        };
        if left == 0 {
            self.spent.set(true);
            return Err(io::Error::other("a layer's tar metadata is too large"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.budget.set(Some(left - n as u64));
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use tar::{Builder, Header};

    /// Builds a layer, writing names as raw header bytes: `tar::Builder` itself refuses to
    /// write the `..` and absolute paths these tests need.
    struct Layer(Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Self(Builder::new(Vec::new()))
        }
        fn entry(
            mut self,
            kind: EntryType,
            path: &str,
            mode: u32,
            link: &str,
            size: u64,
            data: &[u8],
        ) -> Self {
            let mut header = Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(size);
            header.set_mtime(1_700_000_000);
            let old = header.as_old_mut();
            old.name[..path.len()].copy_from_slice(path.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_cksum();
            self.0.append(&header, data).unwrap();
            self
        }
        fn file(self, path: &str, mode: u32, data: &[u8]) -> Self {
            self.entry(EntryType::Regular, path, mode, "", data.len() as u64, data)
        }
        fn dir(self, path: &str, mode: u32) -> Self {
            self.entry(EntryType::Directory, path, mode, "", 0, b"")
        }
        fn symlink(self, path: &str, target: &str) -> Self {
            self.entry(EntryType::Symlink, path, 0o777, target, 0, b"")
        }
        fn hardlink(self, path: &str, target: &str) -> Self {
            self.entry(EntryType::Link, path, 0o644, target, 0, b"")
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    /// A base dir holding `root` (the image root) and `outside` (a stand-in for the host).
    struct Fixture {
        _base: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        Fixture {
            _base: base,
            root,
            outside,
        }
    }

    const LIMITS: UnpackLimits = UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 1000,
    };

    fn unpack_with(
        root: &Path,
        limits: UnpackLimits,
        layers: Vec<Layer>,
    ) -> Result<LayerStats, UnpackError> {
        let mut unpacker = Unpacker::new(root, limits)?;
        for layer in layers {
            unpacker.apply_layer(layer.bytes().as_slice())?;
        }
        unpacker.finish()
    }

    fn unpack(root: &Path, layers: Vec<Layer>) -> Result<LayerStats, UnpackError> {
        unpack_with(root, LIMITS, layers)
    }

    /// Where an absolute host path lands when resolved inside the root.
    fn inside(root: &Path, abs: &Path) -> PathBuf {
        root.join(abs.strip_prefix("/").unwrap())
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("a".to_owned()),
                Just("a/b".to_owned()),
                Just("./a/c".to_owned()),
                Just("link".to_owned()),
                Just("link/x".to_owned()),
                Just("link/../y".to_owned()),
                Just("../x".to_owned()),
                Just("/abs".to_owned()),
                Just("a/../../x".to_owned()),
                Just("dir/".to_owned()),
                Just(".".to_owned()),
                Just(".wh.a".to_owned()),
                Just("a/.wh..wh..opq".to_owned()),
                "[a-z./]{1,12}",
            ]
        }

        fn target() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("/".to_owned()),
                Just("..".to_owned()),
                Just("../outside".to_owned()),
                Just("../../outside/f".to_owned()),
                Just("a".to_owned()),
                Just("link".to_owned()),
                Just("/etc/passwd".to_owned()),
                "[a-z./]{0,12}",
            ]
        }

        fn layer() -> impl Strategy<Value = Vec<(u8, String, String)>> {
            vec((0u8..4, name(), target()), 0..8)
        }

        fn build(entries: &[(u8, String, String)]) -> Layer {
            entries
                .iter()
                .fold(Layer::new(), |layer, (kind, path, target)| match kind {
                    0 => layer.file(path, 0o644, b"data"),
                    1 => layer.dir(path, 0o755),
                    2 => layer.symlink(path, target),
                    _ => layer.hardlink(path, target),
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn no_layer_writes_outside_its_root(first in layer(), second in layer()) {
                let f = fixture();
                let _ = unpack(&f.root, vec![build(&first), build(&second)]);
                let base = f.root.parent().unwrap();
                let mut names: Vec<String> = fs::read_dir(base)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                prop_assert_eq!(names, ["outside", "root"]);
                prop_assert_eq!(fs::read_dir(&f.outside).unwrap().count(), 0);
            }

            #[test]
            fn arbitrary_bytes_are_an_error_or_a_layer_never_a_panic(
                bytes in vec(any::<u8>(), 0..3000),
            ) {
                let f = fixture();
                let mut unpacker = Unpacker::new(&f.root, LIMITS).unwrap();
                let _ = unpacker.apply_layer(bytes.as_slice());
                prop_assert_eq!(fs::read_dir(&f.outside).unwrap().count(), 0);
            }
        }
    }

    #[test]
    fn normal_layer_applies() {
        let f = fixture();
        let layer = Layer::new()
            .dir("./usr/", 0o750)
            .dir("usr/bin", 0o755)
            .file("usr/bin/tool", 0o755, b"#!/bin/sh\n")
            .file("./etc/conf", 0o640, b"key=value\n")
            .symlink("usr/bin/alias", "tool")
            .hardlink("usr/bin/tool2", "usr/bin/tool")
            .dir(".", 0o700);
        let stats = unpack(&f.root, vec![layer]).unwrap();
        let root = &f.root;
        assert_eq!(fs::read(root.join("etc/conf")).unwrap(), b"key=value\n");
        assert_eq!(mode(&root.join("etc/conf")), 0o640);
        assert_eq!(
            mode(&root.join("etc")),
            0o755,
            "an implicit parent gets 0755"
        );
        assert_eq!(mode(&root.join("usr")), 0o750);
        assert_eq!(mode(&root.join("usr/bin/tool")), 0o755);
        assert_eq!(
            fs::read_link(root.join("usr/bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            fs::read(root.join("usr/bin/alias")).unwrap(),
            b"#!/bin/sh\n"
        );
        let tool = fs::metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!(
            tool.ino(),
            fs::metadata(root.join("usr/bin/tool2")).unwrap().ino()
        );
        assert_eq!(tool.mtime(), 1_700_000_000);
        assert_eq!((stats.bytes, stats.entries), (20, 7));
        assert!(stats.notes.is_empty(), "{:?}", stats.notes);
    }

    #[test]
    fn long_names_from_gnu_extension_records_apply() {
        let f = fixture();
        let long = format!("{}/file", "d".repeat(150));
        let mut builder = Builder::new(Vec::new());
        let mut header = Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(2);
        builder.append_data(&mut header, &long, &b"hi"[..]).unwrap();
        let mut unpacker = Unpacker::new(&f.root, LIMITS).unwrap();
        unpacker
            .apply_layer(builder.into_inner().unwrap().as_slice())
            .unwrap();
        assert_eq!(unpacker.finish().unwrap().entries, 1);
        assert_eq!(fs::read(f.root.join(long)).unwrap(), b"hi");
    }

    /// Hands out its bytes a few at a time, as a slow decompressor might.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(7);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn long_names_and_pax_records_read_in_small_pieces_still_apply() {
        let f = fixture();
        let long = format!("{}/{}/file", "e".repeat(150), "f".repeat(150));
        let mut builder = Builder::new(Vec::new());
        let mut header = Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(3);
        builder
            .append_data(&mut header, &long, &b"abc"[..])
            .unwrap();
        builder
            .append_pax_extensions([("comment", "x".repeat(2000).as_bytes())])
            .unwrap();
        let mut header = Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(1);
        builder
            .append_data(&mut header, "after-pax", &b"z"[..])
            .unwrap();
        let bytes = builder.into_inner().unwrap();
        let mut unpacker = Unpacker::new(&f.root, LIMITS).unwrap();
        unpacker.apply_layer(Trickle(&bytes)).unwrap();
        unpacker.finish().unwrap();
        assert_eq!(fs::read(f.root.join(long)).unwrap(), b"abc");
        assert_eq!(fs::read(f.root.join("after-pax")).unwrap(), b"z");
    }

    #[test]
    fn a_huge_pax_record_is_refused_before_it_is_buffered() {
        let f = fixture();
        let mut builder = Builder::new(Vec::new());
        let huge = "y".repeat(usize::try_from(MAX_METADATA_BYTES).unwrap() + 1);
        builder
            .append_pax_extensions([("comment", huge.as_bytes())])
            .unwrap();
        let mut header = Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(1);
        builder
            .append_data(&mut header, "victim", &b"z"[..])
            .unwrap();
        let bytes = builder.into_inner().unwrap();
        let limits = UnpackLimits {
            max_bytes: 1 << 40,
            max_entries: 1_000_000,
        };
        let mut unpacker = Unpacker::new(&f.root, limits).unwrap();
        let err = unpacker.apply_layer(Trickle(&bytes)).unwrap_err();
        assert!(matches!(err, UnpackError::MetadataTooLarge { .. }), "{err}");
        assert!(!f.root.join("victim").exists());
    }

    #[test]
    fn setuid_and_setgid_are_dropped_with_a_note() {
        let f = fixture();
        let layer =
            Layer::new()
                .file("usr/bin/passwd", 0o4755, b"x")
                .file("usr/bin/wall", 0o2755, b"y");
        let stats = unpack(&f.root, vec![layer]).unwrap();
        assert_eq!(mode(&f.root.join("usr/bin/passwd")), 0o755);
        assert_eq!(mode(&f.root.join("usr/bin/wall")), 0o755);
        assert_eq!(
            stats.notes,
            [
                "dropped setuid bit on usr/bin/passwd",
                "dropped setgid bit on usr/bin/wall"
            ]
        );
    }

    #[test]
    fn devices_and_fifos_are_skipped_with_a_note() {
        let f = fixture();
        let layer = Layer::new()
            .entry(EntryType::Char, "dev/null", 0o666, "", 0, b"")
            .entry(EntryType::Block, "dev/sda", 0o660, "", 0, b"")
            .entry(EntryType::Fifo, "run/pipe", 0o600, "", 0, b"");
        let stats = unpack(&f.root, vec![layer]).unwrap();
        assert!(!f.root.join("dev/null").exists() && !f.root.join("dev/sda").exists());
        assert!(!f.root.join("run/pipe").exists());
        assert_eq!(
            stats.notes,
            [
                "skipped device node dev/null",
                "skipped device node dev/sda",
                "skipped fifo run/pipe"
            ]
        );
    }

    #[test]
    fn absolute_path_lands_inside_the_root() {
        let f = fixture();
        let abs = f.outside.join("x");
        let layer =
            Layer::new()
                .file("/etc/x", 0o644, b"in")
                .file(abs.to_str().unwrap(), 0o644, b"in");
        unpack(&f.root, vec![layer]).unwrap();
        assert_eq!(fs::read(f.root.join("etc/x")).unwrap(), b"in");
        assert_eq!(fs::read(inside(&f.root, &abs)).unwrap(), b"in");
        assert!(!abs.exists());
    }

    #[test]
    fn parent_dir_components_are_refused() {
        for path in ["../../etc/passwd", "a/../../outside/x", "../outside/x"] {
            let f = fixture();
            let err = unpack(&f.root, vec![Layer::new().file(path, 0o644, b"evil")]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("layer entry {path} escapes the image root")
            );
            assert!(!f.outside.join("x").exists());
        }
    }

    #[test]
    fn absolute_symlink_parent_resolves_inside_the_root() {
        let f = fixture();
        let host = f.outside.join("passwd");
        fs::write(&host, "host").unwrap();
        let layer = Layer::new()
            .symlink("evil", f.outside.to_str().unwrap())
            .file("evil/passwd", 0o644, b"image");
        unpack(&f.root, vec![layer]).unwrap();
        assert_eq!(fs::read(&host).unwrap(), b"host");
        assert_eq!(fs::read(inside(&f.root, &host)).unwrap(), b"image");
        // The symlink itself is kept verbatim.
        assert_eq!(fs::read_link(f.root.join("evil")).unwrap(), f.outside);
    }

    #[test]
    fn relative_escaping_symlink_parent_is_clamped_at_the_root() {
        let f = fixture();
        // From root/, "../outside" is the host's outside/ unless `..` is clamped.
        let deep = format!("../../../../../../..{}", f.outside.display());
        let layer = Layer::new()
            .symlink("evil", "../outside")
            .file("evil/x", 0o644, b"1")
            .symlink("sub/deep", &deep)
            .file("sub/deep/y", 0o644, b"2");
        unpack(&f.root, vec![layer]).unwrap();
        assert_eq!(fs::read(f.root.join("outside/x")).unwrap(), b"1");
        assert_eq!(
            fs::read(inside(&f.root, &f.outside).join("y")).unwrap(),
            b"2"
        );
        assert_eq!(fs::read_dir(&f.outside).unwrap().count(), 0);
    }

    #[test]
    fn symlink_loops_and_file_parents_are_refused() {
        let f = fixture();
        let layer = Layer::new()
            .symlink("a", "b")
            .symlink("b", "/a")
            .file("a/x", 0o644, b"");
        let err = unpack(&f.root, vec![layer]).unwrap_err();
        assert!(matches!(err, UnpackError::TooManySymlinks { .. }), "{err}");
        let f = fixture();
        let layer = Layer::new().file("f", 0o644, b"").file("f/x", 0o644, b"");
        let err = unpack(&f.root, vec![layer]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer entry f/x: its parent f is not a directory"
        );
    }

    #[test]
    fn at_most_forty_symlink_hops() {
        let f = fixture();
        let mut layer = Layer::new().dir("d", 0o755);
        for hop in 0..=MAX_SYMLINK_HOPS {
            let next = if hop == MAX_SYMLINK_HOPS {
                "d".to_owned()
            } else {
                format!("l{}", hop + 1)
            };
            layer = layer.symlink(&format!("l{hop}"), &next);
        }
        let ok = layer.file("l1/x", 0o644, b"");
        unpack(&f.root, vec![ok]).unwrap();
        assert!(f.root.join("d/x").exists());
        let err = unpack(&f.root, vec![Layer::new().file("l0/y", 0o644, b"")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer entry l0/y: more than 40 symlinks in its parent directories"
        );
    }

    #[test]
    fn hard_link_through_escaping_symlink_stays_inside() {
        let f = fixture();
        let host = f.outside.join("secret");
        fs::write(&host, "host").unwrap();
        let evil = Layer::new().symlink("evil", f.outside.to_str().unwrap());
        let err = unpack(&f.root, vec![evil.hardlink("h", "evil/secret")]).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::BadHardLink {
                    problem: "does not exist",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!f.root.join("h").exists());
        assert_eq!(fs::metadata(&host).unwrap().nlink(), 1);

        // With the file present at the clamped place, the link goes to the root's copy.
        let f2 = fixture();
        let clamped = inside(&f.root, &host);
        let layer = Layer::new()
            .symlink("evil", f.outside.to_str().unwrap())
            .file(
                clamped.strip_prefix(&f.root).unwrap().to_str().unwrap(),
                0o644,
                b"image",
            )
            .hardlink("h", "evil/secret");
        unpack(&f2.root, vec![layer]).unwrap();
        assert_eq!(fs::read(f2.root.join("h")).unwrap(), b"image");
        assert_eq!(fs::metadata(f2.root.join("h")).unwrap().nlink(), 2);
        assert_eq!(fs::metadata(&host).unwrap().nlink(), 1);
    }

    #[test]
    fn bad_hard_links_are_refused() {
        let f = fixture();
        let layer = Layer::new().file("x", 0o644, b"").hardlink("h", "../x");
        let err = unpack(&f.root, vec![layer]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer entry h is a hard link to ../x, which escapes the image root"
        );
        let layer = Layer::new().dir("d", 0o755).hardlink("h", "d");
        let err = unpack(&f.root, vec![layer]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer entry h is a hard link to d, which is a directory"
        );
    }

    fn whiteouts(opaque_first: bool) {
        let f = fixture();
        let lower = Layer::new()
            .file("a/keep", 0o644, b"")
            .file("a/gone", 0o644, b"")
            .file("b/x", 0o644, b"")
            .file("b/sub/old", 0o644, b"");
        let mut upper = Layer::new().file("a/.wh.gone", 0o644, b"");
        if opaque_first {
            upper = upper
                .file("b/.wh..wh..opq", 0o644, b"")
                .file("b/new", 0o644, b"")
                .dir("b/sub", 0o755);
        } else {
            upper = upper.file("b/new", 0o644, b"").dir("b/sub", 0o755).file(
                "b/.wh..wh..opq",
                0o644,
                b"",
            );
        }
        unpack(&f.root, vec![lower, upper]).unwrap();
        assert!(f.root.join("a/keep").exists());
        assert!(!f.root.join("a/gone").exists());
        assert!(!f.root.join("b/x").exists());
        assert!(f.root.join("b/new").exists());
        assert!(f.root.join("b/sub").is_dir());
        assert!(
            !f.root.join("b/sub/old").exists(),
            "opaque hides lower content of re-declared dirs too"
        );
        assert!(!f.root.join("a/.wh.gone").exists() && !f.root.join("b/.wh..wh..opq").exists());
    }

    #[test]
    fn whiteouts_with_opaque_marker_first() {
        whiteouts(true);
    }

    #[test]
    fn whiteouts_with_opaque_marker_after_new_entries() {
        whiteouts(false);
    }

    #[test]
    fn whiteout_follows_no_symlink_and_refuses_dot_dot() {
        let f = fixture();
        let host = f.outside.join("victim");
        fs::write(&host, "host").unwrap();
        let lower = Layer::new().symlink("link", f.outside.to_str().unwrap());
        let upper = Layer::new()
            .file("link/.wh.victim", 0o644, b"")
            .file(".wh.link", 0o644, b"");
        unpack(&f.root, vec![lower, upper]).unwrap();
        assert!(host.exists());
        assert!(fs::symlink_metadata(f.root.join("link")).is_err());
        let err = unpack(&f.root, vec![Layer::new().file("a/.wh...", 0o644, b"")]).unwrap_err();
        assert!(matches!(err, UnpackError::Escapes { .. }), "{err}");
    }

    #[test]
    fn limits_cover_the_whole_image() {
        let limits = UnpackLimits {
            max_bytes: 60,
            max_entries: 1000,
        };
        let f = fixture();
        let layers = vec![
            Layer::new().file("one", 0o644, &[1; 40]),
            Layer::new().file("two", 0o644, &[2; 40]),
        ];
        let err = unpack_with(&f.root, limits, layers).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer entry two exceeds the image's limit of 60 bytes"
        );
        assert!(
            !f.root.join("two").exists(),
            "checked before the file is created"
        );

        let limits = UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 2,
        };
        let layers = vec![
            Layer::new().dir("a", 0o755).dir("b", 0o755),
            Layer::new().dir("c", 0o755),
        ];
        let err = unpack_with(&f.root, limits, layers).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer entry c exceeds the image's limit of 2 entries"
        );
    }

    #[test]
    fn huge_file_is_refused_from_its_header_alone() {
        let f = fixture();
        // Claims a terabyte but carries no data: only the header is ever looked at.
        let layer = Layer::new().entry(EntryType::Regular, "bomb", 0o644, "", 1 << 40, b"");
        let err = unpack(&f.root, vec![layer]).unwrap_err();
        assert!(
            matches!(err, UnpackError::LimitExceeded { what: "bytes", .. }),
            "{err}"
        );
        assert!(!f.root.join("bomb").exists());
    }

    #[test]
    fn skipped_entries_data_counts_toward_the_stream_limit() {
        let f = fixture();
        let limits = UnpackLimits {
            max_bytes: 0,
            max_entries: 1,
        };
        let data = vec![0u8; 2 << 20];
        let layer = Layer::new().entry(
            EntryType::Char,
            "dev/zero",
            0o666,
            "",
            data.len() as u64,
            &data,
        );
        let err = unpack_with(&f.root, limits, vec![layer]).unwrap_err();
        assert!(matches!(err, UnpackError::StreamTooLarge { .. }), "{err}");
    }

    #[test]
    fn files_and_directories_replace_each_other() {
        let f = fixture();
        let lower = Layer::new().file("d/f", 0o644, b"").file("e", 0o644, b"");
        let upper = Layer::new()
            .file("d", 0o600, b"now a file")
            .dir("e", 0o711)
            .file("e/g", 0o644, b"");
        unpack(&f.root, vec![lower, upper]).unwrap();
        assert_eq!(fs::read(f.root.join("d")).unwrap(), b"now a file");
        assert_eq!(mode(&f.root.join("e")), 0o711);
        assert!(f.root.join("e/g").is_file());
    }

    #[test]
    fn existing_directory_is_kept_with_its_new_mode() {
        let f = fixture();
        let lower = Layer::new().dir("d", 0o755).file("d/f", 0o644, b"");
        let upper = Layer::new()
            .dir("d", 0o500)
            .dir("d/sub", 0o000)
            .file("d/sub/x", 0o644, b"");
        unpack(&f.root, vec![lower, upper]).unwrap();
        assert!(f.root.join("d/f").exists() && f.root.join("d/sub/x").exists());
        assert_eq!(mode(&f.root.join("d")), 0o500);
        assert_eq!(mode(&f.root.join("d/sub")), 0o000);
    }

    #[test]
    fn file_replacing_a_symlink_does_not_write_through_it() {
        let f = fixture();
        let host = f.outside.join("target");
        fs::write(&host, "host").unwrap();
        let lower = Layer::new().symlink("link", host.to_str().unwrap());
        let upper = Layer::new().file("link", 0o644, b"image");
        unpack(&f.root, vec![lower, upper]).unwrap();
        assert_eq!(fs::read(&host).unwrap(), b"host");
        let meta = fs::symlink_metadata(f.root.join("link")).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(fs::read(f.root.join("link")).unwrap(), b"image");
    }

    #[test]
    fn finish_never_chmods_through_a_later_symlink() {
        let f = fixture();
        fs::set_permissions(&f.outside, Permissions::from_mode(0o755)).unwrap();
        let lower = Layer::new().dir("d", 0o700);
        let upper = Layer::new()
            .file(".wh.d", 0o644, b"")
            .symlink("d", f.outside.to_str().unwrap());
        let upper2 = Layer::new()
            .dir("e/d2", 0o700)
            .file(".wh.e", 0o644, b"")
            .symlink("e", f.outside.to_str().unwrap());
        fs::create_dir(f.outside.join("d2")).unwrap();
        unpack(&f.root, vec![lower, upper, upper2]).unwrap();
        assert_eq!(mode(&f.outside), 0o755);
        assert_eq!(mode(&f.outside.join("d2")), 0o755);
        // Removal forgets the recorded modes; this check is the second line of defence.
        assert!(!is_plain_dir(&f.root, Path::new("e/d2")).unwrap());
        assert!(is_plain_dir(&f.root, Path::new("")).unwrap());
    }
}
