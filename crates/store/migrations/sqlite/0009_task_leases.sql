-- Which server process owns an active task, and until when its lease runs (Unix milliseconds).
-- A process renews the leases of the tasks it runs; another takes over a task whose lease lapsed.
ALTER TABLE tasks ADD COLUMN owner TEXT;
ALTER TABLE tasks ADD COLUMN lease_until INTEGER;
CREATE INDEX tasks_active_owner ON tasks (state, owner) WHERE state IN ('INITIALIZING', 'RUNNING');
