-- A started task's worker session: the SHA-256 of its credential (cleared when the task ends),
-- and whether its secrets were handed out (at most once), kept across server restarts so a
-- re-attached worker can still renew its identity token.
ALTER TABLE tasks ADD COLUMN session_hash BLOB;
ALTER TABLE tasks ADD COLUMN secrets_delivered INTEGER NOT NULL DEFAULT 0;
