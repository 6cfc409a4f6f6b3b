-- A workspace's egress allowlist (JSON list of "host:port" rules); NULL: no egress at all.
ALTER TABLE workspaces ADD COLUMN egress TEXT;
