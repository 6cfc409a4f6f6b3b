//! Migrations embedded in the binary, so a deployed `tresor` needs no SQL files beside it.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AssertSqlSafe, SqlSafeStr, SqlitePool};

use crate::Error;

/// `(version, description, sql)`; append only, never edit a released entry.
const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "tasks",
        include_str!("../migrations/sqlite/0001_tasks.sql"),
    ),
    (
        2,
        "identity",
        include_str!("../migrations/sqlite/0002_identity.sql"),
    ),
    (
        3,
        "secrets",
        include_str!("../migrations/sqlite/0003_secrets.sql"),
    ),
    (
        4,
        "identity_storage",
        include_str!("../migrations/sqlite/0004_identity_storage.sql"),
    ),
    (
        5,
        "task_sessions",
        include_str!("../migrations/sqlite/0005_task_sessions.sql"),
    ),
    (
        6,
        "compute_envs",
        include_str!("../migrations/sqlite/0006_compute_envs.sql"),
    ),
    (
        7,
        "file_storage",
        include_str!("../migrations/sqlite/0007_file_storage.sql"),
    ),
    (
        8,
        "workspace_identity",
        include_str!("../migrations/sqlite/0008_workspace_identity.sql"),
    ),
    (
        9,
        "task_leases",
        include_str!("../migrations/sqlite/0009_task_leases.sql"),
    ),
    (
        10,
        "image_policy",
        include_str!("../migrations/sqlite/0010_image_policy.sql"),
    ),
    (
        11,
        "workflow_runs",
        include_str!("../migrations/sqlite/0011_workflow_runs.sql"),
    ),
    (
        12,
        "registered_workflows",
        include_str!("../migrations/sqlite/0012_registered_workflows.sql"),
    ),
    (
        13,
        "egress",
        include_str!("../migrations/sqlite/0013_egress.sql"),
    ),
    (
        14,
        "repeatable_handoffs",
        include_str!("../migrations/sqlite/0014_repeatable_handoffs.sql"),
    ),
];

#[derive(Debug)]
struct Embedded;

type Resolved = Result<Vec<Migration>, sqlx::error::BoxDynError>;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Resolved> + Send + 'static>> {
        Box::pin(async {
            Ok(SQLITE
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        AssertSqlSafe(*sql).into_sql_str(),
                        false,
                    )
                })
                .collect())
        })
    }
}

pub(crate) async fn apply(pool: &SqlitePool) -> Result<(), Error> {
    let migrator = Migrator::new(Embedded).await.map_err(Error::Migrate)?;
    migrator.run(pool).await.map_err(Error::Migrate)
}
