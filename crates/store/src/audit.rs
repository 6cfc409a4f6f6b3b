//! The audit trail: append-only events, each carrying an HMAC-SHA256 of the event before it and of
//! its own body, written in the same transaction as the action they record. The HMAC key lives in
//! a file apart from the database, so whoever holds only the database cannot recompute a link:
//! editing, inserting, deleting or reordering events breaks the chain where it happened.

use std::path::Path;

use ring::hmac;
use serde_json::json;
use sqlx::{Row, SqliteConnection, SqlitePool};
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

/// The audit key file's size: the raw key, nothing else.
pub(crate) const AUDIT_KEY_LEN: usize = 32;

const GENESIS: [u8; 32] = [0; 32];

/// The `meta` row that marks the chain as keyed. It holds an HMAC of `KEY_CHECK_TEXT` under the
/// audit key, so a start with the wrong key file is refused instead of extending the chain
/// under a key that cannot verify it; without the key it reveals nothing.
const KEY_CHECK: &str = "audit_key_check";
const KEY_CHECK_TEXT: &[u8] = b"tresor audit key check v1";

/// A link: HMAC-SHA256 under the audit key of the previous link (32 bytes, so the boundary is
/// fixed) followed by the event's body.
fn keyed_hash(key: &hmac::Key, prev: &[u8], body: &str) -> Vec<u8> {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(prev);
    ctx.update(body.as_bytes());
    ctx.sign().as_ref().to_vec()
}

/// A link of a chain written before the audit key existed: plain SHA-256, which anyone holding the
/// database can recompute. Only used to check such a chain once, before it is re-keyed.
fn plain_hash(prev: &[u8], body: &str) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev);
    ctx.update(body.as_bytes());
    ctx.finish().as_ref().to_vec()
}

/// Appends an event inside the caller's transaction, so the action and its record commit together.
pub(crate) async fn append(
    conn: &mut SqliteConnection,
    key: &hmac::Key,
    event: &AuditEvent,
) -> Result<(), Error> {
    let prev: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
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
    let hash = keyed_hash(key, &prev, &body);
    sqlx::query("INSERT INTO audit_events (body, prev_hash, hash) VALUES (?, ?, ?)")
        .bind(&body)
        .bind(&prev)
        .bind(&hash)
        .execute(&mut *conn)
        .await?;
    set_head(conn, &hash).await
}

