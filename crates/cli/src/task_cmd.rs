//! `tresor task`: run, submit, get, list, wait for, follow and cancel through the typed client.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use tresor_api_types::tes::{TesState, TesTask, TesView};
use tresor_client::{ListTasks, TesClient};

use crate::session::{ClientArgs, Format};
use crate::{output, task_follow};

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
    /// Run IMAGE with COMMAND as a task, print its output as it comes, and exit with its exit
    /// code (125 if the system failed it, 130 if it was canceled).
    #[command(
        after_help = "Examples:\n  tresor task run debian:12 -- echo hello\n  tresor task run --input /in/reads.fq=file:///srv/data/reads.fq \\\n    --output /out/counts.txt=file:///srv/results/counts.txt \\\n    --secret DB_PASSWORD --cpu 2 --mem 4 debian:12 -- sh -c 'wc -l /in/reads.fq > /out/counts.txt'"
    )]
    Run(RunArgs),
    /// Submit a TES task document from a file, or `-` for standard input.
    Submit { file: PathBuf },
    /// Show one task: readable text, or its TES document with `--output json`.
    Get {
        id: String,
        #[arg(long, value_enum, default_value = "full")]
        view: View,
    },
    /// Print a task's output (each executor's stdout and stderr); `--follow` keeps printing
    /// until the task ends.
    Logs {
        id: String,
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Wait until a task ends; print its state and exit as `task run` does.
    Wait { id: String },
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

#[derive(Args)]
struct RunArgs {
    /// The executor's image, such as debian:12 or ghcr.io/org/tool:1.2.
    image: String,
    /// The command and its arguments (after `--`); run directly, not through a shell.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    /// `PATH=URL`: a file (or directory, with a trailing `/` on PATH) the task reads at PATH,
    /// from URL (file://, s3://, http(s)://, or an absolute host path). `PATH=@FILE` sends a
    /// small local FILE inline instead; its content is then part of the task document, which
    /// every member of the workspace can read, so never a secret. Repeatable.
    #[arg(long = "input", short = 'i', value_name = "PATH=URL")]
    inputs: Vec<String>,
    /// `PATH=URL`: a file the task writes at PATH, delivered to URL (file://, s3:// or an
    /// absolute host path). Repeatable.
    #[arg(long = "output", short = 'o', value_name = "PATH=URL")]
    outputs: Vec<String>,
    /// A stored secret the task gets as an environment variable of the same name. Repeatable.
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// A stored secret the task gets as the file /run/secrets/NAME. Repeatable.
    #[arg(long = "secret-file", value_name = "NAME")]
    secret_files: Vec<String>,
    /// `KEY=VALUE`: an environment variable of the command. Repeatable. Secrets go in
    /// `--secret`, never here: the task document is readable by every workspace member.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// CPU cores.
    #[arg(long)]
    cpu: Option<i32>,
    /// Memory in GB.
    #[arg(long)]
    mem: Option<f64>,
    /// Disk in GB.
    #[arg(long)]
    disk: Option<f64>,
    /// The command's working directory.
    #[arg(long, short = 'W')]
    workdir: Option<String>,
    /// The task's name (default: the command's first word).
    #[arg(long)]
    name: Option<String>,
    /// `KEY=VALUE` tag. Repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Print the task's id and return at once, without waiting.
    #[arg(long, short = 'd')]
    detach: bool,
}

struct TaskArgsResolved {
    output: Format,
    command: TaskCommand,
}

pub async fn run(args: TaskArgs) -> ExitCode {
    match execute(args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Splits `KEY=VALUE`; `what` names the flag in the error.
fn pair(raw: &str, what: &str) -> anyhow::Result<(String, String)> {
    match raw.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => anyhow::bail!(
            "{what} {raw:?} is not of the form {}",
            match what {
                "--env" | "--tag" => "KEY=VALUE",
                _ => "PATH=URL",
            }
        ),
    }
}

/// A host path as a file:// URL; URLs stay as they are.
fn as_url(location: &str) -> anyhow::Result<String> {
    if location.contains("://") {
        return Ok(location.to_owned());
    }
    let path = std::path::Path::new(location);
    anyhow::ensure!(
        path.is_absolute(),
        "{location:?} is neither a URL nor an absolute host path"
    );
    Ok(format!("file://{location}"))
}

/// The TES task `task run` submits.
fn run_task(args: &RunArgs) -> anyhow::Result<TesTask> {
    use anyhow::Context;
    use std::collections::BTreeMap;
    use tresor_api_types::tes::{TesExecutor, TesFileType, TesInput, TesOutput, TesResources};
    let mut inputs = Vec::new();
    for raw in &args.inputs {
        let (path, from) = pair(raw, "--input")?;
        let directory = path.ends_with('/');
        let path = if directory && path.len() > 1 {
            path.trim_end_matches('/').to_owned()
        } else {
            path
        };
        let input = match from.strip_prefix('@') {
            Some(file) => TesInput {
                path,
                content: Some(
                    std::fs::read_to_string(file)
                        .with_context(|| format!("--input {raw}: reading {file}"))?,
                ),
                ..TesInput::default()
            },
            None => TesInput {
                path,
                url: Some(as_url(&from).with_context(|| format!("--input {raw}"))?),
                file_type: Some(if directory {
                    TesFileType::Directory
                } else {
                    TesFileType::File
                }),
                ..TesInput::default()
            },
        };
        inputs.push(input);
    }
    let mut outputs = Vec::new();
    for raw in &args.outputs {
        let (path, to) = pair(raw, "--output")?;
        outputs.push(TesOutput {
            path,
            url: as_url(&to).with_context(|| format!("--output {raw}"))?,
            file_type: Some(TesFileType::File),
            ..TesOutput::default()
        });
    }
    let env: BTreeMap<String, String> = args
        .env
        .iter()
        .map(|e| pair(e, "--env"))
        .collect::<anyhow::Result<_>>()?;
    let mut tags: BTreeMap<String, String> = args
        .tags
        .iter()
        .map(|t| pair(t, "--tag"))
        .collect::<anyhow::Result<_>>()?;
    if !args.secrets.is_empty() {
        tags.insert("tresor.secrets.env".to_owned(), args.secrets.join(","));
    }
    if !args.secret_files.is_empty() {
        tags.insert("tresor.secrets".to_owned(), args.secret_files.join(","));
    }
    let resources =
        (args.cpu.is_some() || args.mem.is_some() || args.disk.is_some()).then(|| TesResources {
            cpu_cores: args.cpu,
            ram_gb: args.mem,
            disk_gb: args.disk,
            ..TesResources::default()
        });
    Ok(TesTask {
        name: args.name.clone().or_else(|| {
            args.command
                .first()
                .map(|c| c.rsplit('/').next().unwrap_or(c).to_owned())
        }),
        executors: vec![TesExecutor {
            image: args.image.clone(),
            command: args.command.clone(),
            workdir: args.workdir.clone(),
            env: (!env.is_empty()).then_some(env),
            ..TesExecutor::default()
        }],
        inputs: (!inputs.is_empty()).then_some(inputs),
        outputs: (!outputs.is_empty()).then_some(outputs),
        resources,
        tags: (!tags.is_empty()).then_some(tags),
        ..TesTask::default()
    })
}

async fn execute(args: TaskArgs) -> anyhow::Result<u8> {
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
        TaskCommand::Run(run) => {
            let task = run_task(&run)?;
            let id = client.create_task(&task).await?;
            if run.detach {
                match args.output {
                    Format::Json => output::json(&serde_json::json!({ "id": id })),
                    Format::Text => output::line(&id),
                }
                return Ok(0);
            }
            let follow = args.output == Format::Text;
            let done = task_follow::wait(&client, &id, follow, true).await?;
            if args.output == Format::Json {
                output::json(&done);
            }
            task_follow::explain_end(&done);
            return Ok(task_follow::exit_status(&done));
        }
        TaskCommand::Wait { id } => {
            let done = task_follow::wait(&client, &id, false, false).await?;
            match args.output {
                Format::Json => output::json(&done),
                Format::Text => output::line(done.state.map_or("UNKNOWN", TesState::as_str)),
            }
            return Ok(task_follow::exit_status(&done));
        }
        TaskCommand::Logs { id, follow } => {
            if follow {
                task_follow::wait(&client, &id, true, false).await?;
            } else {
                let task = client.get_task(&id, TesView::Full).await?;
                task_follow::print_logs(&task);
            }
        }
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
                Format::Text => output::line(&task_follow::describe(&task)),
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
    Ok(0)
}
