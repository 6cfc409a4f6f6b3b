//! Image names as researchers write them, a workspace's rules for which names it may run, and
//! the site's mirrors that decide where a name is really pulled from.

use std::collections::BTreeMap;

use oci_client::Reference;
use serde::{Deserialize, Serialize};

/// An OCI reference, normalised as Docker does: `alpine` is `docker.io/library/alpine:latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName(Reference);

impl ImageName {
    /// Parses what a task wrote in an executor's `image`.
    pub fn parse(written: &str) -> Result<ImageName, String> {
        if written.trim() != written || written.is_empty() {
            return Err("must be an image reference such as alpine:3.20 or registry.example.org/lab/tool@sha256:…, without spaces".to_owned());
        }
        let reference: Reference = written.parse().map_err(|e| {
            format!("{written:?} is not an image reference such as alpine:3.20 ({e})")
        })?;
        if let Some(digest) = reference.digest() {
            check_digest(digest)?;
        }
        Ok(ImageName(reference))
    }

    /// The whole normalised reference: `docker.io/library/alpine:3.20`.
    pub fn full(&self) -> String {
        self.0.whole()
    }

    /// `registry/repository`, without tag or digest: what policies match.
    pub fn repository_path(&self) -> String {
        format!("{}/{}", self.0.registry(), self.0.repository())
    }

    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// Whether the name pins a digest (`…@sha256:…`).
    pub fn is_pinned(&self) -> bool {
        self.0.digest().is_some()
    }

    pub(crate) fn reference(&self) -> &Reference {
        &self.0
    }

    /// The name as pulled through `mirrors`: the longest key that is `registry` or a path prefix
    /// of `registry/repository` (`docker.io`, `docker.io/library`) is replaced by its value
    /// (`host[:port][/path]`), so one table holds both mirrors and rewrites.
    pub fn through(&self, mirrors: &BTreeMap<String, String>) -> ImageName {
        let path = self.repository_path();
        let best = mirrors
            .iter()
            .filter(|(key, _)| path == **key || path.starts_with(&format!("{key}/")))
            .max_by_key(|(key, _)| key.len());
        let Some((key, target)) = best else {
            return self.clone();
        };
        let rewritten = format!("{}{}", target.trim_end_matches('/'), &path[key.len()..]);
        // A rewrite that leaves no repository is a configuration mistake: the name is kept.
        let Some((host, repository)) = rewritten.split_once('/') else {
            return self.clone();
        };
        let (host, repository) = (host.to_owned(), repository.to_owned());
        let reference = match (self.0.tag(), self.0.digest()) {
            (Some(tag), Some(digest)) => {
                Reference::with_tag_and_digest(host, repository, tag.to_owned(), digest.to_owned())
            }
            (None, Some(digest)) => Reference::with_digest(host, repository, digest.to_owned()),
            (tag, None) => {
                Reference::with_tag(host, repository, tag.unwrap_or("latest").to_owned())
            }
        };
        ImageName(reference)
    }

    /// Where to pull this name from, given the site's mirrors.
    pub fn plan(&self, mirrors: &BTreeMap<String, String>) -> PullPlan {
        let source = self.through(mirrors);
        PullPlan {
            name: self.full(),
            source: source.full(),
            registry: source.registry().to_owned(),
        }
    }
}

/// `*`, `registry/repository` or `registry/path/*`; only the registry may hold a `:` (its port).
fn valid_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let body = pattern.strip_suffix("/*").unwrap_or(pattern);
    let segments: Vec<&str> = body.split('/').collect();
    segments.len() >= 2
        && segments
            .iter()
            .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && !"*@".contains(c)))
        && segments[1..].iter().all(|s| !s.contains(':'))
}

/// Only `sha256:` and 64 lowercase hex digits: digests name files in the cache.
pub(crate) fn check_digest(digest: &str) -> Result<&str, String> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(hex)
        }
        _ => Err(format!(
            "digest {digest:?} is not sha256: followed by 64 lowercase hex digits"
        )),
    }
}

/// One executor's image as the worker pulls it: the name as written (normalised), and the
/// reference actually contacted after the site's mirrors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullPlan {
    pub name: String,
    pub source: String,
    /// The registry of `source`: what a workspace's registry credentials are keyed by.
    pub registry: String,
}

/// A workspace's rules for images, set by its owners and admins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePolicy {
    /// Repositories the workspace may run: `registry/repository` exactly, `registry/path/*` for
    /// everything below a path, or `*`. Empty: any.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// Whether every image must be pinned by digest (`…@sha256:…`).
    #[serde(default)]
    pub require_digest: bool,
    /// Registry (`host[:port]`, as contacted after mirrors) → the name of a workspace secret
    /// holding `username:password` for it.
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
}

/// Most entries in `allowed` and `credentials`.
const MAX_RULES: usize = 256;

