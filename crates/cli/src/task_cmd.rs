//! `tresor task`: submit, get, list and cancel through the typed client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use tresor_api_types::tes::{TesState, TesTask, TesView};
use tresor_client::{ListTasks, TesClient};

use crate::output;
use crate::session::{ClientArgs, Format};

#[derive(Args)]
pub struct TaskArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The workspace (default: your personal workspace).
    #[arg(long, short = 'w', global = true)]
    workspace: Option<String>,
    #[command(subcommand)]
    command: TaskCommand,
}

#[derive(Clone, Copy, ValueEnum)]
enum View {
    Minimal,
    Basic,
    Full,
}

impl From<View> for TesView {
    fn from(v: View) -> TesView {
        match v {
            View::Minimal => TesView::Minimal,
            View::Basic => TesView::Basic,
            View::Full => TesView::Full,
        }
    }
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Submit a TES task document from a file, or `-` for standard input.
    Submit { file: PathBuf },
    /// Show one task.
    Get {
        id: String,
        #[arg(long, value_enum, default_value = "full")]
        view: View,
    },
    /// List tasks, newest first.
    List {
        #[arg(long)]
        name_prefix: Option<String>,
        /// A TES state such as RUNNING.
        #[arg(long)]
        state: Option<String>,
        /// `KEY=VALUE` (or `KEY` for any value); repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        page_size: Option<i64>,
        #[arg(long)]
        page_token: Option<String>,
        #[arg(long, value_enum, default_value = "basic")]
        view: View,
    },
    /// Cancel a task.
    Cancel { id: String },
}

struct TaskArgsResolved {
    output: Format,
    command: TaskCommand,
}

pub async fn run(args: TaskArgs) -> ExitCode {
    match execute(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(args: TaskArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let session = crate::session::resolve(&args.client);
    let token = session
        .token
        .as_deref()
        .context("no credential: run `tresor login` or set TRESOR_TOKEN")?;
    let client = match &args.workspace {
        Some(ws) => TesClient::for_workspace(&session.url, ws, token)?,
        None => TesClient::with_token(&session.url, token)?,
    };
    let args = TaskArgsResolved {
        output: args.client.output,
        command: args.command,
    };
    match args.command {
        TaskCommand::Submit { file } => {
            let raw = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let task: TesTask = serde_json::from_str(&raw).context("parsing the task document")?;
            let id = client.create_task(&task).await?;
            match args.output {
                Format::Json => output::json(&serde_json::json!({ "id": id })),
                Format::Text => output::line(&id),
            }
        }
        TaskCommand::Get { id, view } => {
            let task = client.get_task(&id, view.into()).await?;
            match args.output {
                Format::Json => output::json(&task),
                Format::Text => output::line(&format!(
                    "{}\t{}\t{}",
                    task.id.unwrap_or_default(),
                    task.state.map(TesState::as_str).unwrap_or("UNKNOWN"),
                    task.name.unwrap_or_default()
                )),
            }
        }
        TaskCommand::List {
            name_prefix,
            state,
            tags,
            page_size,
            page_token,
            view,
        } => {
            let state = state
                .map(|s| TesState::parse(&s).with_context(|| format!("{s:?} is not a TES state")))
                .transpose()?;
            let tags = tags
                .into_iter()
                .map(|t| match t.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (t, String::new()),
                })
                .collect();
            let page = client
                .list_tasks(&ListTasks {
                    name_prefix,
                    state,
                    tags,
                    page_size,
                    page_token,
                    view: Some(view.into()),
                })
                .await?;
            match args.output {
                Format::Json => output::json(&page),
                Format::Text => {
                    for task in &page.tasks {
                        output::line(&format!(
                            "{}\t{}\t{}",
                            task.id.clone().unwrap_or_default(),
                            task.state.map(TesState::as_str).unwrap_or("UNKNOWN"),
                            task.name.clone().unwrap_or_default()
                        ));
                    }
                    if let Some(token) = page.next_page_token {
                        output::line(&format!("next page: --page-token {token}"));
                    }
                }
            }
        }
        TaskCommand::Cancel { id } => {
            client.cancel_task(&id).await?;
            match args.output {
                Format::Json => output::json(&serde_json::json!({})),
                Format::Text => output::line(&format!("canceled {id}")),
            }
        }
    }
    Ok(())
}
