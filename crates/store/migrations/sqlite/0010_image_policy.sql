-- A workspace's rules for container images (JSON: allowed repositories, whether digests are
-- required, and which workspace secrets hold registry logins); NULL: any image, no logins.
ALTER TABLE workspaces ADD COLUMN image_policy TEXT;
