-- A workspace's registered workflows: each (name, version) pinned to the SHA-256 of its files,
-- proposed by a maintainer or registered by an admin, and runnable by `launch` members once
-- approved. A changed workflow is a new version.
CREATE TABLE workflows (
    workspace             TEXT NOT NULL,
    name                  TEXT NOT NULL,
    version               TEXT NOT NULL,
    digest                TEXT NOT NULL,
    workflow_type         TEXT NOT NULL,
    workflow_type_version TEXT NOT NULL,
    workflow_url          TEXT NOT NULL,
    -- the files as JSON: {"path": "<base64>"}, and their names (JSON array) for listings
    files                 TEXT NOT NULL,
    file_names            TEXT NOT NULL,
    state                 TEXT NOT NULL,
    proposed_by           TEXT NOT NULL,
    approved_by           TEXT,
    created_at            TEXT NOT NULL,
    PRIMARY KEY (workspace, name, version)
);

-- Whether even maintainers and admins may run only registered workflows in the workspace.
ALTER TABLE workspaces ADD COLUMN registered_workflows_only INTEGER NOT NULL DEFAULT 0;