impl ImagePolicy {
    /// Whether the policy is well formed; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.allowed.len() > MAX_RULES || self.credentials.len() > MAX_RULES {
            return Err(format!(
                "at most {MAX_RULES} allowed patterns and {MAX_RULES} credentials"
            ));
        }
        for pattern in &self.allowed {
            if !valid_pattern(pattern) {
                return Err(format!(
                    "allowed pattern {pattern:?} must be registry/repository, registry/path/* or *, such as docker.io/library/* (no tag or digest)"
                ));
            }
        }
        for (registry, secret) in &self.credentials {
            if registry.is_empty()
                || registry.contains(['/', '@', ' '].as_slice())
                || !registry.chars().all(|c| c.is_ascii_graphic())
            {
                return Err(format!(
                    "credentials key {registry:?} must be a registry host such as registry.example.org or 127.0.0.1:5000"
                ));
            }
            if secret.is_empty()
                || !secret
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                return Err(format!(
                    "credentials for {registry} must name a workspace secret, not {secret:?}"
                ));
            }
        }
        Ok(())
    }

    /// Why `name` may not run in the workspace, if it may not.
    pub fn refusal(&self, name: &ImageName) -> Option<String> {
        if self.require_digest && !name.is_pinned() {
            return Some(format!(
                "the workspace requires images pinned by digest; write {}@sha256:…",
                name.repository_path()
            ));
        }
        if self.allowed.is_empty() {
            return None;
        }
        let path = name.repository_path();
        let allowed = self.allowed.iter().any(|pattern| {
            pattern == "*"
                || match pattern.strip_suffix('*') {
                    Some(prefix) => path.starts_with(prefix),
                    None => *pattern == path,
                }
        });
        (!allowed).then(|| {
            format!(
                "{path} is not among the workspace's allowed images ({})",
                self.allowed.join(", ")
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn short_names_mean_docker_hub_library() {
        let name = ImageName::parse("alpine").unwrap();
        assert_eq!(name.full(), "docker.io/library/alpine:latest");
        assert_eq!(name.repository_path(), "docker.io/library/alpine");
        let pinned = ImageName::parse(&format!(
            "registry.example.org/lab/tool@sha256:{}",
            "a".repeat(64)
        ))
        .unwrap();
        assert!(pinned.is_pinned());
        assert_eq!(pinned.registry(), "registry.example.org");
        assert!(ImageName::parse("Alpine Linux").is_err());
        assert!(ImageName::parse("x@sha256:../../etc").is_err());
    }

    #[test]
    fn mirrors_rewrite_the_registry_and_keep_tag_and_digest() {
        let mirrors =
            BTreeMap::from([("docker.io".to_owned(), "127.0.0.1:5000/mirror".to_owned())]);
        let plan = ImageName::parse("alpine:3.20").unwrap().plan(&mirrors);
        assert_eq!(plan.name, "docker.io/library/alpine:3.20");
        assert_eq!(plan.source, "127.0.0.1:5000/mirror/library/alpine:3.20");
        assert_eq!(plan.registry, "127.0.0.1:5000");
        let other = ImageName::parse("quay.io/lab/x:1").unwrap().plan(&mirrors);
        assert_eq!(other.source, "quay.io/lab/x:1");
        // A rewrite of one path wins over the registry's mirror.
        let rewrites = BTreeMap::from([
            ("docker.io".to_owned(), "hub.example.org".to_owned()),
            (
                "docker.io/library".to_owned(),
                "127.0.0.1:5000/official".to_owned(),
            ),
        ]);
        let plan = ImageName::parse("ubuntu").unwrap().plan(&rewrites);
        assert_eq!(plan.source, "127.0.0.1:5000/official/ubuntu:latest");
        let plan = ImageName::parse(&format!("lab/tool@sha256:{}", "b".repeat(64)))
            .unwrap()
            .plan(&rewrites);
        assert_eq!(
            plan.source,
            format!("hub.example.org/lab/tool@sha256:{}", "b".repeat(64))
        );
        assert_eq!(plan.registry, "hub.example.org");
        // `docker.io/lib` is not a path prefix of `docker.io/library/…`.
        let partial = BTreeMap::from([("docker.io/lib".to_owned(), "x.org/y".to_owned())]);
        let plan = ImageName::parse("alpine").unwrap().plan(&partial);
        assert_eq!(plan.source, "docker.io/library/alpine:latest");
    }

    #[test]
    fn policies_allow_by_repository_and_can_require_digests() {
        let policy = ImagePolicy {
            allowed: vec![
                "127.0.0.1:5000/lab/*".to_owned(),
                "docker.io/library/alpine".to_owned(),
            ],
            ..Default::default()
        };
        policy.validate().unwrap();
        let refused = |s: &str| policy.refusal(&ImageName::parse(s).unwrap());
        assert_eq!(refused("alpine:3.20"), None);
        assert_eq!(refused("127.0.0.1:5000/lab/busybox:1"), None);
        assert!(refused("ubuntu").unwrap().contains("not among"));
        assert!(refused("127.0.0.1:5000/labx/busybox:1").is_some());
        let pinned = ImagePolicy {
            require_digest: true,
            ..Default::default()
        };
        assert!(
            pinned
                .refusal(&ImageName::parse("alpine").unwrap())
                .unwrap()
                .contains("pinned by digest")
        );
        for bad in [
            "alpine",
            "docker.io/library/alpine:3",
            "docker.io/*/x",
            "x/",
        ] {
            let policy = ImagePolicy {
                allowed: vec![bad.to_owned()],
                ..Default::default()
            };
            assert!(policy.validate().is_err(), "{bad}");
        }
        let policy = ImagePolicy {
            credentials: BTreeMap::from([("127.0.0.1:5001".to_owned(), "REG LOGIN".to_owned())]),
            ..Default::default()
        };
        assert!(policy.validate().is_err());
    }
}
