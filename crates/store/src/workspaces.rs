//! Workspaces and their members.

use sqlx::{Row, SqliteConnection};
use time::OffsetDateTime;
use tresor_domain::{Role, UserId, WorkspaceId};

use crate::audit::AuditEvent;
use crate::identity::UserRecord;
use crate::{Error, Store, format_time, is_unique_violation};

/// A stored workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRecord {
    pub id: WorkspaceId,
    /// Set for a user's personal workspace.
    pub personal_of: Option<UserId>,
}

fn corrupt(id: &str, column: &'static str, reason: impl ToString) -> Error {
    Error::Corrupt {
        id: id.to_owned(),
        column,
        reason: reason.to_string(),
    }
}

fn workspace_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<WorkspaceRecord, Error> {
    let id: String = row.try_get("id")?;
    let personal: Option<String> = row.try_get("personal_of")?;
    Ok(WorkspaceRecord {
        personal_of: personal
            .map(|p| UserId::parse(&p).map_err(|e| corrupt(&id, "personal_of", e)))
            .transpose()?,
        id: WorkspaceId::parse(&id).map_err(|e| corrupt(&id, "id", e))?,
    })
}

fn role_from(id: &str, raw: &str) -> Result<Role, Error> {
    Role::parse(raw).ok_or_else(|| corrupt(id, "role", raw))
}

/// What a change that would leave a workspace without an owner is told.
const LAST_OWNER: &str =
    "a workspace must keep at least one owner; make another member owner first";

/// Fails a change that took away the workspace's last owner. It runs inside that change's
/// transaction, after the write: transactions on the one writer connection run one after the
/// other, so of two owners stepping down at once the second sees the first's change and is
/// refused, where a count taken before either write would let both through.
async fn ensure_an_owner_remains(
    conn: &mut SqliteConnection,
    workspace: &WorkspaceId,
) -> Result<(), Error> {
    let owners: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE workspace = ? AND role = ?")
            .bind(workspace.as_str())
            .bind(Role::Owner.as_str())
            .fetch_one(&mut *conn)
            .await?;
    if owners == 0 {
        // Returning drops the transaction uncommitted, which rolls the change back.
        return Err(Error::Conflict(LAST_OWNER));
    }
    Ok(())
}

/// What creating a workspace with a deleted workspace's id is told.
pub(crate) const RETIRED_ID: &str = "this id belonged to a deleted workspace, and a deleted workspace's id is never given out again (its files, objects and task identities would pass to the new one); choose another id";

/// What deleting a personal workspace is told.
const PERSONAL: &str = "a personal workspace cannot be deleted";

