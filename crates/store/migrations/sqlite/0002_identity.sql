-- Users: a person or service, identified by (issuer, subject). Local users have issuer 'tresor'.
CREATE TABLE users (
    id         TEXT    PRIMARY KEY,
    issuer     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    is_admin   INTEGER NOT NULL DEFAULT 0,
    created_at TEXT    NOT NULL,
    UNIQUE (issuer, subject)
);

-- Workspaces own every object. A personal workspace belongs to one user.
CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    personal_of TEXT UNIQUE REFERENCES users (id),
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE members (
    workspace TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL REFERENCES users (id),
    role      TEXT NOT NULL,
    PRIMARY KEY (workspace, user_id)
);
CREATE INDEX members_by_user ON members (user_id);

-- Personal access tokens: only the SHA-256 of the secret is stored.
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id),
    name         TEXT NOT NULL,
    secret_hash  BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    revoked_at   TEXT,
    last_used_at TEXT
);
CREATE INDEX tokens_by_user ON tokens (user_id);

-- The audit trail: append-only, each event carrying the hash of the one before it.
CREATE TABLE audit_events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    body      TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);

ALTER TABLE tasks ADD COLUMN created_by TEXT NOT NULL DEFAULT '';
