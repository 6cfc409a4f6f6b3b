-- WES workflow runs. A run's state is its engine task's, except where `state` records an end
-- the engine task cannot show (the run failed before its engine was created).
CREATE TABLE runs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    workspace    TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    -- the WES RunRequest as JSON (workflow_params included; values of secrets are refused)
    request      TEXT    NOT NULL,
    -- the engine (its configured name) and the SHA-256 of the workflow's files it ran
    engine       TEXT    NOT NULL,
    digest       TEXT    NOT NULL,
    -- the run's directory in the workspace's file storage (a host path)
    dir          TEXT    NOT NULL,
    -- the engine's task, once created
    engine_task  TEXT,
    state        TEXT,
    reason       TEXT,
    -- where a completed run's outputs were published in the workspace's file:// directory, or
    -- why they could not be
    published    TEXT
);
CREATE INDEX runs_by_workspace ON runs (workspace, seq);

-- The run a task belongs to (its engine or one of its jobs), for listing a run's tasks.
ALTER TABLE tasks ADD COLUMN run_id TEXT;
CREATE INDEX tasks_by_run ON tasks (run_id, seq) WHERE run_id IS NOT NULL;
-- The active tasks of runs, for the sweep that ends jobs whose engine has ended.
CREATE INDEX tasks_active_by_run ON tasks (run_id)
    WHERE run_id IS NOT NULL AND state IN ('QUEUED', 'INITIALIZING', 'RUNNING');