impl Store {
    /// Creates a workspace with `owner` as its owner; `Error::Conflict` if the id is taken, or
    /// belonged to a deleted workspace (`retired_workspaces`).
    pub async fn create_workspace(
        &self,
        workspace: &WorkspaceRecord,
        owner: &UserId,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        self.audited(event, async |conn| {
            let retired: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM retired_workspaces WHERE id = ?")
                    .bind(workspace.id.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
            if retired.is_some() {
                return Err(Error::Conflict(RETIRED_ID));
            }
            sqlx::query(
                "INSERT INTO workspaces (id, personal_of, created_by, created_at) VALUES (?, ?, ?, ?)",
            )
            .bind(workspace.id.as_str())
            .bind(workspace.personal_of.as_ref().map(UserId::as_str))
            .bind(owner.as_str())
            .bind(format_time(OffsetDateTime::now_utc()))
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::Conflict("a workspace with this id already exists; choose another id")
                } else {
                    Error::Database(e)
                }
            })?;
            sqlx::query("INSERT INTO members (workspace, user_id, role) VALUES (?, ?, 'owner')")
                .bind(workspace.id.as_str())
                .bind(owner.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn workspace_exists(&self, workspace: &WorkspaceId) -> Result<bool, Error> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM workspaces WHERE id = ?")
            .bind(workspace.as_str())
            .fetch_optional(&self.reader)
            .await?;
        Ok(found.is_some())
    }

    /// The compute environment a workspace's new tasks go to (None: the default, `local`).
    pub async fn workspace_compute_env(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<String>, Error> {
        let env: Option<Option<String>> =
            sqlx::query_scalar("SELECT compute_env FROM workspaces WHERE id = ?")
                .bind(workspace.as_str())
                .fetch_optional(&self.reader)
                .await?;
        Ok(env.flatten())
    }

    /// Chooses the compute environment for a workspace's new tasks (None: back to `local`),
    /// recording `event` in the same transaction.
    pub async fn set_workspace_compute_env(
        &self,
        workspace: &WorkspaceId,
        compute_env: Option<&str>,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        self.audited(event, async |conn| {
            sqlx::query("UPDATE workspaces SET compute_env = ? WHERE id = ?")
                .bind(compute_env)
                .bind(workspace.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// A workspace's image policy (JSON), if it has one.
    pub async fn workspace_image_policy(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Option<String>, Error> {
        let policy: Option<Option<String>> =
            sqlx::query_scalar("SELECT image_policy FROM workspaces WHERE id = ?")
                .bind(workspace.as_str())
                .fetch_optional(&self.reader)
                .await?;
        Ok(policy.flatten())
    }

    /// Sets (or with None removes) a workspace's image policy, recording `event` with it.
    pub async fn set_workspace_image_policy(
        &self,
        workspace: &WorkspaceId,
        policy: Option<&str>,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        self.audited(event, async |conn| {
            sqlx::query("UPDATE workspaces SET image_policy = ? WHERE id = ?")
                .bind(policy)
                .bind(workspace.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    /// A workspace's egress allowlist (`host:port` rules, as set); empty when it has none.
    pub async fn workspace_egress(&self, workspace: &WorkspaceId) -> Result<Vec<String>, Error> {
        let rules: Option<Option<String>> =
            sqlx::query_scalar("SELECT egress FROM workspaces WHERE id = ?")
                .bind(workspace.as_str())
                .fetch_optional(&self.reader)
                .await?;
        match rules.flatten() {
            None => Ok(Vec::new()),
            Some(json) => serde_json::from_str(&json).map_err(|e| Error::Corrupt {
                id: workspace.to_string(),
                column: "egress",
                reason: e.to_string(),
            }),
        }
    }

    /// Replaces a workspace's egress allowlist, recording `event` with it.
    pub async fn set_workspace_egress(
        &self,
        workspace: &WorkspaceId,
        rules: &[String],
        event: &AuditEvent,
    ) -> Result<(), Error> {
        let json = (!rules.is_empty())
            .then(|| serde_json::to_string(rules))
            .transpose()
            .map_err(|e| Error::Corrupt {
                id: workspace.to_string(),
                column: "egress",
                reason: e.to_string(),
            })?;
        self.audited(event, async |conn| {
            sqlx::query("UPDATE workspaces SET egress = ? WHERE id = ?")
                .bind(json.as_deref())
                .bind(workspace.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn personal_workspace(
        &self,
        user: &UserId,
    ) -> Result<Option<WorkspaceRecord>, Error> {
        let row = sqlx::query("SELECT id, personal_of FROM workspaces WHERE personal_of = ?")
            .bind(user.as_str())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(workspace_from_row).transpose()
    }

    /// The user's role in the workspace, if they are a member.
    pub async fn membership(
        &self,
        workspace: &WorkspaceId,
        user: &UserId,
    ) -> Result<Option<Role>, Error> {
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM members WHERE workspace = ? AND user_id = ?")
                .bind(workspace.as_str())
                .bind(user.as_str())
                .fetch_optional(&self.reader)
                .await?;
        role.map(|r| role_from(workspace.as_str(), &r)).transpose()
    }

    /// The workspaces a user belongs to, with their role in each.
    pub async fn memberships(&self, user: &UserId) -> Result<Vec<(WorkspaceRecord, Role)>, Error> {
        let rows = sqlx::query(
            "SELECT w.id, w.personal_of, m.role FROM members m JOIN workspaces w ON w.id = m.workspace
             WHERE m.user_id = ? ORDER BY w.id",
        )
        .bind(user.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let ws = workspace_from_row(row)?;
                let role: String = row.try_get("role")?;
                let role = role_from(ws.id.as_str(), &role)?;
                Ok((ws, role))
            })
            .collect()
    }

    /// A workspace's members with their roles.
    pub async fn members(&self, workspace: &WorkspaceId) -> Result<Vec<(UserRecord, Role)>, Error> {
        let rows = sqlx::query(
            "SELECT u.id, u.issuer, u.subject, u.name, u.is_admin, m.role FROM members m
             JOIN users u ON u.id = m.user_id WHERE m.workspace = ? ORDER BY u.name, u.id",
        )
        .bind(workspace.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                let role: String = row.try_get("role")?;
                let user = UserRecord {
                    id: UserId::parse(&row.try_get::<String, _>("id")?)
                        .map_err(|e| corrupt(workspace.as_str(), "user_id", e))?,
                    issuer: row.try_get("issuer")?,
                    subject: row.try_get("subject")?,
                    name: row.try_get("name")?,
                    is_admin: row.try_get::<i64, _>("is_admin")? != 0,
                };
                Ok((user, role_from(workspace.as_str(), &role)?))
            })
            .collect()
    }

    /// Adds a member or changes their role. `Error::Conflict` when that demotes the workspace's
    /// last owner.
    pub async fn set_member(
        &self,
        workspace: &WorkspaceId,
        user: &UserId,
        role: Role,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        self.audited(event, async |conn| {
            let previous: Option<String> =
                sqlx::query_scalar("SELECT role FROM members WHERE workspace = ? AND user_id = ?")
                    .bind(workspace.as_str())
                    .bind(user.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
            sqlx::query(
                "INSERT INTO members (workspace, user_id, role) VALUES (?, ?, ?)
                 ON CONFLICT (workspace, user_id) DO UPDATE SET role = excluded.role",
            )
            .bind(workspace.as_str())
            .bind(user.as_str())
            .bind(role.as_str())
            .execute(&mut *conn)
            .await?;
            if previous.as_deref() == Some(Role::Owner.as_str()) && role != Role::Owner {
                ensure_an_owner_remains(&mut *conn, workspace).await?;
            }
            Ok(())
        })
        .await
    }

    /// Removes a member; false if they were not one. `Error::Conflict` when they are the
    /// workspace's last owner.
    pub async fn remove_member(
        &self,
        workspace: &WorkspaceId,
        user: &UserId,
        event: &AuditEvent,
    ) -> Result<bool, Error> {
        self.audited_if(async |conn| {
            let removed: Option<String> = sqlx::query_scalar(
                "DELETE FROM members WHERE workspace = ? AND user_id = ? RETURNING role",
            )
            .bind(workspace.as_str())
            .bind(user.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            let Some(removed) = removed else {
                return Ok((false, None));
            };
            if removed == Role::Owner.as_str() {
                ensure_an_owner_remains(&mut *conn, workspace).await?;
            }
            Ok((true, Some(event.clone())))
        })
        .await
    }

    /// Deletes a workspace, its members and its ended tasks, and retires its id: no workspace
    /// created later gets it. `Error::Conflict` for a personal workspace, and while a task in it
    /// is still queued or running.
    pub async fn delete_workspace(
        &self,
        workspace: &WorkspaceId,
        event: &AuditEvent,
    ) -> Result<(), Error> {
        self.audited_if(async |conn| {
            let personal_of: Option<Option<String>> =
                sqlx::query_scalar("SELECT personal_of FROM workspaces WHERE id = ?")
                    .bind(workspace.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
            match personal_of {
                // Nothing to delete, and no id to retire.
                None => return Ok(((), None)),
                // Its id is its user's for good: retiring it would leave the user without one.
                Some(Some(_)) => return Err(Error::Conflict(PERSONAL)),
                Some(None) => {}
            }
            let active: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM tasks WHERE workspace = ? AND state IN ('QUEUED', 'INITIALIZING', 'RUNNING')",
            )
            .bind(workspace.as_str())
            .fetch_one(&mut *conn)
            .await?;
            if active > 0 {
                return Err(Error::Conflict(
                    "the workspace still has queued or running tasks; cancel them first",
                ));
            }
            // Its secrets go too (soft-deleted, purged after the retention period).
            sqlx::query("UPDATE secrets SET deleted_at = ? WHERE workspace = ? AND deleted_at IS NULL")
                .bind(format_time(OffsetDateTime::now_utc()))
                .bind(workspace.as_str())
                .execute(&mut *conn)
                .await?;
            for sql in [
                "DELETE FROM tasks WHERE workspace = ?",
                "DELETE FROM members WHERE workspace = ?",
                // Its storage locations are freed, so they can be given to another workspace.
                "DELETE FROM workspace_storage WHERE workspace = ?",
                "DELETE FROM workspace_file_storage WHERE workspace = ?",
                "DELETE FROM workspace_groups_to_adopt WHERE workspace = ?",
                "DELETE FROM workspaces WHERE id = ?",
            ] {
                sqlx::query(sql)
                    .bind(workspace.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
            // What it leaves behind (its file:// directory, its objects under the default prefix,
            // its group in `workspace_groups`, which stays) and what outside services trust (the
            // `sub` of its tasks' identity tokens) all carry its id: a workspace created later with
            // the id would inherit them, so none ever is.
            sqlx::query(
                "INSERT INTO retired_workspaces (id, deleted_at) VALUES (?, ?)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(workspace.as_str())
            .bind(format_time(OffsetDateTime::now_utc()))
            .execute(&mut *conn)
            .await?;
            Ok(((), Some(event.clone())))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &str) -> AuditEvent {
        AuditEvent {
            actor: "u1".to_owned(),
            action: action.to_owned(),
            object: "workspace:duo".to_owned(),
            workspace: Some("duo".to_owned()),
            source: None,
            result: "ok".to_owned(),
            detail: None,
        }
    }

    /// A store with users u1 and u2, both owners of workspace `duo`.
    async fn two_owners() -> (tempfile::TempDir, Store, WorkspaceId, UserId, UserId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&crate::test_settings(dir.path()))
            .await
            .unwrap();
        let (u1, u2) = (UserId::parse("u1").unwrap(), UserId::parse("u2").unwrap());
        for user in [&u1, &u2] {
            let record = UserRecord {
                id: user.clone(),
                issuer: "tresor".to_owned(),
                subject: user.to_string(),
                name: user.to_string(),
                is_admin: false,
            };
            store
                .create_user(&record, &event("user.create"))
                .await
                .unwrap();
        }
        let ws = WorkspaceId::parse("duo").unwrap();
        let record = WorkspaceRecord {
            id: ws.clone(),
            personal_of: None,
        };
        store
            .create_workspace(&record, &u1, &event("workspace.create"))
            .await
            .unwrap();
        store
            .set_member(&ws, &u2, Role::Owner, &event("member.set"))
            .await
            .unwrap();
        (dir, store, ws, u1, u2)
    }

    async fn owners(store: &Store, ws: &WorkspaceId) -> usize {
        store
            .members(ws)
            .await
            .unwrap()
            .into_iter()
            .filter(|(_, role)| *role == Role::Owner)
            .count()
    }

    #[tokio::test]
    async fn two_owners_stepping_down_at_once_leave_one_owner() {
        let (_dir, store, ws, u1, u2) = two_owners().await;
        let (e1, e2) = (event("member.set"), event("member.set"));
        let (a, b) = tokio::join!(
            store.set_member(&ws, &u1, Role::Admin, &e1),
            store.set_member(&ws, &u2, Role::Admin, &e2),
        );
        assert!(
            a.is_ok() != b.is_ok(),
            "exactly one demotion succeeds: {a:?} {b:?}"
        );
        let refused = a.err().or(b.err()).unwrap();
        assert!(
            matches!(refused, Error::Conflict(why) if why == LAST_OWNER),
            "{refused:?}"
        );
        assert_eq!(owners(&store, &ws).await, 1);
    }

    #[tokio::test]
    async fn a_deleted_workspaces_id_is_never_given_to_a_new_workspace() {
        let (_dir, store, ws, u1, u2) = two_owners().await;
        store
            .delete_workspace(&ws, &event("workspace.delete"))
            .await
            .unwrap();
        assert!(!store.workspace_exists(&ws).await.unwrap());
        // Neither its owners nor anyone else gets the id again.
        for user in [&u1, &u2] {
            let again = WorkspaceRecord {
                id: ws.clone(),
                personal_of: None,
            };
            let err = store
                .create_workspace(&again, user, &event("workspace.create"))
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Conflict(why) if why == RETIRED_ID),
                "{err:?}"
            );
        }
        assert!(
            !store.workspace_exists(&ws).await.unwrap(),
            "the refused creations were rolled back"
        );
        // Other ids are still free.
        let other = WorkspaceRecord {
            id: WorkspaceId::parse("duo2").unwrap(),
            personal_of: None,
        };
        store
            .create_workspace(&other, &u1, &event("workspace.create"))
            .await
            .unwrap();

        // A personal workspace is never deleted, so its id (its user's for good) never retires.
        let personal = WorkspaceRecord {
            id: WorkspaceId::parse("personal-u2").unwrap(),
            personal_of: Some(u2.clone()),
        };
        store
            .create_workspace(&personal, &u2, &event("workspace.create"))
            .await
            .unwrap();
        store
            .set_member(&personal.id, &u1, Role::Owner, &event("member.set"))
            .await
            .unwrap();
        let err = store
            .delete_workspace(&personal.id, &event("workspace.delete"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict(why) if why == PERSONAL),
            "{err:?}"
        );
        assert!(store.workspace_exists(&personal.id).await.unwrap());
    }

    #[tokio::test]
    async fn the_last_owner_can_be_neither_demoted_nor_removed() {
        let (_dir, store, ws, u1, u2) = two_owners().await;
        assert!(
            store
                .remove_member(&ws, &u1, &event("member.remove"))
                .await
                .unwrap()
        );
        let err = store
            .remove_member(&ws, &u2, &event("member.remove"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
        let err = store
            .set_member(&ws, &u2, Role::View, &event("member.set"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err:?}");
        assert_eq!(
            store.membership(&ws, &u2).await.unwrap(),
            Some(Role::Owner),
            "the refused changes were rolled back"
        );
        // Changes that leave an owner in place still go through.
        store
            .set_member(&ws, &u1, Role::View, &event("member.set"))
            .await
            .unwrap();
        assert_eq!(owners(&store, &ws).await, 1);
    }
}