async fn set_head(conn: &mut SqliteConnection, hash: &[u8]) -> Result<(), Error> {
    sqlx::query("INSERT INTO meta (key, value) VALUES ('audit_head', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
        .bind(hash)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One stored event as the chain sees it.
struct Link {
    seq: i64,
    body: String,
    prev: Vec<u8>,
    hash: Vec<u8>,
}

/// Every link, oldest first, and the recorded head, read on one connection (inside one
/// transaction when the caller holds one, so the two agree).
async fn load_chain(conn: &mut SqliteConnection) -> Result<(Vec<Link>, Option<Vec<u8>>), Error> {
    let rows = sqlx::query("SELECT seq, body, prev_hash, hash FROM audit_events ORDER BY seq ASC")
        .fetch_all(&mut *conn)
        .await?;
    let links = rows
        .iter()
        .map(|row| {
            Ok(Link {
                seq: row.try_get("seq")?,
                body: row.try_get("body")?,
                prev: row.try_get("prev_hash")?,
                hash: row.try_get("hash")?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let head: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_head'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok((links, head))
}

/// Walks the chain with `link_hash`. Returns the number of events, or where the first break is:
/// an edited event fails its own hash, a deleted or moved one breaks the link to its neighbour,
/// and a removed tail no longer ends at the recorded head.
fn check_chain(
    links: &[Link],
    head: Option<&[u8]>,
    link_hash: impl Fn(&[u8], &str) -> Vec<u8>,
) -> Result<u64, AuditBreak> {
    let mut expected_prev = GENESIS.to_vec();
    for link in links {
        if link.prev != expected_prev {
            return Err(AuditBreak {
                seq: link.seq,
                reason: "does not follow the event before it: an event was deleted, inserted or reordered".to_owned(),
            });
        }
        if link_hash(&link.prev, &link.body) != link.hash {
            return Err(AuditBreak {
                seq: link.seq,
                reason: "its content does not match its hash: the event was edited, or the trail was re-chained without the audit key".to_owned(),
            });
        }
        expected_prev.clone_from(&link.hash);
    }
    if head.unwrap_or(&GENESIS) != expected_prev.as_slice() {
        return Err(AuditBreak {
            seq: links.len() as i64,
            reason: "the trail does not end at the recorded head: events were removed from its end"
                .to_owned(),
        });
    }
    Ok(links.len() as u64)
}

fn key_file_error(path: &Path, reason: impl ToString) -> Error {
    Error::AuditKeyFile {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads the audit key file; None if there is none.
fn read_key_file(path: &Path) -> Result<Option<hmac::Key>, Error> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(key_file_error(path, e)),
    };
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(key_file_error(
            path,
            "is readable by group or others; chmod 600 it",
        ));
    }
    let raw = std::fs::read(path).map_err(|e| key_file_error(path, e))?;
    if raw.len() != AUDIT_KEY_LEN {
        return Err(key_file_error(
            path,
            format!(
                "must hold exactly {AUDIT_KEY_LEN} bytes, and holds {}",
                raw.len()
            ),
        ));
    }
    Ok(Some(hmac::Key::new(hmac::HMAC_SHA256, &raw)))
}

/// Creates the audit key file (0600) with a new key from the system RNG.
fn create_key_file(path: &Path) -> Result<hmac::Key, Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let raw = crate::random_bytes::<AUDIT_KEY_LEN>()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| key_file_error(path, e))?;
    file.write_all(&raw).map_err(|e| key_file_error(path, e))?;
    file.sync_all().map_err(|e| key_file_error(path, e))?;
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &raw))
}

/// Loads the audit key and makes sure the chain is under it before anything is appended.
///
/// - A keyed chain (its marker in `meta`) needs its key file, and exactly that key.
/// - A new database adopts the key file, creating it if there is none.
/// - A trail written before the audit key existed is checked as the plain chain it was, then every
///   event is re-chained under a new key file in one transaction, and an `audit.rekey` event says so.
///   A broken plain chain is refused (re-keying it would make the tampering verify), and so is an
///   unkeyed trail when the key file already exists: that means the marker was removed from a
///   keyed database, perhaps to have a rewritten plain chain re-keyed.
pub(crate) async fn open_chain(pool: &SqlitePool, key_file: &Path) -> Result<hmac::Key, Error> {
    // IMMEDIATE takes the write lock from the first read, so two processes opening one old
    // database cannot both re-key it.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let check: Option<Vec<u8>> = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
        .bind(KEY_CHECK)
        .fetch_optional(&mut *tx)
        .await?;
    let existing = read_key_file(key_file)?;
    let path = || key_file.to_owned();
    if let Some(check) = check {
        let key = existing.ok_or_else(|| Error::AuditKeyMissing { path: path() })?;
        hmac::verify(&key, KEY_CHECK_TEXT, &check)
            .map_err(|_| Error::AuditKeyMismatch { path: path() })?;
        tx.rollback().await?;
        return Ok(key);
    }
    let (links, head) = load_chain(&mut tx).await?;
    let (key, created) = match existing {
        Some(key) if links.is_empty() => (key, false),
        Some(_) => return Err(Error::AuditNotKeyed { path: path() }),
        None => {
            // Checked before the key file exists, so a refused upgrade leaves nothing behind.
            if let Err(broken) = check_chain(&links, head.as_deref(), plain_hash) {
                return Err(Error::AuditBroken {
                    seq: broken.seq,
                    reason: broken.reason,
                });
            }
            (create_key_file(key_file)?, true)
        }
    };
    let written = match rechain(&mut tx, &key, &links).await {
        Ok(()) => tx.commit().await.map_err(Error::Database),
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        if created {
            // The next start must see the trail as never keyed, not as keyed with a lost marker.
            let _ = std::fs::remove_file(key_file);
        }
        return Err(e);
    }
    Ok(key)
}

/// Rewrites every link under `key`, records the head and the key check, and, if there were events,
/// appends an `audit.rekey` event that says how many were re-chained.
async fn rechain(
    conn: &mut SqliteConnection,
    key: &hmac::Key,
    links: &[Link],
) -> Result<(), Error> {
    let mut prev = GENESIS.to_vec();
    for link in links {
        let hash = keyed_hash(key, &prev, &link.body);
        sqlx::query("UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(&prev)
            .bind(&hash)
            .bind(link.seq)
            .execute(&mut *conn)
            .await?;
        prev = hash;
    }
    if !links.is_empty() {
        set_head(conn, &prev).await?;
    }
    let check = hmac::sign(key, KEY_CHECK_TEXT);
    sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?)")
        .bind(KEY_CHECK)
        .bind(check.as_ref())
        .execute(&mut *conn)
        .await?;
    if !links.is_empty() {
        let event = AuditEvent {
            actor: "-".to_owned(),
            action: "audit.rekey".to_owned(),
            object: "audit:trail".to_owned(),
            workspace: None,
            source: None,
            result: "ok".to_owned(),
            detail: Some(format!(
                "{} events, written before the audit key existed, verified as a plain SHA-256 chain and re-chained under the key",
                links.len()
            )),
        };
        append(conn, key, &event).await?;
    }
    Ok(())
}

impl Store {
    /// Runs `change` and appends `event` to the audit chain in one transaction on the writer:
    /// both are committed, or neither. When `change` fails, or the event cannot be appended, the
    /// transaction is dropped uncommitted, which rolls the change back.
    pub(crate) async fn audited<T>(
        &self,
        event: &AuditEvent,
        change: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut tx = self.begin_write().await?;
        let out = change(&mut *tx).await?;
        append(&mut tx, &self.audit_key, event).await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Like `audited`, for a change that decides whether there is anything to record: it returns
    /// its result and the event to append, if any (built from what it found, when it likes). With
    /// an event, the change and the event are committed together, or neither is. Without one,
    /// the transaction is dropped uncommitted: the change found nothing to do, and whatever it
    /// did is rolled back.
    pub(crate) async fn audited_if<T>(
        &self,
        change: impl AsyncFnOnce(&mut SqliteConnection) -> Result<(T, Option<AuditEvent>), Error>,
    ) -> Result<T, Error> {
        let mut tx = self.begin_write().await?;
        let (out, event) = change(&mut *tx).await?;
        if let Some(event) = event {
            append(&mut tx, &self.audit_key, &event).await?;
            tx.commit().await?;
        }
        Ok(out)
    }

    /// Records an event on its own, for refusals that change nothing else.
    pub async fn record_audit(&self, event: &AuditEvent) -> Result<(), Error> {
        self.audited(event, async |_| Ok(())).await
    }

    /// The events, oldest first, as their JSON bodies.
    pub async fn audit_events(&self, limit: u32) -> Result<Vec<String>, Error> {
        let events: Vec<String> =
            sqlx::query_scalar("SELECT body FROM audit_events ORDER BY seq ASC LIMIT ?")
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
        Ok(events)
    }

    /// Recomputes the chain under the audit key. Returns the number of events, or where the first
    /// break is: an edited event fails its own hash, a deleted or moved one breaks the link to its
    /// neighbour, and a removed tail no longer ends at the recorded head. Without the key none of
    /// these can be repaired; removing the newest events together with the head can (see
    /// ARCHITECTURE.md).
    pub async fn verify_audit(&self) -> Result<Result<u64, AuditBreak>, Error> {
        // One read transaction, so the events and the head come from the same moment even while
        // a server appends.
        let mut tx = self.reader.begin().await?;
        let (links, head) = load_chain(&mut tx).await?;
        tx.rollback().await?;
        Ok(check_chain(&links, head.as_deref(), |prev, body| {
            keyed_hash(&self.audit_key, prev, body)
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::test_settings;

    fn event(n: usize) -> AuditEvent {
        AuditEvent {
            actor: "u1".to_owned(),
            action: "secret.deliver".to_owned(),
            object: format!("secret:workspace:S{n}"),
            workspace: Some("ws".to_owned()),
            source: None,
            result: "ok".to_owned(),
            detail: Some(format!("version {n}")),
        }
    }

    async fn store_with_events(dir: &Path, n: usize) -> Store {
        let store = Store::connect(&test_settings(dir)).await.unwrap();
        for i in 0..n {
            store.record_audit(&event(i)).await.unwrap();
        }
        store
    }

    /// The database file opened directly, as someone who holds only the file would.
    async fn raw(dir: &Path) -> SqlitePool {
        let path = test_settings(dir).path;
        SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap()
    }

    /// Recomputes every link and the head with `link_hash`, as a forger would.
    async fn rechain_with(pool: &SqlitePool, link_hash: impl Fn(&[u8], &str) -> Vec<u8>) {
        let mut conn = pool.acquire().await.unwrap();
        let (links, _) = load_chain(&mut conn).await.unwrap();
        let mut prev = GENESIS.to_vec();
        for link in &links {
            let hash = link_hash(&prev, &link.body);
            sqlx::query("UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?")
                .bind(&prev)
                .bind(&hash)
                .bind(link.seq)
                .execute(&mut *conn)
                .await
                .unwrap();
            prev = hash;
        }
        set_head(&mut conn, &prev).await.unwrap();
    }

    async fn edit_event(pool: &SqlitePool, seq: i64) {
        sqlx::query(
            "UPDATE audit_events SET body = replace(body, '\"result\":\"ok\"', '\"result\":\"denied\"') WHERE seq = ?",
        )
        .bind(seq)
        .execute(pool)
        .await
        .unwrap();
    }

    /// Makes a keyed database look like one from before the audit key: plain links, no marker.
    async fn strip_key(pool: &SqlitePool) {
        rechain_with(pool, plain_hash).await;
        sqlx::query("DELETE FROM meta WHERE key = ?")
            .bind(KEY_CHECK)
            .execute(pool)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn without_the_key_an_edit_cannot_be_hidden_by_recomputing_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_events(dir.path(), 5).await;
        assert_eq!(store.verify_audit().await.unwrap(), Ok(5), "intact");

        let pool = raw(dir.path()).await;
        edit_event(&pool, 3).await;
        // Every link recomputed with plain SHA-256, as the chain was before it was keyed.
        rechain_with(&pool, plain_hash).await;
        let broken = store.verify_audit().await.unwrap().unwrap_err();
        assert_eq!(broken.seq, 1, "{broken:?}");
        assert!(broken.reason.contains("edited"), "{broken:?}");
        // Or with HMAC under a key of the forger's own.
        let forged = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; AUDIT_KEY_LEN]);
        rechain_with(&pool, |prev, body| keyed_hash(&forged, prev, body)).await;
        assert_eq!(store.verify_audit().await.unwrap().unwrap_err().seq, 1);
        // Only the audit key itself makes the edit verify: it is what must stay out of reach.
        let key = read_key_file(&test_settings(dir.path()).audit_key_file)
            .unwrap()
            .unwrap();
        rechain_with(&pool, |prev, body| keyed_hash(&key, prev, body)).await;
        assert_eq!(store.verify_audit().await.unwrap(), Ok(5));
    }

    #[tokio::test]
    async fn a_trail_from_before_the_key_is_checked_then_rechained_once() {
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings(dir.path());
        let store = store_with_events(dir.path(), 3).await;
        store.close().await;
        let pool = raw(dir.path()).await;
        strip_key(&pool).await;
        pool.close().await;
        std::fs::remove_file(&settings.audit_key_file).unwrap();

        let store = Store::connect(&settings).await.unwrap();
        assert_eq!(
            store.verify_audit().await.unwrap(),
            Ok(4),
            "the three events and the re-keying"
        );
        let events = store.audit_events(10).await.unwrap();
        assert!(
            events[3].contains("\"action\":\"audit.rekey\"") && events[3].contains("3 events"),
            "{events:?}"
        );
        assert_eq!(
            std::fs::metadata(&settings.audit_key_file)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        store.close().await;
        let store = Store::connect(&settings).await.unwrap();
        assert_eq!(store.verify_audit().await.unwrap(), Ok(4), "re-keyed once");
    }

    #[tokio::test]
    async fn a_trail_broken_before_the_key_or_stripped_of_its_marker_is_not_rekeyed() {
        // Tampered before the upgrade: re-keying would launder the edit, so the store refuses.
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings(dir.path());
        store_with_events(dir.path(), 3).await.close().await;
        let pool = raw(dir.path()).await;
        strip_key(&pool).await;
        edit_event(&pool, 2).await;
        pool.close().await;
        std::fs::remove_file(&settings.audit_key_file).unwrap();
        let err = Store::connect(&settings).await.unwrap_err();
        assert!(matches!(err, Error::AuditBroken { seq: 2, .. }), "{err:?}");
        assert!(
            !settings.audit_key_file.exists(),
            "a refused upgrade leaves no key file behind"
        );

        // A keyed trail rewritten as a plain chain, its marker deleted, so that the next start
        // would re-key the forgery: the key file still exists, which gives it away.
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings(dir.path());
        store_with_events(dir.path(), 3).await.close().await;
        let pool = raw(dir.path()).await;
        edit_event(&pool, 2).await;
        strip_key(&pool).await;
        pool.close().await;
        let err = Store::connect(&settings).await.unwrap_err();
        assert!(matches!(err, Error::AuditNotKeyed { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_keyed_trail_opens_only_with_its_own_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let settings = test_settings(dir.path());
        store_with_events(dir.path(), 2).await.close().await;
        let path = &settings.audit_key_file;
        let key = std::fs::read(path).unwrap();
        assert_eq!(key.len(), AUDIT_KEY_LEN);

        std::fs::remove_file(path).unwrap();
        let err = Store::connect(&settings).await.unwrap_err();
        assert!(matches!(err, Error::AuditKeyMissing { .. }), "{err:?}");
        assert!(!path.exists(), "no new key replaces a lost one");

        std::fs::write(path, [9u8; AUDIT_KEY_LEN]).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Store::connect(&settings).await.unwrap_err();
        assert!(matches!(err, Error::AuditKeyMismatch { .. }), "{err:?}");

        std::fs::write(path, &key).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Store::connect(&settings).await.unwrap_err();
        assert!(matches!(err, Error::AuditKeyFile { .. }), "{err:?}");

        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let store = Store::connect(&settings).await.unwrap();
        assert_eq!(store.verify_audit().await.unwrap(), Ok(2));
    }

    /// The mark a test change writes in `meta`, as committed.
    async fn committed_mark(store: &Store) -> Option<Vec<u8>> {
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'test_mark'")
            .fetch_optional(&store.reader)
            .await
            .unwrap()
    }

    /// Writes the mark inside the caller's transaction.
    async fn write_mark(conn: &mut SqliteConnection, value: u8) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('test_mark', ?)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(vec![value])
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_change_and_its_event_are_committed_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&test_settings(dir.path())).await.unwrap();
        let before = store.audit_events(100).await.unwrap().len();

        // The change fails after writing: neither the write nor the event is kept.
        let failed = store
            .audited(&event(1), async |conn| {
                write_mark(conn, 1).await?;
                Err::<(), _>(Error::Conflict("refused"))
            })
            .await;
        assert!(
            matches!(failed, Err(Error::Conflict("refused"))),
            "{failed:?}"
        );
        assert_eq!(committed_mark(&store).await, None);
        assert_eq!(store.audit_events(100).await.unwrap().len(), before);

        // A change that has nothing to record is rolled back, and no event appears.
        let unrecorded = store
            .audited_if(async |conn| {
                write_mark(conn, 2).await?;
                Ok(("nothing to record", None))
            })
            .await
            .unwrap();
        assert_eq!(unrecorded, "nothing to record");
        assert_eq!(committed_mark(&store).await, None);
        assert_eq!(store.audit_events(100).await.unwrap().len(), before);

        // The change succeeds: it and its event are both committed, and the chain verifies.
        let done = store
            .audited(&event(3), async |conn| {
                write_mark(conn, 3).await?;
                Ok(7)
            })
            .await
            .unwrap();
        assert_eq!(done, 7);
        assert_eq!(committed_mark(&store).await, Some(vec![3]));
        let events = store.audit_events(100).await.unwrap();
        assert_eq!(events.len(), before + 1);
        assert!(events[before].contains("version 3"), "{events:?}");

        // An event built from what the change found is committed with it.
        let found = store
            .audited_if(async |conn| {
                write_mark(conn, 4).await?;
                Ok((4, Some(event(4))))
            })
            .await
            .unwrap();
        assert_eq!(found, 4);
        assert_eq!(committed_mark(&store).await, Some(vec![4]));
        let events = store.audit_events(100).await.unwrap();
        assert_eq!(events.len(), before + 2);
        assert!(events[before + 1].contains("version 4"), "{events:?}");
        assert_eq!(store.verify_audit().await.unwrap(), Ok(before as u64 + 2));
    }
}
