//! Pipeline secrets: versioned, encrypted rows. The store never sees plaintext; it keeps what
//! `tresor-crypto` sealed and the metadata around it.

use sqlx::Row;
use time::OffsetDateTime;
use tresor_domain::{UserId, WorkspaceId};

use crate::audit::{self, AuditEvent};
use crate::{Error, Store, format_time, is_unique_violation};

const SECRET_CHANGED: &str =
    "the secret changed since you read it; fetch its current version and retry";

/// Which secret: a workspace secret (`owner` None) or a member's user secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKey {
    pub workspace: WorkspaceId,
    pub owner: Option<UserId>,
    pub name: String,
}

impl SecretKey {
    pub fn scope(&self) -> &'static str {
        if self.owner.is_some() {
            "user"
        } else {
            "workspace"
        }
    }

    fn owner_str(&self) -> &str {
        self.owner.as_ref().map(UserId::as_str).unwrap_or("")
    }
}

/// The encrypted form of one version, as `tresor-crypto` produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRow {
    pub kek_id: String,
    pub wrapped_key: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// A secret's metadata; there is no value field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMeta {
    pub name: String,
    pub scope: &'static str,
    pub version: i64,
    pub created_by: String,
    pub created_at: String,
    pub updated_by: String,
    pub updated_at: String,
    pub last_used_at: Option<String>,
}

/// One stored version, for key rotation.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub key: SecretKey,
    pub version: i64,
    pub sealed: SealedRow,
}

impl Store {
    /// The newest version of a live secret, and its sealed value.
    pub async fn current_secret(&self, key: &SecretKey) -> Result<Option<(i64, SealedRow)>, Error> {
        let row = sqlx::query(
            "SELECT version, kek_id, wrapped_key, ciphertext FROM secrets
             WHERE workspace = ? AND scope = ? AND owner = ? AND name = ? AND deleted_at IS NULL
             ORDER BY version DESC LIMIT 1",
        )
        .bind(key.workspace.as_str())
        .bind(key.scope())
        .bind(key.owner_str())
        .bind(&key.name)
        .fetch_optional(&self.writer)
        .await?;
        row.map(|row| {
            Ok((
                row.try_get("version")?,
                SealedRow {
                    kek_id: row.try_get("kek_id")?,
                    wrapped_key: row.try_get("wrapped_key")?,
                    ciphertext: row.try_get("ciphertext")?,
                },
            ))
        })
        .transpose()
    }

