//! `tresor`: the one binary. `serve` runs the server, `worker` runs one task (started by the
//! server), `audit verify` checks the audit trail, and the other commands talk to a running server.

mod config;
mod output;
mod platform_cmd;
mod session;
mod task_cmd;
mod task_follow;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

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
    /// Run one task; the server (or a batch job it submitted) starts this, people do not.
    Worker {
        /// The task directory the server prepared (local executor).
        #[arg(
            long,
            required_unless_present = "bootstrap",
            conflicts_with = "bootstrap"
        )]
        task_dir: Option<PathBuf>,
        /// Run as a batch job: exchange the job's one-time bootstrap token (from the environment
        /// its script sets) for the task, and run it in the current directory.
        #[arg(long)]
        bootstrap: bool,
    },
    /// Store a server URL and access token (read from standard input or TRESOR_TOKEN) in a 0600 file.
    Login {
        #[command(flatten)]
        client: session::ClientArgs,
    },
    /// Create, list and remove workspaces.
    Workspace {
        #[command(flatten)]
        client: session::ClientArgs,
        #[command(subcommand)]
        command: platform_cmd::WorkspaceCommand,
    },
    /// Add, list and remove workspace members.
    Member {
        #[command(flatten)]
        client: session::ClientArgs,
        #[command(subcommand)]
        command: platform_cmd::MemberCommand,
    },
    /// Create, list and revoke access tokens.
    Token {
        #[command(flatten)]
        client: session::ClientArgs,
        #[command(subcommand)]
        command: platform_cmd::TokenCommand,
    },
    /// Create and list users (platform administrators).
    User {
        #[command(flatten)]
        client: session::ClientArgs,
        #[command(subcommand)]
        command: platform_cmd::UserCommand,
    },
    /// Set, list and delete pipeline secrets.
    Secret {
        #[command(flatten)]
        client: session::ClientArgs,
        /// The workspace (default: your personal workspace).
        #[arg(long, short = 'w', global = true)]
        workspace: Option<String>,
        #[command(subcommand)]
        command: platform_cmd::SecretCommand,
    },
    /// Server administration that works on the data directory directly.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Submit, inspect, list and cancel tasks on a running server.
    Task(Box<task_cmd::TaskArgs>),
    /// Preflight: probe a compute environment on a running server (platform administrators):
    /// the token issuer, storage reads, writes and isolation, the sandbox and the clock.
    Check {
        #[command(flatten)]
        client: session::ClientArgs,
        /// The compute environment.
        #[arg(long, default_value = "local")]
        compute_env: String,
        /// The workspace whose storage the probe uses (default: your personal workspace).
        #[arg(long, short = 'w')]
        workspace: Option<String>,
    },
    /// Check the audit trail's keyed hash chain.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a shell completion script, e.g. `tresor completions bash > /etc/bash_completion.d/tresor`.
    Completions { shell: clap_complete::Shell },
}

