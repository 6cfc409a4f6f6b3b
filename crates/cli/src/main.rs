//! `tresor`: the one binary. `serve` runs the server, `worker` runs one task (started by the
//! server), and `task` talks to a running server.

mod config;
mod output;
mod task_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tresor",
    version,
    about = "A secure processing environment for GA4GH TES tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults: SQLite and the local executor under ./tresor-data).
    Serve(config::ServeArgs),
    /// Run one task from its directory; the server starts this, people do not.
    Worker {
        /// The task directory the server prepared.
        #[arg(long)]
        task_dir: PathBuf,
    },
    /// Submit, inspect, list and cancel tasks on a running server.
    Task(task_cmd::TaskArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRESOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // reqwest and rustls are built without a default provider: choose ring once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            runtime.block_on(serve(args))
        }
        Command::Worker { task_dir } => {
            init_tracing();
            let result = runtime.block_on(tresor_executors::worker::run(&task_dir));
            // Everything is reported and cleaned up by now; skip the runtime's orderly teardown,
            // which would only delay the exit the server is waiting for.
            runtime.shutdown_background();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "worker failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Task(args) => runtime.block_on(task_cmd::run(args)),
    }
}

async fn serve(args: config::ServeArgs) -> ExitCode {
    let settings = match config::load(&args) {
        Ok(s) => s,
        Err(problems) => {
            eprintln!(
                "error: the configuration has {} problem(s):",
                problems.len()
            );
            for p in problems {
                eprintln!("  - {p}");
            }
            return ExitCode::from(2);
        }
    };
    match run_server(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_server(settings: config::Settings) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let app = tresor_server::App::build(settings.app).await?;
    output::line(&format!("tresor listening on http://{addr}"));
    tracing::info!(%addr, data_dir = %settings.data_dir.display(), "serving");
    tresor_server::serve(listener, app, shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
