//! The crash loop: `kill -9` of the server ten times while a hundred tasks run, on the local
//! executor and on SLURM. Every task ends COMPLETE exactly once, nothing of a task is left on
//! the host, and the audit trail verifies.

use std::path::Path;
use std::time::{Duration, Instant};

use tresor_api_types::tes::{TesState, TesTask, TesView};
use tresor_client::{PlatformClient, TesClient};

use crate::crash::{free_listen_address, spawn_server_at};
use crate::support::*;

const TASKS: usize = 100;
const KILLS: usize = 10;
const SECRET: &[u8] = b"crash-loop-secret-value-31337";

fn task(i: usize) -> TesTask {
    let mut task = sh_task(&format!("sleep 0.2; echo \"task-{i} ${{#LOOP_SECRET}}\""));
    task.name = Some(format!("loop-{i}"));
    task.tags = Some(std::collections::BTreeMap::from([(
        "tresor.secrets.env".to_owned(),
        "LOOP_SECRET".to_owned(),
    )]));
    task
}

async fn wait_all_terminal(tes: &TesClient, ids: &[String], within: Duration) -> Vec<TesTask> {
    let deadline = Instant::now() + within;
    let mut done = Vec::with_capacity(ids.len());
    for id in ids {
        loop {
            let task = tes.get_task(id, TesView::Full).await.unwrap();
            if task.state.is_some_and(TesState::is_terminal) {
                done.push(task);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} stuck in {:?} {within:?} after the last restart",
                task.state
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    done
}

async fn crash_loop(dir: &Path, config: Option<&Path>, env: Option<&str>, within: Duration) {
    let listen = free_listen_address();
    let mut server = spawn_server_at(dir, config, &listen);
    let token = std::fs::read_to_string(dir.join("data/bootstrap-admin-token")).unwrap();
    let token = token.trim();
    let url = server.client_url();
    let admin = PlatformClient::new(&url, Some(token)).unwrap();
    admin.create_workspace("loop").await.unwrap();
    if let Some(env) = env {
        admin.set_compute_env("loop", env).await.unwrap();
    }
    admin
        .put_secret("loop", false, "LOOP_SECRET", SECRET, None)
        .await
        .unwrap();
    let tes = TesClient::for_workspace(&url, "loop", token).unwrap();
    let mut ids = Vec::with_capacity(TASKS);
    for i in 0..TASKS {
        ids.push(tes.create_task(&task(i)).await.unwrap());
    }

    // Ten kills at uneven moments, each followed at once by a new server on the same address.
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(600 + 257 * (kill as u64 % 5))).await;
        server.kill_9();
        server = spawn_server_at(dir, config, &listen);
    }

    // None lost, none stuck, each completed with its own output.
    let done = wait_all_terminal(&tes, &ids, within).await;
    for (i, task) in done.iter().enumerate() {
        assert_eq!(
            task.state,
            Some(TesState::Complete),
            "task {i} ({}): {}",
            ids[i],
            system_logs(task)
        );
        assert_eq!(stdout(task, 0), format!("task-{i} {}\n", SECRET.len()));
    }

    // None ran twice: each task's secrets went to one worker's delivery (a second start would
    // have been refused them, or would have left a second delivery id in the trail; a repeat of
    // the same delivery is that worker asking again after a kill took its answer).
    let store = tresor_store::Store::connect(&tresor_store::StoreSettings {
        path: dir.join("data/tresor.db"),
        durability: tresor_store::Durability::Normal,
        audit_key_file: dir.join("data/audit-key"),
    })
    .await
    .unwrap();
    let events = store.audit_events(1_000_000).await.unwrap();
    for id in &ids {
        let needle = format!("to task {id}, delivery ");
        let deliveries: std::collections::BTreeSet<&str> = events
            .iter()
            .filter(|e| e.contains("secret.deliver"))
            .filter_map(|e| e.split(needle.as_str()).nth(1))
            .filter_map(|rest| rest.split([',', ' ']).next())
            .collect();
        assert_eq!(
            deliveries.len(),
            1,
            "task {id}'s secrets went to deliveries {deliveries:?}"
        );
    }
    assert!(
        !events.iter().any(|e| e.contains("crash-loop-secret")),
        "a secret value reached the audit trail"
    );
    store.close().await;

    // Nothing of any task left on the host: no task directory, no identity token directory.
    let left = wait_for_no_task_dirs(&dir.join("data/work")).await;
    assert!(left.is_empty(), "task directories left: {left:?}");
    if env.is_some() {
        let left = wait_for_no_task_dirs(&dir.join("slurm-work")).await;
        assert!(left.is_empty(), "SLURM task directories left: {left:?}");
    }
    let tokens: Vec<String> = entries(Path::new("/dev/shm"))
        .into_iter()
        .filter(|name| {
            ids.iter()
                .any(|id| name.starts_with(&format!("tresor-{id}.")))
        })
        .collect();
    assert!(
        tokens.is_empty(),
        "identity token directories left: {tokens:?}"
    );
    let leaked = files_containing(dir, SECRET);
    assert!(leaked.is_empty(), "the secret's value on disk: {leaked:?}");
    drop(server);

    // The audit trail is intact across every kill.
    let out = std::process::Command::new(TRESOR)
        .args(["audit", "verify", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_kill_9s_while_a_hundred_local_tasks_run_lose_and_repeat_nothing() {
    let dir = traversable_tempdir();
    crash_loop(dir.path(), None, None, Duration::from_secs(240)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_kill_9s_while_a_hundred_slurm_jobs_run_lose_and_repeat_nothing() {
    ensure_slurm();
    let dir = traversable_tempdir();
    let config = slurm_config(dir.path());
    crash_loop(
        dir.path(),
        Some(&config),
        Some("hpc"),
        Duration::from_secs(400),
    )
    .await;
}
