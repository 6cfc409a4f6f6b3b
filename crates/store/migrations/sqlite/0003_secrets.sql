-- Pipeline secrets: one row per version, encrypted (envelope: data key wrapped by a KEK).
-- scope is 'workspace' (owner '') or 'user' (owner = the user's id).
CREATE TABLE secrets (
    workspace    TEXT    NOT NULL,
    scope        TEXT    NOT NULL,
    owner        TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    kek_id       TEXT    NOT NULL,
    wrapped_key  BLOB    NOT NULL,
    ciphertext   BLOB    NOT NULL,
    created_by   TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    deleted_at   TEXT,
    last_used_at TEXT,
    PRIMARY KEY (workspace, scope, owner, name, version)
);

