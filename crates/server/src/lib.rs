#![doc = include_str!("../README.md")]

mod compute;
mod error;
mod extract;
mod identity;
mod limits;
mod platform;
pub mod routes;
mod secrets;
mod tes;

use std::future::Future;
use std::path::PathBuf;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
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
pub use limits::ConnectionLimits;
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
    /// Connections, request timeouts and request rates.
    pub limits: ConnectionLimits,
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
    limits: ConnectionLimits,
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
            &settings.limits,
        );
        Ok(App {
            router,
            store,
            limits: settings.limits,
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
fn router(state: AppState, max_body_bytes: usize, limits: &ConnectionLimits) -> Router {
    let mut ga4gh = Router::new();
    let mut api = Router::new();
    for (spec, handler) in routes::table() {
        if spec.path.starts_with("/api/") || spec.path.starts_with("/internal/") {
            api = api.route(spec.path, handler);
        } else {
            ga4gh = ga4gh.route(spec.path, handler);
        }
    }
    // A panic becomes a 500 with a request id inside each family, so the platform API still
    // renders it as `{code, message}`.
    let api = api
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(axum::middleware::map_response(error::platform_error_body));
    let rates = limits::RequestRates::new(limits);
    let deadline = limits.request_timeout;
    ga4gh
        .layer(CatchPanicLayer::custom(error::panic_response))
        .merge(api)
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .layer(axum::middleware::from_fn(move |request, next| {
            limits::within_deadline(deadline, request, next)
        }))
        .layer(axum::middleware::from_fn(move |request, next| {
            rates.clone().check(request, next)
        }))
        .with_state(state)
}

/// How long `serve` lets requests in flight finish after `shutdown`.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves; the function `tresor serve` runs.
/// Each connection gets `limits.header_timeout` to send each request's headers (also the most
/// it may sit idle between requests), and connections beyond the cap are closed at once.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let App {
        router,
        store,
        limits,
        ..
    } = app;
    let cap = limits.effective_max_connections();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cap));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for connections to close.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, cap, "connection closed: the server is at its connection limit");
            drop(stream);
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                router.clone().oneshot(request)
            },
        );
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN:?} of shutdown; stopping anyway");
    }
    store.close().await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_with_a_request_id_and_no_payload() {
        async fn boom() -> &'static str {
            panic!("value hunter2-in-a-panic")
        }
        let router: Router = Router::new()
            .route("/boom", get(boom))
            .layer(CatchPanicLayer::custom(error::panic_response));
        let response = router
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("request id"), "{body}");
        assert!(!body.contains("hunter2"), "{body}");
    }
}
