//! The composition root: opens the store and the key file, makes the executors, wires every
//! service together and starts the loops that keep running beside the requests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tresor_auth::client_credentials::ClientCredentials;
use tresor_auth::oidc::{OidcVerifier, TrustedIssuer};
use tresor_crypto::KeyRing;
use tresor_crypto::redact::SharedRedactor;
use tresor_executors::{LocalExecutor, LocalSettings, SlurmExecutor, SlurmSettings};
use tresor_store::{Store, StoreSettings};

use crate::preflight::Preflight;
use crate::runs::{RunService, WorkflowSettings};
use crate::{
    Executors, IdentityService, IdentitySettings, ImageService, ImageSettings, PlatformService,
    Rooms, S3Settings, SecretLimits, SecretService, ServiceSettings, StorageService, TaskService,
};

/// Everything the use cases need, resolved from configuration by the caller.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreSettings,
    pub local: LocalSettings,
    /// The task service's slice: page sizes, the organization, the server's own URL.
    pub tasks: ServiceSettings,
    /// Where the bootstrap admin's token is written on first start (0600).
    pub bootstrap_token_file: PathBuf,
    /// Identity providers whose JWTs are accepted.
    pub oidc_issuers: Vec<TrustedIssuer>,
    /// The key-encryption key file (created 0600 on first start).
    pub kek_file: PathBuf,
    /// How long deleted secrets are kept before they are purged.
    pub secret_retention: Duration,
    /// The redactor the process's log writer applies; kept loaded with every secret.
    pub log_redactor: SharedRedactor,
    /// How much secret material a workspace and a user may keep.
    pub secret_limits: SecretLimits,
    /// tresor as an OIDC issuer for its tasks. An empty issuer becomes `tasks.callback_url`.
    pub identity: IdentitySettings,
    /// Object storage (S3 or compatible), if configured.
    pub s3: Option<Arc<S3Settings>>,
    /// The server's own client credentials for outbound calls, if configured.
    pub outbound: Option<Arc<ClientCredentials>>,
    /// Compute environments of type `slurm`.
    pub slurm: Vec<SlurmSettings>,
    /// The image runtime, the nodes' image caches and the registry mirrors.
    pub images: ImageSettings,
    /// Workflow engines and the limits of a run's files.
    pub workflows: WorkflowSettings,
}

/// Every use case of a running server, wired to one store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Services {
    pub tasks: TaskService,
    pub platform: PlatformService,
    pub secrets: SecretService,
    pub identity: IdentityService,
    pub storage: StorageService,
    pub images: ImageService,
    pub runs: RunService,
    pub preflight: Preflight,
    pub metrics: crate::Metrics,
    /// Set when shutdown begins: the server is no longer ready for new work.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Kept to be closed at shutdown, after the last request.
    store: Store,
}

