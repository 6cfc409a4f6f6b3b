//! Online backups: a consistent copy of a live database, and the checks a copy must pass before
//! a server may start on it.

use std::path::Path;
use std::str::FromStr;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use crate::Error;

/// What a database holds, as `backup` and `inspect` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub tasks: i64,
    pub secret_versions: i64,
    pub audit_events: i64,
    /// The key-encryption keys its secrets and signing keys are sealed under: the key file a
    /// server starts it with must hold each of them.
    pub kek_ids: Vec<String>,
}

async fn open(path: &Path, read_only: bool) -> Result<SqliteConnection, Error> {
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .read_only(read_only)
        .busy_timeout(std::time::Duration::from_secs(30));
    Ok(SqliteConnection::connect_with(&options).await?)
}

/// Writes a consistent copy of the database at `source` to `dest`, which must not exist. The copy
/// is one read transaction (`VACUUM INTO`): a running server goes on writing meanwhile, and the
/// copy holds every commit before its start and none after. It is written to `dest.partial`
/// (0600), checked with `PRAGMA integrity_check`, synced, and only then renamed to `dest`.
pub async fn backup(source: &Path, dest: &Path) -> Result<Summary, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Open { path, source }
    };
    if !source.is_file() {
        return Err(Error::Open {
            path: source.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no database here"),
        });
    }
    if dest.exists() {
        return Err(Error::Conflict(
            "the backup file exists already; name a new file",
        ));
    }
    // Staged in a directory of its own, made new and private (mkdir follows no link), so nobody
    // else who can write to the destination's directory can put a link where SQLite writes.
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".{}.partial-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(io(&staging))?;
    }
    let partial = staging.join("copy.db");
    // Made empty and private first: VACUUM INTO fills an empty file and keeps its mode.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io(&partial))?;
    let copied = async {
        let mut conn = open(source, true).await?;
        sqlx::query("VACUUM INTO ?")
            .bind(partial.to_string_lossy().into_owned())
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        inspect(&partial).await
    }
    .await;
    let summary = match copied {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io(&partial))?;
    std::fs::rename(&partial, dest).map_err(io(dest))?;
    let _ = std::fs::remove_dir_all(&staging);
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(summary)
}

/// Checks a database file (a backup, say) without changing it: SQLite's integrity check, and
/// what it holds.
pub async fn inspect(path: &Path) -> Result<Summary, Error> {
    let mut conn = open(path, true).await?;
    let check: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await?;
    if check != ["ok"] {
        return Err(Error::Corrupt {
            id: path.display().to_string(),
            column: "integrity_check",
            reason: check.join("; "),
        });
    }
    let (tasks, secret_versions, audit_events): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM tasks), (SELECT COUNT(*) FROM secrets), (SELECT COUNT(*) FROM audit_events)",
    )
    .fetch_one(&mut conn)
    .await?;
    let kek_ids = sealed_kek_ids(&mut conn).await?;
    conn.close().await?;
    Ok(Summary {
        tasks,
        secret_versions,
        audit_events,
        kek_ids,
    })
}

pub(crate) async fn sealed_kek_ids(conn: &mut SqliteConnection) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT kek_id FROM secrets UNION SELECT kek_id FROM signing_keys ORDER BY 1",
    )
    .fetch_all(conn)
    .await?)
}

impl crate::Store {
    /// The key-encryption keys anything in the database is sealed under.
    pub async fn sealed_kek_ids(&self) -> Result<Vec<String>, Error> {
        let mut conn = self.reader.acquire().await?;
        sealed_kek_ids(&mut conn).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_backup_of_a_live_database_is_whole_private_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::test_settings(dir.path());
        let store = crate::Store::connect(&settings).await.unwrap();
        store.server_secret("k").await.unwrap();
        let dest = dir.path().join("copy.db");
        let summary = backup(&settings.path, &dest).await.unwrap();
        assert_eq!(summary.tasks, 0);
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // Never over an existing file.
        let again = backup(&settings.path, &dest).await.unwrap_err();
        assert!(again.to_string().contains("exists already"), "{again}");
        // A damaged copy fails its check.
        let mut bytes = std::fs::read(&dest).unwrap();
        // Its schema page and everything after the file header.
        bytes[100..].fill(0x5a);
        let broken = dir.path().join("broken.db");
        std::fs::write(&broken, bytes).unwrap();
        assert!(inspect(&broken).await.is_err());
    }
}
