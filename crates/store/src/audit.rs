//! The audit trail: append-only events, each carrying the SHA-256 of the one before it, written in
//! the same transaction as the action they record.

use serde_json::json;
use sqlx::{Row, SqliteConnection};
use time::OffsetDateTime;

use crate::{Error, Store, format_time};

/// One thing somebody did (or tried to do). Never holds a secret or token value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The user id, or `-` when nobody was authenticated.
    pub actor: String,
    /// What was done, as `object.verb`: `task.create`, `member.add`, `token.revoke`.
    pub action: String,
    /// What it was done to, as `kind:id`.
    pub object: String,
    pub workspace: Option<String>,
    /// The network address the request came from.
    pub source: Option<String>,
    /// `ok`, or `denied: …` / `failed: …`.
    pub result: String,
    /// Extra facts, such as a secret's version and keyed fingerprint. Never a value.
    pub detail: Option<String>,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBreak {
    pub seq: i64,
    pub reason: String,
}

const GENESIS: [u8; 32] = [0; 32];

fn chain_hash(prev: &[u8], body: &str) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev);
    ctx.update(body.as_bytes());
    ctx.finish().as_ref().to_vec()
}

/// Appends an event inside the caller's transaction, so the action and its record commit together.
pub(crate) async fn append(conn: &mut SqliteConnection, event: &AuditEvent) -> Result<(), Error> {
    let prev: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::Database)?;
    let prev = prev.unwrap_or_else(|| GENESIS.to_vec());
    let body = json!({
        "time": format_time(OffsetDateTime::now_utc()),
        "actor": event.actor,
        "action": event.action,
        "object": event.object,
        "workspace": event.workspace,
        "source": event.source,
        "result": event.result,
        "detail": event.detail,
    })
    .to_string();
    let hash = chain_hash(&prev, &body);
    sqlx::query("INSERT INTO audit_events (body, prev_hash, hash) VALUES (?, ?, ?)")
        .bind(&body)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut *conn)
        .await
        .map_err(Error::Database)?;
    sqlx::query("INSERT INTO meta (key, value) VALUES ('audit_head', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(&hash)
        .execute(&mut *conn)
        .await
        .map_err(Error::Database)?;
    Ok(())
}

impl Store {
    /// Records an event on its own, for refusals that change nothing else.
    pub async fn record_audit(&self, event: &AuditEvent) -> Result<(), Error> {
        let mut tx = self.writer.begin().await.map_err(Error::Database)?;
        append(&mut tx, event).await?;
        tx.commit().await.map_err(Error::Database)
    }

    /// The events, oldest first, as their JSON bodies.
    pub async fn audit_events(&self, limit: u32) -> Result<Vec<String>, Error> {
        sqlx::query_scalar("SELECT body FROM audit_events ORDER BY seq ASC LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(Error::Database)
    }

    /// Recomputes the chain. Returns the number of events, or where the first break is: an edited
    /// event fails its own hash, a deleted or moved one breaks the link to its neighbour, and a
    /// removed tail no longer ends at the recorded head.
    pub async fn verify_audit(&self) -> Result<Result<u64, AuditBreak>, Error> {
        let rows =
            sqlx::query("SELECT seq, body, prev_hash, hash FROM audit_events ORDER BY seq ASC")
                .fetch_all(&self.reader)
                .await
                .map_err(Error::Database)?;
        let mut expected_prev = GENESIS.to_vec();
        let mut count = 0u64;
        for row in &rows {
            let seq: i64 = row.try_get("seq").map_err(Error::Database)?;
            let body: String = row.try_get("body").map_err(Error::Database)?;
            let prev: Vec<u8> = row.try_get("prev_hash").map_err(Error::Database)?;
            let hash: Vec<u8> = row.try_get("hash").map_err(Error::Database)?;
            if prev != expected_prev {
                return Ok(Err(AuditBreak {
                    seq,
                    reason: "does not follow the event before it: an event was deleted, inserted or reordered".to_owned(),
                }));
            }
            if chain_hash(&prev, &body) != hash {
                return Ok(Err(AuditBreak {
                    seq,
                    reason: "its content does not match its hash: the event was edited".to_owned(),
                }));
            }
            expected_prev = hash;
            count += 1;
        }
        let head: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_head'")
                .fetch_optional(&self.reader)
                .await
                .map_err(Error::Database)?;
        if head.unwrap_or_else(|| GENESIS.to_vec()) != expected_prev {
            return Ok(Err(AuditBreak {
                seq: rows.len() as i64,
                reason:
                    "the trail does not end at the recorded head: events were removed from its end"
                        .to_owned(),
            }));
        }
        Ok(Ok(count))
    }
}
