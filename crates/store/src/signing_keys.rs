//! Token signing keys: sealed private halves, published public halves, rotation.

use sqlx::Row;
use time::OffsetDateTime;

use crate::audit::AuditEvent;
use crate::secrets::SealedRow;
use crate::{Error, Store, format_time};

/// One signing key as stored.
#[derive(Debug, Clone)]
pub struct SigningKeyRow {
    pub kid: String,
    pub alg: String,
    /// The public key as a JWK (JSON text).
    pub public_jwk: String,
    pub sealed: SealedRow,
    pub created_at: String,
    /// Set when a newer key took over signing.
    pub retired_at: Option<String>,
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<SigningKeyRow, Error> {
    Ok(SigningKeyRow {
        kid: row.try_get("kid")?,
        alg: row.try_get("alg")?,
        public_jwk: row.try_get("public_jwk")?,
        sealed: SealedRow {
            kek_id: row.try_get("kek_id")?,
            wrapped_key: row.try_get("wrapped_key")?,
            ciphertext: row.try_get("ciphertext")?,
        },
        created_at: row.try_get("created_at")?,
        retired_at: row.try_get("retired_at")?,
    })
}

impl Store {
    /// The key that signs now: the newest one not retired.
    pub async fn active_signing_key(&self) -> Result<Option<SigningKeyRow>, Error> {
        let row = sqlx::query(
            "SELECT * FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC, kid LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Every key whose public half must still be published at `now`.
    pub async fn published_signing_keys(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<SigningKeyRow>, Error> {
        let rows = sqlx::query(
            "SELECT * FROM signing_keys WHERE publish_until IS NULL OR publish_until > ?
             ORDER BY created_at DESC, kid",
        )
        .bind(format_time(now))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Every stored key, for a KEK rotation.
    pub async fn all_signing_keys(&self) -> Result<Vec<SigningKeyRow>, Error> {
        let rows = sqlx::query("SELECT * FROM signing_keys")
            .fetch_all(&self.writer)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Makes `key` the signing key: the previous one retires now and stays published until
    /// `old_publish_until`, so the tokens it signed keep verifying until they expire. Keys
    /// past their publication are deleted. One transaction, audited.
    pub async fn rotate_signing_key(
        &self,
        key: &SigningKeyRow,
        old_publish_until: OffsetDateTime,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        let now = format_time(OffsetDateTime::now_utc());
        self.audited(event, async |conn| {
            sqlx::query(
                "UPDATE signing_keys SET retired_at = ?, publish_until = ? WHERE retired_at IS NULL",
            )
            .bind(&now)
            .bind(format_time(old_publish_until))
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "DELETE FROM signing_keys WHERE publish_until IS NOT NULL AND publish_until <= ?",
            )
            .bind(&now)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO signing_keys (kid, alg, public_jwk, kek_id, wrapped_key, ciphertext, created_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&key.kid)
            .bind(&key.alg)
            .bind(&key.public_jwk)
            .bind(&key.sealed.kek_id)
            .bind(&key.sealed.wrapped_key)
            .bind(&key.sealed.ciphertext)
            .bind(&key.created_at)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
        .await
    }

    /// Replaces the wrapped data keys of signing keys (a KEK rotation), all or nothing.
    pub async fn replace_signing_key_wraps(&self, keys: &[SigningKeyRow]) -> Result<(), Error> {
        let mut tx = self.begin_write().await?;
        for key in keys {
            sqlx::query("UPDATE signing_keys SET kek_id = ?, wrapped_key = ? WHERE kid = ?")
                .bind(&key.sealed.kek_id)
                .bind(&key.sealed.wrapped_key)
                .bind(&key.kid)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
