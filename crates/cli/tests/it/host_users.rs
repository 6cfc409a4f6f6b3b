//! Host users: a root server gives each running task a host user of its own, which no other
//! task's user can reach, and copies the task's files with that user's rights; a server that is
//! not root runs its tasks as itself; and a root server refuses a data dir that its tasks' users
//! could not reach.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tresor_api_types::tes::{TesExecutor, TesInput, TesOutput, TesState, TesTask};
use tresor_client::TesClient;

use crate::support::*;

/// These tests switch users, which needs root (CI runs the suite as root); elsewhere they say
/// so and pass.
/// These tests switch host users, which needs root, as CI and the developers' machines have;
/// elsewhere they fail saying so rather than pass without testing anything.
pub(crate) fn root_or_skip(test: &str) -> bool {
    assert!(
        is_root(),
        "{test} switches host users, which needs root: run the suite as root (scripts/test.sh)"
    );
    true
}

/// The unprivileged account `tresor-test` (uid, gid), created the first time it is needed.
fn test_account() -> (u32, u32) {
    static ACCOUNT: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *ACCOUNT.get_or_init(|| {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id")
                .args([flag, "tresor-test"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        if id("-u").is_none() {
            // Another test process may create it at the same moment: "exists" is fine.
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--user-group",
                    "--shell",
                    "/usr/sbin/nologin",
                    "tresor-test",
                ])
                .status();
        }
        (
            id("-u").expect("useradd could not create the account tresor-test"),
            id("-g").expect("the account tresor-test has no group"),
        )
    })
}

/// A task whose outputs `/out/*` go to `storage/<name>`.
fn task_with_outputs(storage: &Path, names: &[&str], script: &str) -> TesTask {
    TesTask {
        outputs: Some(
            names
                .iter()
                .map(|name| TesOutput {
                    path: format!("/out/{name}"),
                    url: crate::crash::storage_url(storage, name),
                    ..TesOutput::default()
                })
                .collect(),
        ),
        ..sh_task(script)
    }
}

#[tokio::test]
async fn a_server_that_is_not_root_runs_tasks_as_itself_and_delivers_their_outputs() {
    if !root_or_skip("a_server_that_is_not_root_runs_tasks_as_itself") {
        return;
    }
    let (uid, gid) = test_account();
    let dir = traversable_tempdir();
    // The binary where that user may run it: the checkout may lie below root's own home.
    let program = dir.path().join("tresor");
    if std::fs::hard_link(TRESOR, &program).is_err() {
        std::fs::copy(TRESOR, &program).unwrap();
    }
    for sub in ["data", "storage"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::os::unix::fs::chown(dir.path().join(sub), Some(uid), Some(gid)).unwrap();
    }
    let server = crate::crash::spawn_server_as(dir.path(), (uid, gid), &program);
    // A server that is not root gives directories no group, and uses one an operator made.
    let storage = crate::crash::personal_storage(&server, dir.path());
    std::fs::create_dir(&storage).unwrap();
    std::os::unix::fs::chown(&storage, Some(uid), Some(gid)).unwrap();

    let info = server.client.service_info().await.unwrap();
    assert!(
        info.description.unwrap_or_default().contains("not root"),
        "service-info says that tasks share the server's user"
    );
    let task = task_with_outputs(
        &storage,
        &["who", "result.txt"],
        r#"id -u > /out/who; test -s "$TRESOR_IDENTITY_TOKEN_FILE" && echo token; echo result > /out/result.txt"#,
    );
    let id = server.client.create_task(&task).await.unwrap();
    let done = wait_terminal(&server.client, &id).await;
    assert_complete(&done);
    assert_eq!(
        stdout(&done, 0),
        "token\n",
        "the task read its identity token"
    );
    assert_eq!(
        std::fs::read_to_string(storage.join("who")).unwrap().trim(),
        uid.to_string(),
        "executors run as the server's own user"
    );
    let result = storage.join("result.txt");
    assert_eq!(std::fs::read_to_string(&result).unwrap(), "result\n");
    assert_eq!(std::fs::metadata(&result).unwrap().uid(), uid);
}

