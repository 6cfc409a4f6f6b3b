//! Container images: the site's runtime and mirrors, each workspace's image policy (allowed
//! repositories, digest pinning, registry logins kept in workspace secrets), the check at task
//! creation, and what a task's worker needs to pull its images.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tresor_domain::task::TaskSpec;
use tresor_domain::{Action, Caller, WorkspaceId};
use tresor_executors::protocol::ImageDelivery;
pub use tresor_images::ImagePolicy;
use tresor_images::{CacheSettings, ImageName};
use tresor_store::{Store, TaskRecord};

use crate::ServiceError;
use crate::platform::{self, PlatformService};
use crate::secrets::SecretService;

/// Where executors run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRuntime {
    /// In their OCI image, pulled by the worker (the default).
    Oci,
    /// On the host's own `/usr`, the image recorded but not used; a site chooses it explicitly.
    Host,
}

impl ImageRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageRuntime::Oci => "oci",
            ImageRuntime::Host => "host",
        }
    }
}

/// The site's image settings (`[images]`).
#[derive(Debug, Clone)]
pub struct ImageSettings {
    pub runtime: ImageRuntime,
    /// Each host's cache: blobs and roots together, at most.
    pub max_cache_bytes: u64,
    /// The most one image may unpack to.
    pub max_image_bytes: u64,
    /// How long a workspace's resolution of a tag holds.
    pub tag_ttl_seconds: u64,
    /// Registries reached over plain HTTP.
    pub plain_http: Vec<String>,
    /// Registries on loopback, private or link-local addresses that tasks may name (besides
    /// those in `plain_http` and the mirrors'): the worker pulls on the host's network.
    pub private_registries: Vec<String>,
    /// Registry → `host[:port][/prefix]` it is pulled through.
    pub mirrors: BTreeMap<String, String>,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            runtime: ImageRuntime::Oci,
            max_cache_bytes: 20 << 30,
            max_image_bytes: 10 << 30,
            tag_ttl_seconds: 300,
            plain_http: Vec::new(),
            private_registries: Vec::new(),
            mirrors: BTreeMap::new(),
        }
    }
}

/// The image use cases; cheap to clone.
#[derive(Clone, Debug)]
pub struct ImageService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    platform: PlatformService,
    secrets: SecretService,
    settings: ImageSettings,
}

impl ImageService {
    pub fn new(
        store: Store,
        platform: PlatformService,
        secrets: SecretService,
        settings: ImageSettings,
    ) -> ImageService {
        ImageService {
            inner: Arc::new(Inner {
                store,
                platform,
                secrets,
                settings,
            }),
        }
    }

    pub fn runtime(&self) -> ImageRuntime {
        self.inner.settings.runtime
    }

    async fn stored_policy(&self, workspace: &WorkspaceId) -> Result<ImagePolicy, ServiceError> {
        match self.inner.store.workspace_image_policy(workspace).await? {
            None => Ok(ImagePolicy::default()),
            Some(json) => serde_json::from_str(&json).map_err(|e| {
                ServiceError::Internal(anyhow::anyhow!(
                    "the stored image policy of {workspace}: {e}"
                ))
            }),
        }
    }

    /// The caller's workspace's image policy.
    pub async fn policy(&self, caller: &Caller) -> Result<ImagePolicy, ServiceError> {
        self.inner
            .platform
            .require(
                caller,
                Action::Read,
                "workspace.image_policy.read",
                format!("workspace:{}", caller.workspace),
            )
            .await?;
        self.stored_policy(&caller.workspace).await
    }

