#![doc = include_str!("../README.md")]

mod compute;
mod error;
mod extract;
mod identity;
mod platform;
pub mod routes;
mod secrets;
mod tes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tresor_auth::oidc::{OidcVerifier, TrustedIssuer};
use tresor_crypto::KeyRing;
use tresor_executors::{LocalExecutor, LocalSettings};
use tresor_service::preflight::Preflight;
use tresor_service::{
    IdentityService, IdentitySettings, PlatformService, S3Settings, SecretService, ServiceSettings,
    StorageService, TaskService,
};
use tresor_store::{Store, StoreSettings};

pub use error::ApiError;
pub use routes::{Access, RouteSpec, route_specs};

/// Everything the server needs, resolved from configuration by the caller.
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub store: StoreSettings,
    pub local: LocalSettings,
    pub service: ServiceSettings,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Where the bootstrap admin's token is written on first start (0600).
    pub bootstrap_token_file: PathBuf,
    /// Identity providers whose JWTs are accepted.
    pub oidc_issuers: Vec<TrustedIssuer>,
    /// The key-encryption key file (created 0600 on first start).
    pub kek_file: PathBuf,
    /// How long deleted secrets are kept before they are purged.
    pub secret_retention: std::time::Duration,
    /// The redactor the process's log writer applies; kept loaded with every secret.
    pub log_redactor: tresor_crypto::redact::SharedRedactor,
    /// How much secret material a workspace and a user may keep.
    pub secret_limits: tresor_service::SecretLimits,
    /// tresor as an OIDC issuer for its tasks.
    pub identity: IdentitySettings,
    /// Object storage (S3 or compatible), if configured.
    pub s3: Option<std::sync::Arc<S3Settings>>,
    /// The server's own client credentials for outbound calls, if configured.
    pub outbound: Option<std::sync::Arc<tresor_auth::client_credentials::ClientCredentials>>,
    /// Compute environments of type `slurm`.
    pub slurm: Vec<tresor_executors::SlurmSettings>,
}

/// The services every handler reaches through axum state.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub tasks: TaskService,
    pub platform: PlatformService,
    pub secrets: SecretService,
    pub identity: IdentityService,
    pub storage: StorageService,
    pub preflight: Preflight,
}

/// A built application: its router and the services behind it.
#[derive(Debug, Clone)]
pub struct App {
    router: Router,
    store: Store,
    /// Set when this start created the bootstrap admin.
    pub bootstrap_token_file: Option<PathBuf>,
}

impl App {
    /// Opens the store, bootstraps the first admin, settles work left by a previous process
    /// and starts the scheduler.
    pub async fn build(settings: AppSettings) -> anyhow::Result<App> {
        let store = Store::connect(&settings.store).await?;
        let platform =
            PlatformService::new(store.clone(), OidcVerifier::new(settings.oidc_issuers)?);
        let bootstrap_token_file = platform.bootstrap(&settings.bootstrap_token_file).await?;
        let keys = KeyRing::open_or_create(&settings.kek_file)?;
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
            identity_settings.issuer = settings
                .service
                .callback_url
                .trim_end_matches('/')
                .to_owned();
        }
        let identity = IdentityService::new(store.clone(), secrets.clone(), identity_settings);
        identity.ensure_current_key().await?;
        tokio::spawn(tresor_service::identity::rotate_on_schedule(
            identity.clone(),
        ));
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
        let executor = LocalExecutor::new(settings.local)?;
        let slurm = settings
            .slurm
            .into_iter()
            .map(tresor_executors::SlurmExecutor::new)
            .collect::<Result<Vec<_>, _>>()?;
        let tasks = TaskService::new(
            store.clone(),
            platform.clone(),
            secrets.clone(),
            identity.clone(),
            storage.clone(),
            tresor_service::Executors {
                local: executor,
                slurm,
            },
            settings.service,
        )
        .await?;
        tasks.start().await?;
        let router = router(
            AppState {
                tasks,
                platform,
                secrets,
                identity,
                storage,
                preflight,
            },
            settings.max_body_bytes,
        );
        Ok(App {
            router,
            store,
            bootstrap_token_file,
        })
    }
}

/// Purges soft-deleted secrets past their retention: at start, then hourly.
async fn purge_deleted_secrets(store: Store, retention: std::time::Duration) {
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
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// The router, built from the route table.
fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut ga4gh = Router::new();
    let mut api = Router::new();
    for (spec, handler) in routes::table() {
        if spec.path.starts_with("/api/") || spec.path.starts_with("/internal/") {
            api = api.route(spec.path, handler);
        } else {
            ga4gh = ga4gh.route(spec.path, handler);
        }
    }
    let api = api.layer(axum::middleware::map_response(error::platform_error_body));
    ga4gh
        .merge(api)
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` resolves; the function `tresor serve` runs.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store = app.store.clone();
    let result = axum::serve(
        listener,
        app.router
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    store.close().await;
    result
}
