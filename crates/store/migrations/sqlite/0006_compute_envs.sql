-- Where a task runs. `compute_env` is fixed when the task is created (the workspace's choice at
-- that moment); `executor_ref` is the executor's handle for the running work (a SLURM job id);
-- `bootstrap_hash` is the SHA-256 of the one-time token a batch job exchanges for its worker
-- session (NULL once used, and when the task ends).
ALTER TABLE tasks ADD COLUMN compute_env TEXT NOT NULL DEFAULT 'local';
ALTER TABLE tasks ADD COLUMN executor_ref TEXT;
ALTER TABLE tasks ADD COLUMN bootstrap_hash BLOB;
CREATE INDEX tasks_by_env_state ON tasks (compute_env, state, seq);

-- The compute environment that a workspace's new tasks go to; NULL means `local`.
ALTER TABLE workspaces ADD COLUMN compute_env TEXT;