/// The two key files an admin command beside the server may need.
#[derive(Args)]
struct KeyFiles {
    /// The key file (default: TRESOR_KEK_FILE, else <data-dir>/kek).
    #[arg(long, env = "TRESOR_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// The audit key file (default: TRESOR_AUDIT_KEY_FILE, else <data-dir>/audit-key).
    #[arg(long, env = "TRESOR_AUDIT_KEY_FILE")]
    audit_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Write a consistent copy of the database to a new file (0600), safe while the server runs.
    /// The copy holds no key: keep the key file (kek) and the audit key beside your backups, but
    /// not in them (see docs/operations.md).
    Backup {
        #[arg(long, default_value = "tresor-data")]
        data_dir: PathBuf,
        /// The new backup file.
        #[arg(long)]
        to: PathBuf,
    },
    /// Put a backup in place as the data directory's database, once it passes its checks: its
    /// integrity, the key file holding every key its secrets are sealed under, and its audit
    /// trail verifying under the audit key. Stop the server first.
    Restore {
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
        #[arg(long, default_value = "tresor-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        keys: KeyFiles,
        /// Replace the data directory's database (kept as tresor.db.before-restore).
        #[arg(long)]
        replace: bool,
    },
    /// Re-wrap every secret's data key under a new key-encryption key; safe while the server runs.
    RotateKek {
        #[arg(long, default_value = "tresor-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        keys: KeyFiles,
    },
    /// Start signing task identity tokens with a new key; the old key stays published until
    /// the tokens it signed have expired. Safe while the server runs.
    RotateSigningKey {
        #[arg(long, default_value = "tresor-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        keys: KeyFiles,
    },
    /// Import an image from an OCI image layout (a directory, or a tar of one) into a host's
    /// image cache under a name, for air-gapped sites: tasks naming it need no registry, and it
    /// is never evicted. Run it as the server's user.
    ImportImage {
        /// The OCI layout directory or archive.
        source: PathBuf,
        /// The name tasks use, such as docker.io/library/alpine:3.20 or site.local/tools/bwa:1.
        #[arg(long)]
        name: String,
        /// The layout's manifest to import, by its `org.opencontainers.image.ref.name`, when it
        /// holds several.
        #[arg(long)]
        tag: Option<String>,
        #[arg(long, default_value = "tresor-data")]
        data_dir: PathBuf,
        /// The image cache (default: the local executor's, <data-dir>/work/.images; for a SLURM
        /// environment, its image_cache_dir or <work_dir>/.images).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the keyed hash chain and report the first edited, deleted or reordered event.
    Verify {
        /// The server's data directory.
        #[arg(long, default_value = "tresor-data")]
        data_dir: PathBuf,
        /// The audit key file the server uses (default: TRESOR_AUDIT_KEY_FILE, else
        /// <data-dir>/audit-key).
        #[arg(long, env = "TRESOR_AUDIT_KEY_FILE")]
        audit_key_file: Option<PathBuf>,
    },
}

/// How log lines are written: `TRESOR_LOG_FORMAT` is `text` (the default) or `json` (one
/// object per line, with the current span's fields, such as `request_id`).
fn log_format() -> Result<bool, String> {
    match std::env::var("TRESOR_LOG_FORMAT") {
        Err(_) => Ok(false),
        Ok(f) if f.is_empty() || f.eq_ignore_ascii_case("text") => Ok(false),
        Ok(f) if f.eq_ignore_ascii_case("json") => Ok(true),
        Ok(f) => Err(format!(
            "TRESOR_LOG_FORMAT is {f:?}; set it to \"json\" or \"text\", or unset it"
        )),
    }
}

/// Logs go to stderr, each line through `redactor`, which `serve` keeps loaded with every secret.
fn init_tracing(redactor: tresor_crypto::redact::SharedRedactor, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRESOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || {
            tresor_crypto::redact::RedactingWriter::new(std::io::stderr(), redactor.clone())
        })
        .with_ansi(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    // A panic's message can hold anything a handler was looking at: log it like every other
    // line, through the redactor, instead of the default hook's raw stderr.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%location, %message, "panic");
    }));
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
            let json = match log_format() {
                Ok(json) => json,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let redactor = tresor_crypto::redact::SharedRedactor::default();
            init_tracing(redactor.clone(), json);
            runtime.block_on(serve(args, redactor))
        }
        Command::Worker {
            task_dir,
            bootstrap,
        } => {
            // The server relays this log into its own, as text lines.
            init_tracing(Default::default(), false);
            let result = match task_dir {
                Some(dir) if !bootstrap => runtime.block_on(tresor_executors::worker::run(&dir)),
                _ => runtime.block_on(tresor_executors::worker::run_bootstrapped()),
            };
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
        Command::Task(args) => runtime.block_on(task_cmd::run(*args)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tresor", &mut script);
            output::raw(&String::from_utf8_lossy(&script));
            ExitCode::SUCCESS
        }
        Command::Login { client } => {
            let session = session::resolve(&client);
            runtime.block_on(platform_cmd::login(&client, session))
        }
        Command::Workspace { client, command } => {
            let session = session::resolve(&client);
            runtime.block_on(platform_cmd::workspace(&client, session, command))
        }
        Command::Member { client, command } => {
            let session = session::resolve(&client);
            runtime.block_on(platform_cmd::member(&client, session, command))
        }
        Command::Token { client, command } => {
            let session = session::resolve(&client);
            runtime.block_on(platform_cmd::token(&client, session, command))
        }
        Command::User { client, command } => {
            let session = session::resolve(&client);
            runtime.block_on(platform_cmd::user(&client, session, command))
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    data_dir,
                    audit_key_file,
                },
        } => runtime.block_on(verify_audit(&data_dir, audit_key_file)),
        Command::Secret {
            client,
            workspace,
            command,
        } => {
            let session = session::resolve(&client);
            runtime.block_on(platform_cmd::secret(&client, session, workspace, command))
        }
        Command::Admin {
            command: AdminCommand::Backup { data_dir, to },
        } => runtime.block_on(backup(&data_dir, &to)),
        Command::Admin {
            command:
                AdminCommand::Restore {
                    from,
                    data_dir,
                    keys:
                        KeyFiles {
                            kek_file,
                            audit_key_file,
                        },
                    replace,
                },
        } => runtime.block_on(restore(&from, &data_dir, kek_file, audit_key_file, replace)),
        Command::Admin {
            command:
                AdminCommand::RotateKek {
                    data_dir,
                    keys:
                        KeyFiles {
                            kek_file,
                            audit_key_file,
                        },
                },
        } => runtime.block_on(rotate_kek(&data_dir, kek_file, audit_key_file)),
        Command::Admin {
            command:
                AdminCommand::RotateSigningKey {
                    data_dir,
                    keys:
                        KeyFiles {
                            kek_file,
                            audit_key_file,
                        },
                },
        } => runtime.block_on(rotate_signing_key(&data_dir, kek_file, audit_key_file)),
        Command::Admin {
            command:
                AdminCommand::ImportImage {
                    source,
                    name,
                    tag,
                    data_dir,
                    cache,
                },
        } => runtime.block_on(import_image(
            &source,
            &name,
            tag.as_deref(),
            &data_dir,
            cache,
        )),
        Command::Check {
            client,
            compute_env,
            workspace,
        } => {
            let session = session::resolve(&client);
            runtime.block_on(platform_cmd::check(
                &client,
                session,
                &compute_env,
                workspace.as_deref(),
            ))
        }
    }
}

