-- Ids of deleted workspaces. A new workspace never gets one, so nothing a deleted workspace left
-- behind (its file:// directory and host group, its objects under the default prefix, the `sub`
-- of its tasks' identity tokens that outside services trust) passes to whoever creates the id.
CREATE TABLE retired_workspaces (
    id         TEXT PRIMARY KEY,
    deleted_at TEXT NOT NULL
);

-- Workspaces deleted before this table existed, as the audit trail records them (only ids a
-- workspace can have). Personal workspaces are left out: their id is derived from their user's,
-- who gets it back.
WITH deletions AS (
    SELECT
        CASE WHEN json_valid(body) THEN json_extract(body, '$.action') END AS action,
        CASE WHEN json_valid(body) THEN json_extract(body, '$.result') END AS result,
        CASE WHEN json_valid(body) THEN json_extract(body, '$.workspace') END AS workspace,
        CASE WHEN json_valid(body) THEN json_extract(body, '$.time') END AS time
    FROM audit_events
)
INSERT OR IGNORE INTO retired_workspaces (id, deleted_at)
SELECT workspace, COALESCE(MAX(time), '1970-01-01T00:00:00Z')
FROM deletions
WHERE action = 'workspace.delete'
  AND result = 'ok'
  AND typeof(workspace) = 'text'
  AND length(workspace) BETWEEN 1 AND 64
  AND workspace NOT GLOB '*[^A-Za-z0-9_-]*'
  AND workspace NOT LIKE 'personal-%'
  AND workspace NOT IN (SELECT id FROM workspaces)
GROUP BY workspace;

-- The host group (from local.workspace_gid_range) of each workspace's file:// directory. A
-- directory in the default place is used only when its group is the one recorded here, so a
-- directory tresor did not make is never adopted. The row outlives its workspace, whose id is
-- retired, so no group is ever given to a second workspace.
CREATE TABLE workspace_groups (
    workspace TEXT PRIMARY KEY,
    gid       INTEGER NOT NULL UNIQUE
);

-- Workspaces that existed before groups were recorded: the group an earlier tresor gave their
-- directory is recorded once (if it lies in the range and no other workspace holds it), before
-- any new group is handed out, and the row is removed.
CREATE TABLE workspace_groups_to_adopt (
    workspace TEXT PRIMARY KEY
);
INSERT INTO workspace_groups_to_adopt (workspace) SELECT id FROM workspaces;
-- Deleted workspaces' directories may still hold their group: it is recorded under the retired
-- id, so it is never handed to a new workspace.
INSERT OR IGNORE INTO workspace_groups_to_adopt (workspace) SELECT id FROM retired_workspaces;
