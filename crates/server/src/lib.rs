#![doc = include_str!("../README.md")]

mod compute;
mod error;
mod extract;
mod identity;
mod images;
mod limits;
mod ops;
mod platform;
pub mod routes;
mod secrets;
mod tes;
mod wes;

use std::future::Future;
use std::path::PathBuf;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tresor_service::app::Services;

pub use error::ApiError;
pub use limits::ConnectionLimits;
pub use routes::{Access, RouteSpec, route_specs};

/// Everything the server needs, resolved from configuration by the caller.
#[derive(Debug, Clone)]
pub struct AppSettings {
    /// What the use cases behind the handlers need.
    pub services: tresor_service::app::Settings,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Connections, request timeouts and request rates.
    pub limits: ConnectionLimits,
}

/// The services every handler reaches through axum state: the service crate's bundle itself.
pub(crate) type AppState = Services;

/// A built application: its router and the services behind it.
#[derive(Debug, Clone)]
pub struct App {
    router: Router,
    services: Services,
    limits: ConnectionLimits,
    /// Set when this start created the bootstrap admin.
    pub bootstrap_token_file: Option<PathBuf>,
}

impl App {
    /// Opens the services (see `Services::open`) and builds the router in front of them.
    pub async fn build(settings: AppSettings) -> anyhow::Result<App> {
        let (services, bootstrap_token_file) = Services::open(settings.services).await?;
        let router = router(services.clone(), settings.max_body_bytes, &settings.limits);
        Ok(App {
            router,
            services,
            limits: settings.limits,
            bootstrap_token_file,
        })
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
    let metrics = state.metrics.clone();
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
        // Outermost, so refusals by the layers above are counted and carry an id too.
        .layer(axum::middleware::from_fn(move |request, next| {
            ops::observe(metrics.clone(), request, next)
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
        services,
        limits,
        ..
    } = app;
    let cap = limits.effective_max_connections();
    let draining = services.clone();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(cap));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => {
                draining.start_draining();
                tracing::info!("shutting down: no new connections; requests in flight may finish, and tasks' workers keep running");
                break;
            }
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
    services.close().await;
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
