//! Where client commands find the server and the token: flags, then `TRESOR_URL`/`TRESOR_TOKEN`,
//! then the file `tresor login` wrote (mode 0600), then the local default URL.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server's URL (also `TRESOR_URL`).
    #[arg(long, env = "TRESOR_URL", global = true)]
    pub url: Option<String>,
    /// Output format: readable text, or JSON for scripts.
    #[arg(long = "format", value_enum, default_value = "text", global = true)]
    pub output: Format,
    /// The credentials file `tresor login` writes (default: ~/.config/tresor/credentials.json).
    #[arg(long, global = true)]
    pub credentials_file: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// What `tresor login` stores.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub url: String,
    pub token: String,
}

/// The resolved server and credential.
pub struct Session {
    pub url: String,
    pub token: Option<String>,
}

pub fn credentials_path(args: &ClientArgs) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.credentials_file {
        return Ok(path.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --credentials-file")?;
    Ok(PathBuf::from(home).join(".config/tresor/credentials.json"))
}

fn stored(args: &ClientArgs) -> Option<Stored> {
    let path = credentials_path(args).ok()?;
    let raw = std::fs::read(path).ok()?;
    serde_json::from_slice(&raw).ok()
}

/// Resolves the server URL and token for a client command.
pub fn resolve(args: &ClientArgs) -> Session {
    // The token comes only from the environment or the credentials file, never from a flag:
    // command lines are visible to every user of the machine.
    let env_token = std::env::var("TRESOR_TOKEN").ok().filter(|t| !t.is_empty());
    let file = stored(args);
    let url = args
        .url
        .clone()
        .or_else(|| file.as_ref().map(|f| f.url.clone()))
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());
    let token = env_token.or_else(|| file.map(|f| f.token));
    Session { url, token }
}

/// Writes the credentials file with mode 0600 (its directory 0700).
pub fn store(args: &ClientArgs, stored: &Stored) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = credentials_path(args)?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(stored)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}