impl Services {
    /// Opens the store, bootstraps the first admin, opens (or creates) the key file, settles
    /// work left by a previous process and starts the scheduler and the background loops.
    /// Also returns the bootstrap admin's token file when this start created that admin.
    pub async fn open(settings: Settings) -> anyhow::Result<(Services, Option<PathBuf>)> {
        let store = Store::connect(&settings.store).await?;
        let metrics = crate::Metrics::new();
        let platform =
            PlatformService::new(store.clone(), OidcVerifier::new(settings.oidc_issuers)?);
        let bootstrap_token_file = platform.bootstrap(&settings.bootstrap_token_file).await?;
        let keys = open_key_file(&store, &settings.kek_file).await?;
        let secrets = SecretService::with_log_redactor(
            store.clone(),
            platform.clone(),
            keys,
            settings.log_redactor.clone(),
            settings.secret_limits,
        )
        .await?;
        tokio::spawn(purge_deleted_secrets(
            store.clone(),
            settings.secret_retention,
        ));
        let mut identity_settings = settings.identity;
        if identity_settings.issuer.is_empty() {
            identity_settings.issuer = settings.tasks.callback_url.trim_end_matches('/').to_owned();
        }
        let identity = IdentityService::new(store.clone(), secrets.clone(), identity_settings);
        identity.ensure_current_key().await?;
        tokio::spawn(crate::identity::rotate_on_schedule(identity.clone()));
        let storage = StorageService::new(
            store.clone(),
            settings.s3,
            settings.local.allowed_dirs.clone(),
        );
        let preflight = Preflight::new(
            identity.clone(),
            storage.clone(),
            settings.local.clone(),
            settings.outbound,
        );
        let images = ImageService::new(
            store.clone(),
            platform.clone(),
            secrets.clone(),
            settings.images,
        );
        let executor = LocalExecutor::new(settings.local)?;
        let slurm = settings
            .slurm
            .into_iter()
            .map(SlurmExecutor::new)
            .collect::<Result<Vec<_>, _>>()?;
        let tasks = TaskService::new(
            store.clone(),
            Rooms {
                platform: platform.clone(),
                secrets: secrets.clone(),
                identity: identity.clone(),
                storage: storage.clone(),
                images: images.clone(),
                metrics: metrics.clone(),
            },
            Executors {
                local: executor,
                slurm,
            },
            settings.tasks,
        )
        .await?;
        tasks.start().await?;
        let runs = RunService::new(store.clone(), tasks.clone(), settings.workflows);
        runs.start();
        Ok((
            Services {
                tasks,
                platform,
                secrets,
                identity,
                storage,
                images,
                runs,
                preflight,
                metrics,
                draining: Default::default(),
                store,
            },
            bootstrap_token_file,
        ))
    }

    /// Why the server cannot take work now, if it cannot: it is shutting down, or its database
    /// does not answer.
    pub async fn not_ready(&self) -> Option<String> {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("the server is shutting down".to_owned());
        }
        match tokio::time::timeout(Duration::from_secs(2), self.store.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("the database does not answer: {e}")),
            Err(_) => Some("the database did not answer within 2 s".to_owned()),
        }
    }

    /// Marks the start of shutdown (see `not_ready`).
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The metrics in the Prometheus text format, with the task counts read now.
    pub async fn metrics_text(&self) -> String {
        match self.store.task_counts().await {
            Ok(counts) => self.metrics.set_task_counts(&counts),
            Err(e) => tracing::warn!(error = %e, "counting tasks for the metrics"),
        }
        self.metrics.encode()
    }

    /// Closes the store; call once no request is left in flight.
    pub async fn close(&self) {
        self.store.close().await;
    }
}

/// The key file, created only for a database that holds nothing sealed yet. A database with
/// secrets or signing keys needs the file that holds every key-encryption key they are sealed
/// under: a new or different file would leave them unreadable, so the server does not start.
async fn open_key_file(store: &Store, path: &std::path::Path) -> anyhow::Result<KeyRing> {
    let sealed = store.sealed_kek_ids().await?;
    if !sealed.is_empty() && !path.exists() {
        anyhow::bail!(
            "no key file at {}, yet the database holds secrets or signing keys sealed under key-encryption key(s) {}: restore the key file that was in use when the database (or its backup) was written, or set kek_file / TRESOR_KEK_FILE to where it is; a new key file could not open them",
            path.display(),
            sealed.join(", ")
        );
    }
    let keys = KeyRing::open_or_create(path)?;
    let held = keys.key_ids();
    let missing: Vec<&String> = sealed.iter().filter(|id| !held.contains(id)).collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the key file {} lacks key-encryption key(s) {} that the database's secrets or signing keys are sealed under: it is not the file this database was written with; restore that file",
            path.display(),
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(keys)
}

/// Purges soft-deleted secrets past their retention: at start, then hourly.
async fn purge_deleted_secrets(store: Store, retention: Duration) {
    loop {
        match store
            .purge_deleted_secrets(time::OffsetDateTime::now_utc() - retention)
            .await
        {
            Ok(0) => {}
            Ok(purged) => tracing::info!(
                purged,
                "purged secret versions deleted longer ago than the retention period"
            ),
            Err(e) => tracing::warn!(error = %e, "purging deleted secrets"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
