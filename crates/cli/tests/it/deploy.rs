//! The deployment recipes in `deploy/`: the systemd unit passes `systemd-analyze verify` and its
//! command starts a server that stops cleanly on the unit's kill signal; the container image
//! builds with buildah (offline, from the test registry's Debian image) and its entrypoint
//! serves.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::crash::free_listen_address;
use crate::support::*;

const DEBIAN_LAYOUT: &str = "/var/tmp/tresor-registry/build/debian";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// `key=value` settings of a unit's section, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

async fn wait_ready(url: &str) -> bool {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{url}/readyz")).await
            && r.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn the_systemd_unit_verifies_and_its_command_serves_and_stops_on_its_signal() {
    let dir = traversable_tempdir();
    let unit = std::fs::read_to_string(repo_file("deploy/systemd/tresor.service")).unwrap();
    let config = dir.path().join("tresor.toml");
    let listen = free_listen_address();
    std::fs::write(&config, format!("listen = \"{listen}\"\n")).unwrap();
    let data = dir.path().join("data");
    let local = unit
        .replace("/usr/local/bin/tresor", TRESOR)
        .replace("/etc/tresor/tresor.toml", config.to_str().unwrap())
        .replace("/var/lib/tresor/data", data.to_str().unwrap());
    let file = dir.path().join("tresor.service");
    std::fs::write(&file, &local).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    for (key, want) in [
        ("KillMode", "process"),
        ("KillSignal", "SIGTERM"),
        ("Delegate", "yes"),
    ] {
        assert_eq!(unit_values(&unit, key), [want], "{key}");
    }

    // Its command and environment, as systemd would start them.
    let exec = unit_values(&local, "ExecStart")[0];
    let words: Vec<&str> = exec.split_whitespace().collect();
    let mut command = Command::new(words[0]);
    command
        .args(&words[1..])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for env in unit_values(&local, "Environment") {
        let (k, v) = env.split_once('=').unwrap();
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    assert!(
        wait_ready(&format!("http://{listen}")).await,
        "the unit's server never became ready"
    );
    assert!(data.join("bootstrap-admin-token").exists());
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let timeout: u64 = unit_values(&unit, "TimeoutStopSec")[0].parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running {timeout} s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    let first = log.lines().next().unwrap_or_default();
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "the unit's Environment asks for JSON logs: {first}"
    );
}

/// `buildah` with its own storage under `root`, so the test leaves nothing in the host's.
fn buildah(root: &Path, args: &[&str]) -> String {
    let out = Command::new("buildah")
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "buildah {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn the_container_image_builds_with_buildah_and_its_entrypoint_serves() {
    // Built by scripts/lib/registry-up.sh (which scripts/test.sh runs) from Debian packages.
    let layout = DEBIAN_LAYOUT;
    assert!(
        Path::new(layout).join("index.json").is_file(),
        "no Debian image layout at {layout}: run scripts/lib/registry-up.sh"
    );
    let work = tempfile::tempdir().unwrap();
    // The build context: the binary under test, nothing else.
    let context = work.path().join("context");
    std::fs::create_dir(&context).unwrap();
    std::fs::copy(TRESOR, context.join("tresor")).unwrap();
    let containerfile = repo_file("deploy/container/Containerfile");
    let root = work.path().to_owned();
    let base = format!("BASE=oci:{layout}:12");
    let image = tokio::task::spawn_blocking({
        let root = root.clone();
        move || {
            buildah(
                &root,
                &[
                    "build",
                    "--isolation",
                    "chroot",
                    "--build-arg",
                    &base,
                    "--build-arg",
                    "BINARY=tresor",
                    "-f",
                    containerfile.to_str().unwrap(),
                    "-t",
                    "localhost/tresor-under-test",
                    context.to_str().unwrap(),
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(!image.is_empty());
    let inspected = buildah(
        &root,
        &["inspect", "--type", "image", "localhost/tresor-under-test"],
    );
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    let config = &inspected["OCIv1"]["config"];
    let mut argv: Vec<String> = config["Entrypoint"]
        .as_array()
        .unwrap()
        .iter()
        .chain(config["Cmd"].as_array().unwrap())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(argv, ["/usr/local/bin/tresor", "serve"]);
    assert_eq!(config["StopSignal"], "SIGTERM");
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        env.contains(&"TRESOR_DATA_DIR=/var/lib/tresor/data"),
        "{env:?}"
    );

    // Its entrypoint, run in the image's root (on the host's network, on a free port).
    let container = buildah(&root, &["from", "localhost/tresor-under-test"]);
    let listen = free_listen_address();
    argv.extend(["--listen".to_owned(), listen.clone()]);
    let mut serving = Command::new("buildah")
        .arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "run",
            "--isolation",
            "chroot",
            "--network",
            "host",
        ])
        .arg(&container)
        .arg("--")
        .args(&argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let ready = wait_ready(&format!("http://{listen}")).await;
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", serving.id())])
        .status();
    let _ = serving.wait();
    let mut printed = String::new();
    std::io::Read::read_to_string(&mut serving.stdout.take().unwrap(), &mut printed).unwrap();
    buildah(&root, &["rm", &container]);
    assert!(ready, "the image's server never became ready: {printed}");
    // Its data directory is the image's volume, where the bootstrap token went.
    assert!(
        printed.contains("access token is in /var/lib/tresor/data/bootstrap-admin-token"),
        "{printed}"
    );
}