    /// Replaces the caller's workspace's image policy. Every registry login it names must be a
    /// workspace secret already (user secrets are not registry logins: the workspace owns them).
    pub async fn set_policy(
        &self,
        caller: &Caller,
        policy: ImagePolicy,
    ) -> Result<(), ServiceError> {
        self.inner
            .platform
            .require(
                caller,
                Action::ManageImagePolicy,
                "workspace.image_policy",
                format!("workspace:{}", caller.workspace),
            )
            .await?;
        policy
            .validate()
            .map_err(|e| ServiceError::invalid("image_policy", e))?;
        for (registry, name) in &policy.credentials {
            if self
                .inner
                .secrets
                .open(&workspace_secret(&caller.workspace, name))
                .await?
                .is_none()
            {
                return Err(ServiceError::invalid(
                    "credentials",
                    format!(
                        "the login for {registry} names workspace secret {name}, which does not exist; create it first (its value is username:password)"
                    ),
                ));
            }
        }
        let json = serde_json::to_string(&policy).map_err(|e| ServiceError::Internal(e.into()))?;
        let mut event = platform::caller_event(
            caller,
            "workspace.image_policy",
            format!("workspace:{}", caller.workspace),
        );
        event.detail = Some(format!(
            "allowed={} require_digest={} logins={}",
            policy.allowed.len(),
            policy.require_digest,
            policy
                .credentials
                .iter()
                .map(|(r, s)| format!("{r}:{s}"))
                .collect::<Vec<_>>()
                .join(",")
        ));
        self.inner
            .store
            .set_workspace_image_policy(&caller.workspace, Some(&json), &event)
            .await?;
        Ok(())
    }