#[tokio::test]
async fn a_data_dir_that_tasks_cannot_reach_is_refused_at_start_naming_the_directory() {
    if !root_or_skip("a_data_dir_that_tasks_cannot_reach_is_refused_at_start") {
        return;
    }
    // `mktemp -d`: mode 0700, so no task's user could enter the data dir below it.
    let closed = tempfile::tempdir().unwrap();
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let closed_path = std::fs::canonicalize(closed.path()).unwrap();
    let child = tokio::process::Command::new(TRESOR)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(closed.path().join("data"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TRESOR_IMAGE_RUNTIME", "host")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("tresor serve started instead of refusing the data dir")
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("data_dir (from --data-dir)")
            && stderr.contains(&format!(
                "cannot enter {} (mode 0700)",
                closed_path.display()
            ))
            && stderr.contains(&format!("chmod o+x {}", closed_path.display())),
        "{stderr}"
    );
}

/// A task that prints its uid and gid, then waits until `release` (below) lets it end. `marker`
/// tells its processes apart on the host; its executor's environment holds `MARKER=<marker>`.
fn waiting_task(marker: &str) -> TesTask {
    let script = format!("id -u; id -g; while [ ! -e /tmp/go ]; do sleep 0.05; done; : {marker}");
    TesTask {
        executors: vec![TesExecutor {
            env: Some(BTreeMap::from([("MARKER".to_owned(), marker.to_owned())])),
            ..executor(&["sh", "-c", script.as_str()])
        }],
        ..TesTask::default()
    }
}

/// Lets a `waiting_task` of the server whose data dir is `data` end.
fn release(data: &Path, id: &str) {
    std::fs::write(data.join("work").join(id).join("root/tmp/go"), "").unwrap();
}

/// The pid and host uid of the sandboxed shell of the `waiting_task` marked `marker`.
async fn sandboxed_shell(marker: &str) -> (u32, u32) {
    for _ in 0..1500 {
        for line in processes_with(marker) {
            let (pid, cmdline) = line.split_once(": ").unwrap();
            if !cmdline.starts_with("sh -c") {
                continue; // bubblewrap's own processes carry the script as an argument too
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next())
                .and_then(|uid| uid.parse().ok());
            if let Some(uid) = uid {
                return (pid.parse().unwrap(), uid);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no sandboxed shell runs the task marked {marker}");
}

/// The task's identity directory on the host (in /dev/shm).
fn identity_dir(id: &str) -> PathBuf {
    let prefix = format!("tresor-{id}.");
    let name = entries(Path::new("/dev/shm"))
        .into_iter()
        .find(|n| n.starts_with(&prefix))
        .unwrap_or_else(|| panic!("task {id} has no identity directory"));
    Path::new("/dev/shm").join(name)
}

/// Runs a program as the host user and group `uid` (no other groups, no capabilities), the way
/// a process of another task, or of `nobody`, would try; returns whether it succeeded and what
/// it printed on stdout and stderr.
fn attempt_as(uid: u32, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", "--inh-caps=-all", "--", program])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A connect(2) to a Unix socket, in Perl (part of every Debian system).
const CONNECT: &str =
    r#"IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n"; print "connected\n""#;

/// Asserts that `uid` can reach nothing of the task whose shell is `pid`, whose identity
/// directory is `dir`: each attempt fails with EACCES.
fn assert_locked_out(uid: u32, pid: u32, dir: &Path) {
    let token = dir.join("token").display().to_string();
    let socket = dir.join("token.sock").display().to_string();
    let environ = format!("/proc/{pid}/environ");
    let mem = format!("/proc/{pid}/mem");
    for (what, program, args) in [
        ("read the token file", "cat", vec![token.as_str()]),
        (
            "connect to the token socket",
            "perl",
            vec!["-MIO::Socket::UNIX", "-e", CONNECT, socket.as_str()],
        ),
        ("read the environment", "cat", vec![environ.as_str()]),
        ("open the memory", "head", vec!["-c1", mem.as_str()]),
    ] {
        let (ok, said) = attempt_as(uid, program, &args);
        assert!(
            !ok && said.contains("Permission denied"),
            "uid {uid} could {what} of a task of another user: {said}"
        );
    }
}

#[tokio::test]
async fn each_running_task_has_a_host_user_no_other_user_can_reach_and_frees_it_at_its_end() {
    if !root_or_skip("each_running_task_has_a_host_user") {
        return;
    }
    // Exactly two ids, and two slots to match.
    let first = *next_task_ids().start();
    let ids = first..=first + 1;
    let range = ids.clone();
    let server = TestServer::start_with(move |s| {
        s.services.local.task_ids = Some(range);
        s.services.local.slots = 2;
    })
    .await;
    let a = server
        .client
        .create_task(&waiting_task("task-a-4711"))
        .await
        .unwrap();
    let b = server
        .client
        .create_task(&waiting_task("task-b-4711"))
        .await
        .unwrap();
    wait_state(&server.client, &a, TesState::Running).await;
    wait_state(&server.client, &b, TesState::Running).await;
    let (pid_a, uid_a) = sandboxed_shell("task-a-4711").await;
    let (_, uid_b) = sandboxed_shell("task-b-4711").await;
    assert_ne!(uid_a, uid_b, "two running tasks share a host user");
    assert!(
        ids.contains(&uid_a) && ids.contains(&uid_b),
        "{uid_a}, {uid_b}"
    );

    // Task A's identity directory and files are its user's alone.
    let dir_a = identity_dir(&a);
    let meta = std::fs::metadata(&dir_a).unwrap();
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (uid_a, 0o500)
    );
    let tree = std::fs::metadata(server.data.join("work").join(&a).join("root")).unwrap();
    assert_eq!(
        (tree.uid(), tree.permissions().mode() & 0o777),
        (uid_a, 0o700)
    );

    // Task A's own user reaches all of it, so the refusals below are about who asks.
    let token = dir_a.join("token").display().to_string();
    let (ok, said) = attempt_as(uid_a, "cat", &[token.as_str()]);
    assert!(ok && said.starts_with("ey"), "{said}");
    let socket = dir_a.join("token.sock").display().to_string();
    let connect = ["-MIO::Socket::UNIX", "-e", CONNECT, socket.as_str()];
    let (ok, said) = attempt_as(uid_a, "perl", &connect);
    assert!(ok && said.contains("connected"), "{said}");
    let environ = format!("/proc/{pid_a}/environ");
    let (ok, said) = attempt_as(uid_a, "cat", &[environ.as_str()]);
    assert!(ok && said.contains("MARKER=task-a-4711"), "{said}");
    let mem = format!("/proc/{pid_a}/mem");
    let (_, said) = attempt_as(uid_a, "head", &["-c1", mem.as_str()]);
    assert!(
        !said.contains("Permission denied"),
        "its own user may open it: {said}"
    );
    // Task B's user and nobody (65534, the one user every task had before) get nothing.
    assert_locked_out(uid_b, pid_a, &dir_a);
    assert_locked_out(65534, pid_a, &dir_a);

    release(&server.data, &a);
    release(&server.data, &b);
    for (id, uid) in [(&a, uid_a), (&b, uid_b)] {
        let done = wait_terminal(&server.client, id).await;
        assert_complete(&done);
        // id -u and id -g inside the sandbox: its own uid, and the gid of the same number.
        assert_eq!(stdout(&done, 0), format!("{uid}\n{uid}\n"));
    }

    // Both ids are free again: two new tasks run at once with them.
    let c = server
        .client
        .create_task(&waiting_task("task-c-4711"))
        .await
        .unwrap();
    let d = server
        .client
        .create_task(&waiting_task("task-d-4711"))
        .await
        .unwrap();
    wait_state(&server.client, &c, TesState::Running).await;
    wait_state(&server.client, &d, TesState::Running).await;
    let (_, uid_c) = sandboxed_shell("task-c-4711").await;
    let (_, uid_d) = sandboxed_shell("task-d-4711").await;
    let mut reused = [uid_c, uid_d];
    reused.sort_unstable();
    let mut before = [uid_a, uid_b];
    before.sort_unstable();
    assert_eq!(reused, before);
    release(&server.data, &c);
    release(&server.data, &d);
    for id in [&c, &d] {
        let done = wait_terminal(&server.client, id).await;
        assert_complete(&done);
    }
}

/// Which task holds which id is in its task directory: a server restarted after `kill -9`
/// gives a new task an id that no re-attached task holds.
#[tokio::test]
async fn a_restarted_server_gives_no_running_tasks_host_user_to_another_task() {
    if !root_or_skip("a_restarted_server_gives_no_running_tasks_host_user_to_another_task") {
        return;
    }
    let dir = traversable_tempdir();
    let config = dir.path().join("tresor.toml");
    // Two ids for the two slots `spawn_server_at` gives; away from the default range.
    std::fs::write(
        &config,
        "[local]\ntask_uid_range = \"2050000000-2050000001\"\n",
    )
    .unwrap();
    let listen = crate::crash::free_listen_address();
    let data = dir.path().join("data");
    let mut first = crate::crash::spawn_server_at(dir.path(), Some(&config), &listen);
    let a = first
        .client
        .create_task(&waiting_task("restart-a-4711"))
        .await
        .unwrap();
    wait_state(&first.client, &a, TesState::Running).await;
    let (_, uid_a) = sandboxed_shell("restart-a-4711").await;
    first.kill_9();

    let second = crate::crash::spawn_server_at(dir.path(), Some(&config), &listen);
    let client: &TesClient = &second.client;
    let b = client
        .create_task(&waiting_task("restart-b-4711"))
        .await
        .unwrap();
    wait_state(client, &b, TesState::Running).await;
    let (_, uid_b) = sandboxed_shell("restart-b-4711").await;
    assert_ne!(
        uid_a, uid_b,
        "the restarted server handed out a running task's uid"
    );

    release(&data, &a);
    release(&data, &b);
    for (id, uid) in [(&a, uid_a), (&b, uid_b)] {
        let done = wait_terminal(client, id).await;
        assert_complete(&done);
        assert_eq!(stdout(&done, 0), format!("{uid}\n{uid}\n"));
    }
}

/// The worker copies `file://` inputs and outputs as the task's user, in its workspace's group,
/// not as root: an input that user may not read is refused, an output is that user's, and the
/// next task of the workspace (another user) reads it through the group.
#[tokio::test]
async fn file_copies_run_with_the_task_users_rights_not_roots() {
    if !root_or_skip("file_copies_run_with_the_task_users_rights_not_roots") {
        return;
    }
    let mut gids = None;
    let server = TestServer::start_with(|s| gids = s.services.local.workspace_gids.clone()).await;
    let gids = gids.unwrap();
    server.make_storage(&server.client, &server.storage).await;
    std::fs::write(server.storage.join("public.txt"), "public\n").unwrap();
    let private = server.storage.join("private.txt");
    std::fs::write(&private, "for root only\n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let input = |file: &str, path: &str| TesInput {
        url: Some(server.storage_url(file)),
        path: path.to_owned(),
        ..TesInput::default()
    };

    // A root-owned 0600 file in the workspace's own directory: root could copy it, the task's
    // user may not read it, so it is not copied and no executor runs.
    let done = server
        .run(&TesTask {
            inputs: Some(vec![input("private.txt", "/in/private.txt")]),
            ..sh_task("cat /in/private.txt")
        })
        .await;
    assert_eq!(done.state, Some(TesState::SystemError));
    assert!(
        system_logs(&done).contains(&format!(
            "input {} is not readable by the task's user",
            server.storage_url("private.txt")
        )),
        "{}",
        system_logs(&done)
    );
    assert!(!format!("{done:?}").contains("for root only"), "{done:?}");

    // The workspace's directory has a host group of its own: root's, the group's, nobody else's.
    let area = std::fs::metadata(&server.storage).unwrap();
    let group = area.gid();
    assert!(
        gids.contains(&group),
        "{group} is a workspace group of {gids:?}"
    );
    assert_eq!((area.uid(), area.mode() & 0o7777), (0, 0o2770));

    // A readable input is copied in; the output, in a new directory, is the task user's.
    let mut writer = sh_task("id -u; cat /in/public.txt > /out/result.txt");
    writer.inputs = Some(vec![input("public.txt", "/in/public.txt")]);
    writer.outputs = Some(vec![TesOutput {
        path: "/out/result.txt".to_owned(),
        url: server.storage_url("results/result.txt"),
        ..TesOutput::default()
    }]);
    let done = server.run(&writer).await;
    assert_complete(&done);
    let writer_uid: u32 = stdout(&done, 0).trim().parse().unwrap();
    let result = std::fs::metadata(server.storage.join("results/result.txt")).unwrap();
    assert_eq!(
        (result.uid(), result.gid(), result.mode() & 0o777),
        (writer_uid, group, 0o640),
        "the output belongs to the task's user, readable by its workspace's group"
    );
    let results = std::fs::metadata(server.storage.join("results")).unwrap();
    assert_eq!(
        (results.uid(), results.gid(), results.mode() & 0o7777),
        (writer_uid, group, 0o2770)
    );

    // The next task of the workspace reads that output as an input.
    let mut reader = sh_task("cat /in/result.txt");
    reader.inputs = Some(vec![input("results/result.txt", "/in/result.txt")]);
    let done = server.run(&reader).await;
    assert_complete(&done);
    assert_eq!(stdout(&done, 0), "public\n");
    // Whichever uid it gets: the worker copies as (uid, gid, [workspace group]); another user
    // with the workspace's group reads the output, one without it (any other workspace's task)
    // cannot even enter the directory.
    let other_uid = writer_uid + 1;
    let path = server.storage.join("results/result.txt");
    let read_as = |groups: &str| {
        Command::new("setpriv")
            .arg(format!("--reuid={other_uid}"))
            .arg(format!("--regid={other_uid}"))
            .arg(groups)
            .args(["--inh-caps=-all", "--", "cat"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let with_group = read_as(format!("--groups={group}").as_str());
    assert_eq!(
        String::from_utf8_lossy(&with_group.stdout),
        "public\n",
        "{}",
        String::from_utf8_lossy(&with_group.stderr)
    );
    let without = read_as("--clear-groups");
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("Permission denied"),
        "{without:?}"
    );
}
