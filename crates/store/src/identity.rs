//! Users and their personal access tokens.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tresor_domain::UserId;

use crate::audit::AuditEvent;
use crate::{Error, Store, format_time, is_unique_violation};

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub issuer: String,
    pub subject: String,
    pub name: String,
    pub is_admin: bool,
}

/// A stored token: never the token itself, only its id and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub user: UserId,
    pub name: String,
    pub secret_hash: Vec<u8>,
    pub created_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    pub last_used_at: Option<OffsetDateTime>,
}

fn parse_time(
    id: &str,
    column: &'static str,
    s: Option<String>,
) -> Result<Option<OffsetDateTime>, Error> {
    s.map(|s| {
        OffsetDateTime::parse(&s, &Rfc3339).map_err(|e| Error::Corrupt {
            id: id.to_owned(),
            column,
            reason: e.to_string(),
        })
    })
    .transpose()
}

fn user_from_row(row: &SqliteRow) -> Result<UserRecord, Error> {
    let id: String = row.try_get("id")?;
    Ok(UserRecord {
        id: UserId::parse(&id).map_err(|e| Error::Corrupt {
            id: id.clone(),
            column: "id",
            reason: e.to_string(),
        })?,
        issuer: row.try_get("issuer")?,
        subject: row.try_get("subject")?,
        name: row.try_get("name")?,
        is_admin: row.try_get::<i64, _>("is_admin")? != 0,
    })
}

fn token_from_row(row: &SqliteRow) -> Result<TokenRecord, Error> {
    let id: String = row.try_get("id")?;
    let user: String = row.try_get("user_id")?;
    let created: String = row.try_get("created_at")?;
    Ok(TokenRecord {
        user: UserId::parse(&user).map_err(|e| Error::Corrupt {
            id: id.clone(),
            column: "user_id",
            reason: e.to_string(),
        })?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        created_at: parse_time(&id, "created_at", Some(created))?
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        expires_at: parse_time(&id, "expires_at", row.try_get("expires_at")?)?,
        revoked_at: parse_time(&id, "revoked_at", row.try_get("revoked_at")?)?,
        last_used_at: parse_time(&id, "last_used_at", row.try_get("last_used_at")?)?,
        id,
    })
}

const USER_COLUMNS: &str = "id, issuer, subject, name, is_admin";
const TOKEN_COLUMNS: &str =
    "id, user_id, name, secret_hash, created_at, expires_at, revoked_at, last_used_at";

impl Store {
    pub async fn count_users(&self) -> Result<i64, Error> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.writer)
            .await?;
        Ok(count)
    }

    /// Creates a user; `Error::Conflict` if (issuer, subject) exists.
    pub async fn create_user(&self, user: &UserRecord, event: &AuditEvent) -> Result<(), Error> {
        self.audited(event, async |conn| {
            sqlx::query("INSERT INTO users (id, issuer, subject, name, is_admin, created_at) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(user.id.as_str())
                .bind(&user.issuer)
                .bind(&user.subject)
                .bind(&user.name)
                .bind(i64::from(user.is_admin))
                .bind(format_time(OffsetDateTime::now_utc()))
                .execute(&mut *conn)
                .await
                .map_err(|e| if is_unique_violation(&e) { Error::Conflict("a user with this name already exists") } else { Error::Database(e) })?;
            Ok(())
        })
        .await
    }

    pub async fn get_user(&self, id: &UserId) -> Result<Option<UserRecord>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = ?"
        )))
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn find_user(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<UserRecord>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE issuer = ? AND subject = ?"
        )))
        .bind(issuer)
        .bind(subject)
        .fetch_optional(&self.writer)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn list_users(&self) -> Result<Vec<UserRecord>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id"
        )))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    pub async fn create_token(&self, token: &TokenRecord, event: &AuditEvent) -> Result<(), Error> {
        self.audited(event, async |conn| {
            sqlx::query("INSERT INTO tokens (id, user_id, name, secret_hash, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(&token.id)
                .bind(token.user.as_str())
                .bind(&token.name)
                .bind(&token.secret_hash)
                .bind(format_time(token.created_at))
                .bind(token.expires_at.map(format_time))
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, Error> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?"
        )))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub async fn list_tokens(&self, user: &UserId) -> Result<Vec<TokenRecord>, Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE user_id = ? ORDER BY created_at, id"
        )))
        .bind(user.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a live token of `user`, or of anyone when `user` is None (an administrator's
    /// revocation); false if there is no such live token.
    pub async fn revoke_token(
        &self,
        id: &str,
        user: Option<&UserId>,
        event: &AuditEvent,
    ) -> Result<bool, Error> {
        let user = user.map(UserId::as_str);
        self.audited_if(async |conn| {
            let done = sqlx::query(
                "UPDATE tokens SET revoked_at = ?
                 WHERE id = ? AND (? IS NULL OR user_id = ?) AND revoked_at IS NULL",
            )
            .bind(format_time(OffsetDateTime::now_utc()))
            .bind(id)
            .bind(user)
            .bind(user)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 0 {
                return Ok((false, None));
            }
            Ok((true, Some(event.clone())))
        })
        .await
    }

    /// Records that a token was used (callers throttle this to about once a minute per token).
    pub async fn touch_token(&self, id: &str, when: OffsetDateTime) -> Result<(), Error> {
        sqlx::query("UPDATE tokens SET last_used_at = ? WHERE id = ?")
            .bind(format_time(when))
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
