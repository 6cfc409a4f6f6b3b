//! `tresor login`, `workspace`, `member`, `token` and `user`: the platform API from the command line.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use tresor_client::PlatformClient;

use crate::output;
use crate::session::{ClientArgs, Format, Session, Stored};

#[derive(Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace; you become its owner.
    Create { id: String },
    /// List your workspaces and your role in each.
    List,
    /// Delete a workspace (owners only; it must have no queued or running tasks).
    Remove { id: String },
}

#[derive(Subcommand)]
pub enum MemberCommand {
    /// Add a member, or change their role (owner, admin, maintain, launch or view).
    Add {
        workspace: String,
        user: String,
        role: String,
    },
    /// List a workspace's members.
    List { workspace: String },
    /// Remove a member.
    Remove { workspace: String, user: String },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue an access token; it is printed once and cannot be shown again.
    Create {
        name: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Issue it for another user (platform administrators only).
        #[arg(long)]
        user: Option<String>,
    },
    /// List your tokens (metadata only).
    List,
    /// Revoke one of your tokens (platform administrators: anyone's).
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a local user (platform administrators only).
    Create { name: String },
    /// List users (platform administrators only).
    List,
}

fn client(session: &Session) -> anyhow::Result<PlatformClient> {
    Ok(PlatformClient::new(&session.url, session.token.as_deref())?)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tresor login`: reads the token from `TRESOR_TOKEN` or standard input (never from argv),
/// checks it against the server, and stores URL and token in a 0600 file.
pub async fn login(args: &ClientArgs, session: Session) -> ExitCode {
    report(
        async {
            let token = match session.token {
                Some(t) => t,
                None => {
                    let raw = std::io::read_to_string(std::io::stdin())
                        .context("reading the token from standard input")?;
                    raw.trim().to_owned()
                }
            };
            anyhow::ensure!(
                !token.is_empty(),
                "no token: pipe it on standard input or set TRESOR_TOKEN"
            );
            let me = PlatformClient::new(&session.url, Some(&token))?
                .me()
                .await?;
            let path = crate::session::store(
                args,
                &Stored {
                    url: session.url.clone(),
                    token,
                },
            )?;
            match args.output {
                Format::Json => output::json(&me),
                Format::Text => output::line(&format!(
                    "logged in to {} as {} ({}); credentials in {}",
                    session.url,
                    me.name,
                    me.id,
                    path.display()
                )),
            }
            Ok(())
        }
        .await,
    )
}

pub async fn workspace(args: &ClientArgs, session: Session, command: WorkspaceCommand) -> ExitCode {
    report(
        async {
            let client = client(&session)?;
            match command {
                WorkspaceCommand::Create { id } => {
                    let ws = client.create_workspace(&id).await?;
                    match args.output {
                        Format::Json => output::json(&ws),
                        Format::Text => {
                            output::line(&format!("{}\t{}\t{}", ws.id, ws.role, ws.tes_url))
                        }
                    }
                }
                WorkspaceCommand::List => {
                    let all = client.list_workspaces().await?;
                    match args.output {
                        Format::Json => output::json(&all),
                        Format::Text => all.iter().for_each(|w| {
                            output::line(&format!("{}\t{}\t{}", w.id, w.role, w.tes_url))
                        }),
                    }
                }
                WorkspaceCommand::Remove { id } => {
                    client.delete_workspace(&id).await?;
                    match args.output {
                        Format::Json => output::json(&serde_json::json!({})),
                        Format::Text => output::line(&format!("removed workspace {id}")),
                    }
                }
            }
            Ok(())
        }
        .await,
    )
}

pub async fn member(args: &ClientArgs, session: Session, command: MemberCommand) -> ExitCode {
    report(async {
        let client = client(&session)?;
        match command {
            MemberCommand::Add { workspace, user, role } => {
                client.set_member(&workspace, &user, &role).await?;
                match args.output {
                    Format::Json => output::json(&serde_json::json!({ "workspace": workspace, "user": user, "role": role })),
                    Format::Text => output::line(&format!("{user} is now {role} in {workspace}")),
                }
            }
            MemberCommand::List { workspace } => {
                let members = client.list_members(&workspace).await?;
                match args.output {
                    Format::Json => output::json(&members),
                    Format::Text => members.iter().for_each(|m| output::line(&format!("{}\t{}\t{}", m.user, m.name, m.role))),
                }
            }
            MemberCommand::Remove { workspace, user } => {
                client.remove_member(&workspace, &user).await?;
                match args.output {
                    Format::Json => output::json(&serde_json::json!({})),
                    Format::Text => output::line(&format!("removed {user} from {workspace}")),
                }
            }
        }
        Ok(())
    }
    .await)
}

pub async fn token(args: &ClientArgs, session: Session, command: TokenCommand) -> ExitCode {
    report(
        async {
            let client = client(&session)?;
            match command {
                TokenCommand::Create {
                    name,
                    expires_in_days,
                    user,
                } => {
                    let created = match user {
                        Some(user) => client.create_token_for(&user, &name).await?,
                        None => client.create_token(&name, expires_in_days).await?,
                    };
                    match args.output {
                        Format::Json => output::json(&created),
                        Format::Text => {
                            output::line(&created.token);
                            eprintln!("token {} created; it is shown only this once", created.id);
                        }
                    }
                }
                TokenCommand::List => {
                    let tokens = client.list_tokens().await?;
                    match args.output {
                        Format::Json => output::json(&tokens),
                        Format::Text => tokens.iter().for_each(|t| {
                            let state = if t.revoked_at.is_some() {
                                "revoked"
                            } else {
                                "active"
                            };
                            output::line(&format!(
                                "{}\t{}\t{state}\tlast used {}",
                                t.id,
                                t.name,
                                t.last_used_at.as_deref().unwrap_or("never")
                            ));
                        }),
                    }
                }
                TokenCommand::Revoke { id } => {
                    client.revoke_token(&id).await?;
                    match args.output {
                        Format::Json => output::json(&serde_json::json!({})),
                        Format::Text => output::line(&format!("revoked token {id}")),
                    }
                }
            }
            Ok(())
        }
        .await,
    )
}

pub async fn user(args: &ClientArgs, session: Session, command: UserCommand) -> ExitCode {
    report(
        async {
            let client = client(&session)?;
            match command {
                UserCommand::Create { name } => {
                    let user = client.create_user(&name).await?;
                    match args.output {
                        Format::Json => output::json(&user),
                        Format::Text => output::line(&format!("{}\t{}", user.id, user.name)),
                    }
                }
                UserCommand::List => {
                    let users = client.list_users().await?;
                    match args.output {
                        Format::Json => output::json(&users),
                        Format::Text => users.iter().for_each(|u| {
                            output::line(&format!("{}\t{}\t{}", u.id, u.name, u.issuer))
                        }),
                    }
                }
            }
            Ok(())
        }
        .await,
    )
}

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Create or update a secret. The value is read from standard input or --from-file, never
    /// from the command line.
    Set {
        name: String,
        /// A user secret (yours alone) instead of a workspace secret.
        #[arg(long)]
        user: bool,
        /// Read the value from this file instead of standard input (taken byte for byte).
        #[arg(long)]
        from_file: Option<std::path::PathBuf>,
        /// Update only if the secret is still at this version (see `secret list`); without it,
        /// `set` creates the secret or replaces its current value.
        #[arg(long)]
        if_match: Option<i64>,
    },
    /// List secrets (metadata only; values are never shown).
    List {
        #[arg(long)]
        user: bool,
    },
    /// Delete a secret (kept for the retention period, then purged).
    Delete {
        name: String,
        #[arg(long)]
        user: bool,
    },
}

pub async fn secret(
    args: &ClientArgs,
    session: Session,
    workspace: Option<String>,
    command: SecretCommand,
) -> ExitCode {
    report(
        async {
            let client = client(&session)?;
            let workspace = match workspace {
                Some(ws) => ws,
                None => client.me().await?.personal_workspace,
            };
            match command {
                SecretCommand::Set {
                    name,
                    user,
                    from_file,
                    if_match,
                } => {
                    let value = match from_file {
                        Some(path) => std::fs::read(&path)
                            .with_context(|| format!("reading {}", path.display()))?,
                        None => {
                            use std::io::Read;
                            let mut buf = Vec::new();
                            std::io::stdin()
                                .read_to_end(&mut buf)
                                .context("reading the value from standard input")?;
                            buf
                        }
                    };
                    let done = client
                        .put_secret(&workspace, user, &name, &value, if_match)
                        .await?;
                    match args.output {
                        Format::Json => output::json(&done),
                        Format::Text => output::line(&format!(
                            "{} secret {} is at version {}",
                            done.scope, done.name, done.version
                        )),
                    }
                }
                SecretCommand::List { user } => {
                    let all = client.list_secrets(&workspace, user).await?;
                    match args.output {
                        Format::Json => output::json(&all),
                        Format::Text => all.iter().for_each(|s| {
                            output::line(&format!(
                                "{}\t{}\tv{}\tupdated {} by {}",
                                s.name, s.scope, s.version, s.updated_at, s.updated_by
                            ))
                        }),
                    }
                }
                SecretCommand::Delete { name, user } => {
                    client.delete_secret(&workspace, user, &name).await?;
                    match args.output {
                        Format::Json => output::json(&serde_json::json!({})),
                        Format::Text => output::line(&format!("deleted secret {name}")),
                    }
                }
            }
            Ok(())
        }
        .await,
    )
}

/// `tresor check`: runs the server's preflight probes and prints one line per probe; the exit
/// code is 1 when any failed.
pub async fn check(
    args: &ClientArgs,
    session: Session,
    compute_env: &str,
    workspace: Option<&str>,
) -> ExitCode {
    let result = async {
        let report = client(&session)?.check(compute_env, workspace).await?;
        match args.output {
            Format::Json => output::json(&report),
            Format::Text => {
                for check in &report.checks {
                    output::line(&format!(
                        "{:<4} {}: {}",
                        if check.ok { "ok" } else { "FAIL" },
                        check.name,
                        check.message
                    ));
                }
            }
        }
        anyhow::Ok(report.ok)
    }
    .await;
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