    /// Refuses, at creation, an executor image the workspace may not run (a 400 naming the
    /// executor and the rule). On a host runtime images are not run, so not checked.
    pub async fn check_task(
        &self,
        workspace: &WorkspaceId,
        spec: &TaskSpec,
    ) -> Result<(), ServiceError> {
        if self.runtime() == ImageRuntime::Host {
            return Ok(());
        }
        let policy = self.stored_policy(workspace).await?;
        for (index, executor) in spec.executors.iter().enumerate() {
            let field = format!("executors[{index}].image");
            let name = ImageName::parse(&executor.image)
                .map_err(|e| ServiceError::invalid(field.clone(), e))?;
            let registry = name
                .through(&self.inner.settings.mirrors)
                .registry()
                .to_owned();
            if on_private_address(&registry) && !self.site_registry(&registry) {
                return Err(ServiceError::invalid(
                    field,
                    format!(
                        "{} is on a loopback, private or link-local address, which the worker would reach on the host's network; a site administrator lists such registries in images.private_registries",
                        registry
                    ),
                ));
            }
            if let Some(rule) = policy.refusal(&name) {
                return Err(ServiceError::invalid(
                    field,
                    format!(
                        "{} is refused by the workspace's image policy: {rule}",
                        executor.image
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A registry the site configured: reached over plain HTTP, a mirror, or listed as private.
    fn site_registry(&self, registry: &str) -> bool {
        let settings = &self.inner.settings;
        settings.plain_http.iter().any(|r| r == registry)
            || settings.private_registries.iter().any(|r| r == registry)
            || settings
                .mirrors
                .values()
                .any(|m| m.split('/').next() == Some(registry))
    }

    /// What the task's worker needs to pull its executors' images into `cache_dir`; `None` on
    /// a host runtime.
    pub async fn delivery(
        &self,
        record: &TaskRecord,
        cache_dir: &Path,
    ) -> Result<Option<ImageDelivery>, ServiceError> {
        if self.runtime() == ImageRuntime::Host {
            return Ok(None);
        }
        let settings = &self.inner.settings;
        let pulls = self.pulls(&record.spec)?;
        let policy = self.stored_policy(&record.workspace).await?;
        // The policy may have changed while the task was queued: it holds when the task starts.
        for (index, executor) in record.spec.executors.iter().enumerate() {
            let name = ImageName::parse(&executor.image)
                .map_err(|e| ServiceError::invalid(format!("executors[{index}].image"), e))?;
            let registry = name
                .through(&self.inner.settings.mirrors)
                .registry()
                .to_owned();
            if on_private_address(&registry) && !self.site_registry(&registry) {
                return Err(ServiceError::Conflict(format!(
                    "executor {index}: {registry} is on a loopback, private or link-local address that the site no longer lists in images.private_registries"
                )));
            }
            if let Some(rule) = policy.refusal(&name) {
                return Err(ServiceError::Conflict(format!(
                    "executor {index}: {} is refused by the workspace's image policy, changed since the task was created: {rule}",
                    executor.image
                )));
            }
        }
        let logins = pulls
            .iter()
            .any(|p| policy.credentials.contains_key(&p.registry));
        Ok(Some(ImageDelivery {
            cache: CacheSettings {
                dir: cache_dir.to_owned(),
                max_bytes: settings.max_cache_bytes,
                max_image_bytes: settings.max_image_bytes,
                tag_ttl_seconds: settings.tag_ttl_seconds,
                plain_http: settings.plain_http.clone(),
            },
            workspace: record.workspace.to_string(),
            pulls,
            logins,
        }))
    }

    fn pulls(&self, spec: &TaskSpec) -> Result<Vec<tresor_images::PullPlan>, ServiceError> {
        spec.executors
            .iter()
            .enumerate()
            .map(|(index, e)| {
                ImageName::parse(&e.image)
                    .map(|name| name.plan(&self.inner.settings.mirrors))
                    .map_err(|why| ServiceError::invalid(format!("executors[{index}].image"), why))
            })
            .collect()
    }

    /// The registry logins a starting task's worker gets with its secrets: the workspace
    /// secrets its policy names for the registries its images are pulled from. Audited as
    /// deliveries of those secrets.
    pub async fn logins(
        &self,
        record: &TaskRecord,
        delivery: Option<&str>,
        repeat: bool,
    ) -> Result<Vec<(String, tresor_crypto::SecretValue)>, ServiceError> {
        if self.runtime() == ImageRuntime::Host {
            return Ok(Vec::new());
        }
        let policy = self.stored_policy(&record.workspace).await?;
        let registries: std::collections::BTreeSet<String> = self
            .pulls(&record.spec)?
            .into_iter()
            .map(|p| p.registry)
            .collect();
        let mut logins = Vec::new();
        let mut uses = Vec::new();
        for registry in registries {
            let Some(name) = policy.credentials.get(&registry) else {
                continue;
            };
            let key = workspace_secret(&record.workspace, name);
            let Some((version, value)) = self.inner.secrets.open(&key).await? else {
                return Err(ServiceError::Conflict(format!(
                    "the registry login for {registry} names workspace secret {name}, which no longer exists"
                )));
            };
            uses.push((key, version, value.clone()));
            logins.push((registry, value));
        }
        let recorded: Vec<_> = uses
            .iter()
            .map(|(k, v, value)| (k.clone(), *v, value))
            .collect();
        self.inner
            .secrets
            .record_deliveries(
                &recorded,
                record.id.as_str(),
                record.created_by.as_str(),
                delivery,
                repeat,
            )
            .await?;
        Ok(logins)
    }
}

/// Whether a registry (`host[:port]`) is `localhost` or an IP literal on a loopback, private,
/// link-local or unspecified address. Names are not resolved here.
fn on_private_address(registry: &str) -> bool {
    // The host as the worker's HTTP client will read it: the URL parser turns `127.1`,
    // `2130706433` and `0x7f000001` into 127.0.0.1, where Rust's address parser refuses them.
    let Ok(url) = url::Url::parse(&format!("https://{registry}/")) else {
        return false;
    };
    let ip = match url.host() {
        Some(url::Host::Domain(name)) => {
            return name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost");
        }
        Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
        None => return false,
    };
    tresor_domain::net::is_private_address(ip)
}

fn workspace_secret(workspace: &WorkspaceId, name: &str) -> tresor_store::SecretKey {
    tresor_store::SecretKey {
        workspace: workspace.clone(),
        owner: None,
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::on_private_address;

    #[test]
    fn registries_on_private_addresses_are_recognised() {
        for private in [
            "127.0.0.1:5000",
            "localhost:5000",
            "10.1.2.3",
            "192.168.0.1:443",
            "169.254.169.254",
            "[::1]:5000",
            "[fd00::1]",
            "0.0.0.0",
            "127.1:5000",
            "2130706433:5000",
            "0x7f000001",
            "0251.0376.0251.0376:80",
            "registry.localhost",
        ] {
            assert!(on_private_address(private), "{private}");
        }
        for public in [
            "docker.io",
            "registry.example.org:5000",
            "8.8.8.8",
            "[2001:db8::1]:443",
        ] {
            assert!(!on_private_address(public), "{public}");
        }
    }
}