    /// The highest version number ever used for this secret (deleted ones included), so a new
    /// version never reuses the associated data of an old ciphertext.
    pub async fn last_secret_version(&self, key: &SecretKey) -> Result<i64, Error> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(version) FROM secrets WHERE workspace = ? AND scope = ? AND owner = ? AND name = ?",
        )
        .bind(key.workspace.as_str())
        .bind(key.scope())
        .bind(key.owner_str())
        .bind(&key.name)
        .fetch_one(&self.writer)
        .await?;
        Ok(v.unwrap_or(0))
    }

    /// Stores `version` of a secret if its live version is still `expected` (None: no live
    /// secret), so concurrent writers cannot lose an update; `Error::Conflict` otherwise.
    /// Audited in the same transaction.
    pub async fn put_secret_version(
        &self,
        key: &SecretKey,
        expected: Option<i64>,
        version: i64,
        sealed: &SealedRow,
        actor: &UserId,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        self.audited(event, async |conn| {
            let live: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(version) FROM secrets WHERE workspace = ? AND scope = ? AND owner = ? AND name = ? AND deleted_at IS NULL",
            )
            .bind(key.workspace.as_str())
            .bind(key.scope())
            .bind(key.owner_str())
            .bind(&key.name)
            .fetch_one(&mut *conn)
            .await?;
            if live != expected {
                return Err(Error::Conflict(SECRET_CHANGED));
            }
            sqlx::query(
                "INSERT INTO secrets (workspace, scope, owner, name, version, kek_id, wrapped_key, ciphertext, created_by, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(key.workspace.as_str())
            .bind(key.scope())
            .bind(key.owner_str())
            .bind(&key.name)
            .bind(version)
            .bind(&sealed.kek_id)
            .bind(&sealed.wrapped_key)
            .bind(&sealed.ciphertext)
            .bind(actor.as_str())
            .bind(format_time(OffsetDateTime::now_utc()))
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                // Another write took this version number (and was deleted again) since the caller
                // chose it: the same situation as a changed live version.
                if is_unique_violation(&e) {
                    Error::Conflict(SECRET_CHANGED)
                } else {
                    Error::Database(e)
                }
            })?;
            Ok(())
        })
        .await
    }

    /// Records that versions were delivered to a task, with their audit events, in one transaction.
    pub async fn record_secret_uses(
        &self,
        uses: &[(SecretKey, i64, AuditEvent)],
    ) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        for (key, version, event) in uses {
            sqlx::query(
                "UPDATE secrets SET last_used_at = ? WHERE workspace = ? AND scope = ? AND owner = ? AND name = ? AND version = ?",
            )
            .bind(format_time(OffsetDateTime::now_utc()))
            .bind(key.workspace.as_str())
            .bind(key.scope())
            .bind(key.owner_str())
            .bind(&key.name)
            .bind(*version)
            .execute(&mut *tx)
            .await?;
            audit::append(&mut tx, &self.audit_key, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Soft-deletes every version of a live secret; false if there is none.
    pub async fn delete_secret(&self, key: &SecretKey, event: &AuditEvent) -> Result<bool, Error> {
        self.audited_if(async |conn| {
            let done = sqlx::query(
                "UPDATE secrets SET deleted_at = ? WHERE workspace = ? AND scope = ? AND owner = ? AND name = ? AND deleted_at IS NULL",
            )
            .bind(format_time(OffsetDateTime::now_utc()))
            .bind(key.workspace.as_str())
            .bind(key.scope())
            .bind(key.owner_str())
            .bind(&key.name)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 0 {
                return Ok((false, None));
            }
            Ok((true, Some(event.clone())))
        })
        .await
    }

    /// Removes soft-deleted versions deleted before `cutoff`; returns how many.
    pub async fn purge_deleted_secrets(&self, cutoff: OffsetDateTime) -> Result<u64, Error> {
        let done =
            sqlx::query("DELETE FROM secrets WHERE deleted_at IS NOT NULL AND deleted_at < ?")
                .bind(format_time(cutoff))
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected())
    }

    /// Metadata of the live secrets in a workspace: its workspace secrets, or one member's user secrets.
    pub async fn list_secrets(
        &self,
        workspace: &WorkspaceId,
        owner: Option<&UserId>,
    ) -> Result<Vec<SecretMeta>, Error> {
        let scope = if owner.is_some() { "user" } else { "workspace" };
        let rows = sqlx::query(
            "SELECT name, MAX(version) AS version, MIN(created_at) AS first_at, MAX(created_at) AS last_at,
                    MAX(last_used_at) AS last_used_at,
                    (SELECT created_by FROM secrets f WHERE f.workspace = s.workspace AND f.scope = s.scope AND f.owner = s.owner AND f.name = s.name ORDER BY version ASC LIMIT 1) AS first_by,
                    (SELECT created_by FROM secrets l WHERE l.workspace = s.workspace AND l.scope = s.scope AND l.owner = s.owner AND l.name = s.name ORDER BY version DESC LIMIT 1) AS last_by
             FROM secrets s WHERE workspace = ? AND scope = ? AND owner = ? AND deleted_at IS NULL
             GROUP BY name ORDER BY name",
        )
        .bind(workspace.as_str())
        .bind(scope)
        .bind(owner.map(UserId::as_str).unwrap_or(""))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SecretMeta {
                    name: row.try_get("name")?,
                    scope,
                    version: row.try_get("version")?,
                    created_by: row.try_get("first_by")?,
                    created_at: row.try_get("first_at")?,
                    updated_by: row.try_get("last_by")?,
                    updated_at: row.try_get("last_at")?,
                    last_used_at: row.try_get("last_used_at")?,
                })
            })
            .collect()
    }

    /// Every live secret in every workspace, for the server's log redactor.
    pub async fn live_secret_keys(&self) -> Result<Vec<SecretKey>, Error> {
        let rows = sqlx::query(
            "SELECT DISTINCT workspace, owner, name FROM secrets WHERE deleted_at IS NULL",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .filter_map(|row| {
                let ws: String = row.try_get("workspace").ok()?;
                let owner: String = row.try_get("owner").ok()?;
                Some(SecretKey {
                    workspace: WorkspaceId::parse(&ws).ok()?,
                    owner: if owner.is_empty() {
                        None
                    } else {
                        UserId::parse(&owner).ok()
                    },
                    name: row.try_get("name").ok()?,
                })
            })
            .map(Ok)
            .collect()
    }

    /// Every stored version (live or soft-deleted), for re-wrapping under a new KEK.
    pub async fn all_secret_versions(&self) -> Result<Vec<StoredVersion>, Error> {
        let rows = sqlx::query(
            "SELECT workspace, owner, name, version, kek_id, wrapped_key, ciphertext FROM secrets",
        )
        .fetch_all(&self.writer)
        .await?;
        rows.iter()
            .map(|row| {
                let ws: String = row.try_get("workspace")?;
                let owner: String = row.try_get("owner")?;
                let corrupt = |column: &'static str, e: tresor_domain::IdError| Error::Corrupt {
                    id: ws.clone(),
                    column,
                    reason: e.to_string(),
                };
                Ok(StoredVersion {
                    key: SecretKey {
                        workspace: WorkspaceId::parse(&ws).map_err(|e| corrupt("workspace", e))?,
                        owner: if owner.is_empty() {
                            None
                        } else {
                            Some(UserId::parse(&owner).map_err(|e| corrupt("owner", e))?)
                        },
                        name: row.try_get("name")?,
                    },
                    version: row.try_get("version")?,
                    sealed: SealedRow {
                        kek_id: row.try_get("kek_id")?,
                        wrapped_key: row.try_get("wrapped_key")?,
                        ciphertext: row.try_get("ciphertext")?,
                    },
                })
            })
            .collect()
    }

    /// Replaces wrapped data keys (a KEK rotation) in one transaction: all or nothing.
    pub async fn replace_wrapped_keys(
        &self,
        rewrapped: &[StoredVersion],
        event: &AuditEvent,
    ) -> Result<(), Error> {
        self.audited(event, async |conn| {
            for v in rewrapped {
                sqlx::query(
                    "UPDATE secrets SET kek_id = ?, wrapped_key = ? WHERE workspace = ? AND scope = ? AND owner = ? AND name = ? AND version = ?",
                )
                .bind(&v.sealed.kek_id)
                .bind(&v.sealed.wrapped_key)
                .bind(v.key.workspace.as_str())
                .bind(v.key.scope())
                .bind(v.key.owner_str())
                .bind(&v.key.name)
                .bind(v.version)
                .execute(&mut *conn)
                .await?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deleted_versions_are_kept_for_the_retention_period_then_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&crate::test_settings(dir.path()))
            .await
            .unwrap();
        let key = SecretKey {
            workspace: WorkspaceId::parse("ws").unwrap(),
            owner: None,
            name: "A".to_owned(),
        };
        let actor = UserId::parse("u1").unwrap();
        let event = AuditEvent {
            actor: "u1".to_owned(),
            action: "secret.create".to_owned(),
            object: "secret:workspace:A".to_owned(),
            workspace: Some("ws".to_owned()),
            source: None,
            result: "ok".to_owned(),
            detail: None,
        };
        let sealed = SealedRow {
            kek_id: "k".to_owned(),
            wrapped_key: vec![1],
            ciphertext: vec![2],
        };
        store
            .put_secret_version(&key, None, 1, &sealed, &actor, &event)
            .await
            .unwrap();
        assert!(store.delete_secret(&key, &event).await.unwrap());
        assert_eq!(
            store
                .purge_deleted_secrets(OffsetDateTime::now_utc() - time::Duration::days(30))
                .await
                .unwrap(),
            0,
            "still retained"
        );
        assert_eq!(store.last_secret_version(&key).await.unwrap(), 1);
        assert_eq!(
            store
                .purge_deleted_secrets(OffsetDateTime::now_utc() + time::Duration::seconds(1))
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.last_secret_version(&key).await.unwrap(), 0);
    }
}
