#![doc = include_str!("../README.md")]

mod error;
mod extract;
mod tes;

use std::future::Future;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;
use tresor_executors::{LocalExecutor, LocalSettings};
use tresor_service::{ServiceSettings, TaskService};
use tresor_store::{Store, StoreSettings};

pub use error::ApiError;

/// Everything the server needs, resolved from configuration by the caller.
#[derive(Debug, Clone)]
pub struct AppSettings {
    pub store: StoreSettings,
    pub local: LocalSettings,
    pub service: ServiceSettings,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

/// A built application: its router and the services behind it.
#[derive(Debug, Clone)]
pub struct App {
    router: Router,
    tasks: TaskService,
    store: Store,
}

impl App {
    /// Opens the store, settles work left by a previous process and starts the scheduler.
    pub async fn build(settings: AppSettings) -> anyhow::Result<App> {
        let store = Store::connect(&settings.store).await?;
        let executor = LocalExecutor::new(settings.local)?;
        let tasks = TaskService::new(store.clone(), executor, settings.service).await?;
        tasks.start().await?;
        let router = router(tasks.clone(), settings.max_body_bytes);
        Ok(App {
            router,
            tasks,
            store,
        })
    }

    pub fn tasks(&self) -> &TaskService {
        &self.tasks
    }
}

/// The route table.
fn router(tasks: TaskService, max_body_bytes: usize) -> Router {
    Router::new()
        .nest("/ga4gh/tes/v1", tes::routes())
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(tasks)
}

/// Serves `app` on `listener` until `shutdown` resolves; the function `tresor serve` runs.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store = app.store.clone();
    let result = axum::serve(listener, app.router)
        .with_graceful_shutdown(shutdown)
        .await;
    store.close().await;
    result
}
