-- Keys that sign the identity tokens tresor issues to tasks. The private key is sealed like a
-- secret (a data key wrapped by the KEK); the public half is published in the JWKS until
-- publish_until, which outlives the last token the key signed.
CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY,
    alg           TEXT NOT NULL,
    public_jwk    TEXT NOT NULL,
    kek_id        TEXT NOT NULL,
    wrapped_key   BLOB NOT NULL,
    ciphertext    BLOB NOT NULL,
    created_at    TEXT NOT NULL,
    retired_at    TEXT,
    publish_until TEXT
);

-- Where a workspace's objects live when an administrator chose it (otherwise the configured
-- default bucket and prefix template apply).
CREATE TABLE workspace_storage (
    workspace  TEXT PRIMARY KEY,
    bucket     TEXT NOT NULL,
    prefix     TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