async fn import_image(
    source: &std::path::Path,
    name: &str,
    tag: Option<&str>,
    data_dir: &std::path::Path,
    cache: Option<PathBuf>,
) -> ExitCode {
    let result = async {
        let name =
            tresor_images::ImageName::parse(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
        let dir = cache.unwrap_or_else(|| {
            data_dir
                .join("work")
                .join(tresor_executors::local::IMAGE_CACHE_DIR)
        });
        let defaults = tresor_service::ImageSettings::default();
        let cache = tresor_images::ImageCache::open(tresor_images::CacheSettings {
            dir,
            max_bytes: defaults.max_cache_bytes,
            max_image_bytes: defaults.max_image_bytes,
            tag_ttl_seconds: defaults.tag_ttl_seconds,
            plain_http: Vec::new(),
        })?;
        let digest = cache.import_layout(source, tag, &name).await?;
        anyhow::Ok((name, digest))
    }
    .await;
    match result {
        Ok((name, digest)) => {
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "imported {} as {digest}", name.full());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn backup(data_dir: &std::path::Path, to: &std::path::Path) -> ExitCode {
    match tresor_store::backup::backup(&data_dir.join("tresor.db"), to).await {
        Ok(s) => {
            output::line(&format!(
                "backed up {} tasks, {} secret versions and {} audit events to {}; its secrets open only with key-encryption key(s) {} from the key file, and its audit trail verifies only with the audit key: keep both apart from the backup",
                s.tasks,
                s.secret_versions,
                s.audit_events,
                to.display(),
                if s.kek_ids.is_empty() {
                    "(none yet)".to_owned()
                } else {
                    s.kek_ids.join(", ")
                },
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: backing up {}: {}",
                data_dir.display(),
                error_chain(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn restore(
    from: &std::path::Path,
    data_dir: &std::path::Path,
    kek_file: Option<PathBuf>,
    audit_key_file: Option<PathBuf>,
    replace: bool,
) -> ExitCode {
    let result = async {
        use anyhow::Context;
        let summary = tresor_store::backup::inspect(from)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", from.display(), error_chain(&e)))?;
        let kek_file = kek_file.unwrap_or_else(|| data_dir.join("kek"));
        if !summary.kek_ids.is_empty() {
            anyhow::ensure!(
                kek_file.is_file(),
                "no key file at {}: the backup's secrets are sealed under key-encryption key(s) {}; put the key file that was in use when the backup was made there (or pass --kek-file)",
                kek_file.display(),
                summary.kek_ids.join(", ")
            );
            let held = tresor_crypto::KeyRing::open(&kek_file)
                .context("opening the key file")?
                .key_ids();
            let missing: Vec<String> = summary
                .kek_ids
                .iter()
                .filter(|id| !held.contains(id))
                .cloned()
                .collect();
            anyhow::ensure!(
                missing.is_empty(),
                "the key file {} lacks key-encryption key(s) {} that the backup's secrets are sealed under; use the key file from when the backup was made",
                kek_file.display(),
                missing.join(", ")
            );
        }
        let audit_key_file = existing_audit_key_file(data_dir, audit_key_file)?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let db = data_dir.join("tresor.db");
        if db.exists() {
            anyhow::ensure!(
                replace,
                "{} exists; stop the server and pass --replace to put the backup in its place",
                db.display()
            );
        }
        // A private copy beside the database, checked again (the audit trail, under its key)
        // before it takes the database's place.
        let staged = data_dir.join("tresor.db.restoring");
        let _ = std::fs::remove_file(&staged);
        tresor_store::backup::backup(from, &staged)
            .await
            .map_err(|e| anyhow::anyhow!("copying the backup: {}", error_chain(&e)))?;
        let verified = async {
            let store = tresor_store::Store::connect(&tresor_store::StoreSettings {
                path: staged.clone(),
                durability: tresor_store::Durability::Full,
                audit_key_file,
            })
            .await?;
            let checked = store.verify_audit().await;
            store.close().await;
            checked
        }
        .await;
        let cleanup = || {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", staged.display()));
            }
        };
        match verified {
            Ok(Ok(_)) => {}
            Ok(Err(broken)) => {
                cleanup();
                anyhow::bail!(
                    "the backup's audit trail is broken at event {}: {}",
                    broken.seq,
                    broken.reason
                );
            }
            Err(e) => {
                cleanup();
                anyhow::bail!("the backup does not open: {}", error_chain(&e));
            }
        }
        if db.exists() {
            let kept = data_dir.join("tresor.db.before-restore");
            std::fs::rename(&db, &kept).context("keeping the replaced database")?;
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::rename(
                    format!("{}{suffix}", db.display()),
                    format!("{}{suffix}", kept.display()),
                );
            }
        }
        // A clean close leaves no WAL; if one is left, it belongs to the copy.
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::rename(
                format!("{}{suffix}", staged.display()),
                format!("{}{suffix}", db.display()),
            );
        }
        std::fs::rename(&staged, &db).context("putting the backup in place")?;
        anyhow::Ok(summary)
    }
    .await;
    match result {
        Ok(s) => {
            output::line(&format!(
                "restored {} tasks, {} secret versions and {} audit events into {}; the key file opens every secret and the audit trail verifies. Access tokens revoked and members removed since the backup are back: revoke and remove them again before reopening",
                s.tasks,
                s.secret_versions,
                s.audit_events,
                data_dir.join("tresor.db").display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn rotate_kek(
    data_dir: &std::path::Path,
    kek_file: Option<PathBuf>,
    audit_key_file: Option<PathBuf>,
) -> ExitCode {
    let result = async {
        let (_, secrets) = open_offline(data_dir, kek_file, audit_key_file).await?;
        let operator = tresor_domain::Principal {
            user: tresor_domain::UserId::parse("local-operator")?,
            name: "local operator".to_owned(),
            is_admin: true,
            source: Some("cli".to_owned()),
        };
        secrets
            .rotate_kek(&operator)
            .await
            .map_err(anyhow::Error::from)
    }
    .await;
    match result {
        Ok(count) => {
            output::line(&format!(
                "rotated the key-encryption key; {count} data keys re-wrapped"
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn rotate_signing_key(
    data_dir: &std::path::Path,
    kek_file: Option<PathBuf>,
    audit_key_file: Option<PathBuf>,
) -> ExitCode {
    let result = async {
        let (store, secrets) = open_offline(data_dir, kek_file, audit_key_file).await?;
        let identity = tresor_service::IdentityService::new(
            store,
            secrets,
            tresor_service::IdentitySettings {
                issuer: String::new(),
                token_ttl: tresor_service::identity::MAX_TOKEN_TTL,
                audiences: Vec::new(),
                rotation_period: std::time::Duration::MAX,
                sdk_env: Vec::new(),
            },
        );
        identity
            .rotate("local-operator", "signing_key.rotate")
            .await
            .map_err(anyhow::Error::from)
    }
    .await;
    match result {
        Ok(kid) => {
            output::line(&format!(
                "new signing key {kid}; the previous key stays published until its tokens expire"
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The audit key file: the flag or `TRESOR_AUDIT_KEY_FILE`, else `<data-dir>/audit-key`, which
/// must exist: commands beside the server never create one (only `serve` does, with a new database).
fn existing_audit_key_file(
    data_dir: &std::path::Path,
    audit_key_file: Option<PathBuf>,
) -> anyhow::Result<PathBuf> {
    let path = audit_key_file.unwrap_or_else(|| data_dir.join("audit-key"));
    anyhow::ensure!(
        path.is_file(),
        "no audit key file at {}: without the key the audit trail can be neither verified nor extended; pass --audit-key-file (or TRESOR_AUDIT_KEY_FILE) if the server's key lives elsewhere",
        path.display()
    );
    Ok(path)
}

/// The store and secret service of a data directory, for admin commands run beside the server.
async fn open_offline(
    data_dir: &std::path::Path,
    kek_file: Option<PathBuf>,
    audit_key_file: Option<PathBuf>,
) -> anyhow::Result<(tresor_store::Store, tresor_service::SecretService)> {
    use anyhow::Context;
    let path = data_dir.join("tresor.db");
    anyhow::ensure!(path.is_file(), "no database at {}", path.display());
    let store = tresor_store::Store::connect(&tresor_store::StoreSettings {
        path,
        durability: tresor_store::Durability::Full,
        audit_key_file: existing_audit_key_file(data_dir, audit_key_file)?,
    })
    .await?;
    let kek_file = kek_file.unwrap_or_else(|| data_dir.join("kek"));
    anyhow::ensure!(kek_file.is_file(), "no key file at {}", kek_file.display());
    let keys = tresor_crypto::KeyRing::open_or_create(&kek_file).context("opening the key file")?;
    let platform = tresor_service::PlatformService::new(
        store.clone(),
        tresor_auth::oidc::OidcVerifier::new(Vec::new())?,
    );
    let secrets = tresor_service::SecretService::new(store.clone(), platform, keys).await?;
    Ok((store, secrets))
}

async fn verify_audit(data_dir: &std::path::Path, audit_key_file: Option<PathBuf>) -> ExitCode {
    let path = data_dir.join("tresor.db");
    if !path.is_file() {
        eprintln!("error: no database at {}", path.display());
        return ExitCode::from(2);
    }
    let audit_key_file = match existing_audit_key_file(data_dir, audit_key_file) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = tresor_store::StoreSettings {
        path,
        durability: tresor_store::Durability::Full,
        audit_key_file,
    };
    let result = match tresor_store::Store::connect(&settings).await {
        Ok(store) => store.verify_audit().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(Ok(count)) => {
            output::line(&format!("audit trail intact: {count} events"));
            ExitCode::SUCCESS
        }
        Ok(Err(broken)) => {
            eprintln!(
                "audit trail broken at event {}: {}",
                broken.seq, broken.reason
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(
    args: config::ServeArgs,
    redactor: tresor_crypto::redact::SharedRedactor,
) -> ExitCode {
    let settings = match config::load(&args) {
        Ok(mut s) => {
            s.app.services.log_redactor = redactor;
            s
        }
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

async fn run_server(mut settings: config::Settings) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    settings.app.services.tasks.callback_url = format!("http://{addr}");
    let app = tresor_server::App::build(settings.app).await?;
    if let Some(path) = &app.bootstrap_token_file {
        // The path only: the token itself never goes to a terminal or a log.
        output::line(&format!(
            "bootstrap admin created; its access token is in {} (mode 0600)",
            path.display()
        ));
    }
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
