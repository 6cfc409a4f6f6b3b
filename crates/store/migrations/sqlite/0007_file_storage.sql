-- A host directory a platform administrator gave a workspace for its file:// inputs and outputs,
-- instead of the default `<first allowed dir>/<workspace>`. No two workspaces' directories overlap.
CREATE TABLE workspace_file_storage (
    workspace  TEXT PRIMARY KEY,
    dir        TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
