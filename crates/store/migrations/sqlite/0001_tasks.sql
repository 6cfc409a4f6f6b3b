-- Tasks. `seq` gives ListTasks its stable order and page tokens their cursor.
CREATE TABLE tasks (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    workspace     TEXT    NOT NULL,
    name          TEXT,
    state         TEXT    NOT NULL,
    cpu_cores     INTEGER NOT NULL,
    creation_time TEXT    NOT NULL,
    -- the accepted TES document without server-set fields, as JSON
    spec          TEXT    NOT NULL,
    -- the task's tags as a JSON object, for tag filters
    tags          TEXT    NOT NULL,
    -- the TES task logs as a JSON array, once a worker has reported
    logs          TEXT,
    -- server notes about the task (JSON array of strings), shown first in its system_logs
    notes         TEXT    NOT NULL DEFAULT '[]',
    updated_at    TEXT    NOT NULL
);
CREATE INDEX tasks_by_workspace ON tasks (workspace, seq);
CREATE INDEX tasks_by_workspace_state ON tasks (workspace, state, seq);
CREATE INDEX tasks_by_state ON tasks (state, seq);

-- Server-wide values created once, such as the page token signing key.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
